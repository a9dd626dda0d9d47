//! The node agent's sync at scale, split into its parts:
//! - full sync: plan (the incremental [`Planner`] from nothing, plus
//!   assembling the whole ruleset), render (the `nft -f` script) and, as
//!   root with `nft`, the kernel load into a throwaway network namespace,
//!   with the rules/elements installed and the kernel memory (slab) used;
//! - one endpoint added, then removed again, end to end as the agent does
//!   it: reading every object, planner update (only the changed Service is
//!   re-planned), diff script of the change, and the `nft -f` transaction
//!   on the loaded table;
//! - a full resync over the loaded table, and for reference the old way of
//!   a change (plan everything again, diff the two whole rulesets).
//!
//! - reading the cluster: the agent reads every watched object again at each
//!   sync (`kube_source::snapshot_from_objects`), the same Services and
//!   slices as Kubernetes objects;
//! - the datapath cost of the layout: new TCP connections per second from a
//!   client namespace through the loaded node namespace (DNAT to a Service's
//!   endpoints in a backend namespace), with the whole table and with a
//!   table of that one Service, alternated.
//!
//! `cargo bench -p portico-node-agent --bench sync` runs 10,000 Services x
//! 10 endpoints = 100,000 endpoints; `SERVICES` and `ENDPOINTS_PER_SERVICE`
//! override it, `SKIP_KERNEL=1` skips the kernel part. Under `cargo test`
//! (no `--bench` argument) it runs a small scale once as a smoke test.
//! Times are medians of `RUNS` (default 3); the one-endpoint changes are
//! `CHANGES` (default 100) adds and as many removes, each on another
//! Service, reported as median and p99. `RATE_SECONDS` (default 3) is the
//! length of each connection-rate run.
//! `DUMP_SCRIPTS=<dir>` writes the full and the one-endpoint scripts there
//! (`full.nft`, `add.nft`, `remove.nft`) for profiling `nft -f` by hand.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use portico_config::cluster::{
    AddressType, ClusterService, ClusterServicePort, Endpoint, EndpointPort, EndpointSlice,
    ServiceType, TargetPort, DEFAULT_PROXY_NAME,
};
use portico_config::{Node, Protocol, ServiceKey, SessionAffinity, TrafficPolicy};
use portico_node_agent::plan::{plan, PlanOptions, Planner};
use portico_node_agent::render::{render_diff, render_full};
use portico_node_agent::{NftBackend, NftCommand, Ruleset};

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
            load_balancer_class: None,
            ip_families: Vec::new(),
            external_ips: vec![v4(0xcb00_0000 + i)],
            load_balancer_ip: None,
            ingress: Vec::new(),
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
            source_ranges: portico_config::SourceRanges::Any,
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

/// The fixture as the Kubernetes objects the agent's watches hold.
fn kube_objects(
    svcs: &[ClusterService],
    slices: &[EndpointSlice],
) -> (
    Vec<k8s_openapi::api::core::v1::Service>,
    Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
) {
    let services = svcs
        .iter()
        .map(|s| {
            let port = &s.ports[0];
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": s.key.name, "namespace": s.key.namespace,
                    "labels": {"service.kubernetes.io/service-proxy-name": DEFAULT_PROXY_NAME},
                },
                "spec": {
                    "type": "LoadBalancer",
                    "clusterIP": s.cluster_ips[0].to_string(),
                    "clusterIPs": [s.cluster_ips[0].to_string()],
                    "ipFamilies": ["IPv4"],
                    "ipFamilyPolicy": "SingleStack",
                    "externalIPs": s.external_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "ports": [{
                        "name": port.name, "protocol": "TCP", "port": port.port,
                        "targetPort": 8080, "nodePort": port.node_port,
                    }],
                    "externalTrafficPolicy": "Cluster",
                    "internalTrafficPolicy": "Cluster",
                    "sessionAffinity": "None",
                },
            }))
            .expect("a Service")
        })
        .collect();
    let slice_objects = slices
        .iter()
        .map(|sl| {
            let endpoints: Vec<serde_json::Value> = sl
                .endpoints
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "addresses": e.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                        "nodeName": e.node_name,
                    })
                })
                .collect();
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": sl.key.name, "namespace": sl.key.namespace,
                    "labels": {"kubernetes.io/service-name": sl.service.name},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                "endpoints": endpoints,
            }))
            .expect("an EndpointSlice")
        })
        .collect();
    (services, slice_objects)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The 99th percentile (nearest rank).
fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    let rank = (v.len() * 99).div_ceil(100).max(1);
    v[rank - 1]
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
        Netns::named("node")
    }

    /// `pperf-sync-<role>-<pid>`.
    fn named(role: &str) -> Option<Netns> {
        let name = format!("pperf-sync-{role}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Netns(name))
    }

    /// Runs `f` on a thread of its own inside the namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).expect("the namespace");
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                    f()
                })
                .join()
                .expect("namespace thread")
        })
    }

    /// Applies `script` as the agent does: the `nft` program, from inside
    /// the namespace.
    fn nft(&self, script: &str) -> Result<Duration, String> {
        self.run(|| {
            let started = Instant::now();
            NftCommand::new()
                .apply(script)
                .map_err(|e| e.to_string().chars().take(2000).collect::<String>())?;
            Ok(started.elapsed())
        })
    }

    /// `ip -n <ns> <args>`, which must succeed.
    fn ip(&self, args: &str) {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend(args.split_whitespace());
        let out = Command::new("ip").args(&all).output().expect("ip");
        assert!(out.status.success(), "ip {args}: {out:?}");
    }

    fn listed_lines(&self) -> usize {
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

/// Chains, rules and set/map elements of a ruleset.
fn counts(r: &Ruleset) -> (usize, usize, usize) {
    let rules = r.chains.values().map(|c| c.rules.len()).sum();
    let elements = r.sets.values().map(|s| s.elements.len()).sum();
    (r.chains.len(), rules, elements)
}

/// One endpoint change as the agent makes it: planner update, diff script,
/// and (with a namespace) the transaction. Returns the three durations.
fn change(
    planner: &mut Planner,
    svcs: &[ClusterService],
    slices: &[EndpointSlice],
    node: &Node,
    ns: Option<&Netns>,
    dump: Option<(&std::path::Path, &str)>,
) -> (Duration, Duration, Duration) {
    let t = Instant::now();
    let update = planner.update(svcs, slices, node);
    let plan_time = t.elapsed();
    assert_eq!(
        update.replanned(),
        1,
        "only the changed Service is re-planned"
    );
    let t = Instant::now();
    let (before, after) = update.rulesets();
    let script = render_diff(&before, &after).expect("one endpoint changed");
    let diff_time = t.elapsed();
    if let Some((dir, name)) = dump {
        std::fs::write(dir.join(name), &script).expect("write script");
    }
    let apply = ns.map_or(Duration::ZERO, |ns| {
        ns.nft(&script).expect("change applies")
    });
    (plan_time, diff_time, apply)
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
    let changes = if bench_mode {
        env_u32("CHANGES", 100) as usize
    } else {
        3
    };
    let rate_time = if bench_mode {
        Duration::from_secs(u64::from(env_u32("RATE_SECONDS", 3)))
    } else {
        Duration::from_millis(300)
    };
    let (svcs, mut slices) = fixture(services, per);
    let node = Node {
        name: "node-0".into(),
        addresses: vec![v4(0xc0a8_0001)],
        ..Default::default()
    };
    let opts = PlanOptions::default();
    let dump = std::env::var("DUMP_SCRIPTS")
        .ok()
        .map(std::path::PathBuf::from);
    println!(
        "node agent sync: {services} Services x {per} endpoints ({} endpoints)",
        services * per
    );

    // Reading every object, as each sync of the agent does.
    let (objects, slice_objects) = kube_objects(&svcs, &slices);
    let (read_time, (snapshot, problems)) = timed(runs, || {
        portico_node_agent::kube_source::snapshot_from_objects(
            &objects,
            &slice_objects,
            std::iter::empty(),
            &node.name,
        )
    });
    assert!(
        problems.is_empty(),
        "bench objects read cleanly: {:?}",
        problems.first()
    );
    assert_eq!(snapshot.services.len(), svcs.len());
    assert_eq!(snapshot.slices.len(), slices.len());
    println!("  read every object (each sync): {read_time:?}");

    // Full sync: what the agent does at start and at every periodic resync.
    let (plan_time, (mut planner, ruleset)) = timed(runs, || {
        let mut planner = Planner::new(opts.clone());
        planner.update(&svcs, &slices, &node);
        let ruleset = planner.ruleset();
        (planner, ruleset)
    });
    assert!(
        planner.skipped().is_empty(),
        "bench fixture is valid: {:?}",
        planner.skipped().first()
    );
    let (render_time, full) = timed(runs, || render_full(&ruleset));
    let (chains, rules, elements) = counts(&ruleset);
    println!("  full sync: plan        {plan_time:?}");
    println!(
        "  full sync: render      {render_time:?} ({} KiB; {chains} chains, {rules} rules, {elements} set/map elements, {} sets/maps)",
        full.len() / 1024,
        ruleset.sets.len()
    );
    if let Some(dir) = &dump {
        std::fs::write(dir.join("full.nft"), &full).expect("write full.nft");
    }

    let mut kernel = None;
    let skip_kernel = std::env::var("SKIP_KERNEL").is_ok_and(|v| v == "1");
    if !skip_kernel {
        let root = nix::unistd::geteuid().is_root();
        let have_nft = Command::new("nft").arg("--version").output().is_ok();
        if !root || !have_nft {
            let msg = format!("kernel part skipped (root: {root}, nft: {have_nft})");
            assert!(
                std::env::var("CI").as_deref() != Ok("true") || bench_mode,
                "{msg}"
            );
            println!("  {msg}");
        } else if let Some(ns) = Netns::new() {
            let slab_before = slab_kib();
            let load = ns.nft(&full).expect("full ruleset loads");
            let slab_after = slab_kib();
            println!(
                "  full sync: kernel      {load:?} ({} lines in `nft list table`)",
                ns.listed_lines()
            );
            if let (Some(a), Some(b)) = (slab_before, slab_after) {
                println!(
                    "  full sync: slab memory +{} MiB",
                    b.saturating_sub(a) / 1024
                );
            }
            println!(
                "  full sync total (plan + render + kernel): {:?}  [goal < 1 s]",
                plan_time + render_time + load
            );
            kernel = Some(ns);
        } else {
            println!("  kernel part skipped: cannot create a network namespace");
        }
    }

    // One endpoint added to, then removed from, a Service in the middle;
    // a different Service each time.
    let mut adds = (Vec::new(), Vec::new(), Vec::new());
    let mut removes = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..changes {
        let mid = (services as usize / 2 + run) % services as usize;
        let added = Endpoint {
            addresses: vec![v4(0x0aff_0000 + run as u32)],
            ready: true,
            serving: true,
            terminating: false,
            node_name: Some("node-7".into()),
        };
        let dump_to = |name| dump.as_deref().filter(|_| run == 0).map(|d| (d, name));
        slices[mid].endpoints.push(added);
        let (p, d, a) = change(
            &mut planner,
            &svcs,
            &slices,
            &node,
            kernel.as_ref(),
            dump_to("add.nft"),
        );
        adds.0.push(p);
        adds.1.push(d);
        adds.2.push(a);
        slices[mid].endpoints.pop();
        let (p, d, a) = change(
            &mut planner,
            &svcs,
            &slices,
            &node,
            kernel.as_ref(),
            dump_to("remove.nft"),
        );
        removes.0.push(p);
        removes.1.push(d);
        removes.2.push(a);
    }
    for (what, (p, d, a)) in [("add", adds), ("remove", removes)] {
        let totals: Vec<Duration> = p
            .iter()
            .zip(&d)
            .zip(&a)
            .map(|((p, d), a)| read_time + *p + *d + *a)
            .collect();
        let (p, d, a) = (median(p), median(d), median(a));
        // The agent reads every object again before each update.
        println!(
            "  one endpoint {what:<6}: read {read_time:?} + update {p:?} + diff {d:?} + kernel {a:?} = {:?} (median of {changes}); p99 {:?}  [goal p99 < 50 ms]",
            read_time + p + d + a,
            p99(totals)
        );
    }
    // The planner's state matches a plan from nothing.
    assert_eq!(planner.ruleset(), ruleset, "back where it started");

    // For reference: the old way of a change, everything re-planned and the
    // two whole rulesets diffed.
    let mid = (services / 2) as usize;
    let mut changed = slices.clone();
    changed[mid].endpoints[0].addresses = vec![v4(0x0aff_ffff)];
    let (replan_time, replanned) = timed(runs, || plan(&svcs, &changed, &node, &opts));
    let (diff_time, diff) = timed(runs, || render_diff(&ruleset, &replanned.ruleset));
    diff.expect("one endpoint changed");
    println!("  reference, whole re-plan + whole diff: {replan_time:?} + {diff_time:?}");

    if let Some(ns) = &kernel {
        let resync = ns
            .nft(&render_full(&replanned.ruleset))
            .expect("full resync over a loaded table");
        println!("  full resync over the loaded table: kernel {resync:?}");
        // Back to the planned table for the datapath runs.
        ns.nft(&full).expect("the full table again");
        datapath(ns, &svcs, &slices, &node, &opts, &full, rate_time);
    }
}

/// New connections per second through `node` to the ClusterIP of a
/// Service in the middle, with the whole table (`full`) and with a table
/// of that Service alone, alternated twice; prints both medians and their
/// ratio.
fn datapath(
    node: &Netns,
    svcs: &[ClusterService],
    slices: &[EndpointSlice],
    node_obj: &Node,
    opts: &PlanOptions,
    full: &str,
    seconds: Duration,
) {
    let mid = svcs.len() / 2;
    let target = SocketAddr::new(svcs[mid].cluster_ips[0], svcs[mid].ports[0].port);
    let endpoints: Vec<IpAddr> = slices[mid]
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.clone())
        .collect();
    let alone = render_full(&plan(&svcs[mid..=mid], &slices[mid..=mid], node_obj, opts).ruleset);
    let (Some(client), Some(backend)) = (Netns::named("client"), Netns::named("backend")) else {
        println!("  datapath part skipped: cannot create namespaces");
        return;
    };
    wire(node, &client, &backend, &endpoints);
    let server = Server::start(&backend);
    let mut whole = Vec::new();
    let mut one = Vec::new();
    for _ in 0..2 {
        node.nft(full).expect("the whole table");
        whole.push(connection_rate(&client, target, seconds));
        node.nft(&alone).expect("the one-Service table");
        one.push(connection_rate(&client, target, seconds));
    }
    server.stop();
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (whole, one) = (med(whole), med(one));
    assert!(whole > 0.0 && one > 0.0, "connections went through");
    println!(
        "  datapath: new connections/s through the node to {target}: whole table {whole:.0}, one-Service table {one:.0}, ratio {:.2}  [goal >= 0.90]",
        whole / one
    );
}

