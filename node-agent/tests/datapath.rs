//! Privileged datapath tests: the planned ruleset loaded by [`NftCommand`]
//! into a real "node" network namespace, with real pods and a real client.
//!
//! ```text
//!  client ns               node ns (table inet portico)              pod ns (one per pod)
//!  eth0 192.168.77.2 ── vc 192.168.77.1    br0 10.244.0.1 ──┬── eth0 10.244.0.10 (pod-a)
//!                                                            └── eth0 10.244.0.11 (pod-b)
//!  (and fd00:77::2/::1, fd00:244::1, fd00:244::10/::11 for IPv6)
//! ```
//!
//! Every namespace is created by the test under a name unique to the process
//! and test, and removed by a drop guard (also on panic). The pods run TCP
//! servers (threads whose listening sockets were created inside the pod's
//! namespace) that answer `<pod name> <client address>`. Skips loudly when
//! not root; fails under `CI=true`.

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{shutdown, Shutdown};
use portico_config::cluster::{
    AddressType, ClusterService, EndpointSlice, ServiceType, TargetPort,
};
use portico_config::{Protocol, TrafficPolicy};
use portico_node_agent::{
    plan, render_diff, render_full, NftBackend, NftCommand, PlanOptions, Ruleset, SyncOutcome,
    Syncer,
};
use support::*;

const NODE_IP: &str = "192.168.77.1";
const CLIENT_IP: &str = "192.168.77.2";
const NODE_BRIDGE_IP: &str = "10.244.0.1";
const NODE_IP6: &str = "fd00:77::1";
const CLIENT_IP6: &str = "fd00:77::2";
const NODE_BRIDGE_IP6: &str = "fd00:244::1";
const POD_PORT: u16 = 8080;
/// How long a connection that should succeed or be refused may take.
const QUICK: Duration = Duration::from_secs(2);

