//! Health checks of nodes, shared by target.
//!
//! Every [`HealthTarget`] gets exactly one probe loop, however many Service
//! ports need it: a cluster of 500 nodes and 1,000 `Cluster` Services costs
//! 500 kube-proxy probes per interval, not 500,000.
//!
//! The probes themselves are pingora health checks behind pingora's
//! [`HealthCheck`] trait: [`TcpHealthCheck`] for the TCP-connect fallback, and
//! [`KubeProxyCheck`] (ours, built on pingora's HTTP connector) for kube-proxy's
//! health servers, because pingora's `HttpHealthCheck` cannot hand a response
//! header (the endpoint weight) back per backend. What pingora's `Backends`
//! scheduler lacks for us, and what this module adds: a first probe at once,
//! rise/fall applied to both active probes and passive connect failures, a
//! per-probe timeout, weights, and a change signal that makes the edge rebuild
//! its routing snapshot.
//!
//! Probes of a target start one interval apart. New settings apply at once:
//! a loop waiting for its next probe re-plans the wait with the new interval
//! (a reload from `1h` to `2s` probes within two seconds, not within the
//! hour), and the next probe uses the new timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::connectors::http::Connector as HttpConnector;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error as PingoraError, ErrorType, Result as PingoraResult};
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{HealthCheck, TcpHealthCheck};
use pingora_load_balancing::Backend;
use portico_config::HealthSettings;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::metrics::EdgeMetrics;
use crate::plan::HealthTarget;

pub use portico_config::names::ENDPOINT_WEIGHT_HEADER as WEIGHT_HEADER;

/// A target's health as the edge judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetStatus {
    /// Whether traffic may go there.
    pub healthy: bool,
    /// Relative weight (the endpoint weight header for `Local` checks, else 1).
    pub weight: u32,
    /// Whether at least one probe has completed. Until then the target is
    /// optimistically healthy: connect retry covers a dead one, and the first
    /// probe runs at once.
    pub probed: bool,
    /// Consecutive failed observations (probes and passive connect failures).
    pub consecutive_failures: u32,
}

impl Default for TargetStatus {
    fn default() -> Self {
        TargetStatus {
            healthy: true,
            weight: 1,
            probed: false,
            consecutive_failures: 0,
        }
    }
}

/// A copy of every target's status, for the snapshot builder and status views.
pub type HealthView = BTreeMap<HealthTarget, TargetStatus>;

/// The rise/fall state machine of one target.
#[derive(Debug, Clone, Default)]
struct Machine {
    status: TargetStatus,
    /// Consecutive observations contrary to the current state.
    contrary: u32,
    last_error: Option<String>,
}

impl Machine {
    /// Applies one observation (an active probe, or a passive connect
    /// result); returns true when the state flipped.
    fn observe(&mut self, ok: bool, active: bool, rise: u32, fall: u32) -> bool {
        if ok {
            self.status.consecutive_failures = 0;
        } else {
            self.status.consecutive_failures = self.status.consecutive_failures.saturating_add(1);
        }
        if active && !self.status.probed {
            // The very first probe decides at once: no reason to send traffic
            // to a node for `fall` intervals when we already know it is down.
            // (A passive failure before it is just one failure towards `fall`.)
            self.status.probed = true;
            self.contrary = 0;
            let flipped = self.status.healthy != ok;
            self.status.healthy = ok;
            return flipped;
        }
        if ok == self.status.healthy {
            self.contrary = 0;
            return false;
        }
        self.contrary += 1;
        let needed = if ok { rise } else { fall };
        if self.contrary >= needed.max(1) {
            self.status.healthy = ok;
            self.contrary = 0;
            true
        } else {
            false
        }
    }
}

/// A cell a probe writes the weight it read into; carried in the pingora
/// [`Backend`]'s extensions so the probe knows where to put it.
#[derive(Clone, Default)]
struct WeightCell(Arc<AtomicU32>);

/// HTTP GET against kube-proxy's health servers (or the node agent's), on
/// pingora's HTTP/1 connector.
///
/// For the node health server (`:10256/healthz`) a 200 means healthy. For a
/// `Local` Service's `healthCheckNodePort` (any path) 200 means the node has
/// local endpoints and 503 that it has none; the
/// `X-Load-Balancing-Endpoint-Weight` header becomes the node's weight.
pub struct KubeProxyCheck {
    connector: HttpConnector,
    path: &'static str,
    timeout: Duration,
}

impl KubeProxyCheck {
    /// A check that GETs `path` with the given per-phase timeout.
    pub fn new(path: &'static str, timeout: Duration) -> Self {
        KubeProxyCheck {
            connector: HttpConnector::new(None),
            path,
            timeout,
        }
    }
}

