//! UDP forwarding: one socket per VIP:port and a flow table per listener.
//!
//! A flow is a client address. Its first datagram is checked against the
//! source ranges and assigned a node the same way a TCP connection is (Maglev,
//! round-robin, least-connections, ClientIP affinity); the edge then forwards
//! from a socket connected to that node, so replies come back on it and are
//! sent to the client from the VIP. A flow ends after `udpIdleTimeout` without
//! a datagram either way, when its node is drained, or when the node answers
//! with ICMP port unreachable (a passive health failure).
//!
//! Datagrams are read into a per-thread buffer between readiness and a
//! non-blocking receive and, for a live flow, sent on from there, so neither
//! a listener nor a flow allocates per datagram or keeps a 64 KiB buffer of
//! its own; only a new flow's first datagram (or one meeting a full send
//! buffer) is copied.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::admission::{self, AcceptContext, FlowSlot};
use crate::copy::drain_signal;
use crate::metrics::limit;
use crate::plan::ListenerKey;
use crate::snapshot::Route;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; MAX_DATAGRAM]);
}

struct Flow {
    /// Its share of `maxUdpFlows`, given back when the flow is forgotten.
    _slot: FlowSlot,
    task: JoinHandle<()>,
    upstream: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
    route: Arc<Route>,
}

impl Drop for Flow {
    /// A flow does not outlive its listener: when the listener closes (its
    /// Service port is gone, or the edge stops), its flows end with it, and
    /// with them the last references to the VIP socket.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Milliseconds since `epoch`, for cheap shared "last seen" stamps.
fn millis(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// Serves one UDP listener until the task is aborted.
pub async fn serve(socket: Arc<UdpSocket>, key: ListenerKey, ctx: AcceptContext) {
    let epoch = Instant::now();
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = socket.readable() => {
                if let Err(e) = r {
                    ctx.metrics.listener_errors.with_label_values(&["accept"]).inc();
                    tracing::warn!(listener = %key, error = %e, "UDP listener failed");
                    return;
                }
                // Drain everything queued before waiting again.
                for _ in 0..64 {
                    match receive(&socket, &flows, epoch) {
                        Ok(Received::Forwarded) => {}
                        Ok(Received::Other(client, datagram)) => {
                            forward(&socket, &key, &ctx, &mut flows, epoch, client, &datagram).await;
                        }
                        Ok(Received::Nothing) => break,
                        Err(e) => {
                            tracing::debug!(listener = %key, error = %e, "UDP receive failed");
                            break;
                        }
                    }
                }
            }
            _ = sweep.tick() => {
                flows.retain(|_, f| !f.task.is_finished());
            }
        }
    }
}

/// What [`receive`] did with one datagram.
enum Received {
    /// Nothing was queued.
    Nothing,
    /// It belonged to a live flow and went straight to its node.
    Forwarded,
    /// It needs the asynchronous path (a new flow, or a full send buffer):
    /// the only case that copies the datagram out of the per-thread buffer.
    Other(SocketAddr, Vec<u8>),
}

/// Receives one datagram and, on the common path (a live flow whose socket
/// takes it at once), forwards it without copying or allocating.
fn receive(
    socket: &UdpSocket,
    flows: &HashMap<SocketAddr, Flow>,
    epoch: Instant,
) -> io::Result<Received> {
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let (n, from) = match socket.try_recv_from(&mut buf) {
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Received::Nothing),
            Err(e) => return Err(e),
        };
        let client = crate::sockets::normalize_peer(from);
        if let Some(flow) = flows.get(&client).filter(|f| !f.task.is_finished()) {
            flow.last.store(millis(epoch), Ordering::Relaxed);
            match flow.upstream.try_send(&buf[..n]) {
                Ok(sent) => {
                    flow.route.metrics.bytes_in.inc_by(sent as u64);
                    return Ok(Received::Forwarded);
                }
                // Write readiness not known yet, or the buffer is full: send
                // it asynchronously below.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Dropped, as the network would drop it.
                Err(e) => {
                    tracing::debug!(%client, error = %e, "UDP datagram to node dropped");
                    return Ok(Received::Forwarded);
                }
            }
        }
        Ok(Received::Other(client, buf[..n].to_vec()))
    })
}

