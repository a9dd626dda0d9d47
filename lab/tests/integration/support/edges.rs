//! What the tests of several real edges share: a process in a namespace
//! ([`Running`]), the clients' namespace behind the router ([`Clients`]),
//! and reading a load's record by edge (which edge carried what).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portico_lab::load::{Record, Timeline};
use portico_lab::netns::ip_line;
use portico_lab::routing::{edge_v4, Namespaces, MAX_EDGES, ROUTER_V4};

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
