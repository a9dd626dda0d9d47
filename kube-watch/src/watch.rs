//! IO: one program's watches of one cluster ([`Watches`]): each watch fills
//! a reflector store, one probe asks the API server whether it answers at
//! all, and one [`Health`] says what is failing and how stale the stores
//! may be.
//!
//! Outage behaviour: a reflector replaces its store only when a (re)list has
//! completed (`InitDone`); a watch that fails, or an API server that goes
//! away, leaves the store as it was. So the stores always hold the last
//! complete state, and a caller that waits for [`Store::wait_until_ready`]
//! before its first use never acts on a half-filled cache.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Resource, ResourceExt as _};
use prometheus::{Gauge, IntCounter, IntCounterVec};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::client::KubeOptions;
use crate::health::{ErrorKind, ErrorReport, Health, Recovered};

/// The API server is asked this often whether it answers.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// How long the probe waits for an answer. No longer than [`PROBE_EVERY`],
/// so a silent server shows as stale within two periods.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the stale gauge is set, if one is given.
const GAUGE_EVERY: Duration = Duration::from_secs(1);

/// The metrics [`Watches`] keeps, if the program exports them.
#[derive(Debug, Clone, Default)]
pub struct WatchMetrics {
    /// Counts watch errors; one label, the resource name given to
    /// [`Watches::watch_into_store`].
    pub errors: Option<IntCounterVec>,
    /// Set every second to [`Watches::stale`], in seconds.
    pub stale_seconds: Option<Gauge>,
}

/// One program's watches of one cluster, their health and the API probe.
/// Dropping it stops every task it started.
pub struct Watches {
    shared: Arc<Shared>,
    watch_timeout_secs: u32,
    component: &'static str,
    errors: Option<IntCounterVec>,
    tasks: Vec<JoinHandle<()>>,
}

impl Watches {
    /// Starts a source on the current runtime: from now on the probe lists
    /// `probe` with `probe_params` (their selectors; the limit is set to one
    /// object, and only metadata is asked for) every [`PROBE_EVERY`], and
    /// its last answer defines [`Watches::stale`]. Probe a resource the
    /// program may list, and that any API server can answer cheaply.
    pub fn start<P>(
        opts: &KubeOptions,
        probe: Api<P>,
        probe_params: ListParams,
        metrics: WatchMetrics,
    ) -> Watches
    where
        P: Resource + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
    {
        let shared = Arc::new(Shared {
            health: Mutex::new(Health::new(Instant::now())),
            changed: Arc::new(Notify::new()),
        });
        let mut tasks = vec![tokio::spawn(run_probe(
            probe,
            probe_params.limit(1),
            shared.clone(),
        ))];
        if let Some(gauge) = metrics.stale_seconds {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(GAUGE_EVERY);
                loop {
                    tick.tick().await;
                    gauge.set(shared.health().stale(Instant::now()).as_secs_f64());
                }
            }));
        }
        Watches {
            shared,
            watch_timeout_secs: opts.watch_timeout_secs(),
            component: opts.component,
            errors: metrics.errors,
            tasks,
        }
    }

    /// Watches `api` with `config` into a new store, on a task of its own
    /// until `self` is dropped: the watcher (retrying with kube's default
    /// backoff) strips `managedFields` (most of an object's size) but the
    /// program's own entries ([`KubeOptions::component`]: what it wrote,
    /// and so what it may take back) and feeds the reflector. Each change of the store (`Apply`,
    /// `Delete`, a completed relist) notifies [`Watches::changes`]; errors
    /// and recoveries go to the source's health, logged under `resource`
    /// (give each watch its own name).
    ///
    /// `config` says what to watch (selectors); its timeout is replaced by
    /// the source's watch timeout, which the client's read timeout outlasts.
    pub fn watch_into_store<K>(
        &mut self,
        resource: &'static str,
        api: Api<K>,
        config: watcher::Config,
    ) -> Store<K>
    where
        K: Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let (store, writer) = reflector::store();
        let errors = self
            .errors
            .as_ref()
            .map(|e| e.with_label_values(&[resource]));
        self.tasks.push(tokio::spawn(run_watch(
            resource,
            api,
            config.timeout(self.watch_timeout_secs),
            self.component,
            writer,
            self.shared.clone(),
            errors,
        )));
        store
    }

    /// Notified (one stored permit, `notify_one`) whenever a store changed;
    /// several changes may wake a waiter once. Changes made during a relist
    /// count when the relist completes.
    pub fn changes(&self) -> Arc<Notify> {
        self.shared.changed.clone()
    }

    /// How long the stores may have been missing changes: the time since
    /// the API server last answered the probe while it does not answer;
    /// zero while it does.
    pub fn stale(&self, now: Instant) -> Duration {
        self.shared.health().stale(now)
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the tasks of a source share.
struct Shared {
    health: Mutex<Health>,
    changed: Arc<Notify>,
}

impl Shared {
    fn health(&self) -> MutexGuard<'_, Health> {
        // The critical sections cannot leave the state half-updated.
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn watch_error(&self, resource: &'static str, kind: ErrorKind, error: &dyn fmt::Display) {
        let report = self.health().watch_error(resource, kind, Instant::now());
        match report {
            ErrorReport::First => tracing::warn!(
                resource,
                %error,
                "Kubernetes watch failed; keeping the last complete state and retrying with backoff"
            ),
            ErrorReport::Reminder {
                errors,
                failing_for,
            } => tracing::warn!(
                resource,
                %error,
                errors,
                ?failing_for,
                "Kubernetes watch still failing"
            ),
            ErrorReport::Quiet => tracing::debug!(resource, %error, "Kubernetes watch error"),
        }
    }

    fn watch_event(&self, resource: &'static str) {
        let recovered = self.health().watch_event(resource, Instant::now());
        if let Some(recovered) = recovered {
            log_recovered(resource, recovered);
        }
    }

    fn probe_failed(&self, error: &dyn fmt::Display) {
        let report = self.health().probe_failed(Instant::now());
        match report {
            ErrorReport::First => tracing::warn!(
                %error,
                "the Kubernetes API server does not answer; keeping the last complete state"
            ),
            ErrorReport::Reminder {
                errors,
                failing_for,
            } => tracing::warn!(
                %error,
                errors,
                ?failing_for,
                "the Kubernetes API server still does not answer"
            ),
            ErrorReport::Quiet => tracing::debug!(%error, "Kubernetes API probe failed"),
        }
    }

    fn probe_answered(&self, sent: Instant) {
        let answered = self.health().probe_answered(sent, Instant::now());
        if let Some(Recovered { outage, errors }) = answered.api {
            tracing::info!(?outage, errors, "the Kubernetes API server answers again");
        }
        for (resource, recovered) in answered.watches {
            log_recovered(resource, recovered);
        }
    }
}

fn log_recovered(resource: &str, Recovered { outage, errors }: Recovered) {
    tracing::info!(resource, ?outage, errors, "Kubernetes watch working again");
}

/// Lists one object's metadata every [`PROBE_EVERY`] until aborted: a watch
/// on a quiet cluster says nothing for minutes, and one whose server hangs
/// says nothing until the client's read timeout, so the watches alone
/// cannot tell a quiet cluster from an absent one.
async fn run_probe<P>(api: Api<P>, params: ListParams, shared: Arc<Shared>)
where
    P: Resource + Clone + DeserializeOwned + fmt::Debug,
{
    let mut tick = tokio::time::interval(PROBE_EVERY);
    // A probe that timed out is followed by the next at once, not by a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = Instant::now();
        match tokio::time::timeout(PROBE_TIMEOUT, api.list_metadata(&params)).await {
            Ok(Ok(_)) => shared.probe_answered(sent),
            Ok(Err(e)) => shared.probe_failed(&e),
            Err(_) => shared.probe_failed(&format_args!("no answer within {PROBE_TIMEOUT:?}")),
        }
    }
}

