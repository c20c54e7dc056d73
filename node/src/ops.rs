//! The plain-HTTP ops listener: `/healthz`, `/readyz`, `/metrics`, and nothing else.
//!
//! - `/healthz`: 200 while the Raft core runs (503 after a fatal storage error).
//! - `/readyz`: 200 when this replica knows a leader and is not shutting down.
//! - `/metrics`: Prometheus text 0.0.4, or OpenMetrics when the scraper asks for it
//!   ([`atoll_api::exposition`]).

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::raft::Replica;

pub fn router(replica: Arc<Replica>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(replica)
}

async fn healthz(axum::extract::State(replica): axum::extract::State<Arc<Replica>>) -> impl IntoResponse {
    if replica.is_running() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "raft core stopped\n".to_string())
    }
}

async fn readyz(axum::extract::State(replica): axum::extract::State<Arc<Replica>>) -> impl IntoResponse {
    if replica.is_stopping() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".to_string());
    }
    if !replica.is_running() {
        return (StatusCode::SERVICE_UNAVAILABLE, "raft core stopped\n".to_string());
    }
    match replica.leader() {
        Some(leader) => (StatusCode::OK, format!("ready; leader is node {} at {}\n", leader.id, leader.addr)),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no leader known\n".to_string()),
    }
}

async fn metrics(
    axum::extract::State(replica): axum::extract::State<Arc<Replica>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    atoll_api::exposition::respond(headers.get(header::ACCEPT), replica.metrics.render())
}
