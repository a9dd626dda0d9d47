//! What the tests of several real edges share: a process in a namespace
//! ([`Running`]), the clients' namespace behind the router ([`Clients`]),
//! and reading a load's record by edge and by family (which edge carried
//! what, of each family's VIPs).
//!
//! Every scenario serves a VIP of each family and loads both at once: an
//! edge is known by either of its addresses ([`edge_of`]), a record splits
//! by the family of its targets ([`of_family`]) and the routes to the VIPs
//! are awaited per family ([`wait_routes`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portico_lab::command::installed_or_skip;
use portico_lab::load::{Record, Timeline};
use portico_lab::netns::ip_line;
use portico_lab::routing::{
    self, edge_ip, Fabric, Namespaces, RouterFib, RoutingError, MAX_EDGES, ROUTER_V4, ROUTER_V6,
};
use portico_lab::topology::{IpFamily, FAMILIES};

/// The clients' IPv4 address, behind the router.
pub const CLIENT: &str = "10.43.0.2";
/// The clients' IPv6 address.
pub const CLIENT_V6: &str = "fd43::2";
/// The router's addresses towards the clients, IPv4 then IPv6.
const CLIENTS_GATEWAYS: [&str; 2] = ["10.43.0.1", "fd43::1"];
/// The clients' networks, IPv4 then IPv6.
const CLIENTS_NETS: [&str; 2] = ["10.43.0.0/24", "fd43::/64"];

/// A figure of each family.
pub type ByFamily<T> = BTreeMap<IpFamily, T>;

/// `by` as `IPv4 <figure>, IPv6 <figure>`, for the printed figures.
pub fn per_family<T: std::fmt::Debug>(by: &ByFamily<T>) -> String {
    by.iter()
        .map(|(family, figure)| format!("{family} {figure:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

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
/// they have a source port), at [`CLIENT`] and [`CLIENT_V6`]; every edge
/// routes it via the router, in both families. Deleted when dropped.
pub struct Clients(pub String);

impl Clients {
    pub fn up(prefix: &str, namespaces: &Namespaces) -> Clients {
        let name = format!("{prefix}-client");
        let router = namespaces.router();
        let clients = Clients(name.clone());
        let [gateway4, gateway6] = CLIENTS_GATEWAYS;
        // No duplicate address detection: the IPv6 addresses work at once.
        for line in [
            format!("netns add {name}"),
            format!("link add eth0 netns {name} type veth peer name clients netns {router}"),
            format!("-n {router} addr add {gateway4}/24 dev clients"),
            format!("-n {router} addr add {gateway6}/64 dev clients nodad"),
            format!("-n {router} link set clients up"),
            format!("-n {name} link set lo up"),
            format!("-n {name} addr add {CLIENT}/24 dev eth0"),
            format!("-n {name} addr add {CLIENT_V6}/64 dev eth0 nodad"),
            format!("-n {name} link set eth0 up"),
            format!("-n {name} route add default via {gateway4}"),
            format!("-6 -n {name} route add default via {gateway6}"),
        ] {
            ip_line(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
        let [net4, net6] = CLIENTS_NETS;
        for n in 1..=namespaces.edges() {
            let edge = namespaces.edge(n);
            for line in [
                format!("-n {edge} route add {net4} via {ROUTER_V4}"),
                format!("-6 -n {edge} route add {net6} via {ROUTER_V6}"),
            ] {
                ip_line(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            }
        }
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.fib_multipath_hash_policy=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.fib_multipath_hash_policy=1",
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

/// The node the edges balance to: a pod server named `name` on `port` of
/// every address of both families (`[::]`: the node's [`ROUTER_V4`] and
/// [`ROUTER_V6`]) in namespace `ns` (the router's, in these tests),
/// logging to `log`.
pub fn node_server(ns: &str, lab: &Path, name: &str, port: u16, log: &Path) -> Running {
    let addr = std::net::SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port);
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

/// Which edge (1-based) an address the node saw belongs to, of either
/// family.
pub fn edge_of(peer: IpAddr) -> Option<usize> {
    (1..=MAX_EDGES).find(|n| FAMILIES.iter().any(|f| edge_ip(*n, *f) == peer))
}

/// What of `record` went to targets of `family`: its connections, its
/// sessions and the sessions it opened.
pub fn of_family(record: &Record, family: IpFamily) -> Record {
    let of = |target: &std::net::SocketAddr| IpFamily::of(target.ip()) == family;
    Record {
        connections: record
            .connections
            .iter()
            .filter(|c| of(&c.target))
            .cloned()
            .collect(),
        sessions: record
            .sessions
            .iter()
            .filter(|s| of(&s.target))
            .cloned()
            .collect(),
        opened: record
            .opened
            .iter()
            .filter(|(t, _, _)| of(t))
            .cloned()
            .collect(),
    }
}

/// `record` split by family ([`of_family`]), IPv4 first.
pub fn by_family(record: &Record) -> Vec<(IpFamily, Record)> {
    FAMILIES
        .iter()
        .map(|f| (*f, of_family(record, *f)))
        .collect()
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

/// The load's timeline with a column per edge and family (`edge1 IPv6`):
/// the connections it carried to the VIPs of that family.
pub fn timeline_by_edge(record: &Record) -> Timeline {
    let mut timeline = record.timeline();
    for c in &record.connections {
        if let Ok(answer) = &c.result {
            let family = IpFamily::of(c.target.ip());
            let edge = edge_of(answer.peer)
                .map_or_else(|| answer.peer.to_string(), |n| format!("edge{n} {family}"));
            timeline.add(c.at, &edge, 1);
        }
    }
    timeline
}

/// The edges' addresses of `family`.
pub fn hops(family: IpFamily, edges: &[usize]) -> BTreeSet<IpAddr> {
    edges.iter().map(|n| edge_ip(*n, family)).collect()
}

/// Waits until the route to each of `vips` at the router (namespace
/// `router`) goes through exactly the `edges`, each through their
/// addresses of its family: how long each family's routes took.
pub fn wait_routes(
    router: &str,
    vips: &[IpAddr],
    edges: &[usize],
    limit: Duration,
) -> Result<ByFamily<Duration>, RoutingError> {
    let started = Instant::now();
    let mut when = ByFamily::new();
    routing::wait_for(
        &format!("{router}: routes to {vips:?} via edges {edges:?}"),
        limit,
        || {
            let mut missing = Vec::new();
            for family in FAMILIES {
                let mut all = true;
                for vip in vips.iter().filter(|v| IpFamily::of(**v) == family) {
                    let have = routing::nexthops(router, &vip.to_string())?;
                    if have != hops(family, edges) {
                        all = false;
                        missing.push(format!("{vip} via {have:?}"));
                    }
                }
                if all && vips.iter().any(|v| IpFamily::of(*v) == family) {
                    when.entry(family).or_insert_with(|| started.elapsed());
                }
            }
            Ok(if missing.is_empty() {
                Ok(when.clone())
            } else {
                Err(missing.join(", "))
            })
        },
    )
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
