//! `deploy/node-agent.yaml`, the manifest users apply to run the node agent.
//!
//! Every document is read as the typed Kubernetes object its `kind` names, and
//! must serialise back to exactly what was written: `k8s_openapi` ignores
//! unknown fields, so a misspelt key (`hostNetwrok: true`) would otherwise be
//! dropped without a word. Then: the RBAC is exactly the read-only access the
//! agent needs, the DaemonSet has the shape the agent relies on (host network,
//! `NET_ADMIN` only, node name from the downward API, probes on the health
//! server the command configures), and its command is accepted by the real
//! `portico-node-agent run`. The edge's files are checked in
//! `edge/tests/integration/deploy.rs`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Namespace, Probe, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

const BIN: &str = env!("CARGO_BIN_EXE_portico-node-agent");
const NAMESPACE: &str = "portico-system";
const ACCOUNT: &str = "portico-node-agent";

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// The kinds `deploy/node-agent.yaml` may hold.
enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    DaemonSet(Box<DaemonSet>),
}

/// Every YAML document of `file` as its typed object; panics on an unknown
/// kind, a wrong type, or a field the typed object does not keep.
fn objects(file: &Path) -> Vec<Object> {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    let mut objects = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(document)
            .unwrap_or_else(|e| panic!("{} document {i}: {e}", file.display()));
        if value.is_null() {
            continue;
        }
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let at = format!("deploy/{name} document {i}");
        let kind = value["kind"].as_str().unwrap_or_default();
        objects.push(match kind {
            "Namespace" => Object::Namespace(typed(&value, &at)),
            "ServiceAccount" => Object::ServiceAccount(typed(&value, &at)),
            "ClusterRole" => Object::ClusterRole(typed(&value, &at)),
            "ClusterRoleBinding" => Object::ClusterRoleBinding(typed(&value, &at)),
            "DaemonSet" => Object::DaemonSet(Box::new(typed(&value, &at))),
            other => panic!("{at}: unexpected kind {other:?}"),
        });
    }
    objects
}

#[path = "../../../deploy/manifest_checks.rs"]
mod manifest_checks;
use manifest_checks::{grants, triples, typed};

/// Every `--flag` the help text of `args` names.
fn help_flags(args: &[&str]) -> BTreeSet<String> {
    let out = Command::new(BIN)
        .args(args)
        .arg("--help")
        .output()
        .expect("run portico-node-agent");
    assert!(out.status.success(), "{args:?} --help: {out:?}");
    long_flags(&String::from_utf8_lossy(&out.stdout))
}

/// The `--flag` names in `text`, without values.
fn long_flags(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(str::to_string)
        .collect()
}

/// The value of `flag` in `command` (`--flag=v` or `--flag v`).
fn flag_value<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    command.iter().enumerate().find_map(|(i, arg)| {
        if arg == flag {
            command.get(i + 1).map(String::as_str)
        } else {
            arg.strip_prefix(flag)?.strip_prefix('=')
        }
    })
}

struct Manifest {
    namespaces: Vec<Namespace>,
    accounts: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemonsets: Vec<DaemonSet>,
}

fn manifest() -> Manifest {
    let mut m = Manifest {
        namespaces: Vec::new(),
        accounts: Vec::new(),
        roles: Vec::new(),
        bindings: Vec::new(),
        daemonsets: Vec::new(),
    };
    for object in objects(&deploy_file("node-agent.yaml")) {
        match object {
            Object::Namespace(o) => m.namespaces.push(o),
            Object::ServiceAccount(o) => m.accounts.push(o),
            Object::ClusterRole(o) => m.roles.push(o),
            Object::ClusterRoleBinding(o) => m.bindings.push(o),
            Object::DaemonSet(o) => m.daemonsets.push(*o),
        }
    }
    m
}

fn only<'a, T>(items: &'a [T], what: &str) -> &'a T {
    assert_eq!(items.len(), 1, "node-agent.yaml: exactly one {what}");
    &items[0]
}

