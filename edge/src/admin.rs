//! The edge's HTTP endpoints: `/metrics` for Prometheus, `/status` (JSON) for
//! `portico-edge status` and people, `/healthz` for the appliance's own
//! supervision (the process answers), `/readyz` for what moves VIPs to
//! another edge (a keepalived track script: 200 while ready to serve and
//! not drained), and `POST /drain` / `POST /undrain` for operators
//! (`portico-edge drain`). (The cloud-provider hook API has a listener of its own:
//! [`crate::hook`].)

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;

use crate::announce::Readiness;
use crate::metrics::EdgeMetrics;
use crate::status::StatusSource;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Metrics to render.
    pub metrics: EdgeMetrics,
    /// Where status comes from.
    pub status: Arc<dyn StatusSource>,
    /// Readiness and drain.
    pub steering: Arc<dyn Steering>,
}

/// Readiness and drain, asked of the control task; `None` once it is gone.
pub trait Steering: Send + Sync {
    /// Whether the edge is ready, and why not.
    fn readiness(&self) -> BoxFuture<'static, Option<Readiness>>;
    /// Drains (`true`) or undrains the edge; the readiness after it.
    fn set_drained(&self, drained: bool) -> BoxFuture<'static, Option<Readiness>>;
}

/// `/metrics` only.
pub fn metrics_router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `/status`, `/healthz` and `/metrics`.
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/drain", post(drain))
        .route("/undrain", post(undrain))
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn status(State(state): State<AdminState>) -> Response {
    match state.status.status().await {
        Some(s) => Json(s).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the edge is shutting down\n",
        )
            .into_response(),
    }
}

/// `/readyz`: 200 `ready` or 503 with why not, one reason a line.
async fn readyz(State(state): State<AdminState>) -> Response {
    readiness_response(state.steering.readiness().await)
}

async fn drain(State(state): State<AdminState>) -> Response {
    drained_response(state.steering.set_drained(true).await)
}

async fn undrain(State(state): State<AdminState>) -> Response {
    drained_response(state.steering.set_drained(false).await)
}

/// A drain or undrain: 200 with the readiness after it, as JSON.
fn drained_response(readiness: Option<Readiness>) -> Response {
    match readiness {
        Some(r) => Json(r).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the edge is shutting down\n",
        )
            .into_response(),
    }
}

fn readiness_response(readiness: Option<Readiness>) -> Response {
    let Some(r) = readiness else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the edge is shutting down\n",
        )
            .into_response();
    };
    if r.ready {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let mut body = String::from("not ready\n");
    if r.stopping {
        body.push_str("stopping\n");
    }
    if r.drained {
        body.push_str("drained (portico-edge undrain ends it)\n");
    }
    // A few reasons are enough to act on; a thousand listeners would not
    // help anyone.
    const SHOWN: usize = 20;
    for reason in r.waiting.iter().take(SHOWN) {
        body.push_str(reason);
        body.push('\n');
    }
    if r.waiting.len() > SHOWN {
        body.push_str(&format!("... and {} more\n", r.waiting.len() - SHOWN));
    }
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}
