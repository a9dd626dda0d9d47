//! One client connection, from accept to close.
//!
//! accept -> source check -> pick nodes -> connect (with retry) -> PROXY
//! header -> copy both ways. A client outside the source ranges is closed
//! before any node is contacted.
//!
//! The upstream connect is a plain tokio `TcpStream` rather than pingora's
//! `TransportConnector`: the copy needs the raw socket (for `splice(2)` and
//! for zero per-read overhead), while pingora's `Stream` wraps it in
//! buffering layers and a boxed trait object built for HTTP proxying.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use portico_config::{ProxyProtocol, ProxySettings};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

use crate::copy::{copy_bidirectional, drain_signal, CopyObserver, CopyOptions};
use crate::metrics::RouteMetrics;
use crate::plan::{Access, ListenerKey};
use crate::proxy_protocol;
use crate::snapshot::{Backend, Route};

/// How one connection ended, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The listener's route is gone (the listener is closing).
    NoRoute,
    /// The client is outside the source ranges (or the ranges are invalid).
    Rejected(&'static str),
    /// No node could be connected to.
    Failed,
    /// Proxied to the node at this address; the copy ended.
    Proxied(SocketAddr),
}

struct Counters<'a>(&'a RouteMetrics);

impl CopyObserver for Counters<'_> {
    fn client_to_upstream(&self, n: usize) {
        self.0.bytes_in.inc_by(n as u64);
    }
    fn upstream_to_client(&self, n: usize) {
        self.0.bytes_out.inc_by(n as u64);
    }
}

/// Keeps the active-connection gauges right however the connection ends.
struct ActiveGuard<'a> {
    route: &'a Route,
    backend: &'a Backend,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
        self.route.metrics.active.dec();
    }
}

/// Handles one accepted connection on `listener` with the route current at
/// accept time. `shutdown` ends the copy when the edge stops or hands over.
pub async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    listener: ListenerKey,
    route: Option<Arc<Route>>,
    settings: &ProxySettings,
    shutdown: watch::Receiver<bool>,
) -> ConnectionEnd {
    let Some(route) = route else {
        return ConnectionEnd::NoRoute;
    };
    let span = tracing::debug_span!("conn", %peer, %listener, service = %route.planned.service);
    async move {
        route.metrics.accepted.inc();
        if !route.planned.access.allows(peer.ip()) {
            let reason = match route.planned.access {
                Access::Closed { .. } => {
                    route.metrics.rejected_invalid_range.inc();
                    crate::metrics::reject::INVALID_SOURCE_RANGE
                }
                _ => {
                    route.metrics.rejected_source_range.inc();
                    crate::metrics::reject::SOURCE_RANGE
                }
            };
            tracing::debug!(reason, "rejected");
            return ConnectionEnd::Rejected(reason);
        }
        let tries = settings.connect_retries as usize + 1;
        let candidates = route.candidates(peer, tries);
        if candidates.is_empty() {
            let reason = if route.backends.is_empty() {
                route.metrics.rejected_no_backend.inc();
                crate::metrics::reject::NO_BACKEND
            } else {
                route.metrics.rejected_no_healthy.inc();
                crate::metrics::reject::NO_HEALTHY_BACKEND
            };
            tracing::debug!(reason, "rejected");
            return ConnectionEnd::Rejected(reason);
        }
        let mut upstream = None;
        for (attempt, &idx) in candidates.iter().enumerate() {
            let backend = &route.backends[idx];
            if attempt > 0 {
                route.metrics.retries.inc();
            }
            let started = Instant::now();
            match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(backend.addr)).await {
                Ok(Ok(stream)) => {
                    route.metrics.connect_ok.observe(started.elapsed().as_secs_f64());
                    upstream = Some((stream, backend));
                    break;
                }
                Ok(Err(e)) => {
                    route.metrics.connect_err.observe(started.elapsed().as_secs_f64());
                    tracing::debug!(backend = %backend.addr, node = %backend.node, error = %e, "connect failed");
                    route.reporter.connect_failed(backend.health);
                }
                Err(_) => {
                    route.metrics.connect_err.observe(started.elapsed().as_secs_f64());
                    tracing::debug!(backend = %backend.addr, node = %backend.node, "connect timed out");
                    route.reporter.connect_failed(backend.health);
                }
            }
        }
        let Some((mut upstream, backend)) = upstream else {
            route.metrics.failed.inc();
            tracing::info!(tried = candidates.len(), "no node reachable; closing client");
            return ConnectionEnd::Failed;
        };
        backend.active.fetch_add(1, Ordering::Relaxed);
        route.metrics.active.inc();
        let _guard = ActiveGuard { route: &route, backend };
        if let Some(aff) = &route.affinity {
            aff.touch(peer.ip(), backend.node.clone());
        }
        for s in [&client, &upstream] {
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        }
        if route.planned.proxy_protocol != ProxyProtocol::Off {
            let local = client.local_addr().unwrap_or(listener.addr);
            let mut header = Vec::with_capacity(64);
            match route.planned.proxy_protocol {
                ProxyProtocol::V1 => proxy_protocol::encode_v1(peer, local, &mut header),
                ProxyProtocol::V2 => proxy_protocol::encode_v2(peer, local, &mut header),
                ProxyProtocol::Off => {}
            }
            if let Err(e) = upstream.write_all(&header).await {
                tracing::debug!(error = %e, "cannot send PROXY header");
                return ConnectionEnd::Proxied(backend.addr);
            }
        }
        let drain = backend.drain.clone();
        let stop = async move {
            tokio::select! {
                () = drain_signal(drain) => {}
                () = drain_signal(shutdown) => {}
            }
        };
        // The PROXY header above was written with `write_all` on the same
        // socket, so it is in the send queue before any spliced byte.
        let opts = CopyOptions {
            idle_timeout: Some(settings.idle_timeout),
            splice: settings.splice,
            ..CopyOptions::default()
        };
        let outcome = copy_bidirectional(&mut client, &mut upstream, &opts, stop, &Counters(&route.metrics)).await;
        tracing::debug!(?outcome, node = %backend.node, "closed");
        if let Some(aff) = &route.affinity {
            aff.touch(peer.ip(), backend.node.clone());
        }
        ConnectionEnd::Proxied(backend.addr)
    }
    .instrument(span)
    .await
}
