//! The agent's loop: read the objects, plan, sync the kernel, serve health.
//!
//! The objects come from one of two sources ([`Source`]):
//! - a manifest directory: every poll the agent checks whether it changed
//!   (a cheap fingerprint); when it did, it reloads, plans and sends only
//!   the changes;
//! - the Kubernetes API ([`crate::kube_source`]): watches fill caches; the
//!   first sync waits until every cache has been listed once, then a burst
//!   of changes (debounced) gives one sync. While the API is away the caches
//!   keep the last complete state, so the rules stay as they are.
//!
//! Either way the objects go through one incremental [`Planner`]: only the
//! Services whose objects changed are planned again, and only their rules
//! are diffed and sent (see [`Agent::sync_snapshot`]).
//!
//! After a sync that changed a UDP Service port's destinations or serving
//! endpoints, and after every full resync, the agent deletes the conntrack
//! entries of UDP flows that no serving endpoint answers any more (see
//! [`crate::plan::UdpTargets`]), so a client that keeps sending moves on
//! with its next datagram, as kube-proxy does.
//!
//! Every sync period the agent recreates the table in one
//! transaction whatever the kernel holds, which repairs drift (a
//! hand-deleted table comes back). A successful sync, changed or not,
//! refreshes the `/healthz` freshness that the edge checks; a failing one
//! lets it go stale, so the edge stops sending here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use portico_config::cluster::{ClusterService, EndpointSlice};
use portico_config::Node;
use portico_config::{ServiceKey, TrafficPolicy};
use portico_conntrack::{Conntrack, Protocol};
use portico_kube_watch::{KubeOptions, WatchMetrics};

use crate::health::{HealthServerError, HealthState, NodeHealthServer, ServiceHealthServers};
use crate::kube_source::{Debouncer, KubeError, KubeSource};
use crate::manifests::{self, Snapshot};
use crate::metrics::AgentMetrics;
use crate::nft::NftBackend;
use crate::plan::{PlanOptions, Planner, UdpTargets};
use crate::sync::{SyncOutcome, Syncer};

/// A burst of Kubernetes changes is synced once no change came for this long...
const DEBOUNCE_QUIET: Duration = Duration::from_millis(10);
/// ...or this long after its first change, whichever comes first.
const DEBOUNCE_MAX: Duration = Duration::from_millis(100);

/// Where the agent reads Services, EndpointSlices and its Node from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory of Kubernetes manifests, polled for changes (debugging,
    /// the lab).
    Manifests(PathBuf),
    /// The Kubernetes API, watched.
    Kubernetes(KubeOptions),
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Where the objects come from.
    pub source: Source,
    /// This node's name (`--node-name` or the downward API's `NODE_NAME`).
    pub node_name: String,
    /// Planner options (proxy name, masquerade mark).
    pub plan: PlanOptions,
    /// Where kube-proxy's node health server listens (`:10256`).
    pub health_addr: SocketAddr,
    /// The address the per-Service health check ports bind to.
    pub health_bind_ip: IpAddr,
    /// Where `/metrics` is served.
    pub metrics_addr: SocketAddr,
    /// Full resync period; `/healthz` turns 503 after two of them without a
    /// successful sync (kube-proxy's rule).
    pub sync_period: Duration,
    /// How often the manifest directory is checked for changes (with the
    /// Kubernetes source: how often the resync is checked, at most every
    /// second).
    pub poll_interval: Duration,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The node health server could not listen.
    #[error(transparent)]
    Health(#[from] HealthServerError),
    /// The Kubernetes source could not start.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// The metrics server could not listen.
    #[error("cannot listen on {addr} for metrics: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Local ready endpoints of every `Local` Service with a health check port
/// that this agent handles: what its health check port reports.
pub fn local_endpoint_counts(
    services: &[ClusterService],
    slices: &[EndpointSlice],
    node: &Node,
    opts: &PlanOptions,
) -> BTreeMap<u16, (ServiceKey, usize)> {
    let mut out = BTreeMap::new();
    for svc in services {
        if svc.proxy_name.as_deref() != Some(opts.proxy_name.as_str())
            || svc.external_traffic_policy != TrafficPolicy::Local
        {
            continue;
        }
        let Some(port) = svc.health_check_node_port else {
            continue;
        };
        let local: BTreeSet<IpAddr> = slices
            .iter()
            .filter(|s| s.service == svc.key)
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.ready && e.node_name.as_deref() == Some(node.name.as_str()))
            .filter_map(|e| e.addresses.first().copied())
            .collect();
        // Two Services cannot share a health check port (the API server
        // allocates them); should it happen, the first by key keeps it.
        out.entry(port).or_insert((svc.key.clone(), local.len()));
    }
    out
}

