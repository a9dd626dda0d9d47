//! Shared helpers for the edge's integration tests: a private loopback subnet
//! per test, stand-in nodes, config builders, and waiting on a condition with
//! a deadline (never a bare sleep).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use portico_config::{
    Algorithm, EdgeConfig, EdgeSettings, Node, Protocol, ProxyProtocol, Service, ServiceKey,
    ServicePort, SessionAffinity, SourceRanges, TrafficPolicy,
};
use portico_lab::standin::{StandInNode, StandInSpec};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// A /24 inside 127.0.0.0/8 that no other test (in this or another test
/// process) uses, so fixed port numbers (NodePorts, 10256) never collide.
#[derive(Debug, Clone, Copy)]
pub struct Subnet {
    a: u8,
    b: u8,
}

impl Subnet {
    /// The address `127.a.b.host`.
    pub fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.a, self.b, host))
    }

    /// The subnet as a CIDR string.
    pub fn cidr(&self, prefix: u8) -> String {
        format!("127.{}.{}.0/{prefix}", self.a, self.b)
    }
}

/// A fresh subnet, claimed for the life of this test process: the claim is a
/// listening socket on `127.a.b.254:1`, so two test processes running at
/// once (cargo test, nextest) can never pick the same /24. The search starts
/// at a pid-derived offset so processes rarely even try the same one.
pub fn subnet() -> Subnet {
    static CLAIMS: std::sync::Mutex<Vec<std::net::TcpListener>> = std::sync::Mutex::new(Vec::new());
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const SUBNETS: u32 = 230 * 254;
    let start = (std::process::id() % 230) * 254;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SUBNETS, "no free loopback /24 left for tests");
        let i = (start + n) % SUBNETS;
        let net = Subnet {
            a: 20 + (i / 254) as u8,
            b: 1 + (i % 254) as u8,
        };
        if let Ok(claim) = std::net::TcpListener::bind(SocketAddr::new(net.ip(254), 1)) {
            CLAIMS.lock().unwrap_or_else(|p| p.into_inner()).push(claim);
            return net;
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes; panics naming `what`.
pub async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The NodePort every stand-in node serves.
pub const NODE_PORT: u16 = 30080;
/// The health check node port of Local Services.
pub const HC_NODE_PORT: u16 = 32000;
/// kube-proxy's node health port.
pub const KUBE_PROXY_PORT: u16 = 10256;

/// Starts `n` stand-in nodes named node-0.. at subnet hosts 1..=n, serving
/// NODE_PORT, the kube-proxy health port and HC_NODE_PORT.
pub async fn start_nodes(net: Subnet, n: u8, expect_proxy: bool) -> Vec<StandInNode> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let ip = net.ip(i + 1);
        nodes.push(
            StandInNode::start(StandInSpec {
                name: format!("node-{i}"),
                node_ports: vec![SocketAddr::new(ip, NODE_PORT)],
                node_health: Some(SocketAddr::new(ip, KUBE_PROXY_PORT)),
                service_health: vec![SocketAddr::new(ip, HC_NODE_PORT)],
                expect_proxy,
            })
            .await
            .expect("stand-in node binds"),
        );
    }
    nodes
}

/// Settings for tests: fast probes, ephemeral admin/metrics ports.
pub fn fast_settings() -> EdgeSettings {
    let mut s = EdgeSettings::default();
    s.health.interval = Duration::from_millis(100);
    s.health.timeout = Duration::from_millis(100);
    s.health.rise = 2;
    s.health.fall = 2;
    s.proxy.connect_timeout = Duration::from_millis(500);
    s.proxy.drain_timeout = Duration::from_secs(2);
    s.admin_listen = "127.0.0.1:0".parse().unwrap();
    s.metrics_listen = "127.0.0.1:0".parse().unwrap();
    s
}

/// A Cluster Service `default/<name>` on `vip:port` -> NODE_PORT.
pub fn service(name: &str, vip: IpAddr, port: u16) -> Service {
    Service {
        key: ServiceKey::new("default", name),
        vips: vec![vip],
        ports: vec![ServicePort {
            name: "tcp".into(),
            protocol: Protocol::Tcp,
            port,
            node_port: Some(NODE_PORT),
        }],
        external_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        session_affinity: SessionAffinity::None,
        source_ranges: SourceRanges::Any,
        algorithm: Algorithm::Maglev,
        proxy_protocol: ProxyProtocol::Off,
        cluster_check: None,
    }
}

