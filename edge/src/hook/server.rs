//! The IO half of the hook API: its listener, the layers every request
//! passes, and the model the edge reads ([`HookSource`]).
//!
//! The routes and what they do are in `hook/routes.rs`, the bearer token
//! in `hook/auth.rs`. Around the routes, outermost first:
//!
//! | layer | what it does |
//! |---|---|
//! | `count` | `portico_edge_hook_requests_total{route,code}`, every answer below included |
//! | `auth::require_bearer` | 401 without the token, before anything else is done |
//! | `json_errors` | the layers' own answers (408, 413) as `{"error"}` bodies |
//! | `tower_http` `TimeoutLayer` | 408 when a call, its body and its wait for the state included, takes longer than [`Limits::request_timeout`] |
//! | `tower` `GlobalConcurrencyLimitLayer` | at most [`Limits::max_requests`] calls in flight; more wait (within the timeout) |
//! | `tower_http` `RequestBodyLimitLayer` | 413 for a body over [`Limits::max_body`]: up front by its `Content-Length`, else as soon as it grows over |
//!
//! Before any of them, hyper's HTTP/1 server closes a connection whose
//! request header does not arrive within [`Limits::header_timeout`] (a
//! half-sent header, or an idle kept-alive connection), and the accept
//! loop serves at most [`Limits::max_connections`] connections at once:
//! further ones wait in the listen backlog until one ends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::to_bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use portico_config::{AddressPool, HookApiSettings};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Mutex};
use tokio::task::JoinHandle;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use super::admission::Admission;
use super::auth::{self, read_token, Token};
use super::routes::{self, route_label, too_large, ApiError, Shared};
use super::state::{HookModel, HookState};
use super::store::{self, StoreError};
use crate::metrics::EdgeMetrics;

/// How long in-flight calls may finish when the source stops.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often a busy listen address is tried again (binary upgrade: the old
/// process lets go of it right after the handover).
const BIND_RETRY: Duration = Duration::from_millis(50);

/// What the hook API lets a client do; [`Limits::DEFAULT`] in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest request body, in bytes.
    pub max_body: usize,
    /// How long a call may take from its header to its answer (its body,
    /// its wait for a free slot and for the state included): 408 after.
    pub request_timeout: Duration,
    /// How long a client may take to send a request header, and how long a
    /// kept-alive connection may wait for its next request: the connection
    /// is closed after (hyper's `header_read_timeout` covers both).
    pub header_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one client address may hold at once; more are closed
    /// at once, so no one client can hold every connection slot.
    pub max_connections_per_client: usize,
    /// Calls in flight at once (each may hold a body of up to `max_body`,
    /// and its objects); more wait, within `request_timeout`.
    pub max_requests: usize,
}

impl Limits {
    /// The production limits.
    ///
    /// - `max_body` 128 MiB: the body is a `v1.Service` and the cluster's
    ///   whole `v1.Node` list, as the provider got them. 5,000 Nodes
    ///   (Kubernetes' supported maximum) of realistic size (50 images each,
    ///   the kubelet's default report, plus labels, annotations,
    ///   conditions) are 57.6 MiB as Go's `json.Marshal` writes them, and
    ///   about 87 MiB indented as `jq` prints them (the README's curl
    ///   example). A test keeps the measurement.
    /// - `request_timeout` 60 s: the Kubernetes API server's default; room
    ///   to send such a body over a slow link.
    /// - `header_timeout` 10 s.
    /// - `max_connections` 64: one cloud-controller-manager and a few
    ///   operators need a handful.
    /// - `max_connections_per_client` 8: the service controller calls one
    ///   load balancer at a time (a few workers at most).
    /// - `max_requests` 4: calls change the state one at a time anyway;
    ///   this bounds the memory bodies can take.
    pub const DEFAULT: Limits = Limits {
        max_body: 128 << 20,
        request_timeout: Duration::from_secs(60),
        header_timeout: Duration::from_secs(10),
        max_connections: 64,
        max_connections_per_client: 8,
        max_requests: 4,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Why the hook API could not start.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The token file cannot be read.
    #[error("cannot read the hook API token file {path}: {source}")]
    TokenRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file holds nothing but white space.
    #[error("the hook API token file {path} is empty")]
    TokenEmpty {
        /// The file.
        path: PathBuf,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr} for the hook API: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The state file cannot be loaded.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HookError {
    /// The process exit code: 64 (`EX_USAGE`) for a token file an operator
    /// must fix, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            HookError::TokenRead { .. } | HookError::TokenEmpty { .. } => 64,
            _ => 1,
        }
    }
}

