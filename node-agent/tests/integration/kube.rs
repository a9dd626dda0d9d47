//! End-to-end tests of `portico-node-agent run --kubernetes`: the real
//! binary runs in a "node" network namespace and watches a fake API server
//! (`portico-kube-fake`) through a kubeconfig the fake writes; the test
//! changes objects in the fake and checks the rules the agent loads into
//! that namespace's nftables, and the traffic through them (topology in
//! `support/netns.rs`).
//!
//! The fake listens on 127.0.0.1 *inside the node namespace*: it is started
//! from a thread that entered it, so its listening socket lives there, where
//! the agent can reach it (its tasks may run on any thread).
//!
//! Every agent, fake and namespace is removed by a drop guard. Skips loudly
//! when not root; fails under `CI=true`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use portico_kube_fake::{FakeApiServer, Options};
use serde_json::{json, Value};

use crate::support::netns::*;
use crate::support::privileged;
use crate::support::process::{metric, Agent, AgentConfig, AgentSource, HEALTH_PORT, RECHECK};

const NODE_PORT: u16 = 30080;
/// The NodePort of the Service that is not labelled for this proxy.
const OTHER_NODE_PORT: u16 = 30081;
const CLUSTER_IP: &str = "10.96.0.10";
const OTHER_CLUSTER_IP: &str = "10.96.0.11";
const SLICES_PATH: &str = "/apis/discovery.k8s.io/v1/endpointslices";

// ---------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------

fn node_json(name: &str, taint: bool) -> Value {
    let mut node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [
            {"type": "InternalIP", "address": NODE_IP},
            {"type": "Hostname", "address": name},
        ]},
    });
    if taint {
        node["spec"] = json!({"taints": [{
            "key": "ToBeDeletedByClusterAutoscaler",
            "value": "1764097647",
            "effect": "NoSchedule",
        }]});
    }
    node
}

/// A LoadBalancer Service with one TCP port (80 -> the pods' named port
/// `http`) on `node_port`; labelled for the `portico` proxy when `ours`.
fn service_json(name: &str, cluster_ip: &str, node_port: u16, ours: bool) -> Value {
    let labels = if ours {
        json!({"service.kubernetes.io/service-proxy-name": "portico"})
    } else {
        json!({})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "externalTrafficPolicy": "Cluster",
            "ports": [{
                "name": "http",
                "protocol": "TCP",
                "port": 80,
                "targetPort": "http",
                "nodePort": node_port,
            }],
        },
    })
}

