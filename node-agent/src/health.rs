//! The node agent's health check servers: what the edge (or any cloud load
//! balancer) probes to decide whether to send traffic to this node.
//!
//! They answer exactly like kube-proxy's (`pkg/proxy/healthcheck`), so the
//! edge works the same whether kube-proxy or the node agent runs on a node:
//! - [`NodeHealthServer`] (`:10256`): `GET /healthz` is 200 while the last
//!   successful rule sync is fresh and the Node is not on its way out (being
//!   deleted, or tainted `ToBeDeletedByClusterAutoscaler`), else 503;
//!   `/livez` is the same but ignores the Node. The edge uses it for
//!   `externalTrafficPolicy: Cluster` Services.
//! - [`ServiceHealthServers`]: one listener per `healthCheckNodePort` of an
//!   `externalTrafficPolicy: Local` Service, any path: 200 only when this node
//!   has local endpoints for it and the proxy is healthy, with the endpoint
//!   count in `X-Load-Balancing-Endpoint-Weight`.
//!
//! Both read one shared [`HealthState`], which the sync loop updates after
//! every successful sync and the Node watch on every Node change; time comes
//! from a [`Clock`] so tests control it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdTcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{HeaderName, HeaderValue, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use portico_config::Node;
use portico_config::ServiceKey;
use serde::Serialize;
use tokio::sync::oneshot;

pub use portico_config::names::{
    ENDPOINT_WEIGHT_HEADER as WEIGHT_HEADER, KUBE_PROXY_HEALTH_PORT as NODE_HEALTH_PORT,
};

/// [`WEIGHT_HEADER`] in the lowercase form `http` requires for a static name
/// (HTTP header names are case-insensitive on the wire).
const WEIGHT_HEADER_NAME: HeaderName = HeaderName::from_static("x-load-balancing-endpoint-weight");

/// The address listeners use when told to listen on all addresses: `::`,
/// which on Linux (`net.ipv6.bindv6only = 0`, the default) also accepts
/// IPv4, like Go's `:port` listeners in kube-proxy. Where IPv6 is disabled
/// the listener falls back to `0.0.0.0`.
pub const ALL_ADDRESSES: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// The node health server's default address: all addresses, port 10256.
pub const DEFAULT_NODE_HEALTH_ADDR: SocketAddr = SocketAddr::new(ALL_ADDRESSES, NODE_HEALTH_PORT);

/// Where the health servers get the current time from. Production uses
/// [`SystemTime::now`]; tests pass a clock they move by hand, so staleness
/// is tested without sleeping.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Errors of the health servers.
#[derive(Debug, thiserror::Error)]
pub enum HealthServerError {
    /// The node health server could not listen on its address.
    #[error("cannot listen for node health checks on {addr}: {source}")]
    NodeBind {
        /// The address it tried.
        addr: SocketAddr,
        /// Why it failed.
        source: io::Error,
    },
    /// A Service's `healthCheckNodePort` could not be opened; the other
    /// Services' ports are unaffected, and the next sync tries again.
    #[error("cannot open health check port {port} of Service {service} on {addr}: {source}")]
    ServiceBind {
        /// The Service the port belongs to.
        service: ServiceKey,
        /// Its `healthCheckNodePort`.
        port: u16,
        /// The address tried.
        addr: SocketAddr,
        /// Why it failed (typically: address in use).
        source: io::Error,
    },
    /// A Service asked for health check port 0, which would make the kernel
    /// pick a port nobody probes.
    #[error("Service {service} has health check port 0, which cannot be served")]
    InvalidPort {
        /// The Service.
        service: ServiceKey,
    },
}

/// What the health servers answer from: when rules were last synced and
/// whether the Node may receive traffic. Cheap to clone (one `Arc`) and to
/// update (one short lock), so the sync loop and the Node watch update it
/// as often as they like.
#[derive(Clone)]
pub struct HealthState {
    inner: Arc<StateInner>,
}

struct StateInner {
    clock: Clock,
    max_age: Duration,
    /// When the state was created: freshness counts from here until the
    /// first successful sync (see [`HealthState::with_clock`]).
    created: SystemTime,
    mutable: Mutex<Mutable>,
}

struct Mutable {
    last_sync: Option<SystemTime>,
    node_eligible: bool,
}

/// One consistent reading of the state, taken per request.
#[derive(Debug, Clone, Copy)]
struct Reading {
    now: SystemTime,
    /// The last successful sync, or the creation time before the first one.
    last_updated: SystemTime,
    proxy_healthy: bool,
    node_eligible: bool,
}

impl HealthState {
    /// A state on the system clock. `max_age` is how old the last successful
    /// sync may be before the proxy counts as unhealthy; kube-proxy uses
    /// twice its sync period.
    pub fn new(max_age: Duration) -> Self {
        Self::with_clock(max_age, Arc::new(SystemTime::now))
    }

