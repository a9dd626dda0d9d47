//! The Kubernetes API source: watches the Services labelled for this proxy,
//! their EndpointSlices and this node's Node, and turns the watch caches into
//! the same [`Snapshot`] the manifest directory gives, for the same planner.
//!
//! Two layers:
//! - pure: [`snapshot_from_objects`] / [`Stores::snapshot`] (cached objects
//!   -> `Snapshot` plus the objects that did not convert), [`Debouncer`] (a
//!   burst of changes -> one sync) and [`WatchHealth`] (watch errors and
//!   recoveries -> what to log, and how stale the caches may be). The unit
//!   tests feed reflector stores directly and never contact a server.
//! - IO: [`connect`] builds the client (a kubeconfig file, or
//!   `kube::Config::infer`: `KUBECONFIG`, `~/.kube/config`, in-cluster) and
//!   [`KubeSource::start`] runs one `watcher` + `reflector` task per resource.
//!
//! Outage behaviour: a reflector replaces its store only when a (re)list has
//! completed (`InitDone`), and a watch that fails or an API server that goes
//! away leaves the store as it was. So the caches always hold the last
//! complete state; the agent waits for all three to be listed once before its
//! first sync (never a sync from a half-filled cache that would delete the
//! rules of Services not listed yet), and its periodic resync keeps repairing
//! drift from that last good state while the API is away. A failing watch is
//! logged once when it starts failing, then reminded every
//! [`REMIND_EVERY`], and once when it recovers; the stale-seconds gauge says
//! for how long the caches may have been missing changes.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::ResourceExt as _;
use portico_config::kube::names::{SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL};
use portico_config::kube::{
    namespaced_key, read_endpoint_slice, read_node, read_service, FieldProblem, Read,
};
use portico_config::ServiceKey;
use prometheus::IntCounterVec;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::manifests::Snapshot;

/// Server-side timeout of a watch request by default: the API server ends
/// the watch after it, and the watcher resumes from the last
/// resourceVersion (no relist). Also bounds how long a silently dead
/// connection goes unnoticed (this plus the watcher's 5 s margin).
pub const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Added to the watch timeout to make the client's read timeout: longer
/// than a quiet watch lasts, so only a server that stopped answering trips it.
const READ_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);

/// A failing watch is logged again (with its error count) this often.
pub const REMIND_EVERY: Duration = Duration::from_secs(60);

/// While a watch fails, a one-object list with its selectors is tried this
/// often: a resumed watch yields nothing until an object changes, so the
/// probe is what tells that the API answers again.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the Kubernetes source connects and watches.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// A kubeconfig file; `None` infers the configuration (`KUBECONFIG`,
    /// `~/.kube/config`, then the in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// Server-side timeout of each watch request (see [`DEFAULT_WATCH_TIMEOUT`]).
    pub watch_timeout: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            kubeconfig: None,
            watch_timeout: DEFAULT_WATCH_TIMEOUT,
        }
    }
}

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig file given with `--kubeconfig` is unreadable or invalid.
    #[error("cannot use kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No configuration could be inferred from the environment.
    #[error("no Kubernetes configuration found (KUBECONFIG, ~/.kube/config, in-cluster service account): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built from the configuration (TLS, auth).
    #[error("cannot build a Kubernetes client for {url}: {source}")]
    Client {
        /// The API server's URL.
        url: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A watch task ended before its first list completed (it panicked).
    #[error("the {0} watch ended before its first list completed")]
    WatchEnded(Watched),
}

/// The three watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// Services labelled with this proxy's name.
    Services,
    /// EndpointSlices that belong to a Service.
    EndpointSlices,
    /// This node's Node.
    Node,
}

impl Watched {
    /// Every watch, in index order.
    pub const ALL: [Watched; 3] = [Watched::Services, Watched::EndpointSlices, Watched::Node];

    fn index(self) -> usize {
        match self {
            Watched::Services => 0,
            Watched::EndpointSlices => 1,
            Watched::Node => 2,
        }
    }

    /// The resource's name as logs and metrics show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Watched::Services => "services",
            Watched::EndpointSlices => "endpointslices",
            Watched::Node => "node",
        }
    }
}

impl fmt::Display for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------
// Pure: caches -> Snapshot
// ---------------------------------------------------------------------------

/// The label selector of the Services watch: `<label>=<proxy name>`.
pub fn service_selector(proxy_name: &str) -> String {
    format!("{SERVICE_PROXY_NAME_LABEL}={proxy_name}")
}