/// The EndpointSlice `<service>-abc` with the given pods ready on `node`.
fn slice_json(service: &str, pods: &[&Pod], node: &str) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|p| {
            json!({
                "addresses": [p.addr.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node,
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-abc"),
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": POD_PORT}],
        "endpoints": endpoints,
    })
}

// ---------------------------------------------------------------------------
// Scenario
// ---------------------------------------------------------------------------

/// A lab with two pods and their servers, a fake API server in the node
/// namespace holding the Node, the Service `web` (ours) with both pods, and
/// the Service `other` (not labelled for us) with pod-a.
struct Scenario {
    // Field order is drop order: the agent dies before its API server, the
    // API server before its runtime, everything before the namespaces.
    agent: Option<Agent>,
    _servers: Vec<EchoServer>,
    fake: FakeApiServer,
    rt: tokio::runtime::Runtime,
    kubeconfig: tempfile::TempDir,
    pods: Vec<Pod>,
    node_name: String,
    /// The agent's container image, when it runs from one ([`AgentConfig::image`]).
    image: Option<String>,
    lab: Lab,
}

impl Scenario {
    fn new(test: &str) -> Scenario {
        Scenario::with_api(test, Options::default())
    }

    /// The scenario with an API server started with `opts`.
    fn with_api(test: &str, opts: Options) -> Scenario {
        let (lab, pods) = Lab::new("pk", test, &["pod-a", "pod-b"]);
        let servers = lab.serve(&pods);
        let node_name = lab.ns("node");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let fake = in_netns(&node_name, || {
            rt.block_on(FakeApiServer::start_with(opts))
                .expect("fake API server started")
        });
        let kubeconfig = tempfile::tempdir().expect("kubeconfig dir");
        fake.write_kubeconfig(&kubeconfig.path().join("config"))
            .expect("write kubeconfig");
        let s = Scenario {
            agent: None,
            _servers: servers,
            fake,
            rt,
            kubeconfig,
            pods,
            node_name,
            image: None,
            lab,
        };
        s.put(node_json(&s.node_name, false));
        s.put(service_json("web", CLUSTER_IP, NODE_PORT, true));
        s.set_web_endpoints(&[0, 1]);
        s.put(service_json(
            "other",
            OTHER_CLUSTER_IP,
            OTHER_NODE_PORT,
            false,
        ));
        s.put(slice_json("other", &[&s.pods[0]], &s.node_name));
        s
    }

    /// Creates or replaces an object in the fake.
    fn put(&self, object: Value) {
        let _guard = self.rt.enter();
        if let Err(e) = self.fake.apply(&object) {
            panic!("apply {}: {e}", object["metadata"]["name"]);
        }
    }

    /// Rewrites `web`'s slice with the given pods (by index), ready here.
    fn set_web_endpoints(&self, which: &[usize]) {
        let pods: Vec<&Pod> = which.iter().map(|&i| &self.pods[i]).collect();
        self.put(slice_json("web", &pods, &self.node_name));
    }

    fn start_agent(&mut self, sync_period: Duration, watch_timeout: Duration) -> &mut Agent {
        let kubeconfig = self.kubeconfig.path().join("config");
        let agent = Agent::start(
            &self.lab,
            "agent",
            &AgentConfig {
                source: AgentSource::Kubernetes {
                    kubeconfig: &kubeconfig,
                    watch_timeout,
                },
                node_name: &self.node_name,
                health_bind_ip: NODE_IP,
                nft_dir: None,
                sync_period,
                image: self.image.as_deref(),
            },
        );
        self.agent.insert(agent)
    }

    fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent started")
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let text = self
            .agent
            .as_ref()
            .expect("agent started")
            .metrics(&self.lab);
        metric(&text, name)
    }

    fn table(&self) -> Option<String> {
        let (ok, out, _) = self.lab.nft(&["list", "table", "inet", "portico"]);
        ok.then_some(out)
    }

    /// Waits until `nft list table inet portico` satisfies `check`; returns
    /// how long it took.
    fn wait_table(
        &mut self,
        what: &str,
        limit: Duration,
        check: impl Fn(&str) -> bool,
    ) -> Duration {
        let lab = &self.lab;
        let agent = self.agent.as_mut().expect("agent started");
        wait_for(what, limit, RECHECK, || {
            agent.assert_running();
            let (ok, out, _) = lab.nft(&["list", "table", "inet", "portico"]);
            (ok && check(&out)).then_some(())
        })
        .1
    }

    /// Connects to the NodePort until every pod in `want` answered and no
    /// other did (at most 64 connections).
    fn reach_all(&self, want: &[&str]) {
        let mut seen = BTreeSet::new();
        for _ in 0..64 {
            let answer = self
                .lab
                .hello(NODE_IP, NODE_PORT)
                .unwrap_or_else(|e| panic!("{NODE_IP}:{NODE_PORT}: {e}"));
            let (pod, _) = answer.split_once(' ').expect("answer is `<pod> <peer>`");
            assert!(
                want.contains(&pod),
                "answered by {pod}, expected one of {want:?}"
            );
            seen.insert(pod.to_string());
            if seen.len() == want.len() {
                return;
            }
        }
        panic!("only {seen:?} answered in 64 connections, expected {want:?}");
    }

    /// Waits until the metric has a value satisfying `check`.
    fn wait_metric(&mut self, name: &str, limit: Duration, check: impl Fn(f64) -> bool) -> f64 {
        wait_for(&format!("{name} to match"), limit, RECHECK, || {
            self.agent().assert_running();
            self.metric(name).filter(|v| check(*v))
        })
        .0
    }
}

fn has_node_port(table: &str, port: u16) -> bool {
    table.contains(&format!("tcp . {port} : "))
}

