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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portico_config::{parse_edge_config, ConfigErrors, EdgeConfig};
use tokio::signal::unix::{signal, SignalKind};

use crate::edge::{Edge, EdgeError, EdgeOptions};
use crate::metrics::EdgeMetrics;
use crate::upgrade;
use crate::vip::IpCommand;

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
    /// A signal handler could not be installed.
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
}

impl RunError {
    /// The process exit code: 64 (`EX_USAGE`) for a bad configuration, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Invalid { .. } | RunError::Read { .. } => 64,
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
    let edge = Edge::start(config, edge_opts).await?;
    tracing::info!(admin = %edge.admin_addr(), metrics = %edge.metrics_addr(), "edge running");

    let mut poll = tokio::time::interval(opts.watch_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading");
                reload(&edge, &opts.source, &mut applied_text, true).await;
            }
            _ = poll.tick() => {
                if let ConfigSource::File(_) = opts.source {
                    reload(&edge, &opts.source, &mut applied_text, false).await;
                }
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
    edge.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Re-reads the file; applies it when its content changed (or `force`).
async fn reload(edge: &Edge, source: &ConfigSource, applied_text: &mut String, force: bool) {
    let ConfigSource::File(path) = source else {
        return;
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            if force {
                record(edge.metrics(), false);
                tracing::error!(path = %path.display(), error = %e, "reload failed: cannot read the file; keeping the current configuration");
            }
            return;
        }
    };
    if !force && text == *applied_text {
        return;
    }
    // Remember the attempt, valid or not, so an invalid file is reported once
    // rather than at every poll.
    *applied_text = text.clone();
    match parse_edge_config(&text) {
        Ok(config) => match edge.apply(config).await {
            Ok(errors) => {
                record(edge.metrics(), true);
                for (listener, error) in &errors {
                    tracing::error!(%listener, %error, "listener could not be opened");
                }
                tracing::info!(path = %path.display(), "configuration reloaded");
            }
            Err(e) => tracing::error!(error = %e, "reload not applied"),
        },
        Err(errors) => {
            record(edge.metrics(), false);
            for e in errors.errors() {
                tracing::error!(path = %path.display(), error = %e, "invalid configuration");
            }
            tracing::error!(path = %path.display(), count = errors.errors().len(), "reload rejected; keeping the current configuration");
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
