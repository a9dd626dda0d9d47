//! Shared helpers for the edge's integration tests: a private loopback subnet
//! per test, stand-in nodes, config builders, and waiting on a condition with
//! a deadline (never a bare sleep).
#![allow(dead_code)] // each test binary uses a different subset

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use portico_config::{
    Algorithm, EdgeConfig, EdgeSettings, Node, Protocol, ProxyProtocol, Service, ServiceKey,
    ServicePort, SessionAffinity, SourceRanges, TrafficPolicy,
};
use portico_edge::standin::{StandInNode, StandInSpec};
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

/// A fresh subnet: 127.(20 + pid % 200).(n).0/24 for the n-th call.
pub fn subnet() -> Subnet {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 255, "too many subnets in one test process");
    Subnet {
        a: 20 + (std::process::id() % 200) as u8,
        b: n as u8,
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
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(addr).await.expect("admin reachable");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
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
