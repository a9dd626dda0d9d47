//! The edge's deployment files in `deploy/`: `edge-rbac.yaml`,
//! `edge-configmap.yaml` and the appliance's `portico-edge.service`.
//!
//! Every Kubernetes document is read as the typed object its `kind` names and
//! must serialise back to exactly what was written (`k8s_openapi` ignores
//! unknown fields, so a misspelt key would otherwise vanish). The RBAC must be
//! exactly what the edge uses, the example config must pass the real
//! validator, and the systemd unit must start `portico-edge run` with flags
//! the binary accepts, the capabilities the edge needs and nothing more, and
//! writable paths where the config and the flags put files.
//! `deploy/node-agent.yaml` is checked in
//! `node-agent/tests/integration/deploy.rs`.
//!
//! The files of several edges are checked by the daemons themselves:
//! `bird -p` parses `bird-edge.conf` and `bird-router.conf`, `keepalived
//! --config-test` reads `keepalived.conf`, `systemd-analyze verify` reads
//! the drop-ins in `systemd/`; a missing daemon is a loud skip, and a
//! failure under `CI=true`. The lab's `bgp` test runs the BIRD configs in
//! namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use portico_config::{
    parse_duration, parse_edge_config, EdgeConfig, KubernetesSettings, LeaderElection,
    ProxySettings, DEFAULT_LOAD_BALANCER_CLASS,
};
use serde::Deserialize;

const BIN: &str = env!("CARGO_BIN_EXE_portico-edge");
const NAMESPACE: &str = "portico-system";
const ACCOUNT: &str = "portico-edge";

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

// ---------------------------------------------------------------------------
// Kubernetes documents
// ---------------------------------------------------------------------------

/// The kinds the edge's manifests may hold.
enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    ConfigMap(ConfigMap),
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
            "Role" => Object::Role(typed(&value, &at)),
            "RoleBinding" => Object::RoleBinding(typed(&value, &at)),
            "ConfigMap" => Object::ConfigMap(typed(&value, &at)),
            other => panic!("{at}: unexpected kind {other:?}"),
        });
    }
    objects
}

#[path = "../../../deploy/manifest_checks.rs"]
mod manifest_checks;
use manifest_checks::{grants, triples, typed};

#[test]
fn rbac_is_exactly_what_the_edge_uses() {
    let (mut namespaces, mut accounts, mut roles, mut bindings) = (vec![], vec![], vec![], vec![]);
    let (mut lease_roles, mut lease_bindings) = (vec![], vec![]);
    for object in objects(&deploy_file("edge-rbac.yaml")) {
        match object {
            Object::Namespace(o) => namespaces.push(o),
            Object::ServiceAccount(o) => accounts.push(o),
            Object::ClusterRole(o) => roles.push(o),
            Object::ClusterRoleBinding(o) => bindings.push(o),
            Object::Role(o) => lease_roles.push(o),
            Object::RoleBinding(o) => lease_bindings.push(o),
            Object::ConfigMap(_) => panic!("edge-rbac.yaml: no ConfigMap expected"),
        }
    }
    assert_eq!(namespaces.len(), 1);
    assert_eq!(namespaces[0].metadata.name.as_deref(), Some(NAMESPACE));
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].metadata.name.as_deref(), Some(ACCOUNT));
    assert_eq!(accounts[0].metadata.namespace.as_deref(), Some(NAMESPACE));

    assert_eq!(roles.len(), 1);
    let read: &[&str] = &["get", "list", "watch"];
    let record: &[&str] = &["create", "list"];
    assert_eq!(
        grants(&roles[0]),
        triples(&[
            ("", "services", read),
            ("", "nodes", read),
            ("", "services/status", &["patch", "update"]),
            ("events.k8s.io", "events", record),
        ])
    );

    assert_eq!(bindings.len(), 1);
    let binding = &bindings[0];
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&binding.role_ref.name),
        roles[0].metadata.name.as_ref()
    );
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "bound to the edge's account only");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, ACCOUNT);
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));

    // The Lease of the default leader election, in its namespace only,
    // with the verbs the elector uses.
    let election = LeaderElection::default();
    assert_eq!(lease_roles.len(), 1);
    let role = &lease_roles[0];
    assert_eq!(
        role.metadata.namespace.as_deref(),
        Some(election.namespace.as_str())
    );
    let as_cluster_role = ClusterRole {
        rules: role.rules.clone(),
        ..ClusterRole::default()
    };
    assert_eq!(
        grants(&as_cluster_role),
        triples(&[("coordination.k8s.io", "leases", &["get", "create", "patch"])])
    );
    assert_eq!(lease_bindings.len(), 1);
    let binding = &lease_bindings[0];
    assert_eq!(binding.metadata.namespace, role.metadata.namespace);
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "bound to the edge's account only");
    assert_eq!(
        (subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
        (ACCOUNT, Some(NAMESPACE))
    );
}

