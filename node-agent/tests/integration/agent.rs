//! End-to-end tests of the `portico-node-agent` binary: it runs inside a
//! "node" network namespace (`ip netns exec <node> portico-node-agent run`),
//! programs that namespace's nftables from a directory of Kubernetes
//! manifests written by the test, and serves its health checks there; a
//! client namespace connects to the NodePort and reaches pod namespaces
//! behind the node's bridge (topology in `support/netns.rs`).
//!
//! Every agent is killed and reaped by a drop guard (its stderr printed when
//! the test fails); every namespace is removed by one. Skips loudly when not
//! root; fails under `CI=true`.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::netns::*;
use crate::support::privileged;
use crate::support::process::{metric, Agent, AgentConfig, AgentSource, BIN, HEALTH_PORT, RECHECK};

const NODE_PORT: u16 = 30080;
const CLUSTER_IP: &str = "10.96.0.10";
const SYNC_PERIOD: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------

fn node_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Node
metadata:
  name: {name}
status:
  addresses:
    - type: InternalIP
      address: {NODE_IP}
    - type: Hostname
      address: {name}
"
    )
}

/// [`node_yaml`] with the cluster autoscaler's "about to remove" taint.
fn tainted_node_yaml(name: &str) -> String {
    format!(
        "{}spec:
  taints:
    - key: ToBeDeletedByClusterAutoscaler
      value: \"1764097647\"
      effect: NoSchedule
",
        node_yaml(name)
    )
}

/// A LoadBalancer Service for the `portico` proxy with one TCP port (80 ->
/// the pods' named port `http`) on NodePort `node_port`.
fn service_yaml(
    name: &str,
    cluster_ip: &str,
    node_port: u16,
    policy: &str,
    health_check_port: Option<u16>,
) -> String {
    let hc = health_check_port
        .map(|p| format!("  healthCheckNodePort: {p}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  labels:
    service.kubernetes.io/service-proxy-name: portico
spec:
  type: LoadBalancer
  clusterIP: {cluster_ip}
  clusterIPs: [{cluster_ip}]
  externalTrafficPolicy: {policy}
{hc}  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: http
      nodePort: {node_port}
"
    )
}

/// An EndpointSlice of `service` with ready endpoints `(address, node)`.
fn slice_yaml(service: &str, endpoints: &[(String, &str)]) -> String {
    let mut eps = String::new();
    for (addr, node) in endpoints {
        eps.push_str(&format!(
            "  - addresses: [\"{addr}\"]\n    conditions: {{ready: true, serving: true, terminating: false}}\n    nodeName: {node}\n"
        ));
    }
    if endpoints.is_empty() {
        eps.push_str("  []\n");
    }
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-abc
  namespace: default
  labels:
    kubernetes.io/service-name: {service}
addressType: IPv4
ports:
  - name: http
    protocol: TCP
    port: {POD_PORT}
endpoints:
{eps}"
    )
}

/// Replaces `dir/name` atomically (a hidden temporary file, which the agent
/// ignores, renamed over it), so the agent never reads half a file.
fn write_manifest(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, dir.join(name)).unwrap_or_else(|e| panic!("rename to {name}: {e}"));
}

/// The pods' endpoints, all on `node`.
fn on_node(pods: &[&Pod], node: &str) -> Vec<(String, String)> {
    pods.iter()
        .map(|p| (p.addr.to_string(), node.to_string()))
        .collect()
}

fn borrowed(eps: &[(String, String)]) -> Vec<(String, &str)> {
    eps.iter().map(|(a, n)| (a.clone(), n.as_str())).collect()
}

// ---------------------------------------------------------------------------
// Scenario
// ---------------------------------------------------------------------------

/// A lab with two pods behind the node, their servers, and a manifest
/// directory with the Node and the Service `web` (Cluster policy) whose
/// slice holds both pods on this node.
struct Scenario {
    // Field order is drop order: the agent dies before its namespace goes.
    agent: Option<Agent>,
    /// Kept for their drop (stops them).
    _servers: Vec<EchoServer>,
    dir: tempfile::TempDir,
    pods: Vec<Pod>,
    node_name: String,
    lab: Lab,
}

impl Scenario {
    fn new(test: &str) -> Scenario {
        let (lab, pods) = Lab::new("pa", test, &["pod-a", "pod-b"]);
        let servers = lab.serve(&pods);
        let node_name = lab.ns("node");
        let dir = tempfile::tempdir().expect("manifest dir");
        write_manifest(dir.path(), "00-node.yaml", &node_yaml(&node_name));
        write_manifest(
            dir.path(),
            "10-web.yaml",
            &service_yaml("web", CLUSTER_IP, NODE_PORT, "Cluster", None),
        );
        let mut s = Scenario {
            agent: None,
            _servers: servers,
            dir,
            pods,
            node_name,
            lab,
        };
        s.set_web_endpoints(&[0, 1]);
        s
    }

    fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Rewrites `web`'s slice with the given pods (by index), ready here.
    fn set_web_endpoints(&mut self, which: &[usize]) {
        let pods: Vec<&Pod> = which.iter().map(|&i| &self.pods[i]).collect();
        let eps = on_node(&pods, &self.node_name);
        write_manifest(
            self.dir.path(),
            "20-web-slice.yaml",
            &slice_yaml("web", &borrowed(&eps)),
        );
    }

    fn start_agent(&mut self, label: &str, health_bind_ip: &str) -> &mut Agent {
        self.start_agent_with(label, health_bind_ip, None, SYNC_PERIOD)
    }

    /// [`Scenario::start_agent`] with `nft` looked up in `nft_dir` first
    /// and the given sync period.
    fn start_agent_with(
        &mut self,
        label: &str,
        health_bind_ip: &str,
        nft_dir: Option<&Path>,
        sync_period: Duration,
    ) -> &mut Agent {
        let dir = self.dir();
        let agent = Agent::start(
            &self.lab,
            label,
            &AgentConfig {
                source: AgentSource::Manifests(&dir),
                node_name: &self.node_name,
                health_bind_ip,
                nft_dir,
                sync_period,
                image: None,
            },
        );
        self.agent.insert(agent)
    }

    /// `GET path` on the node health server, from the client.
    fn node_health(&self, path: &str) -> Http {
        self.lab
            .http_get("client", NODE_IP, HEALTH_PORT, path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent started")
    }

    fn metrics(&self) -> String {
        self.agent
            .as_ref()
            .expect("agent started")
            .metrics(&self.lab)
    }

    fn web(&self) -> std::io::Result<String> {
        self.lab.hello(NODE_IP, NODE_PORT)
    }

    /// Connects until every pod in `want` answered and no other did, at
    /// most 64 connections (a pod is missed with probability 2^-63).
    fn reach_all(&self, want: &[&str]) {
        let mut seen = BTreeSet::new();
        for _ in 0..64 {
            let answer = self
                .web()
                .unwrap_or_else(|e| panic!("{NODE_IP}:{NODE_PORT}: {e}"));
            let (pod, peer) = answer.split_once(' ').expect("answer is `<pod> <peer>`");
            assert!(
                want.contains(&pod),
                "answered by {pod}, expected one of {want:?}"
            );
            assert_eq!(
                peer, NODE_BRIDGE_IP,
                "Cluster policy masquerades to the node"
            );
            seen.insert(pod.to_string());
            if seen.len() == want.len() {
                return;
            }
        }
        panic!("only {seen:?} answered in 64 connections, expected {want:?}");
    }

    /// Waits until the NodePort answers (the agent's first sync).
    fn wait_web(&self, limit: Duration) -> Duration {
        wait_for("the NodePort to answer", limit, RECHECK, || self.web().ok()).1
    }

    /// Waits until `nft list table inet portico` in the node namespace
    /// satisfies `check`.
    fn wait_table(&self, what: &str, limit: Duration, check: impl Fn(&str) -> bool) -> Duration {
        wait_for(what, limit, RECHECK, || {
            let (ok, out, _) = self.lab.nft(&["list", "table", "inet", "portico"]);
            (ok && check(&out)).then_some(())
        })
        .1
    }
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// An `nft` for the agent's `PATH`: while its flag file exists it fails as
/// nft does when the kernel refuses a transaction (a message, exit 1);
/// otherwise it runs the real `nft`. Removed on drop.
struct NftWrapper {
    dir: tempfile::TempDir,
}

impl NftWrapper {
    fn new() -> NftWrapper {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let real = std::env::split_paths(&path)
            .map(|dir| dir.join("nft"))
            .find(|p| p.is_file())
            .expect("nft on PATH");
        let dir = tempfile::tempdir().expect("wrapper dir");
        let flag = dir.path().join("broken");
        for p in [&real, &flag] {
            assert!(!p.to_string_lossy().contains('\''), "{}", p.display());
        }
        let script = format!(
            "#!/bin/sh\nif [ -e '{}' ]; then\n  echo 'Error: injected failure (test wrapper)' >&2\n  exit 1\nfi\nexec '{}' \"$@\"\n",
            flag.display(),
            real.display()
        );
        let wrapper = dir.path().join("nft");
        fs::write(&wrapper, script).expect("write the nft wrapper");
        let mut perms = fs::metadata(&wrapper).expect("wrapper").permissions();
        perms.set_mode(0o755);
        fs::set_permissions(&wrapper, perms).expect("chmod the nft wrapper");
        NftWrapper { dir }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn set_broken(&self, broken: bool) {
        let flag = self.dir.path().join("broken");
        if broken {
            fs::write(&flag, "").expect("create the flag");
        } else {
            fs::remove_file(&flag).expect("remove the flag");
        }
    }
}

/// A `/healthz` or `/livez` body.
fn health_json(resp: &Http) -> serde_json::Value {
    serde_json::from_str(&resp.body).unwrap_or_else(|e| panic!("{e}: {resp:?}"))
}

/// Progress and timings: shown for failing tests, or with `--nocapture`.
fn log(msg: &str) {
    eprintln!("{msg}");
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// 1 and 2: the agent programs the NodePort from the manifests, serves
/// `/healthz` and `/metrics`, and follows a manifest change (an endpoint
/// removed, then added back) within a poll or two.
#[test]
fn agent_serves_the_nodeport_and_follows_manifest_changes() {
    if !privileged("agent_serves_the_nodeport_and_follows_manifest_changes") {
        return;
    }
    let started = Instant::now();
    let mut s = Scenario::new("follow");
    s.start_agent("agent", NODE_IP);
    let first = s.wait_web(Duration::from_secs(10));
    log(&format!(
        "follow: first NodePort answer {first:?} after start"
    ));
    s.reach_all(&["pod-a", "pod-b"]);

    let health = s
        .lab
        .http_get("client", NODE_IP, HEALTH_PORT, "/healthz")
        .expect("GET /healthz");
    assert_eq!(health.status, 200, "{health:?}");
    let body: serde_json::Value = serde_json::from_str(&health.body).expect("healthz JSON");
    assert_eq!(
        body["nodeEligible"],
        serde_json::Value::Bool(true),
        "{}",
        health.body
    );
    assert_eq!(health.header("content-type"), Some("application/json"));
    let livez = s
        .lab
        .http_get("client", NODE_IP, HEALTH_PORT, "/livez")
        .expect("GET /livez");
    assert_eq!(livez.status, 200, "{livez:?}");

    // The kernel has the rules a moment before the agent records the sync.
    s.agent().wait_syncs(1, Duration::from_secs(5));
    let metrics = s.metrics();
    assert_eq!(
        metric(&metrics, "portico_node_agent_source_errors"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "portico_node_agent_sync_failures_total"),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "portico_node_agent_last_sync_timestamp_seconds").is_some_and(|t| t > 0.0),
        "{metrics}"
    );

    // pod-b leaves the slice.
    let pod_b = s.pods[1].addr.to_string();
    s.set_web_endpoints(&[0]);
    let removed = s.wait_table("pod-b out of the table", Duration::from_secs(5), |t| {
        !t.contains(&pod_b)
    });
    log(&format!(
        "follow: endpoint removal in the kernel after {removed:?}"
    ));
    assert!(
        removed < Duration::from_secs(1),
        "removal took {removed:?} (goal < 1 s)"
    );
    for _ in 0..32 {
        let answer = s.web().expect("pod-a answers");
        assert!(answer.starts_with("pod-a "), "{answer}");
    }

    // And back.
    let back_started = Instant::now();
    s.set_web_endpoints(&[0, 1]);
    let back = s.wait_table("pod-b back in the table", Duration::from_secs(5), |t| {
        t.contains(&pod_b)
    });
    log(&format!("follow: endpoint re-added after {back:?}"));
    assert!(
        back < Duration::from_secs(1),
        "re-adding took {back:?} (goal < 1 s)"
    );
    s.reach_all(&["pod-a", "pod-b"]);
    assert!(back_started.elapsed() < Duration::from_secs(5));

    s.agent().assert_running();
    log(&format!("follow: done in {:?}", started.elapsed()));
}

/// 3: an agent restart leaves the rules in place: a held connection through
/// the NodePort keeps echoing and new connections never fail meanwhile.
#[test]
fn agent_restart_keeps_connections_and_rules() {
    if !privileged("agent_restart_keeps_connections_and_rules") {
        return;
    }
    let started = Instant::now();
    let mut s = Scenario::new("restart");
    s.start_agent("first agent", NODE_IP)
        .wait_syncs(1, Duration::from_secs(10));
    s.wait_web(Duration::from_secs(10));
    let mut held = s.lab.open(NODE_IP, NODE_PORT).expect("held connection");
    assert_eq!(held.echo("before").expect("echo before"), "before");

    // A prober connects over and over while the agent restarts (stopped
    // by the guard also when the test fails, so the scope can end).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failures) = {
        let lab = &s.lab;
        std::thread::scope(|scope| {
            let _stop_prober = StopOnDrop(stop.clone());
            let stopped = stop.clone();
            let prober = scope.spawn(move || {
                let (mut ok, mut failures) = (0usize, Vec::new());
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match lab.hello(NODE_IP, NODE_PORT) {
                        Ok(_) => ok += 1,
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (ok, failures)
            });

            let agent = s.agent.as_mut().expect("agent");
            let status = agent.stop();
            assert!(
                status.success(),
                "agent exit status {status}:\n{}",
                agent.stderr()
            );
            assert!(
                agent.stderr().contains("rules left in place"),
                "no shutdown message:\n{}",
                agent.stderr()
            );
            assert!(s.lab.has_table(), "the table must survive the agent's exit");
            assert_eq!(held.echo("between").expect("echo while stopped"), "between");

            let dir = s.dir.path().to_path_buf();
            let mut second = Agent::start(
                &s.lab,
                "second agent",
                &AgentConfig {
                    source: AgentSource::Manifests(&dir),
                    node_name: &s.node_name,
                    health_bind_ip: NODE_IP,
                    nft_dir: None,
                    sync_period: SYNC_PERIOD,
                    image: None,
                },
            );
            // Its first sync is a full resync over the existing table; let a
            // second one (the next period) pass too.
            let took = second.wait_syncs(2, Duration::from_secs(10));
            log(&format!("restart: second agent's 2 syncs after {took:?}"));
            stop.store(true, Ordering::SeqCst);
            let result = prober.join().expect("prober");
            s.agent = Some(second);
            result
        })
    };
    log(&format!(
        "restart: {ok} connections during the restart, {} failed",
        failures.len()
    ));
    assert!(
        failures.is_empty(),
        "connections failed during the restart: {failures:?}"
    );
    assert!(ok > 0, "the prober made no connection");
    assert_eq!(held.echo("after").expect("echo after the restart"), "after");
    s.reach_all(&["pod-a", "pod-b"]);
    log(&format!("restart: done in {:?}", started.elapsed()));
}

/// 4: a hand-deleted table comes back with the next full resync.
#[test]
fn agent_repairs_a_deleted_table_within_two_sync_periods() {
    if !privileged("agent_repairs_a_deleted_table_within_two_sync_periods") {
        return;
    }
    let started = Instant::now();
    let mut s = Scenario::new("drift");
    s.start_agent("agent", NODE_IP)
        .wait_syncs(1, Duration::from_secs(10));
    s.wait_web(Duration::from_secs(10));
    let (ok, _, err) = s.lab.nft(&["delete", "table", "inet", "portico"]);
    assert!(ok, "nft delete table: {err}");
    let deleted = Instant::now();
    // Nothing listens on the NodePort without the rules. (The agent may
    // repair it before this connection, in which case it answers.)
    if let Err(e) = s.web() {
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    }
    let (_, took) = wait_for(
        "traffic to flow again after the table was deleted",
        SYNC_PERIOD * 2 + Duration::from_secs(1),
        RECHECK,
        || s.web().ok(),
    );
    log(&format!("drift: repaired after {took:?}"));
    assert!(
        deleted.elapsed() <= SYNC_PERIOD * 2,
        "repair took {took:?}, more than two sync periods"
    );
    s.reach_all(&["pod-a", "pod-b"]);
    s.agent().assert_running();
    log(&format!("drift: done in {:?}", started.elapsed()));
}

/// 5: a `Local` Service's health check port reports the local ready
/// endpoints in the weight header: 200 while there are some, 503 after they
/// leave the manifests.
#[test]
fn health_check_node_port_follows_local_endpoints() {
    if !privileged("health_check_node_port_follows_local_endpoints") {
        return;
    }
    const HC_PORT: u16 = 32000;
    let started = Instant::now();
    let mut s = Scenario::new("health");
    write_manifest(
        s.dir.path(),
        "30-local.yaml",
        &service_yaml("local", "10.96.0.20", 30081, "Local", Some(HC_PORT)),
    );
    let node = s.node_name.clone();
    let local_slice = |pods: &[&Pod]| {
        let mut eps = on_node(pods, &node);
        // Ready on another node: never counted here.
        eps.push(("10.244.1.10".to_string(), "node-elsewhere".to_string()));
        slice_yaml("local", &borrowed(&eps))
    };
    write_manifest(
        s.dir.path(),
        "31-local-slice.yaml",
        &local_slice(&[&s.pods[0], &s.pods[1]]),
    );
    s.start_agent("agent", NODE_IP);
    let get = |s: &Scenario| s.lab.http_get("client", NODE_IP, HC_PORT, "/");
    let (resp, took) = wait_for(
        "the health check port",
        Duration::from_secs(10),
        RECHECK,
        || get(&s).ok(),
    );
    log(&format!("health: port {HC_PORT} served after {took:?}"));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.header("x-load-balancing-endpoint-weight"),
        Some("2"),
        "{resp:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&resp.body).expect("JSON");
    assert_eq!(body["localEndpoints"], 2, "{}", resp.body);
    assert_eq!(body["service"]["name"], "local", "{}", resp.body);
    // The Local NodePort reaches local pods without masquerade.
    let answer = s.lab.hello(NODE_IP, 30081).expect("Local NodePort");
    assert!(answer.ends_with(&format!(" {CLIENT_IP}")), "{answer}");

    write_manifest(
        s.dir.path(),
        "31-local-slice.yaml",
        &local_slice(&[&s.pods[0]]),
    );
    let (_, took) = wait_for("weight 1", Duration::from_secs(5), RECHECK, || {
        get(&s).ok().filter(|r| {
            r.status == 200 && r.header("x-load-balancing-endpoint-weight") == Some("1")
        })
    });
    log(&format!("health: weight 1 after {took:?}"));

    write_manifest(s.dir.path(), "31-local-slice.yaml", &local_slice(&[]));
    let (resp, took) = wait_for(
        "503 without local endpoints",
        Duration::from_secs(5),
        RECHECK,
        || get(&s).ok().filter(|r| r.status == 503),
    );
    log(&format!("health: 503 after {took:?}"));
    assert!(took < Duration::from_secs(1), "took {took:?} (goal < 1 s)");
    assert_eq!(
        resp.header("x-load-balancing-endpoint-weight"),
        Some("0"),
        "{resp:?}"
    );
    // The node itself stays healthy, and the Cluster Service unaffected.
    let health = s
        .lab
        .http_get("client", NODE_IP, HEALTH_PORT, "/healthz")
        .expect("GET /healthz");
    assert_eq!(health.status, 200, "{health:?}");
    s.reach_all(&["pod-a", "pod-b"]);
    s.agent().assert_running();
    log(&format!("health: done in {:?}", started.elapsed()));
}

/// 6: `cleanup` in the node namespace removes the table, and is idempotent.
#[test]
fn cleanup_removes_the_table_and_is_idempotent() {
    if !privileged("cleanup_removes_the_table_and_is_idempotent") {
        return;
    }
    let started = Instant::now();
    let mut s = Scenario::new("cleanup");
    s.start_agent("agent", NODE_IP)
        .wait_syncs(1, Duration::from_secs(10));
    s.wait_web(Duration::from_secs(10));
    let status = s.agent().stop();
    assert!(status.success(), "agent exit status {status}");
    assert!(s.lab.has_table(), "the agent leaves its rules at exit");
    s.web()
        .expect("rules still in place after the agent stopped");

    let node_ns = s.lab.ns("node");
    for round in ["first", "second"] {
        let out = Command::new("ip")
            .args(["netns", "exec", &node_ns, BIN, "cleanup"])
            .env("NO_COLOR", "1")
            .output()
            .expect("run cleanup");
        assert!(
            out.status.success(),
            "{round} cleanup: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!s.lab.has_table(), "{round} cleanup left the table");
    }
    let err = s.web().expect_err("no rules after cleanup");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    log(&format!("cleanup: done in {:?}", started.elapsed()));
}

/// 7: a broken manifest file beside the good ones is reported by name and
/// does not stop the good Services (nor later changes).
#[test]
fn broken_manifest_is_logged_and_good_services_keep_working() {
    if !privileged("broken_manifest_is_logged_and_good_services_keep_working") {
        return;
    }
    let started = Instant::now();
    let mut s = Scenario::new("broken");
    s.start_agent("agent", NODE_IP)
        .wait_syncs(1, Duration::from_secs(10));
    s.wait_web(Duration::from_secs(10));
    let broken = "15-broken.yaml";
    write_manifest(
        s.dir.path(),
        broken,
        "apiVersion: v1\nkind: Service\nmetadata: {name: [\n  spec: :\n",
    );
    let (_, took) = wait_for(
        "the broken file in the log",
        Duration::from_secs(5),
        RECHECK,
        || {
            s.agent().assert_running();
            s.agent()
                .stderr()
                .lines()
                .any(|l| l.contains(broken) && l.contains("manifest skipped"))
                .then_some(())
        },
    );
    log(&format!("broken: logged after {took:?}"));
    s.reach_all(&["pod-a", "pod-b"]);
    // The gauge is set just after the warning is logged.
    wait_for("source_errors 1", Duration::from_secs(5), RECHECK, || {
        (metric(&s.metrics(), "portico_node_agent_source_errors") == Some(1.0)).then_some(())
    });

    // Still following changes with the broken file present.
    let pod_b = s.pods[1].addr.to_string();
    s.set_web_endpoints(&[0]);
    s.wait_table("pod-b out of the table", Duration::from_secs(5), |t| {
        !t.contains(&pod_b)
    });
    for _ in 0..16 {
        let answer = s.web().expect("pod-a answers");
        assert!(answer.starts_with("pod-a "), "{answer}");
    }

    // A restart with the broken file already there programs the good ones.
    let status = s.agent().stop();
    assert!(status.success(), "agent exit status {status}");
    let (ok, _, err) = s.lab.nft(&["delete", "table", "inet", "portico"]);
    assert!(ok, "nft delete table: {err}");
    s.start_agent("restarted agent", NODE_IP);
    s.wait_web(Duration::from_secs(10));
    assert!(
        s.agent().stderr().contains(broken),
        "the broken file is not named:\n{}",
        s.agent().stderr()
    );
    log(&format!("broken: done in {:?}", started.elapsed()));
}

/// 8: while every sync fails (`nft` refuses), `/healthz` and `/livez` turn
/// 503 once the last success is two sync periods old, the rules already
/// loaded keep serving, and the failures are counted; both are 200 again
/// as soon as a sync succeeds.
#[test]
fn failing_syncs_make_the_node_stale_until_a_sync_succeeds() {
    if !privileged("failing_syncs_make_the_node_stale_until_a_sync_succeeds") {
        return;
    }
    const PERIOD: Duration = Duration::from_secs(1);
    const FAILURES: &str = "portico_node_agent_sync_failures_total";
    let started = Instant::now();
    let nft = NftWrapper::new();
    let mut s = Scenario::new("stale");
    s.start_agent_with("agent", NODE_IP, Some(nft.dir()), PERIOD)
        .wait_syncs(1, Duration::from_secs(10));
    s.wait_web(Duration::from_secs(10));
    let health = s.node_health("/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health_json(&health)["nodeEligible"], true, "{health:?}");
    let livez = s.node_health("/livez");
    assert_eq!(livez.status, 200, "{livez:?}");
    assert_eq!(metric(&s.metrics(), FAILURES), Some(0.0));

    nft.set_broken(true);
    let (health, took) = wait_for(
        "/healthz 503 while syncs fail",
        PERIOD * 2 + Duration::from_secs(5),
        RECHECK,
        || Some(s.node_health("/healthz")).filter(|r| r.status == 503),
    );
    log(&format!("stale: /healthz 503 after {took:?}"));
    // The last success was at most a period (and a poll) before the
    // breakage; the limit is two periods after it.
    assert!(
        took < PERIOD * 2 + Duration::from_secs(1),
        "503 only after {took:?}"
    );
    let body = health_json(&health);
    assert_eq!(body["nodeEligible"], true, "only staleness: {health:?}");
    let (last, now) = (
        body["lastUpdated"].as_str().expect("lastUpdated"),
        body["currentTime"].as_str().expect("currentTime"),
    );
    // Same fixed-width RFC 3339 format: text order is time order.
    assert!(last < now, "{health:?}");
    // Staleness applies to /livez as well (it ignores only the Node).
    let livez = s.node_health("/livez");
    assert_eq!(livez.status, 503, "{livez:?}");
    let live = health_json(&livez);
    assert_eq!(live["lastUpdated"], body["lastUpdated"], "{livez:?}");
    assert!(live.get("nodeEligible").is_none(), "{livez:?}");
    let failures = metric(&s.metrics(), FAILURES).expect("failure counter");
    assert!(failures > 0.0, "{FAILURES} {failures}");
    let stderr = s.agent().stderr();
    assert!(
        stderr.contains("sync failed") && stderr.contains("injected failure"),
        "the failure is not logged:\n{stderr}"
    );
    // A failed sync leaves the loaded rules alone.
    s.reach_all(&["pod-a", "pod-b"]);
    s.agent().assert_running();

    nft.set_broken(false);
    let (health, took) = wait_for(
        "/healthz 200 after a successful sync",
        Duration::from_secs(5),
        RECHECK,
        || Some(s.node_health("/healthz")).filter(|r| r.status == 200),
    );
    log(&format!("stale: /healthz 200 again after {took:?}"));
    assert_eq!(health_json(&health)["nodeEligible"], true, "{health:?}");
    let livez = s.node_health("/livez");
    assert_eq!(livez.status, 200, "{livez:?}");
    s.reach_all(&["pod-a", "pod-b"]);
    log(&format!("stale: done in {:?}", started.elapsed()));
}

/// 9: a Node tainted `ToBeDeletedByClusterAutoscaler` fails `/healthz`
/// (`nodeEligible: false`) so load balancers drain it, while `/livez` stays
/// 200 and the rules keep serving; without the taint it is eligible again.
#[test]
fn a_node_marked_for_removal_fails_healthz_but_stays_live() {
    if !privileged("a_node_marked_for_removal_fails_healthz_but_stays_live") {
        return;
    }
    let started = Instant::now();
    let mut s = Scenario::new("taint");
    s.start_agent("agent", NODE_IP)
        .wait_syncs(1, Duration::from_secs(10));
    s.wait_web(Duration::from_secs(10));
    let health = s.node_health("/healthz");
    assert_eq!(health.status, 200, "{health:?}");

    let node_name = s.node_name.clone();
    write_manifest(s.dir.path(), "00-node.yaml", &tainted_node_yaml(&node_name));
    let (health, took) = wait_for(
        "/healthz 503 for the tainted Node",
        Duration::from_secs(5),
        RECHECK,
        || Some(s.node_health("/healthz")).filter(|r| r.status == 503),
    );
    log(&format!("taint: /healthz 503 after {took:?}"));
    assert_eq!(health_json(&health)["nodeEligible"], false, "{health:?}");
    let livez = s.node_health("/livez");
    assert_eq!(livez.status, 200, "{livez:?}");

    // Not a blip: still so after the next syncs.
    let syncs = s.agent().syncs();
    s.agent()
        .wait_syncs(syncs + 1, SYNC_PERIOD * 2 + Duration::from_secs(2));
    let health = s.node_health("/healthz");
    assert_eq!(health.status, 503, "{health:?}");
    assert_eq!(health_json(&health)["nodeEligible"], false, "{health:?}");
    let livez = s.node_health("/livez");
    assert_eq!(livez.status, 200, "{livez:?}");
    assert_eq!(
        metric(&s.metrics(), "portico_node_agent_sync_failures_total"),
        Some(0.0)
    );
    s.reach_all(&["pod-a", "pod-b"]);

    write_manifest(s.dir.path(), "00-node.yaml", &node_yaml(&node_name));
    let (health, took) = wait_for(
        "/healthz 200 once the taint is gone",
        Duration::from_secs(5),
        RECHECK,
        || Some(s.node_health("/healthz")).filter(|r| r.status == 200),
    );
    log(&format!("taint: /healthz 200 again after {took:?}"));
    assert_eq!(health_json(&health)["nodeEligible"], true, "{health:?}");
    s.agent().assert_running();
    log(&format!("taint: done in {:?}", started.elapsed()));
}

/// `dns`: a NodePort Service for the `portico` proxy with one UDP port
/// (53 -> the pods' [`POD_PORT`]) on NodePort 30053.
fn udp_service_yaml() -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: dns
  namespace: default
  labels:
    service.kubernetes.io/service-proxy-name: portico
spec:
  type: NodePort
  clusterIP: 10.96.0.53
  clusterIPs: [10.96.0.53]
  ports:
    - name: dns
      protocol: UDP
      port: 53
      targetPort: {POD_PORT}
      nodePort: 30053
"
    )
}

/// `dns`'s slice: the given pods, ready on `node`.
fn udp_slice_yaml(pods: &[&Pod], node: &str) -> String {
    let mut eps = String::new();
    for pod in pods {
        eps.push_str(&format!(
            "  - addresses: [\"{}\"]\n    conditions: {{ready: true, serving: true, terminating: false}}\n    nodeName: {node}\n",
            pod.addr
        ));
    }
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-abc
  namespace: default
  labels:
    kubernetes.io/service-name: dns
addressType: IPv4
ports:
  - name: dns
    protocol: UDP
    port: {POD_PORT}
endpoints:
{eps}"
    )
}

/// A UDP client in the client namespace that keeps one source port, as a
/// resolver or a game client does: every datagram belongs to one flow.
struct UdpClient {
    socket: std::net::UdpSocket,
}

impl UdpClient {
    fn new(lab: &Lab, to: &str, port: u16) -> UdpClient {
        let to: std::net::SocketAddr =
            (to.parse::<std::net::IpAddr>().expect("address"), port).into();
        let socket = in_netns(&lab.ns("client"), || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            socket.connect(to).expect("connect");
            socket
        });
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        UdpClient { socket }
    }

    /// One datagram and the name of the pod that answered (`None`: no
    /// answer within 200 ms).
    fn ask(&self) -> Option<String> {
        self.socket.send(b"who").expect("send");
        let mut buf = [0u8; 128];
        let n = self.socket.recv(&mut buf).ok()?;
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        Some(answer.split(' ').next().unwrap_or_default().to_string())
    }
}

/// A UDP client that keeps its source port keeps its flow, and so its
/// endpoint; when that endpoint leaves the Service (while still alive and
/// answering) the agent deletes the flow's conntrack entry, so the next
/// datagram is balanced again, to a pod still in the slice, as with
/// kube-proxy.
#[test]
fn a_udp_flow_moves_on_when_its_endpoint_leaves() {
    if !privileged("a_udp_flow_moves_on_when_its_endpoint_leaves") {
        return;
    }
    // Declared so that the agent is dropped first, the namespaces last.
    let (lab, pods) = Lab::new("pa", "udpflow", &["pod-a", "pod-b"]);
    let _servers = lab.serve_who(&pods);
    let node_name = lab.ns("node");
    let dir = tempfile::tempdir().expect("manifest dir");
    write_manifest(dir.path(), "00-node.yaml", &node_yaml(&node_name));
    write_manifest(dir.path(), "10-dns.yaml", &udp_service_yaml());
    let both: Vec<&Pod> = pods.iter().collect();
    write_manifest(
        dir.path(),
        "20-dns-slice.yaml",
        &udp_slice_yaml(&both, &node_name),
    );
    let mut agent = Agent::start(
        &lab,
        "agent",
        &AgentConfig {
            source: AgentSource::Manifests(dir.path()),
            node_name: &node_name,
            health_bind_ip: NODE_IP,
            nft_dir: None,
            // No periodic resync during the test: only the endpoint change
            // may clean the flow.
            sync_period: Duration::from_secs(600),
            image: None,
        },
    );

    let client = UdpClient::new(&lab, NODE_IP, 30053);
    let (first, took) = wait_for(
        "the NodePort to answer",
        Duration::from_secs(10),
        RECHECK,
        || client.ask(),
    );
    log(&format!(
        "udp flow: first answer from {first} after {took:?}"
    ));
    // Conntrack keeps the flow on its pod.
    for _ in 0..8 {
        assert_eq!(
            client.ask().as_deref(),
            Some(first.as_str()),
            "the flow stays on its pod"
        );
    }
    agent.wait_syncs(1, Duration::from_secs(5));

    // Its pod leaves the slice but keeps running (and would answer).
    let (gone, stays): (Vec<&Pod>, Vec<&Pod>) = pods.iter().partition(|p| p.name == first);
    let (gone, stays) = (gone[0], stays[0]);
    write_manifest(
        dir.path(),
        "20-dns-slice.yaml",
        &udp_slice_yaml(&[stays], &node_name),
    );
    let gone_addr = gone.addr.to_string();
    let removed = Instant::now();
    wait_for(
        "the endpoint out of the table",
        Duration::from_secs(5),
        RECHECK,
        || {
            let (ok, out, _) = lab.nft(&["list", "table", "inet", "portico"]);
            (ok && !out.contains(&gone_addr)).then_some(())
        },
    );
    // The entry goes right after the rules change, in the same sync.
    let (moved, took) = wait_for(
        "the flow to move on",
        Duration::from_secs(3),
        RECHECK,
        || client.ask().filter(|pod| *pod != gone.name),
    );
    log(&format!(
        "udp flow: answered by {moved} {:?} after the slice changed ({took:?} of asking)",
        removed.elapsed()
    ));
    assert_eq!(moved, stays.name);
    for _ in 0..8 {
        assert_eq!(
            client.ask().as_deref(),
            Some(stays.name.as_str()),
            "the flow stays moved"
        );
    }
    let metrics = agent.metrics(&lab);
    assert!(
        metric(
            &metrics,
            "portico_node_agent_conntrack_entries_deleted_total"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "portico_node_agent_conntrack_cleanup_failures_total"
        ),
        Some(0.0),
        "{metrics}"
    );
    agent.assert_running();
}
