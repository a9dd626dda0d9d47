//! Every metric a dashboard queries is one the binaries really export, read
//! from real `/metrics` scrapes; and every exported `portico_*` family is
//! on a dashboard, or on an explicit list of those deliberately left off.
//!
//! A lab of the test's own (prefix `pd<pid>`) runs two real edges behind a
//! router, each with BIRD beside it (so the edge's BGP and BFD families
//! exist), and three real node agents. Label-vec families only appear in a scrape once they
//! have a child, so the test makes each happen for real before scraping:
//! traffic from both clients (accepted, rejected, bytes, connects), a reload
//! of the lab's edge, and a second edge in a namespace of the lab's
//! (`<prefix>-hook`, removed with the lab) driven by the hook API (hook
//! requests) and given a config-file Service whose VIP:port the test holds
//! (listener bind errors, route problems). Last, the lab's API server is
//! stopped, so the agents' watches fail (watch errors).
//!
//! Needs root, `ip`, `nft`, `setsid` and BIRD: skips loudly without them, fails
//! under `CI=true`. The binaries are the ones a workspace `cargo test` builds
//! into this test's target directory (the missing ones are built first); run
//! the workspace's tests, or build the programs, after changing them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use portico_dashboards::exposition::{self, Families};
use portico_dashboards::{model, promql, Component, DASHBOARDS};
use portico_lab::netns::privileged;
use portico_lab::netns::{self, in_netns};
use portico_lab::topology::{self, Client};
use portico_lab::{Binaries, Lab, LabOptions};

/// Exported families that no dashboard shows, each deliberately. Adding a
/// metric to a binary makes this test fail until it is put on a dashboard
/// or listed here.
const NOT_ON_A_DASHBOARD: &[&str] = &[];

/// How long anything in the lab may take to happen.
const DEADLINE: Duration = Duration::from_secs(60);
/// How often a condition is re-checked.
const RECHECK: Duration = Duration::from_millis(100);

/// The second edge's `/metrics` port, inside its own namespace (where
/// nothing else listens, so fixed ports cannot clash).
const HOOK_EDGE_METRICS: u16 = 9720;
/// Its `/status` port.
const HOOK_EDGE_ADMIN: u16 = 9721;
/// Its hook API port.
const HOOK_API: u16 = 9722;
/// The bearer token the hook API is given and called with.
const HOOK_TOKEN: &str = "dashboards-test-token";

