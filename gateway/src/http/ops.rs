//! The plain-HTTP ops listener: `/healthz`, `/readyz`, `/metrics`, and nothing else.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use atoll_api::jobs::JobState;

use crate::Gateway;
use crate::metrics::StateLabel;

/// How long a scrape waits for the database to count unfinished jobs.
const COUNT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

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
    let now = crate::now_ms();
    let metrics = &gateway.metrics;
    let listed = gateway.registry.list(now);
    for state in ["alive", "suspect", "dead", "revoked"] {
        let count =
            listed.iter().filter(|c| if c.revoked { state == "revoked" } else { c.state.to_string() == state }).count();
        metrics.clusters.get_or_create(&StateLabel { state }).set(count as i64);
    }
    metrics.lease_held.set(i64::from(gateway.lease.duty().is_some()));
    metrics.lease_generation.set(i64::try_from(gateway.lease.generation()).unwrap_or(i64::MAX));
    let (clusters, rows) = (gateway.registry.registered(), gateway.rows.snapshot());
    let cells = crate::matrix::Grid::new(&clusters, &rows, now, gateway.config.stale_after).count_by_state();
    for (state, count) in cells {
        metrics.matrix_cells.get_or_create(&StateLabel { state: state.as_str() }).set(count as i64);
    }
    match tokio::time::timeout(COUNT_TIMEOUT, gateway.db.count_unfinished()).await {
        Ok(Ok(counted)) => {
            for state in [JobState::Waiting, JobState::Queued, JobState::Assigned, JobState::Running] {
                let count = counted.iter().find(|(name, _)| name == state.as_str()).map_or(0, |(_, n)| *n);
                metrics.jobs.get_or_create(&StateLabel { state: state.as_str() }).set(count);
            }
        }
        // The gauges keep their last values; readiness says whether the database answers.
        Ok(Err(e)) => tracing::debug!(error = %e, "counting jobs for the metrics failed"),
        Err(_) => tracing::debug!(after = ?COUNT_TIMEOUT, "counting jobs for the metrics timed out"),
    }
    atoll_api::exposition::respond(headers.get(header::ACCEPT), metrics.render())
}
