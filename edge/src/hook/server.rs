//! The IO half of the hook API: the HTTP server on its own listener, the
//! bearer token check, persistence before every answer, and the model the
//! edge reads ([`HookSource`]).
//!
//! Calls are served one at a time (one lock around the state): each one
//! computes the new state ([`super::state`]), writes it to disk, and only
//! then makes it current and answers, so a 2xx means the change is on disk
//! and a failed write (500) leaves memory and disk as they were.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, RequestPartsExt, Router};
use k8s_openapi::api::core::v1 as core;
use portico_config::{AddressPool, HookApiSettings, ServiceKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Mutex};
use tokio::task::JoinHandle;

use super::state::{load_balancer_status, HookModel, HookState, Outcome, RequestError};
use super::store::{self, StoreError};
use crate::ipam::IpamError;
use crate::metrics::EdgeMetrics;

/// The largest request body accepted: a node list of a few thousand full
/// `v1.Node` objects (their `status.images` make them large) fits.
pub const MAX_BODY: usize = 64 << 20;

/// How long in-flight calls may finish when the source stops.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often a busy listen address is tried again (binary upgrade: the old
/// process lets go of it right after the handover).
const BIND_RETRY: Duration = Duration::from_millis(50);

/// A cloud-provider `LoadBalancer` call (plus a listing for operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// `EnsureLoadBalancer`.
    Ensure,
    /// `UpdateLoadBalancer`.
    Update,
    /// `GetLoadBalancer` (and `GetLoadBalancerName`).
    Get,
    /// `EnsureLoadBalancerDeleted`.
    Delete,
    /// Every load balancer (not part of the cloud-provider interface).
    List,
}

impl Operation {
    /// The `route` label of `portico_edge_hook_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Operation::Ensure => "ensure",
            Operation::Update => "update",
            Operation::Get => "get",
            Operation::Delete => "delete",
            Operation::List => "list",
        }
    }

    /// The OpenAPI `operationId`: the cloud-provider method's name.
    pub fn operation_id(self) -> &'static str {
        match self {
            Operation::Ensure => "EnsureLoadBalancer",
            Operation::Update => "UpdateLoadBalancer",
            Operation::Get => "GetLoadBalancer",
            Operation::Delete => "EnsureLoadBalancerDeleted",
            Operation::List => "ListLoadBalancers",
        }
    }
}

/// One route of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The HTTP method.
    pub method: &'static str,
    /// The path, with `{parameters}` as OpenAPI and axum write them.
    pub path: &'static str,
    /// What it does.
    pub operation: Operation,
}

const ONE: &str = "/v1/clusters/{cluster}/loadbalancers/{namespace}/{name}";

/// Every route the server serves; the router is built from this table, and
/// a test holds `docs/hook-api.openapi.yaml` to it.
pub const ROUTES: &[Route] = &[
    Route {
        method: "PUT",
        path: ONE,
        operation: Operation::Ensure,
    },
    Route {
        method: "PUT",
        path: "/v1/clusters/{cluster}/loadbalancers/{namespace}/{name}/nodes",
        operation: Operation::Update,
    },
    Route {
        method: "GET",
        path: ONE,
        operation: Operation::Get,
    },
    Route {
        method: "DELETE",
        path: ONE,
        operation: Operation::Delete,
    },
    Route {
        method: "GET",
        path: "/v1/clusters/{cluster}/loadbalancers",
        operation: Operation::List,
    },
];

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
    /// Reads the token, binds the listen address (retrying for up to
    /// `bind_wait` while another process still holds it), loads the state
    /// and serves. The model is ready when this returns.
    pub async fn start(
        settings: &HookApiSettings,
        pools: Vec<AddressPool>,
        metrics: EdgeMetrics,
        bind_wait: Duration,
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
        tracing::info!(
            %addr,
            load_balancers = loaded.state.balancers().len(),
            state = %settings.state_file.display(),
            "hook API listening"
        );
        let (model_tx, model) = watch::channel(Arc::new(loaded.state.model()));
        let (pools_tx, pools_rx) = watch::channel(pools);
        let shared = Arc::new(Shared {
            token: token.into_bytes(),
            state: Mutex::new(loaded.state),
            state_file: settings.state_file.clone(),
            pools: pools_rx,
            model: model_tx,
            metrics,
        });
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router(shared)).with_graceful_shutdown(async move {
                // A dropped sender means the source is gone: stop as well.
                if stop_rx.await.is_err() {
                    tracing::debug!("hook API source dropped; stopping its server");
                }
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "hook API server failed");
            }
        });
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

