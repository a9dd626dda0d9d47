//! The routes of the hook API and their handlers: one per cloud-provider
//! `LoadBalancer` method, on an `axum` [`Router`] with typed path and body
//! extraction; 404 and 405 answers; the `{"error", "field"}` error body and
//! the `Warning: 299` headers.
//!
//! A changing call ([`ensure`], [`update`], [`delete`]) runs its state part
//! on a task of its own ([`detached`]): under the state lock it computes the
//! new state ([`super::state`]), writes it to disk, and only then makes it
//! current. So a 2xx means the change is on disk, a failed write (500)
//! leaves memory and disk as they were, and a call whose answer is cut off
//! (request timeout, client gone) still ends with memory and disk alike.
//!
//! Authentication, limits and metrics are layers around this router:
//! [`super::server`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use k8s_openapi::api::core::v1 as core;
use portico_config::kube::{quoted, NameRule};
use portico_config::{AddressPool, ServiceKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use super::admission::Admission;
use super::state::{load_balancer_status, HookModel, HookState, Outcome, RequestError};
use super::store;
use crate::ipam::IpamError;

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

const ALL: &str = "/v1/clusters/{cluster}/loadbalancers";
const ONE: &str = "/v1/clusters/{cluster}/loadbalancers/{namespace}/{name}";
const NODES: &str = "/v1/clusters/{cluster}/loadbalancers/{namespace}/{name}/nodes";

/// Every route the server serves: [`router`] serves exactly these (its
/// tests hold it to them), the metric's `route` label comes from here, and
/// a test holds `docs/hook-api.openapi.yaml` to it.
pub const ROUTES: &[Route] = &[
    Route {
        method: "PUT",
        path: ONE,
        operation: Operation::Ensure,
    },
    Route {
        method: "PUT",
        path: NODES,
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
        path: ALL,
        operation: Operation::List,
    },
];

/// The `route` label of a request: the operation of the route that matched
/// (`HEAD` counts as the `GET` it is served by), `none` for no such route
/// or method.
pub(super) fn route_label(method: &Method, matched: Option<&str>) -> &'static str {
    let method = if method == Method::HEAD {
        Method::GET.as_str()
    } else {
        method.as_str()
    };
    matched
        .and_then(|path| ROUTES.iter().find(|r| r.path == path && r.method == method))
        .map_or("none", |r| r.operation.label())
}

/// What every call shares.
pub(super) struct Shared {
    /// The state; one call at a time changes it.
    pub state: Mutex<HookState>,
    /// Where it is saved.
    pub state_file: PathBuf,
    /// The address pools of the current configuration.
    pub pools: watch::Receiver<Vec<AddressPool>>,
    /// The model the edge reads, updated after every change.
    pub model: watch::Sender<Arc<HookModel>>,
    /// Whether the edge would serve a load balancer (budget, clashes).
    pub admission: Arc<dyn Admission>,
    /// The body limit (enforced by a layer; here for the 413 message).
    pub max_body: usize,
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

impl Shared {
    /// Refuses, with 409, a load balancer the edge would not serve in
    /// `state` (a clash with the config file, the descriptor budget). The
    /// others were admitted before, so it is weighed last.
    fn admit(&self, key: &ServiceKey, state: &HookState) -> Result<(), ApiError> {
        let model = state.model();
        let (mut services, new): (Vec<_>, Vec<_>) =
            model.services.into_iter().partition(|s| s.key != *key);
        services.extend(new);
        let refused = self.admission.left_out(&services, &model.nodes);
        match refused.into_iter().find(|r| r.service == *key) {
            None => Ok(()),
            Some(r) => Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("{}; the load balancer is left as it was", r.reason),
                Some(r.field.to_string()),
            )),
        }
    }
}

/// The longest message an answer, a warning or a log line carries.
const MAX_MESSAGE: usize = 1024;