    /// A state on the given clock.
    ///
    /// Before the first [`record_sync_success`](Self::record_sync_success)
    /// the proxy counts as healthy for `max_age` from this call, then as
    /// stale: as upstream kube-proxy, which starts healthy so a node that
    /// is still starting is not taken out of rotation, but does not stay
    /// healthy if rules never get programmed. The Node counts as eligible
    /// until [`set_node`](Self::set_node) says otherwise (upstream too).
    pub fn with_clock(max_age: Duration, clock: Clock) -> Self {
        let created = clock();
        HealthState {
            inner: Arc::new(StateInner {
                clock,
                max_age,
                created,
                mutable: Mutex::new(Mutable {
                    last_sync: None,
                    node_eligible: true,
                }),
            }),
        }
    }

    /// Records that the rules were successfully synced at `at`. An `at`
    /// older than one already recorded is ignored, so reports that arrive
    /// out of order never make the proxy look staler than it is.
    pub fn record_sync_success(&self, at: SystemTime) {
        let mut m = self.lock();
        if m.last_sync.is_none_or(|prev| at > prev) {
            m.last_sync = Some(at);
        }
    }

    /// Updates the Node's eligibility from its current state: not eligible
    /// while it has a `deletionTimestamp` or the `ToBeDeletedByClusterAutoscaler`
    /// taint, so load balancers drain it before it goes away.
    pub fn set_node(&self, node: &Node) {
        self.lock().node_eligible = !node.leaving();
    }

    /// Whether the last successful sync is recent enough (what `/livez`
    /// and `serviceProxyHealthy` report).
    pub fn proxy_healthy(&self) -> bool {
        self.read().proxy_healthy
    }

    /// Whether the Node may receive load-balanced traffic.
    pub fn node_eligible(&self) -> bool {
        self.lock().node_eligible
    }

    fn read(&self) -> Reading {
        let now = (self.inner.clock)();
        let m = self.lock();
        let last_updated = m.last_sync.unwrap_or(self.inner.created);
        // A sync stamped in the future (clock stepped back) is fresh: the
        // clock moving is no reason to fail every node at once.
        let proxy_healthy = now
            .duration_since(last_updated)
            .map_or(true, |age| age <= self.inner.max_age);
        Reading {
            now,
            last_updated,
            proxy_healthy,
            node_eligible: m.node_eligible,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Mutable> {
        // Every update is a single assignment, so a panic elsewhere while the
        // lock was held cannot leave it inconsistent: keep serving.
        self.inner
            .mutable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The clock is a closure and has nothing to show; a reading does.
        let r = self.read();
        f.debug_struct("HealthState")
            .field("max_age", &self.inner.max_age)
            .field("last_updated", &rfc3339(r.last_updated))
            .field("proxy_healthy", &r.proxy_healthy)
            .field("node_eligible", &r.node_eligible)
            .finish()
    }
}

/// kube-proxy's node health server: `/healthz` and `/livez`. Serves until
/// dropped; dropping stops accepting at once and lets in-flight requests end.
#[derive(Debug)]
pub struct NodeHealthServer {
    running: Running,
}

impl NodeHealthServer {
    /// Listens on `addr` (use [`DEFAULT_NODE_HEALTH_ADDR`] in production;
    /// port 0 picks a free port) and serves from `state`. Returns the
    /// server and the address it actually listens on.
    ///
    /// Must be called within a Tokio runtime.
    pub fn start(
        addr: SocketAddr,
        state: HealthState,
    ) -> Result<(NodeHealthServer, SocketAddr), HealthServerError> {
        let bind_err = |source| HealthServerError::NodeBind { addr, source };
        let listener = bind(addr).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let router = Router::new()
            .route("/healthz", any(healthz))
            .route("/livez", any(livez))
            .with_state(state);
        let running =
            Running::spawn(listener, router, format!("node health {local}")).map_err(bind_err)?;
        tracing::info!(%local, "serving node health checks");
        Ok((NodeHealthServer { running }, local))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.running.local
    }
}

/// The body of `/healthz` and `/livez` (upstream's field names and order).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeBody {
    last_updated: String,
    current_time: String,
    /// Absent from `/livez`, as upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
}

async fn healthz(State(state): State<HealthState>) -> Response {
    let r = state.read();
    let body = NodeBody {
        last_updated: rfc3339(r.last_updated),
        current_time: rfc3339(r.now),
        node_eligible: Some(r.node_eligible),
    };
    json_response(r.proxy_healthy && r.node_eligible, &body, None)
}

async fn livez(State(state): State<HealthState>) -> Response {
    let r = state.read();
    let body = NodeBody {
        last_updated: rfc3339(r.last_updated),
        current_time: rfc3339(r.now),
        node_eligible: None,
    };
    json_response(r.proxy_healthy, &body, None)
}

/// The health servers of `externalTrafficPolicy: Local` Services, one
/// listener per `healthCheckNodePort`. Dropping it closes them all.
#[derive(Debug)]
pub struct ServiceHealthServers {
    bind_ip: IpAddr,
    state: HealthState,
    servers: BTreeMap<u16, ServiceServer>,
}

/// One open port: the listener's task and what it answers, which `sync`
/// changes in place.
#[derive(Debug)]
struct ServiceServer {
    target: Arc<Mutex<ServiceTarget>>,
    running: Running,
}

/// What a Service health server reports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceTarget {
    service: ServiceKey,
    local_endpoints: usize,
}

