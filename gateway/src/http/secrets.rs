//! Secrets: set, list, delete (admin); an attempt's secret variables (its cluster's replicas).

use std::collections::BTreeMap;

use atoll_api::ApiError;
use atoll_api::error::JsonBody;
use atoll_api::gateway::Scope;
use atoll_api::gateway::SecretInfo;
use atoll_api::gateway::SecretValue;
use axum::Extension;
use axum::Json;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;

use super::Shared;
use crate::auth::Caller;

pub(super) async fn set(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Admin)?;
    let request: SecretValue = body.parse()?;
    gateway.set_secret(&name, &request.value, &caller.describe()).await?;
    Ok(Json(serde_json::json!({ "secret": name })))
}

pub(super) async fn list(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    caller.require(Scope::Admin)?;
    Ok(Json(gateway.list_secrets().await?))
}

pub(super) async fn delete(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Admin)?;
    gateway.delete_secret(&name, &caller.describe()).await?;
    Ok(Json(serde_json::json!({ "deleted": name })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AttemptQuery {
    attempt: u32,
}

pub(super) async fn of_job(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path((cluster, job)): Path<(String, String)>,
    Query(query): Query<AttemptQuery>,
) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    caller.replica_of(&cluster)?;
    Ok(Json(gateway.job_secrets(&cluster, &job, query.attempt).await?))
}
