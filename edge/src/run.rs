//! The edge process: config file source, signals, reload and binary upgrade.
//!
//! pingora's `Server` runs a fixed set of services with its own signal
//! handling, and its listener handover (`Fds`) carries at most 32 sockets with
//! 2 KiB of names. Portico's listeners change at run time and number in the
//! thousands, so the lifecycle is ours, keeping pingora's upgrade protocol
//! shape: the new process starts with `--takeover` and waits on the upgrade
//! socket; `SIGQUIT` to the old process makes it send every listening socket
//! there, stop accepting, drain, and exit.
//!
//! Signals: `SIGHUP` re-reads the config file (so does any change of its
//! content, polled, because a ConfigMap update swaps a symlink that inotify on
//! the file would miss); `SIGTERM`/`SIGINT` drain and exit; `SIGQUIT` hands
//! over and exits.
//!
//! Sources: the config file, then the Kubernetes watch (`settings.kubernetes`),
//! then the cloud-provider hook API (`settings.hookApi`), merged in that order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portico_config::{parse_edge_config, ConfigErrors, EdgeConfig};
use tokio::signal::unix::{signal, SignalKind};

use crate::cluster::{ClusterModel, ClusterSource};
use crate::edge::{Edge, EdgeError, EdgeOptions};
use crate::hook::{HookError, HookModel, HookSource};
use crate::metrics::EdgeMetrics;
use crate::sources::{merge, Contribution};
use crate::upgrade;
use crate::vip::IpCommand;

/// How long the edge waits for the cluster's first lists before it starts
/// without them.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(10);

/// The example configuration, embedded so `portico-edge run` works with no file.
pub const EMBEDDED_CONFIG: &str = include_str!("../../config/examples/edge.yaml");

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file, watched for changes.
    File(PathBuf),
    /// The embedded example.
    Embedded,
}

/// Options of `portico-edge run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The configuration.
    pub source: ConfigSource,
    /// The unix socket listeners are handed over through.
    pub upgrade_socket: PathBuf,
    /// Take the listeners over from a running edge before starting.
    pub takeover: bool,
    /// How long to wait for the old process to send its listeners.
    pub takeover_timeout: Duration,
    /// How often the config file is checked for changes.
    pub watch_interval: Duration,
}