impl ServiceHealthServers {
    /// No servers yet; they will listen on all addresses ([`ALL_ADDRESSES`]).
    pub fn new(state: HealthState) -> Self {
        Self::with_bind_ip(ALL_ADDRESSES, state)
    }

    /// No servers yet; they will listen on `bind_ip` only (a node address,
    /// or `127.0.0.1` in tests).
    pub fn with_bind_ip(bind_ip: IpAddr, state: HealthState) -> Self {
        ServiceHealthServers {
            bind_ip,
            state,
            servers: BTreeMap::new(),
        }
    }

    /// Makes the open ports equal to `wanted` (port -> Service and its number
    /// of local endpoints on this node): closes ports no longer wanted, opens
    /// new ones, and updates the others in place, without reopening them.
    ///
    /// Returns one error per port that could not be opened; every other port
    /// is served regardless, and a failed port is tried again on the next
    /// call. Must be called within a Tokio runtime.
    pub fn sync(&mut self, wanted: BTreeMap<u16, (ServiceKey, usize)>) -> Vec<HealthServerError> {
        self.servers.retain(|port, server| {
            let keep = wanted.contains_key(port);
            if !keep {
                tracing::info!(port, service = %lock(&server.target).service, local = %server.running.local, "closing Service health check port");
            }
            // Dropping the server is what closes its listener.
            keep
        });
        let mut errors = Vec::new();
        for (port, (service, local_endpoints)) in wanted {
            let target = ServiceTarget {
                service,
                local_endpoints,
            };
            if let Some(server) = self.servers.get(&port) {
                let mut current = lock(&server.target);
                if *current != target {
                    tracing::debug!(port, service = %target.service, local_endpoints, "updating Service health check");
                    *current = target;
                }
                continue;
            }
            match self.open(port, target) {
                Ok(server) => {
                    self.servers.insert(port, server);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "Service health check port not served");
                    errors.push(err);
                }
            }
        }
        errors
    }

    /// The ports currently served.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }

    fn open(&self, port: u16, target: ServiceTarget) -> Result<ServiceServer, HealthServerError> {
        if port == 0 {
            return Err(HealthServerError::InvalidPort {
                service: target.service,
            });
        }
        let addr = SocketAddr::new(self.bind_ip, port);
        let service = target.service.clone();
        let bind_err = |source| HealthServerError::ServiceBind {
            service: service.clone(),
            port,
            addr,
            source,
        };
        let listener = bind(addr).map_err(bind_err)?;
        let target = Arc::new(Mutex::new(target));
        let router = Router::new()
            .fallback(service_health)
            .with_state(ServiceHandlerState {
                health: self.state.clone(),
                target: target.clone(),
            });
        let running = Running::spawn(listener, router, format!("Service {service} health"))
            .map_err(bind_err)?;
        tracing::info!(port, %service, local = %running.local, "serving Service health checks");
        Ok(ServiceServer { target, running })
    }
}

#[derive(Clone)]
struct ServiceHandlerState {
    health: HealthState,
    target: Arc<Mutex<ServiceTarget>>,
}

/// The body of a Service health check (upstream's field names and order).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceBody<'a> {
    service: ServiceName<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

#[derive(Serialize)]
struct ServiceName<'a> {
    namespace: &'a str,
    name: &'a str,
}

async fn service_health(State(state): State<ServiceHandlerState>) -> Response {
    let target = lock(&state.target).clone();
    let proxy_healthy = state.health.proxy_healthy();
    let body = ServiceBody {
        service: ServiceName {
            namespace: &target.service.namespace,
            name: &target.service.name,
        },
        local_endpoints: target.local_endpoints,
        service_proxy_healthy: proxy_healthy,
    };
    json_response(
        target.local_endpoints > 0 && proxy_healthy,
        &body,
        Some(target.local_endpoints),
    )
}

/// A 200 or 503 JSON response with kube-proxy's headers, plus the endpoint
/// weight header when `weight` is given.
fn json_response(healthy: bool, body: &impl Serialize, weight: Option<usize>) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(bytes) => bytes,
        Err(err) => {
            // Plain strings, numbers and booleans always serialize; this is
            // here so a future field cannot turn into a panic.
            tracing::error!(error = %err, "cannot serialize health check body");
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return resp;
        }
    };
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Some(weight) = weight {
        headers.insert(WEIGHT_HEADER_NAME, HeaderValue::from(weight));
    }
    resp
}

