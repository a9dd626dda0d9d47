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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};
    use tokio::sync::oneshot;

    use super::*;

    async fn start(limits: ServerLimits) -> (SocketAddr, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" }));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, app, limits, "test", async move {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    async fn get_from(addr: SocketAddr, from: &str) -> std::io::Result<String> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(format!("{from}:0").parse().unwrap())?;
        let mut s = socket.connect(addr).await?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .map_err(|_| std::io::Error::other("no answer"))??;
        Ok(out)
    }

    /// Whether the server closes `s` within `within`.
    async fn closed(s: &mut TcpStream, within: Duration) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(within, s.read_to_end(&mut rest)).await,
            Ok(Ok(_)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn a_client_over_its_share_is_closed_at_once_and_others_are_served() {
        let (addr, _stop) = start(ServerLimits {
            max_connections: 16,
            max_connections_per_client: 2,
            header_timeout: Duration::from_secs(10),
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
            held.push(s);
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut third, Duration::from_secs(2)).await);
        assert!(get_from(addr, "127.0.0.2").await.unwrap().ends_with("ok"));
        // Its share frees as its connections end.
        drop(held);
        let served = async {
            loop {
                if let Ok(answer) = get_from(addr, "127.0.0.1").await {
                    break answer;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let answer = tokio::time::timeout(Duration::from_secs(5), served).await;
        assert!(answer.unwrap().ends_with("ok"));
    }

    #[tokio::test]
    async fn a_header_that_does_not_come_in_time_closes_the_connection() {
        let (addr, _stop) = start(ServerLimits {
            max_connections: 4,
            max_connections_per_client: 4,
            header_timeout: Duration::from_millis(200),
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        assert!(closed(&mut s, Duration::from_secs(3)).await);
    }

    #[tokio::test]
    async fn stopping_lets_go_of_the_address() {
        let (addr, stop) = start(ServerLimits::ADMIN).await;
        assert!(get_from(addr, "127.0.0.1").await.unwrap().ends_with("ok"));
        stop.send(()).unwrap();
        let refused = async {
            while TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), refused)
            .await
            .expect("the listener closes");
    }
}