/// `text` with control characters escaped, cut to [`MAX_MESSAGE`]
/// characters with its whole length noted.
pub(super) fn bounded(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX_MESSAGE {
            out.push_str(&format!("... ({} bytes in all)", text.len()));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The routes of [`ROUTES`], with JSON 404 and 405 answers.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(ALL, get(list))
        .route(ONE, get(get_one).put(ensure).delete(delete))
        .route(NODES, put(update))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(shared)
}

/// `{cluster}` of [`ALL`].
#[derive(Deserialize)]
struct ClusterPath {
    cluster: String,
}

/// `{cluster}`, `{namespace}`, `{name}` of [`ONE`] and [`NODES`].
#[derive(Deserialize)]
struct LoadBalancerPath {
    cluster: String,
    namespace: String,
    name: String,
}

impl LoadBalancerPath {
    /// The Service the path names, its segments checked as the API server
    /// checks a Service's namespace and name (422 naming the segment).
    fn key(&self) -> Result<ServiceKey, ApiError> {
        check_cluster_name(&self.cluster)?;
        for (segment, value, rule) in [
            ("namespace", &self.namespace, NameRule::Label),
            ("name", &self.name, NameRule::Rfc1035Label),
        ] {
            rule.check(value).map_err(|why| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("the path's {segment} {} {why}", quoted(value)),
                    Some(segment.to_string()),
                )
            })?;
        }
        Ok(ServiceKey::new(self.namespace.clone(), self.name.clone()))
    }
}

/// The longest cluster name taken (a DNS subdomain's length).
const MAX_CLUSTER_NAME: usize = 253;

/// A cluster name (the controller-manager's `--cluster-name`): 1-253
/// printable ASCII characters.
fn check_cluster_name(cluster: &str) -> Result<(), ApiError> {
    let fine = !cluster.is_empty()
        && cluster.len() <= MAX_CLUSTER_NAME
        && cluster.bytes().all(|b| b.is_ascii_graphic());
    if fine {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!(
            "the path's cluster {} is not a cluster name (1-{MAX_CLUSTER_NAME} printable ASCII characters)",
            quoted(cluster)
        ),
        Some("cluster".into()),
    ))
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

/// Runs a changing call's state part on a task of its own, so it runs to
/// its end even when the call's future is dropped (the request timeout, a
/// client gone): a new state is then saved *and* made current, never only
/// saved. (The caller gets no 2xx in that case, and calls are idempotent.)
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "a hook API call failed");
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the call failed: {e}"),
            None,
        ))
    })
}

/// `EnsureLoadBalancer`.
async fn ensure(
    State(s): State<Arc<Shared>>,
    Path(path): Path<LoadBalancerPath>,
    JsonBody(body): JsonBody<ServiceAndNodes>,
) -> Result<Response, ApiError> {
    let key = path.key()?;
    let (addresses, warnings) = detached(async move {
        let mut state = s.state.lock().await;
        let pools = s.pools.borrow().clone();
        let out = state.ensure(&path.cluster, &key, body.service, body.nodes, &pools)?;
        s.admit(&key, &out.state)?;
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
                None => tracing::info!(service = %key, ?addresses, "hook load balancer created"),
                Some(old) if old != addresses => {
                    tracing::info!(service = %key, ?old, ?addresses, "hook load balancer moved")
                }
                Some(_) => tracing::info!(service = %key, ?addresses, "hook load balancer updated"),
            }
        }
        Ok((addresses, warnings))
    })
    .await?;
    Ok(with_warnings(
        Json(load_balancer_status(&addresses)).into_response(),
        &warnings,
    ))
}

/// `UpdateLoadBalancer`.
async fn update(
    State(s): State<Arc<Shared>>,
    Path(path): Path<LoadBalancerPath>,
    JsonBody(body): JsonBody<ServiceAndNodes>,
) -> Result<Response, ApiError> {
    let key = path.key()?;
    let warnings = detached(async move {
        let mut state = s.state.lock().await;
        let out = state.update(&path.cluster, &key, &body.service, body.nodes)?;
        let warnings = out.warnings.clone();
        let changed = out.changed;
        s.commit(&mut state, out).await?;
        for w in &warnings {
            tracing::warn!(service = %key, "hook UpdateLoadBalancer: {w}");
        }
        if changed {
            tracing::info!(service = %key, nodes = state.nodes().len(), "hook node list updated");
        }
        Ok(warnings)
    })
    .await?;
    Ok(with_warnings(
        StatusCode::NO_CONTENT.into_response(),
        &warnings,
    ))
}

