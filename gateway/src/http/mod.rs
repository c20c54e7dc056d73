//! The gateway API (`/v1/...`). Who may call what:
//!
//! | route | caller |
//! | --- | --- |
//! | `GET /v1/ca` | anyone (the CA certificate and its fingerprint) |
//! | `POST /v1/enroll` | anyone with a join token |
//! | `POST /v1/renew` | a replica, for its own identity |
//! | `PUT /v1/clusters/{name}/heartbeat` | the leader of `name` (registration + heartbeat, fenced by term) |
//! | `PUT /v1/clusters/{name}/row` | the leader of `name` (its matrix row, fenced by term) |
//! | `GET /v1/clusters`, `GET /v1/matrix`, `GET /v1/gateways` | read scope, or any replica |
//! | `POST /v1/clusters/{name}/enable\|disable\|revoke` | admin |
//! | `POST /v1/tokens/join`, `POST /v1/tokens/user` | admin |
//! | `POST /v1/pipelines` | submit scope (the spec is checked whole; every problem listed) |
//! | `GET /v1/pipelines/{id}`, `GET /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/logs` | read scope |
//! | `POST /v1/jobs/{id}/cancel` | submit scope |
//! | `POST /v1/clusters/{name}/lease\|reports\|logs` | the leader of `name` (fenced by term) |
//! | `POST /v1/clusters/{name}/transfers` | a replica of `name`: how an input of a job bound there travels, with its ticket |
//! | `POST /v1/sources` | submit scope: register a source uploaded to the gateway's store |
//! | `GET /v1/sources/{digest}` | read scope, or any replica |
//! | `GET\|PUT /v1/blobs/{digest}`, `GET\|PUT /v1/blobs/{digest}/chunks/{n}`, `POST /v1/blobs/{digest}/complete` | the gateway's store: a replica with a relay ticket for that blob; a source: uploaded with the submit scope, read by any replica |
//! | `GET /v1/secrets`, `PUT\|DELETE /v1/secrets/{name}` | admin (never a value in an answer) |
//! | `GET /v1/clusters/{name}/jobs/{job}/secrets?attempt=N` | a replica of `name`, for an attempt bound there: its secret variables |
//! | `GET /v1/openapi.json` | anyone |
//!
//! Replicas of a revoked cluster are refused whatever they ask (`revoked`, 403).
//!
//! The routes are listed in one place ([`router`]), each handler in the file of its resource;
//! the ops listener's routes are in [`ops`]. Another listener gets its own router here.

mod clusters;
mod enroll;
pub(crate) mod gateways;
pub(crate) mod jobs;
mod leader;
mod matrix;
mod pipelines;
mod relay;
mod secrets;
mod tokens;

pub mod ops;

use std::sync::Arc;

use atoll_api::ApiError;
use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::routing::post;
use axum::routing::put;

use crate::Gateway;

type Shared = State<Arc<Gateway>>;

/// The `/v1` API of the mTLS listener, every route of it.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/ca", get(enroll::ca))
        .route("/v1/enroll", post(enroll::enroll))
        .route("/v1/renew", post(enroll::renew))
        .route("/v1/clusters", get(clusters::clusters))
        .route("/v1/clusters/{name}/heartbeat", put(clusters::heartbeat))
        .route("/v1/clusters/{name}/row", put(matrix::row))
        .route("/v1/clusters/{name}/enable", post(clusters::enable))
        .route("/v1/clusters/{name}/disable", post(clusters::disable))
        .route("/v1/clusters/{name}/revoke", post(clusters::revoke))
        .route("/v1/matrix", get(matrix::matrix))
        .route("/v1/gateways", get(gateways::gateways))
        .route("/v1/tokens/join", post(tokens::join_token))
        .route("/v1/tokens/user", post(tokens::user_token))
        .route("/v1/pipelines", post(pipelines::submit))
        .route("/v1/pipelines/{id}", get(pipelines::pipeline))
        .route("/v1/jobs", get(jobs::jobs))
        .route("/v1/jobs/{id}", get(jobs::job))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/logs", get(jobs::logs))
        .route("/v1/clusters/{name}/lease", post(leader::lease))
        .route("/v1/clusters/{name}/reports", post(leader::reports))
        .route("/v1/clusters/{name}/logs", post(leader::ship_logs))
        .route("/v1/clusters/{name}/transfers", post(relay::transfer))
        .route("/v1/clusters/{name}/blobs/released", post(relay::released))
        .route("/v1/sources", post(relay::register_source))
        .route("/v1/sources/{digest}", get(relay::source))
        .route("/v1/secrets", get(secrets::list))
        .route("/v1/secrets/{name}", put(secrets::set).delete(secrets::delete))
        .route("/v1/clusters/{name}/jobs/{job}/secrets", get(secrets::of_job))
        .route("/v1/openapi.json", get(openapi))
        .with_state(gateway.clone())
        .merge(atoll_store::transfer::routes(gateway.relay.clone()))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), crate::auth::identify))
        .layer(axum::extract::DefaultBodyLimit::max(atoll_api::error::BODY_LIMIT))
        .layer(axum::middleware::map_response(atoll_api::error::envelope))
        .layer(axum::middleware::from_fn_with_state(gateway, crate::metrics::observe_http))
}

fn db_error(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "database error");
    ApiError::unavailable(format!("the gateway's database is unavailable: {e}"))
}

async fn openapi() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("../openapi.json"))
}

#[cfg(test)]
mod openapi_tests {
    #[test]
    fn the_openapi_document_matches_the_router() {
        let problems = atoll_api::openapi::check(
            concat!(include_str!("mod.rs"), include_str!("../../../store/src/transfer.rs")),
            include_str!("../openapi.json"),
        );
        assert!(problems.is_empty(), "the gateway OpenAPI document is out of date:\n{}", problems.join("\n"));
    }
}