/// Progress and timings: shown for failing tests, or with `--nocapture`.
fn log(msg: &str) {
    eprintln!("{msg}");
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Objects in the API become rules; an EndpointSlice change follows within
/// a second; a Service without our label is ignored until it gets it (its
/// slice, seen all along, comes at once); deleting a Service removes its
/// rules; a burst of changes gives a handful of syncs, not one each; the
/// autoscaler's taint on the Node turns `/healthz` 503.
#[test]
fn kubernetes_objects_become_rules_and_follow_changes() {
    if !privileged("kubernetes_objects_become_rules_and_follow_changes") {
        return;
    }
    objects_become_rules_and_follow_changes(Scenario::new("follow"));
}

/// The node agent's container image (`scripts/image node-agent`), run by
/// podman in the node namespace as the DaemonSet runs it (no capability
/// but NET_ADMIN, read-only root filesystem), does what the bare binary
/// does in [`kubernetes_objects_become_rules_and_follow_changes`]: the same
/// scenario, the same checks (rules, traffic through them, `/healthz`,
/// metrics). The image is under 40 MB.
#[test]
fn the_image_programs_the_node_as_the_binary_does() {
    let what = "the_image_programs_the_node_as_the_binary_does";
    if !privileged(what) || !tools_or_skip(what, &["podman", "buildah", "mmdebstrap", "runc"]) {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf();
    let built = std::process::Command::new(root.join("scripts/image"))
        .arg("node-agent")
        .current_dir(&root)
        .output()
        .expect("run scripts/image");
    let stdout = String::from_utf8_lossy(&built.stdout);
    assert!(
        built.status.success(),
        "scripts/image: {}\n{stdout}\n{}",
        built.status,
        String::from_utf8_lossy(&built.stderr)
    );
    // `<image> <bytes> bytes, saved as <archive>`
    let last = stdout.lines().last().expect("the image line");
    let mut words = last.split_whitespace();
    let image = words.next().expect("the image's name").to_string();
    let size: u64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no size in {last:?}"));
    log(&format!("image: {image}, {size} bytes"));
    assert!(image.starts_with("localhost/portico-node-agent:"), "{last}");
    assert!(size < 40_000_000, "the node agent's image is {size} bytes");
    let mut s = Scenario::new("image");
    s.image = Some(image);
    objects_become_rules_and_follow_changes(s);
}

/// Whether every one of `tools` runs (`--version`); says loudly why not,
/// and fails under `CI=true`.
fn tools_or_skip(what: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !std::process::Command::new(t)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why =
        format!("SKIPPED {what}: {missing:?} not installed (scripts/install-deps installs them)");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true forbids skipping");
    }
    eprintln!("{why}");
    false
}

/// New objects become rules, changes follow, the agent's health and
/// metrics answer; `s` says how the agent runs.
fn objects_become_rules_and_follow_changes(mut s: Scenario) {
    let started = Instant::now();
    // A long sync period: every sync counted below comes from a change.
    s.start_agent(Duration::from_secs(60), Duration::from_secs(60));
    let first = s.wait_table(
        "web's NodePort in the table",
        Duration::from_secs(20),
        |t| has_node_port(t, NODE_PORT),
    );
    log(&format!("follow: first rules {first:?} after start"));
    s.agent().wait_syncs(1, Duration::from_secs(5));
    s.reach_all(&["pod-a", "pod-b"]);
    let table = s.table().expect("table");
    assert!(
        !has_node_port(&table, OTHER_NODE_PORT),
        "a Service without the proxy-name label is not ours:\n{table}"
    );
    assert_eq!(
        s.metric("portico_node_agent_kubernetes_stale_seconds"),
        Some(0.0)
    );
    assert_eq!(s.metric("portico_node_agent_source_errors"), Some(0.0));
    let health = s
        .lab
        .http_get("client", NODE_IP, HEALTH_PORT, "/healthz")
        .expect("GET /healthz");
    assert_eq!(health.status, 200, "{health:?}");

    // pod-b leaves the slice, then comes back.
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

    // A burst of 200 slice changes: debounced into a few syncs.
    let before = s.agent().syncs();
    let burst = Instant::now();
    for i in 0..200 {
        let which: &[usize] = if i % 2 == 0 { &[0] } else { &[0, 1] };
        s.set_web_endpoints(which);
    }
    let burst_took = burst.elapsed();
    // The burst ends with both pods in: wait for that state, then for the
    // agent to have logged the sync that made it.
    s.wait_table("both pods after the burst", Duration::from_secs(5), |t| {
        t.contains(&pod_b)
    });
    s.agent().wait_syncs(before + 1, Duration::from_secs(5));
    let burst_syncs = s.agent().syncs() - before;
    log(&format!(
        "follow: 200 changes in {burst_took:?} gave {burst_syncs} syncs"
    ));
    // At most one sync per 100 ms of burst, plus the one after it.
    let cap = usize::try_from(burst_took.as_millis() / 100).unwrap_or(usize::MAX) + 3;
    assert!(
        burst_syncs <= cap.min(20),
        "{burst_syncs} syncs for 200 changes in {burst_took:?}"
    );

    // `other` gets our label: programmed at once, with the slice the agent
    // already had.
    let pod_a = s.pods[0].addr.to_string();
    s.put(service_json(
        "other",
        OTHER_CLUSTER_IP,
        OTHER_NODE_PORT,
        true,
    ));
    let adopted = s.wait_table(
        "other's NodePort in the table",
        Duration::from_secs(5),
        |t| has_node_port(t, OTHER_NODE_PORT) && t.contains(&pod_a),
    );
    log(&format!(
        "follow: labelled Service programmed after {adopted:?}"
    ));
    assert!(s
        .lab
        .hello(NODE_IP, OTHER_NODE_PORT)
        .expect("other answers")
        .starts_with("pod-a "));

    // Deleting `web` removes its rules; `other` stays.
    {
        let _guard = s.rt.enter();
        s.fake
            .delete::<Service>(Some("default"), "web")
            .expect("web existed");
    }
    s.wait_table("web's NodePort gone", Duration::from_secs(5), |t| {
        !has_node_port(t, NODE_PORT) && has_node_port(t, OTHER_NODE_PORT)
    });

    // The autoscaler's taint comes through the Node watch.
    s.put(node_json(&s.node_name.clone(), true));
    let lab = &s.lab;
    wait_for(
        "/healthz 503 for the tainted Node",
        Duration::from_secs(5),
        RECHECK,
        || {
            let resp = lab
                .http_get("client", NODE_IP, HEALTH_PORT, "/healthz")
                .ok()?;
            (resp.status == 503).then_some(())
        },
    );
    let livez = s
        .lab
        .http_get("client", NODE_IP, HEALTH_PORT, "/livez")
        .expect("GET /livez");
    assert_eq!(livez.status, 200, "{livez:?}");
    s.agent().assert_running();
    log(&format!("follow: done in {:?}", started.elapsed()));
}

/// While the API server does not answer, the rules stay, the periodic
/// resync still repairs them from the last good state, the agent keeps
/// running, the stale gauge grows within seconds (the API probe, not the
/// watches' timeouts), the watch errors are logged once (not flooded);
/// when it answers again the gauge returns to 0. After `compact()` +
/// `cut_connections()` the agent relists and converges.
#[test]
fn api_outage_keeps_the_rules_and_a_relist_converges() {
    if !privileged("api_outage_keeps_the_rules_and_a_relist_converges") {
        return;
    }
    let started = Instant::now();
    let mut s = Scenario::new("outage");
    const PERIOD: Duration = Duration::from_secs(2);
    // A short watch timeout, so that the watches themselves fail (and are
    // logged) within seconds too: the watch ends after 2 s and the next
    // request trips the read timeout 10 s later. The stale gauge does not
    // wait for them: the API probe notices the silence first.
    s.start_agent(PERIOD, Duration::from_secs(2));
    s.wait_table(
        "web's NodePort in the table",
        Duration::from_secs(20),
        |t| has_node_port(t, NODE_PORT),
    );
    s.reach_all(&["pod-a", "pod-b"]);

    // The API server stops answering.
    s.fake.set_unresponsive(true);
    let outage = Instant::now();
    // Drift while it is away: the periodic resync restores the table from
    // the last good state.
    s.lab.nft_ok(&["delete", "table", "inet", "portico"]);
    let repaired = s.wait_table("the table back", PERIOD * 3, |t| {
        has_node_port(t, NODE_PORT)
    });
    log(&format!(
        "outage: table repaired after {repaired:?} without the API"
    ));
    s.reach_all(&["pod-a", "pod-b"]);
    // Two probe periods (2 s each) and the gauge's 1 s update, with slack;
    // the watches' own timeouts would take 12 s or more.
    const NOTICED: Duration = Duration::from_secs(10);
    let stale = s.wait_metric(
        "portico_node_agent_kubernetes_stale_seconds",
        NOTICED.saturating_sub(outage.elapsed()),
        |v| v > 0.0,
    );
    log(&format!(
        "outage: stale gauge {stale} after {:?} of silence",
        outage.elapsed()
    ));
    // Still serving from the last good state, still fresh for the edge.
    s.reach_all(&["pod-a", "pod-b"]);
    let health = s
        .lab
        .http_get("client", NODE_IP, HEALTH_PORT, "/healthz")
        .expect("GET /healthz");
    assert_eq!(
        health.status, 200,
        "syncs continue from the caches: {health:?}"
    );
    let (stderr, _) = {
        let agent = s.agent.as_mut().expect("agent started");
        wait_for(
            "a watch failure in the log",
            Duration::from_secs(30),
            RECHECK,
            || {
                agent.assert_running();
                let stderr = agent.stderr();
                stderr.contains("Kubernetes watch failed").then_some(stderr)
            },
        )
    };
    let reported = stderr
        .lines()
        .filter(|l| l.contains("Kubernetes watch failed"))
        .count();
    assert!(
        (1..=3).contains(&reported),
        "each watch's failure is logged once per outage, got {reported}:\n{stderr}"
    );

    // It answers again: the gauge goes back to 0.
    s.fake.set_unresponsive(false);
    let recovered = Instant::now();
    s.wait_metric(
        "portico_node_agent_kubernetes_stale_seconds",
        Duration::from_secs(30),
        |v| v == 0.0,
    );
    log(&format!(
        "outage: healthy again after {:?}",
        recovered.elapsed()
    ));

    // Every connection cut while the API server hangs (so the watches
    // cannot come back at once), a change, then the history compacted: when
    // it answers again the watches cannot resume (410 Expired) and must
    // relist; the change arrives through the relist.
    let seen = s.fake.requests().len();
    s.fake.set_unresponsive(true);
    s.fake.cut_connections();
    s.set_web_endpoints(&[0]);
    s.fake.compact();
    s.fake.set_unresponsive(false);
    let pod_b = s.pods[1].addr.to_string();
    let converged = s.wait_table("pod-b out after the relist", Duration::from_secs(15), |t| {
        !t.contains(&pod_b) && has_node_port(t, NODE_PORT)
    });
    log(&format!(
        "outage: converged {converged:?} after compact + cut"
    ));
    let relisted = {
        let fake = &s.fake;
        wait_for(
            "a relist of EndpointSlices",
            Duration::from_secs(5),
            RECHECK,
            || {
                fake.requests()[seen..]
                    .iter()
                    .any(|r| r.is_list_of(SLICES_PATH))
                    .then_some(())
            },
        )
        .1
    };
    log(&format!("outage: relist seen after {relisted:?}"));
    for _ in 0..16 {
        let answer = s.lab.hello(NODE_IP, NODE_PORT).expect("pod-a answers");
        assert!(answer.starts_with("pod-a "), "{answer}");
    }
    s.wait_metric(
        "portico_node_agent_kubernetes_stale_seconds",
        Duration::from_secs(30),
        |v| v == 0.0,
    );
    assert!(
        s.metric("portico_node_agent_kubernetes_watch_errors_total{resource=\"endpointslices\"}")
            .is_some_and(|v| v >= 1.0),
        "the 410 after compaction counts as a watch error"
    );
    s.agent().assert_running();
    log(&format!("outage: done in {:?}", started.elapsed()));
}

/// An API server older than 1.29 drops the `ipMode: Proxy` the edge
/// writes. The agent still leaves the edge's address alone (its Service is
/// of the edge's class: the edge proxies to NodePorts, and capturing its
/// address would keep the node from reaching the edge), while another load
/// balancer's address without `ipMode` is captured, as kube-proxy does.
#[test]
fn the_edges_address_is_not_captured_when_the_server_drops_ip_mode() {
    if !privileged("the_edges_address_is_not_captured_when_the_server_drops_ip_mode") {
        return;
    }
    let mut s = Scenario::with_api(
        "ipmode",
        Options {
            drop_ip_mode: true,
            ..Options::default()
        },
    );
    let status = |ip: &str| json!({"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "Proxy"}]}});
    let mut web = service_json("web", CLUSTER_IP, NODE_PORT, true);
    web["spec"]["loadBalancerClass"] = json!("portico.io/edge");
    web["status"] = status("203.0.113.7");
    s.put(web);
    let mut vip = service_json("vip", "10.96.0.12", 30082, true);
    vip["spec"]["loadBalancerClass"] = json!("example.com/other-lb");
    vip["status"] = status("203.0.113.8");
    s.put(vip);
    s.put(slice_json("vip", &[&s.pods[0]], &s.node_name));
    let kept: Vec<Service> = s.fake.list();
    for svc in &kept {
        for entry in svc
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref()?.ingress.clone())
            .unwrap_or_default()
        {
            assert_eq!(entry.ip_mode, None, "the server dropped ipMode");
        }
    }

    s.start_agent(Duration::from_secs(60), Duration::from_secs(60));
    let table = s.wait_table(
        "both NodePorts and the other load balancer's address",
        Duration::from_secs(20),
        |t| {
            has_node_port(t, NODE_PORT)
                && has_node_port(t, 30082)
                && t.contains("203.0.113.8 . tcp . 80")
        },
    );
    log(&format!("programmed after {table:?}"));
    let table = s.table().expect("the table");
    assert!(
        !table.contains("203.0.113.7"),
        "the edge's address captured on the node:\n{table}"
    );
    s.reach_all(&["pod-a", "pod-b"]);
}