/// Reads the bearer token: the file's content without surrounding white
/// space.
pub fn read_token(path: &Path) -> Result<String, HookError> {
    let text = std::fs::read_to_string(path).map_err(|source| HookError::TokenRead {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(HookError::TokenEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
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

/// What every call shares.
struct Shared {
    token: Vec<u8>,
    state: Mutex<HookState>,
    state_file: PathBuf,
    pools: watch::Receiver<Vec<AddressPool>>,
    model: watch::Sender<Arc<HookModel>>,
    metrics: EdgeMetrics,
}

impl Shared {
    /// Writes `out.state` to disk and makes it current (when it changed).
    async fn commit(&self, state: &mut HookState, out: Outcome) -> Result<(), ApiError> {
        if !out.changed {
            return Ok(());
        }
        let bytes = out.state.to_json();
        let path = self.state_file.clone();
        let saved = tokio::task::spawn_blocking(move || store::save(&path, &bytes)).await;
        let failure = match saved {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(format!(
                "the write of {} failed: {e}",
                self.state_file.display()
            )),
        };
        if let Some(why) = failure {
            tracing::error!(error = %why, "hook state not saved; the call is refused and nothing changed");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{why}; nothing was changed"),
                None,
            ));
        }
        *state = out.state;
        let model = Arc::new(state.model());
        self.model.send_if_modified(|m| {
            if **m == *model {
                false
            } else {
                *m = model;
                true
            }
        });
        Ok(())
    }
}

/// Who serves a request.
#[derive(Debug, Clone, Copy)]
enum Target {
    Op(Operation),
    /// A known path, another method.
    WrongMethod,
    /// No such path.
    NoRoute,
}

fn router(shared: Arc<Shared>) -> Router {
    let mut paths: BTreeMap<&'static str, MethodRouter<Arc<Shared>>> = BTreeMap::new();
    for route in ROUTES {
        let target = Target::Op(route.operation);
        let filter = match route.method {
            "GET" => MethodFilter::GET,
            "PUT" => MethodFilter::PUT,
            "DELETE" => MethodFilter::DELETE,
            other => unreachable!("ROUTES uses only GET, PUT and DELETE, not {other}"),
        };
        let handler = move |State(s): State<Arc<Shared>>, req: Request| dispatch(s, target, req);
        let methods = match paths.remove(route.path) {
            Some(m) => m.on(filter, handler),
            None => on(filter, handler),
        };
        paths.insert(route.path, methods);
    }
    let mut router = Router::new();
    for (path, methods) in paths {
        router = router.route(
            path,
            methods.fallback(|State(s): State<Arc<Shared>>, req: Request| {
                dispatch(s, Target::WrongMethod, req)
            }),
        );
    }
    router
        .fallback(|State(s): State<Arc<Shared>>, req: Request| dispatch(s, Target::NoRoute, req))
        .with_state(shared)
}

/// Checks the token, serves, counts.
async fn dispatch(s: Arc<Shared>, target: Target, req: Request) -> Response {
    let (label, response) = match authorize(&s.token, req.headers()) {
        Err(denied) => (label_of(target), unauthorized(denied)),
        Ok(()) => {
            let (method, path) = (req.method().clone(), req.uri().path().to_string());
            let response = match target {
                Target::Op(op) => handle(&s, op, req)
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
                Target::WrongMethod => ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} is not served on {path}"),
                    None,
                )
                .into_response(),
                Target::NoRoute => ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no route {path}; see docs/hook-api.openapi.yaml"),
                    None,
                )
                .into_response(),
            };
            (label_of(target), response)
        }
    };
    s.metrics
        .hook_requests
        .with_label_values(&[label, response.status().as_str()])
        .inc();
    response
}

