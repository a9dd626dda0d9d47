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
use k8s_openapi::api::events::v1 as events;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use portico_config::{AddressPool, KubernetesSettings, Node, Service, ServiceKey};
use portico_kube_watch::{ClientError, KubeOptions, WatchMetrics, Watches};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::events::{self as told, Told};
use super::leader::Leadership;
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
/// The edge's name towards the API server: the field manager of every
/// write, the User-Agent of every request, the reporting controller of
/// its Events.
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
    /// Whether this edge writes (the leader election's verdict).
    leader: watch::Receiver<bool>,
    /// The leader election; it releases the Lease once every receiver of
    /// `leader` is gone.
    election: JoinHandle<()>,
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
            &KubeOptions::new(CONTROLLER),
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
        // A follower until elected: nothing is written meanwhile.
        let (leader_tx, leader) = watch::channel(false);
        let election = tokio::spawn(campaign(
            client.clone(),
            settings.leader_election.clone(),
            leader_tx,
        ));
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
                posted: BTreeMap::new(),
                told: BTreeSet::new(),
                leader: leader.clone(),
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
            leader,
            election,
        }
    }

    /// Whether this edge writes statuses and Events now.
    pub fn leading(&self) -> bool {
        *self.leader.borrow()
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

    /// Stops every watch, and releases the Lease when this edge holds it.
    pub async fn stop(self) {
        self.main.abort();
        // Its end drops its view of the leadership.
        if let Err(e) = self.main.await {
            if !e.is_cancelled() {
                tracing::error!(error = %e, "Kubernetes source task failed");
            }
        }
        drop(self.watches);
        drop(self.leader);
        if let Err(e) = self.election.await {
            tracing::error!(error = %e, "leader election task failed");
        }
    }
}

/// Runs the election and copies its verdict into `leader` until every
/// receiver of `leader` is gone; then releases the Lease.
async fn campaign(
    client: Client,
    settings: Option<portico_config::LeaderElection>,
    leader: watch::Sender<bool>,
) {
    let leadership = tokio::select! {
        l = Leadership::start(client, settings.as_ref()) => l,
        () = leader.closed() => return,
    };
    let mut verdict = leadership.leader();
    loop {
        let leading = *verdict.borrow_and_update();
        leader.send_if_modified(|l| {
            let changed = *l != leading;
            *l = leading;
            changed
        });
        tokio::select! {
            r = verdict.changed() => {
                if r.is_err() {
                    break;
                }
            }
            () = leader.closed() => break,
        }
    }
    drop(verdict);
    leadership.stop().await;
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
    /// Conditions already told as Events (or refused for good), per
    /// Service.
    posted: BTreeMap<ServiceKey, BTreeSet<Condition>>,
    /// The Events an earlier run of the edge recorded, found at the start:
    /// a condition that still holds is not told again after a restart.
    told: BTreeSet<Told>,
    /// Whether this edge writes (leader election).
    leader: watch::Receiver<bool>,
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
        self.told = already_told(&self.client).await;
        let instance = hostname().unwrap_or_else(|| CONTROLLER.to_string());
        loop {
            let desired = reconcile(
                &self.services.state(),
                &self.nodes.state(),
                &Context {
                    kubernetes: self.settings.clone(),
                    pools: self.pools.borrow().clone(),
                    field_manager: CONTROLLER.to_string(),
                    unhealthy: self.unhealthy.borrow().clone(),
                    not_served: self.not_served.borrow().clone(),
                },
            );
            self.publish(&desired);
            let leading = *self.leader.borrow_and_update();
            self.metrics.leader.set(i64::from(leading));
            if leading {
                self.write_statuses(&desired.statuses).await;
                self.post_events(&desired, &instance).await;
            }

            tokio::select! {
                r = self.leader.changed() => {
                    if r.is_err() {
                        return;
                    }
                    if *self.leader.borrow() {
                        tracing::info!("leading: this edge writes statuses and Events");
                        // What the previous leader told is not told again.
                        self.told = already_told(&self.client).await;
                    } else {
                        tracing::info!("following: another edge writes statuses and Events");
                    }
                }
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

    async fn post_events(&mut self, desired: &Desired, instance: &str) {
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
            let uid = reference.uid.clone().unwrap_or_default();
            for c in new {
                // Recorded by an earlier run and still true: not again.
                if self.told.remove(&told::told_key(&uid, &c)) {
                    posted.insert(c);
                    continue;
                }
                to_post.push((key, c, reference.clone()));
            }
        }
        let client = &self.client;
        let posts: Vec<_> = to_post
            .into_iter()
            .map(|(key, c, reference)| post_event(client, instance, key, c, reference))
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
                Err(EventError::Final(e)) => {
                    // Asking again every pass cannot help (the namespace is
                    // going away, the Event is refused as it is): the
                    // condition counts as told, and is logged instead.
                    tracing::warn!(service = %key, reason = c.reason, message = %c.message, error = %e, "event refused for good; not retried");
                    self.posted.entry(key.clone()).or_default().insert(c);
                }
                Err(EventError::Retry(e)) => {
                    tracing::warn!(service = %key, reason = c.reason, error = %e, "event not recorded; retrying at the next pass");
                }
            }
        }
    }
}