/// The field selector of the Node watch: `metadata.name=<node>`.
pub fn node_selector(node_name: &str) -> String {
    format!("metadata.name={node_name}")
}

/// Builds the planner's input from cached objects.
///
/// Every Service given is converted (the watch's label selector already
/// keeps only this proxy's; the planner checks the label again). Only the
/// EndpointSlices of a Service that converted are kept and converted: the
/// slice watch sees every Service's slices, and a slice of another Service
/// is neither planned nor reported. The Node is the one named `node_name`.
/// Objects the shared reader refuses are skipped; their problems are
/// returned with those of the objects it kept (worked around); nothing else
/// is lost. Services and slices come out sorted by key, as from the
/// manifests.
pub fn snapshot_from_objects<'a>(
    services: impl IntoIterator<Item = &'a core::Service>,
    slices: impl IntoIterator<Item = &'a discovery::EndpointSlice>,
    nodes: impl IntoIterator<Item = &'a core::Node>,
    node_name: &str,
) -> (Snapshot, Vec<FieldProblem>) {
    /// The value of a reading, its problems (or the refusal) to `problems`.
    fn keep<T>(read: Result<Read<T>, FieldProblem>, problems: &mut Vec<FieldProblem>) -> Option<T> {
        match read {
            Ok(read) => {
                problems.extend(read.problems);
                Some(read.value)
            }
            Err(refused) => {
                problems.push(refused);
                None
            }
        }
    }

    let mut problems = Vec::new();
    let mut snapshot = Snapshot::default();
    for svc in services {
        snapshot
            .services
            .extend(keep(read_service(svc), &mut problems));
    }
    snapshot.services.sort_by(|a, b| a.key.cmp(&b.key));
    let ours = |slice: &discovery::EndpointSlice| {
        let Some(service) = slice.labels().get(SERVICE_NAME_LABEL) else {
            return false;
        };
        let Some(own) = namespaced_key(&slice.metadata) else {
            return false;
        };
        let key = ServiceKey::new(own.namespace, service.clone());
        snapshot
            .services
            .binary_search_by(|s| s.key.cmp(&key))
            .is_ok()
    };
    let mut kept = Vec::new();
    for slice in slices.into_iter().filter(|s| ours(s)) {
        kept.extend(keep(read_endpoint_slice(slice), &mut problems));
    }
    kept.sort_by(|a, b| a.key.cmp(&b.key));
    snapshot.slices = kept;
    if let Some(node) = nodes
        .into_iter()
        .find(|n| n.metadata.name.as_deref() == Some(node_name))
    {
        snapshot.node = keep(read_node(node), &mut problems);
    }
    (snapshot, problems)
}

/// The three watch caches (reflector stores).
#[derive(Clone)]
pub struct Stores {
    /// This proxy's Services.
    pub services: Store<core::Service>,
    /// Every Service's EndpointSlices.
    pub slices: Store<discovery::EndpointSlice>,
    /// This node's Node (at most one).
    pub nodes: Store<core::Node>,
}

impl Stores {
    /// The planner's input from what the caches hold now; see
    /// [`snapshot_from_objects`].
    pub fn snapshot(&self, node_name: &str) -> (Snapshot, Vec<FieldProblem>) {
        let services = self.services.state();
        let slices = self.slices.state();
        let nodes = self.nodes.state();
        snapshot_from_objects(
            services.iter().map(|s| &**s),
            slices.iter().map(|s| &**s),
            nodes.iter().map(|n| &**n),
            node_name,
        )
    }

    /// Resolves once every cache has completed its first list.
    pub async fn wait_until_ready(&self) -> Result<(), KubeError> {
        self.services
            .wait_until_ready()
            .await
            .map_err(|_| KubeError::WatchEnded(Watched::Services))?;
        self.slices
            .wait_until_ready()
            .await
            .map_err(|_| KubeError::WatchEnded(Watched::EndpointSlices))?;
        self.nodes
            .wait_until_ready()
            .await
            .map_err(|_| KubeError::WatchEnded(Watched::Node))
    }
}

// ---------------------------------------------------------------------------
// Pure: debouncing
// ---------------------------------------------------------------------------

