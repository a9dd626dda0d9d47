//! The data path's view of the world: an immutable snapshot, swapped whole.
//!
//! The control plane combines the [`Plan`] with the current health view into a
//! [`Snapshot`] and publishes it through `ArcSwap`; every accepted connection
//! loads it once and works on that copy. No lock is taken per connection except
//! for Services with ClientIP affinity (a sharded table, see [`AffinityTable`]).
//!
//! State that must outlive a snapshot (active connection counts per backend,
//! round-robin cursors, affinity entries, drain signals, Maglev tables) is kept
//! in the [`SnapshotBuilder`] and shared into each new snapshot.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portico_config::{Algorithm, AllDownPolicy, EdgeSettings, ProxySettings, ServiceKey};
use tokio::sync::watch;

use crate::health::{HealthView, PassiveReporter, TargetStatus};
use crate::maglev::{flow_hash, MaglevBackend, MaglevTable};
use crate::metrics::{EdgeMetrics, RouteMetrics};
use crate::plan::{affinity_timeout, HealthTarget, ListenerKey, Plan, PlannedRoute};

/// One backend (`nodeAddress:nodePort`) of a route, with its current health.
#[derive(Debug)]
pub struct Backend {
    /// The node's name.
    pub node: Arc<str>,
    /// Where to connect.
    pub addr: SocketAddr,
    /// The probe that judges it.
    pub health: HealthTarget,
    /// Health at the time the snapshot was built.
    pub status: TargetStatus,
    /// Connections this edge has open to `addr` (shared across snapshots).
    pub active: Arc<AtomicU64>,
    /// Becomes true when this backend was removed and its drain time is over.
    pub drain: watch::Receiver<bool>,
}

/// How a route picks among its pool.
enum Selector {
    /// Maglev over the pool; table indices are pool indices. `None` when the
    /// table could not be built.
    Maglev(Option<Arc<MaglevTable>>),
    /// Smooth weighted round-robin: a precomputed sequence of pool indices.
    RoundRobin {
        sequence: Arc<[u16]>,
        cursor: Arc<AtomicUsize>,
    },
    /// Fewest active connections relative to weight.
    LeastConnections { cursor: Arc<AtomicUsize> },
}

/// Everything one listener needs, ready for the data path.
pub struct Route {
    /// What the planner decided.
    pub planned: Arc<PlannedRoute>,
    /// Every eligible backend, in plan order.
    pub backends: Vec<Backend>,
    /// Indices into `backends` that new connections may go to: the healthy
    /// ones; all of them when none is healthy and the policy fails open; none
    /// when it fails closed.
    pub pool: Vec<usize>,
    /// True when no backend is healthy.
    pub all_down: bool,
    selector: Selector,
    /// Pre-resolved metric handles.
    pub metrics: RouteMetrics,
    /// ClientIP affinity state, if the Service asks for it.
    pub affinity: Option<Arc<AffinityTable>>,
    /// Where failed connects are reported.
    pub reporter: PassiveReporter,
}

impl Route {
    /// The backends to try for a client, best first, each at most once, at
    /// most `limit` of them.
    pub fn candidates(&self, client: SocketAddr, limit: usize) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::with_capacity(limit.min(self.pool.len()));
        if self.pool.is_empty() || limit == 0 {
            return out;
        }
        let push = |out: &mut Vec<usize>, idx: usize| {
            if out.len() < limit && !out.contains(&idx) {
                out.push(idx);
            }
        };
        if let Some(aff) = &self.affinity {
            if let Some(node) = aff.get(client.ip()) {
                if let Some(&idx) = self.pool.iter().find(|&&i| self.backends[i].node == node) {
                    push(&mut out, idx);
                }
            }
        }
        match &self.selector {
            Selector::Maglev(None) => {}
            Selector::Maglev(Some(table)) => {
                let hash = flow_hash(client, self.affinity.is_some());
                // take(): a single pick must not pay for the bitset the
                // iterator allocates from its second item on.
                for pool_idx in table.candidates(hash).take(limit) {
                    push(&mut out, self.pool[pool_idx]);
                }
            }
            Selector::RoundRobin { sequence, cursor } => {
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                for step in 0..sequence.len() {
                    if out.len() >= limit {
                        break;
                    }
                    let pool_idx = sequence[(start + step) % sequence.len()] as usize;
                    push(&mut out, self.pool[pool_idx]);
                }
            }
            Selector::LeastConnections { cursor } => {
                // Rotate the starting point so ties spread instead of piling
                // onto the first backend.
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                let n = self.pool.len();
                let mut order: Vec<(u128, usize)> = (0..n)
                    .map(|k| {
                        let idx = self.pool[(start + k) % n];
                        let b = &self.backends[idx];
                        let load = u128::from(b.active.load(Ordering::Relaxed)) + 1;
                        // load / weight, compared without division.
                        let key = load * 1_000_000 / u128::from(b.status.weight.max(1));
                        (key, idx)
                    })
                    .collect();
                order.sort_by_key(|&(key, _)| key);
                for (_, idx) in order {
                    push(&mut out, idx);
                }
            }
        }
        out
    }
}

