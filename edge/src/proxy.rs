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

use futures::StreamExt;
use portico_config::{ProxyProtocol, ProxySettings};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

use crate::admission;
use crate::copy::{copy_bidirectional, drain_signal, CopyObserver, CopyOptions};
use crate::metrics::RouteMetrics;
use crate::plan::ListenerKey;
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

/// Connects to the first of `candidates` (indices into the route's
/// backends, in preference order) that answers; returns the stream and the
/// backend's index.
///
/// Each attempt may take `connect_timeout`; a failed one starts the next at
/// once. An attempt still pending after `connect_attempt_delay` is raced by
/// one to the next candidate (RFC 8305's connection attempt delay), and the
/// first to connect wins, so a node that silently dropped off costs a
/// client the delay instead of the whole timeout. Every failure (error or
/// timeout) is a passive health signal, also of attempts still pending
/// when another won: those run on in the background until they end, and
/// one that connects after all is closed before any byte was sent.
async fn connect_first(
    route: &Arc<Route>,
    candidates: &[usize],
    settings: &ProxySettings,
) -> Option<(TcpStream, usize)> {
    let attempt = |idx: usize| {
        let route = Arc::clone(route);
        let timeout = settings.connect_timeout;
        async move {
            let started = Instant::now();
            let addr = route.backends[idx].addr;
            let result = tokio::time::timeout(timeout, TcpStream::connect(addr)).await;
            let result = match result {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            };
            let elapsed = started.elapsed().as_secs_f64();
            if let Err(error) = &result {
                let backend = &route.backends[idx];
                route.metrics.connect_err.observe(elapsed);
                tracing::debug!(backend = %backend.addr, node = %backend.node, %error, "connect failed");
                route.reporter.connect_failed(backend.health);
            }
            (idx, elapsed, result)
        }
    };
    let race = !settings.connect_attempt_delay.is_zero();
    let mut next = candidates.iter().copied();
    let mut pending = futures::stream::FuturesUnordered::new();
    pending.extend(next.next().map(attempt));
    let delay = tokio::time::sleep(settings.connect_attempt_delay);
    tokio::pin!(delay);
    let won = loop {
        tokio::select! {
            Some((idx, elapsed, result)) = pending.next() => match result {
                Ok(stream) => {
                    route.metrics.connect_ok.observe(elapsed);
                    break Some((stream, idx));
                }
                // A failure hands over at once, whatever the delay.
                Err(_) => match next.next() {
                    Some(idx) => {
                        route.metrics.retries.inc();
                        pending.push(attempt(idx));
                        delay.as_mut().reset(tokio::time::Instant::now() + settings.connect_attempt_delay);
                    }
                    None if pending.is_empty() => break None,
                    None => {}
                },
            },
            () = &mut delay, if race && next.len() > 0 => {
                if let Some(idx) = next.next() {
                    route.metrics.retries.inc();
                    pending.push(attempt(idx));
                }
                delay.as_mut().reset(tokio::time::Instant::now() + settings.connect_attempt_delay);
            }
        }
    };
    if !pending.is_empty() {
        // The losers' outcomes still count as health signals.
        tokio::spawn(async move { while pending.next().await.is_some() {} });
    }
    won
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
        if let Err(refusal) = admission::check_source(&route, peer) {
            tracing::debug!(reason = refusal.reason(), "rejected");
            return ConnectionEnd::Rejected(refusal.reason());
        }
        let tries = settings.connect_retries as usize + 1;
        let candidates = match admission::pick(&route, peer, tries) {
            Ok(candidates) => candidates,
            Err(refusal) => {
                tracing::debug!(reason = refusal.reason(), "rejected");
                return ConnectionEnd::Rejected(refusal.reason());
            }
        };
        let upstream = connect_first(&route, &candidates, settings).await;
        let Some((mut upstream, backend)) = upstream.map(|(s, idx)| (s, &route.backends[idx]))
        else {
            route.metrics.failed.inc();
            tracing::info!(
                tried = candidates.len(),
                "no node reachable; closing client"
            );
            return ConnectionEnd::Failed;
        };
        backend.active.fetch_add(1, Ordering::Relaxed);
        route.metrics.active.inc();
        let _guard = ActiveGuard {
            route: &route,
            backend,
        };
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
        let outcome = copy_bidirectional(
            &mut client,
            &mut upstream,
            &opts,
            stop,
            &Counters(&route.metrics),
        )
        .await;
        tracing::debug!(?outcome, node = %backend.node, "closed");
        if let Some(aff) = &route.affinity {
            aff.touch(peer.ip(), backend.node.clone());
        }
        ConnectionEnd::Proxied(backend.addr)
    }
    .instrument(span)
    .await
}
