//! The IO half of the Kubernetes source: watches Services and Nodes, runs
//! [`reconcile`](super::reconcile::reconcile) on every change, hands the
//! result to the edge, and writes statuses and Events back.
//!
//! Outages: the watches retry with kube's default backoff; reflector stores
//! only replace their content when a relist completes, and nothing is
//! published before the first lists are in, so an API server that is away
//! (or answers with an error) never empties the edge. The time since the
//! watches were last known healthy is `portico_edge_kubernetes_stale_seconds`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use portico_config::{AddressPool, KubernetesSettings, Node, Service, ServiceKey};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::reconcile::{reconcile, Condition, Context, Desired, StatusUpdate};
use crate::metrics::EdgeMetrics;

/// How long a burst of changes is collected before one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// How often the reconcile runs without a change (retries failed writes).
const RESYNC: Duration = Duration::from_secs(10);

/// Status writes (and Events) in flight at once. One at a time, 1,000 new
/// Services took 0.5 s of writes, during which Services created meanwhile
/// waited for the next pass; a bound keeps a relist from flooding the API
/// server.
const API_WRITES_IN_FLIGHT: usize = 16;
/// The field manager / reporting controller name.
pub const CONTROLLER: &str = "portico-edge";

/// What the cluster contributes to the edge's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterModel {
    /// Our Services, with their addresses.
    pub services: Vec<Service>,
    /// The cluster's Nodes.
    pub nodes: Vec<Node>,
}

/// A running Kubernetes source.
pub struct ClusterSource {
    model: watch::Receiver<Option<Arc<ClusterModel>>>,
    pools: watch::Sender<Vec<AddressPool>>,
    unhealthy: watch::Sender<BTreeSet<ServiceKey>>,
    tasks: Vec<JoinHandle<()>>,
}

impl ClusterSource {
    /// Starts watching. The model stays `None` until the first lists of
    /// Services and Nodes are complete.
    pub fn start(
        client: Client,
        settings: KubernetesSettings,
        pools: Vec<AddressPool>,
        metrics: EdgeMetrics,
    ) -> ClusterSource {
        let changed = Arc::new(Notify::new());
        let health = Arc::new(WatchHealth::new());
        let (services, svc_task) =
            watch_all::<core::Service>(client.clone(), "Services", &changed, &health);
        let (nodes, node_task) =
            watch_all::<core::Node>(client.clone(), "Nodes", &changed, &health);
        let (model_tx, model) = watch::channel(None);
        let (pools_tx, pools_rx) = watch::channel(pools);
        let (unhealthy_tx, unhealthy_rx) = watch::channel(BTreeSet::new());
        let stale = {
            let health = health.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    metrics.kube_stale.set(health.stale().as_secs_f64());
                }
            })
        };
        health.starting(PROBE);
        let probe = tokio::spawn(probe(client.clone(), health.clone()));
        let main = tokio::spawn(
            Loop {
                client,
                settings,
                services,
                nodes,
                changed,
                pools: pools_rx,
                unhealthy: unhealthy_rx,
                model: model_tx,
                metrics,
                written: BTreeSet::new(),
                posted: BTreeMap::new(),
            }
            .run(),
        );
        ClusterSource {
            model,
            pools: pools_tx,
            unhealthy: unhealthy_tx,
            tasks: vec![svc_task, node_task, stale, probe, main],
        }
    }

    /// The model, updated after every reconcile that changed it.
    pub fn model(&self) -> watch::Receiver<Option<Arc<ClusterModel>>> {
        self.model.clone()
    }

    /// New address pools (after a config reload).
    pub fn set_pools(&self, pools: Vec<AddressPool>) {
        self.pools.send_if_modified(|p| {
            let changed = *p != pools;
            *p = pools;
            changed
        });
    }

    /// The Services whose every node is down, as the edge sees them now
    /// (they get a `NoHealthyNodes` Event).
    pub fn set_unhealthy(&self, services: BTreeSet<ServiceKey>) {
        self.unhealthy.send_if_modified(|s| {
            let changed = *s != services;
            *s = services;
            changed
        });
    }

    /// Stops every watch.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Which watches (and the probe) are failing, and since when.
struct WatchHealth {
    /// Per watch: since when it has been failing (or not yet listed).
    failing_since: Mutex<BTreeMap<&'static str, Instant>>,
}

