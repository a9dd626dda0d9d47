//! The node agent's Prometheus metrics (`portico_node_agent_*`), in a registry
//! of its own so several agents can run in one test process.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::ruleset::Ruleset;

/// Every metric the agent exports.
#[derive(Clone)]
pub struct AgentMetrics {
    registry: Registry,
    /// Time from reading the objects to rules in the kernel, by kind of sync.
    pub sync_duration: HistogramVec,
    /// Syncs that failed (nft refused, or the input could not be read).
    pub sync_failures: IntCounter,
    /// Chains, rules and set/map elements installed, by kind.
    pub installed: IntGaugeVec,
    /// Objects or ports skipped as invalid in the last plan.
    pub skipped: IntGauge,
    /// Manifest documents, or Kubernetes objects, that could not be read or
    /// converted at the last load.
    pub source_errors: IntGauge,
    /// Unix time of the last successful sync.
    pub last_sync: IntGauge,
    /// Health check ports that could not be opened.
    pub health_port_errors: IntCounter,
    /// Seconds since the Kubernetes API server last answered the probe,
    /// while it does not (0 while it does, and with the manifest source).
    pub kube_stale: Gauge,
    /// Kubernetes watch errors, by resource.
    pub kube_watch_errors: IntCounterVec,
    /// Conntrack entries of stale UDP flows deleted.
    pub conntrack_deleted: IntCounter,
    /// Clean-ups of stale UDP flows that failed.
    pub conntrack_failures: IntCounter,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

impl AgentMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let sync_duration = HistogramVec::new(
            HistogramOpts::new(
                "portico_node_agent_sync_duration_seconds",
                "Time from reading the objects to rules in the kernel (plan + nft transaction), by kind (full, incremental, unchanged).",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["kind"],
        )
        .expect("valid metric definition");
        AgentMetrics {
            sync_duration: register(&r, sync_duration),
            sync_failures: register(
                &r,
                IntCounter::new("portico_node_agent_sync_failures_total", "Syncs that failed: the kernel refused the transaction, or the objects could not be read.")
                    .expect("valid metric definition"),
            ),
            installed: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "portico_node_agent_installed",
                        "Objects in table inet portico after the last successful sync, by kind (chains, rules, elements).",
                    ),
                    &["kind"],
                )
                .expect("valid metric definition"),
            ),
            skipped: register(
                &r,
                IntGauge::new(
                    "portico_node_agent_skipped_invalid",
                    "Service ports or endpoints skipped as invalid in the last plan (each is logged with its object and field).",
                )
                .expect("valid metric definition"),
            ),
            source_errors: register(
                &r,
                IntGauge::new(
                    "portico_node_agent_source_errors",
                    "Manifest documents or Kubernetes objects that could not be read or converted at the last load (each is logged with its object and field).",
                )
                .expect("valid metric definition"),
            ),
            last_sync: register(
                &r,
                IntGauge::new(
                    "portico_node_agent_last_sync_timestamp_seconds",
                    "Unix time of the last successful sync.",
                )
                .expect("valid metric definition"),
            ),
            health_port_errors: register(
                &r,
                IntCounter::new(
                    "portico_node_agent_health_port_errors_total",
                    "Health check node ports that could not be opened.",
                )
                .expect("valid metric definition"),
            ),
            kube_stale: register(
                &r,
                Gauge::new(
                    "portico_node_agent_kubernetes_stale_seconds",
                    "Seconds since the Kubernetes API server last answered (a one-object list every 2 s) while it does not answer; 0 while it does. Meanwhile the rules stay as last synced.",
                )
                .expect("valid metric definition"),
            ),
            kube_watch_errors: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "portico_node_agent_kubernetes_watch_errors_total",
                        "Kubernetes list/watch errors, by resource (services, endpointslices, node).",
                    ),
                    &["resource"],
                )
                .expect("valid metric definition"),
            ),
            conntrack_deleted: register(
                &r,
                IntCounter::new(
                    "portico_node_agent_conntrack_entries_deleted_total",
                    "Conntrack entries of UDP flows deleted because no serving endpoint of their Service port answers them any more (the client's next datagram is balanced again).",
                )
                .expect("valid metric definition"),
            ),
            conntrack_failures: register(
                &r,
                IntCounter::new(
                    "portico_node_agent_conntrack_cleanup_failures_total",
                    "Clean-ups of stale UDP flows that failed (the conntrack table could not be listed or an entry not deleted); retried at the next sync.",
                )
                .expect("valid metric definition"),
            ),
            registry: r,
        }
    }

    /// Records what a ruleset installs.
    pub fn record_installed(&self, ruleset: &Ruleset) {
        let rules: usize = ruleset.chains.values().map(|c| c.rules.len()).sum();
        let elements: usize = ruleset.sets.values().map(|s| s.elements.len()).sum();
        self.installed
            .with_label_values(&["chains"])
            .set(ruleset.chains.len() as i64);
        self.installed
            .with_label_values(&["rules"])
            .set(rules as i64);
        self.installed
            .with_label_values(&["elements"])
            .set(elements as i64);
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}
