//! A cluster leader's side of jobs: the lease (a long poll), reports and log batches, each
//! fenced by term.

use atoll_api::ApiError;
use atoll_api::error::JsonBody;
use atoll_api::jobs::LeaseRequest;
use atoll_api::jobs::LeaseResponse;
use atoll_api::jobs::LogBatch;
use atoll_api::jobs::ReportBatch;
use atoll_api::jobs::ReportResults;
use axum::Extension;
use axum::Json;
use axum::extract::Path;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::Response;

use super::Shared;
use crate::auth::Caller;

/// The leader of `name` asks for work (long poll).
pub(super) async fn lease(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: JsonBody,
) -> Result<Json<LeaseResponse>, ApiError> {
    caller.replica_of(&name)?;
    let request: LeaseRequest = body.parse()?;
    let wait = std::time::Duration::from_millis(request.wait_ms);
    Ok(Json(gateway.lease(&name, request.term, &request.held, wait).await?))
}

/// The leader of `name` reports job state changes.
pub(super) async fn reports(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: JsonBody,
) -> Result<Json<ReportResults>, ApiError> {
    caller.replica_of(&name)?;
    let batch: ReportBatch = body.parse()?;
    Ok(Json(ReportResults { results: gateway.report(&name, batch.term, &batch.reports).await? }))
}

/// The leader of `name` ships job output.
pub(super) async fn ship_logs(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    caller.replica_of(&name)?;
    let batch: LogBatch = body.parse()?;
    let stored = gateway.store_logs(&name, &batch).await?;
    Ok(Json(serde_json::json!({"stored": stored})).into_response())
}