const AFFINITY_SHARDS: usize = 16;

/// Client address -> (node, last new connection).
type AffinityShard = HashMap<IpAddr, (Arc<str>, Instant)>;

/// ClientIP session affinity: client address -> node, until `timeout` passes
/// without a new connection from that client. Sharded so concurrent accepts
/// rarely meet on one lock.
pub struct AffinityTable {
    timeout: Duration,
    shards: Vec<Mutex<AffinityShard>>,
}

impl AffinityTable {
    /// An empty table with the given idle timeout.
    pub fn new(timeout: Duration) -> Self {
        AffinityTable {
            timeout,
            shards: (0..AFFINITY_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<AffinityShard> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ip.hash(&mut h);
        &self.shards[(h.finish() as usize) % AFFINITY_SHARDS]
    }

    /// The node `ip` is bound to, if the binding has not expired.
    pub fn get(&self, ip: IpAddr) -> Option<Arc<str>> {
        let shard = self.shard(ip).lock().unwrap_or_else(|p| p.into_inner());
        shard
            .get(&ip)
            .filter(|(_, seen)| seen.elapsed() < self.timeout)
            .map(|(node, _)| node.clone())
    }

    /// Binds `ip` to `node` (or refreshes the binding) as of now.
    pub fn touch(&self, ip: IpAddr, node: Arc<str>) {
        let mut shard = self.shard(ip).lock().unwrap_or_else(|p| p.into_inner());
        shard.insert(ip, (node, Instant::now()));
    }

    /// Drops expired bindings; returns how many remain.
    pub fn sweep(&self) -> usize {
        let mut left = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, (_, seen)| seen.elapsed() < self.timeout);
            left += shard.len();
        }
        left
    }
}

/// The whole data-path view.
#[derive(Default)]
pub struct Snapshot {
    /// Increases with every published snapshot.
    pub generation: u64,
    /// One route per listener.
    pub routes: HashMap<ListenerKey, Arc<Route>>,
    /// Data path settings in force.
    pub proxy: ProxySettings,
}

type TableKey = (Vec<(Arc<str>, u32)>, u32);