/// Turns a burst of changes into one sync: due once no change came for
/// `quiet`, or `max` after the first change of the burst, whichever is
/// first (so a steady stream of changes still syncs every `max`).
#[derive(Debug, Clone)]
pub struct Debouncer {
    quiet: Duration,
    max: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debouncer {
    /// A debouncer with nothing pending.
    pub fn new(quiet: Duration, max: Duration) -> Self {
        Debouncer {
            quiet,
            max,
            first: None,
            last: None,
        }
    }

    /// Records a change at `now`.
    pub fn changed(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the pending changes are due to be synced; `None` when nothing is
    /// pending.
    pub fn deadline(&self) -> Option<Instant> {
        Some((self.last? + self.quiet).min(self.first? + self.max))
    }

    /// Whether a sync is due at `now`; when it is, the pending changes are
    /// taken (the next call says `false` until another change).
    pub fn take_due(&mut self, now: Instant) -> bool {
        let due = self.deadline().is_some_and(|d| now >= d);
        if due {
            self.clear();
        }
        due
    }

    /// Forgets the pending changes (a sync covering them happened anyway).
    pub fn clear(&mut self) {
        self.first = None;
        self.last = None;
    }
}

// ---------------------------------------------------------------------------
// Pure: watch health
// ---------------------------------------------------------------------------

/// A failing watch.
#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    last_error: Instant,
    errors: u64,
    last_report: Instant,
}

/// What to log for a watch error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReport {
    /// The watch was healthy until now: log it as a warning.
    First,
    /// The watch has been failing for `failing_for` with `errors` errors and
    /// was last reported [`REMIND_EVERY`] ago: log a reminder.
    Reminder {
        /// Errors in this outage so far.
        errors: u64,
        /// Since the first one.
        failing_for: Duration,
    },
    /// Already reported recently: debug level only.
    Quiet,
}

/// Which watches are failing and since when.
#[derive(Debug, Clone, Default)]
pub struct WatchHealth {
    outages: [Option<Outage>; 3],
}

impl WatchHealth {
    /// Records an error of `which` at `now` and says how to report it.
    pub fn error(&mut self, which: Watched, now: Instant) -> ErrorReport {
        let slot = &mut self.outages[which.index()];
        match slot {
            None => {
                *slot = Some(Outage {
                    since: now,
                    last_error: now,
                    errors: 1,
                    last_report: now,
                });
                ErrorReport::First
            }
            Some(outage) => {
                outage.errors += 1;
                outage.last_error = now;
                if now.saturating_duration_since(outage.last_report) >= REMIND_EVERY {
                    outage.last_report = now;
                    ErrorReport::Reminder {
                        errors: outage.errors,
                        failing_for: now.saturating_duration_since(outage.since),
                    }
                } else {
                    ErrorReport::Quiet
                }
            }
        }
    }

    /// Records at `now` that `which` worked at `evidence` (an event arrived
    /// then, or a probe sent then has succeeded). Evidence older than the
    /// watch's last error proves nothing and is ignored. Returns how long
    /// the outage it ends lasted (until `now`) and its error count.
    pub fn healthy(
        &mut self,
        which: Watched,
        evidence: Instant,
        now: Instant,
    ) -> Option<(Duration, u64)> {
        let slot = &mut self.outages[which.index()];
        let outage = (*slot)?;
        if evidence < outage.last_error {
            return None;
        }
        *slot = None;
        Some((now.saturating_duration_since(outage.since), outage.errors))
    }

    /// Whether `which` is failing.
    pub fn failing(&self, which: Watched) -> bool {
        self.outages[which.index()].is_some()
    }

    /// How long the caches may have been missing changes: since the first
    /// error of the oldest current outage; zero when every watch is healthy.
    /// (A watch that just goes quiet is not known to fail until its
    /// timeouts say so: the idle timeout, then the read timeout.)
    pub fn stale(&self, now: Instant) -> Duration {
        self.outages
            .iter()
            .flatten()
            .map(|o| now.saturating_duration_since(o.since))
            .max()
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// IO: client and watches
// ---------------------------------------------------------------------------

/// Builds the API client: from `opts.kubeconfig` when given, else inferred.
///
/// Sets a read timeout a little longer than a watch lasts: without one, a
/// request to an API server that accepts connections but never answers
/// would wait forever and such an outage would never show.
pub async fn connect(opts: &KubeOptions) -> Result<kube::Client, KubeError> {
    let mut config = match &opts.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|source| KubeError::Kubeconfig {
                path: path.clone(),
                source,
            })?
        }
        None => kube::Config::infer().await.map_err(KubeError::Infer)?,
    };
    config.read_timeout = Some(opts.watch_timeout + READ_TIMEOUT_MARGIN);
    // Count the read timeout from each request, not from when its pooled
    // connection went idle.
    config.reset_reader_on_write = true;
    let url = config.cluster_url.to_string();
    kube::Client::try_from(config).map_err(|source| KubeError::Client { url, source })
}