/// Why the process failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is invalid.
    #[error("{path} is invalid:\n{errors}")]
    Invalid {
        /// The file.
        path: String,
        /// Every error.
        errors: ConfigErrors,
    },
    /// The edge could not start.
    #[error(transparent)]
    Edge(#[from] EdgeError),
    /// Listeners could not be taken over.
    #[error("cannot take over listeners: {0}")]
    Takeover(#[from] upgrade::UpgradeError),
    /// The upgrade socket's directory could not be created.
    #[error("cannot create {path} for the upgrade socket: {source}")]
    UpgradeDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Kubernetes client could not be set up.
    #[error("{0}")]
    Kubernetes(String),
    /// A signal handler could not be installed.
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    /// The hook API could not start.
    #[error(transparent)]
    Hook(#[from] HookError),
}

impl RunError {
    /// The process exit code: 64 (`EX_USAGE`) for a bad configuration, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Invalid { .. } | RunError::Read { .. } | RunError::Kubernetes(_) => 64,
            RunError::Hook(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// Reads and validates the configuration.
pub fn load(source: &ConfigSource) -> Result<(EdgeConfig, String), RunError> {
    let (name, text) = match source {
        ConfigSource::Embedded => (
            "<embedded example>".to_string(),
            EMBEDDED_CONFIG.to_string(),
        ),
        ConfigSource::File(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path).map_err(|source| RunError::Read {
                path: path.clone(),
                source,
            })?,
        ),
    };
    let config =
        parse_edge_config(&text).map_err(|errors| RunError::Invalid { path: name, errors })?;
    Ok((config, text))
}

/// Runs the edge until it is told to stop.
pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    let (config, mut applied_text) = load(&opts.source)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(RunError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut sigquit = signal(SignalKind::quit()).map_err(RunError::Signal)?;

    let mut edge_opts = EdgeOptions {
        address_ops: Some(Arc::new(IpCommand::new())),
        ..Default::default()
    };
    if opts.takeover {
        let path = opts.upgrade_socket.clone();
        let timeout = opts.takeover_timeout;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| RunError::UpgradeDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        tracing::info!(path = %path.display(), "waiting for the running edge to hand over its listeners (send it SIGQUIT)");
        let fds = tokio::task::spawn_blocking(move || upgrade::receive_listeners(&path, timeout))
            .await
            .map_err(|e| {
                RunError::Takeover(upgrade::UpgradeError::Io {
                    context: "takeover task".into(),
                    source: std::io::Error::other(e),
                })
            })??;
        tracing::info!(sockets = fds.len(), "listeners received");
        edge_opts.inherited = fds.into_iter().collect();
        edge_opts.adopt_vips = true;
    }
    let mut file_config = config;
    let metrics = EdgeMetrics::new();
    edge_opts.metrics = Some(metrics.clone());
    let hook = match &file_config.settings.hook_api {
        None => None,
        Some(h) => {
            // During an upgrade the old process holds the address until it
            // has handed over; wait for it as long as for the handover.
            let bind_wait = if opts.takeover {
                opts.takeover_timeout
            } else {
                Duration::ZERO
            };
            Some(
                HookSource::start(
                    h,
                    file_config.settings.address_pools.clone(),
                    metrics.clone(),
                    bind_wait,
                )
                .await?,
            )
        }
    };
    let mut hook_model = hook.as_ref().map(|h| h.model());
    let cluster = match &file_config.settings.kubernetes {
        None => None,
        Some(k) => {
            let client = crate::cluster::watch::client(k.kubeconfig.as_deref())
                .await
                .map_err(RunError::Kubernetes)?;
            tracing::info!(class = %k.load_balancer_class, default_class = k.default_class, "watching the cluster for LoadBalancer Services");
            Some(ClusterSource::start(
                client,
                k.clone(),
                file_config.settings.address_pools.clone(),
                metrics,
            ))
        }
    };
    let mut cluster_model = cluster.as_ref().map(|c| c.model());
    if let Some(rx) = cluster_model.as_mut() {
        // Start with the cluster's Services when the API server answers
        // soon (after an upgrade, the handed-over listeners are only kept
        // if the first configuration has them); else start without them.
        let first = tokio::time::timeout(FIRST_LIST_WAIT, rx.wait_for(|m| m.is_some())).await;
        if first.is_err() {
            tracing::warn!(waited = ?FIRST_LIST_WAIT, "the API server has not answered; starting with the config file's Services only");
        }
    }
    let (config, warnings) = merged(&file_config, cluster_model.as_ref(), hook_model.as_ref());
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let edge = Edge::start(config, edge_opts).await?;
    tracing::info!(admin = %edge.admin_addr(), metrics = %edge.metrics_addr(), "edge running");

    let mut poll = tokio::time::interval(opts.watch_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading");
                if let Some(new) = reload(&edge, &opts.source, &mut applied_text, true) {
                    file_config = accept_reload(&file_config, new, cluster.as_ref(), hook.as_ref());
                    apply_merged(&edge, &file_config, cluster_model.as_ref(), hook_model.as_ref(), true).await;
                }
            }
            _ = poll.tick() => {
                if let Some(c) = &cluster {
                    // Services with no healthy node get an Event.
                    c.set_unhealthy(edge.snapshot().unhealthy_services());
                }
                if let ConfigSource::File(_) = opts.source {
                    if let Some(new) = reload(&edge, &opts.source, &mut applied_text, false) {
                        file_config = accept_reload(&file_config, new, cluster.as_ref(), hook.as_ref());
                        apply_merged(&edge, &file_config, cluster_model.as_ref(), hook_model.as_ref(), true).await;
                    }
                }
            }
            Some(()) = changed(cluster_model.as_mut()) => {
                apply_merged(&edge, &file_config, cluster_model.as_ref(), hook_model.as_ref(), false).await;
            }
            Some(()) = changed(hook_model.as_mut()) => {
                apply_merged(&edge, &file_config, cluster_model.as_ref(), hook_model.as_ref(), false).await;
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: draining and stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: draining and stopping"); break; }
            _ = sigquit.recv() => {
                tracing::info!(path = %opts.upgrade_socket.display(), "SIGQUIT: handing listeners to the new process");
                match edge.handover(opts.upgrade_socket.clone()).await {
                    Ok(n) => { tracing::info!(sockets = n, "handover done; draining"); break; }
                    Err(e) => tracing::error!(error = %e, "handover failed; still serving"),
                }
            }
        }
    }
    if let Some(h) = hook {
        h.stop().await;
    }
    if let Some(c) = cluster {
        c.stop();
    }
    edge.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for a source's model to change; never resolves without the
/// source (or once it has stopped).
async fn changed<T>(model: Option<&mut tokio::sync::watch::Receiver<T>>) -> Option<()> {
    match model {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

type ClusterModelRx = tokio::sync::watch::Receiver<Option<Arc<ClusterModel>>>;
type HookModelRx = tokio::sync::watch::Receiver<Arc<HookModel>>;

/// Takes a reloaded file's configuration: new address pools go to the
/// cluster source and the hook API; a changed `kubernetes` or `hookApi`
/// section needs a restart.
fn accept_reload(
    old: &EdgeConfig,
    new: EdgeConfig,
    cluster: Option<&ClusterSource>,
    hook: Option<&HookSource>,
) -> EdgeConfig {
    if new.settings.kubernetes != old.settings.kubernetes {
        tracing::warn!("settings.kubernetes changed: it takes effect at the next restart");
    }
    if new.settings.hook_api != old.settings.hook_api {
        tracing::warn!("settings.hookApi changed: it takes effect at the next restart");
    }
    if let Some(c) = cluster {
        c.set_pools(new.settings.address_pools.clone());
    }
    if let Some(h) = hook {
        h.set_pools(new.settings.address_pools.clone());
    }
    new
}

/// Applies the file's configuration merged with the cluster's and the
/// hook API's models.
async fn apply_merged(
    edge: &Edge,
    file: &EdgeConfig,
    cluster: Option<&ClusterModelRx>,
    hook: Option<&HookModelRx>,
    reload: bool,
) {
    let (config, warnings) = merged(file, cluster, hook);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    match edge.apply(config).await {
        Ok(errors) => {
            if reload {
                record(edge.metrics(), true);
                tracing::info!("configuration reloaded");
            }
            for (listener, error) in &errors {
                tracing::error!(%listener, %error, "listener could not be opened");
            }
        }
        Err(e) => tracing::error!(error = %e, "configuration not applied"),
    }
}

/// The file's configuration merged with the cluster's model and then the
/// hook API's, and the warnings about what was left out.
fn merged(
    file: &EdgeConfig,
    cluster: Option<&ClusterModelRx>,
    hook: Option<&HookModelRx>,
) -> (EdgeConfig, Vec<String>) {
    let model = cluster.and_then(|rx| rx.borrow().clone());
    let hook_model = hook.map(|rx| rx.borrow().clone());
    let contributions: Vec<Contribution<'_>> = model
        .iter()
        .map(|m| Contribution {
            source: "kubernetes",
            services: &m.services,
            nodes: &m.nodes,
        })
        .chain(hook_model.iter().map(|m| Contribution {
            source: "the hook API",
            services: &m.services,
            nodes: &m.nodes,
        }))
        .collect();
    merge(file, &contributions)
}

/// Re-reads the file; returns its configuration when its content changed
/// (or `force`) and it is valid.
fn reload(
    edge: &Edge,
    source: &ConfigSource,
    applied_text: &mut String,
    force: bool,
) -> Option<EdgeConfig> {
    let ConfigSource::File(path) = source else {
        return None;
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            if force {
                record(edge.metrics(), false);
                tracing::error!(path = %path.display(), error = %e, "reload failed: cannot read the file; keeping the current configuration");
            }
            return None;
        }
    };
    if !force && text == *applied_text {
        return None;
    }
    // Remember the attempt, valid or not, so an invalid file is reported once
    // rather than at every poll.
    *applied_text = text.clone();
    match parse_edge_config(&text) {
        Ok(config) => Some(config),
        Err(errors) => {
            record(edge.metrics(), false);
            for e in errors.errors() {
                tracing::error!(path = %path.display(), error = %e, "invalid configuration");
            }
            tracing::error!(path = %path.display(), count = errors.errors().len(), "reload rejected; keeping the current configuration");
            None
        }
    }
}

fn record(metrics: &EdgeMetrics, ok: bool) {
    metrics
        .reloads
        .with_label_values(&[if ok { "ok" } else { "failed" }])
        .inc();
}

/// `portico-edge check-config`: every error, or nothing.
pub fn check_config(path: &Path) -> Result<EdgeConfig, RunError> {
    load(&ConfigSource::File(path.to_path_buf())).map(|(c, _)| c)
}
