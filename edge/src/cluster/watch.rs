//! The IO half of the Kubernetes source: watches Services and Nodes, runs
//! [`reconcile`](super::reconcile::reconcile) on every change, hands the
//! result to the edge, and writes statuses and Events back.
//!
//! The watches, their health and the API probe are `portico-kube-watch`'s
//! (the plumbing the node agent shares); this module says what to watch.
//!
//! Outages: the watches retry with kube's default backoff; reflector stores
//! only replace their content when a relist completes, and nothing is
//! published before the first lists are in, so an API server that is away
//! (or answers with an error) never empties the edge. The time since the
//! API server last answered (a one-Node list every 2 s) is
//! `portico_edge_kubernetes_stale_seconds`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use portico_config::{AddressPool, KubernetesSettings, Node, Service, ServiceKey};
use portico_kube_watch::{ClientError, KubeOptions, WatchMetrics, Watches};
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
    not_served: watch::Sender<BTreeMap<ServiceKey, String>>,
    /// The watches and the API probe; dropping it stops them.
    watches: Watches,
    main: JoinHandle<()>,
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
        // The client was built by [`client`] with the default options,
        // so its read timeout outlasts watches of the default length.
        let mut watches = Watches::start(
            &KubeOptions::default(),
            Api::<core::Node>::all(client.clone()),
            ListParams::default(),
            WatchMetrics {
                errors: None,
                stale_seconds: Some(metrics.kube_stale.clone()),
            },
        );
        // Every Service: which are ours depends on `spec.loadBalancerClass`
        // (or its absence, with `defaultClass`), which no selector can
        // pick; and a Service that stops being ours must still be seen, to
        // clear the status the edge wrote.
        let services = watches.watch_into_store(
            "services",
            Api::all(client.clone()),
            watcher::Config::default(),
        );
        // Every Node: any node may carry a NodePort's traffic.
        let nodes = watches.watch_into_store(
            "nodes",
            Api::all(client.clone()),
            watcher::Config::default(),
        );
        let changed = watches.changes();
        let (model_tx, model) = watch::channel(None);
        let (pools_tx, pools_rx) = watch::channel(pools);
        let (unhealthy_tx, unhealthy_rx) = watch::channel(BTreeSet::new());
        let (not_served_tx, not_served_rx) = watch::channel(BTreeMap::new());
        let main = tokio::spawn(
            Loop {
                client,
                settings,
                services,
                nodes,
                changed,
                pools: pools_rx,
                unhealthy: unhealthy_rx,
                not_served: not_served_rx,
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
            not_served: not_served_tx,
            watches,
            main,
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

    /// The Services the edge leaves out although they are ours (the
    /// descriptor budget cannot afford them), with why (they get a
    /// `NotServed` Event).
    pub fn set_not_served(&self, services: BTreeMap<ServiceKey, String>) {
        self.not_served.send_if_modified(|s| {
            let changed = *s != services;
            *s = services;
            changed
        });
    }

    /// Stops every watch.
    pub fn stop(self) {
        self.main.abort();
        drop(self.watches);
    }
}

struct Loop {
    client: Client,
    settings: KubernetesSettings,
    services: Store<core::Service>,
    nodes: Store<core::Node>,
    changed: Arc<Notify>,
    pools: watch::Receiver<Vec<AddressPool>>,
    unhealthy: watch::Receiver<BTreeSet<ServiceKey>>,
    not_served: watch::Receiver<BTreeMap<ServiceKey, String>>,
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
                    not_served: self.not_served.borrow().clone(),
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
                r = self.not_served.changed() => {
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

/// Builds the edge's client: from `kubeconfig` when given, else as
/// `kubectl` finds one, with the shared read timeout.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ClientError> {
    let opts = KubeOptions {
        kubeconfig: kubeconfig.map(Path::to_path_buf),
        ..KubeOptions::default()
    };
    portico_kube_watch::client(&opts).await
}
