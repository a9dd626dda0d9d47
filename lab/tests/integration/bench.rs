//! Smoke test of the benchmark harness (`portico-lab bench`): every
//! installed contender runs each kind of workload for one second through the
//! real topology, in IPv4 and in IPv6, and each figure the report is built
//! from must come out non-zero; the failover measurement runs in both
//! families too (every contender with a health check in IPv4, Portico in
//! IPv6). A contender whose program is missing is skipped loudly; under
//! `CI=true` HAProxy, nginx and wrk must be installed (`scripts/install-deps`).

use std::io::Write as _;
use std::time::Duration;

use portico_lab::bench::{
    self, failover, Addrs, Bench, BenchOptions, Contender, FailoverSpec, IpFamily, Summary,
    Workload,
};

use crate::support;

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Says loudly that `what` is skipped; a failure under `CI=true`.
fn skip(what: &str) {
    let why = format!("SKIPPED {what}");
    assert!(!ci(), "{why}; CI=true forbids skipping");
    if let Err(e) = writeln!(std::io::stderr(), "{why}") {
        panic!("{why} (and stderr failed: {e})");
    }
}

#[test]
fn bench_config_passes_the_edge_validator() {
    for family in [IpFamily::V4, IpFamily::V6] {
        let addrs = Addrs(family);
        let yaml = bench::portico_config(addrs);
        let config =
            portico_config::parse_edge_config(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(config.services[0].vips, vec![addrs.vip()], "{yaml}");
        let nodes: Vec<_> = config.nodes.iter().map(|n| n.addresses.clone()).collect();
        assert_eq!(nodes, addrs.nodes().map(|ip| vec![ip]).to_vec(), "{yaml}");
    }
}

#[test]
fn bench_smoke_every_installed_contender() {
    smoke(IpFamily::V4);
}

#[test]
fn bench_smoke_every_installed_contender_ipv6() {
    smoke(IpFamily::V6);
}

/// Every installed contender, each kind of workload for one second, with
/// every address of the topology in `family`.
fn smoke(family: IpFamily) {
    if !support::privileged(&format!("bench smoke test ({family})")) {
        return;
    }
    if !bench::installed("wrk") {
        skip("bench smoke test: wrk is not installed");
        return;
    }
    let mut contenders = Vec::new();
    for c in Contender::ALL
        .into_iter()
        .filter(|c| *c != Contender::PorticoB)
    {
        match c.missing_program() {
            Some(program) => skip(&format!("bench contender {c}: {program} is not installed")),
            None => contenders.push(c),
        }
    }
    // A benchmark measures: no other lab beside it.
    let _alone = support::alone();
    let prefix = format!("pbench-t{}", std::process::id());
    let mut opts = BenchOptions::standard(&prefix, support::binaries().edge);
    opts.family = family;
    opts.contenders = contenders.clone();
    opts.workloads = vec![Workload::KeepAlive, Workload::NewConn, Workload::Stream8];
    opts.duration = Duration::from_secs(1);
    opts.connections = 8;
    opts.big_file_mib = 4;
    // CI machines may have one CPU: no pinning here.
    opts.client_cpu = None;
    opts.balancer_cpu = None;
    let mut bench = Bench::up(opts).expect("bench topology up");
    let mut results = Vec::new();
    for workload in [Workload::KeepAlive, Workload::NewConn, Workload::Stream8] {
        for c in &contenders {
            let r = bench
                .run_one(*c, workload, 1)
                .unwrap_or_else(|e| panic!("{c} {workload}: {e}"));
            eprintln!("{}", r.line());
            results.push(r);
        }
    }
    bench.teardown().expect("bench teardown");
    for r in &results {
        let what = format!("{family} {} {}", r.contender, r.workload);
        assert!(r.seconds > 0.5, "{what}: ran {} s", r.seconds);
        assert!(r.bytes > 0, "{what}: no bytes");
        assert!(r.figure() > 0.0, "{what}: figure 0");
        if !r.workload.is_stream() {
            assert!(r.requests > 0, "{what}: no requests");
            assert!(
                r.p50_us > 0 && r.p99_us >= r.p50_us,
                "{what}: latency {r:?}"
            );
        }
        let has_process = !matches!(r.contender, Contender::Direct | Contender::Nftables);
        if has_process {
            assert!(r.cpu_seconds.unwrap_or(0.0) > 0.0, "{what}: no CPU time");
            assert!(r.peak_rss_kib.unwrap_or(0) > 0, "{what}: no RSS");
        } else {
            assert_eq!(r.cpu_seconds, None, "{what}");
        }
    }
    let table = Summary::new(&results).markdown();
    for c in &contenders {
        assert!(
            table.contains(&format!("| {c} |")),
            "{c} missing in\n{table}"
        );
    }
    // Nothing left behind.
    let left: Vec<String> = portico_lab::netns::list()
        .expect("ip netns list")
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
}

/// The failover measurement, short: node 2's link goes down under a stream
/// of new connections and comes back. Portico must lose nothing and stop
/// sending to node 2 within two probe intervals (plus the poll and a
/// probe's timeout); HAProxy must detect it too; nftables DNAT, which has no
/// health check, never does.
#[test]
fn bench_failover_smoke() {
    let mut contenders = vec![Contender::Portico];
    for c in [Contender::Haproxy, Contender::Nftables] {
        match c.missing_program() {
            Some(program) => skip(&format!("bench failover {c}: {program} is not installed")),
            None => contenders.push(c),
        }
    }
    failover_smoke(IpFamily::V4, contenders);
}

/// The same in IPv6, for Portico only (the time of one run).
#[test]
fn bench_failover_smoke_ipv6() {
    failover_smoke(IpFamily::V6, vec![Contender::Portico]);
}

/// The failover measurement of `contenders`, short, in `family`.
fn failover_smoke(family: IpFamily, contenders: Vec<Contender>) {
    if !support::privileged(&format!("bench failover smoke test ({family})")) {
        return;
    }
    let _alone = support::alone();
    let prefix = format!("pbench-f{}", std::process::id());
    let mut opts = BenchOptions::standard(&prefix, support::binaries().edge);
    opts.family = family;
    opts.contenders = contenders.clone();
    opts.workloads = Vec::new();
    opts.big_file_mib = 1;
    opts.client_cpu = None;
    opts.balancer_cpu = None;
    let spec = FailoverSpec {
        rate: 50,
        kill_at: Duration::from_secs(2),
        down_for: Duration::from_secs(6),
        recover_limit: Duration::from_secs(6),
        after_recovery: Duration::from_millis(500),
        ..FailoverSpec::standard()
    };
    let mut bench = Bench::up(opts).expect("bench topology up");
    let results = failover::run_failovers(&mut bench, &spec, |r| eprintln!("{}", r.line()));
    bench.teardown().expect("bench teardown");
    let results = results.expect("failover runs");
    let table = failover::failover_markdown(&results);
    let timelines: String = results.iter().map(|r| r.timeline_text()).collect();
    let all = format!("{table}\n{timelines}");
    // Straight to stderr: these figures are the point.
    if let Err(e) = writeln!(std::io::stderr(), "{all}") {
        panic!("stderr: {e}");
    }
    assert_eq!(
        results.iter().map(|r| r.contender).collect::<Vec<_>>(),
        contenders
    );
    // Two probe intervals of 1 s, a probe's 500 ms timeout, and 500 ms for
    // the 50 ms poll and a busy machine.
    let detect_limit = Duration::from_millis(2 * 1000 + 500 + 500);
    for r in &results {
        let c = r.contender;
        // About rate x (kill_at + down_for + recovery + after_recovery).
        assert!(r.sent >= 250, "{c}: only {} connections\n{all}", r.sent);
        let before: usize = r.timeline.iter().take(2).map(|s| s.node2).sum();
        assert!(
            before > 0,
            "{c}: node-2 answered nothing before the kill\n{all}"
        );
        assert!(
            r.recovery.is_some(),
            "{c}: node-2 never answered again\n{all}"
        );
        match c {
            Contender::Portico => {
                // A connection already connected to node 2 when its link
                // went down is lost whatever the balancer does; every later
                // one must be saved by the connect retry.
                assert_eq!(
                    r.failed_after_kill(),
                    0,
                    "{c}: failed connections started after the kill\n{all}"
                );
                let d = r
                    .detection
                    .unwrap_or_else(|| panic!("{c}: no detection\n{all}"));
                assert!(
                    d <= detect_limit,
                    "{c}: detection {d:?} > {detect_limit:?}\n{all}"
                );
            }
            Contender::Haproxy => {
                let d = r
                    .detection
                    .unwrap_or_else(|| panic!("{c}: no detection\n{all}"));
                assert!(d < spec.down_for, "{c}: detection {d:?}\n{all}");
            }
            Contender::Nftables => {
                assert_eq!(r.detection, None, "{c}: no health check, yet\n{all}");
                assert!(r.failed() > 0, "{c}: sends to the dead node\n{all}");
            }
            _ => {}
        }
    }
    let left: Vec<String> = portico_lab::netns::list()
        .expect("ip netns list")
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
}