/// The running hook API: its listener, its state, and the model it
/// contributes to the edge.
pub struct HookSource {
    addr: SocketAddr,
    model: watch::Receiver<Arc<HookModel>>,
    pools: watch::Sender<Vec<AddressPool>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl HookSource {
    /// [`HookSource::start_with`] the production [`Limits`].
    pub async fn start(
        settings: &HookApiSettings,
        pools: Vec<AddressPool>,
        admission: Arc<dyn Admission>,
        metrics: EdgeMetrics,
        bind_wait: Duration,
    ) -> Result<HookSource, HookError> {
        HookSource::start_with(
            settings,
            pools,
            admission,
            metrics,
            bind_wait,
            Limits::DEFAULT,
        )
        .await
    }

    /// Reads the token, binds the listen address (retrying for up to
    /// `bind_wait` while another process still holds it), loads the state
    /// and serves within `limits`. The model is ready when this returns.
    /// Load balancers of the state file that `admission` leaves out (the
    /// budget shrank, the config file took their name or listener) are
    /// dropped, each logged: the cloud-controller-manager ensures them
    /// again and gets the reason.
    pub async fn start_with(
        settings: &HookApiSettings,
        pools: Vec<AddressPool>,
        admission: Arc<dyn Admission>,
        metrics: EdgeMetrics,
        bind_wait: Duration,
        limits: Limits,
    ) -> Result<HookSource, HookError> {
        let token = read_token(&settings.token_file)?;
        let listener = bind(settings.listen, bind_wait).await?;
        let addr = listener.local_addr().map_err(|source| HookError::Bind {
            addr: settings.listen,
            source,
        })?;
        // Loaded after the bind: during an upgrade the old process may
        // change the state until it lets go of the address.
        let loaded = store::load(&settings.state_file)?;
        if let Some((to, why)) = &loaded.moved_aside {
            tracing::error!(
                path = %settings.state_file.display(),
                moved_to = %to.display(),
                error = %why,
                "the hook state file is corrupt: moved aside, starting with no hook load balancers (the cloud-controller-manager ensures them again at its next sync)"
            );
        }
        let state = admit_loaded(loaded.state, admission.as_ref(), &settings.state_file);
        tracing::info!(
            %addr,
            load_balancers = state.balancers().len(),
            state = %settings.state_file.display(),
            "hook API listening"
        );
        let (model_tx, model) = watch::channel(Arc::new(state.model()));
        let (pools_tx, pools_rx) = watch::channel(pools);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            state_file: settings.state_file.clone(),
            pools: pools_rx,
            admission,
            model: model_tx,
            max_body: limits.max_body,
        });
        let app = app(shared, Token::new(&token), metrics, limits);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(portico_serve::serve(
            listener,
            app,
            portico_serve::ServerLimits {
                max_connections: limits.max_connections,
                max_connections_per_client: limits.max_connections_per_client,
                header_timeout: limits.header_timeout,
            },
            "hook API",
            async move {
                // A dropped sender stops the server too.
                let _ = stop_rx.await;
            },
        ));
        Ok(HookSource {
            addr,
            model,
            pools: pools_tx,
            stop,
            task,
        })
    }

    /// The address the API listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The model, updated after every call that changed it.
    pub fn model(&self) -> watch::Receiver<Arc<HookModel>> {
        self.model.clone()
    }

    /// New address pools (after a config reload). Load balancers keep their
    /// addresses until their next EnsureLoadBalancer.
    pub fn set_pools(&self, pools: Vec<AddressPool>) {
        self.pools.send_if_modified(|p| {
            let changed = *p != pools;
            *p = pools;
            changed
        });
    }

    /// Stops listening; calls in flight may finish (for a few seconds).
    pub async fn stop(self) {
        if self.stop.send(()).is_err() {
            tracing::debug!("hook API server had already stopped");
        }
        let mut task = self.task;
        match tokio::time::timeout(STOP_GRACE, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "hook API server task failed"),
            Err(_) => {
                tracing::warn!(grace = ?STOP_GRACE, "hook API calls still running at stop; cut off");
                task.abort();
            }
        }
    }
}

async fn bind(addr: SocketAddr, wait: Duration) -> Result<TcpListener, HookError> {
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                if !told {
                    tracing::info!(%addr, "hook API address busy (the old process during an upgrade?); retrying");
                    told = true;
                }
                tokio::time::sleep(BIND_RETRY).await;
            }
            Err(source) => return Err(HookError::Bind { addr, source }),
        }
    }
}

/// The routes behind their layers (see the module's table).
fn app(shared: Arc<Shared>, token: Token, metrics: EdgeMetrics, limits: Limits) -> Router {
    // `Router::layer` wraps every route and both fallbacks, so the 404 and
    // 405 answers need the token too, and `count` sees the matched route.
    routes::router(shared).layer(
        ServiceBuilder::new()
            .layer(from_fn_with_state(metrics, count))
            .layer(from_fn_with_state(token, auth::require_bearer))
            .layer(from_fn_with_state(limits, json_errors))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                limits.request_timeout,
            ))
            .layer(GlobalConcurrencyLimitLayer::new(limits.max_requests))
            // One limit, the layer's (axum's extractors would apply their
            // own 2 MB default too).
            .layer(DefaultBodyLimit::disable())
            .layer(RequestBodyLimitLayer::new(limits.max_body)),
    )
}