/// The state the loop keeps between rounds.
pub struct Agent<B, C> {
    opts: AgentOptions,
    syncer: Syncer<B>,
    /// The conntrack table whose stale UDP flows are deleted.
    conntrack: C,
    /// The UDP targets at the last successful clean-up (`None` before the
    /// first, or after a failed one).
    flows_cleaned: Option<UdpTargets>,
    /// Plans incrementally: only the Services whose objects changed.
    planner: Planner,
    health: HealthState,
    service_health: ServiceHealthServers,
    metrics: AgentMetrics,
    fingerprint: Option<u64>,
    last_full: Option<Instant>,
    /// Problems already logged, so a persisting one is logged once.
    reported_errors: BTreeSet<String>,
    reported_skipped: BTreeSet<String>,
    reported_no_node: bool,
    /// Whether the last clean-up of UDP flows failed (logged once).
    reported_conntrack: bool,
}

impl<B: NftBackend, C: Conntrack> Agent<B, C> {
    /// An agent syncing through `backend` and cleaning flows in
    /// `conntrack`. Must be called in a tokio runtime (the health servers
    /// are tasks).
    pub fn new(opts: AgentOptions, backend: B, conntrack: C, metrics: AgentMetrics) -> Self {
        let health = HealthState::new(opts.sync_period * 2);
        let planner = Planner::new(opts.plan.clone());
        let service_health =
            ServiceHealthServers::with_bind_ip(opts.health_bind_ip, health.clone());
        Agent {
            opts,
            syncer: Syncer::new(backend),
            conntrack,
            flows_cleaned: None,
            planner,
            health,
            service_health,
            metrics,
            fingerprint: None,
            last_full: None,
            reported_errors: BTreeSet::new(),
            reported_skipped: BTreeSet::new(),
            reported_no_node: false,
            reported_conntrack: false,
        }
    }

    /// The health state the node health server reports.
    pub fn health(&self) -> &HealthState {
        &self.health
    }

    /// The sync backend (to inspect what is loaded).
    pub fn syncer(&self) -> &Syncer<B> {
        &self.syncer
    }

    /// Whether the periodic full resync is due (or the last sync failed).
    pub fn full_due(&self) -> bool {
        self.last_full
            .is_none_or(|t| t.elapsed() >= self.opts.sync_period)
    }

