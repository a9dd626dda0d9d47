//! The edge's HTTP endpoints: `/metrics` for Prometheus, `/status` (JSON) for
//! `portico-edge status` and people, `/healthz` for the appliance's own
//! supervision. (The cloud-provider hook API has a listener of its own:
//! [`crate::hook`].)

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::metrics::EdgeMetrics;
use crate::status::StatusSource;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Metrics to render.
    pub metrics: EdgeMetrics,
    /// Where status comes from.
    pub status: Arc<dyn StatusSource>,
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
