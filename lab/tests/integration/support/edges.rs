//! What the tests of several real edges share: a process in a namespace
//! ([`Running`]), the clients' namespace behind the router ([`Clients`]),
//! and reading a load's record by edge (which edge carried what).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portico_lab::command::installed_or_skip;
use portico_lab::load::{Record, Timeline};
use portico_lab::netns::ip_line;
use portico_lab::routing::{edge_v4, Fabric, Namespaces, RouterFib, MAX_EDGES, ROUTER_V4};

/// The clients' address, behind the router.
pub const CLIENT: &str = "10.43.0.2";
/// The router's address towards the clients.
const CLIENTS_GATEWAY: &str = "10.43.0.1";
/// The clients' network.
const CLIENTS_NET: &str = "10.43.0.0/24";

/// A process started in a namespace, killed and reaped when dropped.
pub struct Running(Child);

impl Running {
    /// Starts `program` with `args` in `ns`, its output to `log`.
    pub fn start(ns: &str, program: &Path, args: &[&str], log: &Path) -> Running {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn");
        Running(child)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal");
    }

    /// Waits until it has ended; panics after `limit`.
    pub fn wait(&mut self, limit: Duration) {
        let started = Instant::now();
        while self.0.try_wait().expect("try_wait").is_none() {
            assert!(started.elapsed() < limit, "did not end within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The clients' namespace behind the router (forwarded traffic is what a
/// router hashes by layer 4; its own connections pick their route before
/// they have a source port), at [`CLIENT`]; every edge routes it via the
/// router. Deleted when dropped.
pub struct Clients(pub String);

impl Clients {
    pub fn up(prefix: &str, namespaces: &Namespaces) -> Clients {
        let name = format!("{prefix}-client");
        let router = namespaces.router();
        let clients = Clients(name.clone());
        for line in [
            format!("netns add {name}"),
            format!("link add eth0 netns {name} type veth peer name clients netns {router}"),
            format!("-n {router} addr add {CLIENTS_GATEWAY}/24 dev clients"),
            format!("-n {router} link set clients up"),
            format!("-n {name} link set lo up"),
            format!("-n {name} addr add {CLIENT}/24 dev eth0"),
            format!("-n {name} link set eth0 up"),
            format!("-n {name} route add default via {CLIENTS_GATEWAY}"),
        ] {
            ip_line(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
        for n in 1..=namespaces.edges() {
            let line = format!(
                "-n {} route add {CLIENTS_NET} via {ROUTER_V4}",
                namespaces.edge(n)
            );
            ip_line(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.fib_multipath_hash_policy=1",
        ] {
            let out = Command::new("ip")
                .args(["netns", "exec", &router, "sysctl", "-qw", sysctl])
                .output()
                .expect("sysctl");
            assert!(out.status.success(), "{sysctl}: {out:?}");
        }
        clients
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        if let Err(e) = ip_line(&format!("netns del {}", self.0)) {
            eprintln!("clients namespace {}: {e}", self.0);
        }
    }
}

/// A router with its edges in namespaces, each running BIRD on the shipped
/// configs, and the clients behind the router; held alone (the tests that
/// use it measure time). Torn down in field order: the clients, then the
/// fabric, then the lock.
pub struct Site {
    pub clients: Clients,
    pub fabric: Fabric,
    /// The daemons' and processes' files.
    pub dir: std::path::PathBuf,
    pub binaries: portico_lab::Binaries,
    _alone: std::sync::RwLockWriteGuard<'static, ()>,
}

impl Site {
    /// Builds it with `edges` edges, the router installing routes as `fib`
    /// says, under a prefix made of `tag` and the process id; or says
    /// (loudly) why `what` cannot run here.
    pub fn up(what: &str, tag: &str, edges: usize, fib: RouterFib) -> Option<Site> {
        if !super::privileged(what)
            || !installed_or_skip(what, &[("bird", "bird2"), ("birdc", "bird2")])
        {
            return None;
        }
        let alone = super::alone();
        let binaries = super::binaries();
        let prefix = format!("{tag}{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("portico-{prefix}"));
        let fabric = Fabric::up_with(&prefix, &dir, edges, fib, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        let clients = Clients::up(&prefix, fabric.namespaces());
        Some(Site {
            clients,
            fabric,
            dir,
            binaries,
            _alone: alone,
        })
    }
}

/// The node the edges balance to: a pod server named `name` on `addr` in
/// namespace `ns` (the router's, in these tests), logging to `log`.
pub fn node_server(
    ns: &str,
    lab: &Path,
    name: &str,
    addr: std::net::SocketAddr,
    log: &Path,
) -> Running {
    Running::start(
        ns,
        lab,
        &[
            "pod-server",
            "--name",
            name,
            "--node",
            "node-0",
            "--listen",
            &addr.to_string(),
        ],
        log,
    )
}

/// Asserts that the new connections of `record` that failed all started
/// within `within` after `event`, and that at most 1% of them failed.
pub fn assert_recovered(record: &Record, event: Duration, within: Duration) {
    let failed = record.failed();
    if let Some(at) = failed.iter().map(|c| c.at).max() {
        assert!(
            at.saturating_sub(event) < within,
            "failures went on until {at:?} (the event at {event:?})"
        );
    }
    assert!(
        failed.len() * 100 <= record.connections.len(),
        "more than 1% failed: {} of {}",
        failed.len(),
        record.connections.len()
    );
}

/// Which edge (1-based) an address the node saw belongs to.
pub fn edge_of(peer: IpAddr) -> Option<usize> {
    (1..=MAX_EDGES).find(|n| IpAddr::V4(edge_v4(*n)) == peer)
}

/// The edges (by the source address the node saw) that carried the
/// connections that started in `from..to` of the load.
pub fn carried_by(record: &Record, from: Duration, to: Duration) -> BTreeSet<IpAddr> {
    record
        .connections
        .iter()
        .filter(|c| c.at >= from && c.at < to)
        .filter_map(|c| c.result.as_ref().ok().map(|a| a.peer))
        .collect()
}

/// The load's timeline with a column per edge: the connections it carried.
pub fn timeline_by_edge(record: &Record) -> Timeline {
    let mut timeline = record.timeline();
    for c in &record.connections {
        if let Ok(answer) = &c.result {
            let edge = edge_of(answer.peer)
                .map_or_else(|| answer.peer.to_string(), |n| format!("edge{n}"));
            timeline.add(c.at, &edge, 1);
        }
    }
    timeline
}

/// The edges' addresses.
pub fn hops(edges: &[usize]) -> BTreeSet<IpAddr> {
    edges.iter().map(|n| IpAddr::V4(edge_v4(*n))).collect()
}

/// The sessions open at `at` by edge, and how many of those were lost.
pub fn sessions_at(
    record: &Record,
    at: Duration,
) -> (BTreeMap<usize, usize>, BTreeMap<usize, usize>) {
    let (mut open, mut lost) = (BTreeMap::new(), BTreeMap::new());
    for s in record
        .sessions
        .iter()
        .filter(|s| s.opened < at && s.ended >= at)
    {
        if let Some(edge) = s.answer.as_ref().and_then(|a| edge_of(a.peer)) {
            *open.entry(edge).or_insert(0) += 1;
            if s.lost.is_some() {
                *lost.entry(edge).or_insert(0) += 1;
            }
        }
    }
    (open, lost)
}

/// Asks `check` every 20 ms until it answers, at most `limit`: its answer
/// and how long it took; panics with its last complaint after `limit`.
pub fn poll<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let started = Instant::now();
    loop {
        match check() {
            Ok(v) => return (v, started.elapsed()),
            Err(why) => assert!(
                started.elapsed() < limit,
                "{what}: not within {limit:?}: {why}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` on `addr` (an HTTP server in namespace `ns`, such as an
/// edge's `/metrics`): the body of a 200 answer.
pub fn http_get(ns: &str, addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    let (code, body) = portico_lab::netns::in_netns(ns, || {
        portico_lab::api::http_exchange(addr, "GET", path, None)
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("GET {path}: {e}"))?;
    if code != 200 {
        return Err(format!("GET {path}: {code}: {body}"));
    }
    Ok(body)
}

/// Looks at something every `every` on a thread of its own, at most
/// `most` times and for at most `limit`, until finished: how many looks,
/// and what they gathered.
pub struct Sampler<S> {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, S)>>,
}

impl<S: Send + 'static> Sampler<S> {
    /// Starts looking: `look` gets the gathered state and the time since
    /// the start.
    pub fn start(
        every: Duration,
        (most, limit): (usize, Duration),
        mut state: S,
        mut look: impl FnMut(&mut S, Duration) + Send + 'static,
    ) -> Sampler<S> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut looks = 0;
            while !flag.load(Ordering::Relaxed) && looks < most && started.elapsed() < limit {
                looks += 1;
                look(&mut state, started.elapsed());
                std::thread::sleep(every);
            }
            (looks, state)
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops looking: how many looks, and what they gathered.
    pub fn finish(mut self) -> (usize, S) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the sampler")
    }
}

impl<S> Drop for Sampler<S> {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
