//! Smoke test of the scale benchmark (`portico-lab scale`) with a small N:
//! 20 Services x 3 ports against the real edge (from the API server) and
//! against HAProxy, 3 nodePort changes each. Every listener must answer with
//! its nodePort, every change must be followed, and the figures must be sane;
//! in IPv4 and in IPv6 (every address of the topology). Under `CI=true`
//! HAProxy must be installed (`scripts/install-deps`).

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use portico_lab::scale::{self, Addrs, Figures, IpFamily, ScaleOptions};

use crate::support;

#[test]
fn scale_config_passes_the_edge_validator() {
    for family in [IpFamily::V4, IpFamily::V6] {
        let addrs = Addrs(family);
        let yaml = scale::portico_config(Path::new("kubeconfig"), addrs);
        let config =
            portico_config::parse_edge_config(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let pool = &config.settings.address_pools[0];
        for i in [0, 255, scale::MAX_SERVICES - 1] {
            assert!(pool.contains(scale::vip(addrs, i)), "{family} {i}\n{yaml}");
        }
        assert!(config.settings.kubernetes.is_some());
    }
}

fn sane(name: &str, f: &Figures, services: usize, changes: usize) {
    let all = services * scale::PORTS.len();
    assert_eq!(f.answered, all, "{name}: listeners answering right");
    assert_eq!(f.changes.len(), changes, "{name}: changes followed");
    for (what, d) in [("warm", f.warm), ("cold", f.cold)] {
        assert!(
            d > Duration::ZERO && d < Duration::from_secs(60),
            "{name}: {what} set-up took {d:?}"
        );
    }
    assert!(f.warm_first <= f.warm, "{name}: first after last {f:?}");
    assert!(f.cold_first <= f.cold, "{name}: first after last {f:?}");
    for d in &f.changes {
        assert!(*d < Duration::from_secs(30), "{name}: a change took {d:?}");
    }
    for m in [f.mem_empty, f.mem_warm, f.mem_cold] {
        assert!(
            m.rss_kib > 1024 && m.rss_kib < 4 * 1024 * 1024,
            "{name}: RSS {m:?}"
        );
        assert!(m.hwm_kib >= m.rss_kib, "{name}: HWM below RSS {m:?}");
    }
    assert!(
        f.cold_cpu_s >= 0.0 && f.cold_cpu_s < 60.0,
        "{name}: CPU {f:?}"
    );
}

#[test]
fn scale_smoke_portico_and_haproxy() {
    smoke(IpFamily::V4);
}

#[test]
fn scale_smoke_portico_and_haproxy_ipv6() {
    smoke(IpFamily::V6);
}

/// 20 Services x 3 ports, 3 changes, each contender, every address in
/// `family`.
fn smoke(family: IpFamily) {
    if !support::privileged(&format!("scale smoke test ({family})")) {
        return;
    }
    if !portico_lab::bench::installed("haproxy") {
        let why = "SKIPPED scale smoke test: haproxy is not installed";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}; CI=true forbids skipping"
        );
        if let Err(e) = writeln!(std::io::stderr(), "{why}") {
            panic!("{why} (and stderr failed: {e})");
        }
        return;
    }
    // It measures: no other lab beside it.
    let _alone = support::alone();
    let started = Instant::now();
    let bins = support::binaries();
    let prefix = format!("pscale-t{}", std::process::id());
    let mut opts = ScaleOptions::standard(&prefix, bins.edge, bins.lab);
    opts.family = family;
    opts.services = 20;
    opts.changes = 3;
    opts.concurrency = 16;
    // CI machines may have one CPU: no pinning here.
    opts.balancer_cpu = None;
    opts.setup_limit = Duration::from_secs(30);
    let header = scale::header(&opts);
    let (portico, haproxy) = scale::run(opts).unwrap_or_else(|e| panic!("scale run: {e}"));
    eprintln!("{}", scale::markdown(&header, 20, &portico, &haproxy));
    sane("portico", &portico, 20, 3);
    sane("haproxy", &haproxy, 20, 3);
    assert!(portico
        .api_writes
        .is_some_and(|d| d < Duration::from_secs(20)));
    assert!(
        portico.warm_listeners.is_some(),
        "the edge's metrics never counted 60 listeners"
    );
    let left = portico_lab::netns::list().expect("ip netns list");
    assert!(
        !left.iter().any(|ns| ns.starts_with(&prefix)),
        "namespaces left: {left:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
}