/// Scrapes the lab's edge, the hook edge and the three agents after making
/// every family appear; checks each dashboard query's metrics (existence, and
/// `rate` on counters only) and the exported families left off dashboards.
#[test]
fn dashboards_query_only_exported_metrics_and_show_every_one() {
    if !privileged("dashboards_query_only_exported_metrics_and_show_every_one")
        || !portico_lab::command::installed_or_skip(
            "dashboards_query_only_exported_metrics_and_show_every_one",
            &[("bird", "bird2")],
        )
    {
        return;
    }
    let mut lab = lab();
    let mut exported: BTreeMap<Component, Families> = BTreeMap::new();

    // Traffic through every address of every Service; the outside client
    // is rejected by `restricted`.
    for svc in topology::services() {
        for family in &svc.families {
            let vip = lab
                .vip_of(svc.name, *family)
                .expect("every Service has a VIP of each of its families");
            for (i, answer) in lab.get_many(Client::Inside, vip, 5).into_iter().enumerate() {
                answer.unwrap_or_else(|e| panic!("{} ({vip}) connection {i}: {e}", svc.name));
            }
        }
    }
    let restricted = lab.vip("restricted").expect("restricted has a VIP");
    assert!(lab
        .get_many(Client::Outside, restricted, 3)
        .iter()
        .all(Result::is_err));
    // A reload of the lab edge (its own configuration again).
    let config = lab.edge_config();
    lab.reload_edge(&config, DEADLINE)
        .unwrap_or_else(|e| panic!("reload: {e}"));
    // The traffic spread over both edges, and only the one holding the
    // Lease writes statuses: the families of both scrapes together.
    let wanted = [
        "portico_edge_connections_accepted_total",
        "portico_edge_connections_rejected_total",
        "portico_edge_bytes_total",
        "portico_edge_reloads_total",
        "portico_edge_kubernetes_status_writes_total",
        "portico_edge_bird_up",
        "portico_edge_bgp_session_up",
        "portico_edge_bfd_session_up",
    ];
    let edges = wait_for(&lab, "the lab edges' traffic families", || {
        let texts = (1..=lab.edges())
            .map(|n| lab.edge_metrics_of(n).map_err(|e| e.to_string()))
            .collect::<Result<Vec<String>, String>>()?;
        let union: Families = texts.iter().flat_map(|t| exposition::families(t)).collect();
        match wanted.iter().find(|w| !union.contains_key(**w)) {
            Some(missing) => Err(format!("{missing} not in the scrapes yet")),
            None => Ok(texts),
        }
    });
    for text in &edges {
        merge(&mut exported, Component::Edge, text);
    }

    let mut hook = HookEdge::start(&lab);
    let hook_text = hook.exercise(&lab);
    merge(&mut exported, Component::Edge, &hook_text);

    // API server outage: the agents' watches fail and count it.
    lab.stop_process("api-server", Signal::SIGTERM, DEADLINE)
        .unwrap_or_else(|e| panic!("stopping the API server: {e}"));
    for node in topology::nodes() {
        let text = wait_for(&lab, &format!("{}'s watch errors", node.name), || {
            let text = agent_metrics(&lab, &node.name)?;
            has(
                &text,
                &[
                    "portico_node_agent_kubernetes_watch_errors_total",
                    "portico_node_agent_sync_duration_seconds",
                ],
            )
        });
        merge(&mut exported, Component::NodeAgent, &text);
    }
    drop(hook);

    let mut problems = Vec::new();
    let mut shown: BTreeSet<String> = BTreeSet::new();
    for f in DASHBOARDS {
        let families = &exported[&f.component];
        let d = model::load(f.json).unwrap_or_else(|e| panic!("{}: {e}", f.file));
        for q in d.queries() {
            let refs = promql::metric_refs(&q.expr)
                .unwrap_or_else(|e| panic!("{} {}: {e}", f.file, q.origin));
            for r in refs {
                match exposition::resolve(&r.name, families) {
                    None => problems.push(format!(
                        "{} {}: {} is not exported by {:?}",
                        f.file, q.origin, r.name, f.component
                    )),
                    Some((family, kind)) => {
                        shown.insert(family.to_string());
                        let misuse = exposition::misuse(&r.name, kind, r.function.as_deref());
                        if let Some(m) = misuse.filter(|_| !q.labels_only) {
                            problems.push(format!("{} {}: {m}", f.file, q.origin));
                        }
                    }
                }
            }
        }
    }
    assert_eq!(
        problems,
        Vec::<String>::new(),
        "exported: {:#?}",
        exported.values().flat_map(|f| f.keys()).collect::<Vec<_>>()
    );

    let unshown: Vec<&str> = exported
        .values()
        .flat_map(|f| f.keys())
        .map(String::as_str)
        .filter(|name| name.starts_with("portico_") && !shown.contains(*name))
        .collect();
    assert_eq!(
        unshown, NOT_ON_A_DASHBOARD,
        "exported families no dashboard shows: put them on one, or list them in NOT_ON_A_DASHBOARD"
    );
}

/// Adds a scrape's families to `component`'s.
fn merge(exported: &mut BTreeMap<Component, Families>, component: Component, text: &str) {
    let families = exposition::families(text);
    assert!(
        families
            .keys()
            .any(|f| f.starts_with(component.metric_prefix())),
        "a {component:?} scrape without its metrics:\n{text}"
    );
    exported.entry(component).or_default().extend(families);
}

/// `Ok(text)` when `text` has a sample of every family in `wanted`.
fn has(text: &str, wanted: &[&str]) -> Result<String, String> {
    let families = exposition::families(text);
    match wanted.iter().find(|w| !families.contains_key(**w)) {
        Some(missing) => Err(format!("{missing} not in the scrape yet")),
        None => Ok(text.to_string()),
    }
}

/// Calls `check` until it succeeds; panics (with the lab's logs, as the lab
/// is dropped while panicking) after [`DEADLINE`].
fn wait_for<T>(lab: &Lab, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!(
                    "timed out waiting for {what}: {e}\n(lab {})",
                    lab.names().prefix()
                )
            }
            Err(_) => std::thread::sleep(RECHECK),
        }
    }
}

/// A node agent's `/metrics`, fetched inside its node's namespace.
fn agent_metrics(lab: &Lab, node: &str) -> Result<String, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], topology::AGENT_METRICS_PORT));
    get_metrics(&lab.names().ns(node), addr)
}

