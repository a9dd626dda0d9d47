//! Several edges announcing their VIPs to an upstream router over BGP, with
//! the real BIRD on the shipped `deploy/bird-edge.conf` and
//! `deploy/bird-router.conf` ([`portico_lab::routing::Fabric`]). A test
//! stands in for the edge with the routes the edge puts in table 4242
//! (`dev lo`, protocol 242), and checks what the router's kernel makes of
//! them: one multipath route over the edges announcing a VIP, nothing for
//! routes that are not the edge's, an edge's next hop gone at once when its
//! `portico-vips` device goes (a veth here), a dead edge's within BFD's
//! detection time, and a stopped edge's at once (what the systemd drop-in's
//! stop order relies on); each for a VIP of each family. Needs root and BIRD (`scripts/install-deps`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use portico_lab::command::installed_or_skip;
use portico_lab::netns::ip_line;
use portico_lab::routing::{self, edge_v4, edge_v6, Fabric, VIP_PROTO, VIP_TABLE};

use crate::support;

/// How long the daemons get to bring their sessions up (BIRD waits about
/// 5 s before its first connect).
const SESSIONS_UP: Duration = Duration::from_secs(30);
/// How long a route change may take to reach the router's kernel.
const PROPAGATE: Duration = Duration::from_secs(10);
/// BFD's detection time in the configs is 3 x 300 ms; the next hop of a
/// dead edge must be gone within this (room for a loaded machine).
const BFD_WITHDRAW: Duration = Duration::from_secs(2);

/// A BIRD stopped cleanly withdraws at once: well under BFD's 0.9 s.
const CLEAN_WITHDRAW: Duration = Duration::from_millis(500);

const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8:10::10";
/// VIPs routed through a `portico-vips` device, as the edge routes them.
const DEVICE_VIP4: &str = "192.0.2.20";
const DEVICE_VIP6: &str = "2001:db8:10::20";

/// Whether BIRD can run here (else a loud skip, a failure under `CI=true`).
fn bird_ok(what: &str) -> bool {
    installed_or_skip(what, &[("bird", "bird2"), ("birdc", "bird2")])
}