impl WatchHealth {
    fn new() -> Self {
        WatchHealth {
            failing_since: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Instant>> {
        self.failing_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn starting(&self, what: &'static str) {
        self.lock().insert(what, Instant::now());
    }

    /// Returns whether the watch was failing before.
    fn ok(&self, what: &'static str) -> bool {
        self.lock().remove(what).is_some()
    }

    /// Returns whether this is the first failure of an outage.
    fn failed(&self, what: &'static str) -> bool {
        self.failed_since(what, Instant::now())
    }

    /// Like [`Self::failed`], the outage counted from `since` (the last
    /// time it worked).
    fn failed_since(&self, what: &'static str, since: Instant) -> bool {
        let mut map = self.lock();
        if map.contains_key(what) {
            false
        } else {
            map.insert(what, since);
            true
        }
    }

    /// How long the API server has not been answering (zero while it
    /// does). Only the probe counts: a healthy watch on a quiet cluster
    /// yields nothing for minutes, so silence from a watch proves nothing.
    fn stale(&self) -> Duration {
        self.lock()
            .get(PROBE)
            .map(|since| since.elapsed())
            .unwrap_or_default()
    }
}

/// The probe's name in [`WatchHealth`].
const PROBE: &str = "API server";

/// How often the API server is asked whether it answers at all.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Asks the API server for one Node's metadata every [`PROBE_INTERVAL`]: a
/// watch on a quiet cluster says nothing for minutes, and one whose server
/// hangs says nothing until the client's read timeout (minutes too), so
/// the watches alone cannot tell a quiet cluster from an absent one.
async fn probe(client: Client, health: Arc<WatchHealth>) {
    const WHAT: &str = PROBE;
    let nodes: Api<core::Node> = Api::all(client);
    let params = kube::api::ListParams::default().limit(1);
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Staleness counts from the last answer, not from the failed probe
    // that noticed its absence.
    let mut last_answer = Instant::now();
    loop {
        tick.tick().await;
        let asked = Instant::now();
        match tokio::time::timeout(PROBE_INTERVAL, nodes.list_metadata(&params)).await {
            Ok(Ok(_)) => {
                last_answer = asked;
                if health.ok(WHAT) {
                    tracing::info!("the API server answers again");
                }
            }
            Ok(Err(e)) => {
                if health.failed_since(WHAT, last_answer) {
                    tracing::warn!(error = %e, "the API server does not answer; serving the last view");
                }
            }
            Err(_) => {
                if health.failed_since(WHAT, last_answer) {
                    tracing::warn!(timeout = ?PROBE_INTERVAL, "the API server does not answer; serving the last view");
                }
            }
        }
    }
}

/// Watches every object of a kind into a reflector store; every change
/// (and every completed relist) wakes the reconcile loop.
fn watch_all<K>(
    client: Client,
    what: &'static str,
    changed: &Arc<Notify>,
    health: &Arc<WatchHealth>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let api: Api<K> = Api::all(client);
    let changed = changed.clone();
    let health = health.clone();
    health.starting(what);
    let task = tokio::spawn(async move {
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        );
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => {
                    if health.ok(what) {
                        tracing::info!(what, "watching the API server again");
                    }
                    changed.notify_one();
                }
                Err(e) => {
                    if health.failed(what) {
                        tracing::warn!(what, error = %e, "watch failed; keeping the last view and retrying with backoff");
                    } else {
                        tracing::debug!(what, error = %e, "watch still failing");
                    }
                }
            }
        }
    });
    (store, task)
}

struct Loop {
    client: Client,
    settings: KubernetesSettings,
    services: Store<core::Service>,
    nodes: Store<core::Node>,
    changed: Arc<Notify>,
    pools: watch::Receiver<Vec<AddressPool>>,
    unhealthy: watch::Receiver<BTreeSet<ServiceKey>>,
    model: watch::Sender<Option<Arc<ClusterModel>>>,
    metrics: EdgeMetrics,
    /// Services whose status we wrote (cleared again when they leave us).
    written: BTreeSet<ServiceKey>,
    /// Conditions already told as Events, per Service.
    posted: BTreeMap<ServiceKey, BTreeSet<Condition>>,
}

