//! The edge's control plane: one task that owns the plan, the health checker,
//! the listeners and the VIPs, and publishes snapshots to the data path.
//!
//! Every source of configuration (the config file, the Kubernetes watch, the
//! hook API), once merged ([`crate::sources`]), hands a whole [`EdgeConfig`]
//! to [`Edge::apply`]; the data path never knows where it came from.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use portico_config::EdgeConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::admission::{AcceptContext, ClientLimits};
use crate::announce::{PortState, Presence, Readiness, RouteTables};
use crate::budget::Budget;
use crate::health::HealthChecker;
use crate::listeners::ListenerManager;
use crate::metrics::EdgeMetrics;
use crate::plan::{self, Plan};
use crate::snapshot::{port_label, Snapshot, SnapshotBuilder};
use crate::status::{AccessStatus, BackendStatus, ListenerStatus, Status, StatusSource};
use crate::upgrade;
use crate::vip::{AddressOps, VipManager};

/// Errors starting or steering the edge.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The admin or metrics listener could not be opened.
    #[error("cannot listen on {addr} for {what}: {source}")]
    Listen {
        /// Which server.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The control task is gone (the edge is shutting down).
    #[error("the edge is shutting down")]
    Stopped,
    /// Handing listeners to a new process failed.
    #[error("handover failed: {0}")]
    Handover(#[from] upgrade::UpgradeError),
}

/// How the edge is started.
#[derive(Default)]
pub struct EdgeOptions {
    /// Listening sockets handed over by a previous process, keyed by
    /// listener key (`tcp/203.0.113.10:443`, `admin/127.0.0.1:9721`, ...).
    pub inherited: HashMap<String, OwnedFd>,
    /// Puts VIPs on the configured interface; `None` never touches addresses.
    pub address_ops: Option<Arc<dyn AddressOps>>,
    /// When taking over from a previous process, the VIPs it added are
    /// adopted (and removed by this process when no longer used).
    pub adopt_vips: bool,
    /// The metrics to export (sources started before the edge count into
    /// them too); `None` creates a fresh set.
    pub metrics: Option<EdgeMetrics>,
    /// The process's descriptor limit, shared out by [`Budget`] (the caps
    /// on connections and UDP flows); `None`: no limit beyond the default
    /// caps.
    pub descriptors: Option<u64>,
    /// Opens the route table VIPs are announced in (`settings.announce`);
    /// `None` never announces.
    pub route_tables: Option<Arc<dyn RouteTables>>,
}

enum Command {
    Apply(Box<EdgeConfig>, oneshot::Sender<Vec<(String, String)>>),
    Status(oneshot::Sender<Status>),
    Handover(
        PathBuf,
        Vec<(String, OwnedFd)>,
        oneshot::Sender<Result<usize, EdgeError>>,
    ),
    StopAccepting(oneshot::Sender<()>),
    Readiness(oneshot::Sender<Readiness>),
    Drain(bool, oneshot::Sender<Readiness>),
    Withdraw(oneshot::Sender<Duration>),
}

/// A running edge.
pub struct Edge {
    cmd: mpsc::Sender<Command>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: EdgeMetrics,
    admin_addr: SocketAddr,
    metrics_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    tracker: TaskTracker,
    control: JoinHandle<()>,
    servers: Vec<(String, OwnedFd, JoinHandle<()>)>,
}

impl Edge {
    /// Starts the edge on `config`: admin and metrics servers, health checks,
    /// listeners, VIPs. Must be called inside a tokio runtime.
    pub async fn start(config: EdgeConfig, mut opts: EdgeOptions) -> Result<Edge, EdgeError> {
        let metrics = opts.metrics.take().unwrap_or_default();
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let tracker = TaskTracker::new();
        let (cmd_tx, cmd_rx) = mpsc::channel(16);

        let settings = config.settings.clone();
        let mut servers = Vec::new();
        let admin_std = take_or_bind(&mut opts.inherited, "admin", settings.admin_listen)?;
        let admin_addr = admin_std.local_addr().map_err(|source| EdgeError::Listen {
            what: "admin",
            addr: settings.admin_listen,
            source,
        })?;
        let same = settings.metrics_listen == settings.admin_listen;
        let metrics_std = if same {
            None
        } else {
            Some(take_or_bind(
                &mut opts.inherited,
                "metrics",
                settings.metrics_listen,
            )?)
        };
        let metrics_addr = match &metrics_std {
            Some(l) => l.local_addr().map_err(|source| EdgeError::Listen {
                what: "metrics",
                addr: settings.metrics_listen,
                source,
            })?,
            None => admin_addr,
        };
        let handle = Arc::new(StatusHandle {
            cmd: cmd_tx.clone(),
        });
        let state = admin::AdminState {
            metrics: metrics.clone(),
            status: handle.clone(),
            steering: handle,
        };
        servers.push(spawn_server(
            "admin",
            admin_std,
            admin::admin_router(state.clone()),
            settings.admin_listen,
        )?);
        if let Some(l) = metrics_std {
            servers.push(spawn_server(
                "metrics",
                l,
                admin::metrics_router(state),
                settings.metrics_listen,
            )?);
        }

        let (health, health_changed) = HealthChecker::new(settings.health.clone(), metrics.clone());
        let builder = SnapshotBuilder::new(metrics.clone(), health.reporter());
        let descriptors = opts.descriptors.unwrap_or(u64::MAX);
        let limits = ClientLimits::new(0, 0);
        let ctx = AcceptContext {
            snapshot: snapshot.clone(),
            shutdown: shutdown_rx,
            tracker: tracker.clone(),
            metrics: metrics.clone(),
            limits: limits.clone(),
        };
        // The announce device first: the listeners take every other socket.
        let presence = Presence::new(
            opts.route_tables.take(),
            &mut opts.inherited,
            metrics.clone(),
        );
        let listeners = ListenerManager::new(ctx, std::mem::take(&mut opts.inherited));
        let vips = opts.address_ops.map(|ops| {
            let mut m = VipManager::new(ops);
            m.set_adopt(opts.adopt_vips);
            m
        });
        let mut control = Control {
            config: EdgeConfig::default(),
            listen: None,
            plan: Plan::default(),
            builder,
            health,
            listeners,
            vips,
            snapshot: snapshot.clone(),
            metrics: metrics.clone(),
            descriptors,
            limits,
            presence,
        };
        let errors = control.apply(config);
        for (listener, error) in &errors {
            tracing::error!(%listener, %error, "listener not open at start");
        }
        let control = tokio::spawn(control.run(cmd_rx, health_changed));
        Ok(Edge {
            cmd: cmd_tx,
            snapshot,
            metrics,
            admin_addr,
            metrics_addr,
            shutdown_tx,
            tracker,
            control,
            servers,
        })
    }

    /// Applies a new configuration; returns the listeners that could not be
    /// opened (`listener`, `error`).
    pub async fn apply(&self, config: EdgeConfig) -> Result<Vec<(String, String)>, EdgeError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Apply(Box::new(config), tx))
            .await
            .map_err(|_| EdgeError::Stopped)?;
        rx.await.map_err(|_| EdgeError::Stopped)
    }

    /// The current status.
    pub async fn status(&self) -> Result<Status, EdgeError> {
        StatusHandle {
            cmd: self.cmd.clone(),
        }
        .status()
        .await
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The edge's metrics.
    pub fn metrics(&self) -> &EdgeMetrics {
        &self.metrics
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where `/metrics` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Hands every listening socket (service listeners, admin, metrics) to a
    /// new process waiting on `path`, then stops accepting. Established
    /// connections keep running; call [`Edge::shutdown`] to drain them.
    pub async fn handover(&self, path: PathBuf) -> Result<usize, EdgeError> {
        let (tx, rx) = oneshot::channel();
        let mut servers = Vec::new();
        for (key, fd, _) in &self.servers {
            let dup = fd.try_clone().map_err(|e| {
                EdgeError::Handover(upgrade::UpgradeError::Io {
                    context: format!("dup {key}"),
                    source: e,
                })
            })?;
            servers.push((key.clone(), dup));
        }
        self.cmd
            .send(Command::Handover(path, servers, tx))
            .await
            .map_err(|_| EdgeError::Stopped)?;
        let n = rx.await.map_err(|_| EdgeError::Stopped)??;
        for (_, _, task) in &self.servers {
            task.abort();
        }
        Ok(n)
    }

    /// Stops accepting, gives established connections up to the drain
    /// timeout to finish, then ends them; removes the VIPs this edge added.
    /// `/metrics` and `/status` answer until the drain is over.
    pub async fn shutdown(self) {
        // Announced VIPs go first, while the listeners still accept: the
        // routers need a moment to send new connections elsewhere.
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Withdraw(tx)).await.is_ok() {
            if let Ok(grace) = rx.await {
                if !grace.is_zero() {
                    tracing::info!(?grace, "VIPs withdrawn; accepting a little longer");
                    tokio::time::sleep(grace).await;
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::StopAccepting(tx)).await.is_ok() && rx.await.is_err() {
            tracing::warn!("control task ended before it stopped accepting");
        }
        // The admin and metrics servers keep answering while connections
        // drain, so the drain can be watched; they close at the end.
        self.tracker.close();
        let active = self.tracker.len();
        if active > 0 {
            tracing::info!(active, "draining connections");
        }
        // The drain timeout in force now, which a reload may have changed.
        let drain_timeout = self.snapshot.load().proxy.drain_timeout;
        if tokio::time::timeout(drain_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tracker.len(),
                "drain time over; closing remaining connections"
            );
            self.shutdown_tx.send_replace(true);
            if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
                .await
                .is_err()
            {
                tracing::error!(left = self.tracker.len(), "connections did not close");
            }
        }
        for (_, _, task) in &self.servers {
            task.abort();
        }
        drop(self.servers);
        drop(self.cmd);
        if let Err(e) = self.control.await {
            if !e.is_cancelled() {
                tracing::error!(error = %e, "control task failed");
            }
        }
    }
}

/// A handle the admin server asks for status through.
#[derive(Clone)]
struct StatusHandle {
    cmd: mpsc::Sender<Command>,
}

impl StatusHandle {
    /// Asks the control task for the current status.
    async fn status(&self) -> Result<Status, EdgeError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Status(tx))
            .await
            .map_err(|_| EdgeError::Stopped)?;
        rx.await.map_err(|_| EdgeError::Stopped)
    }
}

