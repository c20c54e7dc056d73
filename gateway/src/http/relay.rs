//! Moving outputs and sources: an input's route (with its ticket), blobs nobody needs any
//! more, and the sources users push.

use atoll_api::ApiError;
use atoll_api::error::JsonBody;
use atoll_api::gateway::Scope;
use atoll_api::jobs::ReleaseAnswer;
use atoll_api::jobs::ReleaseRequest;
use atoll_api::jobs::SourceInfo;
use atoll_api::jobs::SourceRequest;
use atoll_api::jobs::TransferPlan;
use atoll_api::jobs::TransferRequest;
use axum::Extension;
use axum::Json;
use axum::extract::Path;
use axum::extract::State;

use super::Shared;
use super::db_error;
use crate::auth::Caller;

/// A replica of `name` asks how an input of a job bound there travels.
pub(super) async fn transfer(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: JsonBody,
) -> Result<Json<TransferPlan>, ApiError> {
    let cluster = caller.replica_cluster(&name)?;
    let request: TransferRequest = body.parse()?;
    Ok(Json(gateway.transfer(cluster, &request).await?))
}

/// A replica of `name` asks which blobs of its store nobody needs any more.
pub(super) async fn released(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: JsonBody,
) -> Result<Json<ReleaseAnswer>, ApiError> {
    caller.replica_of(&name)?;
    let request: ReleaseRequest = body.parse()?;
    Ok(Json(gateway.release(&request).await?))
}

/// Register a source uploaded to the gateway's store (`atoll push`).
pub(super) async fn register_source(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    body: JsonBody,
) -> Result<Json<SourceInfo>, ApiError> {
    caller.require(Scope::Submit)?;
    let request: SourceRequest = body.parse()?;
    Ok(Json(gateway.register_source(&request.digest, &caller.describe()).await?))
}

pub(super) async fn source(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(digest): Path<String>,
) -> Result<Json<SourceInfo>, ApiError> {
    if !matches!(caller, Caller::Node { .. }) {
        caller.require(Scope::Read)?;
    }
    let found = gateway.db.source(&digest).await.map_err(db_error)?;
    Ok(Json(found.ok_or_else(|| ApiError::not_found(format!("no source {digest}")))?))
}
