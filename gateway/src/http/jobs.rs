//! Jobs as users see and cancel them, and their logs (a long poll).

use atoll_api::ApiError;
use atoll_api::gateway::Scope;
use atoll_api::jobs::JobDetail;
use atoll_api::jobs::JobInfo;
use atoll_api::jobs::LogPage;
use axum::Extension;
use axum::Json;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;

use super::Shared;
use crate::auth::Caller;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    limit: Option<u32>,
}

pub(super) async fn jobs(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<JobInfo>>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::bad_request("limit must be within 1..=10000"));
    }
    Ok(Json(gateway.recent_jobs(limit).await?))
}

pub(super) async fn job(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobDetail>, ApiError> {
    caller.require(Scope::Read)?;
    Ok(Json(gateway.job_detail(&id).await?))
}

pub(super) async fn cancel(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobInfo>, ApiError> {
    caller.require(Scope::Submit)?;
    Ok(Json(gateway.cancel(&id, &caller.describe()).await?))
}

/// Where to read a log from, and how long to wait for more (the API's and the dashboard's).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogQuery {
    #[serde(default)]
    pub after_attempt: u32,
    #[serde(default)]
    pub after_seq: u32,
    #[serde(default)]
    pub wait_ms: u64,
}

pub(super) async fn logs(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Json<LogPage>, ApiError> {
    caller.require(Scope::Read)?;
    let wait = std::time::Duration::from_millis(query.wait_ms);
    Ok(Json(gateway.read_logs(&id, (query.after_attempt, query.after_seq), wait).await?))
}
