//! The HTTP servers Portico's programs expose (the edge's hook API,
//! `/metrics` and `/status`; the node agent's `/metrics` and kube-proxy's
//! health servers): hyper's HTTP/1 server under limits no client can talk
//! it out of.
//!
//! - a request header must arrive within `header_timeout`, and a kept-alive
//!   connection may idle that long (hyper's `header_read_timeout`);
//! - at most `max_connections` connections at once; more wait in the listen
//!   backlog, so they hold no descriptor of the edge's;
//! - at most `max_connections_per_client` of them from one client address;
//!   more are closed at once, so no one client holds every slot.
//!
//! So a crowd of half-open connections holds a few descriptors of the
//! program and no memory to speak of, and every other client is still
//! served. (The edge counts its servers' descriptors in its own share of
//! its descriptor budget.)

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long the accept loop pauses after an error that is not the
/// connection's own (out of file descriptors, say), as hyper and axum do.
const ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// What a server lets its clients hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_connections_per_client: usize,
    /// How long a request header may take to arrive, and a kept-alive
    /// connection may idle.
    pub header_timeout: Duration,
}

impl ServerLimits {
    /// `/metrics`, `/status`, health checks: a few scrapers, operators and
    /// load balancers.
    pub const ADMIN: ServerLimits = ServerLimits {
        max_connections: 32,
        max_connections_per_client: 8,
        header_timeout: Duration::from_secs(10),
    };
}

/// Serves `app` on `listener` until `stop`: at most
/// [`ServerLimits::max_connections`] connections at once (and
/// [`ServerLimits::max_connections_per_client`] per client address), each an HTTP/1
/// connection with hyper's header read timeout; then stops accepting and
/// lets the connections end (idle ones at once, calls in flight when done).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    what: &'static str,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let clients = Arc::new(Clients::default());
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        // A slot first: with every slot taken, connections wait in the
        // listen backlog (in order) instead of being accepted and starved.
        let slot = tokio::select! {
            _ = &mut stop => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(server = what, error = %e, pause = ?ACCEPT_PAUSE, "cannot accept connections");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        let Some(client) = clients.enter(peer.ip(), limits.max_connections_per_client) else {
            tracing::debug!(server = what, %peer, max = limits.max_connections_per_client, "connection closed: this client holds its share already");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // A header timeout, a client gone, a malformed request.
                tracing::debug!(server = what, %peer, error = %e, "connection ended");
            }
            drop(client);
            drop(slot);
        });
    }
    // Lets go of the address at once (a new process may be waiting for it).
    drop(listener);
    graceful.shutdown().await;
}

/// The connections each client address holds.
#[derive(Default)]
struct Clients {
    held: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// One connection of a client, counted until dropped.
struct ClientConnection {
    clients: Arc<Clients>,
    ip: IpAddr,
}

impl Clients {
    /// Counts a connection of `ip`, unless it holds `max` already.
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientConnection> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = held.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientConnection {
            clients: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let mut held = self
            .clients
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// An accept error about the one connection, not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
