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
//! Signals: `SIGHUP` re-reads the config file (so does any change of it,
//! once it has settled: [`crate::sources::file`]); `SIGTERM`/`SIGINT` drain
//! and exit; `SIGQUIT` hands over and exits.
//!
//! Sources (the config file, the Kubernetes watch, the hook API) are
//! started, merged and applied by [`crate::sources`].

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portico_config::EdgeConfig;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::announce::TunTables;
use crate::edge::{Edge, EdgeError, EdgeOptions};
use crate::metrics::EdgeMetrics;
pub use crate::sources::ConfigSource;
use crate::sources::{record_reload, ConfigFile, LoadError, Reloaded, SourceError, Sources};
use crate::upgrade;
use crate::vip::NetlinkOps;

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
    /// How often the config file is checked for changes; a change is read
    /// once it has stayed the same this long.
    pub watch_interval: Duration,
}

/// Why the process failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] LoadError),
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
    /// A source (the Kubernetes watch, the hook API) could not start.
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl RunError {
    /// The process exit code: 64 (`EX_USAGE`) for a bad configuration, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_) => 64,
            RunError::Source(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// The process's signals.
struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
    quit: Signal,
}

impl Signals {
    fn install() -> Result<Signals, RunError> {
        let on = |kind| signal(kind).map_err(RunError::Signal);
        Ok(Signals {
            hangup: on(SignalKind::hangup())?,
            terminate: on(SignalKind::terminate())?,
            interrupt: on(SignalKind::interrupt())?,
            quit: on(SignalKind::quit())?,
        })
    }
}

/// Receives the listening sockets of the running edge (`--takeover`).
async fn take_over(opts: &RunOptions) -> Result<HashMap<String, OwnedFd>, RunError> {
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
    Ok(fds.into_iter().collect())
}

/// The process's descriptor limit (`RLIMIT_NOFILE`), the soft limit raised
/// to the hard one first: every listener, probe and connection needs a
/// descriptor, and a takeover receives every listener at once. The
/// descriptor budget ([`crate::budget`]) shares this out.
pub fn descriptor_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open files limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open files limit; assuming 1024");
            1024
        }
    }
}

/// Runs the edge until it is told to stop.
pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    let descriptors = descriptor_limit();
    let (source, settle) = (opts.source.clone(), opts.watch_interval);
    // Off the runtime's workers, as every read of the file.
    let (mut file, config) =
        match tokio::task::spawn_blocking(move || ConfigFile::load(source, settle)).await {
            Ok(loaded) => loaded?,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
    let mut signals = Signals::install()?;
    let metrics = EdgeMetrics::new();
    let mut edge_opts = EdgeOptions {
        descriptors: Some(descriptors),
        address_ops: Some(Arc::new(NetlinkOps::new())),
        route_tables: Some(Arc::new(TunTables)),
        metrics: Some(metrics.clone()),
        ..Default::default()
    };
    if opts.takeover {
        edge_opts.inherited = take_over(&opts).await?;
        edge_opts.adopt_vips = true;
    }
    // During an upgrade the old process holds the hook API's address until
    // it has handed over; wait for it as long as for the handover.
    let hook_bind_wait = if opts.takeover {
        opts.takeover_timeout
    } else {
        Duration::ZERO
    };
    let mut sources = Sources::start(config, descriptors, &metrics, hook_bind_wait).await?;
    let merged = sources.merged();
    sources.report(&merged);
    let edge = Edge::start(merged.config, edge_opts).await?;
    tracing::info!(admin = %edge.admin_addr(), metrics = %edge.metrics_addr(), "edge running");

    let mut poll = tokio::time::interval(opts.watch_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = signals.hangup.recv() => {
                tracing::info!("SIGHUP: reloading");
                file.check(true, sources.file_services());
            }
            _ = poll.tick() => {
                // Services with no healthy node get an Event.
                sources.set_unhealthy(edge.snapshot().unhealthy_services());
                file.check(false, sources.file_services());
            }
            outcome = file.finished() => reloaded(&edge, outcome, &mut sources).await,
            () = sources.changed() => sources.apply(&edge, false).await,
            _ = signals.terminate.recv() => { tracing::info!("SIGTERM: draining and stopping"); break; }
            _ = signals.interrupt.recv() => { tracing::info!("SIGINT: draining and stopping"); break; }
            _ = signals.quit.recv() => {
                tracing::info!(path = %opts.upgrade_socket.display(), "SIGQUIT: handing listeners to the new process");
                match edge.handover(opts.upgrade_socket.clone()).await {
                    Ok(n) => { tracing::info!(sockets = n, "handover done; draining"); break; }
                    Err(e) => tracing::error!(error = %e, "handover failed; still serving"),
                }
            }
        }
    }
    sources.stop().await;
    edge.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Applies what a look at the config file found; a failed reload is
/// counted and changes nothing.
async fn reloaded(edge: &Edge, outcome: Reloaded, sources: &mut Sources) {
    match outcome {
        Reloaded::Unchanged => {}
        Reloaded::Failed => record_reload(edge.metrics(), false),
        Reloaded::Valid(config) => match sources.set_file(*config) {
            Ok(()) => sources.apply(edge, true).await,
            Err(e) => {
                tracing::error!(error = %e, "config file not reloaded; the running configuration stays");
                record_reload(edge.metrics(), false);
            }
        },
    }
}

/// `portico-edge check-config`: every error, or nothing. The descriptor
/// budget is this process's (the limit a service manager gives the edge
/// may differ: run it under the same limit).
pub fn check_config(path: &Path) -> Result<EdgeConfig, RunError> {
    let config = ConfigFile::load(ConfigSource::File(path.to_path_buf()), Duration::ZERO)?.1;
    crate::budget::check_file(&config, descriptor_limit()).map_err(SourceError::from)?;
    Ok(config)
}