/// The `edge.yaml` of `deploy/edge-configmap.yaml`.
fn configmap_edge_yaml() -> String {
    let mut maps: Vec<ConfigMap> = objects(&deploy_file("edge-configmap.yaml"))
        .into_iter()
        .map(|o| match o {
            Object::ConfigMap(m) => m,
            _ => panic!("edge-configmap.yaml holds a ConfigMap only"),
        })
        .collect();
    assert_eq!(maps.len(), 1);
    let map = maps.remove(0);
    assert_eq!(map.metadata.name.as_deref(), Some(ACCOUNT));
    assert_eq!(map.metadata.namespace.as_deref(), Some(NAMESPACE));
    let mut data = map.data.expect("data");
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["edge.yaml"],
        "one key, the file name the unit reads"
    );
    data.remove("edge.yaml").unwrap()
}

/// The appliance's config (`deploy/edge.yaml`, which the Debian package
/// installs as /etc/portico/edge.yaml) is the ConfigMap's, word for word:
/// one configuration for an edge in the cluster and on an appliance.
#[test]
fn the_appliance_config_is_the_configmaps() {
    let file = std::fs::read_to_string(deploy_file("edge.yaml")).expect("deploy/edge.yaml");
    assert_eq!(file, configmap_edge_yaml());
}

fn configmap_edge_config() -> EdgeConfig {
    parse_edge_config(&configmap_edge_yaml())
        .unwrap_or_else(|e| panic!("edge-configmap.yaml edge.yaml:\n{e}"))
}

/// The text of `deploy/edge-hook-api.yaml`.
fn hook_api_edge_yaml() -> String {
    std::fs::read_to_string(deploy_file("edge-hook-api.yaml")).expect("deploy/edge-hook-api.yaml")
}

/// `deploy/edge-hook-api.yaml`, the appliance's config when a
/// controller-manager drives it.
fn hook_api_edge_config() -> EdgeConfig {
    parse_edge_config(&hook_api_edge_yaml()).unwrap_or_else(|e| panic!("edge-hook-api.yaml:\n{e}"))
}

#[test]
fn configmap_config_watches_the_cluster_with_pools() {
    let settings = configmap_edge_config().settings;
    assert_eq!(
        settings.kubernetes,
        Some(KubernetesSettings {
            load_balancer_class: DEFAULT_LOAD_BALANCER_CLASS.to_string(),
            default_class: false,
            kubeconfig: None,
            leader_election: Some(LeaderElection::default()),
        }),
        "kubeconfig left to KUBECONFIG, which the unit sets; a Lease decides which edge writes"
    );

    assert_eq!(settings.address_pools.len(), 1);
    let pool = &settings.address_pools[0];
    assert_eq!(pool.name, "public");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    for inside in [
        "203.0.113.0",
        "203.0.113.15",
        "198.51.100.10",
        "198.51.100.20",
        "2001:db8:100::ff",
    ] {
        assert!(pool.contains(ip(inside)), "{inside} is in the pool");
    }
    for outside in ["203.0.113.16", "198.51.100.21", "2001:db8:100::100"] {
        assert!(!pool.contains(ip(outside)), "{outside} is not in the pool");
    }

    assert_eq!(
        settings.hook_api, None,
        "one edge: the watch or the hook API"
    );
}

#[test]
fn hook_api_config_serves_the_hook_api_from_a_pool() {
    let settings = hook_api_edge_config().settings;
    assert_eq!(settings.kubernetes, None);
    assert_eq!(settings.address_pools.len(), 1);
    let hook = settings.hook_api.expect("hookApi");
    assert_eq!(hook.listen, "0.0.0.0:9722".parse::<SocketAddr>().unwrap());
    assert_eq!(hook.token_file, Path::new("/etc/portico/hook-token"));
    assert_eq!(
        hook.state_file,
        Path::new("/var/lib/portico/hook-state.json")
    );
}