    /// One round of the manifest source: reload `dir` and sync when it
    /// changed or a full resync is due. Returns what the sync did, `None`
    /// when nothing was due or it failed.
    /// Blocking (file reads, `nft`): call it off the async workers.
    pub fn round(&mut self, dir: &Path) -> Option<SyncOutcome> {
        let full_due = self.full_due();
        let fingerprint = match manifests::fingerprint(dir) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read the manifest directory; rules stay as they are");
                None
            }
        };
        if !full_due && (fingerprint.is_none() || fingerprint == self.fingerprint) {
            return None;
        }
        let started = Instant::now();
        let (snapshot, errors) = match manifests::load_dir(dir, &self.opts.node_name) {
            Ok(loaded) => loaded,
            Err(e) => {
                // A sync that cannot even read its input has failed: count it,
                // and let /healthz go stale so the edge stops sending here.
                self.metrics.sync_failures.inc();
                tracing::error!(dir = %dir.display(), error = %e, "cannot load manifests; rules stay as they are");
                return None;
            }
        };
        let problems: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let outcome = self.sync_snapshot(started, &snapshot, &problems, "manifest skipped");
        if outcome.is_some() {
            self.fingerprint = fingerprint;
        }
        outcome
    }

    /// Plans `snapshot` and brings the kernel to it: a full resync when one
    /// is due ([`full_due`](Self::full_due)), else only the changes (the
    /// planner re-plans only the Services whose Service object or
    /// EndpointSlices changed, and the script covers only them). Then
    /// updates `/healthz`, the health check ports and the metrics.
    ///
    /// `problems` are the objects the source skipped (logged once each as
    /// `what`, while they persist; counted in the source-errors gauge);
    /// `started` is when the source began reading, for the sync duration.
    /// Returns what the sync did, `None` when it failed.
    /// Blocking (`nft`): call it off the async workers.
    pub fn sync_snapshot(
        &mut self,
        started: Instant,
        snapshot: &Snapshot,
        problems: &[String],
        what: &str,
    ) -> Option<SyncOutcome> {
        let full_due = self.full_due();
        // Report each problem once, not again at every periodic resync while
        // it persists; the gauge keeps showing it.
        let messages: BTreeSet<String> = problems.iter().cloned().collect();
        for m in messages.difference(&self.reported_errors) {
            tracing::warn!(error = %m, "{what}");
        }
        self.reported_errors = messages;
        self.metrics.source_errors.set(problems.len() as i64);
        if snapshot.node.is_none() && !self.reported_no_node {
            tracing::warn!(node = %self.opts.node_name, "no Node object for this node; planning without its addresses");
        }
        self.reported_no_node = snapshot.node.is_none();
        let node = snapshot.node.clone().unwrap_or_else(|| Node {
            name: self.opts.node_name.clone(),
            ..Default::default()
        });
        self.health.set_node(&node);
        // Only the Services whose objects changed are planned again, and
        // only their rules are diffed and sent.
        let change = self
            .planner
            .update(&snapshot.services, &snapshot.slices, &node);
        let planned_skipped = self.planner.skipped();
        let skipped: BTreeSet<String> = planned_skipped
            .iter()
            .map(|s| format!("{} {}: {}", s.object, s.field, s.reason))
            .collect();
        for m in skipped.difference(&self.reported_skipped) {
            tracing::warn!("skipped: {m}");
        }
        self.reported_skipped = skipped;
        self.metrics.skipped.set(planned_skipped.len() as i64);
        let result = if full_due {
            self.syncer.resync_owned(self.planner.ruleset())
        } else {
            let (before, after) = change.rulesets();
            let planner = &self.planner;
            self.syncer
                .sync_change(&before, &after, || planner.ruleset())
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                self.metrics.sync_failures.inc();
                tracing::error!(error = %e, "sync failed; will retry with a full resync");
                self.last_full = None;
                return None;
            }
        };
        let kind = match outcome {
            SyncOutcome::Unchanged => "unchanged",
            SyncOutcome::Incremental => "incremental",
            SyncOutcome::Full | SyncOutcome::FullAfterFailedDiff => "full",
        };
        self.metrics
            .sync_duration
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        let full = full_due
            || matches!(
                outcome,
                SyncOutcome::Full | SyncOutcome::FullAfterFailedDiff
            );
        if full {
            self.last_full = Some(Instant::now());
        }
        // The rules now send new flows to the new endpoints: move the old.
        self.clean_udp_flows(full);
        let now = SystemTime::now();
        self.health.record_sync_success(now);
        self.metrics.last_sync.set(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        );
        // A successful sync leaves the planned ruleset as the applied one.
        if let Some(installed) = self.syncer.applied() {
            self.metrics.record_installed(installed);
        }
        let counts =
            local_endpoint_counts(&snapshot.services, &snapshot.slices, &node, &self.opts.plan);
        for e in self.service_health.sync(counts) {
            self.metrics.health_port_errors.inc();
            tracing::error!(error = %e, "health check port not served");
        }
        tracing::info!(kind, services = snapshot.services.len(), took = ?started.elapsed(), "synced");
        Some(outcome)
    }
}

impl<B, C: Conntrack> Agent<B, C> {
    /// Deletes the conntrack entries of UDP flows that no serving endpoint
    /// of their Service port answers, when the UDP targets changed since
    /// the last clean-up, or at a full resync (`full`). A failure is
    /// logged (once while it lasts) and counted; the rules stand, and the
    /// next sync tries again.
    fn clean_udp_flows(&mut self, full: bool) {
        let targets = self.planner.udp_targets();
        if !full && self.flows_cleaned.as_ref() == Some(&targets) {
            return;
        }
        let wanted = match &self.flows_cleaned {
            Some(previous) => targets.with_gone(previous),
            None => targets.clone(),
        };
        if wanted.is_empty() {
            self.flows_cleaned = Some(targets);
            return;
        }
        let result = self.conntrack.list(Protocol::Udp).and_then(|flows| {
            let stale = wanted.stale(&flows);
            self.conntrack.delete(&stale).map(|n| (n, stale))
        });
        match result {
            Ok((deleted, stale)) => {
                if deleted > 0 {
                    tracing::info!(
                        deleted,
                        first = %stale[0],
                        "deleted the conntrack entries of UDP flows no serving endpoint answers"
                    );
                }
                self.metrics.conntrack_deleted.inc_by(deleted as u64);
                self.reported_conntrack = false;
                self.flows_cleaned = Some(targets);
            }
            Err(e) => {
                self.metrics.conntrack_failures.inc();
                if !self.reported_conntrack {
                    tracing::error!(error = %e, "cannot clean stale UDP flows; clients of a removed endpoint stay on it until their entry expires");
                }
                self.reported_conntrack = true;
                // Keep the last clean state: what is gone since is still
                // cleaned by the next attempt.
            }
        }
    }
}