impl Snapshot {
    /// The Services whose every route has backends, all probed and all
    /// down: a Service with no healthy node anywhere (the cluster source
    /// tells their owners).
    pub fn unhealthy_services(&self) -> BTreeSet<ServiceKey> {
        let mut by_service: BTreeMap<&ServiceKey, bool> = BTreeMap::new();
        for route in self.routes.values() {
            let down = !route.backends.is_empty()
                && route.all_down
                && route.backends.iter().all(|b| b.status.probed);
            let entry = by_service.entry(&route.planned.service).or_insert(true);
            *entry &= down;
        }
        by_service
            .into_iter()
            .filter(|(_, down)| *down)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// What one build used of the state kept across builds (the rest is
/// dropped at its end).
#[derive(Default)]
struct Used {
    tables: HashSet<TableKey>,
    addrs: HashSet<SocketAddr>,
    affinity: HashSet<(ServiceKey, Arc<str>, bool)>,
    metrics: HashSet<(ServiceKey, Arc<str>)>,
}

/// Builds snapshots and keeps the state that outlives them.
pub struct SnapshotBuilder {
    metrics: EdgeMetrics,
    reporter: PassiveReporter,
    generation: u64,
    active: HashMap<SocketAddr, Arc<AtomicU64>>,
    cursors: HashMap<ListenerKey, Arc<AtomicUsize>>,
    affinity: HashMap<(ServiceKey, Arc<str>, bool), Arc<AffinityTable>>,
    tables: HashMap<TableKey, Option<Arc<MaglevTable>>>,
    drains: Arc<Mutex<DrainRegistry>>,
    route_metrics: HashMap<(ServiceKey, Arc<str>), RouteMetrics>,
}

/// Drain signals per backend address. A backend that leaves every route is
/// drained: after the drain timeout its connections are told to stop, unless
/// it came back in the meantime.
#[derive(Default)]
struct DrainRegistry {
    live: HashMap<SocketAddr, watch::Sender<bool>>,
    draining: HashMap<SocketAddr, (watch::Sender<bool>, u64)>,
    next_token: u64,
}

impl SnapshotBuilder {
    /// A builder publishing metrics to `metrics` and passive failures to `reporter`.
    pub fn new(metrics: EdgeMetrics, reporter: PassiveReporter) -> Self {
        SnapshotBuilder {
            metrics,
            reporter,
            generation: 0,
            active: HashMap::new(),
            cursors: HashMap::new(),
            affinity: HashMap::new(),
            tables: HashMap::new(),
            drains: Arc::new(Mutex::new(DrainRegistry::default())),
            route_metrics: HashMap::new(),
        }
    }

    /// Builds the next snapshot. Must run inside a tokio runtime when
    /// backends may be removed (drain timers are tasks).
    pub fn build(&mut self, plan: &Plan, health: &HealthView, settings: &EdgeSettings) -> Snapshot {
        self.generation += 1;
        let mut routes = HashMap::with_capacity(plan.routes.len());
        let mut used = Used::default();
        self.metrics.route_problems.reset();

        for (key, planned) in &plan.routes {
            let backends = self.backends(planned, health, &mut used);
            let healthy: Vec<usize> = (0..backends.len())
                .filter(|&i| backends[i].status.healthy)
                .collect();
            let all_down = healthy.is_empty();
            let pool = if !all_down {
                healthy
            } else if settings.health.all_down == AllDownPolicy::FailOpen {
                (0..backends.len()).collect()
            } else {
                Vec::new()
            };
            // In fail-open mode a down target's weight may be stale or 0;
            // every node then counts the same.
            let weights: Vec<(Arc<str>, u32)> = pool
                .iter()
                .map(|&i| {
                    let b = &backends[i];
                    (b.node.clone(), if all_down { 1 } else { b.status.weight })
                })
                .collect();
            let selector = self.selector(key, planned, weights, settings, &mut used);
            let affinity = self.affinity(key, planned, &mut used);
            let metrics = self.route_metrics(planned, &mut used);
            routes.insert(
                *key,
                Arc::new(Route {
                    planned: planned.clone(),
                    backends,
                    pool,
                    all_down,
                    selector,
                    metrics,
                    affinity,
                    reporter: self.reporter.clone(),
                }),
            );
        }
        self.tables.retain(|k, _| used.tables.contains(k));
        self.cursors.retain(|k, _| plan.routes.contains_key(k));
        self.affinity.retain(|k, _| used.affinity.contains(k));
        self.route_metrics.retain(|k, _| used.metrics.contains(k));
        self.active
            .retain(|addr, count| used.addrs.contains(addr) || count.load(Ordering::Relaxed) > 0);
        self.schedule_drains(&used.addrs, settings.proxy.drain_timeout);
        self.metrics.generation.set(self.generation as i64);
        Snapshot {
            generation: self.generation,
            routes,
            proxy: settings.proxy.clone(),
        }
    }

    /// A route's backends with their health, connection counts and drain
    /// signals.
    fn backends(
        &mut self,
        planned: &PlannedRoute,
        health: &HealthView,
        used: &mut Used,
    ) -> Vec<Backend> {
        planned
            .backends
            .iter()
            .map(|pb| {
                used.addrs.insert(pb.addr);
                Backend {
                    node: pb.node.clone(),
                    addr: pb.addr,
                    health: pb.health,
                    status: health.get(&pb.health).copied().unwrap_or_default(),
                    active: self.active.entry(pb.addr).or_default().clone(),
                    drain: self.drain_receiver(pb.addr),
                }
            })
            .collect()
    }

    /// The route's node choice over its pool (`weights`: node and weight of
    /// each pool entry). Maglev tables are shared by every route with the
    /// same nodes, weights and size, and kept while any route uses them.
    fn selector(
        &mut self,
        key: &ListenerKey,
        planned: &PlannedRoute,
        weights: Vec<(Arc<str>, u32)>,
        settings: &EdgeSettings,
        used: &mut Used,
    ) -> Selector {
        match planned.algorithm {
            Algorithm::Maglev => {
                let table_key: TableKey = (weights, settings.proxy.maglev_table_size);
                used.tables.insert(table_key.clone());
                let table = match self.tables.entry(table_key) {
                    Entry::Occupied(e) => e.get().clone(),
                    Entry::Vacant(e) => {
                        let ids: Vec<MaglevBackend<'_>> = e
                            .key()
                            .0
                            .iter()
                            .map(|(id, w)| MaglevBackend { id, weight: *w })
                            .collect();
                        let table = match MaglevTable::build(&ids, e.key().1) {
                            Ok(t) => Some(Arc::new(t)),
                            Err(err) => {
                                // Config validation rules these out; from
                                // any other source, refuse the route rather
                                // than guess.
                                tracing::error!(error = %err, listener = %key, "cannot build Maglev table; route gets no traffic");
                                None
                            }
                        };
                        e.insert(table).clone()
                    }
                };
                Selector::Maglev(table)
            }
            Algorithm::RoundRobin => Selector::RoundRobin {
                sequence: smooth_wrr(&weights.iter().map(|(_, w)| *w).collect::<Vec<_>>()).into(),
                cursor: self.cursors.entry(*key).or_default().clone(),
            },
            Algorithm::LeastConnections => Selector::LeastConnections {
                cursor: self.cursors.entry(*key).or_default().clone(),
            },
        }
    }

    /// The route's ClientIP affinity table, if its Service asks for one:
    /// shared by the Service port's listeners of one family, kept across
    /// snapshots, renewed when the timeout changes.
    fn affinity(
        &mut self,
        key: &ListenerKey,
        planned: &PlannedRoute,
        used: &mut Used,
    ) -> Option<Arc<AffinityTable>> {
        let timeout = affinity_timeout(planned)?;
        let akey = (
            planned.service.clone(),
            planned.port_name.clone(),
            key.addr.is_ipv4(),
        );
        used.affinity.insert(akey.clone());
        let table = self
            .affinity
            .entry(akey)
            .or_insert_with(|| Arc::new(AffinityTable::new(timeout)));
        if table.timeout != timeout {
            *table = Arc::new(AffinityTable::new(timeout));
        }
        Some(table.clone())
    }

    /// The route's metrics (per Service port), and its problem gauges.
    fn route_metrics(&mut self, planned: &PlannedRoute, used: &mut Used) -> RouteMetrics {
        let service = planned.service.to_string();
        let port = port_label(planned);
        let mkey = (planned.service.clone(), planned.port_name.clone());
        used.metrics.insert(mkey.clone());
        let metrics = self
            .route_metrics
            .entry(mkey)
            .or_insert_with(|| self.metrics.route(&service, &port))
            .clone();
        let problem = planned.problem.as_ref().map(|problem| match problem {
            crate::plan::RouteProblem::NoNodePort => "no_node_port",
            crate::plan::RouteProblem::NoEligibleNodes => "no_eligible_nodes",
        });
        let closed = matches!(planned.access, crate::plan::Access::Closed { .. })
            .then_some("invalid_source_range");
        for label in problem.into_iter().chain(closed) {
            self.metrics
                .route_problems
                .with_label_values(&[&service, &port, label])
                .set(1);
        }
        metrics
    }

    /// Removes expired affinity bindings of every route.
    pub fn sweep_affinity(&self) {
        for table in self.affinity.values() {
            table.sweep();
        }
    }

    fn drain_receiver(&self, addr: SocketAddr) -> watch::Receiver<bool> {
        let mut reg = self.drains.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tx, _)) = reg.draining.remove(&addr) {
            // Back before its drain ended: its connections live on.
            reg.live.insert(addr, tx);
        }
        reg.live
            .entry(addr)
            .or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }

    fn schedule_drains(&mut self, used: &HashSet<SocketAddr>, timeout: Duration) {
        let mut reg = self.drains.lock().unwrap_or_else(|p| p.into_inner());
        let removed: Vec<SocketAddr> = reg
            .live
            .keys()
            .filter(|a| !used.contains(a))
            .copied()
            .collect();
        for addr in removed {
            let Some(tx) = reg.live.remove(&addr) else {
                continue;
            };
            reg.next_token += 1;
            let token = reg.next_token;
            tracing::info!(backend = %addr, ?timeout, "backend removed; draining its connections");
            reg.draining.insert(addr, (tx, token));
            let drains = self.drains.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let mut reg = drains.lock().unwrap_or_else(|p| p.into_inner());
                if reg.draining.get(&addr).is_some_and(|(_, t)| *t == token) {
                    if let Some((tx, _)) = reg.draining.remove(&addr) {
                        tx.send_replace(true);
                        tracing::info!(backend = %addr, "drain time over; closing its connections");
                    }
                }
            });
        }
    }

    /// The generation of the last snapshot built.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// The port label used in metrics: the port's name, or its number when unnamed.
pub fn port_label(route: &PlannedRoute) -> String {
    if route.port_name.is_empty() {
        route.port.to_string()
    } else {
        route.port_name.to_string()
    }
}