/// Nodes node-0.. at subnet hosts 1..=n.
pub fn nodes(net: Subnet, n: u8) -> Vec<Node> {
    (0..n)
        .map(|i| Node {
            name: format!("node-{i}"),
            addresses: vec![net.ip(i + 1)],
            excluded: vec![],
        })
        .collect()
}

/// A config with `services` over `n` nodes of `net`, fast settings, and the
/// kube-proxy health port set.
pub fn config(net: Subnet, n: u8, services: Vec<Service>) -> EdgeConfig {
    let mut settings = fast_settings();
    settings.health.kube_proxy_port = KUBE_PROXY_PORT;
    EdgeConfig {
        settings,
        services,
        nodes: nodes(net, n),
    }
}

/// Connects to `addr` (from `from`, if given) and reads the stand-in node's
/// first line (`<node> <client>`); the stream is returned for more traffic.
pub async fn hello(
    addr: SocketAddr,
    from: Option<IpAddr>,
) -> std::io::Result<(String, BufReader<TcpStream>)> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    // Say something so the stand-in answers at once instead of waiting to
    // see whether this is HTTP.
    stream.write_all(b"hi\n").await?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no greeting"))??;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without greeting",
        ));
    }
    Ok((line.trim_end().to_string(), reader))
}

/// The node name out of a greeting line.
pub fn node_of(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or("")
}

/// A scrape of `/metrics` at `addr`, as text.
pub async fn scrape(addr: SocketAddr) -> String {
    http_get(addr, "/metrics").await.1
}

/// GET `path` at `addr`; returns (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// `method path` at `addr`, no body; returns (status code, body).
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(addr).await.expect("admin reachable");
    s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("request sent");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("response read");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// The value of a metric line `name{labels}` (labels given as a substring
/// that must appear), summed over matching lines.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Driving the `portico-edge` binary as a child process.
pub mod process;

// ---------------------------------------------------------------------------
// Helpers for the balancing, source range, health, retry, PROXY protocol and
// reload tests.
// ---------------------------------------------------------------------------

/// Polls the async condition `f` until it yields true or `timeout` passes;
/// panics naming `what`. Every round waits at most until the deadline.
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(true) = tokio::time::timeout(left, f()).await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`hello`], but from exactly `local` (address and port), with
/// SO_REUSEADDR so two connections to different destinations can share one
/// source address and port.
pub async fn hello_from_exact(
    addr: SocketAddr,
    local: SocketAddr,
) -> std::io::Result<(String, BufReader<TcpStream>)> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(local)?;
    let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.write_all(b"hi\n").await?;
    let mut reader = BufReader::new(stream);
    let line = read_line_within(&mut reader, Duration::from_secs(5)).await?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without greeting",
        ));
    }
    Ok((line, reader))
}

/// Reads one line (without its line end) within `timeout`; an empty string
/// means end of stream.
pub async fn read_line_within(
    reader: &mut BufReader<TcpStream>,
    timeout: Duration,
) -> std::io::Result<String> {
    let mut line = String::new();
    tokio::time::timeout(timeout, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no line"))??;
    Ok(line.trim_end().to_string())
}

/// Sends `msg` and a line end and returns the next line that comes back
/// (after [`consume_hi`], the stand-in's echo of `msg`). Proves the
/// connection still carries data both ways.
pub async fn echo(reader: &mut BufReader<TcpStream>, msg: &str) -> std::io::Result<String> {
    reader
        .get_mut()
        .write_all(format!("{msg}\n").as_bytes())
        .await?;
    read_line_within(reader, Duration::from_secs(5)).await
}

/// Reads the stand-in's echo of the `hi` [`hello`] sent, so the next line
/// read is the answer to the next message.
pub async fn consume_hi(reader: &mut BufReader<TcpStream>) {
    let hi = read_line_within(reader, Duration::from_secs(5))
        .await
        .expect("echo of hi");
    assert_eq!(hi, "hi", "the stand-in echoes what the client sent");
}

/// Waits until the peer closes `reader`'s connection (end of stream or an
/// error), discarding data; returns false if it is still open after `timeout`.
pub async fn closed_within(reader: &mut BufReader<TcpStream>, timeout: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    // Bounded: at most 10,000 reads, and never past the deadline.
    for _ in 0..10_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, reader.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
    false
}

/// Connects to `addr` (from `from`) expecting the edge to accept the
/// connection and then close it without any node answering: the TCP connect
/// must succeed (a listener is there), and the first read must end in EOF or
/// a reset, not data and not a timeout. Returns what the client saw (`EOF`
/// or the error).
pub async fn expect_no_greeting(addr: SocketAddr, from: Option<IpAddr>) -> String {
    use tokio::io::AsyncReadExt;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .expect("socket");
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0)).expect("bind client");
    }
    let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("the listener on {addr} accepts the connection: {e}"));
    // A write may already fail if the edge reset the connection; the read
    // below tells what happened either way.
    let _ = stream.write_all(b"hi\n").await;
    let mut buf = [0u8; 256];
    let got = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("the edge must close {addr} from {from:?}, not leave it open"));
    match got {
        Ok(0) => "EOF".to_string(),
        Ok(n) => panic!(
            "expected no answer on {addr} from {from:?}, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => e.to_string(),
    }
}