#[test]
fn both_edge_configs_pass_check_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in [
        ("edge-configmap.yaml", configmap_edge_yaml()),
        ("edge-hook-api.yaml", hook_api_edge_yaml()),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("write the config");
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&file)
            .output()
            .expect("run portico-edge");
        assert!(
            out.status.success(),
            "portico-edge check-config {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn readme_names_the_default_load_balancer_class() {
    let readme = std::fs::read_to_string(deploy_file("README.md")).expect("deploy/README.md");
    let class = format!("loadBalancerClass: {DEFAULT_LOAD_BALANCER_CLASS}");
    assert!(readme.contains(&class), "deploy/README.md shows {class}");
}

// ---------------------------------------------------------------------------
// The systemd unit
// ---------------------------------------------------------------------------

/// A unit file: section -> key -> every value given (keys may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// Reads a unit file as systemd does, for what this file uses: sections,
/// `Key=value` (repeatable), `#`/`;` comments, `\` line continuation.
fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section: Option<String> = None;
    let mut pending = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            unit.entry(name.to_string()).or_default();
            section = Some(name.to_string());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not Key=value: {line}", n + 1));
        let section = section
            .as_ref()
            .unwrap_or_else(|| panic!("line {}: outside a section", n + 1));
        unit.get_mut(section)
            .unwrap()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    assert!(pending.is_empty(), "the file ends in a continuation");
    unit
}

fn unit() -> Unit {
    let file = deploy_file("portico-edge.service");
    parse_unit(&std::fs::read_to_string(&file).expect("deploy/portico-edge.service"))
}

/// The one value of `key` in `[Service]`.
fn service<'a>(unit: &'a Unit, key: &str) -> &'a str {
    let values = unit["Service"]
        .get(key)
        .unwrap_or_else(|| panic!("[Service] has no {key}"));
    assert_eq!(values.len(), 1, "{key} is set once");
    &values[0]
}

/// The value of `flag` in `command` (`--flag=v` or `--flag v`).
fn flag_value<'a>(command: &[&'a str], flag: &str) -> Option<&'a str> {
    command.iter().enumerate().find_map(|(i, arg)| {
        if *arg == flag {
            command.get(i + 1).copied()
        } else {
            arg.strip_prefix(flag)?.strip_prefix('=')
        }
    })
}

/// The `--flag` names in `text`, without values.
fn long_flags(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(str::to_string)
        .collect()
}

#[test]
fn unit_has_its_sections() {
    let unit = unit();
    assert_eq!(
        unit.keys().map(String::as_str).collect::<Vec<_>>(),
        ["Install", "Service", "Unit"]
    );
    assert_eq!(unit["Install"]["WantedBy"], ["multi-user.target"]);
    assert_eq!(unit["Unit"]["After"], ["network-online.target"]);
}