async fn forward(
    socket: &Arc<UdpSocket>,
    key: &ListenerKey,
    ctx: &AcceptContext,
    flows: &mut HashMap<SocketAddr, Flow>,
    epoch: Instant,
    client: SocketAddr,
    datagram: &[u8],
) {
    if let Some(flow) = flows.get(&client) {
        if !flow.task.is_finished() {
            flow.last.store(millis(epoch), Ordering::Relaxed);
            send_upstream(&flow.upstream, datagram, &flow.route, client).await;
            return;
        }
        flows.remove(&client);
    }
    let snapshot = ctx.snapshot.load();
    let Some(route) = snapshot.routes.get(key).cloned() else {
        return;
    };
    if admission::check_source(&route, client).is_err() {
        tracing::debug!(%client, listener = %key, "UDP datagram outside the source ranges dropped");
        return;
    }
    // A flow is a socket: at most maxUdpFlows over every listener. Ended
    // flows of this listener give theirs back first.
    let slot = match ctx.limits.flow() {
        Some(slot) => slot,
        None => {
            flows.retain(|_, f| !f.task.is_finished());
            match ctx.limits.flow() {
                Some(slot) => slot,
                None => {
                    route.metrics.failed.inc();
                    ctx.metrics
                        .limit_reached
                        .with_label_values(&[limit::UDP_FLOWS])
                        .inc();
                    tracing::debug!(listener = %key, %client, "maxUdpFlows reached; datagram of a new flow dropped");
                    return;
                }
            }
        }
    };
    // UDP cannot tell a dead node at connect time: take the best choice; an
    // ICMP error later ends the flow and counts against the node.
    let Ok(candidates) = admission::pick(&route, client, 1) else {
        return;
    };
    let idx = candidates[0];
    let backend_addr = route.backends[idx].addr;
    let upstream = match connect_upstream(backend_addr).await {
        Ok(u) => Arc::new(u),
        Err(e) => {
            route.metrics.failed.inc();
            route.reporter.connect_failed(route.backends[idx].health);
            tracing::debug!(backend = %backend_addr, error = %e, "cannot open UDP flow");
            return;
        }
    };
    send_upstream(&upstream, datagram, &route, client).await;
    let last = Arc::new(AtomicU64::new(millis(epoch)));
    let task = tokio::spawn(reply_loop(
        socket.clone(),
        upstream.clone(),
        client,
        route.clone(),
        idx,
        last.clone(),
        epoch,
        snapshot.proxy.udp_idle_timeout,
        ctx.shutdown.clone(),
    ));
    flows.insert(
        client,
        Flow {
            _slot: slot,
            task,
            upstream,
            last,
            route,
        },
    );
}

async fn connect_upstream(backend: SocketAddr) -> io::Result<UdpSocket> {
    let any: IpAddr = if backend.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let upstream = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    upstream.connect(backend).await?;
    Ok(upstream)
}

async fn send_upstream(upstream: &UdpSocket, datagram: &[u8], route: &Route, client: SocketAddr) {
    // `send`, not `try_send`: a new socket's write readiness is only known
    // after the reactor has seen it once. A UDP send never waits for long.
    match upstream.send(datagram).await {
        Ok(n) => route.metrics.bytes_in.inc_by(n as u64),
        Err(e) => tracing::debug!(%client, error = %e, "UDP datagram to node dropped"),
    }
}

/// A datagram for the client, sent at once or kept for an asynchronous send.
enum Sent {
    Now(usize),
    Later(Vec<u8>),
}

#[allow(clippy::too_many_arguments)]
async fn reply_loop(
    listener: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    route: Arc<Route>,
    idx: usize,
    last: Arc<AtomicU64>,
    epoch: Instant,
    idle: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let backend = &route.backends[idx];
    backend.active.fetch_add(1, Ordering::Relaxed);
    route.metrics.active.inc();
    // Counts the flow out however it ends, aborted included.
    let _active = ActiveFlow {
        route: &route,
        backend,
    };
    if let Some(aff) = &route.affinity {
        aff.touch(client.ip(), backend.node.clone());
    }
    let drain = drain_signal(backend.drain.clone());
    let stop = drain_signal(shutdown);
    tokio::pin!(drain, stop);
    loop {
        let quiet =
            Duration::from_millis(millis(epoch).saturating_sub(last.load(Ordering::Relaxed)));
        let Some(left) = idle.checked_sub(quiet).filter(|d| !d.is_zero()) else {
            break;
        };
        tokio::select! {
            r = upstream.readable() => {
                if r.is_err() { break; }
                let result = BUF.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    match upstream.try_recv(&mut buf) {
                        Ok(n) => match listener.try_send_to(&buf[..n], client) {
                            Ok(sent) => Ok(Some(Sent::Now(sent))),
                            // Write readiness not known yet (or the buffer is
                            // full): keep a copy and send it asynchronously.
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                Ok(Some(Sent::Later(buf[..n].to_vec())))
                            }
                            Err(e) => Err(e),
                        },
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                        Err(e) => Err(e),
                    }
                });
                match result {
                    Ok(Some(sent)) => {
                        let n = match sent {
                            Sent::Now(n) => n,
                            Sent::Later(datagram) => match listener.send_to(&datagram, client).await {
                                Ok(n) => n,
                                Err(e) => {
                                    tracing::debug!(%client, error = %e, "UDP answer to client dropped");
                                    0
                                }
                            },
                        };
                        last.store(millis(epoch), Ordering::Relaxed);
                        route.metrics.bytes_out.inc_by(n as u64);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if e.kind() == io::ErrorKind::ConnectionRefused {
                            // ICMP port unreachable from the node.
                            route.reporter.connect_failed(backend.health);
                        }
                        tracing::debug!(%client, backend = %backend.addr, error = %e, "UDP flow ended");
                        break;
                    }
                }
            }
            () = tokio::time::sleep(left) => {}
            () = &mut drain => break,
            () = &mut stop => break,
        }
    }
    if let Some(aff) = &route.affinity {
        aff.touch(client.ip(), backend.node.clone());
    }
}

struct ActiveFlow<'a> {
    route: &'a Route,
    backend: &'a crate::snapshot::Backend,
}

impl Drop for ActiveFlow<'_> {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
        self.route.metrics.active.dec();
    }
}