/// A serving task; dropping it stops the listener.
#[derive(Debug)]
struct Running {
    local: SocketAddr,
    /// Never sent on: dropping it is the stop signal, so a server cannot
    /// outlive its owner.
    _stop: oneshot::Sender<Infallible>,
}

impl Running {
    fn spawn(listener: StdTcpListener, router: Router, what: String) -> io::Result<Running> {
        let local = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (stop, stopped) = oneshot::channel::<Infallible>();
        tokio::spawn(async move {
            // The listener is dropped as soon as the signal fires (new
            // connections are refused from then on); idle keep-alive
            // connections close after their current request. No client
            // holds more than its share of connections, nor one longer
            // than the header timeout without a request.
            portico_serve::serve(
                listener,
                router,
                portico_serve::ServerLimits::ADMIN,
                "health check",
                wait_for_drop(stopped),
            )
            .await;
            tracing::debug!(%what, %local, "health server stopped");
        });
        Ok(Running { local, _stop: stop })
    }
}

/// Resolves when the sender is dropped (the only thing that can happen to a
/// channel of `Infallible`).
async fn wait_for_drop(stopped: oneshot::Receiver<Infallible>) {
    if let Ok(never) = stopped.await {
        match never {}
    }
}

/// Binds a listening socket. `::` falls back to `0.0.0.0` where IPv6 is not
/// available, so "all addresses" works on IPv4-only hosts too; an address in
/// use or a refused permission is the same on both, so those are reported.
fn bind(addr: SocketAddr) -> io::Result<StdTcpListener> {
    match StdTcpListener::bind(addr) {
        Err(err)
            if addr.ip() == ALL_ADDRESSES
                && !matches!(
                    err.kind(),
                    io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
                ) =>
        {
            tracing::debug!(%addr, error = %err, "IPv6 unavailable; listening on IPv4 only");
            StdTcpListener::bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                addr.port(),
            ))
        }
        other => other,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each update is one assignment, so a poisoned lock still holds
    // consistent data: keep answering health checks.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Formats a time as RFC 3339 in UTC with whole seconds