#[test]
fn unit_runs_the_edge_with_flags_it_accepts() {
    let unit = unit();
    let exec = service(&unit, "ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words[..2], ["/usr/bin/portico-edge", "run"]);
    let args = &words[2..];

    let help = Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .expect("run portico-edge");
    assert!(help.status.success());
    let known = long_flags(&String::from_utf8_lossy(&help.stdout));
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        let flag = arg.split('=').next().unwrap();
        assert!(
            known.contains(flag),
            "`portico-edge run --help` does not list {flag} (it lists {known:?})"
        );
    }
    // The real parser takes every flag and value (clap stops at `--help`
    // once everything before it has parsed).
    let out = Command::new(BIN)
        .arg("run")
        .args(args)
        .arg("--help")
        .output()
        .expect("run portico-edge");
    assert!(
        out.status.success(),
        "portico-edge run {args:?} is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(flag_value(args, "--config"), Some("/etc/portico/edge.yaml"));
    assert!(
        !args.contains(&"--takeover"),
        "a takeover is not how the unit starts"
    );
    // ProtectSystem=strict: the upgrade socket's directory must be writable,
    // and the default (/run/portico-edge) is not.
    let socket = flag_value(args, "--upgrade-socket").expect("--upgrade-socket");
    let runtime = format!("/run/{}/", service(&unit, "RuntimeDirectory"));
    assert!(socket.starts_with(&runtime), "{socket} is under {runtime}");

    assert_eq!(service(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(service(&unit, "Restart"), "on-failure");
    assert_eq!(
        unit["Service"]["Environment"],
        ["KUBECONFIG=/etc/portico/kubeconfig"]
    );
}

#[test]
fn unit_stops_after_the_drain() {
    let unit = unit();
    assert_eq!(service(&unit, "KillSignal"), "SIGTERM");
    let stop = parse_duration(service(&unit, "TimeoutStopSec")).expect("TimeoutStopSec");
    let drains = [
        ProxySettings::default().drain_timeout,
        configmap_edge_config().settings.proxy.drain_timeout,
    ];
    for drain in drains {
        assert!(
            stop > drain,
            "TimeoutStopSec {stop:?} must exceed drainTimeout {drain:?}"
        );
    }
}

#[test]
fn unit_has_three_capabilities_and_is_hardened() {
    let unit = unit();
    let expected = BTreeSet::from(["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]);
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let caps: BTreeSet<&str> = unit["Service"][key]
            .iter()
            .flat_map(|v| v.split_whitespace())
            .collect();
        assert_eq!(caps, expected, "{key}");
    }
    for (key, value) in [
        ("User", "portico"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("LimitNOFILE", "1048576"),
        ("StateDirectory", "portico"),
        ("RuntimeDirectory", "portico"),
    ] {
        assert_eq!(service(&unit, key), value, "{key}");
    }
    let writable: BTreeSet<&str> = service(&unit, "ReadWritePaths")
        .split_whitespace()
        .collect();
    assert_eq!(
        writable,
        BTreeSet::from(["/run/portico", "/var/lib/portico"])
    );
}

#[test]
fn hook_api_state_is_where_the_unit_may_write() {
    let unit = unit();
    let state = format!("/var/lib/{}/", service(&unit, "StateDirectory"));
    let hook = hook_api_edge_config().settings.hook_api.expect("hookApi");
    assert!(
        hook.state_file.starts_with(&state),
        "{} is under {state}",
        hook.state_file.display()
    );
}

#[test]
fn unit_parser_reads_continuations_and_repeats() {
    let unit = parse_unit("# c\n[Service]\nA=1 \\\n  2\n; c\nA=3\n[Install]\n");
    assert_eq!(unit["Service"]["A"], ["1  2", "3"]);
    assert!(unit["Install"].is_empty());
}

#[test]
fn misspelt_fields_are_caught() {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndatas:\n  a: b\n",
    )
    .unwrap();
    let caught = std::panic::catch_unwind(|| typed::<ConfigMap>(&value, "test"));
    let message = *caught
        .expect_err("datas is not a field")
        .downcast::<String>()
        .unwrap();
    assert!(message.contains(".datas"), "{message}");
}

// ---------------------------------------------------------------------------
// Several edges: BIRD, keepalived and their systemd drop-ins
// ---------------------------------------------------------------------------

#[test]
fn bird_configs_parse() {
    if !portico_lab::command::installed_or_skip(
        "bird -p of deploy/bird-*.conf",
        &[("bird", "bird2")],
    ) {
        return;
    }
    for name in ["bird-edge.conf", "bird-router.conf"] {
        let file = deploy_file(name);
        portico_lab::routing::bird_parse(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // A broken copy is refused: the check reads the file.
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.conf");
    let text = std::fs::read_to_string(deploy_file("bird-edge.conf")).expect("bird-edge.conf");
    std::fs::write(&broken, text.replace("learn;", "lern;")).expect("write");
    assert!(portico_lab::routing::bird_parse(&broken).is_err());
}

#[test]
fn bird_edge_config_keeps_the_contract_with_the_edge() {
    let text = std::fs::read_to_string(deploy_file("bird-edge.conf")).expect("bird-edge.conf");
    let table = portico_lab::routing::VIP_TABLE;
    let proto = portico_lab::routing::VIP_PROTO;
    for line in [
        format!("define VIP_TABLE = {table};"),
        format!("define VIP_PROTO = {proto};"),
        "kernel table VIP_TABLE;".to_string(),
        "learn;".to_string(),
        "if krt_source = VIP_PROTO && net.len = 32 then accept;".to_string(),
        "if krt_source = VIP_PROTO && net.len = 128 then accept;".to_string(),
        "bfd on;".to_string(),
        "graceful restart on;".to_string(),
        "import none;".to_string(),
        "next hop self;".to_string(),
        "interval 300 ms;".to_string(),
        "multiplier 3;".to_string(),
    ] {
        assert!(
            text.lines().any(|l| l.trim() == line),
            "bird-edge.conf has `{line}`"
        );
    }
    // BFD down must withdraw at once: `bfd graceful` would keep the routes.
    assert!(
        !text
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("bfd graceful")),
        "bird-edge.conf: `bfd graceful`"
    );
}

#[test]
fn bird_router_config_spreads_over_every_edge() {
    let text = std::fs::read_to_string(deploy_file("bird-router.conf")).expect("bird-router.conf");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| **l == "merge paths yes limit 16;")
            .count(),
        2,
        "ECMP into the kernel, both families"
    );
    for line in [
        "bfd on;",
        "interval 300 ms;",
        "multiplier 3;",
        "if net.len = 32 then accept;",
        "if net.len = 128 then accept;",
    ] {
        assert!(lines.contains(&line), "bird-router.conf has `{line}`");
    }
    for sysctl in [
        "net.ipv4.fib_multipath_hash_policy=1",
        "net.ipv6.fib_multipath_hash_policy=1",
    ] {
        assert!(text.contains(sysctl), "bird-router.conf names {sysctl}");
    }
}

/// The SIGTERM keepalived 2.2.7 sends itself at the end of `--config-test`
/// when `script_user` is not root (it checks the script as that user, then
/// takes the parent it has not got for dead).
const KEEPALIVED_TEST_SIGTERM: i32 = 15;

/// `keepalived --config-test` of `text`: the exit status and what it
/// logged (each problem it finds is a line there).
fn keepalived_config_test(text: &str) -> (std::process::ExitStatus, String) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    // keepalived refuses an executable config file, and a config
    // others may write when it runs scripts.
    let conf = dir.path().join("keepalived.conf");
    std::fs::write(&conf, text).expect("write the config");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let log = dir.path().join("config-test.log");
    // -t (--config-test=LOG) reads and checks the config and exits: no
    // daemon, no pid file, no VRRP packet; -l keeps its own messages on
    // the console rather than syslog.
    let out = Command::new(portico_lab::command::daemon_program("keepalived"))
        .arg("-l")
        .arg(format!("--config-test={}", log.display()))
        .arg("-f")
        .arg(&conf)
        .output()
        .expect("run keepalived");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    (
        out.status,
        format!("{logged}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn keepalived_config_passes_config_test() {
    use std::os::unix::process::ExitStatusExt as _;
    if !portico_lab::command::installed_or_skip(
        "keepalived --config-test",
        &[("keepalived", "keepalived")],
    ) {
        return;
    }
    let text = std::fs::read_to_string(deploy_file("keepalived.conf")).expect("keepalived.conf");
    let (status, logged) = keepalived_config_test(&text);
    assert!(
        status.success() || status.signal() == Some(KEEPALIVED_TEST_SIGTERM),
        "keepalived --config-test: {status}\n{logged}"
    );
    assert_eq!(logged.trim(), "", "keepalived --config-test found problems");

    // The same file with the script run as root, which keepalived checks to
    // the end with a plain exit status (as root only: keepalived not running
    // as root refuses to run a script as root).
    let as_root = text.replace("script_user nobody", "script_user root");
    assert_ne!(as_root, text, "keepalived.conf sets script_user nobody");
    if nix::unistd::geteuid().is_root() {
        let (status, logged) = keepalived_config_test(&as_root);
        assert!(status.success(), "{status}\n{logged}");
        assert_eq!(logged.trim(), "");
    }

    // A misspelt keyword is reported: the check reads the file.
    let (_, logged) = keepalived_config_test(&text.replace("virtual_router_id", "virtual_router"));
    assert!(logged.contains("virtual_router"), "{logged}");
}

#[test]
fn keepalived_checks_the_edge_readiness() {
    let text = std::fs::read_to_string(deploy_file("keepalived.conf")).expect("keepalived.conf");
    let admin = portico_config::EdgeSettings::default().admin_listen;
    let check = format!("script \"/usr/bin/curl -fsS -m 1 http://{admin}/readyz\"");
    assert!(
        text.lines().any(|l| l.trim() == check),
        "keepalived.conf runs `{check}`"
    );
    for key in [
        "track_script {",
        "virtual_ipaddress {",
        "garp_master_refresh 10",
    ] {
        assert!(
            text.lines().any(|l| l.trim() == key),
            "keepalived.conf has `{key}`"
        );
    }
}

/// The systemd drop-ins of `deploy/systemd/`: (unit, file).
const DROP_INS: [(&str, &str); 2] = [
    ("bird.service", "systemd/bird.service.d/portico.conf"),
    (
        "keepalived.service",
        "systemd/keepalived.service.d/portico.conf",
    ),
];

#[test]
fn drop_ins_tie_the_daemons_to_the_edge_without_following_its_restarts() {
    for (unit_name, file) in DROP_INS {
        let text = std::fs::read_to_string(deploy_file(file)).expect(file);
        let unit = parse_unit(&text);
        // keepalived's drop-in also restarts it (Debian's unit does not);
        // BIRD's keeps Debian's `Restart=on-abort`.
        let sections: &[&str] = if unit_name == "keepalived.service" {
            &["Service", "Unit"]
        } else {
            &["Unit"]
        };
        assert_eq!(
            unit.keys().map(String::as_str).collect::<Vec<_>>(),
            sections,
            "{file}"
        );
        if unit_name == "keepalived.service" {
            assert_eq!(unit["Service"]["Restart"], ["on-failure"], "{file}");
        }
        assert_eq!(unit["Unit"]["Wants"], ["portico-edge.service"], "{file}");
        assert_eq!(unit["Unit"]["After"], ["portico-edge.service"], "{file}");
        // These would stop or restart the daemon with the edge: BIRD's
        // restart withdraws every VIP, keepalived's hands them to the peer.
        for key in ["BindsTo", "PartOf", "Requires", "Requisite"] {
            assert!(
                !unit["Unit"].contains_key(key),
                "{file}: {key}= would tie {unit_name} to the edge's restarts"
            );
        }
    }
}

/// Keys systemd knows, of those a drop-in here may use, by section: the
/// check when `systemd-analyze` is not installed.
const KNOWN_KEYS: [(&str, &[&str]); 2] = [
    (
        "Unit",
        &[
            "Description",
            "Documentation",
            "Wants",
            "Requires",
            "After",
            "Before",
            "BindsTo",
            "PartOf",
        ],
    ),
    ("Service", &["Restart", "RestartSec"]),
];

#[test]
fn drop_ins_name_directives_systemd_knows() {
    let Some(analyze) = portico_lab::command::find_on_path("systemd-analyze") else {
        // Without systemd-analyze (the systemd package): the keys against
        // the list above.
        let why = "systemd-analyze is not installed: checking the drop-ins' keys against a list";
        if let Err(e) = writeln!(std::io::stderr(), "{why}") {
            panic!("{why} (and stderr failed: {e})");
        }
        for (_, file) in DROP_INS {
            let text = std::fs::read_to_string(deploy_file(file)).expect(file);
            for (section, keys) in parse_unit(&text) {
                for key in keys.keys() {
                    assert!(
                        KNOWN_KEYS
                            .iter()
                            .any(|(s, known)| *s == section && known.contains(&key.as_str())),
                        "{file}: [{section}] {key} is not a key this check knows"
                    );
                }
            }
        }
        return;
    };
    // `systemd-analyze verify` of each unit with its drop-in, in a unit
    // directory of its own: stand-in units (their own ExecStart is not what
    // is checked) and the drop-in as shipped. An unknown key is a warning
    // naming the drop-in's path; the exit status does not change for it.
    let verify = |drop_in_text: &str, unit_name: &str| -> (bool, String, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        // No default dependencies: the directory holds no sysinit.target.
        let stand_in = "[Unit]\nDescription=stand-in\nDefaultDependencies=no\n\
                        [Service]\nExecStart=/bin/true\n";
        for name in [unit_name, "portico-edge.service"] {
            std::fs::write(dir.path().join(name), stand_in).expect("write a stand-in unit");
        }
        let drop_in_dir = dir.path().join(format!("{unit_name}.d"));
        std::fs::create_dir(&drop_in_dir).expect("mkdir");
        std::fs::write(drop_in_dir.join("portico.conf"), drop_in_text).expect("write");
        let out = Command::new(&analyze)
            .args(["verify", "--man=no"])
            .arg(dir.path().join(unit_name))
            // The directory, then nothing else of this machine's.
            .env("SYSTEMD_UNIT_PATH", dir.path())
            .output()
            .expect("run systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mentions = stderr
            .lines()
            .filter(|l| l.contains("portico.conf"))
            .collect::<Vec<_>>()
            .join("\n");
        (out.status.success(), mentions, stderr)
    };
    for (unit_name, file) in DROP_INS {
        let text = std::fs::read_to_string(deploy_file(file)).expect(file);
        let (ok, mentions, stderr) = verify(&text, unit_name);
        assert!(
            ok,
            "systemd-analyze verify {unit_name} with {file} failed: {stderr}"
        );
        assert_eq!(mentions, "", "systemd-analyze on {file}");
        // The check sees a key it does not know: the drop-in was read.
        let (_, mentions, _) = verify(&format!("{text}Wantz=x.service\n"), unit_name);
        assert!(mentions.contains("Wantz"), "{mentions}");
    }
}

/// With `settings.announce` the edge opens `/dev/net/tun` (its VIP routes'
/// device) and BIRD's control socket, which the unit's sandbox closes:
/// `deploy/systemd/portico-edge.service.d/announce.conf` opens exactly
/// those, and systemd reads the shipped unit with it.
#[test]
fn the_announce_drop_in_opens_the_tun_device_and_birds_socket_only() {
    let file = "systemd/portico-edge.service.d/announce.conf";
    let text = std::fs::read_to_string(deploy_file(file)).expect(file);
    let drop_in = parse_unit(&text);
    assert_eq!(
        drop_in.keys().map(String::as_str).collect::<Vec<_>>(),
        ["Service"]
    );
    let keys = &drop_in["Service"];
    let expected: BTreeMap<String, Vec<String>> = [
        ("DeviceAllow", "/dev/net/tun rw"),
        ("DevicePolicy", "closed"),
        ("PrivateDevices", "no"),
        ("SupplementaryGroups", "bird"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
    .collect();
    assert_eq!(keys, &expected, "{file}: exactly these, nothing else");
    // What it opens is what the edge uses by default.
    assert_eq!(
        portico_config::AnnounceSettings::default().bird_socket,
        Path::new("/run/bird/bird.ctl")
    );
    // The base unit keeps its own sandbox (the drop-in loosens devices only).
    assert_eq!(service(&unit(), "PrivateDevices"), "yes");

    let Some(analyze) = portico_lab::command::find_on_path("systemd-analyze") else {
        let why = "systemd-analyze is not installed: the announce drop-in's keys checked only";
        if let Err(e) = writeln!(std::io::stderr(), "{why}") {
            panic!("{why} (and stderr failed: {e})");
        }
        return;
    };
    // The shipped unit (its binary where this test's build put it, no
    // default dependencies: the directory holds no sysinit.target) with the
    // drop-in, in a unit directory of its own.
    let verify = |drop_in_text: &str| -> (bool, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let unit_text = std::fs::read_to_string(deploy_file("portico-edge.service"))
            .expect("portico-edge.service")
            .replace("/usr/bin/portico-edge", env!("CARGO_BIN_EXE_portico-edge"))
            .replace("[Unit]\n", "[Unit]\nDefaultDependencies=no\n");
        std::fs::write(dir.path().join("portico-edge.service"), unit_text).expect("unit");
        std::fs::write(
            dir.path().join("network-online.target"),
            "[Unit]\nDescription=stand-in\n",
        )
        .expect("target");
        let drop_ins = dir.path().join("portico-edge.service.d");
        std::fs::create_dir(&drop_ins).expect("mkdir");
        std::fs::write(drop_ins.join("announce.conf"), drop_in_text).expect("drop-in");
        let out = Command::new(&analyze)
            .args(["verify", "--man=no"])
            .arg(dir.path().join("portico-edge.service"))
            .env("SYSTEMD_UNIT_PATH", dir.path())
            .output()
            .expect("run systemd-analyze");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = verify(&text);
    assert!(ok, "systemd-analyze verify: {stderr}");
    assert!(!stderr.contains("announce.conf"), "{stderr}");
    // The check reads the drop-in: a key systemd does not know is named.
    let (_, stderr) = verify(&format!("{text}DeviceAlow=x\n"));
    assert!(stderr.contains("DeviceAlow"), "{stderr}");
}
