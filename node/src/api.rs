//! The replica API (`/v1/...` on the mTLS listener).
//!
//! | route | who | what |
//! | --- | --- | --- |
//! | `GET /v1/status` | any identity | this replica's view (`atoll status`) |
//! | `GET /v1/probe` | any admitted identity | reachability probes of other clusters' leaders |
//! | `GET /v1/annotations[?detail=true]` | any identity | annotations as applied here |
//! | `PUT /v1/annotations/{key}` | operators, gateway, this cluster's replicas | set (forwarded to the leader) |
//! | `DELETE /v1/annotations/{key}` | same | remove |
//! | `GET /v1/raft/members` | any identity | the Raft membership |
//! | `POST /v1/raft/learners` | operators | add a learner, wait until it caught up |
//! | `POST /v1/raft/voters/{id}` | operators | promote a learner |
//! | `DELETE /v1/raft/members/{id}` | operators | remove a member |
//! | `POST /v1/raft/transfer-leader` | operators | hand leadership over |
//! | `GET /v1/openapi.json` | any identity | this table as OpenAPI |

use std::sync::Arc;

use atoll_api::ApiError;
use atoll_api::Identity;
use atoll_api::error::JsonBody;
use atoll_api::node::AddLearner;
use atoll_api::node::AnnotationWrite;
use atoll_api::node::MAX_ANNOTATION_VALUE;
use atoll_api::node::TransferLeader;
use atoll_api::node::check_annotation_key;
use atoll_api::serve::Peer;
use atoll_raft_store::Command;
use atoll_raft_store::CommandResponse;
use axum::Extension;
use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use serde::Deserialize;

use crate::raft::Replica;

type Shared = State<Arc<Replica>>;

pub fn router(replica: Arc<Replica>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/probe", get(probe))
        .route("/v1/annotations", get(annotations))
        .route("/v1/annotations/{*key}", axum::routing::put(annotate).delete(delete_annotation))
        .route("/v1/raft/members", get(members))
        .route("/v1/raft/members/{id}", axum::routing::delete(remove_member))
        .route("/v1/raft/learners", post(add_learner))
        .route("/v1/raft/voters/{id}", post(promote))
        .route("/v1/raft/transfer-leader", post(transfer_leader))
        .route("/v1/openapi.json", get(openapi))
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(replica)
}

/// The answers of every API a replica serves on its mTLS listener (this one, Raft RPCs, blobs):
/// JSON bodies up to [`atoll_api::error::BODY_LIMIT`] (blob chunks and snapshots have their own
/// limits), and every error in the envelope, the framework's own refusals included.
pub fn with_envelope(router: Router) -> Router {
    router
        .layer(axum::extract::DefaultBodyLimit::max(atoll_api::error::BODY_LIMIT))
        .layer(axum::middleware::map_response(atoll_api::error::envelope))
}

fn may_write(replica: &Replica, identity: &Identity) -> Result<(), ApiError> {
    match identity {
        Identity::Operator { .. } | Identity::Gateway { .. } => Ok(()),
        Identity::Node { .. } if identity.is_replica_of(&replica.info().cluster) => Ok(()),
        other => Err(ApiError::forbidden(format!("{other} may not write to cluster {}", replica.info().cluster))),
    }
}

fn operator_only(identity: &Identity) -> Result<(), ApiError> {
    if identity.is_operator() {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("{identity} may not change the membership; an operator certificate is needed")))
    }
}

async fn status(State(replica): Shared) -> impl IntoResponse {
    Json(replica.status())
}

/// Answered to other clusters' leaders measuring reachability (cheap: no Raft, no storage).
async fn probe(State(replica): Shared) -> impl IntoResponse {
    Json(serde_json::json!({"cluster": replica.info().cluster.as_str(), "node_id": replica.info().node_id}))
}

#[derive(Deserialize)]
struct AnnotationsQuery {
    #[serde(default)]
    detail: bool,
}

async fn annotations(State(replica): Shared, Query(query): Query<AnnotationsQuery>) -> Result<Response, ApiError> {
    let all = replica.annotations()?;
    if query.detail {
        return Ok(Json(all).into_response());
    }
    let plain: atoll_api::node::Annotations = all.into_iter().map(|(k, a)| (k, a.value)).collect();
    Ok(Json(plain).into_response())
}

async fn annotate(
    State(replica): Shared,
    Extension(Peer(identity)): Extension<Peer>,
    Path(key): Path<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    may_write(&replica, &identity)?;
    check_annotation_key(&key).map_err(ApiError::bad_request)?;
    let write: AnnotationWrite = body.parse()?;
    if write.value.len() > MAX_ANNOTATION_VALUE {
        return Err(ApiError::bad_request(format!(
            "value of {key:?} is {} bytes; at most {MAX_ANNOTATION_VALUE} are allowed",
            write.value.len()
        )));
    }
    Ok(Json(replica.annotate(&key, &write.value).await?).into_response())
}

async fn delete_annotation(
    State(replica): Shared,
    Extension(Peer(identity)): Extension<Peer>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    may_write(&replica, &identity)?;
    check_annotation_key(&key).map_err(ApiError::bad_request)?;
    match replica.propose(Command::DeleteAnnotation { key: key.clone() }).await? {
        CommandResponse::AnnotationDeleted { existed, .. } => {
            Ok(Json(serde_json::json!({"key": key, "existed": existed})).into_response())
        }
        other => Err(ApiError::internal(format!("unexpected answer to a delete: {other:?}"))),
    }
}

async fn members(State(replica): Shared) -> impl IntoResponse {
    Json(replica.members())
}

async fn add_learner(
    State(replica): Shared,
    Extension(Peer(identity)): Extension<Peer>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    operator_only(&identity)?;
    let request: AddLearner = body.parse()?;
    if request.addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
        return Err(ApiError::bad_request(format!("addr {:?} is not host:port", request.addr)));
    }
    Ok(Json(replica.add_learner(request.id, &request.addr).await?).into_response())
}

async fn promote(
    State(replica): Shared,
    Extension(Peer(identity)): Extension<Peer>,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    operator_only(&identity)?;
    Ok(Json(replica.promote(id).await?).into_response())
}

async fn remove_member(
    State(replica): Shared,
    Extension(Peer(identity)): Extension<Peer>,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    operator_only(&identity)?;
    Ok(Json(replica.remove(id).await?).into_response())
}

async fn transfer_leader(
    State(replica): Shared,
    Extension(Peer(identity)): Extension<Peer>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    operator_only(&identity)?;
    let request: TransferLeader = if body.is_empty() { TransferLeader { to: None } } else { body.parse()? };
    Ok(Json(replica.transfer_leadership(request.to).await?).into_response())
}

async fn openapi() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

#[cfg(test)]
mod openapi_tests {
    #[test]
    fn the_openapi_document_matches_the_router() {
        let problems = atoll_api::openapi::check(
            concat!(include_str!("api.rs"), include_str!("../../store/src/transfer.rs")),
            include_str!("openapi.json"),
        );
        assert!(problems.is_empty(), "the replica OpenAPI document is out of date:\n{}", problems.join("\n"));
    }
}
