//! An active-standby pair of edges: the real keepalived on the shipped
//! `deploy/keepalived.conf` in two edge namespaces
//! ([`portico_lab::routing::vrrp`]).
//!
//! The pair moves a VIP of each family: the shipped IPv4 VIPs, advertised,
//! and IPv6 ones riding along as excluded addresses
//! ([`vrrp::dual_stack_config`]), as the shipped file's comment offers.
//!
//! Beside a stand-in for the edge's `GET /readyz`: the VIPs go to the
//! higher priority, move when its edge is not ready (or drained), stay put
//! when it is ready again (`nopreempt`), and come back when the peer's
//! keepalived dies.
//!
//! Beside real `portico-edge` processes, under 100 new connections a second
//! and long-lived sessions from a client behind the router: the active
//! edge's process killed, its whole host lost, and the active edge drained;
//! each time the VIPs move, the router follows the new holder's gratuitous
//! ARP (unsolicited neighbour advertisement), and the per-second timeline
//! is printed (`--nocapture`) for `docs/ha.md`, the figures per family.
//! Needs root, keepalived and curl (`scripts/install-deps`).

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use portico_lab::load::{Load, LoadSpec, Record};
use portico_lab::routing::vrrp::{
    self, dual_stack_config, holds, join_vips_subnet, link_mac, neighbour_mac, shipped_vips,
    Keepalived, Readyz, VIPS6,
};
use portico_lab::routing::{wait_for, Namespaces, RoutingError, EDGES, ROUTER_V4, ROUTER_V6};

use crate::support;
use crate::support::edges::{
    by_family, carried_by, edge_of, hops, node_server, per_family, timeline_by_edge, ByFamily,
    Clients, Running,
};

/// The first election: BACKUP waits out 3 adverts (1 s each) and its skew.
const ELECTED: Duration = Duration::from_secs(20);
/// A failing check (fall 2, every second) and the takeover.
const MOVE: Duration = Duration::from_secs(8);
/// How long a VIP move may take here, asserted (fall 2 x 1 s, or the
/// master-down interval of about 3.6 s, and room for a loaded machine).
const MOVE_AT_MOST: Duration = Duration::from_secs(6);

/// The VIPs: the shipped config's (IPv4), then the IPv6 ones riding along.
fn vips() -> Vec<IpAddr> {
    let mut vips = shipped_vips().unwrap_or_else(|e| panic!("{e}"));
    vips.extend(VIPS6.iter().map(|v| IpAddr::V6(*v)));
    vips
}

/// Whether keepalived and curl can run here (else a loud skip, a failure
/// under `CI=true`).
fn keepalived_ok(what: &str) -> bool {
    portico_lab::command::installed_or_skip(what, &[("keepalived", "keepalived"), ("curl", "curl")])
}

/// Waits until the namespace `holder` holds every one of `vips` and
/// `other` (if any) none; how long that took.
fn wait_vips(
    vips: &[IpAddr],
    holder: &str,
    other: Option<&str>,
    limit: Duration,
) -> Result<Duration, RoutingError> {
    let started = Instant::now();
    wait_for(
        &format!("VIPs on {holder} (and not on {other:?})"),
        limit,
        || {
            let mut seen = Vec::new();
            for vip in vips {
                let h = holds(holder, *vip)?;
                let o = match other {
                    Some(other) => holds(other, *vip)?,
                    None => false,
                };
                if !h || o {
                    seen.push(format!("{vip}: {holder}={h} {other:?}={o}"));
                }
            }
            Ok(if seen.is_empty() {
                Ok(started.elapsed())
            } else {
                Err(seen.join(", "))
            })
        },
    )
}

/// Waits until the namespace `holder` holds every VIP and `other` none; how
/// long that took.
fn wait_held(holder: &str, other: &str, limit: Duration) -> Result<Duration, RoutingError> {
    wait_vips(&vips(), holder, Some(other), limit)
}