/// `GetLoadBalancer` and `GetLoadBalancerName`.
async fn get_one(
    State(s): State<Arc<Shared>>,
    Path(path): Path<LoadBalancerPath>,
) -> Result<Response, ApiError> {
    let key = path.key()?;
    let state = s.state.lock().await;
    match state.get(&path.cluster, &key)? {
        Some(b) => Ok(Json(LoadBalancer {
            name: b.name(),
            status: b.status(),
        })
        .into_response()),
        None => Err(RequestError::NotFound { key }.into()),
    }
}

/// `EnsureLoadBalancerDeleted`.
async fn delete(
    State(s): State<Arc<Shared>>,
    Path(path): Path<LoadBalancerPath>,
) -> Result<StatusCode, ApiError> {
    detached(async move {
        let key = path.key()?;
        let mut state = s.state.lock().await;
        let out = state.delete(&path.cluster, &key)?;
        let changed = out.changed;
        s.commit(&mut state, out).await?;
        if changed {
            tracing::info!(service = %key, "hook load balancer deleted");
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every load balancer held.
async fn list(
    State(s): State<Arc<Shared>>,
    Path(path): Path<ClusterPath>,
) -> Result<Json<List>, ApiError> {
    check_cluster_name(&path.cluster)?;
    let state = s.state.lock().await;
    state.check_cluster(&path.cluster)?;
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
    }))
}

/// No such path.
async fn no_route(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {}; see docs/hook-api.openapi.yaml", uri.path()),
        None,
    )
}

/// A path of the API, another method.
async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not served on {}", uri.path()),
        None,
    )
}

/// A JSON body; a malformed one is refused with 400 naming the JSON path
/// (`service.spec.ports[0].port`), one over the body limit with 413.
struct JsonBody<T>(T);

impl<T: DeserializeOwned> FromRequest<Arc<Shared>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, s: &Arc<Shared>) -> Result<Self, ApiError> {
        // The limit is a layer (`RequestBodyLimitLayer`): a body without a
        // `Content-Length` that grows over it fails here.
        let bytes = Bytes::from_request(req, s).await.map_err(|e| {
            let error = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large(s.max_body)
            } else {
                format!("cannot read the request body: {}", e.body_text())
            };
            ApiError::new(e.status(), error, None)
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
        Ok(JsonBody(value))
    }
}

/// The 413 message.
pub(super) fn too_large(max_body: usize) -> String {
    format!("the request body is larger than {max_body} bytes")
}

/// Adds one `Warning: 299 - "..."` header per warning, as the Kubernetes
/// API server does (client-go shows them).
/// Warnings sent as headers at most; the rest are counted in one more.
const MAX_WARNING_HEADERS: usize = 16;

fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    let more = warnings.len().saturating_sub(MAX_WARNING_HEADERS);
    let extra = (more > 0).then(|| format!("and {more} more warnings (see the edge's log)"));
    for w in warnings
        .iter()
        .take(MAX_WARNING_HEADERS)
        .chain(extra.as_ref())
    {
        let text: String = bounded(w)
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
pub(super) struct ApiError {
    status: StatusCode,
    error: String,
    field: Option<String>,
}

impl ApiError {
    /// An answer with `status` saying `error` about the request's `field`.
    /// An answer; the message is [`bounded`], so no caller's input comes
    /// back unbounded or with control characters.
    pub(super) fn new(status: StatusCode, error: String, field: Option<String>) -> Self {
        ApiError {
            status,
            error: bounded(&error),
            field: field.map(|f| bounded(&f)),
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
    use super::*;

    #[test]
    fn the_route_label_is_the_matched_operation_or_none() {
        for r in ROUTES {
            let method = Method::from_bytes(r.method.as_bytes()).unwrap();
            assert_eq!(route_label(&method, Some(r.path)), r.operation.label());
        }
        assert_eq!(route_label(&Method::HEAD, Some(ALL)), "list");
        assert_eq!(route_label(&Method::HEAD, Some(ONE)), "get");
        assert_eq!(route_label(&Method::PATCH, Some(ONE)), "none");
        assert_eq!(route_label(&Method::PUT, Some(ALL)), "none");
        assert_eq!(route_label(&Method::GET, None), "none");
    }
}