/// The client address field of a greeting (`<node> <client>`).
pub fn client_of(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or("")
}

/// The current route of the listener on `vip` (TCP).
pub fn route_of(
    edge: &portico_edge::edge::Edge,
    vip: SocketAddr,
) -> std::sync::Arc<portico_edge::snapshot::Route> {
    let key = portico_edge::plan::ListenerKey {
        protocol: Protocol::Tcp,
        addr: vip,
    };
    edge.snapshot()
        .routes
        .get(&key)
        .cloned()
        .unwrap_or_else(|| panic!("no route for {vip}"))
}

/// The health of `node` in the route on `vip`: `(probed, healthy)`.
pub fn backend_health(
    edge: &portico_edge::edge::Edge,
    vip: SocketAddr,
    node: &str,
) -> (bool, bool) {
    let route = route_of(edge, vip);
    let b = route
        .backends
        .iter()
        .find(|b| &*b.node == node)
        .unwrap_or_else(|| panic!("no backend {node} on {vip}"));
    (b.status.probed, b.status.healthy)
}

/// True when every backend of every route has been probed at least once.
pub fn all_probed(edge: &portico_edge::edge::Edge) -> bool {
    edge.snapshot()
        .routes
        .values()
        .all(|r| r.backends.iter().all(|b| b.status.probed))
}

/// Connections each stand-in node has accepted on its NodePorts.
pub fn node_connections(nodes: &[StandInNode]) -> Vec<u64> {
    nodes
        .iter()
        .map(|n| n.state.connections.load(Ordering::Relaxed))
        .collect()
}

/// `/status` from the admin API, parsed.
pub async fn admin_status(admin: SocketAddr) -> portico_edge::status::Status {
    let (code, body) = http_get(admin, "/status").await;
    assert_eq!(code, 200, "/status answers: {body}");
    serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/status is a status document: {e}: {body}"))
}

/// Like [`metric`], but `None` when no line matches (to tell a counter that
/// is 0 from one that does not exist).
pub fn metric_opt(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A port on `ip` that was free a moment ago (bound to port 0, then
/// released). Only for addresses without a private /24, such as `::1`.
pub fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}

/// A round-robin Service on `127.a.b.100:8080` over `n` nodes, probed every
/// 100 ms with rise = fall = 2; each probe may take up to 1 s so that a
/// loaded machine does not make a healthy stand-in look down.
pub fn rr_config(net: Subnet, n: u8) -> (EdgeConfig, SocketAddr) {
    let vip = SocketAddr::new(net.ip(100), 8080);
    let mut svc = service("web", vip.ip(), vip.port());
    svc.algorithm = Algorithm::RoundRobin;
    let mut cfg = config(net, n, vec![svc]);
    cfg.settings.health.timeout = Duration::from_secs(1);
    (cfg, vip)
}

/// Opens `count` connections through `vip` (each must succeed, retries
/// included) and counts greetings per node.
pub async fn spread(vip: SocketAddr, count: usize) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..count {
        let (line, _) = hello(vip, None)
            .await
            .unwrap_or_else(|e| panic!("connection {i} must succeed through the VIP: {e}"));
        *seen.entry(node_of(&line).to_string()).or_default() += 1;
    }
    seen
}