/// Runs one watch into its store until aborted.
async fn run_watch<K>(
    resource: &'static str,
    api: Api<K>,
    config: watcher::Config,
    component: &'static str,
    writer: Writer<K>,
    shared: Arc<Shared>,
    errors: Option<IntCounter>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
{
    let stream = watcher(api, config)
        .default_backoff()
        .modify(move |o: &mut K| {
            o.managed_fields_mut()
                .retain(|e| e.manager.as_deref() == Some(component))
        })
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                shared.watch_event(resource);
                // InitApply fills the reflector's buffer, not the store: the
                // store changes at InitDone.
                if matches!(
                    event,
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone
                ) {
                    shared.changed.notify_one();
                }
            }
            Err(e) => {
                if let Some(errors) = &errors {
                    errors.inc();
                }
                shared.watch_error(resource, error_kind(&e), &e);
            }
        }
    }
    // A watcher stream does not end; should it, the store keeps its last
    // state. Nothing can end this outage, so it stays in the health.
    shared.watch_error(resource, ErrorKind::Refused, &"watch stream ended");
    tracing::error!(resource, "Kubernetes watch ended; its store is frozen");
}

/// What a watch error says about the API server as a whole.
fn error_kind(e: &watcher::Error) -> ErrorKind {
    let code = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => match e {
            kube::Error::Api(status) => status.code,
            // The server answered something this client cannot use.
            kube::Error::SerdeError(_) | kube::Error::BuildRequest(_) => return ErrorKind::Refused,
            // No answer: connection, timeout, TLS, auth; the probe (same
            // client) fails too until it is over.
            _ => return ErrorKind::Unavailable,
        },
        watcher::Error::WatchError(status) => status.code,
        watcher::Error::NoResourceVersion => return ErrorKind::Refused,
    };
    ErrorKind::from_status(code)
}