/// (`2025-11-25T21:00:00Z`), as Go's `time.RFC3339` does.
///
/// Times before 1970 show as the epoch and times past year 9999 as its last
/// second: neither occurs on a working node, and RFC 3339 has four-digit
/// years.
fn rfc3339(t: SystemTime) -> String {
    const MAX_SECS: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(MAX_SECS);
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// 2025-11-25T21:00:00Z.
    const T0: u64 = 1_764_104_400;
    const MAX_AGE: Duration = Duration::from_secs(60);
    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A clock the test moves by hand.
    #[derive(Clone)]
    struct FakeClock(Arc<Mutex<SystemTime>>);

    impl FakeClock {
        fn at(secs: u64) -> Self {
            FakeClock(Arc::new(Mutex::new(at(secs))))
        }
        fn set(&self, secs: u64) {
            *lock(&self.0) = at(secs);
        }
        fn clock(&self) -> Clock {
            let me = self.clone();
            Arc::new(move || *lock(&me.0))
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn state_at(secs: u64) -> (HealthState, FakeClock) {
        let clock = FakeClock::at(secs);
        (HealthState::with_clock(MAX_AGE, clock.clock()), clock)
    }

    fn node(deleting: bool, to_be_deleted: bool) -> Node {
        use portico_config::ExclusionReason;
        let excluded = [
            (deleting, ExclusionReason::Deleting),
            (to_be_deleted, ExclusionReason::ToBeDeletedTaint),
        ];
        Node {
            name: "node-a".into(),
            excluded: excluded
                .into_iter()
                .filter_map(|(on, reason)| on.then_some(reason))
                .collect(),
            ..Node::default()
        }
    }

    fn key(ns: &str, name: &str) -> ServiceKey {
        ServiceKey::new(ns, name)
    }

    /// A parsed HTTP/1.1 response.
    #[derive(Debug)]
    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// Sends one GET on an open connection and reads one response (by
    /// Content-Length, so the connection can be reused).
    async fn request_on(stream: &mut TcpStream, path: &str, close: bool) -> Resp {
        let conn = if close { "close" } else { "keep-alive" };
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {conn}\r\n\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .expect("write request");
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.expect("read response");
            assert!(n > 0, "connection closed before the response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).expect("utf-8 head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().expect("content-length"))
            .unwrap_or(0);
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < len {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "connection closed inside the body");
            body.extend_from_slice(&chunk[..n]);
        }
        Resp {
            status,
            headers,
            body: String::from_utf8(body).expect("utf-8 body"),
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> Resp {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        request_on(&mut stream, path, true).await
    }

    fn assert_json_headers(resp: &Resp) {
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    }

    /// A port nothing listens on right now (bind :0, release).
    fn free_port() -> u16 {
        let l = StdTcpListener::bind((LOCALHOST, 0)).expect("bind :0");
        l.local_addr().expect("local addr").port()
    }

    /// Waits, with a deadline, until connecting to `addr` is refused.
    async fn wait_refused(addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpStream::connect(addr).await {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return,
                other => {
                    assert!(Instant::now() < deadline, "{addr} still accepts: {other:?}");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    fn start_node(state: &HealthState) -> (NodeHealthServer, SocketAddr) {
        NodeHealthServer::start(SocketAddr::new(LOCALHOST, 0), state.clone()).expect("start")
    }

    fn services(state: &HealthState) -> ServiceHealthServers {
        ServiceHealthServers::with_bind_ip(LOCALHOST, state.clone())
    }

    fn wanted(entries: &[(u16, &str, usize)]) -> BTreeMap<u16, (ServiceKey, usize)> {
        entries
            .iter()
            .map(|&(port, name, n)| (port, (key("ns", name), n)))
            .collect()
    }

    #[test]
    fn rfc3339_formats_utc_seconds() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(at(T0)), "2025-11-25T21:00:00Z");
        assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(at(1_735_689_599)), "2024-12-31T23:59:59Z");
        assert_eq!(rfc3339(at(4_107_542_400)), "2100-03-01T00:00:00Z");
        assert_eq!(
            rfc3339(at(T0) + Duration::from_millis(999)),
            "2025-11-25T21:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            rfc3339(at(300_000_000_000)),
            "9999-12-31T23:59:59Z",
            "clamped to four-digit years"
        );
    }

    #[tokio::test]
    async fn healthz_is_200_while_the_last_sync_is_fresh() {
        let (state, clock) = state_at(T0);
        state.record_sync_success(at(T0 + 10));
        let (_server, addr) = start_node(&state);
        // Exactly max_age old still counts as fresh ("not older than").
        clock.set(T0 + 10 + 60);
        let resp = get(addr, "/healthz").await;
        assert_eq!(resp.status, 200);
        assert_json_headers(&resp);
        assert_eq!(
            resp.body,
            r#"{"lastUpdated":"2025-11-25T21:00:10Z","currentTime":"2025-11-25T21:01:10Z","nodeEligible":true}"#
        );
    }

    #[tokio::test]
    async fn healthz_is_503_when_the_last_sync_is_stale() {
        let (state, clock) = state_at(T0);
        state.record_sync_success(at(T0 + 10));
        let (_server, addr) = start_node(&state);
        clock.set(T0 + 10 + 61);
        let resp = get(addr, "/healthz").await;
        assert_eq!(resp.status, 503);
        assert_json_headers(&resp);
        assert_eq!(
            resp.body,
            r#"{"lastUpdated":"2025-11-25T21:00:10Z","currentTime":"2025-11-25T21:01:11Z","nodeEligible":true}"#
        );
        // A new successful sync makes it healthy again.
        state.record_sync_success(at(T0 + 70));
        assert_eq!(get(addr, "/healthz").await.status, 200);
    }

    #[tokio::test]
    async fn before_the_first_sync_freshness_counts_from_creation() {
        let (state, clock) = state_at(T0);
        let (_server, addr) = start_node(&state);
        let resp = get(addr, "/healthz").await;
        assert_eq!(resp.status, 200, "healthy while starting, as upstream");
        assert_eq!(
            resp.body,
            r#"{"lastUpdated":"2025-11-25T21:00:00Z","currentTime":"2025-11-25T21:00:00Z","nodeEligible":true}"#
        );
        clock.set(T0 + 61);
        assert_eq!(get(addr, "/healthz").await.status, 503);
        assert_eq!(get(addr, "/livez").await.status, 503);
    }

    #[tokio::test]
    async fn out_of_order_sync_reports_keep_the_latest() {
        let (state, clock) = state_at(T0);
        state.record_sync_success(at(T0 + 100));
        state.record_sync_success(at(T0 + 50));
        clock.set(T0 + 150);
        assert!(state.proxy_healthy());
        clock.set(T0 + 161);
        assert!(!state.proxy_healthy());
    }

    #[tokio::test]
    async fn a_sync_in_the_future_counts_as_fresh() {
        let (state, _clock) = state_at(T0);
        state.record_sync_success(at(T0 + 3600));
        assert!(state.proxy_healthy());
    }

    #[tokio::test]
    async fn healthz_is_503_while_the_node_is_deleted() {
        let (state, _clock) = state_at(T0);
        state.record_sync_success(at(T0));
        state.set_node(&node(true, false));
        let (_server, addr) = start_node(&state);
        let resp = get(addr, "/healthz").await;
        assert_eq!(resp.status, 503);
        assert_json_headers(&resp);
        assert_eq!(
            resp.body,
            r#"{"lastUpdated":"2025-11-25T21:00:00Z","currentTime":"2025-11-25T21:00:00Z","nodeEligible":false}"#
        );
    }

    #[tokio::test]
    async fn healthz_is_503_while_the_node_is_tainted_and_recovers() {
        let (state, _clock) = state_at(T0);
        state.record_sync_success(at(T0));
        state.set_node(&node(false, true));
        let (_server, addr) = start_node(&state);
        let resp = get(addr, "/healthz").await;
        assert_eq!(resp.status, 503);
        assert!(
            resp.body.ends_with(r#""nodeEligible":false}"#),
            "{}",
            resp.body
        );
        assert!(!state.node_eligible());
        // Taint removed (scale-down cancelled): eligible again.
        state.set_node(&node(false, false));
        let resp = get(addr, "/healthz").await;
        assert_eq!(resp.status, 200);
        assert!(
            resp.body.ends_with(r#""nodeEligible":true}"#),
            "{}",
            resp.body
        );
    }

    #[tokio::test]
    async fn livez_ignores_the_node_but_not_staleness() {
        let (state, clock) = state_at(T0);
        state.record_sync_success(at(T0));
        state.set_node(&node(true, true));
        let (_server, addr) = start_node(&state);
        let resp = get(addr, "/livez").await;
        assert_eq!(resp.status, 200);
        assert_json_headers(&resp);
        assert_eq!(
            resp.body,
            r#"{"lastUpdated":"2025-11-25T21:00:00Z","currentTime":"2025-11-25T21:00:00Z"}"#
        );
        clock.set(T0 + 61);
        let resp = get(addr, "/livez").await;
        assert_eq!(resp.status, 503);
        assert_eq!(
            resp.body,
            r#"{"lastUpdated":"2025-11-25T21:00:00Z","currentTime":"2025-11-25T21:01:01Z"}"#
        );
    }

    #[tokio::test]
    async fn other_paths_are_404_and_any_method_is_served() {
        let (state, _clock) = state_at(T0);
        let (_server, addr) = start_node(&state);
        for path in ["/", "/metrics", "/healthz/x", "/livezz"] {
            assert_eq!(get(addr, path).await.status, 404, "{path}");
        }
        assert_eq!(get(addr, "/healthz?verbose=1").await.status, 200);
        // Go's ServeMux answers every method; so do we.
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.expect("read");
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    }

    #[tokio::test]
    async fn node_server_reports_an_address_in_use() {
        let blocker = StdTcpListener::bind((LOCALHOST, 0)).expect("bind");
        let addr = blocker.local_addr().expect("addr");
        let (state, _clock) = state_at(T0);
        match NodeHealthServer::start(addr, state) {
            Err(err @ HealthServerError::NodeBind { .. }) => {
                assert!(err.to_string().contains(&addr.to_string()), "{err}");
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("bound an address in use"),
        }
    }

    #[tokio::test]
    async fn dropping_the_node_server_closes_its_port() {
        let (state, _clock) = state_at(T0);
        let (server, addr) = start_node(&state);
        assert_eq!(server.local_addr(), addr);
        assert_eq!(get(addr, "/livez").await.status, 200);
        drop(server);
        wait_refused(addr).await;
    }

    #[tokio::test]
    async fn service_port_is_200_with_the_endpoint_count_as_weight() {
        let (state, _clock) = state_at(T0);
        state.record_sync_success(at(T0));
        let mut servers = services(&state);
        let port = free_port();
        assert!(servers.sync(wanted(&[(port, "web", 3)])).is_empty());
        let resp = get(SocketAddr::new(LOCALHOST, port), "/").await;
        assert_eq!(resp.status, 200);
        assert_json_headers(&resp);
        assert_eq!(resp.header(WEIGHT_HEADER), Some("3"));
        assert_eq!(
            resp.body,
            r#"{"service":{"namespace":"ns","name":"web"},"localEndpoints":3,"serviceProxyHealthy":true}"#
        );
    }

    #[tokio::test]
    async fn service_port_answers_any_path() {
        let (state, _clock) = state_at(T0);
        let mut servers = services(&state);
        let port = free_port();
        assert!(servers.sync(wanted(&[(port, "web", 1)])).is_empty());
        for path in ["/", "/healthz", "/some/deep/path?x=1"] {
            let resp = get(SocketAddr::new(LOCALHOST, port), path).await;
            assert_eq!(resp.status, 200, "{path}");
        }
    }

    #[tokio::test]
    async fn service_port_is_503_without_local_endpoints() {
        let (state, _clock) = state_at(T0);
        state.record_sync_success(at(T0));
        let mut servers = services(&state);
        let port = free_port();
        assert!(servers.sync(wanted(&[(port, "web", 0)])).is_empty());
        let resp = get(SocketAddr::new(LOCALHOST, port), "/").await;
        assert_eq!(resp.status, 503);
        assert_json_headers(&resp);
        assert_eq!(resp.header(WEIGHT_HEADER), Some("0"));
        assert_eq!(
            resp.body,
            r#"{"service":{"namespace":"ns","name":"web"},"localEndpoints":0,"serviceProxyHealthy":true}"#
        );
    }

    #[tokio::test]
    async fn service_port_is_503_when_the_proxy_is_stale() {
        let (state, clock) = state_at(T0);
        state.record_sync_success(at(T0));
        // Node state does not matter for Service health checks (upstream:
        // only the proxier's health and the endpoint count).
        state.set_node(&node(true, false));
        let mut servers = services(&state);
        let port = free_port();
        assert!(servers.sync(wanted(&[(port, "web", 2)])).is_empty());
        let addr = SocketAddr::new(LOCALHOST, port);
        assert_eq!(get(addr, "/").await.status, 200);
        clock.set(T0 + 61);
        let resp = get(addr, "/").await;
        assert_eq!(resp.status, 503);
        assert_eq!(resp.header(WEIGHT_HEADER), Some("2"));
        assert_eq!(
            resp.body,
            r#"{"service":{"namespace":"ns","name":"web"},"localEndpoints":2,"serviceProxyHealthy":false}"#
        );
    }

    #[tokio::test]
    async fn sync_adds_updates_in_place_and_removes() {
        let (state, _clock) = state_at(T0);
        let mut servers = services(&state);
        let (p1, p2) = (free_port(), free_port());
        assert!(servers.sync(wanted(&[(p1, "a", 1)])).is_empty());
        assert_eq!(servers.ports(), vec![p1]);
        let a1 = SocketAddr::new(LOCALHOST, p1);

        // A keep-alive connection survives a count change: the port was
        // updated in place, not reopened (a reopen closes its connections).
        let mut conn = TcpStream::connect(a1).await.expect("connect");
        let resp = request_on(&mut conn, "/", false).await;
        assert_eq!(resp.header(WEIGHT_HEADER), Some("1"));

        assert!(servers
            .sync(wanted(&[(p1, "a", 5), (p2, "b", 0)]))
            .is_empty());
        let resp = request_on(&mut conn, "/", false).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header(WEIGHT_HEADER), Some("5"));
        let resp = get(SocketAddr::new(LOCALHOST, p2), "/").await;
        assert_eq!(resp.status, 503);
        assert!(resp.body.contains(r#""name":"b""#), "{}", resp.body);

        // Down to zero endpoints, still in place.
        assert!(servers
            .sync(wanted(&[(p1, "a", 0), (p2, "b", 0)]))
            .is_empty());
        let resp = request_on(&mut conn, "/", false).await;
        assert_eq!(resp.status, 503);

        // Removing p1 closes it, idle keep-alive connections included (so
        // none keeps answering for a port that is gone); p2 keeps serving.
        assert!(servers.sync(wanted(&[(p2, "b", 4)])).is_empty());
        assert_eq!(servers.ports(), vec![p2]);
        wait_refused(a1).await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
            .await
            .expect("idle connection to a removed port was not closed");
        assert!(rest.is_empty(), "unexpected bytes {rest:?} ({read:?})");
        let resp = get(SocketAddr::new(LOCALHOST, p2), "/").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header(WEIGHT_HEADER), Some("4"));

        // And the port can be opened again later.
        assert!(servers
            .sync(wanted(&[(p1, "a", 1), (p2, "b", 4)]))
            .is_empty());
        assert_eq!(get(a1, "/").await.status, 200);
    }

    #[tokio::test]
    async fn a_port_moving_to_another_service_reports_the_new_one() {
        let (state, _clock) = state_at(T0);
        let mut servers = services(&state);
        let port = free_port();
        assert!(servers.sync(wanted(&[(port, "old", 1)])).is_empty());
        assert!(servers.sync(wanted(&[(port, "new", 1)])).is_empty());
        let resp = get(SocketAddr::new(LOCALHOST, port), "/").await;
        assert!(resp.body.contains(r#""name":"new""#), "{}", resp.body);
    }

    #[tokio::test]
    async fn a_port_in_use_is_reported_and_the_others_still_work() {
        let (state, _clock) = state_at(T0);
        let mut servers = services(&state);
        let blocker = StdTcpListener::bind((LOCALHOST, 0)).expect("bind");
        let busy = blocker.local_addr().expect("addr").port();
        let good = free_port();
        let errors = servers.sync(wanted(&[(busy, "blocked", 1), (good, "fine", 1)]));
        assert_eq!(errors.len(), 1, "{errors:?}");
        match &errors[0] {
            HealthServerError::ServiceBind {
                service,
                port,
                source,
                ..
            } => {
                assert_eq!(service, &key("ns", "blocked"));
                assert_eq!(*port, busy);
                assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
            }
            other => panic!("unexpected error {other}"),
        }
        let message = errors[0].to_string();
        assert!(message.contains("ns/blocked"), "{message}");
        assert!(message.contains(&busy.to_string()), "{message}");
        assert_eq!(servers.ports(), vec![good]);
        assert_eq!(get(SocketAddr::new(LOCALHOST, good), "/").await.status, 200);

        // Once the port is free, the next sync opens it.
        drop(blocker);
        let errors = servers.sync(wanted(&[(busy, "blocked", 1), (good, "fine", 1)]));
        assert!(errors.is_empty(), "{errors:?}");
        let resp = get(SocketAddr::new(LOCALHOST, busy), "/").await;
        assert!(resp.body.contains(r#""name":"blocked""#), "{}", resp.body);
    }

    #[tokio::test]
    async fn port_zero_is_an_error_naming_the_service() {
        let (state, _clock) = state_at(T0);
        let mut servers = services(&state);
        let errors = servers.sync(wanted(&[(0, "zero", 1)]));
        assert!(
            matches!(&errors[..], [HealthServerError::InvalidPort { service }] if service == &key("ns", "zero")),
            "{errors:?}"
        );
        assert!(servers.ports().is_empty());
    }

    #[tokio::test]
    async fn dropping_the_service_servers_closes_every_port() {
        let (state, _clock) = state_at(T0);
        let mut servers = services(&state);
        let (p1, p2) = (free_port(), free_port());
        assert!(servers
            .sync(wanted(&[(p1, "a", 1), (p2, "b", 1)]))
            .is_empty());
        drop(servers);
        wait_refused(SocketAddr::new(LOCALHOST, p1)).await;
        wait_refused(SocketAddr::new(LOCALHOST, p2)).await;
    }

    /// Sends `bytes`, then reads whatever comes back until the server
    /// closes; asserts it is a 400 or nothing at all.
    async fn send_garbage(addr: SocketAddr, bytes: &[u8]) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // The server may close before reading everything; a failed write is
        // one of the accepted outcomes.
        if let Err(err) = stream.write_all(bytes).await {
            assert!(
                matches!(
                    err.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ),
                "{err}"
            );
            return;
        }
        let mut raw = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .expect("server neither answered nor closed");
        match read {
            Ok(_) => {
                let text = String::from_utf8_lossy(&raw);
                assert!(
                    raw.is_empty() || text.starts_with("HTTP/1.1 400"),
                    "unexpected answer to garbage: {text}"
                );
            }
            Err(err) => assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}"),
        }
    }

    const GARBAGE: [&[u8]; 4] = [
        b"\x00\x01\x02\xff\xfe\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nbad header line\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n",
    ];

    #[tokio::test]
    async fn garbage_gets_400_or_a_closed_connection_and_the_servers_survive() {
        let (state, _clock) = state_at(T0);
        let (_node, node_addr) = start_node(&state);
        let mut servers = services(&state);
        let port = free_port();
        assert!(servers.sync(wanted(&[(port, "web", 1)])).is_empty());
        let svc_addr = SocketAddr::new(LOCALHOST, port);
        for bytes in GARBAGE {
            send_garbage(node_addr, bytes).await;
            send_garbage(svc_addr, bytes).await;
        }
        assert_eq!(get(node_addr, "/healthz").await.status, 200);
        assert_eq!(get(svc_addr, "/").await.status, 200);
    }

    /// Reads a health check result the way the edge's `KubeProxyCheck`
    /// does: one GET with `Connection: close`, healthy iff 200, weight from
    /// the header (trimmed, `u32`), 1 when absent or unparsable.
    async fn edge_probe(addr: SocketAddr, path: &str) -> (bool, u32) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: portico-edge\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.expect("read");
        let (head, _body) = raw.split_once("\r\n\r\n").expect("response head");
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status");
        let weight = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(WEIGHT_HEADER))
            .and_then(|(_, v)| v.trim().parse::<u32>().ok())
            .unwrap_or(1);
        (status == 200, weight)
    }

    #[tokio::test]
    async fn the_edge_reads_status_and_weight() {
        let (state, clock) = state_at(T0);
        state.record_sync_success(at(T0));
        let (_node, node_addr) = start_node(&state);
        let mut servers = services(&state);
        let (p1, p2) = (free_port(), free_port());
        assert!(servers
            .sync(wanted(&[(p1, "a", 7), (p2, "b", 0)]))
            .is_empty());
        let (a1, a2) = (
            SocketAddr::new(LOCALHOST, p1),
            SocketAddr::new(LOCALHOST, p2),
        );

        assert_eq!(edge_probe(node_addr, "/healthz").await, (true, 1));
        assert_eq!(edge_probe(a1, "/").await, (true, 7));
        assert_eq!(edge_probe(a2, "/").await, (false, 0));

        clock.set(T0 + 61);
        assert_eq!(edge_probe(node_addr, "/healthz").await, (false, 1));
        assert_eq!(edge_probe(a1, "/").await, (false, 7));
    }
}