impl admin::Steering for StatusHandle {
    fn readiness(&self) -> BoxFuture<'static, Option<Readiness>> {
        let cmd = self.cmd.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            cmd.send(Command::Readiness(tx)).await.ok()?;
            rx.await.ok()
        })
    }

    fn set_drained(&self, drained: bool) -> BoxFuture<'static, Option<Readiness>> {
        let cmd = self.cmd.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            cmd.send(Command::Drain(drained, tx)).await.ok()?;
            rx.await.ok()
        })
    }
}

impl StatusSource for StatusHandle {
    fn status(&self) -> BoxFuture<'static, Option<Status>> {
        let handle = self.clone();
        Box::pin(async move { StatusHandle::status(&handle).await.ok() })
    }
}

fn take_or_bind(
    inherited: &mut HashMap<String, OwnedFd>,
    what: &'static str,
    addr: SocketAddr,
) -> Result<std::net::TcpListener, EdgeError> {
    let key = format!("{what}/{addr}");
    let res = match inherited.remove(&key) {
        Some(fd) => crate::sockets::into_std_listener(fd),
        None => std::net::TcpListener::bind(addr),
    };
    let l = res.map_err(|source| EdgeError::Listen { what, addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| EdgeError::Listen { what, addr, source })?;
    Ok(l)
}

fn spawn_server(
    what: &'static str,
    l: std::net::TcpListener,
    router: axum::Router,
    configured: SocketAddr,
) -> Result<(String, OwnedFd, JoinHandle<()>), EdgeError> {
    let err = |source| EdgeError::Listen {
        what,
        addr: configured,
        source,
    };
    let fd = l.as_fd().try_clone_to_owned().map_err(err)?;
    let listener = tokio::net::TcpListener::from_std(l).map_err(err)?;
    // Stopped by aborting the task (at shutdown or after a handover).
    let task = tokio::spawn(portico_serve::serve(
        listener,
        router,
        portico_serve::ServerLimits::ADMIN,
        what,
        std::future::pending(),
    ));
    Ok((format!("{what}/{configured}"), fd, task))
}

struct Control {
    config: EdgeConfig,
    /// The admin and metrics addresses bound at start.
    listen: Option<(SocketAddr, SocketAddr)>,
    plan: Plan,
    builder: SnapshotBuilder,
    health: HealthChecker,
    listeners: ListenerManager,
    vips: Option<VipManager>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: EdgeMetrics,
    /// The process's descriptor limit.
    descriptors: u64,
    /// The caps on connections and UDP flows the data path honours.
    limits: Arc<ClientLimits>,
    /// Readiness, drain, and the announced VIPs.
    presence: Presence,
}

impl Control {
    fn apply(&mut self, config: EdgeConfig) -> Vec<(String, String)> {
        let listen = (config.settings.admin_listen, config.settings.metrics_listen);
        match self.listen {
            None => self.listen = Some(listen),
            Some(bound) if bound != listen => tracing::warn!(
                admin = %bound.0,
                metrics = %bound.1,
                "adminListen/metricsListen changes take effect at the next restart; still serving on the old addresses"
            ),
            Some(_) => {}
        }
        self.set_limits(&config);
        self.presence.configure(config.settings.announce.as_ref());
        let plan = plan::plan(&config);
        for w in &plan.warnings {
            tracing::warn!(service = %w.service, "{}", w.message);
        }
        self.health.set_settings(config.settings.health.clone());
        self.health.set_targets(&plan.targets, &plan.target_nodes);
        self.plan = plan;
        self.config = config;
        self.publish();
        let errors = self.listeners.reconcile(self.plan.routes.keys());
        self.reconcile_vips();
        self.refresh_presence();
        errors
            .into_iter()
            .map(|(k, e)| (k.to_string(), e))
            .collect()
    }

    /// The caps on connections and UDP flows, as the descriptor budget
    /// shares them out for `config` (the sources have checked that it can).
    fn set_limits(&mut self, config: &EdgeConfig) {
        match Budget::derive(self.descriptors, &config.settings.proxy) {
            Ok(budget) => {
                self.limits.resize(
                    budget.max_connections as usize,
                    budget.max_udp_flows as usize,
                );
                self.metrics.set_budget(&budget);
            }
            Err(e) => tracing::error!(error = %e, "connection caps left as they were"),
        }
    }

    fn publish(&mut self) {
        let snap = self
            .builder
            .build(&self.plan, &self.health.view(), &self.config.settings);
        tracing::debug!(
            generation = snap.generation,
            routes = snap.routes.len(),
            "snapshot published"
        );
        self.snapshot.store(Arc::new(snap));
    }

    fn reconcile_vips(&mut self) {
        let Some(vips) = &mut self.vips else { return };
        let wanted: BTreeSet<IpAddr> = self.plan.routes.keys().map(|k| k.addr.ip()).collect();
        let interface = self.config.settings.vip.interface.clone();
        let errors = blocking(|| vips.reconcile(interface.as_deref(), &wanted));
        // Adopting addresses is only right for the ones the previous process
        // held at takeover; from now on, a pre-existing address is someone
        // else's.
        vips.set_adopt(false);
        for e in errors {
            self.metrics.vip_errors.inc();
            tracing::error!(error = %e, "VIP management failed");
        }
    }

    /// Readiness and the announced VIPs, from the published snapshot and
    /// the listeners' state.
    fn refresh_presence(&mut self) {
        let snap = self.snapshot.load();
        let failed = self.listeners.failed();
        let ports = snap
            .routes
            .iter()
            .map(|(key, route)| {
                let state = PortState {
                    vip: key.addr.ip(),
                    open: !failed.contains_key(key),
                    probed: route.backends.iter().all(|b| b.status.probed),
                    healthy: !route.backends.is_empty() && !route.all_down,
                };
                (key.to_string(), state)
            })
            .collect();
        blocking(|| self.presence.refresh(ports));
    }

    fn status(&self) -> Status {
        let snap = self.snapshot.load();
        let errors = self.health.last_errors();
        let failed = self.listeners.failed();
        let mut listeners: Vec<ListenerStatus> = snap
            .routes
            .iter()
            .map(|(key, route)| {
                let p = &route.planned;
                ListenerStatus {
                    listener: key.to_string(),
                    service: p.service.to_string(),
                    port: port_label(p),
                    open: !failed.contains_key(key),
                    error: failed.get(key).cloned(),
                    access: match &p.access {
                        plan::Access::Any => AccessStatus::Any,
                        plan::Access::Ranges(set) => AccessStatus::Ranges { count: set.len() },
                        plan::Access::Closed { reason } => AccessStatus::Closed {
                            reason: reason.to_string(),
                        },
                    },
                    problem: p.problem.as_ref().map(|x| x.to_string()),
                    all_down: route.all_down,
                    backends: route
                        .backends
                        .iter()
                        .map(|b| BackendStatus {
                            node: b.node.to_string(),
                            addr: b.addr.to_string(),
                            check: b.health.to_string(),
                            healthy: b.status.healthy,
                            probed: b.status.probed,
                            weight: b.status.weight,
                            active: b.active.load(std::sync::atomic::Ordering::Relaxed),
                            last_error: errors.get(&b.health).cloned(),
                        })
                        .collect(),
                }
            })
            .collect();
        listeners.sort_by(|a, b| (&a.service, &a.listener).cmp(&(&b.service, &b.listener)));
        Status {
            generation: snap.generation,
            listeners,
        }
    }

    fn handover(
        &mut self,
        path: PathBuf,
        servers: &[(String, BorrowedFd<'_>)],
    ) -> Result<usize, EdgeError> {
        let mut fds = self.listeners.fds();
        fds.extend(servers.iter().map(|(k, fd)| (k.clone(), *fd)));
        if let Some((key, fd)) = self.presence.handover_fd() {
            fds.push((key, fd));
        }
        let n = blocking(|| upgrade::send_listeners(&path, &fds))?;
        tracing::info!(sockets = n, path = %path.display(), "listeners handed over; no longer accepting");
        self.listeners.close_all();
        // The new process owns the VIPs now: forget them without removing.
        if let Some(v) = &mut self.vips {
            v.forget_all();
        }
        self.presence.forget();
        Ok(n)
    }

    async fn run(
        mut self,
        mut cmd: mpsc::Receiver<Command>,
        mut health_changed: watch::Receiver<u64>,
    ) {
        // Listeners that could not be opened are retried every tick;
        // expired affinity entries are swept every fifth.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks: u64 = 0;
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut accepting = true;
        loop {
            tokio::select! {
                c = cmd.recv() => match c {
                    None => break,
                    Some(Command::Apply(config, reply)) => {
                        let errors = if accepting { self.apply(*config) } else { Vec::new() };
                        if reply.send(errors).is_err() {
                            tracing::debug!("apply caller gone");
                        }
                    }
                    Some(Command::Status(reply)) => {
                        if reply.send(self.status()).is_err() {
                            tracing::debug!("status caller gone");
                        }
                    }
                    Some(Command::Handover(path, servers, reply)) => {
                        let borrowed: Vec<(String, BorrowedFd<'_>)> =
                            servers.iter().map(|(k, fd)| (k.clone(), fd.as_fd())).collect();
                        let r = self.handover(path, &borrowed);
                        if r.is_ok() {
                            accepting = false;
                        }
                        if reply.send(r).is_err() {
                            tracing::debug!("handover caller gone");
                        }
                    }
                    Some(Command::Readiness(reply)) => {
                        if reply.send(self.presence.readiness().clone()).is_err() {
                            tracing::debug!("readiness caller gone");
                        }
                    }
                    Some(Command::Drain(drained, reply)) => {
                        self.presence.set_drained(drained);
                        if accepting {
                            self.refresh_presence();
                        }
                        if reply.send(self.presence.readiness().clone()).is_err() {
                            tracing::debug!("drain caller gone");
                        }
                    }
                    Some(Command::Withdraw(reply)) => {
                        let announced = self.presence.stop();
                        if accepting {
                            self.refresh_presence();
                        }
                        let grace = if announced { self.presence.withdraw_grace() } else { Duration::ZERO };
                        if reply.send(grace).is_err() {
                            tracing::debug!("withdraw caller gone");
                        }
                    }
                    Some(Command::StopAccepting(reply)) => {
                        self.listeners.close_all();
                        if let Some(v) = &mut self.vips {
                            for e in blocking(|| v.release_all()) {
                                self.metrics.vip_errors.inc();
                                tracing::error!(error = %e, "cannot remove VIP");
                            }
                        }
                        accepting = false;
                        if reply.send(()).is_err() {
                            tracing::debug!("shutdown caller gone");
                        }
                    }
                },
                r = health_changed.changed() => {
                    if r.is_err() { continue; }
                    if accepting {
                        self.publish();
                        self.refresh_presence();
                    }
                }
                _ = tick.tick() => {
                    ticks += 1;
                    if ticks % 5 == 0 {
                        self.builder.sweep_affinity();
                        if accepting {
                            self.presence.poll_bird();
                        }
                    }
                    if accepting && !self.listeners.failed().is_empty() {
                        self.listeners.reconcile(self.plan.routes.keys());
                    }
                    if accepting {
                        self.refresh_presence();
                    }
                }
            }
        }
    }
}

/// Runs a blocking call (the VIPs' netlink requests, a handover over a unix
/// socket) from the control task without stalling the other tasks of a
/// multi-threaded runtime's worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
