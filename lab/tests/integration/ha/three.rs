//! Three edges behind a router, under 100 new connections a second and 60
//! long-lived sessions: edge 3 lost (its process killed, then started
//! again; then its link cut, which only BFD tells the router), once with
//! the router installing plain multipath routes (the shipped config) and
//! once through resilient nexthop groups. A full proxy cannot keep the
//! sessions of the edge that went; what differs is whether the surviving
//! edges keep theirs. The figures and timelines are printed for
//! `docs/ha.md`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use portico_lab::load::{Load, LoadSpec, Record};
use portico_lab::routing::RouterFib;

use super::{start_edge, wait_hops, Scene, VIP};
use crate::support::edges::{carried_by, hops, sessions_at, timeline_by_edge};

/// Long-lived sessions (about 20 per edge).
const SESSIONS: usize = 60;
/// A new connection slower than this waited for a SYN retransmission.
const DELAYED: Duration = Duration::from_millis(500);

/// What losing an edge cost the load.
#[derive(Debug)]
struct Cost {
    total: usize,
    failed: usize,
    /// Succeeded, but only after a retransmission.
    delayed: usize,
    /// When the last failed or delayed connection started, after the event.
    last_bad: Option<Duration>,
    /// Sessions open at the event, by edge.
    opened: BTreeMap<usize, usize>,
    /// Of those, the ones lost, by edge.
    lost: BTreeMap<usize, usize>,
}

impl Cost {
    fn of(record: &Record, event: Duration) -> Cost {
        let bad = |c: &&portico_lab::load::Connection| c.result.is_err() || c.took > DELAYED;
        let (opened, lost) = sessions_at(record, event);
        Cost {
            total: record.connections.len(),
            failed: record.failed().len(),
            delayed: record
                .connections
                .iter()
                .filter(|c| c.result.is_ok() && c.took > DELAYED)
                .count(),
            last_bad: record
                .connections
                .iter()
                .filter(bad)
                .map(|c| c.at.saturating_sub(event))
                .max(),
            opened,
            lost,
        }
    }

    /// Sessions lost on edges other than `gone`.
    fn lost_on_survivors(&self, gone: usize) -> usize {
        self.lost
            .iter()
            .filter(|(edge, _)| **edge != gone)
            .map(|(_, n)| n)
            .sum()
    }
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} new connections failed, {} waited for a retransmission (the last failed or waiting one started {:?} after); of the sessions open then, lost by edge {:?} of {:?}",
            self.failed, self.total, self.delayed, self.last_bad, self.lost, self.opened
        )
    }
}

