//! Pipelines: submission (the spec checked whole) and a pipeline's jobs.

use atoll_api::ApiError;
use atoll_api::error::JsonBody;
use atoll_api::gateway::Scope;
use atoll_api::jobs::Submitted;
use atoll_api::spec::Document;
use axum::Extension;
use axum::Json;
use axum::extract::Path;
use axum::extract::State;

use super::Shared;
use crate::auth::Caller;

pub(super) async fn submit(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    body: JsonBody,
) -> Result<Json<Submitted>, ApiError> {
    caller.require(Scope::Submit)?;
    let request: Submission = body.parse()?;
    Ok(Json(gateway.submit(&request.spec, request.files, &caller.describe()).await?))
}

/// An [`atoll_api::jobs::SubmitRequest`] as the gateway reads it: the spec read as a
/// [`Document`], which keeps the duplicate keys it found (a plain JSON value keeps the last of
/// them without a word).
#[derive(serde::Deserialize)]
struct Submission {
    spec: Document,
    /// The pipeline files its `workflow` includes name.
    #[serde(default)]
    files: std::collections::BTreeMap<String, String>,
}

pub(super) async fn pipeline(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Submitted>, ApiError> {
    caller.require(Scope::Read)?;
    Ok(Json(gateway.pipeline_info(&id).await?))
}