#[test]
fn vips_follow_the_edges_readiness() {
    if !support::privileged("VRRP pair test") || !keepalived_ok("VRRP pair test") {
        return;
    }
    assert_eq!(
        vrrp::READYZ,
        portico_config::EdgeSettings::default().admin_listen,
        "the stand-in answers where the edge's admin server does"
    );
    // It times the moves: no other lab beside it.
    let _alone = support::alone();
    let prefix = format!("pvrrp{}", std::process::id());
    let namespaces = Namespaces::up(
        &prefix,
        &std::env::temp_dir().join(format!("portico-{prefix}")),
        EDGES,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (namespaces.edge(1), namespaces.edge(2));
    let start = |ns: &str| Readyz::start(ns).unwrap_or_else(|e| panic!("{e}"));
    let (ready_a, ready_b) = (start(&a), start(&b));
    let config = |n, priority| dual_stack_config(n, priority).unwrap_or_else(|e| panic!("{e}"));
    let keepalived = |ns: &str, name: &str, text: &str| {
        Keepalived::start(ns, namespaces.dir(), name, text).unwrap_or_else(|e| panic!("{e}"))
    };
    let _keepalived_a = keepalived(&a, "keepalived-a", &config(1, 150));
    let mut keepalived_b = keepalived(&b, "keepalived-b", &config(2, 100));
    let logs = |e: RoutingError| -> ! {
        let tail = |name: &str| {
            portico_lab::procs::log_tail(&namespaces.dir().join(format!("{name}.log")), 30)
        };
        panic!(
            "{e}\n--- a ---\n{}\n--- b ---\n{}",
            tail("keepalived-a"),
            tail("keepalived-b")
        )
    };

    // The higher priority takes the VIPs.
    let took = wait_held(&a, &b, ELECTED).unwrap_or_else(|e| logs(e));
    eprintln!("edge a (priority 150) holds the VIPs after {took:?}");

    // Edge a not ready (or drained): its check fails twice, the VIPs move.
    ready_a.set_ready(false);
    let moved = wait_held(&b, &a, MOVE).unwrap_or_else(|e| logs(e));
    eprintln!("edge a not ready: the VIPs on edge b after {moved:?}");
    assert!(moved <= MOVE_AT_MOST, "the move took {moved:?}");

    // Edge a ready again: once its check has passed twice it is a backup,
    // and `nopreempt` leaves the VIPs with edge b. Watched for three advert
    // intervals after that.
    let before = ready_a.ok_answers();
    ready_a.set_ready(true);
    wait_for("edge a's check passes twice", MOVE, || {
        let answered = ready_a.ok_answers() - before;
        Ok(if answered >= 2 {
            Ok(())
        } else {
            Err(format!("{answered} answers"))
        })
    })
    .unwrap_or_else(|e| logs(e));
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        for vip in vips() {
            let on_a = holds(&a, vip).unwrap_or_else(|e| panic!("{e}"));
            assert!(!on_a, "{vip} went back to edge a: nopreempt");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Edge b's keepalived dies: edge a takes the VIPs after the master-down
    // interval (the VIPs stay on b too: nobody is left there to remove them).
    keepalived_b.kill().unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    wait_for("edge a takes the VIPs", MOVE, || {
        let mut missing = Vec::new();
        for vip in vips() {
            if !holds(&a, vip)? {
                missing.push(vip.to_string());
            }
        }
        Ok(if missing.is_empty() {
            Ok(started.elapsed())
        } else {
            Err(format!("missing on a: {missing:?}"))
        })
    })
    .map(|took| {
        eprintln!("edge b's keepalived killed: the VIPs on edge a after {took:?}");
        assert!(took <= MOVE_AT_MOST, "the takeover took {took:?}");
    })
    .unwrap_or_else(|e| logs(e));
    drop(ready_b);
}

/// The NodePort the edges balance to: a pod server on the router's address.
const NODE_PORT: u16 = 30080;
/// The VIPs' service port.
const PORT: u16 = 80;
/// How long each scenario's load runs (new connections, and sessions).
const LOAD: Duration = Duration::from_secs(10);
/// Long-lived sessions to each VIP.
const SESSIONS: usize = 4;
/// How long an edge may take to be ready (listeners open, node probed).
const READY: Duration = Duration::from_secs(30);
/// How long after the VIPs arrive the router may take to follow them: the
/// new holder's gratuitous ARP does it at once; without one, the router
/// would learn the move only when its stale entry is probed (5 s and more).
const GARP_AT_MOST: Duration = Duration::from_secs(1);

/// Two real edges (`portico-edge`) with keepalived on the shipped config,
/// the clients behind the router, the node on the router's address; held
/// alone (the scenarios measure). Torn down in field order: the edges and
/// keepalived first, the namespaces last, also after a failure.
struct Pair {
    /// Edge `n`'s process is `edges[n - 1]`.
    edges: Vec<Option<Running>>,
    /// Edge `n`'s keepalived is `keepalived[n - 1]`.
    keepalived: Vec<Option<Keepalived>>,
    _node: Running,
    clients: Clients,
    namespaces: Namespaces,
    binaries: portico_lab::Binaries,
    vips: Vec<IpAddr>,
    _alone: std::sync::RwLockWriteGuard<'static, ()>,
}

impl Pair {
    /// Builds it, edge 1 (priority 150) holding the VIPs and edge 2 (100)
    /// its backup, or says (loudly) why it cannot run here.
    fn up(what: &str) -> Option<Pair> {
        if !support::privileged(what) || !keepalived_ok(what) {
            return None;
        }
        let alone = support::alone();
        let binaries = support::binaries();
        let prefix = format!("pvre{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("portico-{prefix}"));
        let namespaces = Namespaces::up(&prefix, &dir, EDGES).unwrap_or_else(|e| panic!("{e}"));
        let vips = vips();
        join_vips_subnet(&namespaces, &vips).unwrap_or_else(|e| panic!("{e}"));
        let clients = Clients::up(&prefix, &namespaces);
        let node = node_server(
            &namespaces.router(),
            &binaries.lab,
            "pod-a",
            NODE_PORT,
            &dir.join("node.log"),
        );
        let mut pair = Pair {
            edges: (0..EDGES).map(|_| None).collect(),
            keepalived: (0..EDGES).map(|_| None).collect(),
            _node: node,
            clients,
            namespaces,
            binaries,
            vips,
            _alone: alone,
        };
        for n in 1..=EDGES {
            pair.start_edge(n);
        }
        // Both start as BACKUP, each beside an edge that is ready; the
        // higher priority wins the first election.
        for n in 1..=EDGES {
            pair.start_keepalived(n);
        }
        let took = wait_vips(&pair.vips, &pair.ns(1), Some(&pair.ns(2)), ELECTED)
            .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
        eprintln!("edge 1 (priority 150) holds {:?} after {took:?}", pair.vips);
        Some(pair)
    }

    fn ns(&self, n: usize) -> String {
        self.namespaces.edge(n)
    }

    /// Each edge's config: the VIPs keepalived moves, served on one port
    /// and balanced to the one node (its address of each family: the edge
    /// forwards a VIP to the one of its family); no `vip.interface`
    /// (keepalived owns the addresses) and no `announce`; the admin API
    /// where keepalived's check asks.
    fn edge_config(&self) -> String {
        let vips: Vec<String> = self.vips.iter().map(IpAddr::to_string).collect();
        format!(
            "settings:
  health: {{interval: 200ms, timeout: 200ms, rise: 1, fall: 2, clusterCheck: tcp-node-port}}
  proxy: {{connectTimeout: 500ms, drainTimeout: 2s}}
  adminListen: {admin}
  metricsListen: 127.0.0.1:9720
nodes:
  - name: node-0
    addresses: [{ROUTER_V4}, {ROUTER_V6}]
services:
  - namespace: default
    name: web
    vips: [{vips}]
    externalTrafficPolicy: Cluster
    ports:
      - {{name: http, protocol: TCP, port: {PORT}, nodePort: {NODE_PORT}}}
",
            admin = vrrp::READYZ,
            vips = vips.join(", "),
        )
    }

    /// Starts edge `n`'s `portico-edge` (again) and waits until its
    /// `/readyz` answers 200.
    fn start_edge(&mut self, n: usize) {
        let dir = self.namespaces.dir().to_path_buf();
        let config = dir.join(format!("edge{n}.yaml"));
        let yaml = self.edge_config();
        portico_config::parse_edge_config(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        std::fs::write(&config, yaml).expect("edge config");
        let socket = dir.join(format!("edge{n}-upgrade.sock"));
        let log = (1..)
            .map(|i| dir.join(format!("edge{n}-{i}.log")))
            .find(|p| !p.exists())
            .expect("a free log name");
        self.edges[n - 1] = Some(Running::start(
            &self.ns(n),
            &self.binaries.edge,
            &[
                "run",
                "--config",
                config.to_str().expect("path"),
                "--upgrade-socket",
                socket.to_str().expect("path"),
            ],
            &log,
        ));
        let url = format!("http://{}/readyz", vrrp::READYZ);
        let ns = self.ns(n);
        wait_for(&format!("edge {n} ready"), READY, || {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "curl", "-fsS", "-m", "1", &url])
                .output()
                .expect("curl");
            Ok(if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stdout).into_owned())
            })
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// Starts edge `n`'s keepalived (again) on the shipped config with the
    /// IPv6 VIPs riding along, priority 150 for edge 1 and 100 for edge 2.
    fn start_keepalived(&mut self, n: usize) {
        let priority = if n == 1 { 150 } else { 100 };
        let config = dual_stack_config(n, priority).unwrap_or_else(|e| panic!("{e}"));
        self.keepalived[n - 1] = None;
        self.keepalived[n - 1] = Some(
            Keepalived::start(
                &self.ns(n),
                self.namespaces.dir(),
                &format!("keepalived{n}"),
                &config,
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
    }

    /// How many times edge `n`'s keepalived has logged entering `state`.
    fn entered(&self, n: usize, state: &str) -> usize {
        let log = self.namespaces.dir().join(format!("keepalived{n}.log"));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.matches(&format!("Entering {state} STATE")).count()
    }

    /// Waits until edge `n`'s keepalived has entered BACKUP more than
    /// `before` times (its check passes again, the peer holds the VIPs).
    fn wait_backup(&self, n: usize, before: usize) {
        wait_for(&format!("edge {n} back to BACKUP"), ELECTED, || {
            let now = self.entered(n, "BACKUP");
            Ok(if now > before {
                Ok(())
            } else {
                Err(format!("{now} times"))
            })
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// The ends of the keepalived and edge logs, for a failure's message.
    fn logs(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(self.namespaces.dir())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".log"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|name| {
                let tail = portico_lab::procs::log_tail(&self.namespaces.dir().join(name), 15);
                format!("\n--- {name} ---\n{tail}")
            })
            .collect()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("VRRP pair: logs{}", self.logs());
        }
    }
}

/// What one failover under load measured.
struct Move {
    record: Record,
    /// When the scenario acted, from the start of the load.
    at: Duration,
    /// From then until the old holder had none of the VIPs left (when it
    /// is still there to give them up).
    released: Option<Duration>,
    /// From then until the new holder had every VIP.
    moved: Duration,
    /// From then until the router sent every VIP to the new holder's MAC.
    followed: Duration,
}

/// Where the router sends every VIP: the MAC of its neighbour entry.
fn router_sends(pair: &Pair) -> Result<Vec<Option<String>>, RoutingError> {
    let router = pair.namespaces.router();
    pair.vips
        .iter()
        .map(|vip| neighbour_mac(&router, *vip))
        .collect()
}

/// Runs the load (100 new connections a second to the VIPs, and
/// [`SESSIONS`] sessions to each), calls `act` once edge `from` carries
/// it (the router sending the VIPs to its MAC), and measures the VIPs'
/// move to edge `to`: when edge `from` gave them up (if `gives_up`: it is
/// still there to), when edge `to` had them, when the router followed.
fn fail_over(
    pair: &mut Pair,
    (from, to): (usize, usize),
    gives_up: bool,
    act: impl FnOnce(&mut Pair),
) -> Move {
    let targets: Vec<SocketAddr> = pair
        .vips
        .iter()
        .map(|v| SocketAddr::new(*v, PORT))
        .collect();
    let load = Load::start(
        &pair.clients.0,
        LoadSpec::connections(targets.clone(), 100, LOAD).with_sessions(&targets, SESSIONS),
    );
    load.wait_ok(100, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    let mac = |n: usize| link_mac(&pair.ns(n), "eth0").unwrap_or_else(|e| panic!("{e}"));
    let (old, new) = (mac(from), mac(to));
    let sends = router_sends(pair).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        sends.iter().all(|m| m.as_deref() == Some(old.as_str())),
        "before: the router sends the VIPs to {sends:?}, not edge {from}'s {old}"
    );
    let at = load.elapsed();
    let started = Instant::now();
    act(pair);
    let (holder, former) = (pair.ns(to), pair.ns(from));
    let (mut released, mut moved, mut followed) = (None, None, None);
    let seen = |done: bool, when: &mut Option<Duration>| {
        if done && when.is_none() {
            *when = Some(started.elapsed());
        }
        when.is_some()
    };
    wait_for(&format!("the VIPs move to {holder}"), MOVE, || {
        let mut none_left = true;
        let mut all_there = true;
        for vip in &pair.vips {
            none_left &= !gives_up || !holds(&former, *vip)?;
            all_there &= holds(&holder, *vip)?;
        }
        let sends = router_sends(pair)?;
        let follows = sends.iter().all(|m| m.as_deref() == Some(new.as_str()));
        let done = [
            seen(none_left && gives_up, &mut released) || !gives_up,
            seen(all_there, &mut moved),
            seen(follows, &mut followed),
        ];
        Ok(if done.iter().all(|d| *d) {
            Ok(())
        } else {
            Err(format!(
                "released {released:?}, moved {moved:?}, the router sends to {sends:?} (edge {to}: {new})"
            ))
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    let record = load.finish().expect("the load ends");
    Move {
        record,
        at,
        released,
        moved: moved.expect("seen"),
        followed: followed.expect("seen"),
    }
}

/// Prints what `m` measured (the VIPs moving from edge `from` to edge
/// `to` when `what` happened) with its timeline, and asserts what holds on
/// any machine: the move within [`MOVE_AT_MOST`], the router following at
/// once (gratuitous ARP, unsolicited neighbour advertisement), and in each
/// family edge `from` carrying everything before and edge `to` everything
/// after, failures only around the move, and no session lost on edge `to`.
/// Returns the failed new connections, per family.
fn report(m: &Move, from: usize, to: usize, what: &str) -> ByFamily<usize> {
    let families = by_family(&m.record);
    let figures: Vec<String> = families
        .iter()
        .map(|(family, record)| {
            let failed = record.failed();
            let last = failed.iter().map(|c| c.at).max();
            let lost = record.lost_sessions();
            let on = |n: usize| {
                lost.iter()
                    .filter(|s| s.answer.as_ref().and_then(|a| edge_of(a.peer)) == Some(n))
                    .count()
            };
            let unopened = lost.iter().filter(|s| s.answer.is_none()).count();
            // A SYN sent while no edge held the VIPs is answered at its
            // resend.
            let slowest = record
                .connections
                .iter()
                .filter(|c| c.result.is_ok())
                .map(|c| c.took)
                .max();
            let mut reasons: Vec<&str> = lost
                .iter()
                .filter(|s| s.answer.is_some())
                .filter_map(|s| s.lost.as_deref())
                .map(|why| why.split_once(": ").map_or(why, |(_, why)| why))
                .collect();
            reasons.sort_unstable();
            reasons.dedup();
            format!(
                "\n  {family}: {} of {} new connections failed, the last started {:?} after, the slowest answered in {slowest:?}; sessions lost: {} on edge {from} ({reasons:?}), {} on edge {to}, {unopened} failed to open ({} sessions in all)",
                failed.len(),
                record.connections.len(),
                last.map(|at| at.saturating_sub(m.at)),
                on(from),
                on(to),
                record.sessions.len(),
            )
        })
        .collect();
    let mut timeline = timeline_by_edge(&m.record);
    timeline.mark(m.at, what);
    if let Some(released) = m.released {
        timeline.mark(m.at + released, format!("VIPs gone from edge {from}"));
    }
    timeline.mark(m.at + m.moved, format!("VIPs on edge {to}"));
    eprintln!(
        "{what}: the VIPs gone from edge {from} {:?} after, on edge {to} {:?} after, the router following {:?} after;{}\n{timeline}",
        m.released,
        m.moved,
        m.followed,
        figures.concat(),
    );
    assert!(m.moved <= MOVE_AT_MOST, "the move took {:?}", m.moved);
    assert!(
        m.followed <= m.moved + GARP_AT_MOST,
        "the router followed {:?} after the VIPs moved ({:?}): no gratuitous ARP?",
        m.followed.saturating_sub(m.moved),
        m.moved
    );
    let after = m.at + m.moved + Duration::from_secs(1);
    let mut failures = ByFamily::new();
    for (family, record) in &families {
        assert_eq!(
            carried_by(record, Duration::ZERO, m.at),
            hops(*family, &[from]),
            "{family}: before"
        );
        assert_eq!(
            carried_by(record, after, Duration::MAX),
            hops(*family, &[to]),
            "{family}: after"
        );
        let failed = record.failed();
        for c in &failed {
            assert!(
                c.at + Duration::from_millis(500) >= m.at && c.at <= after,
                "{family}: a failure away from the move ({:?} to {after:?}): {c:?}",
                m.at
            );
        }
        let on_new = record
            .lost_sessions()
            .iter()
            .filter(|s| s.answer.as_ref().and_then(|a| edge_of(a.peer)) == Some(to))
            .count();
        assert_eq!(on_new, 0, "{family}: a session lost on the new holder");
        failures.insert(*family, failed.len());
    }
    failures
}

#[test]
fn real_edges_fail_over_under_load() {
    let Some(mut pair) = Pair::up("VRRP failover of real edges") else {
        return;
    };

    // 1. Edge 1's portico-edge killed: its /readyz fails twice, its
    // keepalived goes to FAULT and gives the VIPs up, edge 2 takes them.
    let m = fail_over(&mut pair, (1, 2), true, |pair| {
        pair.edges[0]
            .as_ref()
            .expect("running")
            .signal(nix::sys::signal::Signal::SIGKILL);
    });
    assert!(pair.entered(1, "FAULT") >= 1, "{}", pair.logs());
    report(&m, 1, 2, "edge 1's portico-edge killed (SIGKILL)");
    // Edge 1 back: a BACKUP once its check passes (nopreempt: the VIPs stay).
    let backups = pair.entered(1, "BACKUP");
    pair.edges[0]
        .as_mut()
        .expect("killed")
        .wait(Duration::from_secs(10));
    pair.start_edge(1);
    pair.wait_backup(1, backups);

    // 2. Edge 2's host lost: its link cut at the router first (nothing
    // leaves or reaches it any more, not an ARP answer nor a reset, as
    // when a host loses power), then its keepalived and edge killed. Edge 1
    // takes over after the master-down interval.
    let router = pair.namespaces.router();
    let m = fail_over(&mut pair, (2, 1), false, |pair| {
        portico_lab::netns::ip_line(&format!("-n {router} link set edge2 down"))
            .unwrap_or_else(|e| panic!("{e}"));
        pair.keepalived[1]
            .as_mut()
            .expect("running")
            .kill()
            .unwrap_or_else(|e| panic!("{e}"));
    });
    pair.edges[1]
        .as_mut()
        .expect("killed")
        .wait(Duration::from_secs(10));
    report(
        &m,
        2,
        1,
        "edge 2's host lost (link cut, keepalived and edge killed)",
    );
    // Edge 2's host back, rebooted: no VIP on its interface (its
    // keepalived saw the link go and removed them, or was killed first and
    // left them), link up, its edge and keepalived started; a BACKUP.
    for vip in &pair.vips {
        if !holds(&pair.ns(2), *vip).unwrap_or_else(|e| panic!("{e}")) {
            continue;
        }
        let length = if vip.is_ipv4() { 32 } else { 128 };
        let line = format!("-n {} addr del {vip}/{length} dev eth0", pair.ns(2));
        portico_lab::netns::ip_line(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    portico_lab::netns::ip_line(&format!("-n {router} link set edge2 up"))
        .unwrap_or_else(|e| panic!("{e}"));
    let backups = pair.entered(2, "BACKUP");
    pair.start_edge(2);
    pair.start_keepalived(2);
    pair.wait_backup(2, backups);
    wait_vips(&pair.vips, &pair.ns(1), Some(&pair.ns(2)), MOVE)
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));

    // 3. Edge 1 drained: /readyz answers 503, keepalived gives the VIPs up,
    // while the edge still serves what reaches it.
    let m = fail_over(&mut pair, (1, 2), true, |pair| {
        let drained = Command::new("ip")
            .args(["netns", "exec", &pair.ns(1)])
            .arg(&pair.binaries.edge)
            .args(["drain", "--admin", &vrrp::READYZ.to_string()])
            .output()
            .expect("portico-edge drain");
        assert!(drained.status.success(), "{drained:?}");
    });
    let failed = report(&m, 1, 2, "edge 1 drained");
    eprintln!("failed in the drain: {}", per_family(&failed));
    // The drained edge serves until the VIPs leave it and the new holder
    // has them before a client's SYN is sent again: only a connection in
    // flight at the move can fail, in either family.
    for (family, failed) in &failed {
        assert!(*failed <= 3, "{family}: {failed} failed in a drain");
    }
}
