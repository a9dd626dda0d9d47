//! The node agent's sync at scale: planner time, nft script rendering, and
//! (as root, with `nft`) the kernel transaction in a throwaway network
//! namespace: full load, one-endpoint change, full resync over a loaded
//! table, rules installed and kernel memory (slab) used.
//!
//! `cargo bench -p portico-node-agent --bench sync` runs the scale
//! (10,000 Services x 10 endpoints = 100,000 endpoints); `SERVICES` and
//! `ENDPOINTS_PER_SERVICE` override it, `SKIP_KERNEL=1` skips the kernel
//! part. Under `cargo test` (no `--bench` argument) it runs a small scale
//! once as a smoke test. Times are medians of `RUNS` (default 3).
//! `DUMP_SCRIPTS=<dir>` writes the full and the one-endpoint scripts there
//! (`full.nft`, `diff.nft`) for profiling `nft -f` by hand.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portico_config::cluster::{
    AddressType, ClusterService, ClusterServicePort, Endpoint, EndpointPort, EndpointSlice,
    NodeInfo, ServiceType, TargetPort, DEFAULT_PROXY_NAME,
};
use portico_config::{Protocol, ServiceKey, SessionAffinity, TrafficPolicy};
use portico_node_agent::plan::{plan, PlanOptions};
use portico_node_agent::render::{render_diff, render_full};

fn v4(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

fn fixture(services: u32, per_service: u32) -> (Vec<ClusterService>, Vec<EndpointSlice>) {
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    for i in 0..services {
        let name = format!("svc-{i}");
        svcs.push(ClusterService {
            key: ServiceKey::new("bench", &name),
            service_type: ServiceType::LoadBalancer,
            cluster_ips: vec![v4(0x0a60_0000 + i)],
            external_ips: vec![v4(0xcb00_0000 + i)],
            ports: vec![ClusterServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                // NodePorts must be unique: spread over the whole port range.
                node_port: Some((1024 + i % 64_000) as u16),
                target_port: TargetPort::Number(8080),
            }],
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            session_affinity: SessionAffinity::None,
            source_ranges: vec![],
            invalid_source_ranges: vec![],
            proxy_name: Some(DEFAULT_PROXY_NAME.into()),
        });
        slices.push(EndpointSlice {
            key: ServiceKey::new("bench", format!("{name}-0")),
            service: ServiceKey::new("bench", &name),
            address_type: AddressType::IPv4,
            ports: vec![EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: Some(8080),
            }],
            endpoints: (0..per_service)
                .map(|e| Endpoint {
                    addresses: vec![v4(0x0af4_0000 + i * per_service + e)],
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: Some(format!("node-{}", e % 50)),
                })
                .collect(),
        });
    }
    (svcs, slices)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn timed<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::new();
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        out = Some(f());
        times.push(t.elapsed());
    }
    (median(times), out.expect("at least one run"))
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A network namespace removed again on drop.
struct Netns(String);

impl Netns {
    fn new() -> Option<Netns> {
        let name = format!("pt-bench-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Netns(name))
    }

    fn nft(&self, script: &str) -> Result<Duration, String> {
        let started = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .ok_or("no stdin")?
            .write_all(script.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(2000)
                .collect());
        }
        Ok(started.elapsed())
    }

    fn count_rules(&self) -> usize {
        Command::new("ip")
            .args([
                "netns", "exec", &self.0, "nft", "list", "table", "inet", "portico",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
            .unwrap_or(0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip").args(["netns", "del", &self.0]).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("bench: could not remove netns {}: {other:?}", self.0),
        }
    }
}

fn slab_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("Slab:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let (services, per) = if bench_mode {
        (
            env_u32("SERVICES", 10_000),
            env_u32("ENDPOINTS_PER_SERVICE", 10),
        )
    } else {
        (100, 3)
    };
    let runs = if bench_mode {
        env_u32("RUNS", 3) as usize
    } else {
        1
    };
    let (svcs, mut slices) = fixture(services, per);
    let node = NodeInfo {
        name: "node-0".into(),
        addresses: vec![v4(0xc0a8_0001)],
        ..Default::default()
    };
    let opts = PlanOptions::default();
    println!(
        "node agent sync: {services} Services x {per} endpoints ({} endpoints)",
        services * per
    );

    let (plan_time, planned) = timed(runs, || plan(&svcs, &slices, &node, &opts));
    assert!(
        planned.skipped.is_empty(),
        "bench fixture is valid: {:?}",
        planned.skipped.first()
    );
    let (render_time, full) = timed(runs, || render_full(&planned.ruleset));
    println!("  plan:                 {plan_time:?}");
    println!(
        "  render full script:   {render_time:?} ({} KiB)",
        full.len() / 1024
    );

    // One endpoint replaced in the middle Service.
    let mid = (services / 2) as usize;
    slices[mid].endpoints[0].addresses = vec![v4(0x0aff_0001)];
    let (replan_time, replanned) = timed(runs, || plan(&svcs, &slices, &node, &opts));
    let (diff_time, diff) = timed(runs, || render_diff(&planned.ruleset, &replanned.ruleset));
    let diff = diff.expect("one endpoint changed");
    println!("  re-plan after one endpoint change: {replan_time:?}");
    println!(
        "  render diff:          {diff_time:?} ({} lines)",
        diff.lines().count()
    );

    // DUMP_SCRIPTS=<dir>: keep the scripts for profiling `nft` by hand.
    if let Ok(dir) = std::env::var("DUMP_SCRIPTS") {
        let dir = std::path::Path::new(&dir);
        std::fs::write(dir.join("full.nft"), &full).expect("write full.nft");
        std::fs::write(dir.join("diff.nft"), &diff).expect("write diff.nft");
    }
    if std::env::var("SKIP_KERNEL").is_ok_and(|v| v == "1") {
        return;
    }
    let root = nix::unistd::geteuid().is_root();
    let have_nft = Command::new("nft").arg("--version").output().is_ok();
    if !root || !have_nft {
        let msg = format!("kernel part skipped (root: {root}, nft: {have_nft})");
        assert!(
            std::env::var("CI").as_deref() != Ok("true") || bench_mode,
            "{msg}"
        );
        println!("  {msg}");
        return;
    }
    let Some(ns) = Netns::new() else {
        println!("  kernel part skipped: cannot create a network namespace");
        return;
    };
    let slab_before = slab_kib();
    let load = ns.nft(&full).expect("full ruleset loads");
    let slab_after = slab_kib();
    let lines = ns.count_rules();
    println!("  kernel: full load     {load:?} ({lines} lines in `nft list table`)");
    if let (Some(a), Some(b)) = (slab_before, slab_after) {
        println!(
            "  kernel: slab memory   +{} MiB",
            b.saturating_sub(a) / 1024
        );
    }
    let apply = ns.nft(&diff).expect("diff applies");
    println!(
        "  kernel: one-endpoint change {apply:?} (plan + render + transaction: {:?})",
        replan_time + diff_time + apply
    );
    let resync = ns
        .nft(&render_full(&replanned.ruleset))
        .expect("full resync over a loaded table");
    println!("  kernel: full resync over the loaded table {resync:?}");
    println!(
        "  total full sync (plan + render + load): {:?}  [goal < 1 s]",
        plan_time + render_time + load
    );
}