/// Waits until a resilient router spreads the VIP's buckets over `members`.
fn balanced(scene: &Scene, members: usize) {
    if let Some(fib) = &scene.site.fabric.resilient {
        let took = fib
            .wait_balanced(
                &scene.site.fabric.router_ns(),
                &format!("{VIP}/32"),
                members,
                Duration::from_secs(20),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", scene.site.fabric.log_tails(20)));
        eprintln!("the router's buckets spread over {members} edges after {took:?}");
    }
}

/// Starts the load on the scene: 100 new connections a second for
/// `duration`, and [`SESSIONS`] sessions, all open before it returns.
fn load(scene: &Scene, duration: Duration) -> Load {
    let target = SocketAddr::new(VIP.parse().expect("vip"), 80);
    let load = Load::start(
        &scene.site.clients.0,
        LoadSpec::connections(vec![target], 100, duration).with_sessions(&[target], SESSIONS),
    );
    load.wait_ok(100, Duration::from_secs(10))
        .expect("the load runs");
    load.wait_until("every session open", Duration::from_secs(10), |r| {
        r.opened.len() == SESSIONS
    })
    .expect("sessions open");
    load
}

/// Edge 3 lost twice behind a router installing routes as `fib` says:
/// killed and started again, then its link cut. The costs of both.
fn edge_lost(fib: RouterFib, tag: &str) -> Option<(Cost, Cost)> {
    let scene = Scene::up_with(&format!("three edges, {fib:?} router"), tag, 3, fib)?;
    let (fabric, dir, edge) = (
        &scene.site.fabric,
        &scene.site.dir,
        &scene.site.binaries.edge,
    );
    let _edge1 = start_edge(fabric, dir, edge, 1, "edge1");
    let _edge2 = start_edge(fabric, dir, edge, 2, "edge2");
    let mut edge3 = start_edge(fabric, dir, edge, 3, "edge3");
    wait_hops(fabric, &[1, 2, 3]);
    balanced(&scene, 3);

    // 1. Edge 3's process killed (its routes go with it), then started
    // again (announced once its first probes are in).
    let load1 = load(&scene, Duration::from_secs(8));
    let kill_at = load1.elapsed();
    edge3.signal(nix::sys::signal::Signal::SIGKILL);
    let gone = wait_hops(fabric, &[1, 2]);
    edge3.wait(Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let restart_at = load1.elapsed();
    let _edge3 = start_edge(fabric, dir, edge, 3, "edge3-again");
    let back = wait_hops(fabric, &[1, 2, 3]);
    let record = load1.finish().expect("the load ends");
    let mut timeline = timeline_by_edge(&record);
    timeline.mark(kill_at, "edge 3 killed (SIGKILL)");
    timeline.mark(restart_at, "edge 3 started again");
    let killed = Cost::of(&record, kill_at);
    eprintln!(
        "{fib:?} router, edge 3 killed and started again: gone at the router {gone:?} after the kill, back {back:?} after the start; {killed}\n{timeline}"
    );
    let after = kill_at + gone + Duration::from_millis(100);
    assert_eq!(carried_by(&record, after, restart_at), hops(&[1, 2]));
    assert!(
        carried_by(
            &record,
            restart_at + back + Duration::from_secs(1),
            Duration::MAX
        )
        .contains(&IpAddr::V4(portico_lab::routing::edge_v4(3))),
        "edge 3 carries new connections again"
    );
    assert_eq!(
        killed.lost.get(&3),
        killed.opened.get(&3),
        "edge 3's sessions went with its process"
    );
    // A connection in flight when the route changed may fail (its packets
    // move to an edge that never saw it); none other.
    super::failed_only_at_route_changes(
        &record,
        &[kill_at + gone, restart_at + back],
        Duration::from_millis(300),
        3,
    );

    // 2. Edge 3's link cut: the router hears nothing until BFD gives up.
    // Twenty seconds of load: the share of failed connections is of the
    // whole scenario.
    balanced(&scene, 3);
    let load2 = load(&scene, Duration::from_secs(20));
    let cut_at = load2.elapsed();
    let router = fabric.router_ns();
    portico_lab::netns::ip_line(&format!("-n {router} link set edge3 down"))
        .unwrap_or_else(|e| panic!("{e}"));
    let dropped = wait_hops(fabric, &[1, 2]);
    let record = load2.finish().expect("the load ends");
    let mut timeline = timeline_by_edge(&record);
    timeline.mark(cut_at, "edge 3's link cut");
    let cut = Cost::of(&record, cut_at);
    eprintln!(
        "{fib:?} router, edge 3's link cut: dropped at the router {dropped:?} after the cut; {cut}\n{timeline}"
    );
    // BFD's 3 x 300 ms, with room for a loaded machine (the goal is 1 s;
    // the figure is printed above).
    assert!(
        dropped < Duration::from_millis(1500),
        "BFD took {dropped:?}"
    );
    if let Some(last) = cut.last_bad {
        assert!(
            last < dropped + Duration::from_millis(300),
            "a connection started {last:?} after the cut failed or waited, the route changed after {dropped:?}"
        );
    }
    assert!(
        cut.failed * 100 <= cut.total,
        "more than 1% failed: {} of {}",
        cut.failed,
        cut.total
    );
    assert_eq!(
        carried_by(
            &record,
            cut_at + dropped + Duration::from_millis(100),
            Duration::MAX
        ),
        hops(&[1, 2])
    );
    Some((killed, cut))
}

#[test]
fn three_edges_behind_a_multipath_router_an_edge_lost_also_moves_survivors_flows() {
    let Some((killed, cut)) = edge_lost(RouterFib::Multipath, "phm") else {
        return;
    };
    // The kernel splits the hash space by the number of next hops: one
    // leaving (and coming back) moves flows between the survivors too,
    // and their sessions break on an edge that never saw them.
    assert!(
        killed.lost_on_survivors(3) + cut.lost_on_survivors(3) > 0,
        "a multipath rehash kept every survivor's session: {killed}; {cut}"
    );
}

#[test]
fn three_edges_behind_a_resilient_router_an_edge_lost_costs_only_its_own_flows() {
    let Some((killed, cut)) = edge_lost(RouterFib::Resilient, "phr") else {
        return;
    };
    assert_eq!(killed.lost_on_survivors(3), 0, "{killed}");
    assert_eq!(cut.lost_on_survivors(3), 0, "{cut}");
}