/// Runs `f` on a fresh thread that has entered network namespace `ns`:
/// sockets it creates (and programs it starts) live in that namespace.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            let path = format!("/run/netns/{ns}");
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {ns}: {e}"));
            f()
        });
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip` with whitespace-separated arguments; panics with its stderr.
fn ip_cmd(args: &str) {
    run("ip", &args.split_whitespace().collect::<Vec<_>>());
}

/// Namespaces created by one test; removed on drop, also when the test panics.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "cleanup: ip netns del {ns}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("cleanup: ip netns del {ns}: {e}"),
            }
        }
    }
}

/// A pod: its namespace, address and server.
struct Pod {
    name: String,
    addr: IpAddr,
    addr6: IpAddr,
}

impl Lab {
    /// The node, client and pod namespaces, wired as in the module docs.
    fn new(test: &str, pods: &[&str]) -> (Lab, Vec<Pod>) {
        let mut lab = Lab {
            prefix: format!("pt{}-{test}", std::process::id()),
            namespaces: Vec::new(),
        };
        let node = lab.add_ns("node");
        let client = lab.add_ns("client");
        for cmd in [
            format!("-n {node} link add br0 type bridge"),
            format!("-n {node} addr add {NODE_BRIDGE_IP}/24 dev br0"),
            format!("-n {node} addr add {NODE_BRIDGE_IP6}/64 dev br0 nodad"),
            format!("-n {node} link set br0 up"),
            // The node's way out (nobody answers there): without it, traffic
            // to an LB address that found no DNAT is unroutable before any
            // filter hook sees it.
            format!("-n {node} route add default via 10.244.0.254"),
            format!("-n {node} link add vc type veth peer name eth0 netns {client}"),
            format!("-n {node} addr add {NODE_IP}/24 dev vc"),
            format!("-n {node} addr add {NODE_IP6}/64 dev vc nodad"),
            format!("-n {node} link set vc up"),
            format!("-n {client} addr add {CLIENT_IP}/24 dev eth0"),
            format!("-n {client} addr add {CLIENT_IP6}/64 dev eth0 nodad"),
            format!("-n {client} link set eth0 up"),
            format!("-n {client} route add default via {NODE_IP}"),
            format!("-n {client} -6 route add default via {NODE_IP6}"),
            // Forwarding in the node namespace only (the sysctls are per
            // namespace).
            format!("netns exec {node} sysctl -qw net.ipv4.ip_forward=1"),
            format!("netns exec {node} sysctl -qw net.ipv6.conf.all.forwarding=1"),
        ] {
            ip_cmd(&cmd);
        }

        let mut out = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            let ns = lab.add_ns(pod);
            let addr = format!("10.244.0.{}", 10 + i);
            let addr6 = format!("fd00:244::{}", 10 + i);
            for cmd in [
                format!("-n {node} link add vp{i} type veth peer name eth0 netns {ns}"),
                format!("-n {node} link set vp{i} master br0 up"),
                format!("-n {ns} addr add {addr}/24 dev eth0"),
                format!("-n {ns} addr add {addr6}/64 dev eth0 nodad"),
                format!("-n {ns} link set eth0 up"),
                format!("-n {ns} route add default via {NODE_BRIDGE_IP}"),
                format!("-n {ns} -6 route add default via {NODE_BRIDGE_IP6}"),
            ] {
                ip_cmd(&cmd);
            }
            out.push(Pod {
                name: pod.to_string(),
                addr: ip(&addr),
                addr6: ip(&addr6),
            });
        }
        (lab, out)
    }

    fn add_ns(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        ip_cmd(&format!("netns add {name}"));
        self.namespaces.push(name.clone());
        ip_cmd(&format!("-n {name} link set lo up"));
        name
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Loads a script into the node namespace's nftables.
    fn apply(&self, script: &str) {
        let result = in_netns(&self.ns("node"), || NftCommand::new().apply(script));
        if let Err(e) = result {
            panic!("applying to the node namespace failed: {e}\n{script}");
        }
    }

    fn nft(&self) -> impl Fn(&[&str]) -> String + '_ {
        move |args: &[&str]| {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.ns("node"), "nft"])
                .args(args)
                .output()
                .expect("run nft");
            assert!(
                out.status.success(),
                "nft {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }

    /// Starts each pod's TCP and UDP echo-who servers on [`POD_PORT`].
    fn serve(&self, pods: &[Pod]) -> Vec<Server> {
        pods.iter()
            .map(|pod| Server::start(&self.ns(&pod.name), &pod.name))
            .collect()
    }

    /// One TCP connection from the client: the server's answer, or the error.
    fn tcp(&self, to: &str, port: u16, timeout: Duration) -> std::io::Result<String> {
        self.tcp_from("client", to, port, timeout)
    }

    /// One TCP connection from the namespace of `role` (`client`, `node`).
    fn tcp_from(
        &self,
        role: &str,
        to: &str,
        port: u16,
        timeout: Duration,
    ) -> std::io::Result<String> {
        let addr = SocketAddr::new(ip(to), port);
        in_netns(&self.ns(role), || {
            let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
            stream.set_read_timeout(Some(QUICK))?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        })
    }

    /// One UDP request from the client; the answer, or the error.
    fn udp(&self, to: &str, port: u16) -> std::io::Result<String> {
        let addr = SocketAddr::new(ip(to), port);
        in_netns(&self.ns("client"), || {
            let socket = UdpSocket::bind(if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })?;
            socket.set_read_timeout(Some(QUICK))?;
            socket.send_to(b"who", addr)?;
            let mut buf = [0u8; 256];
            let (n, _) = socket.recv_from(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
    }
}

/// A pod's servers; stopped and joined on drop.
struct Server {
    stop: Arc<AtomicBool>,
    /// Handles on the servers' sockets, to wake their blocked threads.
    tcp: TcpListener,
    udp: UdpSocket,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str, name: &str) -> Server {
        let (tcp, udp) = in_netns(ns, || {
            // `[::]` takes IPv4 too (as mapped addresses, printed canonical).
            let tcp = TcpListener::bind(("::", POD_PORT)).expect("bind tcp");
            let udp = UdpSocket::bind(("::", POD_PORT)).expect("bind udp");
            (tcp, udp)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_thread = {
            let (stop, name) = (stop.clone(), name.to_string());
            let tcp = tcp.try_clone().expect("clone listener");
            std::thread::spawn(move || loop {
                let accepted = tcp.accept();
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let (mut stream, peer) = accepted.unwrap_or_else(|e| panic!("{name}: accept: {e}"));
                let answer = format!("{name} {}", peer.ip().to_canonical());
                if let Err(e) = stream.write_all(answer.as_bytes()) {
                    eprintln!("{name}: answering {peer}: {e}");
                }
            })
        };
        let udp_thread = {
            let (stop, name) = (stop.clone(), name.to_string());
            let udp = udp.try_clone().expect("clone socket");
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    let received = udp.recv_from(&mut buf);
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let (_, peer) = received.unwrap_or_else(|e| panic!("{name}: recv: {e}"));
                    let answer = format!("{name} {}", peer.ip().to_canonical());
                    if let Err(e) = udp.send_to(answer.as_bytes(), peer) {
                        eprintln!("{name}: answering {peer}: {e}");
                    }
                }
            })
        };
        Server {
            stop,
            tcp,
            udp,
            threads: vec![tcp_thread, udp_thread],
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // shutdown() wakes the threads blocked in accept/recv. On an
        // unconnected UDP socket Linux wakes the reader but says ENOTCONN.
        for fd in [self.tcp.as_raw_fd(), self.udp.as_raw_fd()] {
            match shutdown(fd, Shutdown::Both) {
                Ok(()) | Err(Errno::ENOTCONN) => {}
                Err(e) => eprintln!("stopping a pod server: shutdown: {e}"),
            }
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                eprintln!("a pod server thread panicked");
            }
        }
    }
}

fn nodeport_service(name: &str, cluster_ip: &str, node_port: u16) -> ClusterService {
    let mut svc = service(name, ServiceType::LoadBalancer, &[cluster_ip]);
    svc.ports = vec![port(
        "http",
        Protocol::Tcp,
        80,
        Some(node_port),
        TargetPort::Name("http".into()),
    )];
    svc
}

fn pod_slice(service: &str, endpoints: Vec<portico_config::cluster::Endpoint>) -> EndpointSlice {
    slice(
        service,
        "a",
        AddressType::IPv4,
        &[
            ("http", Protocol::Tcp, POD_PORT),
            ("dns", Protocol::Udp, POD_PORT),
        ],
        endpoints,
    )
}

fn planned(services: &[ClusterService], slices: &[EndpointSlice]) -> Ruleset {
    let p = plan(
        services,
        slices,
        &node("node-a", NODE_IP),
        &PlanOptions::default(),
    );
    assert_eq!(p.skipped, [], "fixtures are valid");
    p.ruleset
}

/// Connects until every pod in `want` answered (bounded): random choice
/// misses a pod in 64 tries with probability 2^-63. Returns the client
/// addresses the pods saw.
fn reach_all(lab: &Lab, to: &str, port: u16, want: &[&str]) -> Vec<String> {
    let mut seen_pods = std::collections::BTreeSet::new();
    let mut peers = Vec::new();
    for _ in 0..64 {
        let answer = lab
            .tcp(to, port, QUICK)
            .unwrap_or_else(|e| panic!("{to}:{port}: {e}"));
        let (pod, peer) = answer.split_once(' ').expect("answer is `<pod> <peer>`");
        assert!(
            want.contains(&pod),
            "{to}:{port} answered by {pod}, expected one of {want:?}"
        );
        seen_pods.insert(pod.to_string());
        peers.push(peer.to_string());
        if seen_pods.len() == want.len() {
            return peers;
        }
    }
    panic!("{to}:{port}: only {seen_pods:?} answered in 64 connections, expected {want:?}");
}

#[test]
fn cluster_policy_nodeport_and_lb_ip_reach_every_pod_masqueraded() {
    if !privileged("cluster_policy_nodeport_and_lb_ip_reach_every_pod_masqueraded") {
        return;
    }
    let (lab, pods) = Lab::new("cluster", &["pod-a", "pod-b"]);
    let _servers = lab.serve(&pods);
    let mut web = nodeport_service("web", "10.96.0.10", 30080);
    web.external_ips = vec![ip("203.0.113.10")];
    let slices = [pod_slice(
        "web",
        vec![
            ready(&pods[0].addr.to_string(), "node-a"),
            ready(&pods[1].addr.to_string(), "node-b"),
        ],
    )];
    lab.apply(&render_full(&planned(&[web], &slices)));

    for peer in reach_all(&lab, NODE_IP, 30080, &["pod-a", "pod-b"]) {
        assert_eq!(
            peer, NODE_BRIDGE_IP,
            "Cluster policy masquerades to the node"
        );
    }
    for peer in reach_all(&lab, "203.0.113.10", 80, &["pod-a", "pod-b"]) {
        assert_eq!(
            peer, NODE_BRIDGE_IP,
            "Cluster policy masquerades to the node"
        );
    }
}

#[test]
fn local_policy_keeps_the_client_address_and_drops_without_local_endpoint() {
    if !privileged("local_policy_keeps_the_client_address_and_drops_without_local_endpoint") {
        return;
    }
    let (lab, pods) = Lab::new("local", &["pod-a", "pod-b"]);
    let _servers = lab.serve(&pods);
    let mut local = nodeport_service("local", "10.96.0.20", 30081);
    local.external_traffic_policy = TrafficPolicy::Local;
    let mut remote = nodeport_service("remote", "10.96.0.21", 30082);
    remote.external_traffic_policy = TrafficPolicy::Local;
    let slices = [
        pod_slice(
            "local",
            vec![
                ready(&pods[0].addr.to_string(), "node-a"),
                ready(&pods[1].addr.to_string(), "node-b"),
            ],
        ),
        pod_slice("remote", vec![ready(&pods[1].addr.to_string(), "node-b")]),
    ];
    lab.apply(&render_full(&planned(&[local, remote], &slices)));

    // Only the local pod, every time; it sees the real client.
    for _ in 0..8 {
        let answer = lab
            .tcp(NODE_IP, 30081, QUICK)
            .expect("local endpoint answers");
        assert_eq!(answer, format!("pod-a {CLIENT_IP}"));
    }
    // No local endpoint: dropped (a timeout), not refused, not forwarded.
    let started = Instant::now();
    let err = lab
        .tcp(NODE_IP, 30082, Duration::from_millis(700))
        .expect_err("no local endpoint must not answer");
    assert_eq!(
        err.kind(),
        ErrorKind::TimedOut,
        "{err} after {:?}",
        started.elapsed()
    );
}

#[test]
fn no_endpoints_is_refused_at_once() {
    if !privileged("no_endpoints_is_refused_at_once") {
        return;
    }
    let (lab, _pods) = Lab::new("noep", &[]);
    let mut empty = nodeport_service("empty", "10.96.0.30", 30090);
    empty.external_ips = vec![ip("203.0.113.30")];
    lab.apply(&render_full(&planned(&[empty], &[])));
    for (addr, port) in [(NODE_IP, 30090), ("203.0.113.30", 80)] {
        let started = Instant::now();
        let err = lab.tcp(addr, port, QUICK).expect_err("no endpoints");
        assert_eq!(
            err.kind(),
            ErrorKind::ConnectionRefused,
            "{addr}:{port}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}

#[test]
fn full_resync_restores_a_deleted_table_and_diffs_apply() {
    if !privileged("full_resync_restores_a_deleted_table_and_diffs_apply") {
        return;
    }
    let (lab, pods) = Lab::new("resync", &["pod-a", "pod-b"]);
    let _servers = lab.serve(&pods);
    let web = nodeport_service("web", "10.96.0.10", 30080);
    let only = |pod: &Pod| {
        [pod_slice(
            "web",
            vec![ready(&pod.addr.to_string(), "node-a")],
        )]
    };
    let on_a = planned(std::slice::from_ref(&web), &only(&pods[0]));
    let on_b = planned(std::slice::from_ref(&web), &only(&pods[1]));
    let none = planned(&[], &[]);
    let mut syncer = Syncer::new(NftCommand::new());
    let node_ns = lab.ns("node");
    let mut sync = |desired: &Ruleset, full: bool| {
        in_netns(&node_ns, || {
            if full {
                syncer.resync(desired)
            } else {
                syncer.sync(desired)
            }
        })
        .unwrap_or_else(|e| panic!("sync in the node namespace: {e}"))
    };
    let delete_table = || lab.nft()(&["delete", "table", "inet", "portico"]);
    let answer = || lab.tcp(NODE_IP, 30080, QUICK);

    assert_eq!(sync(&on_a, false), SyncOutcome::Full);
    assert_eq!(answer().expect("pod-a"), format!("pod-a {NODE_BRIDGE_IP}"));

    // Someone deletes the table: the syncer cannot know, the periodic full
    // resync repairs it. Without rules nothing on the node listens there.
    delete_table();
    assert_eq!(sync(&on_a, false), SyncOutcome::Unchanged);
    let err = answer().expect_err("no rules");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(sync(&on_a, true), SyncOutcome::Full);
    assert_eq!(answer().expect("pod-a"), format!("pod-a {NODE_BRIDGE_IP}"));
    // A resync over a loaded table is the same single transaction.
    assert_eq!(sync(&on_a, true), SyncOutcome::Full);

    // Incremental: move the endpoint to pod-b.
    assert_eq!(sync(&on_b, false), SyncOutcome::Incremental);
    assert_eq!(answer().expect("pod-b"), format!("pod-b {NODE_BRIDGE_IP}"));
    // A diff against a table that is gone is refused; the syncer recreates it.
    delete_table();
    assert_eq!(sync(&on_a, false), SyncOutcome::FullAfterFailedDiff);
    assert_eq!(answer().expect("pod-a"), format!("pod-a {NODE_BRIDGE_IP}"));
    // The Service goes away.
    assert_eq!(sync(&none, false), SyncOutcome::Incremental);
    let err = answer().expect_err("service gone");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    // What is left in the kernel is exactly a fresh load of the empty plan.
    let after_diffs = normalized_table(&lab);
    assert_eq!(sync(&none, true), SyncOutcome::Full);
    assert_eq!(after_diffs, normalized_table(&lab));
}

#[test]
fn udp_reaches_a_pod() {
    if !privileged("udp_reaches_a_pod") {
        return;
    }
    let (lab, pods) = Lab::new("udp", &["pod-a"]);
    let _servers = lab.serve(&pods);
    let mut dns = service("dns", ServiceType::NodePort, &["10.96.0.53"]);
    dns.ports = vec![port(
        "dns",
        Protocol::Udp,
        53,
        Some(30053),
        TargetPort::Number(POD_PORT),
    )];
    let slices = [pod_slice(
        "dns",
        vec![ready(&pods[0].addr.to_string(), "node-a")],
    )];
    lab.apply(&render_full(&planned(&[dns], &slices)));
    let answer = lab.udp(NODE_IP, 30053).expect("udp answer");
    assert_eq!(answer, format!("pod-a {NODE_BRIDGE_IP}"));
}

#[test]
fn client_ip_affinity_sticks_to_one_pod() {
    if !privileged("client_ip_affinity_sticks_to_one_pod") {
        return;
    }
    let (lab, pods) = Lab::new("affinity", &["pod-a", "pod-b"]);
    let _servers = lab.serve(&pods);
    let mut web = nodeport_service("web", "10.96.0.10", 30080);
    web.session_affinity = affinity(600);
    let slices = [pod_slice(
        "web",
        vec![
            ready(&pods[0].addr.to_string(), "node-a"),
            ready(&pods[1].addr.to_string(), "node-b"),
        ],
    )];
    lab.apply(&render_full(&planned(&[web], &slices)));

    let first = lab.tcp(NODE_IP, 30080, QUICK).expect("first connection");
    // Without affinity, 16 more on the same pod happen with probability 2^-16.
    for _ in 0..16 {
        assert_eq!(lab.tcp(NODE_IP, 30080, QUICK).expect("connection"), first);
    }
    // The client's address is remembered, with a timeout, in the chosen
    // endpoint's set.
    let table = lab.nft()(&["list", "table", "inet", "portico"]);
    assert!(
        table.contains(&format!("elements = {{ {CLIENT_IP} expires ")),
        "no affinity entry for the client:\n{table}"
    );
}

#[test]
fn source_ranges_guard_lb_addresses_but_not_nodeports() {
    if !privileged("source_ranges_guard_lb_addresses_but_not_nodeports") {
        return;
    }
    let (lab, pods) = Lab::new("ranges", &["pod-a"]);
    let _servers = lab.serve(&pods);
    let endpoints = || vec![ready(&pods[0].addr.to_string(), "node-a")];
    let mut allowed = nodeport_service("allowed", "10.96.0.10", 30080);
    allowed.external_ips = vec![ip("203.0.113.10")];
    allowed.source_ranges = vec!["192.168.77.0/24".parse().expect("cidr")];
    let mut denied = nodeport_service("denied", "10.96.0.11", 30081);
    denied.external_ips = vec![ip("203.0.113.11")];
    denied.source_ranges = vec!["198.51.100.0/24".parse().expect("cidr")];
    let mut broken = nodeport_service("broken", "10.96.0.12", 30082);
    broken.external_ips = vec![ip("203.0.113.12")];
    broken.invalid_source_ranges = vec!["10.0.0.0/33".to_string()];
    let services = [allowed, denied, broken];
    let slices = [
        pod_slice("allowed", endpoints()),
        pod_slice("denied", endpoints()),
        pod_slice("broken", endpoints()),
    ];
    let p = plan(
        &services,
        &slices,
        &node("node-a", NODE_IP),
        &PlanOptions::default(),
    );
    assert_eq!(p.skipped.len(), 1, "{:?}", p.skipped);
    lab.apply(&render_full(&p.ruleset));

    let answer = lab
        .tcp("203.0.113.10", 80, QUICK)
        .expect("client inside range");
    assert_eq!(answer, format!("pod-a {NODE_BRIDGE_IP}"));
    for lb in ["203.0.113.11", "203.0.113.12"] {
        let err = lab
            .tcp(lb, 80, Duration::from_millis(700))
            .expect_err("client outside range (or unparsable range) is dropped");
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{lb}: {err}");
    }
    // kube-proxy never applies source ranges to NodePorts.
    for node_port in [30081, 30082] {
        let answer = lab
            .tcp(NODE_IP, node_port, QUICK)
            .expect("NodePort is open");
        assert_eq!(answer, format!("pod-a {NODE_BRIDGE_IP}"));
    }
}

/// The kernel's view of the table, independent of creation order and
/// handles: objects sorted, set elements sorted, rules in order per chain.
fn normalized_table(lab: &Lab) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
    let text = lab.nft()(&["-j", "list", "table", "inet", "portico"]);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("nft -j output is JSON");
    let mut objects = Vec::new();
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in doc["nftables"].as_array().expect("nftables array") {
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let mut body = body.clone();
        if let Some(fields) = body.as_object_mut() {
            fields.remove("handle");
            if let Some(serde_json::Value::Array(elems)) = fields.get_mut("elem") {
                elems.sort_by_key(|e| e.to_string());
            }
        }
        match kind.as_str() {
            "metainfo" => {}
            "rule" => {
                let chain = body["chain"].as_str().expect("rule chain").to_string();
                rules.entry(chain).or_default().push(body.to_string());
            }
            _ => objects.push(format!("{kind} {body}")),
        }
    }
    objects.sort();
    (objects, rules)
}

/// A fixture after typical churn: the first endpoint of every slice gone,
/// the last Service removed, affinity timeouts changed.
fn churned((services, slices): &fixtures::Fixture) -> fixtures::Fixture {
    let mut services = services.clone();
    services.pop();
    for svc in &mut services {
        if let portico_config::SessionAffinity::ClientIp { timeout } = &mut svc.session_affinity {
            *timeout += Duration::from_secs(60);
        }
    }
    let mut slices = slices.clone();
    for slice in &mut slices {
        if !slice.endpoints.is_empty() {
            slice.endpoints.remove(0);
        }
    }
    (services, slices)
}

#[test]
fn every_diff_leaves_the_kernel_as_a_full_load_would() {
    if !privileged("every_diff_leaves_the_kernel_as_a_full_load_would") {
        return;
    }
    let (lab, _pods) = Lab::new("diff", &[]);
    let plan_of = |(services, slices): &fixtures::Fixture| {
        plan(
            services,
            slices,
            &node("node-a", NODE_IP),
            &PlanOptions::default(),
        )
        .ruleset
    };
    let mut states: Vec<(String, Ruleset)> = vec![(
        "empty".to_string(),
        plan(&[], &[], &node("node-a", NODE_IP), &PlanOptions::default()).ruleset,
    )];
    for (name, fixture) in fixtures::all() {
        states.push((name.to_string(), plan_of(&fixture)));
        states.push((format!("{name}+churn"), plan_of(&churned(&fixture))));
    }
    let mut expected = BTreeMap::new();
    for (name, ruleset) in &states {
        lab.apply(&render_full(ruleset));
        expected.insert(name.clone(), normalized_table(&lab));
    }
    let mut checked = 0;
    for (from_name, from) in &states {
        for (to_name, to) in &states {
            lab.apply(&render_full(from));
            match render_diff(from, to) {
                None => assert_eq!(from, to, "{from_name} -> {to_name}: no diff for a change"),
                Some(script) => {
                    let result = in_netns(&lab.ns("node"), || NftCommand::new().apply(&script));
                    if let Err(e) = result {
                        panic!("{from_name} -> {to_name}: the diff is rejected: {e}\n{script}");
                    }
                }
            }
            assert!(
                normalized_table(&lab) == expected[to_name],
                "{from_name} -> {to_name}: the kernel differs from a full load of {to_name}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, states.len() * states.len());
}

#[test]
fn ipv6_nodeports_follow_the_traffic_policies() {
    if !privileged("ipv6_nodeports_follow_the_traffic_policies") {
        return;
    }
    let (lab, pods) = Lab::new("v6", &["pod-a", "pod-b"]);
    let _servers = lab.serve(&pods);
    let mut cluster = nodeport_service("web", "10.96.0.10", 30080);
    cluster.cluster_ips.push(ip("fd00:96::10"));
    let mut local = nodeport_service("local", "10.96.0.20", 30081);
    local.cluster_ips.push(ip("fd00:96::20"));
    local.external_traffic_policy = TrafficPolicy::Local;
    let v6_slice = |service: &str| {
        let mut s = pod_slice(
            service,
            vec![
                ready(&pods[0].addr6.to_string(), "node-a"),
                ready(&pods[1].addr6.to_string(), "node-b"),
            ],
        );
        s.key.name.push_str("-v6");
        s.address_type = AddressType::IPv6;
        s
    };
    let slices = [v6_slice("web"), v6_slice("local")];
    lab.apply(&render_full(&planned(&[cluster, local], &slices)));

    for peer in reach_all(&lab, NODE_IP6, 30080, &["pod-a", "pod-b"]) {
        assert_eq!(
            peer, NODE_BRIDGE_IP6,
            "Cluster policy masquerades to the node"
        );
    }
    for _ in 0..8 {
        let answer = lab
            .tcp(NODE_IP6, 30081, QUICK)
            .expect("local endpoint answers");
        assert_eq!(answer, format!("pod-a {CLIENT_IP6}"));
    }
    // The IPv6 part has no IPv4 endpoints: IPv4 NodePorts reject.
    let err = lab
        .tcp(NODE_IP, 30080, QUICK)
        .expect_err("no IPv4 endpoints");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let answer = lab.udp(NODE_IP6, 30080);
    assert!(
        answer.is_err(),
        "the UDP port of a TCP Service is not forwarded: {answer:?}"
    );
}

#[test]
fn cluster_ips_follow_the_internal_policy_from_outside_and_from_the_node() {
    if !privileged("cluster_ips_follow_the_internal_policy_from_outside_and_from_the_node") {
        return;
    }
    let (lab, pods) = Lab::new("clusterip", &["pod-a", "pod-b"]);
    let _servers = lab.serve(&pods);
    let both = || {
        vec![
            ready(&pods[0].addr.to_string(), "node-a"),
            ready(&pods[1].addr.to_string(), "node-b"),
        ]
    };
    let any = nodeport_service("any", "10.96.0.10", 30080);
    let mut local = nodeport_service("local", "10.96.0.11", 30081);
    local.internal_traffic_policy = TrafficPolicy::Local;
    let mut remote = nodeport_service("remote", "10.96.0.12", 30082);
    remote.internal_traffic_policy = TrafficPolicy::Local;
    let slices = [
        pod_slice("any", both()),
        pod_slice("local", both()),
        pod_slice("remote", vec![ready(&pods[1].addr.to_string(), "node-b")]),
    ];
    lab.apply(&render_full(&planned(&[any, local, remote], &slices)));

    // ClusterIP traffic is not masqueraded (the client routes the service
    // range through the node, as a pod would).
    for peer in reach_all(&lab, "10.96.0.10", 80, &["pod-a", "pod-b"]) {
        assert_eq!(peer, CLIENT_IP);
    }
    for _ in 0..8 {
        let answer = lab.tcp("10.96.0.11", 80, QUICK).expect("local endpoint");
        assert_eq!(answer, format!("pod-a {CLIENT_IP}"));
    }
    let err = lab
        .tcp("10.96.0.12", 80, Duration::from_millis(700))
        .expect_err("internal Local without a local endpoint drops");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    // `internalTrafficPolicy` does not touch the NodePort of the same Service.
    reach_all(&lab, NODE_IP, 30082, &["pod-b"]);

    // From the node itself (nat output hook): ClusterIP and own NodePort.
    let answer = lab
        .tcp_from("node", "10.96.0.11", 80, QUICK)
        .expect("node to ClusterIP");
    assert_eq!(answer, format!("pod-a {NODE_BRIDGE_IP}"));
    let answer = lab
        .tcp_from("node", NODE_IP, 30081, QUICK)
        .expect("node to its own NodePort");
    assert!(
        answer == format!("pod-a {NODE_BRIDGE_IP}") || answer == format!("pod-b {NODE_BRIDGE_IP}"),
        "{answer}"
    );
}