/// Smooth weighted round-robin (nginx's algorithm), precomputed: a sequence of
/// pool indices in which each appears `weight` times (after dividing weights
/// by their gcd and capping the total), spread evenly.
fn smooth_wrr(weights: &[u32]) -> Vec<u16> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights
        .iter()
        .fold(0u64, |g, &w| gcd(g, u64::from(w.max(1))));
    let mut w: Vec<u64> = weights
        .iter()
        .map(|&x| u64::from(x.max(1)) / g.max(1))
        .collect();
    let total: u64 = w.iter().sum();
    const MAX_SEQUENCE: u64 = 4096;
    if total > MAX_SEQUENCE {
        // Keep proportions roughly, every backend at least once.
        for x in &mut w {
            *x = (*x * MAX_SEQUENCE / total).max(1);
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u16);
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use portico_config::{
        EdgeConfig, Node, Protocol, ProxyProtocol, Service, ServicePort, SessionAffinity,
        SourceRanges, TrafficPolicy,
    };

    fn cfg(algorithm: Algorithm, affinity: SessionAffinity, nodes: usize) -> EdgeConfig {
        EdgeConfig {
            settings: Default::default(),
            services: vec![Service {
                key: ServiceKey::new("default", "web"),
                vips: vec!["192.0.2.1".parse().unwrap()],
                ports: vec![ServicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: Some(30080),
                }],
                external_traffic_policy: TrafficPolicy::Cluster,
                health_check_node_port: None,
                session_affinity: affinity,
                source_ranges: SourceRanges::Any,
                algorithm,
                proxy_protocol: ProxyProtocol::Off,
                cluster_check: None,
            }],
            nodes: (0..nodes)
                .map(|i| Node {
                    name: format!("node-{i}"),
                    addresses: vec![format!("10.0.0.{}", i + 1).parse().unwrap()],
                    excluded: vec![],
                })
                .collect(),
        }
    }

    fn route(snapshot: &Snapshot) -> Arc<Route> {
        snapshot.routes.values().next().unwrap().clone()
    }

    fn down(p: &Plan, nodes: &[usize]) -> HealthView {
        p.targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let healthy = !nodes.contains(&i);
                (
                    *t,
                    TargetStatus {
                        healthy,
                        probed: true,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn maglev_is_deterministic_and_skips_down_nodes() {
        let config = cfg(Algorithm::Maglev, SessionAffinity::None, 3);
        let p = plan(&config);
        let mut b = SnapshotBuilder::new(EdgeMetrics::new(), PassiveReporter::detached());
        let s1 = b.build(&p, &HealthView::new(), &config.settings);
        let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let first = route(&s1).candidates(client, 3);
        assert_eq!(first.len(), 3, "every node is a candidate once");
        let mut b2 = SnapshotBuilder::new(EdgeMetrics::new(), PassiveReporter::detached());
        let s2 = b2.build(&p, &HealthView::new(), &config.settings);
        assert_eq!(
            route(&s2).candidates(client, 3),
            first,
            "two edges with the same view agree"
        );
        let s3 = b.build(&p, &down(&p, &[first[0]]), &config.settings);
        let after = route(&s3).candidates(client, 3);
        assert!(!after.contains(&first[0]), "a down node is never picked");
        assert_eq!(after.len(), 2);
    }

    #[tokio::test]
    async fn all_down_fails_open_or_closed_as_configured() {
        let mut config = cfg(Algorithm::RoundRobin, SessionAffinity::None, 2);
        let p = plan(&config);
        let mut b = SnapshotBuilder::new(EdgeMetrics::new(), PassiveReporter::detached());
        let s = b.build(&p, &down(&p, &[0, 1]), &config.settings);
        assert!(route(&s).all_down);
        assert_eq!(route(&s).pool.len(), 2, "fail open sends to every node");
        config.settings.health.all_down = AllDownPolicy::FailClosed;
        let s = b.build(&p, &down(&p, &[0, 1]), &config.settings);
        assert!(route(&s).pool.is_empty());
        assert!(route(&s)
            .candidates("198.51.100.7:1".parse().unwrap(), 3)
            .is_empty());
    }

    #[tokio::test]
    async fn round_robin_alternates_and_least_connections_prefers_idle() {
        let config = cfg(Algorithm::RoundRobin, SessionAffinity::None, 2);
        let p = plan(&config);
        let mut b = SnapshotBuilder::new(EdgeMetrics::new(), PassiveReporter::detached());
        let s = b.build(&p, &HealthView::new(), &config.settings);
        let r = route(&s);
        let client: SocketAddr = "198.51.100.7:1".parse().unwrap();
        let picks: Vec<usize> = (0..4).map(|_| r.candidates(client, 1)[0]).collect();
        assert_eq!(picks[0], picks[2]);
        assert_ne!(picks[0], picks[1]);

        let config = cfg(Algorithm::LeastConnections, SessionAffinity::None, 2);
        let p = plan(&config);
        let s = b.build(&p, &HealthView::new(), &config.settings);
        let r = route(&s);
        r.backends[0].active.store(5, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(r.candidates(client, 2), vec![1, 0]);
        }
    }

    #[tokio::test]
    async fn affinity_keeps_a_client_on_its_node() {
        let config = cfg(
            Algorithm::RoundRobin,
            SessionAffinity::ClientIp {
                timeout: Duration::from_secs(60),
            },
            3,
        );
        let p = plan(&config);
        let mut b = SnapshotBuilder::new(EdgeMetrics::new(), PassiveReporter::detached());
        let s = b.build(&p, &HealthView::new(), &config.settings);
        let r = route(&s);
        let client: SocketAddr = "198.51.100.7:1".parse().unwrap();
        let first = r.candidates(client, 1)[0];
        r.affinity
            .as_ref()
            .unwrap()
            .touch(client.ip(), r.backends[first].node.clone());
        for port in 2..10 {
            let c = SocketAddr::new(client.ip(), port);
            assert_eq!(r.candidates(c, 1)[0], first);
        }
        // The binding survives a new snapshot.
        let s = b.build(&p, &HealthView::new(), &config.settings);
        assert_eq!(route(&s).candidates(client, 1)[0], first);
    }

    #[test]
    fn affinity_expires() {
        let t = AffinityTable::new(Duration::ZERO);
        t.touch("192.0.2.1".parse().unwrap(), Arc::from("a"));
        assert_eq!(t.get("192.0.2.1".parse().unwrap()), None);
        assert_eq!(t.sweep(), 0);
    }

    #[test]
    fn smooth_wrr_respects_weights_and_interleaves() {
        assert_eq!(smooth_wrr(&[1, 1, 1]), vec![0, 1, 2]);
        let s = smooth_wrr(&[1, 3]);
        assert_eq!(s.iter().filter(|&&i| i == 1).count(), 3);
        assert_eq!(s.len(), 4);
        assert_eq!(
            smooth_wrr(&[5, 5]),
            vec![0, 1],
            "weights divided by their gcd"
        );
        let big = smooth_wrr(&[100_000, 1]);
        assert!(
            big.len() <= 4097 && big.contains(&1),
            "capped, every backend present"
        );
    }

    #[tokio::test]
    async fn removed_backends_drain_after_the_timeout() {
        let mut config = cfg(Algorithm::Maglev, SessionAffinity::None, 2);
        config.settings.proxy.drain_timeout = Duration::from_millis(50);
        let p = plan(&config);
        let mut b = SnapshotBuilder::new(EdgeMetrics::new(), PassiveReporter::detached());
        let s = b.build(&p, &HealthView::new(), &config.settings);
        let mut gone = route(&s).backends[1].drain.clone();
        let mut kept = route(&s).backends[0].drain.clone();
        config.nodes.truncate(1);
        let p2 = plan(&config);
        let _s2 = b.build(&p2, &HealthView::new(), &config.settings);
        tokio::time::timeout(Duration::from_secs(5), gone.wait_for(|d| *d))
            .await
            .expect("drain fires within the deadline")
            .expect("sender alive");
        assert!(
            !*kept.borrow_and_update(),
            "a backend still in use is not drained"
        );
    }
}