/// Counts every answer by route and status code.
async fn count(State(metrics): State<EdgeMetrics>, req: Request, next: Next) -> Response {
    let route = route_label(
        req.method(),
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let response = next.run(req).await;
    metrics
        .hook_requests
        .with_label_values(&[route, response.status().as_str()])
        .inc();
    response
}

/// Gives the error answers the layers and axum make themselves (408 from
/// the timeout, 413 from the body limit, 400 for a path that is not UTF-8)
/// the API's `{"error"}` body; the routes' own answers pass unchanged.
async fn json_errors(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let error = match status {
        StatusCode::REQUEST_TIMEOUT => format!(
            "the call was not done within {}s",
            limits.request_timeout.as_secs_f64()
        ),
        StatusCode::PAYLOAD_TOO_LARGE => too_large(limits.max_body),
        _ => {
            // axum's own rejections: a line of text.
            let text = to_bytes(response.into_body(), 4096).await.ok();
            text.map(|t| String::from_utf8_lossy(&t).trim().to_string())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string())
        }
    };
    ApiError::new(status, error, None).into_response()
}

/// `state` without the load balancers `admission` leaves out, each logged.
fn admit_loaded(state: HookState, admission: &dyn Admission, file: &Path) -> HookState {
    let model = state.model();
    let refused = admission.left_out(&model.services, &model.nodes);
    if refused.is_empty() {
        return state;
    }
    for r in &refused {
        tracing::error!(
            service = %r.service,
            state = %file.display(),
            "hook load balancer of the state file not loaded: {}",
            r.reason
        );
    }
    state.without(refused.iter().map(|r| &r.service))
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::IpAddr;

    use portico_config::AddressRange;
    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::hook::{AdmitAll, ROUTES};

    const TOKEN: &str = "s3cret-token";

    /// Every wait on the server in these tests ends by then, or fails.
    const BOUND: Duration = Duration::from_secs(10);

    struct Reply {
        code: u16,
        head: String,
        body: Value,
    }

    impl Reply {
        fn parse(raw: &str) -> Reply {
            let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
            Reply {
                code: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
                head: head.to_string(),
                body: serde_json::from_str(body).unwrap_or(Value::Null),
            }
        }
    }

    fn request(method: &str, path: &str, token: Option<&str>, body: &str) -> String {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        req
    }

    /// Sends `raw` on a new connection and reads until the server closes
    /// it.
    async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(BOUND, s.read_to_end(&mut answer))
            .await
            .expect("an answer in time")
            .unwrap();
        String::from_utf8(answer).unwrap()
    }

    async fn call(
        addr: SocketAddr,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let req = request(method, path, token, body.unwrap_or(""));
        Reply::parse(&exchange(addr, req.as_bytes()).await)
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        state_dir: PathBuf,
        metrics: EdgeMetrics,
        source: HookSource,
    }

    impl Fixture {
        fn state_file(&self) -> PathBuf {
            self.state_dir.join("hook.json")
        }

        /// `portico_edge_hook_requests_total{route, code}`.
        fn counted(&self, route: &str, code: &str) -> u64 {
            self.metrics
                .hook_requests
                .with_label_values(&[route, code])
                .get()
        }
    }

    async fn start() -> Fixture {
        start_with(Limits::DEFAULT).await
    }

    async fn start_with(limits: Limits) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("  {TOKEN}\n")).unwrap();
        let state_dir = dir.path().join("state");
        let settings = HookApiSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            token_file,
            state_file: state_dir.join("hook.json"),
        };
        let pools = vec![AddressPool {
            name: "lab".into(),
            ranges: vec![AddressRange {
                first: "192.0.2.10".parse().unwrap(),
                last: "192.0.2.10".parse().unwrap(),
            }],
        }];
        let metrics = EdgeMetrics::new();
        let source = HookSource::start_with(
            &settings,
            pools,
            Arc::new(AdmitAll),
            metrics.clone(),
            Duration::ZERO,
            limits,
        )
        .await
        .unwrap();
        Fixture {
            _dir: dir,
            state_dir,
            metrics,
            source,
        }
    }

    fn ensure_body(name: &str, annotations: Value) -> String {
        json!({
            "service": {
                "metadata": {"namespace": "shop", "name": name, "uid": "0b6e-11", "annotations": annotations},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30080}]},
            },
            "nodes": [{"metadata": {"name": "n1"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}],
        })
        .to_string()
    }

    #[tokio::test]
    async fn every_route_is_served_and_guarded_by_the_token() {
        let f = start().await;
        let addr = f.source.local_addr();
        for r in ROUTES {
            let path = r
                .path
                .replace("{cluster}", "prod")
                .replace("{namespace}", "shop")
                .replace("{name}", "web");
            let denied = call(addr, r.method, &path, None, None).await;
            assert_eq!(denied.code, 401, "{} {path}", r.method);
            assert!(
                denied
                    .head
                    .to_lowercase()
                    .contains("www-authenticate: bearer"),
                "{}",
                denied.head
            );
            assert!(denied.body["error"].is_string());
            let wrong = call(addr, r.method, &path, Some("guess"), None).await;
            assert_eq!(wrong.code, 401);
            assert!(wrong.head.contains("invalid_token"), "{}", wrong.head);
            // With the token, the route is there: anything but "no route"
            // or "wrong method".
            let served = call(addr, r.method, &path, Some(TOKEN), None).await;
            assert_ne!(served.code, 405, "{} {path}", r.method);
            assert_ne!(
                served.body["error"]
                    .as_str()
                    .map(|e| e.starts_with("no route")),
                Some(true)
            );
            // And only the methods of ROUTES are served on the path.
            for method in ["GET", "PUT", "DELETE", "POST", "PATCH"] {
                if ROUTES
                    .iter()
                    .any(|o| o.path == r.path && o.method == method)
                {
                    continue;
                }
                let other = call(addr, method, &path, Some(TOKEN), None).await;
                assert_eq!(other.code, 405, "{method} {path}");
                assert_eq!(
                    other.body["error"],
                    format!("{method} is not served on {path}")
                );
            }
        }
        let unknown = call(addr, "GET", "/v2/anything", None, None).await;
        assert_eq!(unknown.code, 401, "unknown paths need the token too");
        let unknown = call(addr, "GET", "/v2/anything", Some(TOKEN), None).await;
        assert_eq!(unknown.code, 404);
        assert_eq!(
            unknown.body["error"],
            "no route /v2/anything; see docs/hook-api.openapi.yaml"
        );
        // Counted by route; no such route or method is `none`.
        assert_eq!(f.counted("ensure", "401"), 2);
        assert_eq!(f.counted("list", "200"), 1);
        assert_eq!(f.counted("none", "401"), 1);
        assert_eq!(f.counted("none", "404"), 1);
        assert!(f.counted("none", "405") >= 5);
        f.source.stop().await;
    }

    #[tokio::test]
    async fn malformed_bodies_are_refused_naming_the_json_path() {
        let f = start().await;
        let addr = f.source.local_addr();
        let path = "/v1/clusters/prod/loadbalancers/shop/web";
        let bad_port = json!({
            "service": {"metadata": {"namespace": "shop", "name": "web"},
                        "spec": {"ports": [{"port": "eighty"}]}},
            "nodes": [],
        })
        .to_string();
        let r = call(addr, "PUT", path, Some(TOKEN), Some(&bad_port)).await;
        assert_eq!(r.code, 400);
        assert_eq!(r.body["field"], "service.spec.ports[0].port", "{}", r.body);
        let r = call(addr, "PUT", path, Some(TOKEN), Some(r#"{"service": {}}"#)).await;
        assert_eq!(r.code, 400);
        assert!(
            r.body["error"].as_str().unwrap().contains("nodes"),
            "{}",
            r.body
        );
        let r = call(addr, "PUT", path, Some(TOKEN), Some("{not json")).await;
        assert_eq!(r.code, 400);
        let r = call(
            addr,
            "PUT",
            "/v1/clusters/prod/loadbalancers/shop/api",
            Some(TOKEN),
            Some(&ensure_body("web", json!({}))),
        )
        .await;
        assert_eq!(r.code, 400);
        assert_eq!(r.body["field"], "service.metadata.name");
        f.source.stop().await;
    }

    #[tokio::test]
    async fn warnings_come_as_headers_and_errors_name_the_field() {
        let f = start().await;
        let addr = f.source.local_addr();
        let body = ensure_body("web", json!({"portico.io/algorithm": "fastest"}));
        let r = call(
            addr,
            "PUT",
            "/v1/clusters/prod/loadbalancers/shop/web",
            Some(TOKEN),
            Some(&body),
        )
        .await;
        assert_eq!(r.code, 200);
        assert_eq!(
            r.body,
            json!({"ingress": [{"ip": "192.0.2.10", "ipMode": "Proxy"}]})
        );
        assert!(
            r.head.contains(
                "warning: 299 - \"Service shop/web: metadata.annotations[portico.io/algorithm]"
            ),
            "{}",
            r.head
        );
        // The one-address pool is used up.
        let r = call(
            addr,
            "PUT",
            "/v1/clusters/prod/loadbalancers/shop/api",
            Some(TOKEN),
            Some(&ensure_body("api", json!({}))),
        )
        .await;
        assert_eq!(r.code, 409, "{}", r.body);
        let r = call(
            addr,
            "PUT",
            "/v1/clusters/prod/loadbalancers/shop/api",
            Some(TOKEN),
            Some(&ensure_body(
                "api",
                json!({"portico.io/address-pool": "nope"}),
            )),
        )
        .await;
        assert_eq!(r.code, 422, "{}", r.body);
        assert_eq!(
            r.body["field"],
            "service.metadata.annotations[portico.io/address-pool]"
        );
        let r = call(
            addr,
            "GET",
            "/v1/clusters/other/loadbalancers",
            Some(TOKEN),
            None,
        )
        .await;
        assert_eq!(r.code, 409);
        assert!(
            r.body["error"].as_str().unwrap().contains("\"prod\""),
            "{}",
            r.body
        );
        f.source.stop().await;
    }

    #[tokio::test]
    async fn a_failed_save_is_a_500_and_changes_nothing() {
        let f = start().await;
        let addr = f.source.local_addr();
        let model = f.source.model();
        // The state directory becomes a file: every write fails.
        std::fs::remove_dir_all(&f.state_dir).unwrap();
        std::fs::write(&f.state_dir, b"").unwrap();
        let r = call(
            addr,
            "PUT",
            "/v1/clusters/prod/loadbalancers/shop/web",
            Some(TOKEN),
            Some(&ensure_body("web", json!({}))),
        )
        .await;
        assert_eq!(r.code, 500, "{}", r.body);
        assert!(
            r.body["error"].as_str().unwrap().contains("hook.json"),
            "{}",
            r.body
        );
        let r = call(
            addr,
            "GET",
            "/v1/clusters/prod/loadbalancers/shop/web",
            Some(TOKEN),
            None,
        )
        .await;
        assert_eq!(r.code, 404);
        assert!(model.borrow().services.is_empty());
        // Once the disk is back, the same call succeeds.
        std::fs::remove_file(&f.state_dir).unwrap();
        std::fs::create_dir(&f.state_dir).unwrap();
        let r = call(
            addr,
            "PUT",
            "/v1/clusters/prod/loadbalancers/shop/web",
            Some(TOKEN),
            Some(&ensure_body("web", json!({}))),
        )
        .await;
        assert_eq!(r.code, 200);
        let vips: Vec<IpAddr> = model.borrow().services[0].vips.clone();
        assert_eq!(vips, ["192.0.2.10".parse::<IpAddr>().unwrap()]);
        f.source.stop().await;
    }

    /// Without the token nothing is read or done: 401 even for a body
    /// announced over the limit (the token is checked first), counted
    /// under the route, and nothing written.
    #[tokio::test]
    async fn an_unauthenticated_call_is_refused_before_its_body_is_read() {
        let f = start_with(Limits {
            max_body: 1024,
            ..Limits::DEFAULT
        })
        .await;
        let addr = f.source.local_addr();
        let path = "/v1/clusters/prod/loadbalancers/shop/web";
        let body = ensure_body("web", json!({}));
        let r = call(addr, "PUT", path, None, Some(&body)).await;
        assert_eq!(r.code, 401);
        assert_eq!(
            r.body,
            json!({"error": "a bearer token is required (Authorization: Bearer <token>)"})
        );
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nAuthorization: Bearer guess\r\nContent-Length: 100000000\r\n\r\n"
        );
        let r = Reply::parse(&exchange(addr, head.as_bytes()).await);
        assert_eq!(r.code, 401, "{}", r.head);
        assert!(r.head.contains("invalid_token"), "{}", r.head);
        assert_eq!(f.counted("ensure", "401"), 2);
        assert_eq!(f.counted("ensure", "413"), 0);
        assert!(!f.state_file().exists());
        assert!(f.source.model().borrow().services.is_empty());
        // The same call with the token goes through.
        let r = call(addr, "PUT", path, Some(TOKEN), Some(&body)).await;
        assert_eq!(r.code, 200, "{}", r.body);
        f.source.stop().await;
    }

    /// A body over the limit is refused with 413, announced by its
    /// `Content-Length` (refused before it is sent) or chunked (refused as
    /// it grows over); nothing is written, and the load balancer already
    /// there is served as before.
    #[tokio::test]
    async fn an_oversized_body_is_refused_and_changes_nothing() {
        let limit = 16 << 10;
        let f = start_with(Limits {
            max_body: limit,
            ..Limits::DEFAULT
        })
        .await;
        let addr = f.source.local_addr();
        let model = f.source.model();
        let path = "/v1/clusters/prod/loadbalancers/shop/web";
        let r = call(
            addr,
            "PUT",
            path,
            Some(TOKEN),
            Some(&ensure_body("web", json!({}))),
        )
        .await;
        assert_eq!(r.code, 200, "{}", r.body);
        let saved = std::fs::read(f.state_file()).unwrap();
        let served = model.borrow().clone();

        let mut big: Value = serde_json::from_str(&ensure_body("web", json!({}))).unwrap();
        big["nodes"] = (0..100).map(full_node).collect();
        let big = big.to_string();
        assert!(big.len() > limit, "{}", big.len());
        let head = |path: &str, framing: &str| {
            format!("PUT {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n")
        };
        // Only the head is sent: the answer comes without the body.
        let announced = head(path, &format!("Content-Length: {}", big.len()));
        let r = Reply::parse(&exchange(addr, announced.as_bytes()).await);
        assert_eq!(r.code, 413, "{}", r.head);
        let too_large = json!({"error": format!("the request body is larger than {limit} bytes")});
        assert_eq!(r.body, too_large);
        // One chunk of the whole size, of which one byte over the limit is
        // sent: the server has read all that was sent when it answers.
        let mut chunked = head(&format!("{path}/nodes"), "Transfer-Encoding: chunked");
        chunked.push_str(&format!("{:x}\r\n{}", big.len(), &big[..limit + 1]));
        let r = Reply::parse(&exchange(addr, chunked.as_bytes()).await);
        assert_eq!(r.code, 413, "{}", r.head);
        assert_eq!(r.body, too_large);

        assert_eq!(f.counted("ensure", "413"), 1);
        assert_eq!(f.counted("update", "413"), 1);
        assert_eq!(std::fs::read(f.state_file()).unwrap(), saved);
        assert_eq!(*model.borrow(), served);
        let r = call(addr, "GET", path, Some(TOKEN), None).await;
        assert_eq!(r.code, 200);
        assert_eq!(r.body["status"]["ingress"][0]["ip"], "192.0.2.10");
        f.source.stop().await;
    }

    /// A `v1.Node` of realistic size, as the kubelet reports it (its 50
    /// largest images, the default of `nodeStatusMaxImages`) and
    /// `kubectl get nodes -o json` prints it; only its numbers differ with
    /// `i`.
    fn full_node(i: usize) -> Value {
        let name = format!("pool-a-node-{i:05}");
        let images: Vec<Value> = (0..50)
            .map(|j| {
                let repo = [
                    "registry.k8s.io/kube-proxy",
                    "docker.io/library/nginx",
                    "quay.io/prometheus/node-exporter",
                    "ghcr.io/example-org/payments-service",
                    "europe-docker.pkg.dev/acme-prod/apps/checkout-frontend",
                ][j % 5];
                json!({
                    "names": [format!("{repo}@sha256:{:064x}", j * 7919), format!("{repo}:v1.{j:02}.0")],
                    "sizeBytes": 12_345_678 + j,
                })
            })
            .collect();
        let conditions: Vec<Value> = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ]
        .iter()
        .map(|(t, s, r, m)| json!({"type": t, "status": s, "reason": r, "message": m,
            "lastHeartbeatTime": "2025-06-01T12:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z"}))
        .collect();
        let (a, b) = (i / 256 % 256, i % 256);
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "uid": format!("5d1c7a3e-2b4f-4c6d-9e8f-{i:012}"),
                "resourceVersion": "123456789",
                "creationTimestamp": "2025-01-01T00:00:00Z",
                "labels": {
                    "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                    "node.kubernetes.io/instance-type": "n2-standard-8",
                    "topology.kubernetes.io/region": "europe-west1", "topology.kubernetes.io/zone": "europe-west1-b",
                    "node-role.kubernetes.io/worker": "",
                },
                "annotations": {
                    "node.alpha.kubernetes.io/ttl": "0",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                    "csi.volume.kubernetes.io/nodeid": format!("{{\"pd.csi.storage.gke.io\":\"projects/acme-prod/zones/europe-west1-b/instances/{name}\"}}"),
                    "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
                },
            },
            "spec": {
                "podCIDR": format!("10.{a:03}.{b:03}.0/24"),
                "podCIDRs": [format!("10.{a:03}.{b:03}.0/24")],
                "providerID": format!("gce://acme-prod/europe-west1-b/{name}"),
            },
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": format!("10.128.{a}.{b}")},
                    {"type": "Hostname", "address": name},
                ],
                "allocatable": {"cpu": "7910m", "ephemeral-storage": "47060071478", "hugepages-1Gi": "0", "hugepages-2Mi": "0", "memory": "29140296Ki", "pods": "110"},
                "capacity": {"cpu": "8", "ephemeral-storage": "98831908Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0", "memory": "32882504Ki", "pods": "110"},
                "conditions": conditions,
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "images": images,
                "nodeInfo": {
                    "architecture": "amd64", "bootID": "0b6e3c1d-1111-2222-3333-444455556666",
                    "containerRuntimeVersion": "containerd://1.7.24", "kernelVersion": "6.1.0-28-cloud-amd64",
                    "kubeProxyVersion": "", "kubeletVersion": "v1.33.0", "machineID": "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e",
                    "operatingSystem": "linux", "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "systemUUID": "4f1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e",
                },
            },
        })
    }

    /// The body limit fits a 5,000-Node cluster with room to spare (the
    /// sizes in [`Limits::DEFAULT`]'s doc), and a body far over axum's own
    /// 2 MB default goes through the whole server.
    #[tokio::test]
    async fn a_node_list_of_5000_nodes_fits_the_body_limit() {
        const NODES: usize = 5000;
        let service = json!({"metadata": {"namespace": "shop", "name": "web", "uid": "0b6e-11"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30080}]}});
        // The nodes differ only in their numbers, the last one's the
        // longest: the body's length (within a few KiB) without building it.
        let frame = json!({"service": service, "nodes": []}).to_string().len();
        let node = full_node(NODES - 1).to_string().len();
        let compact = frame + NODES * node + (NODES - 1);
        // `jq` indents by two spaces, as serde_json's pretty printer.
        let indented = serde_json::to_string_pretty(
            &json!({"service": service, "nodes": [full_node(NODES - 1)]}),
        )
        .unwrap()
        .len()
            * NODES;
        let mib = |n: usize| n as f64 / f64::from(1 << 20);
        eprintln!(
            "{NODES} nodes: {:.1} MiB compact, {:.1} MiB indented; limit {:.0} MiB",
            mib(compact),
            mib(indented),
            mib(Limits::DEFAULT.max_body)
        );
        assert!(compact * 2 <= Limits::DEFAULT.max_body, "compact {compact}");
        assert!(indented <= Limits::DEFAULT.max_body, "indented {indented}");

        let f = start().await;
        let body =
            json!({"service": service, "nodes": (0..400).map(full_node).collect::<Vec<_>>()})
                .to_string();
        assert!(body.len() > 4 << 20, "{}", body.len());
        let path = "/v1/clusters/prod/loadbalancers/shop/web";
        let r = call(f.source.local_addr(), "PUT", path, Some(TOKEN), Some(&body)).await;
        assert_eq!(r.code, 200, "{}", r.body);
        assert_eq!(f.source.model().borrow().nodes.len(), 400);
        f.source.stop().await;
    }

    /// Reads from `s` until the server closes it; what came before.
    async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let read = async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(BOUND, read)
            .await
            .expect("the server closes the connection in time");
        got
    }

    /// A client that sends half a request header and stalls is cut off
    /// after the header timeout, without an answer, while others are
    /// served; a kept-alive connection that sends no next request is
    /// closed the same way.
    #[tokio::test]
    async fn a_stalled_header_or_an_idle_connection_is_closed_after_the_header_timeout() {
        let header_timeout = Duration::from_millis(300);
        let f = start_with(Limits {
            header_timeout,
            ..Limits::DEFAULT
        })
        .await;
        let addr = f.source.local_addr();
        let list = "/v1/clusters/prod/loadbalancers";

        let mut stalled = TcpStream::connect(addr).await.unwrap();
        let since = Instant::now();
        stalled
            .write_all(format!("GET {list} HTTP/1.1\r\nHost: te").as_bytes())
            .await
            .unwrap();
        let r = call(addr, "GET", list, Some(TOKEN), None).await;
        assert_eq!(r.code, 200, "others are served meanwhile");
        let answer = until_closed(&mut stalled).await;
        let waited = since.elapsed();
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
        assert!(waited >= header_timeout / 2, "closed after {waited:?}");

        let mut kept = TcpStream::connect(addr).await.unwrap();
        let keep_alive =
            format!("GET {list} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
        kept.write_all(keep_alive.as_bytes()).await.unwrap();
        let since = Instant::now();
        let answer = String::from_utf8(until_closed(&mut kept).await).unwrap();
        let waited = since.elapsed();
        assert_eq!(Reply::parse(&answer).code, 200, "{answer}");
        assert!(waited >= header_timeout / 2, "closed after {waited:?}");
        assert_eq!(f.counted("list", "200"), 2);
        f.source.stop().await;
    }

    /// Whether the server has closed `s` (without blocking).
    fn is_closed(mut s: &std::net::TcpStream) -> bool {
        let mut byte = [0u8; 1];
        match s.read(&mut byte) {
            Ok(n) => n == 0,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }

    /// More connections than the cap: the ones over it wait (they are not
    /// accepted) until others end, so stalled clients hold at most `CAP`
    /// connections, and a well-behaved client behind them is served.
    #[tokio::test]
    async fn connections_over_the_cap_wait_and_a_well_behaved_client_is_served() {
        const CAP: usize = 4;
        const STALLED: usize = 3 * CAP;
        let f = start_with(Limits {
            max_connections: CAP,
            header_timeout: Duration::from_millis(300),
            ..Limits::DEFAULT
        })
        .await;
        let addr = f.source.local_addr();
        let mut stalled = Vec::new();
        for _ in 0..STALLED {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
            stalled.push(s.into_std().unwrap());
        }
        let r = call(
            addr,
            "GET",
            "/v1/clusters/prod/loadbalancers",
            Some(TOKEN),
            None,
        )
        .await;
        assert_eq!(r.code, 200);
        // Accepted in order, so it was served only once all the stalled
        // ones had been, and all but CAP - 1 of them had been cut off.
        let closed = stalled.iter().filter(|s| is_closed(s)).count();
        assert!(
            closed > STALLED - CAP,
            "{closed} of {STALLED} stalled connections closed: more than {CAP} were served at once"
        );
        f.source.stop().await;
    }

    /// One client address holds at most its share of the connections: the
    /// one over it is closed at once, another client is still served.
    #[tokio::test]
    async fn one_client_cannot_hold_every_connection() {
        let f = start_with(Limits {
            max_connections: 16,
            max_connections_per_client: 2,
            header_timeout: Duration::from_secs(5),
            ..Limits::DEFAULT
        })
        .await;
        let addr = f.source.local_addr();
        let mut stalled = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
            stalled.push(s);
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), third.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the third connection of one client is closed at once: {read:?}"
        );
        // Another address on loopback is another client.
        let other = tokio::net::TcpSocket::new_v4().unwrap();
        other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = other.connect(addr).await.unwrap();
        let req = request("GET", "/v1/clusters/prod/loadbalancers", Some(TOKEN), "");
        s.write_all(req.as_bytes()).await.unwrap();
        let answer = until_closed(&mut s).await;
        assert_eq!(Reply::parse(&String::from_utf8_lossy(&answer)).code, 200);
        drop(stalled);
        f.source.stop().await;
    }

    /// Path segments are checked as the API server checks a Service's
    /// namespace and name, and no answer echoes more than a bounded,
    /// escaped piece of what the caller sent.
    #[tokio::test]
    async fn bad_path_segments_are_422_naming_them_and_never_echoed_whole() {
        let f = start().await;
        let addr = f.source.local_addr();
        let long = "a".repeat(2000);
        for (path, field) in [
            (
                "/v1/clusters/prod/loadbalancers/Shop/web".to_string(),
                "namespace",
            ),
            (
                "/v1/clusters/prod/loadbalancers/shop/1web".to_string(),
                "name",
            ),
            (
                format!("/v1/clusters/prod/loadbalancers/shop/{long}"),
                "name",
            ),
            (format!("/v1/clusters/{long}/loadbalancers"), "cluster"),
            ("/v1/clusters/pr%1Bod/loadbalancers".to_string(), "cluster"),
        ] {
            for method in ["GET", "PUT", "DELETE"] {
                if path.ends_with("loadbalancers") && method != "GET" {
                    continue;
                }
                let body = ensure_body("web", json!({}));
                let r = call(addr, method, &path, Some(TOKEN), Some(&body)).await;
                assert_eq!(r.code, 422, "{method} {path}: {}", r.body);
                assert_eq!(r.body["field"], field, "{method} {path}");
                let error = r.body["error"].as_str().unwrap();
                assert!(error.len() < 400, "{method}: {} bytes echoed", error.len());
                assert!(!error.contains('\u{1b}'), "{error}");
            }
        }
        assert!(!f.state_file().exists(), "nothing was persisted");
        f.source.stop().await;
    }

    /// A body that does not arrive within the request timeout: 408 with
    /// the error body, counted, nothing done.
    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_a_408_and_changes_nothing() {
        let request_timeout = Duration::from_millis(300);
        let f = start_with(Limits {
            request_timeout,
            ..Limits::DEFAULT
        })
        .await;
        let addr = f.source.local_addr();
        let path = "/v1/clusters/prod/loadbalancers/shop/web";
        let req = request("PUT", path, Some(TOKEN), &ensure_body("web", json!({})));
        let answer = exchange(addr, &req.as_bytes()[..req.len() - 10]).await;
        let r = Reply::parse(&answer);
        assert_eq!(r.code, 408, "{answer}");
        assert_eq!(
            r.body,
            json!({"error": "the call was not done within 0.3s"})
        );
        assert_eq!(f.counted("ensure", "408"), 1);
        assert!(!f.state_file().exists());
        let r = call(addr, "GET", path, Some(TOKEN), None).await;
        assert_eq!(r.code, 404);
        f.source.stop().await;
    }
}