fn the_container(ds: &DaemonSet) -> &Container {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert!(pod.init_containers.is_none(), "no init containers");
    assert_eq!(pod.containers.len(), 1, "one container");
    &pod.containers[0]
}

#[test]
fn namespace_and_account() {
    let m = manifest();
    let ns = only(&m.namespaces, "Namespace");
    assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
    let sa = only(&m.accounts, "ServiceAccount");
    assert_eq!(sa.metadata.name.as_deref(), Some(ACCOUNT));
    assert_eq!(sa.metadata.namespace.as_deref(), Some(NAMESPACE));
    let ds = only(&m.daemonsets, "DaemonSet");
    assert_eq!(ds.metadata.name.as_deref(), Some("portico-node-agent"));
    assert_eq!(ds.metadata.namespace.as_deref(), Some(NAMESPACE));
}

#[test]
fn rbac_is_read_only_services_endpointslices_nodes() {
    let m = manifest();
    let role = only(&m.roles, "ClusterRole");
    let read: &[&str] = &["get", "list", "watch"];
    assert_eq!(
        grants(role),
        triples(&[
            ("", "services", read),
            ("", "nodes", read),
            ("discovery.k8s.io", "endpointslices", read),
        ])
    );

    let binding = only(&m.bindings, "ClusterRoleBinding");
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "bound to the agent's account only");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, ACCOUNT);
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));

    let pod = only(&m.daemonsets, "DaemonSet")
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(ACCOUNT));
}

#[test]
fn daemonset_runs_on_every_node_in_the_host_network() {
    let m = manifest();
    let ds = only(&m.daemonsets, "DaemonSet");
    let spec = ds.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();

    // The selector must select the template, or the API server refuses it.
    let selector = spec.selector.match_labels.as_ref().expect("matchLabels");
    let labels = spec.template.metadata.as_ref().unwrap().labels.as_ref();
    for (key, value) in selector {
        assert_eq!(labels.and_then(|l| l.get(key)), Some(value), "{key}");
    }

    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint: {tolerations:?}"
    );
    assert!(
        pod.volumes.is_none(),
        "mounts nothing (no host paths either)"
    );
    assert_ne!(pod.host_pid, Some(true));

    let update = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        update.rolling_update.as_ref().unwrap().max_unavailable,
        Some(IntOrString::Int(1))
    );
}