impl Loop {
    async fn run(mut self) {
        // Nothing is decided from a half-listed cluster.
        if self.services.wait_until_ready().await.is_err()
            || self.nodes.wait_until_ready().await.is_err()
        {
            return;
        }
        tracing::info!("Kubernetes source ready");
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: CONTROLLER.into(),
                instance: hostname(),
            },
        );
        loop {
            let desired = reconcile(
                &self.services.state(),
                &self.nodes.state(),
                &Context {
                    kubernetes: self.settings.clone(),
                    pools: self.pools.borrow().clone(),
                    written: self.written.clone(),
                    unhealthy: self.unhealthy.borrow().clone(),
                },
            );
            self.publish(&desired);
            self.write_statuses(&desired.statuses).await;
            self.post_events(&desired, &recorder).await;

            tokio::select! {
                _ = self.changed.notified() => {
                    // Let a burst (a relist, a rollout) settle into one pass.
                    tokio::time::sleep(DEBOUNCE).await;
                }
                r = self.pools.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                r = self.unhealthy.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    fn publish(&self, desired: &Desired) {
        for p in &desired.problems {
            tracing::debug!(problem = %p, "object left out or read around");
        }
        let model = ClusterModel {
            services: desired.services.clone(),
            nodes: desired.nodes.clone(),
        };
        self.model.send_if_modified(|current| {
            if current.as_deref() == Some(&model) {
                false
            } else {
                *current = Some(Arc::new(model));
                true
            }
        });
    }

    async fn write_statuses(&mut self, updates: &[StatusUpdate]) {
        let writes: Vec<_> = updates
            .iter()
            .map(|update| write_status(self.client.clone(), update))
            .collect();
        let mut results = futures::stream::iter(writes).buffer_unordered(API_WRITES_IN_FLIGHT);
        while let Some((update, result)) = results.next().await {
            match result {
                Ok(_) => {
                    self.metrics
                        .kube_status_writes
                        .with_label_values(&["ok"])
                        .inc();
                    tracing::info!(service = %update.key, ingress = ?update.ingress, "status written");
                    if update.ingress.is_empty() {
                        self.written.remove(&update.key);
                    } else {
                        self.written.insert(update.key.clone());
                    }
                }
                Err(e) => {
                    self.metrics
                        .kube_status_writes
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(service = %update.key, error = %e, "status write failed; retrying at the next pass");
                }
            }
        }
    }

    async fn post_events(&mut self, desired: &Desired, recorder: &Recorder) {
        self.posted
            .retain(|key, _| desired.conditions.contains_key(key));
        let mut to_post = Vec::new();
        for (key, conditions) in &desired.conditions {
            let posted = self.posted.entry(key.clone()).or_default();
            // Conditions that went away may be told again when they return.
            posted.retain(|c| conditions.contains(c));
            let new: Vec<Condition> = conditions.difference(posted).cloned().collect();
            if new.is_empty() {
                continue;
            }
            let Some(svc) = self
                .services
                .get(&reflector::ObjectRef::new(&key.name).within(&key.namespace))
            else {
                continue;
            };
            let reference = svc.object_ref(&());
            to_post.extend(new.into_iter().map(|c| (key, c, reference.clone())));
        }
        let posts: Vec<_> = to_post
            .into_iter()
            .map(|(key, c, reference)| post_event(recorder, key, c, reference))
            .collect();
        let mut results = futures::stream::iter(posts).buffer_unordered(API_WRITES_IN_FLIGHT);
        while let Some((key, c, result)) = results.next().await {
            let kind = if c.warning { "Warning" } else { "Normal" };
            match result {
                Ok(()) => {
                    self.metrics.kube_events.with_label_values(&[kind]).inc();
                    if c.warning {
                        tracing::warn!(service = %key, reason = c.reason, message = %c.message, "event");
                    } else {
                        tracing::info!(service = %key, reason = c.reason, message = %c.message, "event");
                    }
                    self.posted.entry(key.clone()).or_default().insert(c);
                }
                Err(e) => {
                    tracing::warn!(service = %key, reason = c.reason, error = %e, "event not recorded; retrying at the next pass");
                }
            }
        }
    }
}

/// Writes one Service's `status.loadBalancer`.
async fn write_status(
    client: Client,
    update: &StatusUpdate,
) -> (&StatusUpdate, Result<core::Service, String>) {
    let api: Api<core::Service> = Api::namespaced(client, &update.key.namespace);
    let ingress: Vec<serde_json::Value> = update
        .ingress
        .iter()
        .map(|ip| serde_json::json!({"ip": ip.to_string(), "ipMode": "Proxy"}))
        .collect();
    let patch = if ingress.is_empty() {
        serde_json::json!({"status": {"loadBalancer": {"ingress": null}}})
    } else {
        serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}})
    };
    let params = PatchParams::default();
    let result =
        with_timeout(api.patch_status(&update.key.name, &params, &Patch::Merge(&patch))).await;
    (update, result)
}

/// Records condition `c` of Service `key` as an Event on `reference`.
async fn post_event<'a>(
    recorder: &Recorder,
    key: &'a ServiceKey,
    c: Condition,
    reference: k8s_openapi::api::core::v1::ObjectReference,
) -> (&'a ServiceKey, Condition, Result<(), String>) {
    let event = Event {
        type_: if c.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: c.reason.into(),
        note: Some(c.message.clone()),
        action: "EnsureLoadBalancer".into(),
        secondary: None,
    };
    let result = with_timeout(recorder.publish(&event, &reference)).await;
    (key, c, result)
}

/// One API call may take this long before it is given up (and retried at
/// the next pass): a hung API server must not stall the loop.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

async fn with_timeout<T>(call: impl Future<Output = Result<T, kube::Error>>) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Builds a client: from `kubeconfig` when given, else as `kubectl` finds
/// one (`KUBECONFIG`, `~/.kube/config`, the in-cluster service account).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration found: {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("cannot build a Kubernetes client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_counts_from_the_last_answer_and_only_for_the_probe() {
        let health = WatchHealth::new();
        assert_eq!(health.stale(), Duration::ZERO);
        // A failing watch alone says nothing about the API server.
        assert!(health.failed("Services"));
        assert_eq!(health.stale(), Duration::ZERO);
        let last_answer = Instant::now() - Duration::from_secs(5);
        assert!(health.failed_since(PROBE, last_answer));
        assert!(
            !health.failed_since(PROBE, Instant::now()),
            "one outage, one report"
        );
        assert!(health.stale() >= Duration::from_secs(5));
        assert!(health.ok(PROBE));
        assert_eq!(health.stale(), Duration::ZERO);
    }
}