/// State the watch tasks share with the agent loop.
struct Shared {
    health: Mutex<WatchHealth>,
    changed: Notify,
}

impl Shared {
    fn health(&self) -> std::sync::MutexGuard<'_, WatchHealth> {
        // The critical sections cannot leave the state half-updated.
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn error(&self, which: Watched, error: &dyn fmt::Display) {
        let report = self.health().error(which, Instant::now());
        match report {
            ErrorReport::First => tracing::warn!(
                resource = %which,
                error = %error,
                "Kubernetes watch failed; keeping the last complete state (rules stay as they are) and retrying"
            ),
            ErrorReport::Reminder {
                errors,
                failing_for,
            } => tracing::warn!(
                resource = %which,
                error = %error,
                errors,
                failing_for = ?failing_for,
                "Kubernetes watch still failing"
            ),
            ErrorReport::Quiet => {
                tracing::debug!(resource = %which, error = %error, "Kubernetes watch error")
            }
        }
    }

    fn healthy(&self, which: Watched, evidence: Instant) {
        let ended = self.health().healthy(which, evidence, Instant::now());
        if let Some((outage, errors)) = ended {
            tracing::info!(resource = %which, outage = ?outage, errors, "Kubernetes watch working again");
        }
    }
}

/// The running watches and their caches. Dropping it stops the watches.
pub struct KubeSource {
    stores: Stores,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeSource {
    /// Starts the three watches (tasks on the current runtime):
    /// - Services labelled [`service_selector`]`(proxy_name)`;
    /// - every EndpointSlice that has the `kubernetes.io/service-name` label;
    /// - the Node [`node_selector`]`(node_name)`.
    ///
    /// `errors` counts watch errors by `resource`.
    pub fn start(
        client: kube::Client,
        node_name: &str,
        proxy_name: &str,
        opts: &KubeOptions,
        errors: IntCounterVec,
    ) -> Self {
        let shared = Arc::new(Shared {
            health: Mutex::new(WatchHealth::default()),
            changed: Notify::new(),
        });
        let timeout = u32::try_from(opts.watch_timeout.as_secs().max(1)).unwrap_or(u32::MAX);
        let base = watcher::Config::default().timeout(timeout);
        let (services, services_writer) = reflector::store();
        let (slices, slices_writer) = reflector::store();
        let (nodes, nodes_writer) = reflector::store();
        let tasks = vec![
            tokio::spawn(watch(
                Watched::Services,
                Api::<core::Service>::all(client.clone()),
                base.clone().labels(&service_selector(proxy_name)),
                services_writer,
                shared.clone(),
                errors.clone(),
            )),
            // All slices, not only our Services': the proxy-name label is on
            // the Service and not copied to its slices, so no selector can
            // pick them. Narrowing the watch to named Services instead would
            // restart it (a relist) at every Service change, and a Service
            // that gets our label later would wait for that relist to have
            // endpoints. kube-proxy watches every slice too; the snapshot
            // keeps only our Services' slices.
            tokio::spawn(watch(
                Watched::EndpointSlices,
                Api::<discovery::EndpointSlice>::all(client.clone()),
                base.clone().labels(SERVICE_NAME_LABEL),
                slices_writer,
                shared.clone(),
                errors.clone(),
            )),
            tokio::spawn(watch(
                Watched::Node,
                Api::<core::Node>::all(client),
                base.fields(&node_selector(node_name)),
                nodes_writer,
                shared.clone(),
                errors,
            )),
        ];
        KubeSource {
            stores: Stores {
                services,
                slices,
                nodes,
            },
            shared,
            tasks,
        }
    }

    /// The caches.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// Resolves when a cache changed since the last call (several changes
    /// may resolve it once). Changes made during a relist count when the
    /// relist completes.
    pub async fn changed(&self) {
        self.shared.changed.notified().await;
    }

    /// How long the caches may have been missing changes (zero while every
    /// watch is healthy).
    pub fn stale(&self, now: Instant) -> Duration {
        self.shared.health().stale(now)
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

type Probe = Pin<Box<dyn Future<Output = (Instant, Result<(), String>)> + Send>>;

/// Runs one watch into its store until aborted: the watcher (with the
/// default exponential backoff after errors) feeds the reflector; changes
/// wake the agent; errors and recoveries go to [`WatchHealth`].
async fn watch<K>(
    which: Watched,
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    shared: Arc<Shared>,
    errors: IntCounterVec,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let probe_params = ListParams {
        label_selector: config.label_selector.clone(),
        field_selector: config.field_selector.clone(),
        limit: Some(1),
        ..ListParams::default()
    };
    let errors = errors.with_label_values(&[which.as_str()]);
    let stream = watcher(api.clone(), config)
        .default_backoff()
        // managedFields are most of an object's size and never read.
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    let mut probe_tick = tokio::time::interval(PROBE_EVERY);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe: Option<Probe> = None;
    loop {
        let failing = shared.health().failing(which);
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(event)) => {
                    shared.healthy(which, Instant::now());
                    // InitApply fills the reflector's buffer, not the store:
                    // the store changes at InitDone.
                    if matches!(
                        event,
                        watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone
                    ) {
                        shared.changed.notify_one();
                    }
                }
                Some(Err(e)) => {
                    errors.inc();
                    shared.error(which, &e);
                }
                None => {
                    // A watcher stream does not end; should it, the cache
                    // keeps its last state and the stale gauge says so.
                    shared.error(which, &"watch stream ended");
                    tracing::error!(resource = %which, "Kubernetes watch ended; its cache is frozen");
                    return;
                }
            },
            _ = probe_tick.tick(), if failing && probe.is_none() => {
                let api = api.clone();
                let params = probe_params.clone();
                probe = Some(Box::pin(async move {
                    let sent = Instant::now();
                    let result = match tokio::time::timeout(PROBE_TIMEOUT, api.list(&params)).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer in {PROBE_TIMEOUT:?}")),
                    };
                    (sent, result)
                }));
            }
            (sent, result) = async { probe.as_mut().expect("branch enabled only with a probe").await }, if probe.is_some() => {
                probe = None;
                match result {
                    Ok(()) => shared.healthy(which, sent),
                    Err(e) => tracing::debug!(resource = %which, error = %e, "Kubernetes API probe failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use portico_config::cluster::ServiceType;
    use portico_config::ExclusionReason;

    fn service(ns: &str, name: &str, node_port: i32) -> core::Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {SERVICE_PROXY_NAME_LABEL: "portico"},
            },
            "spec": {
                "type": "NodePort",
                "clusterIP": "10.96.0.10",
                "ports": [{"port": 80, "nodePort": node_port}],
            },
        }))
        .expect("service")
    }

    fn slice(ns: &str, name: &str, service: &str, addr: &str) -> discovery::EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {SERVICE_NAME_LABEL: service},
            },
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": [{"addresses": [addr], "nodeName": "n1"}],
        }))
        .expect("slice")
    }

    fn node(name: &str) -> core::Node {
        core::Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: None,
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: "192.168.1.10".into(),
                }]),
                ..Default::default()
            }),
        }
    }

    fn stores() -> (Stores, Writers) {
        let (services, s) = reflector::store();
        let (slices, e) = reflector::store();
        let (nodes, n) = reflector::store();
        (
            Stores {
                services,
                slices,
                nodes,
            },
            Writers {
                services: s,
                slices: e,
                nodes: n,
            },
        )
    }

    struct Writers {
        services: Writer<core::Service>,
        slices: Writer<discovery::EndpointSlice>,
        nodes: Writer<core::Node>,
    }

    /// A complete (re)list, as the watcher emits it.
    fn list<K>(writer: &mut Writer<K>, objects: Vec<K>)
    where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
    }

    fn names(snapshot: &Snapshot) -> (Vec<String>, Vec<String>) {
        (
            snapshot
                .services
                .iter()
                .map(|s| s.key.to_string())
                .collect(),
            snapshot.slices.iter().map(|s| s.key.to_string()).collect(),
        )
    }

    #[test]
    fn snapshot_keeps_our_services_their_slices_and_this_node() {
        let (stores, mut w) = stores();
        list(
            &mut w.services,
            vec![service("b", "web", 30080), service("a", "api", 30081)],
        );
        list(
            &mut w.slices,
            vec![
                slice("b", "web-x", "web", "10.244.0.10"),
                slice("a", "api-x", "api", "10.244.0.11"),
                slice("a", "api-y", "api", "10.244.0.12"),
                // Same Service name, other namespace: not ours.
                slice("c", "web-z", "web", "10.244.0.13"),
                // A Service we do not handle; its bad address is not reported.
                slice("a", "other-x", "other", "not-an-ip"),
            ],
        );
        list(&mut w.nodes, vec![node("n1")]);
        let (snapshot, errors) = stores.snapshot("n1");
        assert_eq!(errors, []);
        assert_eq!(
            names(&snapshot),
            (
                vec!["a/api".to_string(), "b/web".to_string()],
                vec![
                    "a/api-x".to_string(),
                    "a/api-y".to_string(),
                    "b/web-x".to_string()
                ]
            )
        );
        assert_eq!(snapshot.services[0].service_type, ServiceType::NodePort);
        assert_eq!(snapshot.services[0].proxy_name.as_deref(), Some("portico"));
        let node = snapshot.node.expect("this node");
        assert_eq!(node.name, "n1");
        assert_eq!(
            node.addresses,
            ["192.168.1.10".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(node.excluded.is_empty());
        // Another node's name finds no Node.
        assert_eq!(stores.snapshot("n2").0.node, None);
    }

    #[test]
    fn objects_that_do_not_convert_are_skipped_and_returned() {
        let (stores, mut w) = stores();
        list(
            &mut w.services,
            vec![service("a", "web", 30080), service("a", "bad", 70000)],
        );
        list(
            &mut w.slices,
            vec![
                slice("a", "web-x", "web", "10.244.0.10"),
                slice("a", "web-y", "web", "10.244.0.999"),
                // The slice of a Service that did not convert is not planned.
                slice("a", "bad-x", "bad", "10.244.0.11"),
            ],
        );
        let (snapshot, errors) = stores.snapshot("n1");
        // A bad endpoint address costs that endpoint, not the slice.
        assert_eq!(
            names(&snapshot),
            (
                vec!["a/web".to_string()],
                vec!["a/web-x".to_string(), "a/web-y".to_string()]
            )
        );
        assert!(snapshot.slices[1].endpoints.is_empty());
        let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errors,
            [
                "Service a/bad: spec.ports[0].nodePort: 70000 is outside 1-65535",
                "EndpointSlice a/web-y: endpoints[0].addresses[0]: \"10.244.0.999\" is not a valid IP address; endpoint skipped",
            ]
        );
        assert_eq!(snapshot.node, None, "no Node listed");
    }

    #[test]
    fn node_deletion_and_autoscaler_taint_come_through() {
        let (stores, mut w) = stores();
        let mut n = node("n1");
        n.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        n.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: portico_config::kube::names::TO_BE_DELETED_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        list(&mut w.nodes, vec![node("n1")]);
        assert!(!stores.snapshot("n1").0.node.expect("node").leaving());
        w.nodes.apply_watcher_event(&watcher::Event::Apply(n));
        let node = stores.snapshot("n1").0.node.expect("node");
        assert_eq!(
            node.excluded,
            [ExclusionReason::Deleting, ExclusionReason::ToBeDeletedTaint]
        );
    }

    #[test]
    fn an_interrupted_relist_leaves_the_last_complete_state() {
        let (stores, mut w) = stores();
        list(
            &mut w.services,
            vec![service("a", "web", 30080), service("a", "api", 30081)],
        );
        list(
            &mut w.slices,
            vec![slice("a", "web-x", "web", "10.244.0.10")],
        );
        let before = stores.snapshot("n1");
        // A relist starts (after a 410, say) and the API goes away half way:
        // the store keeps what it had.
        w.services.apply_watcher_event(&watcher::Event::Init);
        w.services
            .apply_watcher_event(&watcher::Event::InitApply(service("a", "web", 30080)));
        assert_eq!(stores.snapshot("n1"), before);
        // The relist that completes replaces the state: `api` is gone.
        list(&mut w.services, vec![service("a", "web", 30080)]);
        assert_eq!(
            names(&stores.snapshot("n1").0),
            (vec!["a/web".to_string()], vec!["a/web-x".to_string()])
        );
        // Watch events apply at once.
        w.slices.apply_watcher_event(&watcher::Event::Delete(slice(
            "a",
            "web-x",
            "web",
            "10.244.0.10",
        )));
        assert_eq!(stores.snapshot("n1").0.slices, []);
    }

    #[tokio::test]
    async fn stores_are_ready_only_when_every_first_list_completed() {
        let (stores, mut w) = stores();
        list(&mut w.services, vec![]);
        list(&mut w.slices, vec![]);
        w.nodes.apply_watcher_event(&watcher::Event::Init);
        let waiting = tokio::time::timeout(Duration::from_millis(20), stores.wait_until_ready());
        assert!(
            waiting.await.is_err(),
            "ready before the Node list completed"
        );
        w.nodes.apply_watcher_event(&watcher::Event::InitDone);
        stores.wait_until_ready().await.expect("ready");
        drop(w);
        let (stores, w) = self::stores();
        drop(w);
        let err = stores.wait_until_ready().await.expect_err("writers gone");
        assert!(
            matches!(err, KubeError::WatchEnded(Watched::Services)),
            "{err}"
        );
    }

    #[test]
    fn selectors() {
        assert_eq!(
            service_selector("portico"),
            "service.kubernetes.io/service-proxy-name=portico"
        );
        assert_eq!(node_selector("node-1"), "metadata.name=node-1");
    }

    #[test]
    fn debouncer_waits_for_quiet_but_not_longer_than_max() {
        let quiet = Duration::from_millis(10);
        let mut d = Debouncer::new(quiet, Duration::from_millis(100));
        let t0 = Instant::now();
        assert_eq!(d.deadline(), None);
        assert!(!d.take_due(t0 + Duration::from_secs(1)), "nothing pending");
        d.changed(t0);
        assert_eq!(d.deadline(), Some(t0 + quiet));
        assert!(!d.take_due(t0 + Duration::from_millis(5)));
        // A change every 5 ms keeps it waiting, up to 100 ms after the first.
        for ms in (5..=200).step_by(5) {
            let now = t0 + Duration::from_millis(ms);
            if d.take_due(now) {
                assert_eq!(ms, 100, "due at the cap");
                break;
            }
            d.changed(now);
        }
        assert_eq!(d.deadline(), None, "taken");
        // A lone change is due after the quiet time.
        let t1 = t0 + Duration::from_secs(1);
        d.changed(t1);
        assert!(d.take_due(t1 + quiet));
        assert!(!d.take_due(t1 + quiet), "once");
        d.changed(t1);
        d.clear();
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn watch_health_reports_once_then_reminds_and_measures_staleness() {
        let mut h = WatchHealth::default();
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(h.stale(s(100)), Duration::ZERO);
        assert_eq!(h.error(Watched::EndpointSlices, s(0)), ErrorReport::First);
        assert_eq!(h.error(Watched::EndpointSlices, s(1)), ErrorReport::Quiet);
        assert_eq!(h.error(Watched::EndpointSlices, s(30)), ErrorReport::Quiet);
        assert_eq!(h.error(Watched::Node, s(5)), ErrorReport::First);
        assert_eq!(
            h.error(Watched::EndpointSlices, s(61)),
            ErrorReport::Reminder {
                errors: 4,
                failing_for: Duration::from_secs(61)
            }
        );
        assert_eq!(h.error(Watched::EndpointSlices, s(62)), ErrorReport::Quiet);
        assert!(h.failing(Watched::EndpointSlices));
        assert!(!h.failing(Watched::Services));
        assert_eq!(h.stale(s(70)), Duration::from_secs(70), "the oldest outage");
        // A probe sent before the last error proves nothing.
        assert_eq!(h.healthy(Watched::EndpointSlices, s(61), s(64)), None);
        // A probe sent after it, answered later: the outage lasted until now.
        assert_eq!(
            h.healthy(Watched::EndpointSlices, s(63), s(65)),
            Some((Duration::from_secs(65), 5))
        );
        assert_eq!(h.stale(s(70)), Duration::from_secs(65), "the Node's outage");
        assert_eq!(
            h.healthy(Watched::Node, s(70), s(70)),
            Some((Duration::from_secs(65), 1))
        );
        assert_eq!(
            h.healthy(Watched::Node, s(71), s(71)),
            None,
            "already healthy"
        );
        assert_eq!(h.stale(s(80)), Duration::ZERO);
        // The next error is a new outage, reported again.
        assert_eq!(h.error(Watched::Node, s(90)), ErrorReport::First);
    }
}