/// Client -> node -> backend, by veth pairs: the client routes everything
/// to the node, the node forwards the endpoints' addresses to the backend,
/// which holds them and answers through the node.
fn wire(node: &Netns, client: &Netns, backend: &Netns, endpoints: &[IpAddr]) {
    let (c, n, b) = (&client.0, &node.0, &backend.0);
    let run = |line: String| {
        let out = Command::new("ip")
            .args(line.split_whitespace())
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip {line}: {out:?}");
    };
    run(format!(
        "link add c0 netns {c} type veth peer name n0 netns {n}"
    ));
    run(format!(
        "link add b0 netns {b} type veth peer name n1 netns {n}"
    ));
    client.ip("addr add 192.168.90.2/24 dev c0");
    client.ip("link set c0 up");
    client.ip("link set lo up");
    client.ip("route add default via 192.168.90.1");
    node.ip("addr add 192.168.90.1/24 dev n0");
    node.ip("addr add 192.168.91.1/24 dev n1");
    node.ip("link set n0 up");
    node.ip("link set n1 up");
    node.ip("link set lo up");
    backend.ip("addr add 192.168.91.2/24 dev b0");
    backend.ip("link set b0 up");
    backend.ip("link set lo up");
    backend.ip("route add default via 192.168.91.1");
    for ep in endpoints {
        backend.ip(&format!("addr add {ep}/32 dev lo"));
        node.ip(&format!("route add {ep}/32 via 192.168.91.2"));
    }
    node.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
        .expect("forwarding");
}