/// Why an Event was not recorded.
#[derive(Debug)]
enum EventError {
    /// The API server refused it for good ([`told::refusal_is_final`]).
    Final(String),
    /// Worth another try (no answer, overload, a server error).
    Retry(String),
}

/// The Events an earlier run recorded that are still there (a failure to
/// list them only means they may be told again).
async fn already_told(client: &Client) -> BTreeSet<Told> {
    let api: Api<events::Event> = Api::all(client.clone());
    let params = ListParams::default().fields(&format!("reportingController={CONTROLLER}"));
    match with_timeout(api.list(&params)).await {
        Ok(list) => told::told_by(&list.items, CONTROLLER),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the Events already recorded; conditions that still hold will be told again");
            BTreeSet::new()
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
    let ingress = if ingress.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::Array(ingress)
    };
    // A merge patch carrying a resourceVersion is a precondition: the API
    // server answers 409 if the object changed since it was read.
    let mut patch = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
    if let Some(version) = &update.resource_version {
        patch["metadata"] = serde_json::json!({"resourceVersion": version});
    }
    let params = PatchParams {
        field_manager: Some(CONTROLLER.into()),
        ..PatchParams::default()
    };
    let result =
        with_timeout(api.patch_status(&update.key.name, &params, &Patch::Merge(&patch))).await;
    (update, result)
}

/// Records condition `c` of Service `key` as an Event on `reference`.
async fn post_event<'a>(
    client: &Client,
    instance: &str,
    key: &'a ServiceKey,
    c: Condition,
    reference: core::ObjectReference,
) -> (&'a ServiceKey, Condition, Result<(), EventError>) {
    let namespace = reference.namespace.clone().unwrap_or_default();
    let event = told::event(
        &c,
        reference,
        CONTROLLER,
        instance,
        k8s_openapi::jiff::Timestamp::now(),
    );
    let api: Api<events::Event> = Api::namespaced(client.clone(), &namespace);
    let params = PostParams {
        field_manager: Some(CONTROLLER.into()),
        ..PostParams::default()
    };
    let result = match tokio::time::timeout(CALL_TIMEOUT, api.create(&params, &event)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(kube::Error::Api(status))) if told::refusal_is_final(status.code) => {
            Err(EventError::Final(status.to_string()))
        }
        Ok(Err(e)) => Err(EventError::Retry(e.to_string())),
        Err(_) => Err(EventError::Retry(format!(
            "no answer within {CALL_TIMEOUT:?}"
        ))),
    };
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

pub(super) fn hostname() -> Option<String> {
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
        ..KubeOptions::new(CONTROLLER)
    };
    portico_kube_watch::client(&opts).await
}