/// Runs the agent until `shutdown` resolves: health and metrics servers, and
/// a sync round every poll interval. Rules are left in place at exit, so a
/// restart never interrupts traffic (`portico-node-agent cleanup` removes them).
pub async fn run<B: NftBackend + Send + 'static, C: Conntrack>(
    opts: AgentOptions,
    backend: B,
    conntrack: C,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let metrics = AgentMetrics::new();
    let mut agent = Agent::new(opts.clone(), backend, conntrack, metrics.clone());
    let (_node_health, health_addr) =
        NodeHealthServer::start(opts.health_addr, agent.health().clone())?;
    let listener = tokio::net::TcpListener::bind(opts.metrics_addr)
        .await
        .map_err(|source| AgentError::Metrics {
            addr: opts.metrics_addr,
            source,
        })?;
    let metrics_addr = listener.local_addr().unwrap_or(opts.metrics_addr);
    let rendered = metrics.clone();
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = rendered.clone();
            async move { m.render() }
        }),
    );
    let metrics_task = tokio::spawn(portico_serve::serve(
        listener,
        router,
        portico_serve::ServerLimits::ADMIN,
        "metrics",
        std::future::pending(),
    ));
    tokio::pin!(shutdown);
    let result = match &opts.source {
        Source::Manifests(dir) => {
            tracing::info!(%health_addr, %metrics_addr, node = %opts.node_name, dir = %dir.display(), "node agent running");
            let mut poll = tokio::time::interval(opts.poll_interval);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = poll.tick() => {
                        // File reads and `nft` block; keep them off the async workers.
                        tokio::task::block_in_place(|| agent.round(dir));
                    }
                    () = &mut shutdown => break Ok(()),
                }
            }
        }
        Source::Kubernetes(kube) => {
            tracing::info!(%health_addr, %metrics_addr, node = %opts.node_name, proxy = %opts.plan.proxy_name, "node agent running on the Kubernetes API");
            run_kubernetes(&mut agent, kube, &metrics, shutdown).await
        }
    };
    metrics_task.abort();
    tracing::info!("node agent stopped; rules left in place");
    result
}