/// Adds (`add`) or deletes (`del`) edge `n`'s route to `prefix` in the VIP
/// table with protocol `proto`, as the edge does for a VIP it is ready for.
fn vip_route(fabric: &Fabric, n: usize, verb: &str, prefix: &str, proto: u32) {
    let family = if prefix.contains(':') { "-6" } else { "-4" };
    let ns = fabric.edge_ns(n);
    ip_line(&format!(
        "{family} -n {ns} route {verb} {prefix} dev lo table {VIP_TABLE} proto {proto}"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
}

fn hops(ns: impl Fn(usize) -> IpAddr, edges: &[usize]) -> BTreeSet<IpAddr> {
    edges.iter().map(|n| ns(*n)).collect()
}

fn v4(edges: &[usize]) -> BTreeSet<IpAddr> {
    hops(|n| IpAddr::V4(edge_v4(n)), edges)
}

fn v6(edges: &[usize]) -> BTreeSet<IpAddr> {
    hops(|n| IpAddr::V6(edge_v6(n)), edges)
}

#[test]
fn router_spreads_vips_over_the_edges_and_drops_a_dead_one_by_bfd() {
    if !support::privileged("BGP fabric test") || !bird_ok("BGP fabric test") {
        return;
    }
    // It measures BFD's withdrawal: no other lab beside it.
    let _alone = support::alone();
    let prefix = format!("pbgp{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("portico-{prefix}"));
    let started = Instant::now();
    let mut fabric =
        Fabric::up(&prefix, &dir, routing::EDGES, SESSIONS_UP).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("fabric {prefix} up in {:?}", started.elapsed());
    let router = fabric.router_ns();
    let wait = |prefix: &str, want: &BTreeSet<IpAddr>| {
        routing::wait_nexthops(&router, prefix, want, PROPAGATE).unwrap_or_else(|e| panic!("{e}"))
    };

    // Both edges ready for the VIP: one route with both as next hops.
    for n in [1, 2] {
        vip_route(&fabric, n, "add", &format!("{VIP4}/32"), VIP_PROTO);
        vip_route(&fabric, n, "add", &format!("{VIP6}/128"), VIP_PROTO);
    }
    let took = wait(VIP4, &v4(&[1, 2]));
    eprintln!("VIP on both edges: ECMP route at the router after {took:?}");
    wait(VIP6, &v6(&[1, 2]));

    // Not the edge's: another protocol number, or wider than a host route.
    vip_route(&fabric, 1, "add", "192.0.2.11/32", VIP_PROTO + 1);
    vip_route(&fabric, 1, "add", "2001:db8:10::11/128", VIP_PROTO + 1);
    vip_route(&fabric, 1, "add", "198.51.100.0/24", VIP_PROTO);
    vip_route(&fabric, 1, "add", "2001:db8:11::/64", VIP_PROTO);
    // A VIP of each family added after them: once it is at the router, so
    // would they be.
    vip_route(&fabric, 1, "add", "192.0.2.12/32", VIP_PROTO);
    vip_route(&fabric, 1, "add", "2001:db8:10::12/128", VIP_PROTO);
    wait("192.0.2.12", &v4(&[1]));
    wait("2001:db8:10::12", &v6(&[1]));
    for prefix in [
        "192.0.2.11",
        "2001:db8:10::11",
        "198.51.100.0/24",
        "2001:db8:11::/64",
    ] {
        let have = routing::nexthops(&router, prefix).unwrap_or_else(|e| panic!("{e}"));
        assert!(have.is_empty(), "{prefix} must not be announced: {have:?}");
    }
    let exported = fabric.edges[0]
        .birdc("show route export upstream4")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !exported.contains("192.0.2.11") && !exported.contains("198.51.100.0"),
        "edge 1 exports only its VIP routes:\n{exported}"
    );
    let exported6 = fabric.edges[0]
        .birdc("show route export upstream6")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !exported6.contains("2001:db8:10::11") && !exported6.contains("2001:db8:11::"),
        "edge 1 exports only its IPv6 VIP routes:\n{exported6}"
    );

    // Edge 1 no longer ready: only edge 2 is left for the VIP; back again.
    vip_route(&fabric, 1, "del", &format!("{VIP4}/32"), VIP_PROTO);
    vip_route(&fabric, 1, "del", &format!("{VIP6}/128"), VIP_PROTO);
    let took = wait(VIP4, &v4(&[2]));
    eprintln!("VIP gone from edge 1: one next hop left after {took:?}");
    wait(VIP6, &v6(&[2]));
    vip_route(&fabric, 1, "add", &format!("{VIP4}/32"), VIP_PROTO);
    vip_route(&fabric, 1, "add", &format!("{VIP6}/128"), VIP_PROTO);
    wait(VIP4, &v4(&[1, 2]));
    wait(VIP6, &v6(&[1, 2]));

    // The edge's real routes go through its `portico-vips` device, which
    // vanishes with the edge process, taking the routes with it (the kernel
    // tells no one route by route). A veth stands in for the device here.
    for n in [1, 2] {
        let ns = fabric.edge_ns(n);
        for line in [
            format!("-n {ns} link add portico-vips type veth peer name portico-peer"),
            format!("-n {ns} link set portico-peer up"),
            format!("-n {ns} link set portico-vips up"),
            format!("-n {ns} route add {DEVICE_VIP4}/32 dev portico-vips table {VIP_TABLE} proto {VIP_PROTO}"),
            format!("-6 -n {ns} route add {DEVICE_VIP6}/128 dev portico-vips table {VIP_TABLE} proto {VIP_PROTO}"),
        ] {
            ip_line(&line).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    wait(DEVICE_VIP4, &v4(&[1, 2]));
    wait(DEVICE_VIP6, &v6(&[1, 2]));
    ip_line(&format!("-n {} link del portico-vips", fabric.edge_ns(1)))
        .unwrap_or_else(|e| panic!("{e}"));
    let took = wait(DEVICE_VIP4, &v4(&[2]));
    let took6 = wait(DEVICE_VIP6, &v6(&[2]));
    eprintln!(
        "edge 1's device gone: its next hops gone after {took:?} (IPv4), {took6:?} more (IPv6)"
    );

    // Edge 2's BIRD dies: BFD takes its next hops out, both families.
    let killed = Instant::now();
    fabric.edges[1].kill();
    let gone4 = wait(VIP4, &v4(&[1]));
    let gone6 = routing::wait_nexthops(&router, VIP6, &v6(&[1]), PROPAGATE)
        .unwrap_or_else(|e| panic!("{e}"));
    let since_kill = killed.elapsed();
    eprintln!(
        "edge 2's BIRD killed: its IPv4 next hop gone after {gone4:?}, IPv6 by {:?}",
        gone4 + gone6
    );
    assert!(
        gone4 <= BFD_WITHDRAW && since_kill <= BFD_WITHDRAW,
        "a dead edge's next hops must go within {BFD_WITHDRAW:?} (BFD), took {gone4:?} (IPv4), {since_kill:?} (both)"
    );
    let state = fabric.router.birdc("show protocols").unwrap_or_default();
    eprintln!("router after the kill:\n{state}");

    // Edge 1's BIRD stopped as at shutdown (SIGTERM): it tells the router,
    // which withdraws at once, well before BFD would notice.
    let stopped = Instant::now();
    fabric.edges[0]
        .stop(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let gone = wait(VIP4, &BTreeSet::new());
    let gone6 = wait(VIP6, &BTreeSet::new());
    let since_stop = stopped.elapsed();
    eprintln!(
        "edge 1's BIRD stopped: both families' routes gone after {since_stop:?} (IPv4 {gone:?} after BIRD exited, IPv6 {gone6:?} more)"
    );
    assert!(
        since_stop < CLEAN_WITHDRAW,
        "a stopped edge's routes must go at once, took {since_stop:?} ({gone:?} after BIRD exited, IPv6 {gone6:?} more)"
    );
}

#[test]
fn fabric_that_cannot_come_up_leaves_nothing_behind() {
    if !support::privileged("BGP fabric clean-up test") || !bird_ok("BGP fabric clean-up test") {
        return;
    }
    let _shared = support::shared();
    let prefix = format!("pbgpx{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("portico-{prefix}"));
    // No session comes up in a millisecond: `up` fails after starting
    // every daemon.
    let failed = Fabric::up(&prefix, &dir, routing::EDGES, Duration::from_millis(1));
    assert!(
        matches!(failed, Err(routing::RoutingError::Timeout { .. })),
        "{:?}",
        failed.err()
    );
    let left: Vec<String> = portico_lab::netns::list()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|ns| ns.starts_with(&format!("{prefix}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}