#[cfg(test)]
mod tests {
    use kube::api::{DeleteParams, PostParams};
    use portico_config::AddressRange;
    use portico_kube_fake::FakeApiServer;
    use serde_json::json;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);
    const OTHER: &str = "example.com/other-lb";

    fn lb(name: &str, class: &str) -> core::Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name},
            "spec": {
                "type": "LoadBalancer",
                "loadBalancerClass": class,
                // The API server allocates each its own NodePort.
                "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
            },
        }))
        .expect("a Service")
    }

    /// A test API server with the namespace `shop`.
    async fn fake_with_shop() -> FakeApiServer {
        let fake = FakeApiServer::start().await;
        fake.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
            .expect("namespace");
        fake
    }

    fn pool() -> Vec<AddressPool> {
        vec![AddressPool {
            name: "public".into(),
            ranges: vec![AddressRange {
                first: "203.0.113.1".parse().unwrap(),
                last: "203.0.113.9".parse().unwrap(),
            }],
        }]
    }

    fn ingress_of(fake: &FakeApiServer, name: &str) -> Vec<String> {
        fake.get::<core::Service>(Some("shop"), name)
            .and_then(|s| s.status?.load_balancer?.ingress)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.ip)
            .collect()
    }

    async fn wait_ingress(fake: &FakeApiServer, name: &str, want: &[&str]) {
        let ok = fake
            .wait_for(
                |s| {
                    let got: Vec<String> = s
                        .get_as::<core::Service>(Some("shop"), name)
                        .and_then(|s| s.status?.load_balancer?.ingress)
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|i| i.ip)
                        .collect();
                    got == want
                },
                WAIT,
            )
            .await;
        assert!(ok, "{name}: {:?}, not {want:?}", ingress_of(fake, name));
    }

    /// Another load-balancer controller writing its status.
    async fn other_controller_writes(api: &Api<core::Service>, name: &str, ip: &str) {
        let params = PatchParams {
            field_manager: Some("other-lb-controller".into()),
            ..PatchParams::default()
        };
        let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
        api.patch_status(name, &params, &Patch::Merge(&patch))
            .await
            .expect("the other controller's status write");
    }

    /// The edge only takes back the status it wrote: a Service moved to
    /// another class, or deleted and re-created under one, keeps the
    /// other controller's ingress, even an address from the edge's pool.
    #[tokio::test]
    async fn a_status_another_controller_wrote_is_left_alone() {
        let fake = fake_with_shop().await;
        let client = fake.client();
        let api: Api<core::Service> = Api::namespaced(client.clone(), "shop");
        let create = PostParams::default();
        for name in ["moved", "recreated"] {
            api.create(&create, &lb(name, "portico.io/edge"))
                .await
                .expect("created");
        }
        let source = ClusterSource::start(
            client,
            KubernetesSettings::default(),
            pool(),
            EdgeMetrics::new(),
        );
        wait_ingress(&fake, "moved", &["203.0.113.1"]).await;
        wait_ingress(&fake, "recreated", &["203.0.113.2"]).await;
        // Written under the edge's own name.
        let moved: core::Service = fake.get(Some("shop"), "moved").unwrap();
        assert!(super::super::reconcile::wrote_ingress(&moved, CONTROLLER));

        // Re-created under another class, whose controller hands out an
        // address the edge's pool also holds.
        api.delete("recreated", &DeleteParams::default())
            .await
            .expect("deleted");
        api.create(&create, &lb("recreated", OTHER))
            .await
            .expect("re-created");
        other_controller_writes(&api, "recreated", "203.0.113.2").await;

        // Moved to another class the only way the API allows (through a
        // type that has none), then served by the other controller.
        let clear_class = json!({"spec": {"type": "ClusterIP", "loadBalancerClass": null}});
        api.patch(
            "moved",
            &PatchParams::default(),
            &Patch::Merge(&clear_class),
        )
        .await
        .expect("demoted");
        wait_ingress(&fake, "moved", &[]).await;
        let other_class = json!({"spec": {"type": "LoadBalancer", "loadBalancerClass": OTHER}});
        api.patch(
            "moved",
            &PatchParams::default(),
            &Patch::Merge(&other_class),
        )
        .await
        .expect("promoted under another class");
        other_controller_writes(&api, "moved", "198.51.100.7").await;

        // A later Service of ours gets its address: the edge has seen
        // everything above, and wrote nothing over the other controller.
        api.create(&create, &lb("later", "portico.io/edge"))
            .await
            .expect("created");
        wait_ingress(&fake, "later", &["203.0.113.1"]).await;
        assert_eq!(ingress_of(&fake, "recreated"), ["203.0.113.2"]);
        assert_eq!(ingress_of(&fake, "moved"), ["198.51.100.7"]);
        let cleared = fake
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
            .filter(|r| r.path.contains("/recreated/"))
            .count();
        assert_eq!(cleared, 2, "one write by the edge, one by the other");
        source.stop().await;
    }

    /// The Events `reason` recorded on Service `name`.
    fn events_of(fake: &FakeApiServer, name: &str, reason: &str) -> Vec<events::Event> {
        fake.read(|s| events_in(s, name, reason))
    }

    fn events_in(store: &portico_kube_fake::Store, name: &str, reason: &str) -> Vec<events::Event> {
        store
            .list_as::<events::Event>()
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    async fn wait_event(fake: &FakeApiServer, name: &str, reason: &str) -> events::Event {
        let ok = fake
            .wait_for(|s| !events_in(s, name, reason).is_empty(), WAIT)
            .await;
        assert!(ok, "no {reason} Event on {name}");
        events_of(fake, name, reason).remove(0)
    }

    fn revision(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
        meta.resource_version.as_deref().unwrap().parse().unwrap()
    }

    /// Events fit the API's limits (the server refuses a longer note), an
    /// address is announced only after the status showing it is written,
    /// and a restarted edge does not tell again what is still true.
    #[tokio::test]
    async fn events_fit_follow_the_status_and_are_not_repeated_after_a_restart() {
        let fake = fake_with_shop().await;
        let client = fake.client();
        let api: Api<core::Service> = Api::namespaced(client.clone(), "shop");
        let create = PostParams::default();
        api.create(&create, &lb("web", "portico.io/edge"))
            .await
            .expect("created");
        // 300 ports without a NodePort: a NoNodePorts note naming them all
        // would be over 2 KiB.
        let ports: Vec<serde_json::Value> = (1..=300)
            .map(|p| json!({"name": format!("p{p}"), "protocol": "TCP", "port": p}))
            .collect();
        let bad: core::Service = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "bad"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "portico.io/edge",
                "allocateLoadBalancerNodePorts": false, "ports": ports},
        }))
        .expect("a Service");
        api.create(&create, &bad).await.expect("created");
        let start = || {
            ClusterSource::start(
                client.clone(),
                KubernetesSettings::default(),
                pool(),
                EdgeMetrics::new(),
            )
        };
        let source = start();
        let assigned = wait_event(&fake, "web", "AddressAssigned").await;
        let web: core::Service = fake.get(Some("shop"), "web").unwrap();
        let shown = ingress_of(&fake, "web");
        assert_eq!(
            assigned.note.as_deref(),
            Some(format!("Assigned {}", shown[0]).as_str())
        );
        assert!(
            revision(&assigned.metadata) > revision(&web.metadata),
            "announced after the status write"
        );
        assert_eq!(assigned.reporting_controller.as_deref(), Some(CONTROLLER));
        let invalid = wait_event(&fake, "bad", "NoNodePorts").await;
        let note = invalid.note.unwrap_or_default();
        assert!(note.len() <= told::NOTE_LIMIT, "{}", note.len());
        assert!(note.ends_with(told::TRUNCATED), "{note}");
        // AddressAssigned on both, NoNodePorts on bad, each posted once
        // under the edge's field manager.
        wait_event(&fake, "bad", "AddressAssigned").await;
        let event_posts = fake
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.contains("/events"))
            .count();
        assert_eq!(event_posts, 3);
        for e in fake.list::<events::Event>() {
            let managers: Vec<_> = e
                .metadata
                .managed_fields
                .iter()
                .flatten()
                .filter_map(|m| m.manager.as_deref())
                .collect();
            assert_eq!(managers, [CONTROLLER]);
        }
        source.stop().await;

        // A new edge: what still holds was told already.
        let source = start();
        api.create(&create, &lb("later", "portico.io/edge"))
            .await
            .expect("created");
        wait_event(&fake, "later", "AddressAssigned").await;
        assert_eq!(events_of(&fake, "web", "AddressAssigned").len(), 1);
        assert_eq!(events_of(&fake, "bad", "NoNodePorts").len(), 1);
        assert_eq!(events_of(&fake, "bad", "AddressAssigned").len(), 1);
        source.stop().await;
    }

    /// An Event the API server refuses for good (its namespace is being
    /// deleted) is not posted again at every pass.
    #[tokio::test]
    async fn an_event_refused_for_good_is_not_retried() {
        let fake = fake_with_shop().await;
        let client = fake.client();
        let create = PostParams::default();
        let mut leaving = lb("web", "portico.io/edge");
        leaving.metadata.namespace = Some("leaving".into());
        fake.create(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "leaving"}}),
        )
        .expect("namespace");
        Api::<core::Service>::namespaced(client.clone(), "leaving")
            .create(&create, &leaving)
            .await
            .expect("created");
        fake.apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "leaving"}, "status": {"phase": "Terminating"}}))
            .expect("namespace being deleted");
        let source = ClusterSource::start(
            client.clone(),
            KubernetesSettings::default(),
            pool(),
            EdgeMetrics::new(),
        );
        let is_post = |r: &portico_kube_fake::RequestRecord| {
            r.method == "POST" && r.path.contains("/namespaces/leaving/events")
        };
        let tried = fake
            .wait_for_requests(|reqs| reqs.iter().any(is_post), WAIT)
            .await;
        assert!(tried, "the AddressAssigned Event was tried");
        // Passes after the refusal: each new Service makes one.
        let api: Api<core::Service> = Api::namespaced(client, "shop");
        for name in ["a", "b", "c"] {
            api.create(&create, &lb(name, "portico.io/edge"))
                .await
                .expect("created");
            wait_event(&fake, name, "AddressAssigned").await;
        }
        let posts = fake.requests().iter().filter(|r| is_post(r)).count();
        assert_eq!(posts, 1, "refused once, never asked again");
        assert!(events_of(&fake, "web", "AddressAssigned").is_empty());
        source.stop().await;
    }

    /// A Service of the edge's class with one port, and annotations.
    fn lb_with(name: &str, protocol: &str, annotations: serde_json::Value) -> core::Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name, "annotations": annotations},
            "spec": {
                "type": "LoadBalancer",
                "loadBalancerClass": "portico.io/edge",
                "ports": [{"name": "p", "protocol": protocol, "port": 53}],
            },
        }))
        .expect("a Service")
    }

    /// The addresses a source serves, by Service.
    fn served(source: &ClusterSource) -> BTreeMap<String, Vec<String>> {
        source
            .model()
            .borrow()
            .as_ref()
            .map(|m| {
                m.services
                    .iter()
                    .map(|s| {
                        (
                            s.key.name.clone(),
                            s.vips.iter().map(|v| v.to_string()).collect(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until both edges serve `want` (Service -> addresses; a
    /// Service without an address is not served) and the statuses show
    /// exactly that.
    async fn agreed(
        fake: &FakeApiServer,
        a: &ClusterSource,
        b: &ClusterSource,
        want: &[(&str, &[&str])],
    ) {
        let want: BTreeMap<String, Vec<String>> = want
            .iter()
            .filter(|(_, ips)| !ips.is_empty())
            .map(|(n, ips)| (n.to_string(), ips.iter().map(|i| i.to_string()).collect()))
            .collect();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let statuses: BTreeMap<String, Vec<String>> = want
                .keys()
                .map(|n| (n.clone(), ingress_of(fake, n)))
                .collect();
            if served(a) == want && served(b) == want && statuses == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "want {want:?}; A serves {:?}, B serves {:?}, statuses {statuses:?}",
                served(a),
                served(b)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Two edges on one API server serve the same addresses through churn
    /// (creations, pool exhaustion, a shared address, a deletion that
    /// frees one), and the statuses the leader writes show exactly that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_edges_serve_the_same_addresses_through_churn() {
        let fake = fake_with_shop().await;
        let api: Api<core::Service> = Api::namespaced(fake.client(), "shop");
        let create = PostParams::default();
        let three = vec![AddressPool {
            name: "public".into(),
            ranges: vec![AddressRange {
                first: "203.0.113.1".parse().unwrap(),
                last: "203.0.113.3".parse().unwrap(),
            }],
        }];
        let start = || {
            ClusterSource::start(
                fake.client(),
                KubernetesSettings::default(),
                three.clone(),
                EdgeMetrics::new(),
            )
        };
        let (a, b) = (start(), start());
        for name in ["s1", "s2"] {
            api.create(&create, &lb(name, "portico.io/edge"))
                .await
                .expect("created");
        }
        agreed(
            &fake,
            &a,
            &b,
            &[("s1", &["203.0.113.1"]), ("s2", &["203.0.113.2"])],
        )
        .await;
        // A TCP and a UDP port of one name share an address.
        let shared = json!({"portico.io/allow-shared-ip": "dns"});
        api.create(&create, &lb_with("dns-tcp", "TCP", shared.clone()))
            .await
            .expect("created");
        api.create(&create, &lb_with("dns-udp", "UDP", shared))
            .await
            .expect("created");
        let with_dns: [(&str, &[&str]); 4] = [
            ("s1", &["203.0.113.1"]),
            ("s2", &["203.0.113.2"]),
            ("dns-tcp", &["203.0.113.3"]),
            ("dns-udp", &["203.0.113.3"]),
        ];
        agreed(&fake, &a, &b, &with_dns).await;
        // The pool is exhausted: s3 gets nothing, on either edge.
        api.create(&create, &lb("s3", "portico.io/edge"))
            .await
            .expect("created");
        tokio::time::sleep(Duration::from_millis(300)).await;
        agreed(&fake, &a, &b, &with_dns).await;
        assert!(ingress_of(&fake, "s3").is_empty());
        // s1 goes: its address goes to s3, on both.
        api.delete("s1", &DeleteParams::default())
            .await
            .expect("deleted");
        agreed(
            &fake,
            &a,
            &b,
            &[
                ("s2", &["203.0.113.2"]),
                ("dns-tcp", &["203.0.113.3"]),
                ("dns-udp", &["203.0.113.3"]),
                ("s3", &["203.0.113.1"]),
            ],
        )
        .await;
        a.stop().await;
        b.stop().await;
    }

    /// Status writes to the Service `name`.
    fn status_writes(fake: &FakeApiServer, name: &str) -> usize {
        fake.requests()
            .into_iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with(&format!("/{name}/status")))
            .count()
    }

    /// Two edges watch one cluster: both serve the same addresses, one
    /// writes. When the writer dies without a word (its tasks end as a
    /// killed process's do: nothing releases the Lease), the other takes
    /// the writes over within the lease duration and 2 s, and tells no
    /// Event again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_of_two_edges_writes_and_the_other_takes_over_when_it_dies() {
        let fake = fake_with_shop().await;
        let api: Api<core::Service> = Api::namespaced(fake.client(), "shop");
        let create = PostParams::default();
        api.create(&create, &lb("web", "portico.io/edge"))
            .await
            .expect("created");
        let lease = Duration::from_secs(3);
        let settings = KubernetesSettings {
            leader_election: Some(portico_config::LeaderElection {
                lease_duration: lease,
                ..portico_config::LeaderElection::default()
            }),
            ..KubernetesSettings::default()
        };
        // Edge A in a runtime of its own, so that it can die as a process
        // does: its tasks dropped, none of them running another step.
        let runtime_a = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let a = {
            let _in_a = runtime_a.enter();
            ClusterSource::start(fake.client(), settings.clone(), pool(), EdgeMetrics::new())
        };
        wait_ingress(&fake, "web", &["203.0.113.1"]).await;
        assert!(a.leading(), "alone, A leads");

        let metrics_b = EdgeMetrics::new();
        let b = ClusterSource::start(fake.client(), settings.clone(), pool(), metrics_b.clone());
        let mut model_b = b.model();
        tokio::time::timeout(WAIT, model_b.wait_for(Option::is_some))
            .await
            .expect("B's first model")
            .expect("B runs");
        // B serves what A serves, and follows.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*a.model().borrow(), *b.model().borrow());
        assert!(!b.leading(), "B follows while A holds the Lease");
        assert_eq!(metrics_b.leader.get(), 0);
        assert_eq!(status_writes(&fake, "web"), 1, "only the leader wrote");
        assert_eq!(events_of(&fake, "web", "AddressAssigned").len(), 1);

        // A dies.
        let died = tokio::time::Instant::now();
        runtime_a.shutdown_background();
        drop(a);
        // Only B can write the status of a Service created now.
        api.create(&create, &lb("later", "portico.io/edge"))
            .await
            .expect("created");
        let ok = fake
            .wait_for(
                |s| {
                    s.get_as::<core::Service>(Some("shop"), "later")
                        .and_then(|s| s.status?.load_balancer?.ingress)
                        .is_some_and(|i| !i.is_empty())
                },
                lease + Duration::from_secs(5),
            )
            .await;
        let took = died.elapsed();
        assert!(ok, "B never wrote later's status");
        eprintln!("writes resumed {took:?} after the leader died (lease {lease:?})");
        assert!(
            took <= lease + Duration::from_secs(2),
            "writes resumed after {took:?}"
        );
        assert_eq!(ingress_of(&fake, "later"), ["203.0.113.2"]);
        assert!(b.leading());
        assert_eq!(metrics_b.leader.get(), 1);
        // What A told is not told again; web's status was not rewritten.
        wait_event(&fake, "later", "AddressAssigned").await;
        assert_eq!(events_of(&fake, "web", "AddressAssigned").len(), 1);
        assert_eq!(status_writes(&fake, "web"), 1);
        b.stop().await;
    }
}
