//! An active-standby pair of edges: the real keepalived on the shipped
//! `deploy/keepalived.conf` in two edge namespaces
//! ([`portico_lab::routing::vrrp`]), each beside a stand-in for the edge's
//! `GET /readyz`. The VIPs go to the higher priority, move when its edge is
//! not ready (or drained), stay put when it is ready again (`nopreempt`),
//! and come back when the peer's keepalived dies. Needs root and keepalived
//! (`scripts/install-deps`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use portico_lab::routing::vrrp::{self, holds, keepalived_config, Keepalived, Readyz};
use portico_lab::routing::{wait_for, Namespaces, RoutingError};

use crate::support;

/// The VIPs of the shipped config.
const VIPS: [&str; 2] = ["192.0.2.10", "192.0.2.11"];
/// The first election: BACKUP waits out 3 adverts (1 s each) and its skew.
const ELECTED: Duration = Duration::from_secs(20);
/// A failing check (fall 2, every second) and the takeover.
const MOVE: Duration = Duration::from_secs(8);
/// How long a VIP move may take here, asserted (fall 2 x 1 s, or the
/// master-down interval of about 3.6 s, and room for a loaded machine).
const MOVE_AT_MOST: Duration = Duration::from_secs(6);

fn vips() -> Vec<IpAddr> {
    VIPS.iter().map(|v| v.parse().unwrap()).collect()
}

/// Whether keepalived and curl can run here (else a loud skip, a failure
/// under `CI=true`).
fn keepalived_ok(what: &str) -> bool {
    portico_lab::command::installed_or_skip(what, &[("keepalived", "keepalived"), ("curl", "curl")])
}

/// Waits until the namespace `holder` holds every VIP and `other` none; how
/// long that took.
fn wait_held(holder: &str, other: &str, limit: Duration) -> Result<Duration, RoutingError> {
    let started = Instant::now();
    wait_for(&format!("VIPs on {holder} only"), limit, || {
        let mut seen = Vec::new();
        for vip in vips() {
            let (h, o) = (holds(holder, vip)?, holds(other, vip)?);
            if !h || o {
                seen.push(format!("{vip}: {holder}={h} {other}={o}"));
            }
        }
        Ok(if seen.is_empty() {
            Ok(started.elapsed())
        } else {
            Err(seen.join(", "))
        })
    })
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
        portico_lab::routing::EDGES,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (namespaces.edge(1), namespaces.edge(2));
    let start = |ns: &str| Readyz::start(ns).unwrap_or_else(|e| panic!("{e}"));
    let (ready_a, ready_b) = (start(&a), start(&b));
    let config = |n, priority| keepalived_config(n, priority).unwrap_or_else(|e| panic!("{e}"));
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
