//! The set of listening sockets (TCP listeners and UDP sockets), kept equal
//! to the snapshot's listeners.
//!
//! pingora's `Server` binds a fixed set of listeners before it runs and cannot
//! add or remove one afterwards; a load balancer whose Services come and go
//! needs exactly that, so this module owns listening sockets itself: one
//! accept task per VIP:port, opened and closed one by one so that no other
//! listener and no established connection (each its own task) is disturbed.
//!
//! Each listener's socket is shared (`Arc`) between its accept task and
//! this manager, so that a binary upgrade can hand every listening socket
//! to the new process without a duplicate descriptor per listener.
//!
//! A connection is served only with a slot of
//! [`crate::admission::ClientLimits`]: a listener that accepts one while
//! every slot is taken waits with it until a slot frees, and the clients
//! after it wait in its backlog.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admission::AcceptContext;
use crate::metrics::limit;
use crate::plan::ListenerKey;
use crate::sockets::{self, BACKLOG};
use crate::{proxy, udp};
use portico_config::Protocol;

/// A listening socket, shared with its task.
enum Socket {
    Tcp(Arc<TcpListener>),
    Udp(Arc<tokio::net::UdpSocket>),
}

impl Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Udp(s) => s.as_fd(),
        }
    }
}

struct OpenListener {
    task: JoinHandle<()>,
    socket: Socket,
}

/// Opens, keeps and closes the listening sockets.
pub struct ListenerManager {
    ctx: AcceptContext,
    open: HashMap<ListenerKey, OpenListener>,
    /// Sockets received from the previous process, not yet claimed.
    inherited: HashMap<String, OwnedFd>,
    /// Listeners that could not be opened, with the error, retried later.
    failed: HashMap<ListenerKey, String>,
}

impl ListenerManager {
    /// A manager with no listener open; `inherited` are sockets handed over
    /// by a previous process, keyed as [`ListenerKey`]'s `Display`.
    pub fn new(ctx: AcceptContext, inherited: HashMap<String, OwnedFd>) -> Self {
        ListenerManager {
            ctx,
            open: HashMap::new(),
            inherited,
            failed: HashMap::new(),
        }
    }

    /// Makes the open set equal to `wanted`: opens what is missing (taking an
    /// inherited socket when there is one), closes what is no longer wanted.
    /// Returns the listeners that could not be opened, with why.
    pub fn reconcile<'a>(
        &mut self,
        wanted: impl IntoIterator<Item = &'a ListenerKey>,
    ) -> Vec<(ListenerKey, String)> {
        let wanted: std::collections::HashSet<ListenerKey> = wanted.into_iter().copied().collect();
        self.open.retain(|key, l| {
            if wanted.contains(key) {
                return true;
            }
            l.task.abort();
            tracing::info!(listener = %key, "listener closed");
            false
        });
        self.failed.retain(|k, _| wanted.contains(k));
        let mut errors = Vec::new();
        for key in &wanted {
            if self.open.contains_key(key) {
                continue;
            }
            match self.open_one(*key) {
                Ok(l) => {
                    tracing::info!(listener = %key, "listener open");
                    self.failed.remove(key);
                    self.open.insert(*key, l);
                }
                Err(e) => {
                    self.ctx
                        .metrics
                        .listener_errors
                        .with_label_values(&["bind"])
                        .inc();
                    let msg = e.to_string();
                    if self.failed.insert(*key, msg.clone()).as_deref() != Some(msg.as_str()) {
                        tracing::error!(listener = %key, error = %msg, "cannot open listener");
                    }
                    errors.push((*key, msg));
                }
            }
        }
        // Inherited sockets nobody claimed would hold connections no one
        // accepts: close them.
        for (key, _) in self.inherited.drain() {
            tracing::info!(listener = %key, "closing inherited listener not in the configuration");
        }
        self.ctx.metrics.listeners.set(self.open.len() as i64);
        errors
    }

    fn open_one(&mut self, key: ListenerKey) -> io::Result<OpenListener> {
        let inherited = self.inherited.remove(&key.to_string());
        if inherited.is_some() {
            tracing::info!(listener = %key, "taking over inherited listener");
        }
        if key.protocol == Protocol::Udp {
            let std_socket = match inherited {
                Some(fd) => sockets::into_std_udp(fd)?,
                None => sockets::bind_udp(key.addr)?,
            };
            let socket = Arc::new(tokio::net::UdpSocket::from_std(std_socket)?);
            let task = tokio::spawn(udp::serve(socket.clone(), key, self.ctx.clone()));
            return Ok(OpenListener {
                task,
                socket: Socket::Udp(socket),
            });
        }
        let std_listener = match inherited {
            Some(fd) => sockets::into_std_listener(fd)?,
            None => sockets::bind_listener(key.addr, BACKLOG)?,
        };
        std_listener.set_nonblocking(true)?;
        let listener = Arc::new(TcpListener::from_std(std_listener)?);
        let task = tokio::spawn(accept_loop(listener.clone(), key, self.ctx.clone()));
        Ok(OpenListener {
            task,
            socket: Socket::Tcp(listener),
        })
    }

    /// The listeners that could not be opened, with why.
    pub fn failed(&self) -> &HashMap<ListenerKey, String> {
        &self.failed
    }

    /// Number of open listeners.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no listener is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The sockets to hand to a new process, keyed as on the receiving side.
    pub fn fds(&self) -> Vec<(String, BorrowedFd<'_>)> {
        self.open
            .iter()
            .map(|(k, l)| (k.to_string(), l.socket.as_fd()))
            .collect()
    }

    /// Stops accepting on every listener and closes them. Established
    /// connections are not touched.
    pub fn close_all(&mut self) {
        for (_, l) in self.open.drain() {
            l.task.abort();
        }
        self.ctx.metrics.listeners.set(0);
    }
}

impl Drop for ListenerManager {
    fn drop(&mut self) {
        self.close_all();
    }
}

async fn accept_loop(listener: Arc<TcpListener>, key: ListenerKey, ctx: AcceptContext) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Every slot taken: wait with this connection until one
                // frees; the clients after it wait in the backlog.
                let slot = match ctx.limits.connection() {
                    Ok(slot) => slot,
                    Err(wait) => {
                        ctx.metrics
                            .limit_reached
                            .with_label_values(&[limit::CONNECTIONS])
                            .inc();
                        tracing::debug!(listener = %key, max = ctx.limits.max_connections(), "every connection slot is taken; waiting for one");
                        wait.await
                    }
                };
                let snapshot = ctx.snapshot.load();
                let route = snapshot.routes.get(&key).cloned();
                let settings = snapshot.proxy.clone();
                let shutdown = ctx.shutdown.clone();
                ctx.tracker.spawn(async move {
                    proxy::handle(
                        stream,
                        sockets::normalize_peer(peer),
                        key,
                        route,
                        &settings,
                        shutdown,
                    )
                    .await;
                    drop(slot);
                });
            }
            Err(e) => {
                ctx.metrics
                    .listener_errors
                    .with_label_values(&["accept"])
                    .inc();
                tracing::warn!(listener = %key, error = %e, "accept failed");
                // Out of file descriptors or memory: accepting again at once
                // would spin; back off briefly and let connections close.
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