#[async_trait]
impl HealthCheck for KubeProxyCheck {
    async fn check(&self, target: &Backend) -> PingoraResult<()> {
        let mut peer = HttpPeer::new(target.addr.to_string(), false, String::new());
        peer.options.connection_timeout = Some(self.timeout);
        peer.options.read_timeout = Some(self.timeout);
        peer.options.write_timeout = Some(self.timeout);
        let (mut session, _reused) = self.connector.get_http_session(&peer).await?;
        let mut req = RequestHeader::build("GET", self.path.as_bytes(), None)?;
        req.insert_header("Host", target.addr.to_string())?;
        req.insert_header("User-Agent", "portico-edge")?;
        req.insert_header("Connection", "close")?;
        session.write_request_header(Box::new(req)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let resp = session.response_header().ok_or_else(|| {
            PingoraError::explain(ErrorType::InvalidHTTPHeader, "no response header")
        })?;
        let status = resp.status.as_u16();
        if let Some(cell) = target.ext.get::<WeightCell>() {
            let weight = resp
                .headers
                .get(WEIGHT_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or(1);
            cell.0.store(weight, Ordering::Relaxed);
        }
        if status != 200 {
            return PingoraError::e_explain(
                ErrorType::CustomCode("health check status", status),
                format!("GET {} answered {status}", self.path),
            );
        }
        Ok(())
    }

    fn health_threshold(&self, _success: bool) -> usize {
        // Rise and fall are applied by the prober, which also counts passive
        // failures; pingora's counters would see only active probes.
        1
    }
}

/// Owns one probe loop per target and the shared status table.
pub struct HealthChecker {
    settings: Arc<Mutex<HealthSettings>>,
    /// Bumped when the settings change, so every loop re-plans its wait.
    settings_changed: watch::Sender<u64>,
    machines: Arc<Mutex<HashMap<HealthTarget, Machine>>>,
    tasks: HashMap<HealthTarget, JoinHandle<()>>,
    nodes: Arc<Mutex<BTreeMap<HealthTarget, Arc<str>>>>,
    changed: watch::Sender<u64>,
    passive_tx: mpsc::UnboundedSender<HealthTarget>,
    metrics: EdgeMetrics,
}

/// Cheap handle the data path uses to report failed connects.
#[derive(Clone)]
pub struct PassiveReporter {
    tx: mpsc::UnboundedSender<HealthTarget>,
}

impl PassiveReporter {
    /// Records a failed connect to a backend judged by `target`: it counts as
    /// one failed observation towards `fall`.
    pub fn connect_failed(&self, target: HealthTarget) {
        if self.tx.send(target).is_err() {
            tracing::debug!(%target, "health checker gone; passive failure dropped");
        }
    }

    /// A reporter whose reports go nowhere, for tests of the data path.
    #[cfg(test)]
    pub fn detached() -> Self {
        let (tx, _rx) = mpsc::unbounded_channel();
        PassiveReporter { tx }
    }
}

impl HealthChecker {
    /// Creates a checker; `changed` is bumped on every health transition.
    /// Must be called inside a tokio runtime.
    pub fn new(settings: HealthSettings, metrics: EdgeMetrics) -> (Self, watch::Receiver<u64>) {
        let (changed, changed_rx) = watch::channel(0u64);
        let (passive_tx, mut passive_rx) = mpsc::unbounded_channel::<HealthTarget>();
        let checker = HealthChecker {
            settings: Arc::new(Mutex::new(settings)),
            settings_changed: watch::channel(0).0,
            machines: Arc::new(Mutex::new(HashMap::new())),
            tasks: HashMap::new(),
            nodes: Arc::new(Mutex::new(BTreeMap::new())),
            changed,
            passive_tx,
            metrics,
        };
        let ctx = checker.context();
        tokio::spawn(async move {
            while let Some(target) = passive_rx.recv().await {
                ctx.observe(
                    target,
                    false,
                    false,
                    1,
                    Some("connect failed (passive)".into()),
                );
            }
        });
        (checker, changed_rx)
    }

    fn context(&self) -> ProbeContext {
        ProbeContext {
            settings: self.settings.clone(),
            settings_changed: self.settings_changed.subscribe(),
            machines: self.machines.clone(),
            nodes: self.nodes.clone(),
            changed: self.changed.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// The handle the data path reports connect failures through.
    pub fn reporter(&self) -> PassiveReporter {
        PassiveReporter {
            tx: self.passive_tx.clone(),
        }
    }

    /// Replaces the settings. They apply at once: each loop's next probe is
    /// due one new interval after its last one (at once if that has passed),
    /// not when the wait planned with the old interval ends.
    pub fn set_settings(&self, settings: HealthSettings) {
        let changed = {
            let mut current = lock(&self.settings);
            let changed = *current != settings;
            *current = settings;
            changed
        };
        if changed {
            self.settings_changed.send_modify(|n| *n += 1);
        }
    }

    /// Makes the probed set equal to `targets`: starts a loop (probing at once)
    /// for each new target and stops the loops of removed ones.
    pub fn set_targets(
        &mut self,
        targets: &BTreeSet<HealthTarget>,
        nodes: &BTreeMap<HealthTarget, Arc<str>>,
    ) {
        let old_nodes = std::mem::replace(&mut *lock(&self.nodes), nodes.clone());
        let metrics = &self.metrics;
        self.tasks.retain(|t, handle| {
            if targets.contains(t) {
                return true;
            }
            handle.abort();
            // Drop the gauges of removed targets so dashboards show no ghosts.
            if let Some(node) = old_nodes.get(t) {
                let labels = [&**node, &t.addr().to_string(), t.kind()];
                for gauge in [&metrics.backend_up, &metrics.backend_weight] {
                    if gauge.remove_label_values(&labels).is_err() {
                        tracing::debug!(target = %t, "no gauge to remove");
                    }
                }
            }
            false
        });
        lock(&self.machines).retain(|t, _| targets.contains(t));
        for t in targets {
            if self.tasks.contains_key(t) {
                continue;
            }
            lock(&self.machines).insert(*t, Machine::default());
            let node = nodes.get(t).cloned().unwrap_or_else(|| Arc::from("?"));
            let labels = [&*node, &t.addr().to_string(), t.kind()];
            self.metrics.backend_up.with_label_values(&labels).set(1);
            self.metrics
                .backend_weight
                .with_label_values(&labels)
                .set(1);
            let ctx = self.context();
            self.tasks.insert(*t, tokio::spawn(probe_loop(*t, ctx)));
        }
    }

    /// The current status of every target.
    pub fn view(&self) -> HealthView {
        lock(&self.machines)
            .iter()
            .map(|(t, m)| (*t, m.status))
            .collect()
    }

    /// The last error seen for each target that is failing.
    pub fn last_errors(&self) -> BTreeMap<HealthTarget, String> {
        lock(&self.machines)
            .iter()
            .filter_map(|(t, m)| m.last_error.clone().map(|e| (*t, e)))
            .collect()
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        for (_, handle) in self.tasks.drain() {
            handle.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind that
    // is still consistent (each update is a single assignment), so poisoning
    // is not a reason to stop health checking.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone)]
struct ProbeContext {
    settings: Arc<Mutex<HealthSettings>>,
    settings_changed: watch::Receiver<u64>,
    machines: Arc<Mutex<HashMap<HealthTarget, Machine>>>,
    nodes: Arc<Mutex<BTreeMap<HealthTarget, Arc<str>>>>,
    changed: watch::Sender<u64>,
    metrics: EdgeMetrics,
}

impl ProbeContext {
    fn observe(
        &self,
        target: HealthTarget,
        ok: bool,
        active: bool,
        weight: u32,
        error: Option<String>,
    ) {
        let (rise, fall) = {
            let s = lock(&self.settings);
            (s.rise, s.fall)
        };
        let (flipped, status, publish) = {
            let mut machines = lock(&self.machines);
            let Some(m) = machines.get_mut(&target) else {
                return;
            };
            let was_probed = m.status.probed;
            let flipped = m.observe(ok, active, rise, fall);
            let first = !was_probed && m.status.probed;
            // The first result is news even when it confirms the optimistic
            // start: status views show the node as probed from then on.
            let publish = first || (ok && m.status.weight != weight);
            if ok {
                m.status.weight = weight;
                m.last_error = None;
            } else {
                m.last_error = error.clone();
            }
            (flipped, m.status, publish)
        };
        let node = lock(&self.nodes)
            .get(&target)
            .cloned()
            .unwrap_or_else(|| Arc::from("?"));
        let addr = target.addr().to_string();
        let labels = [&*node, addr.as_str(), target.kind()];
        self.metrics
            .backend_weight
            .with_label_values(&labels)
            .set(i64::from(status.weight));
        if flipped {
            let to = if status.healthy { "up" } else { "down" };
            self.metrics
                .backend_up
                .with_label_values(&labels)
                .set(i64::from(status.healthy));
            self.metrics
                .backend_transitions
                .with_label_values(&[&*node, addr.as_str(), target.kind(), to])
                .inc();
            if status.healthy {
                tracing::info!(%target, node = %node, "target is up");
            } else {
                tracing::warn!(%target, node = %node, error = error.as_deref().unwrap_or(""), "target is down");
            }
        }
        if flipped || publish {
            self.changed.send_modify(|g| *g += 1);
        }
    }
}

fn make_check(target: HealthTarget, timeout: Duration) -> Box<dyn HealthCheck + Send + Sync> {
    match target {
        HealthTarget::NodeProxy(_) => Box::new(KubeProxyCheck::new("/healthz", timeout)),
        HealthTarget::ServiceLocal(_) => Box::new(KubeProxyCheck::new("/", timeout)),
        HealthTarget::TcpConnect(_) => {
            let mut tcp = TcpHealthCheck::new();
            tcp.peer_template.options.connection_timeout = Some(timeout);
            tcp
        }
    }
}

async fn probe_loop(target: HealthTarget, mut ctx: ProbeContext) {
    let weight = WeightCell::default();
    let addr: std::net::SocketAddr = target.addr();
    let mut backend = Backend {
        addr: PingoraAddr::Inet(addr),
        weight: 1,
        ext: Default::default(),
    };
    backend.ext.insert(weight.clone());
    // The check (and its connector) lives as long as the timeout it was
    // built with; a reload that changes the timeout rebuilds it.
    let mut current: Option<(Duration, Box<dyn HealthCheck + Send + Sync>)> = None;
    loop {
        let (interval, timeout) = {
            let s = lock(&ctx.settings);
            (s.interval, s.timeout)
        };
        if current.as_ref().is_none_or(|(t, _)| *t != timeout) {
            current = Some((timeout, make_check(target, timeout)));
        }
        let Some((_, check)) = &current else { continue };
        let started = Instant::now();
        weight.0.store(1, Ordering::Relaxed);
        let result = match tokio::time::timeout(timeout, check.check(&backend)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(probe_error(&e)),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        let elapsed = started.elapsed().as_secs_f64();
        let result_label = if result.is_ok() { "ok" } else { "error" };
        ctx.metrics
            .probe_duration
            .with_label_values(&[target.kind(), result_label])
            .observe(elapsed);
        match result {
            Ok(()) => ctx.observe(target, true, true, weight.0.load(Ordering::Relaxed), None),
            Err(e) => {
                tracing::debug!(%target, error = %e, "probe failed");
                ctx.observe(target, false, true, 1, Some(e));
            }
        }
        wait_for_next_probe(started, interval, &ctx.settings, &mut ctx.settings_changed).await;
    }
}

/// Waits until one interval has passed since the probe that `started`; a
/// change of the settings meanwhile re-plans the wait with the new
/// interval (a shorter one may end it at once).
async fn wait_for_next_probe(
    started: Instant,
    mut interval: Duration,
    settings: &Mutex<HealthSettings>,
    changed: &mut watch::Receiver<u64>,
) {
    loop {
        let due = tokio::time::Instant::from_std(started + interval);
        tokio::select! {
            () = tokio::time::sleep_until(due) => return,
            seen = changed.changed() => {
                if seen.is_err() {
                    // The checker is gone (its loops are being aborted).
                    return std::future::pending().await;
                }
                interval = lock(settings).interval;
            }
        }
    }
}

/// A short, readable reason from pingora's layered error: the HTTP status
/// for a bad answer, else the innermost cause (`Connection refused (os error 111)`).
fn probe_error(e: &PingoraError) -> String {
    match e.etype() {
        ErrorType::CustomCode(..) => e
            .context
            .as_ref()
            .map(|c| c.as_str().to_string())
            .unwrap_or_else(|| e.reason_str().to_string()),
        _ => {
            let root = e.root_cause().to_string();
            let root = root.trim();
            if root.is_empty() {
                e.etype().as_str().to_string()
            } else {
                root.to_string()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_probe_decides_then_rise_and_fall_apply() {
        let mut m = Machine::default();
        assert!(m.status.healthy && !m.status.probed);
        assert!(
            m.observe(false, true, 2, 3),
            "first failed probe marks down at once"
        );
        assert!(!m.status.healthy);
        assert!(!m.observe(true, true, 2, 3));
        assert!(m.observe(true, true, 2, 3), "second success reaches rise=2");
        assert!(m.status.healthy);
        assert!(!m.observe(false, true, 2, 3));
        assert!(!m.observe(false, true, 2, 3));
        assert!(m.observe(false, true, 2, 3), "third failure reaches fall=3");
        assert!(!m.status.healthy);
    }

    #[test]
    fn a_passive_failure_before_the_first_probe_counts_towards_fall() {
        let mut m = Machine::default();
        assert!(
            !m.observe(false, false, 2, 2),
            "one passive failure is not enough"
        );
        assert!(m.status.healthy && !m.status.probed);
        assert!(m.observe(false, false, 2, 2), "the second reaches fall=2");
        assert!(!m.status.probed, "no probe has run yet");
        assert!(m.observe(true, true, 2, 2), "the first probe still decides");
    }

    #[test]
    fn contrary_streak_resets_on_agreeing_observation() {
        let mut m = Machine::default();
        m.observe(true, true, 2, 2);
        assert!(!m.observe(false, true, 2, 2));
        assert!(!m.observe(true, true, 2, 2));
        assert!(!m.observe(false, true, 2, 2), "streak restarted");
        assert!(m.status.healthy);
        assert_eq!(m.status.consecutive_failures, 1);
    }

    /// Probes of `target` so far, from the probe duration histogram.
    fn probes(metrics: &EdgeMetrics) -> u64 {
        ["ok", "error"]
            .iter()
            .map(|r| {
                metrics
                    .probe_duration
                    .with_label_values(&["tcp", r])
                    .get_sample_count()
            })
            .sum()
    }

    #[tokio::test]
    async fn a_shorter_interval_applies_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = HealthTarget::TcpConnect(listener.local_addr().unwrap());
        let accept = tokio::spawn(async move { while let Ok((_, _)) = listener.accept().await {} });
        let slow = HealthSettings {
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(1),
            ..HealthSettings::default()
        };
        let metrics = EdgeMetrics::new();
        let (mut checker, _) = HealthChecker::new(slow.clone(), metrics.clone());
        let nodes = BTreeMap::from([(target, Arc::from("n"))]);
        checker.set_targets(&BTreeSet::from([target]), &nodes);
        let deadline = Instant::now() + Duration::from_secs(10);
        while probes(&metrics) < 1 {
            assert!(Instant::now() < deadline, "the first probe runs at once");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The loop now sleeps for an hour; the same settings again change
        // nothing, a shorter interval applies at once.
        checker.set_settings(slow.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(probes(&metrics), 1);
        checker.set_settings(HealthSettings {
            interval: Duration::from_millis(100),
            ..slow
        });
        let changed = Instant::now();
        while probes(&metrics) < 4 {
            assert!(
                changed.elapsed() < Duration::from_secs(5),
                "probes every 100ms after the change, not after the hour"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        accept.abort();
    }

    async fn probe(
        check: &KubeProxyCheck,
        addr: std::net::SocketAddr,
    ) -> (Result<(), String>, u32) {
        let weight = WeightCell::default();
        let mut backend = Backend {
            addr: PingoraAddr::Inet(addr),
            weight: 1,
            ext: Default::default(),
        };
        backend.ext.insert(weight.clone());
        let r = check.check(&backend).await.map_err(|e| probe_error(&e));
        (r, weight.0.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn kube_proxy_check_reads_status_and_endpoint_weight() {
        use portico_lab::standin::{StandInNode, StandInSpec};
        let node = StandInNode::start(StandInSpec {
            name: "n".into(),
            node_health: Some("127.0.0.1:0".parse().unwrap()),
            service_health: vec!["127.0.0.1:0".parse().unwrap()],
            ..Default::default()
        })
        .await
        .unwrap();
        let (healthz, local) = (node.bound[0], node.bound[1]);
        let node_check = KubeProxyCheck::new("/healthz", Duration::from_secs(2));
        let local_check = KubeProxyCheck::new("/", Duration::from_secs(2));

        assert_eq!(probe(&node_check, healthz).await.0, Ok(()));
        node.state.healthy.store(false, Ordering::Relaxed);
        assert_eq!(
            probe(&node_check, healthz).await.0,
            Err("GET /healthz answered 503".into())
        );

        node.state.local_endpoints.store(3, Ordering::Relaxed);
        assert_eq!(probe(&local_check, local).await, (Ok(()), 3));
        node.state.local_endpoints.store(0, Ordering::Relaxed);
        assert_eq!(
            probe(&local_check, local).await,
            (Err("GET / answered 503".into()), 0)
        );

        // A port nothing listens on: bound, then closed synchronously.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (r, _) = probe(&node_check, closed).await;
        assert!(r.as_ref().is_err_and(|e| e.contains("refused")), "{r:?}");
    }
}
