//! The Kubernetes API source: watches the Services labelled for this proxy,
//! their EndpointSlices and this node's Node, and turns the watch caches into
//! the same [`Snapshot`] the manifest directory gives, for the same planner.
//!
//! Two layers:
//! - pure: [`snapshot_from_objects`] / [`Stores::snapshot`] (cached objects
//!   -> `Snapshot` plus the objects that did not convert) and [`Debouncer`]
//!   (a burst of changes -> one sync). The unit tests feed reflector stores
//!   directly and never contact a server.
//! - IO: [`KubeSource::start`] runs the watches, their health and the API
//!   probe with `portico-kube-watch` (the plumbing the edge shares: the
//!   client, watcher -> reflector stores, logging of failing watches); this
//!   module only says what to watch.
//!
//! Outage behaviour: a reflector replaces its store only when a (re)list has
//! completed (`InitDone`), and a watch that fails or an API server that goes
//! away leaves the store as it was. So the caches always hold the last
//! complete state; the agent waits for all three to be listed once before its
//! first sync (never a sync from a half-filled cache that would delete the
//! rules of Services not listed yet), and its periodic resync keeps repairing
//! drift from that last good state while the API is away. A failing watch is
//! logged once when it starts failing, then reminded every minute, and once
//! when it recovers; the stale-seconds gauge says since when the API server
//! has not answered the probe (a one-object list every 2 s), so a silent
//! server shows within seconds.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::ResourceExt as _;
use portico_config::kube::{
    namespaced_key, read_endpoint_slice, read_node, read_service, FieldProblem, Read,
};
use portico_config::names::{SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL};
use portico_config::ServiceKey;
use portico_kube_watch::{ClientError, KubeOptions, WatchMetrics, Watches};
use tokio::sync::Notify;

use crate::manifests::Snapshot;

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No client could be built (the kubeconfig, the environment, TLS).
    #[error(transparent)]
    Client(#[from] ClientError),
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
// IO: the watches (portico-kube-watch)
// ---------------------------------------------------------------------------

/// The running watches and their caches. Dropping it stops the watches.
pub struct KubeSource {
    stores: Stores,
    changes: Arc<Notify>,
    // Held for its tasks: dropping it stops the watches and the probe.
    _watches: Watches,
}

impl KubeSource {
    /// Starts the three watches (tasks on the current runtime):
    /// - Services labelled [`service_selector`]`(proxy_name)`;
    /// - every EndpointSlice that has the `kubernetes.io/service-name` label;
    /// - the Node [`node_selector`]`(node_name)`;
    ///
    /// and the API probe, a one-object list of that same Node every 2 s
    /// (the agent may list Nodes, and the answer is one small object),
    /// whose last answer sets `metrics.stale_seconds`. `metrics.errors`
    /// counts watch errors by `resource` ([`Watched::as_str`]).
    pub fn start(
        client: kube::Client,
        node_name: &str,
        proxy_name: &str,
        opts: &KubeOptions,
        metrics: WatchMetrics,
    ) -> Self {
        let nodes_api = Api::<core::Node>::all(client.clone());
        let mut watches = Watches::start(
            opts,
            nodes_api.clone(),
            ListParams::default().fields(&node_selector(node_name)),
            metrics,
        );
        // Only the Services labelled for this proxy: the label is how a
        // Service picks its proxy (kube-proxy skips the labelled ones), and
        // the rest of the cluster's Services would only cost memory.
        let services = watches.watch_into_store(
            Watched::Services.as_str(),
            Api::<core::Service>::all(client.clone()),
            watcher::Config::default().labels(&service_selector(proxy_name)),
        );
        // All slices, not only our Services': the proxy-name label is on
        // the Service and not copied to its slices, so no selector can
        // pick them. Narrowing the watch to named Services instead would
        // restart it (a relist) at every Service change, and a Service
        // that gets our label later would wait for that relist to have
        // endpoints. kube-proxy watches every slice too; the snapshot
        // keeps only our Services' slices.
        let slices = watches.watch_into_store(
            Watched::EndpointSlices.as_str(),
            Api::<discovery::EndpointSlice>::all(client),
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
        );
        // Only this node's Node: a large cluster's Nodes change all the
        // time (status updates), and the agent needs no Node but its own.
        let nodes = watches.watch_into_store(
            Watched::Node.as_str(),
            nodes_api,
            watcher::Config::default().fields(&node_selector(node_name)),
        );
        KubeSource {
            stores: Stores {
                services,
                slices,
                nodes,
            },
            changes: watches.changes(),
            _watches: watches,
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
        self.changes.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::runtime::reflector::{self, store::Writer};
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
                key: portico_config::names::TO_BE_DELETED_TAINT.into(),
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
}