fn label_of(target: Target) -> &'static str {
    match target {
        Target::Op(op) => op.label(),
        Target::WrongMethod | Target::NoRoute => "none",
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Denied {
    /// No `Authorization` header.
    Missing,
    /// Another scheme than `Bearer`.
    NotBearer,
    /// Another token.
    Invalid,
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn authorize(token: &[u8], headers: &HeaderMap) -> Result<(), Denied> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(Denied::Missing)?
        .as_bytes();
    let given = match value.split_at_checked(7) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest.trim_ascii(),
        _ => return Err(Denied::NotBearer),
    };
    if constant_time_eq(token, given) {
        Ok(())
    } else {
        Err(Denied::Invalid)
    }
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guess was right (only its length).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// 401 with a `WWW-Authenticate: Bearer` challenge (RFC 6750).
fn unauthorized(denied: Denied) -> Response {
    let (message, challenge) = match denied {
        Denied::Missing => (
            "a bearer token is required (Authorization: Bearer <token>)",
            r#"Bearer realm="portico-edge""#,
        ),
        Denied::NotBearer => (
            "the Authorization header must use the Bearer scheme",
            r#"Bearer realm="portico-edge""#,
        ),
        Denied::Invalid => (
            "the bearer token is not valid",
            r#"Bearer realm="portico-edge", error="invalid_token""#,
        ),
    };
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, message.to_string(), None).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// The body of EnsureLoadBalancer and UpdateLoadBalancer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceAndNodes {
    service: core::Service,
    nodes: Vec<core::Node>,
}

/// GetLoadBalancer's answer.
#[derive(Serialize)]
struct LoadBalancer {
    name: String,
    status: core::LoadBalancerStatus,
}

/// One entry of the listing.
#[derive(Serialize)]
struct ListItem {
    namespace: String,
    service: String,
    name: String,
    status: core::LoadBalancerStatus,
}

#[derive(Serialize)]
struct List {
    cluster: Option<String>,
    items: Vec<ListItem>,
}

async fn handle(s: &Shared, op: Operation, req: Request) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let too_large = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY);
    if too_large {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY} bytes"),
            None,
        ));
    }
    let UrlPath(params) = parts
        .extract::<UrlPath<BTreeMap<String, String>>>()
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text(), None))?;
    let cluster = params.get("cluster").cloned().unwrap_or_default();
    let key = match (params.get("namespace"), params.get("name")) {
        (Some(ns), Some(name)) => ServiceKey::new(ns.clone(), name.clone()),
        _ => ServiceKey::new("", ""),
    };
    match op {
        Operation::Ensure => {
            let body: ServiceAndNodes = read_json(body).await?;
            let mut state = s.state.lock().await;
            let pools = s.pools.borrow().clone();
            let out = state.ensure(&cluster, &key, body.service, body.nodes, &pools)?;
            let addresses = out
                .state
                .balancers()
                .get(&key)
                .map(|b| b.addresses.clone())
                .unwrap_or_default();
            let warnings = out.warnings.clone();
            let before = state.balancers().get(&key).map(|b| b.addresses.clone());
            let changed = out.changed;
            s.commit(&mut state, out).await?;
            for w in &warnings {
                tracing::warn!(service = %key, "hook EnsureLoadBalancer: {w}");
            }
            if changed {
                match before {
                    None => {
                        tracing::info!(service = %key, ?addresses, "hook load balancer created")
                    }
                    Some(old) if old != addresses => {
                        tracing::info!(service = %key, ?old, ?addresses, "hook load balancer moved")
                    }
                    Some(_) => {
                        tracing::info!(service = %key, ?addresses, "hook load balancer updated")
                    }
                }
            }
            Ok(with_warnings(
                Json(load_balancer_status(&addresses)).into_response(),
                &warnings,
            ))
        }
        Operation::Update => {
            let body: ServiceAndNodes = read_json(body).await?;
            let mut state = s.state.lock().await;
            let out = state.update(&cluster, &key, &body.service, body.nodes)?;
            let warnings = out.warnings.clone();
            let changed = out.changed;
            s.commit(&mut state, out).await?;
            for w in &warnings {
                tracing::warn!(service = %key, "hook UpdateLoadBalancer: {w}");
            }
            if changed {
                tracing::info!(service = %key, nodes = state.nodes().len(), "hook node list updated");
            }
            Ok(with_warnings(
                StatusCode::NO_CONTENT.into_response(),
                &warnings,
            ))
        }
        Operation::Get => {
            let state = s.state.lock().await;
            match state.get(&cluster, &key)? {
                Some(b) => Ok(Json(LoadBalancer {
                    name: b.name(),
                    status: b.status(),
                })
                .into_response()),
                None => Err(RequestError::NotFound { key }.into()),
            }
        }
        Operation::Delete => {
            let mut state = s.state.lock().await;
            let out = state.delete(&cluster, &key)?;
            let changed = out.changed;
            s.commit(&mut state, out).await?;
            if changed {
                tracing::info!(service = %key, "hook load balancer deleted");
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Operation::List => {
            let state = s.state.lock().await;
            state.check_cluster(&cluster)?;
            let items = state
                .balancers()
                .iter()
                .map(|(k, b)| ListItem {
                    namespace: k.namespace.clone(),
                    service: k.name.clone(),
                    name: b.name(),
                    status: b.status(),
                })
                .collect();
            Ok(Json(List {
                cluster: state.cluster().map(str::to_string),
                items,
            })
            .into_response())
        }
    }
}

/// Reads a JSON body; a malformed one is refused naming the JSON path.
async fn read_json<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = to_bytes(body, MAX_BODY).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body (at most {MAX_BODY} bytes): {e}"),
            None,
        )
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("malformed request body: {}", e.inner()),
            (path != ".").then_some(path),
        )
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("malformed request body: {e}"),
            None,
        )
    })?;
    Ok(value)
}