#[test]
fn container_has_net_admin_only_and_a_read_only_root() {
    let m = manifest();
    let c = the_container(only(&m.daemonsets, "DaemonSet"));
    // The name `scripts/image node-agent` gives the image, at this version;
    // imported on the nodes, never pulled.
    assert_eq!(
        c.image.as_deref(),
        Some(format!("localhost/portico-node-agent:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true), "not privileged");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));

    let requests = c
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .expect("resource requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
}

/// The port a probe targets, a named container port resolved.
fn probe_port(c: &Container, probe: Option<&Probe>, path: &str) -> i32 {
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .unwrap_or_else(|| panic!("an HTTP probe of {path}"));
    assert_eq!(get.path.as_deref(), Some(path));
    match &get.port {
        IntOrString::Int(port) => *port,
        IntOrString::String(name) => container_port(c, name),
    }
}

fn container_port(c: &Container, name: &str) -> i32 {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no container port named {name}"))
        .container_port
}

#[test]
fn probes_and_ports_match_the_addresses_in_the_command() {
    let m = manifest();
    let c = the_container(only(&m.daemonsets, "DaemonSet"));
    let command = c.command.as_deref().expect("command");
    let addr = |flag: &str| -> SocketAddr {
        flag_value(command, flag)
            .unwrap_or_else(|| panic!("the command sets {flag}"))
            .parse()
            .unwrap_or_else(|e| panic!("{flag}: {e}"))
    };
    let health = i32::from(addr("--health-addr").port());
    assert_eq!(
        health,
        i32::from(portico_config::HealthSettings::default().kube_proxy_port),
        "the port the edge probes by default (kubeProxyPort)"
    );
    assert_eq!(probe_port(c, c.liveness_probe.as_ref(), "/livez"), health);
    assert_eq!(
        probe_port(c, c.readiness_probe.as_ref(), "/healthz"),
        health
    );
    let metrics = addr("--metrics-addr");
    assert_eq!(metrics.port(), 9731);
    assert!(metrics.ip().is_unspecified(), "scrapable from other hosts");
    assert_eq!(container_port(c, "metrics"), 9731);
}

#[test]
fn node_name_comes_from_the_downward_api() {
    let m = manifest();
    let c = the_container(only(&m.daemonsets, "DaemonSet"));
    let command = c.command.as_deref().expect("command");
    assert_eq!(flag_value(command, "--node-name"), Some("$(NODE_NAME)"));
    let env = c.env.as_deref().unwrap_or_default();
    let node_name = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME in env");
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");

    // Kubernetes leaves `$(X)` as written when X is not in env.
    for arg in command {
        let mut rest = arg.as_str();
        while let Some(start) = rest.find("$(") {
            let end = rest[start..].find(')').expect("closing )") + start;
            let var = &rest[start + 2..end];
            assert!(
                env.iter().any(|e| e.name == var),
                "{arg}: {var} is not in env"
            );
            rest = &rest[end..];
        }
    }
}

/// The command, with `$(NODE_NAME)` expanded as the kubelet does.
fn expanded_command(c: &Container) -> Vec<String> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .map(|arg| arg.replace("$(NODE_NAME)", "node-a"))
        .collect()
}

#[test]
fn command_uses_flags_the_binary_accepts() {
    let m = manifest();
    let c = the_container(only(&m.daemonsets, "DaemonSet"));
    let command = expanded_command(c);
    assert_eq!(
        command.first().map(String::as_str),
        Some("portico-node-agent")
    );
    assert_eq!(command.get(1).map(String::as_str), Some("run"));
    let args: Vec<&str> = command[2..].iter().map(String::as_str).collect();
    assert!(args.contains(&"--kubernetes"), "watches the API");
    assert!(
        flag_value(&command, "--manifests").is_none(),
        "not a manifest directory"
    );

    let known = help_flags(&["run"]);
    let unknown: Vec<_> = args
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .filter(|flag| !known.contains(*flag))
        .collect();
    assert!(
        unknown.is_empty(),
        "`portico-node-agent run --help` does not list {unknown:?} (it lists {known:?})"
    );

    // The real parser takes every flag and value (clap stops at `--help`
    // once everything before it has parsed, before required-flag checks).
    let out = Command::new(BIN)
        .arg("run")
        .args(&args)
        .arg("--help")
        .output()
        .expect("run portico-node-agent");
    assert!(
        out.status.success(),
        "portico-node-agent run {args:?} is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn readme_names_the_label_the_agent_handles() {
    let readme = std::fs::read_to_string(deploy_file("README.md")).expect("deploy/README.md");
    let label = format!(
        "service.kubernetes.io/service-proxy-name: {}",
        portico_config::cluster::DEFAULT_PROXY_NAME
    );
    assert!(readme.contains(&label), "deploy/README.md names {label}");
    let m = manifest();
    let c = the_container(only(&m.daemonsets, "DaemonSet"));
    assert_eq!(
        flag_value(c.command.as_deref().unwrap(), "--proxy-name"),
        None,
        "the DaemonSet keeps the default proxy name the README documents"
    );
}

#[test]
fn misspelt_fields_are_caught() {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  namspace: y\n",
    )
    .unwrap();
    let caught = std::panic::catch_unwind(|| typed::<ServiceAccount>(&value, "test"));
    let message = *caught
        .expect_err("namspace is not a field")
        .downcast::<String>()
        .unwrap();
    assert!(message.contains(".metadata.namspace"), "{message}");
}
