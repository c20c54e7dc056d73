//! The plain-HTTP ops listener: `/healthz`, `/readyz`, `/metrics`, and nothing else.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::Gateway;

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(gateway)
}

/// Ready when not shutting down and the database answers.
async fn readyz(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    if gateway.is_stopping() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".to_string());
    }
    match gateway.db.ping().await {
        Ok(()) => (StatusCode::OK, format!("ready ({})\n", gateway.db.engine())),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database unavailable: {e}\n")),
    }
}

async fn metrics(State(gateway): State<Arc<Gateway>>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let listed = gateway.registry.list(crate::now_ms());
    for state in ["alive", "suspect", "dead", "revoked"] {
        let count =
            listed.iter().filter(|c| if c.revoked { state == "revoked" } else { c.state.to_string() == state }).count();
        gateway.metrics.clusters.get_or_create(&crate::metrics::StateLabel { state }).set(count as i64);
    }
    atoll_api::exposition::respond(headers.get(header::ACCEPT), gateway.metrics.render())
}
