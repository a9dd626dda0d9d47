//! A stand-in for a Kubernetes node on the host itself, for the quick-start
//! demo (`portico-lab stand-in-node`, three of them on loopback) and the
//! edge's tests (in-process, with knobs and counters): it answers on
//! NodePorts and serves kube-proxy's health endpoints, so the edge can be
//! seen balancing without a cluster or namespaces.
//!
//! On a NodePort it answers each connection with one line,
//! `<node> <client address>\n` (or, when the first bytes are an HTTP request,
//! a small HTTP response with that line as body), then echoes what it
//! receives. A PROXY protocol header, when `expect_proxy` is set, is read
//! first (with the pods' reader, [`crate::pod`], not the edge's own code)
//! and its source address is reported as the client; a connection that
//! does not start with one is closed. On the health port it answers like
//! kube-proxy: `/healthz` 200 with
//! `{"lastUpdated":..,"currentTime":..,"nodeEligible":true}` or 503; on a
//! Local Service's health port, any path, 200/503 with the local endpoint
//! count and `X-Load-Balancing-Endpoint-Weight`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::pod::split_proxy_header;

/// A stand-in node failure.
#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    /// A port could not be bound.
    #[error("stand-in node {node}: cannot listen on {addr}: {source}")]
    Bind {
        /// The node.
        node: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The signal handlers could not be installed.
    #[error("stand-in node {node}: cannot install signal handlers: {source}")]
    Signals {
        /// The node.
        node: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Live knobs and counters of a stand-in node.
#[derive(Debug, Default)]
pub struct NodeState {
    /// Whether `/healthz` answers 200 (else 503).
    pub healthy: AtomicBool,
    /// Local endpoints reported on Local health ports (0 = 503).
    pub local_endpoints: AtomicU32,
    /// Connections accepted on NodePorts.
    pub connections: AtomicU64,
    /// Health requests answered.
    pub probes: AtomicU64,
}

/// A running stand-in node.
pub struct StandInNode {
    /// The node's name, sent in every answer.
    pub name: String,
    /// Knobs and counters.
    pub state: Arc<NodeState>,
    /// The PROXY headers received, as decoded source addresses.
    pub proxy_sources: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    tasks: Vec<JoinHandle<()>>,
    /// Addresses actually bound, NodePorts first, then health ports.
    pub bound: Vec<SocketAddr>,
}

/// What a stand-in node serves.
#[derive(Debug, Clone, Default)]
pub struct StandInSpec {
    /// The node's name.
    pub name: String,
    /// NodePorts (service traffic).
    pub node_ports: Vec<SocketAddr>,
    /// kube-proxy node health server (`/healthz`, `/livez`).
    pub node_health: Option<SocketAddr>,
    /// Local Services' health check node ports.
    pub service_health: Vec<SocketAddr>,
    /// Read a PROXY protocol header before answering.
    pub expect_proxy: bool,
}

impl StandInNode {
    /// Binds every port and starts serving. Healthy, 1 local endpoint.
    pub async fn start(spec: StandInSpec) -> Result<StandInNode, StandInError> {
        let bind_err = |addr: &SocketAddr| {
            let (node, addr) = (spec.name.clone(), *addr);
            move |source| StandInError::Bind { node, addr, source }
        };
        let state = Arc::new(NodeState::default());
        state.healthy.store(true, Ordering::Relaxed);
        state.local_endpoints.store(1, Ordering::Relaxed);
        let proxy_sources = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let mut bound = Vec::new();
        let name: Arc<str> = Arc::from(spec.name.as_str());
        for addr in &spec.node_ports {
            let l = TcpListener::bind(addr).await.map_err(bind_err(addr))?;
            bound.push(l.local_addr().map_err(bind_err(addr))?);
            let (name, state, sources) = (name.clone(), state.clone(), proxy_sources.clone());
            let expect_proxy = spec.expect_proxy;
            tasks.push(tokio::spawn(async move {
                while let Ok((s, peer)) = l.accept().await {
                    state.connections.fetch_add(1, Ordering::Relaxed);
                    let (name, sources) = (name.clone(), sources.clone());
                    tokio::spawn(serve_node_port(s, peer, name, expect_proxy, sources));
                }
            }));
        }
        for (addr, local) in spec
            .node_health
            .iter()
            .map(|a| (a, false))
            .chain(spec.service_health.iter().map(|a| (a, true)))
        {
            let l = TcpListener::bind(addr).await.map_err(bind_err(addr))?;
            bound.push(l.local_addr().map_err(bind_err(addr))?);
            let state = state.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    state.probes.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(serve_health(s, state.clone(), local));
                }
            }));
        }
        Ok(StandInNode {
            name: spec.name,
            state,
            proxy_sources,
            tasks,
            bound,
        })
    }

    /// Starts `spec` and serves until SIGTERM or SIGINT (`portico-lab
    /// stand-in-node`).
    pub async fn serve(spec: StandInSpec) -> Result<(), StandInError> {
        use tokio::signal::unix::{signal, SignalKind};
        let signals_err = |source| StandInError::Signals {
            node: spec.name.clone(),
            source,
        };
        let mut term = signal(SignalKind::terminate()).map_err(signals_err)?;
        let mut int = signal(SignalKind::interrupt()).map_err(signals_err)?;
        let node = StandInNode::start(spec).await?;
        tracing::info!(node = %node.name, bound = ?node.bound, "stand-in node serving");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!(node = %node.name, "stopped");
        Ok(())
    }

    /// Stops listening on every port (connections are then refused).
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for StandInNode {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_node_port(
    mut s: TcpStream,
    peer: SocketAddr,
    name: Arc<str>,
    expect_proxy: bool,
    sources: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut client = peer;
    if expect_proxy {
        loop {
            if let (source, Some(rest)) = split_proxy_header(&buf[..filled]) {
                let len = filled - rest.len();
                if len == 0 {
                    // Not a PROXY header, and one was expected.
                    return;
                }
                if let Some(source) = source {
                    client = source;
                    sources
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(source);
                }
                buf.copy_within(len..filled, 0);
                filled -= len;
                break;
            }
            if filled == buf.len() {
                return;
            }
            match s.read(&mut buf[filled..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => filled += n,
            }
        }
    }
    let line = format!("{name} {client}\n");
    // Peek at what the client sent first: an HTTP request gets an HTTP answer
    // (so `curl` works in the demo); anything else gets the bare line.
    if filled == 0 {
        if let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), s.read(&mut buf)).await
        {
            if n == 0 {
                send(&mut s, line.as_bytes()).await;
                return;
            }
            filled = n;
        }
    }
    if buf[..filled].starts_with(b"GET ") || buf[..filled].starts_with(b"HEAD ") {
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{line}",
            line.len()
        );
        send(&mut s, resp.as_bytes()).await;
        return;
    }
    if s.write_all(line.as_bytes()).await.is_err() || s.write_all(&buf[..filled]).await.is_err() {
        return;
    }
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn serve_health(mut s: TcpStream, state: Arc<NodeState>, local: bool) {
    let mut buf = [0u8; 2048];
    let mut filled = 0;
    while !buf[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        if filled == buf.len() {
            return;
        }
    }
    let path = std::str::from_utf8(&buf[..filled])
        .ok()
        .and_then(|t| t.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (code, body, weight) = if local {
        let n = state.local_endpoints.load(Ordering::Relaxed);
        let code = if n > 0 { 200 } else { 503 };
        (
            code,
            format!(
                r#"{{"service":{{"namespace":"default","name":"stand-in"}},"localEndpoints":{n},"serviceProxyHealthy":true}}"#
            ),
            Some(n),
        )
    } else if path == "/healthz" || path == "/livez" {
        let ok = state.healthy.load(Ordering::Relaxed) || path == "/livez";
        (
            if ok { 200 } else { 503 },
            format!(r#"{{"lastUpdated":"{now}","currentTime":"{now}","nodeEligible":{ok}}}"#),
            None,
        )
    } else {
        (404, "404 page not found\n".to_string(), None)
    };
    let reason = match code {
        200 => "OK",
        503 => "Service Unavailable",
        _ => "Not Found",
    };
    let weight = weight
        .map(|w| format!("X-Load-Balancing-Endpoint-Weight: {w}\r\n"))
        .unwrap_or_default();
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n{weight}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    send(&mut s, resp.as_bytes()).await;
}

/// Writes a whole answer; a client that left early is not an error worth more
/// than a debug line for a stand-in.
async fn send(s: &mut TcpStream, bytes: &[u8]) {
    if let Err(e) = s.write_all(bytes).await {
        tracing::debug!(error = %e, "stand-in node: client gone");
    }
}

/// A stand-in node's UDP NodePort: answers each datagram with
/// `<node> <client> <payload>`, so a test sees which node a flow reached and
/// which address the node saw.
pub struct UdpStandIn {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Datagrams received.
    pub datagrams: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl UdpStandIn {
    /// Binds `addr` and starts answering.
    pub async fn start(name: &str, addr: SocketAddr) -> Result<UdpStandIn, StandInError> {
        let bind_err = |source| StandInError::Bind {
            node: name.to_string(),
            addr,
            source,
        };
        let socket = tokio::net::UdpSocket::bind(addr).await.map_err(bind_err)?;
        let addr = socket.local_addr().map_err(bind_err)?;
        let datagrams = Arc::new(AtomicU64::new(0));
        let count = datagrams.clone();
        let name = name.to_string();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                count.fetch_add(1, Ordering::Relaxed);
                let mut answer = format!("{name} {from} ").into_bytes();
                answer.extend_from_slice(&buf[..n]);
                if let Err(e) = socket.send_to(&answer, from).await {
                    tracing::debug!(error = %e, "stand-in node: UDP answer failed");
                }
            }
        });
        Ok(UdpStandIn {
            addr,
            datagrams,
            task,
        })
    }

    /// Stops answering (the port is closed: ICMP port unreachable).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for UdpStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}