/// The Kubernetes source's loop: connect, start the watches, wait until each
/// has listed once, then sync after each debounced burst of changes and at
/// every full resync, until `shutdown` resolves.
async fn run_kubernetes<B: NftBackend, C: Conntrack>(
    agent: &mut Agent<B, C>,
    kube: &KubeOptions,
    metrics: &AgentMetrics,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<(), AgentError> {
    let client = tokio::select! {
        client = portico_kube_watch::client(kube) => client.map_err(KubeError::from)?,
        () = &mut shutdown => return Ok(()),
    };
    let node_name = agent.opts.node_name.clone();
    let source = KubeSource::start(
        client,
        &node_name,
        &agent.opts.plan.proxy_name,
        kube,
        WatchMetrics {
            errors: Some(metrics.kube_watch_errors.clone()),
            stale_seconds: Some(metrics.kube_stale.clone()),
        },
    );
    let stores = source.stores().clone();
    let ready = stores.wait_until_ready();
    tokio::pin!(ready);
    let mut listed = false;
    let mut debouncer = Debouncer::new(DEBOUNCE_QUIET, DEBOUNCE_MAX);
    let mut tick = tokio::time::interval(agent.opts.poll_interval.min(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sync = |agent: &mut Agent<B, C>| {
        // This sync covers every change notified so far: take the pending
        // notification, so that only later changes cause another sync.
        futures::FutureExt::now_or_never(source.changed());
        // Converting and `nft` block; keep them off the async workers.
        tokio::task::block_in_place(|| {
            let started = Instant::now();
            let (snapshot, errors) = stores.snapshot(&node_name);
            let problems: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            agent.sync_snapshot(started, &snapshot, &problems, "Kubernetes object skipped");
        });
    };
    tracing::info!("waiting for the first list of Services, EndpointSlices and the Node");
    loop {
        let deadline = debouncer.deadline();
        tokio::select! {
            result = &mut ready, if !listed => {
                result?;
                listed = true;
                tracing::info!("Kubernetes objects listed");
                debouncer.clear();
                sync(agent);
            }
            () = source.changed() => {
                // Before the first complete list, the first sync covers it all.
                if listed {
                    debouncer.changed(Instant::now());
                }
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                if debouncer.take_due(Instant::now()) {
                    sync(agent);
                }
            }
            _ = tick.tick() => {
                // The periodic resync, also while the API is away: from the
                // last complete state the caches hold.
                if listed && agent.full_due() {
                    debouncer.clear();
                    sync(agent);
                }
            }
            () = &mut shutdown => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_config::cluster::{ClusterServicePort, Endpoint, ServiceType, TargetPort};
    use portico_config::{Protocol, SessionAffinity};

    fn svc(
        name: &str,
        policy: TrafficPolicy,
        hc: Option<u16>,
        proxy: Option<&str>,
    ) -> ClusterService {
        ClusterService {
            key: ServiceKey::new("default", name),
            service_type: ServiceType::LoadBalancer,
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            load_balancer_class: None,
            ip_families: Vec::new(),
            external_ips: vec![],
            load_balancer_ip: None,
            ingress: Vec::new(),
            ports: vec![ClusterServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: Some(30080),
                target_port: TargetPort::Number(8080),
            }],
            external_traffic_policy: policy,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: hc,
            session_affinity: SessionAffinity::None,
            source_ranges: portico_config::SourceRanges::Any,
            proxy_name: proxy.map(String::from),
        }
    }

    fn endpoint(ip: &str, node: &str, ready: bool) -> Endpoint {
        Endpoint {
            addresses: vec![ip.parse().unwrap()],
            ready,
            serving: ready,
            terminating: !ready,
            node_name: Some(node.into()),
        }
    }

    fn slice(service: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            key: ServiceKey::new("default", format!("{service}-abc")),
            service: ServiceKey::new("default", service),
            address_type: portico_config::cluster::AddressType::IPv4,
            ports: vec![],
            endpoints,
        }
    }

    #[test]
    fn counts_ready_endpoints_on_this_node_for_local_services_we_own() {
        let node = Node {
            name: "n1".into(),
            ..Default::default()
        };
        let services = vec![
            svc("local", TrafficPolicy::Local, Some(32000), Some("portico")),
            svc(
                "none-here",
                TrafficPolicy::Local,
                Some(32001),
                Some("portico"),
            ),
            svc("cluster", TrafficPolicy::Cluster, None, Some("portico")),
            svc("not-ours", TrafficPolicy::Local, Some(32002), None),
        ];
        let slices = vec![
            slice(
                "local",
                vec![
                    endpoint("10.0.1.1", "n1", true),
                    endpoint("10.0.1.2", "n1", true),
                    endpoint("10.0.1.3", "n1", false),
                    endpoint("10.0.2.1", "n2", true),
                ],
            ),
            // The same endpoint in a second slice counts once.
            slice("local", vec![endpoint("10.0.1.1", "n1", true)]),
            slice("none-here", vec![endpoint("10.0.2.2", "n2", true)]),
        ];
        let counts = local_endpoint_counts(&services, &slices, &node, &PlanOptions::default());
        let got: Vec<(u16, String, usize)> = counts
            .into_iter()
            .map(|(p, (k, n))| (p, k.to_string(), n))
            .collect();
        assert_eq!(
            got,
            [
                (32000, "default/local".to_string(), 2),
                (32001, "default/none-here".to_string(), 0)
            ]
        );
    }

    /// An agent over fakes, and the fake conntrack table it cleans.
    fn fake_agent() -> Agent<crate::nft::FakeNft, std::sync::Arc<portico_conntrack::Fake>> {
        let opts = AgentOptions {
            source: Source::Manifests(PathBuf::from("/nonexistent")),
            node_name: "n1".into(),
            plan: PlanOptions::default(),
            health_addr: "127.0.0.1:0".parse().unwrap(),
            health_bind_ip: "127.0.0.1".parse().unwrap(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            sync_period: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(1),
        };
        Agent::new(
            opts,
            crate::nft::FakeNft::new(),
            std::sync::Arc::new(portico_conntrack::Fake::new()),
            AgentMetrics::new(),
        )
    }

    /// `default/dns`: UDP 53 -> 5353 on ClusterIP 10.96.0.10, NodePort 30053.
    fn dns() -> ClusterService {
        let mut dns = svc("dns", TrafficPolicy::Cluster, None, Some("portico"));
        dns.ports = vec![ClusterServicePort {
            name: "dns".into(),
            protocol: Protocol::Udp,
            port: 53,
            node_port: Some(30053),
            target_port: TargetPort::Number(5353),
        }];
        dns
    }

    fn dns_snapshot(endpoints: &[&str]) -> Snapshot {
        let mut s = slice(
            "dns",
            endpoints
                .iter()
                .map(|ip| endpoint(ip, "n2", true))
                .collect(),
        );
        s.ports = vec![portico_config::cluster::EndpointPort {
            name: "dns".into(),
            protocol: Protocol::Udp,
            port: Some(5353),
        }];
        Snapshot {
            services: vec![dns()],
            slices: vec![s],
            node: None,
        }
    }

    /// A client's flow to the ClusterIP, sent to `endpoint`.
    fn flow_to(client_port: u16, endpoint: &str) -> portico_conntrack::Flow {
        portico_conntrack::Flow::new(
            portico_conntrack::Protocol::Udp,
            std::net::SocketAddr::new("192.0.2.1".parse().unwrap(), client_port),
            "10.96.0.10:53".parse().unwrap(),
            std::net::SocketAddr::new(endpoint.parse().unwrap(), 5353),
        )
    }

    #[tokio::test]
    async fn flows_of_a_removed_udp_endpoint_are_deleted_after_the_sync() {
        let mut agent = fake_agent();
        let table = agent.conntrack.clone();
        let (a, b) = ("10.244.1.1", "10.244.1.2");
        table.insert(flow_to(4000, a));
        table.insert(flow_to(4001, b));
        // A datagram that came before the rules: never translated.
        let early = portico_conntrack::Flow::new(
            portico_conntrack::Protocol::Udp,
            "192.0.2.1:4002".parse().unwrap(),
            "10.96.0.10:53".parse().unwrap(),
            "10.96.0.10:53".parse().unwrap(),
        );
        table.insert(early.clone());
        let sync = |agent: &mut Agent<_, _>, snapshot: &Snapshot| {
            agent
                .sync_snapshot(Instant::now(), snapshot, &[], "test")
                .expect("sync")
        };

        sync(&mut agent, &dns_snapshot(&[a, b]));
        assert_eq!(
            table.deleted(),
            [early],
            "the first sync cleans what predates it"
        );
        assert_eq!(table.lists(), 1);

        // Nothing UDP changed: the table is not even listed.
        sync(&mut agent, &dns_snapshot(&[a, b]));
        assert_eq!(table.lists(), 1);

        // b leaves: its flow goes, a's stays.
        sync(&mut agent, &dns_snapshot(&[a]));
        assert_eq!(table.deleted().last(), Some(&flow_to(4001, b)));
        assert_eq!(table.flows(), [flow_to(4000, a)]);
        assert_eq!(agent.metrics.conntrack_deleted.get(), 2);

        // A failed clean-up is counted and retried at the next sync, which
        // still knows that b's destination had flows to clean.
        table.insert(flow_to(4003, b));
        table.fail_next("no ctnetlink");
        let none = Snapshot {
            services: Vec::new(),
            slices: Vec::new(),
            node: None,
        };
        sync(&mut agent, &none);
        assert_eq!(agent.metrics.conntrack_failures.get(), 1);
        assert_eq!(table.flows().len(), 2);
        // The Service is gone: every flow to its destinations goes.
        sync(&mut agent, &none);
        assert!(table.flows().is_empty(), "{:?}", table.flows());
        assert_eq!(agent.metrics.conntrack_deleted.get(), 4);
        // And with no UDP port left, nothing is listed any more.
        let lists = table.lists();
        sync(&mut agent, &none);
        assert_eq!(table.lists(), lists);
    }
}
