//! The set of listening sockets (TCP listeners and UDP sockets), kept equal
//! to the snapshot's listeners.
//!
//! pingora's `Server` binds a fixed set of listeners before it runs and cannot
//! add or remove one afterwards; a load balancer whose Services come and go
//! needs exactly that, so this module owns listening sockets itself: one
//! accept task per VIP:port, opened and closed one by one so that no other
//! listener and no established connection (each its own task) is disturbed.
//!
//! Each listener's socket is also kept as an `OwnedFd` duplicate, so that a
//! binary upgrade can hand every listening socket to the new process.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admission::AcceptContext;
use crate::plan::ListenerKey;
use crate::sockets::{self, BACKLOG};
use crate::{proxy, udp};
use portico_config::Protocol;

struct OpenListener {
    task: JoinHandle<()>,
    fd: OwnedFd,
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
            let fd = std_socket.as_fd().try_clone_to_owned()?;
            let socket = tokio::net::UdpSocket::from_std(std_socket)?;
            let task = tokio::spawn(udp::serve(socket, key, self.ctx.clone()));
            return Ok(OpenListener { task, fd });
        }
        let std_listener = match inherited {
            Some(fd) => sockets::into_std_listener(fd)?,
            None => sockets::bind_listener(key.addr, BACKLOG)?,
        };
        std_listener.set_nonblocking(true)?;
        let fd = std_listener.as_fd().try_clone_to_owned()?;
        let listener = TcpListener::from_std(std_listener)?;
        let task = tokio::spawn(accept_loop(listener, key, self.ctx.clone()));
        Ok(OpenListener { task, fd })
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
            .map(|(k, l)| (k.to_string(), l.fd.as_fd()))
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

async fn accept_loop(listener: TcpListener, key: ListenerKey, ctx: AcceptContext) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
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