/// A TCP server on port 8080 of every address of the backend: accepts and
/// closes (a long backlog, so a burst of SYNs is not dropped).
struct Server {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    wake: SocketAddr,
    backend: String,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    fn start(backend: &Netns) -> Server {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{}", backend.0);
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("the namespace");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            socket.set_reuse_address(true).expect("SO_REUSEADDR");
            let any: SocketAddr = "0.0.0.0:8080".parse().expect("address");
            socket.bind(&any.into()).expect("bind 8080");
            socket.listen(4096).expect("listen");
            let listener: std::net::TcpListener = socket.into();
            ready_tx.send(()).expect("ready");
            while !flag.load(Ordering::Relaxed) {
                if let Ok((conn, _)) = listener.accept() {
                    drop(conn);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server up");
        Server {
            stop,
            wake: "127.0.0.1:8080".parse().expect("address"),
            backend: backend.0.clone(),
            thread,
        }
    }

    /// Stops it: the flag, then one connection to wake its `accept`.
    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let path = format!("/run/netns/{}", self.backend);
        let wake = self.wake;
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("the namespace");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let _ = std::net::TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        })
        .join()
        .expect("wake thread");
        self.thread.join().expect("server thread");
    }
}

/// New connections per second from `client` to `target` for `seconds`,
/// one after the other on two threads; each closed at once with a reset
/// (no TIME_WAIT to run out of ports). Every one must succeed.
fn connection_rate(client: &Netns, target: SocketAddr, seconds: Duration) -> f64 {
    let count = std::sync::atomic::AtomicU64::new(0);
    let failed = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                client.run(|| {
                    let deadline = Instant::now() + seconds;
                    while Instant::now() < deadline {
                        let stream = match std::net::TcpStream::connect_timeout(
                            &target,
                            Duration::from_secs(1),
                        ) {
                            Ok(stream) => stream,
                            Err(_) => {
                                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                continue;
                            }
                        };
                        let sock = socket2::SockRef::from(&stream);
                        let _ = sock.set_linger(Some(Duration::ZERO));
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            });
        }
    });
    let failed = failed.into_inner();
    assert_eq!(failed, 0, "{failed} connections to {target} failed");
    count.into_inner() as f64 / seconds.as_secs_f64()
}