/// `GET /metrics` at `addr` inside namespace `ns`.
fn get_metrics(ns: &str, addr: SocketAddr) -> Result<String, String> {
    let (code, body) = in_netns(ns, || {
        portico_lab::api::http_exchange(addr, "GET", "/metrics", None)
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("GET http://{addr}/metrics in {ns}: {e}"))?;
    if code != 200 {
        return Err(format!("GET http://{addr}/metrics in {ns}: {code} {body}"));
    }
    Ok(body)
}

/// A second `portico-edge` running the hook API instead of the Kubernetes
/// watch, in the lab's namespace `<prefix>-hook`. Killed when dropped; the
/// namespace goes with the lab.
struct HookEdge {
    ns: String,
    child: Child,
    log: PathBuf,
    /// Holds the VIP:port of the config file's Service, so its bind fails.
    _taken: TcpListener,
}

impl HookEdge {
    fn start(lab: &Lab) -> HookEdge {
        let ns = lab.names().ns("hook");
        netns::add(&ns).unwrap_or_else(|e| panic!("{e}"));
        let taken = in_netns(&ns, || TcpListener::bind("127.0.0.1:0"))
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("bind a port in the hook namespace");
        let taken_port = taken.local_addr().expect("bound").port();
        let dir = lab.state_dir().join("hook-edge");
        fs::create_dir_all(&dir).expect("hook edge directory");
        let token = dir.join("token");
        fs::write(&token, HOOK_TOKEN).expect("token file");
        let config = dir.join("edge.yaml");
        let state = dir.join("hook-state.json");
        fs::write(&config, hook_edge_config(&token, &state, taken_port)).expect("config file");
        let log = lab.state_dir().join("logs").join("hook-edge.log");
        let log_file = fs::File::create(&log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&binaries().edge)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--upgrade-socket")
            .arg(dir.join("upgrade.sock"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start the hook edge");
        HookEdge {
            ns,
            child,
            log,
            _taken: taken,
        }
    }

    fn metrics(&mut self) -> Result<String, String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!(
                "the hook edge exited ({status}):\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            ));
        }
        get_metrics(
            &self.ns,
            SocketAddr::from(([127, 0, 0, 1], HOOK_EDGE_METRICS)),
        )
    }

    /// Makes the hook-only families appear: one authorised hook API call,
    /// and the failed bind of the config file's Service; the scrape that
    /// shows them all.
    fn exercise(&mut self, lab: &Lab) -> String {
        wait_for(lab, "the hook edge's /metrics", || self.metrics());
        let ns = self.ns.clone();
        let (code, body) = wait_for(lab, "the hook API", || {
            in_netns(&ns, hook_list)
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        });
        assert_eq!(code, 200, "hook API list: {body}");
        let log = self.log.clone();
        wait_for(
            lab,
            "the hook edge's hook API and listener families",
            || {
                let text = self.metrics()?;
                has(
                    &text,
                    &[
                        "portico_edge_hook_requests_total",
                        "portico_edge_listener_errors_total",
                        "portico_edge_route_problems",
                    ],
                )
                .map_err(|e| {
                    format!(
                        "{e}; log:\n{}",
                        fs::read_to_string(&log).unwrap_or_default()
                    )
                })
            },
        )
    }
}

impl Drop for HookEdge {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("killing the hook edge: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("reaping the hook edge: {e}");
        }
    }
}

/// `GET /v1/clusters/lab/loadbalancers` with the bearer token: code and body.
fn hook_list() -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], HOOK_API));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /v1/clusters/lab/loadbalancers HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {HOOK_TOKEN}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// The second edge's configuration: the hook API with its own pool, and a
/// Service on a VIP:port the test holds (so its listener cannot open and
/// it has no nodes: a listener error and a route problem).
fn hook_edge_config(token: &Path, state: &Path, taken_port: u16) -> String {
    format!(
        "settings:
  hookApi:
    listen: 127.0.0.1:{HOOK_API}
    tokenFile: {token}
    stateFile: {state}
  addressPools:
    - name: hook
      addresses: [203.0.113.0/29]
  metricsListen: 127.0.0.1:{HOOK_EDGE_METRICS}
  adminListen: 127.0.0.1:{HOOK_EDGE_ADMIN}
services:
  - name: taken
    vips: [127.0.0.1]
    ports:
      - {{name: http, protocol: TCP, port: {taken_port}, nodePort: 30080}}
",
        token = token.display(),
        state = state.display(),
    )
}

/// The lab, edge and agent binaries of this test's target directory and
/// profile, where a workspace `cargo test` builds them (the missing ones are
/// built first: [`Binaries::in_target`]).
fn binaries() -> Binaries {
    static BINARIES: std::sync::OnceLock<Binaries> = std::sync::OnceLock::new();
    BINARIES
        .get_or_init(|| {
            // <target>/<profile>/deps/<this test>
            let exe = std::env::current_exe().expect("the test's path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("<target>/<profile>/deps");
            Binaries::in_target(profile_dir).unwrap_or_else(|e| panic!("{e}"))
        })
        .clone()
}

/// A lab of this test's own, up and serving; torn down when dropped.
fn lab() -> Lab {
    let prefix = format!("pd{}", std::process::id());
    let opts = LabOptions {
        state_dir: std::env::temp_dir().join(format!("portico-lab-{prefix}")),
        prefix,
        ready_timeout: DEADLINE,
        edges: 2,
        ..LabOptions::standard(binaries())
    };
    Lab::up(&opts).unwrap_or_else(|e| panic!("lab up: {e}"))
}