/// Adds one `Warning: 299 - "..."` header per warning, as the Kubernetes
/// API server does (client-go shows them).
fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text: String = w
            .chars()
            .map(|c| match c {
                '"' | '\\' => '\'',
                ' '..='~' => c,
                _ => '?',
            })
            .collect();
        match HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            Ok(v) => {
                response.headers_mut().append(header::WARNING, v);
            }
            Err(e) => tracing::debug!(error = %e, "warning not sent as a header"),
        }
    }
    response
}

/// An error answer: `{"error": "...", "field": "..."}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    error: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, error: String, field: Option<String>) -> Self {
        ApiError {
            status,
            error,
            field,
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        let status = match &e {
            RequestError::ClusterMismatch { .. } => StatusCode::CONFLICT,
            RequestError::KeyMismatch { .. } => StatusCode::BAD_REQUEST,
            // What the API server would refuse with 422.
            RequestError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            RequestError::NotFound { .. } => StatusCode::NOT_FOUND,
            RequestError::Address { problem, .. } => match **problem {
                // The pool is full or the address is someone else's: may
                // succeed later, when something is deleted.
                IpamError::Exhausted { .. } | IpamError::InUse { .. } => StatusCode::CONFLICT,
                // Asks for what this edge does not have: never succeeds.
                IpamError::UnknownPool { .. } | IpamError::NotInPool { .. } => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
            },
            RequestError::NoAddress { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.to_string(), e.field())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.error,
            field: self.field.as_deref(),
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use portico_config::AddressRange;
    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    const TOKEN: &str = "s3cret-token";

    struct Reply {
        code: u16,
        head: String,
        body: Value,
    }

    async fn call(
        addr: SocketAddr,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or("");
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut raw))
            .await
            .expect("an answer in time")
            .unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        Reply {
            code: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
            head: head.to_string(),
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        state_dir: PathBuf,
        source: HookSource,
    }

    async fn start() -> Fixture {
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
        let source = HookSource::start(&settings, pools, EdgeMetrics::new(), Duration::ZERO)
            .await
            .unwrap();
        Fixture {
            _dir: dir,
            state_dir,
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
            let patch = call(addr, "PATCH", &path, Some(TOKEN), None).await;
            assert_eq!(patch.code, 405, "{path}");
        }
        let unknown = call(addr, "GET", "/v2/anything", None, None).await;
        assert_eq!(unknown.code, 401, "unknown paths need the token too");
        let unknown = call(addr, "GET", "/v2/anything", Some(TOKEN), None).await;
        assert_eq!(unknown.code, 404);
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

    #[tokio::test]
    async fn an_empty_or_missing_token_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, " \n").unwrap();
        let err = read_token(&token_file).unwrap_err();
        assert_eq!(err.exit_code(), 64);
        assert!(
            err.to_string().contains(&token_file.display().to_string()),
            "{err}"
        );
        let err = read_token(&dir.path().join("absent")).unwrap_err();
        assert_eq!(err.exit_code(), 64);
        assert!(err.to_string().contains("absent"), "{err}");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            authorize(TOKEN.as_bytes(), &h)
        };
        assert_eq!(with(&format!("bearer  {TOKEN} ")), Ok(()));
        assert_eq!(with(&format!("Bearer {TOKEN}x")), Err(Denied::Invalid));
        assert_eq!(with("Basic dXNlcjpwdw=="), Err(Denied::NotBearer));
        assert_eq!(
            authorize(TOKEN.as_bytes(), &HeaderMap::new()),
            Err(Denied::Missing)
        );
    }
}
