//! The edge's Prometheus metrics (`portico_edge_*`).
//!
//! One registry per edge instance (not the process-global default), so tests
//! can run several edges in one process and read each one's figures. Hot-path
//! handles are resolved once per route when a snapshot is built
//! ([`RouteMetrics`]), so a connection never hashes label values.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Reasons a connection is rejected before any node is contacted.
pub mod reject {
    /// The client is outside the Service's source ranges.
    pub const SOURCE_RANGE: &str = "source_range";
    /// The Service's source ranges could not be parsed; it fails closed.
    pub const INVALID_SOURCE_RANGE: &str = "invalid_source_range";
    /// Every backend is down and the edge is configured to fail closed.
    pub const NO_HEALTHY_BACKEND: &str = "no_healthy_backend";
    /// The route has no backend at all (no NodePort, no eligible node).
    pub const NO_BACKEND: &str = "no_backend";
}

/// Every metric the edge exports.
#[derive(Clone)]
pub struct EdgeMetrics {
    registry: Registry,
    /// Connections accepted, by Service and port.
    pub accepted: IntCounterVec,
    /// Connections rejected, by Service, port and reason.
    pub rejected: IntCounterVec,
    /// Connections currently proxied.
    pub active: IntGaugeVec,
    /// Connections for which no node could be reached.
    pub failed: IntCounterVec,
    /// Bytes copied, by Service, port and direction.
    pub bytes: IntCounterVec,
    /// Connect attempts beyond the first.
    pub retries: IntCounterVec,
    /// Health state of each probe target (1 up, 0 down).
    pub backend_up: IntGaugeVec,
    /// Weight reported by each probe target.
    pub backend_weight: IntGaugeVec,
    /// Health transitions.
    pub backend_transitions: IntCounterVec,
    /// Probe latency by check kind and result.
    pub probe_duration: HistogramVec,
    /// Upstream connect latency by result.
    pub connect_duration: HistogramVec,
    /// Reloads by result.
    pub reloads: IntCounterVec,
    /// Generation of the snapshot in use.
    pub generation: IntGauge,
    /// Listening sockets open.
    pub listeners: IntGauge,
    /// Listener errors by kind (bind, accept).
    pub listener_errors: IntCounterVec,
    /// VIP management errors.
    pub vip_errors: IntCounter,
    /// Services currently failing closed or otherwise unable to carry traffic.
    pub route_problems: IntGaugeVec,
    /// Seconds since the Kubernetes API server last answered (0 while it does).
    pub kube_stale: Gauge,
    /// Service status writes, by result.
    pub kube_status_writes: IntCounterVec,
    /// Events recorded on Services, by type.
    pub kube_events: IntCounterVec,
    /// Hook API requests, by route and HTTP status code.
    pub hook_requests: IntCounterVec,
    /// Times a client met a cap: `connections` (a connection waited for a
    /// slot), `udp_flows` (a new flow's datagram was dropped).
    pub limit_reached: IntCounterVec,
    /// The descriptor budget's shares.
    pub budget: IntGaugeVec,
    /// Each VIP the edge serves: 1 while its route is announced, 0 while
    /// it is not (`settings.announce` only).
    pub announced: IntGaugeVec,
    /// 1 while the edge is ready to serve (every listener open, every node
    /// probed once) and not drained.
    pub ready: IntGauge,
    /// 1 while an operator has drained the edge.
    pub drained: IntGauge,
    /// Errors creating the announce device or changing its routes.
    pub announce_errors: IntCounter,
    /// 1 while this edge holds the Lease and writes to the cluster.
    pub leader: IntGauge,
    /// 1 while the BIRD beside the edge answers on its control socket.
    pub bird_up: IntGauge,
    /// Each BGP session of that BIRD: 1 while established.
    pub bgp_session_up: IntGaugeVec,
    /// Each BFD session of that BIRD: 1 while up.
    pub bfd_session_up: IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let m = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric definition");
    r.register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

/// Registers a metric built from a valid definition.
fn register<M>(r: &Registry, m: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let m = m.expect("valid metric definition");
    r.register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

/// The metrics without labels: snapshot generation, open listeners, VIP
/// errors, Kubernetes staleness.
fn scalars(r: &Registry) -> (IntGauge, IntGauge, IntCounter, Gauge) {
    let generation = register(
            r,
            IntGauge::new(
                "portico_edge_snapshot_generation",
                "Generation number of the routing snapshot in use; increases with every applied change.",
            ),
        );
    let listeners = register(
        r,
        IntGauge::new(
            "portico_edge_listeners",
            "Listening sockets currently open.",
        ),
    );
    let vip_errors = register(
        r,
        IntCounter::new(
            "portico_edge_vip_errors_total",
            "Errors adding, removing or announcing VIP addresses.",
        ),
    );
    let kube_stale = register(
            r,
            Gauge::new(
                "portico_edge_kubernetes_stale_seconds",
                "Seconds since the Kubernetes API server last answered (a one-Node list every 2 s) while it does not; 0 while it does. The edge keeps serving its last view meanwhile.",
            ),
        );
    (generation, listeners, vip_errors, kube_stale)
}

/// The sessions of the BIRD beside the edge (`settings.announce`).
fn bird(r: &Registry) -> (IntGauge, IntGaugeVec, IntGaugeVec) {
    let up = register(
        r,
        IntGauge::new(
            "portico_edge_bird_up",
            "1 while the BIRD beside the edge answers on its control socket (settings.announce.birdSocket), 0 while it does not.",
        ),
    );
    let bgp = gauge_vec(
        r,
        "portico_edge_bgp_session_up",
        "Each BGP session of the BIRD beside the edge, by protocol name: 1 while Established, 0 otherwise. Its VIPs reach a router only through an established session.",
        &["protocol"],
    );
    let bfd = gauge_vec(
        r,
        "portico_edge_bfd_session_up",
        "Each BFD session of the BIRD beside the edge, by peer address: 1 while Up, 0 otherwise.",
        &["peer"],
    );
    (up, bgp, bfd)
}

/// The caps clients meet and the descriptor budget's shares.
fn limits(r: &Registry) -> (IntCounterVec, IntGaugeVec) {
    let limit_reached = counter_vec(
        r,
        "portico_edge_limit_reached_total",
        "Times a client met a cap: connections (a connection accepted while maxConnections were in flight waited for a slot), udp_flows (a datagram that would have started a flow beyond maxUdpFlows was dropped).",
        &["limit"],
    );
    let budget = gauge_vec(
        r,
        "portico_edge_descriptor_budget",
        "How the descriptor limit is shared out: descriptors (RLIMIT_NOFILE), listeners_and_probes, connections (maxConnections), udp_flows (maxUdpFlows).",
        &["share"],
    );
    (limit_reached, budget)
}

/// Presence among several edges: the announced VIPs, readiness, drain,
/// announce errors, and whether this edge writes to the cluster.
fn presence(r: &Registry) -> (IntGaugeVec, IntGauge, IntGauge, IntCounter, IntGauge) {
    let announced = gauge_vec(
        r,
        "portico_edge_vip_announced",
        "Each VIP this edge serves: 1 while its route is in the announce table (a routing daemon exports it), 0 while it is withdrawn (not ready, drained, stopping, or no healthy node where the config asks for that).",
        &["vip"],
    );
    let ready = register(
        r,
        IntGauge::new(
            "portico_edge_ready",
            "1 while the edge is ready to serve (every listener open, every node probed at least once) and not drained: what /readyz answers 200 for.",
        ),
    );
    let drained = register(
        r,
        IntGauge::new(
            "portico_edge_drained",
            "1 while an operator has drained the edge (portico-edge drain): its VIPs are withdrawn and /readyz answers 503, while it keeps serving the connections that still come.",
        ),
    );
    let announce_errors = register(
        r,
        IntCounter::new(
            "portico_edge_announce_errors_total",
            "Errors creating the announce device or adding and removing the routes of announced VIPs.",
        ),
    );
    let leader = register(
        r,
        IntGauge::new(
            "portico_edge_kubernetes_leader",
            "1 while this edge holds the leader election's Lease and so writes Service statuses and Events; 0 while another edge does (or, before the first election, nobody yet).",
        ),
    );
    (announced, ready, drained, announce_errors, leader)
}

/// The `limit` label values of `portico_edge_limit_reached_total`.
pub mod limit {
    /// A TCP connection waited for a slot.
    pub const CONNECTIONS: &str = "connections";
    /// A datagram that would have started a UDP flow was dropped.
    pub const UDP_FLOWS: &str = "udp_flows";
}

impl EdgeMetrics {
    /// Exports the descriptor budget's shares.
    pub fn set_budget(&self, budget: &crate::budget::Budget) {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (share, value) in [
            ("descriptors", budget.descriptors),
            ("listeners_and_probes", budget.config),
            ("connections", u64::from(budget.max_connections)),
            ("udp_flows", u64::from(budget.max_udp_flows)),
        ] {
            self.budget.with_label_values(&[share]).set(clamp(value));
        }
    }

    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Self {
        let r = Registry::new();
        let sp = &["service", "port"];
        let (generation, listeners, vip_errors, kube_stale) = scalars(&r);
        let (announced, ready, drained, announce_errors, leader) = presence(&r);
        let (limit_reached, budget) = limits(&r);
        let (bird_up, bgp_session_up, bfd_session_up) = bird(&r);
        let metrics = EdgeMetrics {
            accepted: counter_vec(&r, "portico_edge_connections_accepted_total", "Client connections accepted by a listener.", sp),
            rejected: counter_vec(
                &r,
                "portico_edge_connections_rejected_total",
                "Client connections closed before any node was contacted, by reason.",
                &["service", "port", "reason"],
            ),
            active: gauge_vec(&r, "portico_edge_connections_active", "Client connections currently proxied to a node.", sp),
            failed: counter_vec(
                &r,
                "portico_edge_connections_failed_total",
                "Client connections closed because no node could be connected to after all retries.",
                sp,
            ),
            bytes: counter_vec(
                &r,
                "portico_edge_bytes_total",
                "Bytes copied, by direction (client_to_node, node_to_client).",
                &["service", "port", "direction"],
            ),
            retries: counter_vec(
                &r,
                "portico_edge_connect_retries_total",
                "Connect attempts to a further node, after a failed one or alongside one still pending after connectAttemptDelay.",
                sp,
            ),
            backend_up: gauge_vec(
                &r,
                "portico_edge_backend_up",
                "Health of each probe target as the edge judges it (1 up, 0 down).",
                &["node", "target", "check"],
            ),
            backend_weight: gauge_vec(
                &r,
                "portico_edge_backend_weight",
                "Weight of each probe target (X-Load-Balancing-Endpoint-Weight for Local Services, else 1).",
                &["node", "target", "check"],
            ),
            backend_transitions: counter_vec(
                &r,
                "portico_edge_backend_transitions_total",
                "Health state changes of probe targets, by new state.",
                &["node", "target", "check", "to"],
            ),
            probe_duration: histogram_vec(
                &r,
                "portico_edge_probe_duration_seconds",
                "Duration of health probes, by check kind and result.",
                &["check", "result"],
            ),
            connect_duration: histogram_vec(
                &r,
                "portico_edge_connect_duration_seconds",
                "Duration of connects to nodes, by result.",
                &["result"],
            ),
            reloads: counter_vec(&r, "portico_edge_reloads_total", "Configuration reloads, by result (ok, failed).", &["result"]),
            generation,
            listeners,
            listener_errors: counter_vec(
                &r,
                "portico_edge_listener_errors_total",
                "Errors opening or accepting on listeners, by kind.",
                &["kind"],
            ),
            vip_errors,
            route_problems: gauge_vec(
                &r,
                "portico_edge_route_problems",
                "Listeners that cannot carry traffic, by Service, port and problem.",
                &["service", "port", "problem"],
            ),
            kube_stale,
            kube_status_writes: counter_vec(
                &r,
                "portico_edge_kubernetes_status_writes_total",
                "Writes of status.loadBalancer to Services, by result (ok, failed).",
                &["result"],
            ),
            kube_events: counter_vec(
                &r,
                "portico_edge_kubernetes_events_total",
                "Events recorded on Services, by type (Normal, Warning).",
                &["type"],
            ),
            limit_reached,
            budget,
            announced,
            ready,
            drained,
            announce_errors,
            leader,
            bird_up,
            bgp_session_up,
            bfd_session_up,
            hook_requests: counter_vec(
                &r,
                "portico_edge_hook_requests_total",
                "Requests to the cloud-provider hook API, by route (ensure, update, get, delete, list; none: no such route or method) and HTTP status code.",
                &["route", "code"],
            ),
            registry: r,
        };
        // Known label values from the start, so a rate reads 0 rather
        // than nothing before the first time.
        for l in [limit::CONNECTIONS, limit::UDP_FLOWS] {
            metrics.limit_reached.with_label_values(&[l]);
        }
        metrics
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Resolves the handles one route's connections use.
    pub fn route(&self, service: &str, port: &str) -> RouteMetrics {
        let l = [service, port];
        RouteMetrics {
            accepted: self.accepted.with_label_values(&l),
            rejected_source_range: self.rejected.with_label_values(&[
                service,
                port,
                reject::SOURCE_RANGE,
            ]),
            rejected_invalid_range: self.rejected.with_label_values(&[
                service,
                port,
                reject::INVALID_SOURCE_RANGE,
            ]),
            rejected_no_healthy: self.rejected.with_label_values(&[
                service,
                port,
                reject::NO_HEALTHY_BACKEND,
            ]),
            rejected_no_backend: self.rejected.with_label_values(&[
                service,
                port,
                reject::NO_BACKEND,
            ]),
            active: self.active.with_label_values(&l),
            failed: self.failed.with_label_values(&l),
            retries: self.retries.with_label_values(&l),
            bytes_in: self
                .bytes
                .with_label_values(&[service, port, "client_to_node"]),
            bytes_out: self
                .bytes
                .with_label_values(&[service, port, "node_to_client"]),
            connect_ok: self.connect_duration.with_label_values(&["ok"]),
            connect_err: self.connect_duration.with_label_values(&["error"]),
        }
    }
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Pre-resolved metric handles for one route.
#[derive(Clone)]
pub struct RouteMetrics {
    /// Accepted connections.
    pub accepted: IntCounter,
    /// Rejected: outside source ranges.
    pub rejected_source_range: IntCounter,
    /// Rejected: invalid source ranges (fail closed).
    pub rejected_invalid_range: IntCounter,
    /// Rejected: all down, fail closed.
    pub rejected_no_healthy: IntCounter,
    /// Rejected: no backend at all.
    pub rejected_no_backend: IntCounter,
    /// Active connections.
    pub active: IntGauge,
    /// Failed connections.
    pub failed: IntCounter,
    /// Connect retries.
    pub retries: IntCounter,
    /// Bytes client -> node.
    pub bytes_in: IntCounter,
    /// Bytes node -> client.
    pub bytes_out: IntCounter,
    /// Successful connect latency.
    pub connect_ok: Histogram,
    /// Failed connect latency.
    pub connect_err: Histogram,
}
