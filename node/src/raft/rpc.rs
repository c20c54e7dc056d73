//! Receiving Raft RPCs (`/raft/v1/...` on the mTLS listener).
//!
//! Only replicas of the same cluster may call these: anyone else is refused with 403 and a log
//! line naming them. Every request carries the Raft protocol version; a replica refuses a
//! version it does not speak, so a mixed-version group fails loudly instead of misreading.

use std::sync::Arc;

use atoll_api::ApiError;
use atoll_api::ids::ClusterName;
use atoll_api::serve::Peer;
use atoll_raft_store::SnapshotFile;
use atoll_raft_store::StateMachineStore;
use atoll_raft_store::TypeConfig;
use axum::Extension;
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use futures::StreamExt;
use openraft::Raft;
use openraft::raft::TransferLeaderRequest;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

/// Header carrying the Raft protocol version of the sender.
pub const PROTOCOL_HEADER: &str = "x-atoll-raft-protocol";
/// The Raft protocol version this build speaks.
pub const PROTOCOL_VERSION: &str = "1";
pub const SNAPSHOT_VOTE_HEADER: &str = "x-atoll-snapshot-vote";
pub const SNAPSHOT_META_HEADER: &str = "x-atoll-snapshot-meta";

/// Largest AppendEntries body accepted (a batch of entries).
const MAX_APPEND_BODY: usize = 256 * 1024 * 1024;

pub type AtollRaft = Raft<TypeConfig, StateMachineStore>;

#[derive(Clone)]
pub struct RpcState {
    pub raft: AtollRaft,
    pub state: StateMachineStore,
    pub cluster: ClusterName,
    pub replica: Arc<crate::raft::Replica>,
}

/// What a replica starting with an empty data dir learns from a peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BootstrapInfo {
    /// The peer has a membership (the group was bootstrapped).
    pub initialized: bool,
    /// The incarnation the group recorded for the asking node id, if any.
    pub registered_incarnation: Option<String>,
}

pub fn router(state: RpcState) -> Router {
    // What openraft itself answers: only once this replica knows it belongs in the group.
    let consensus = Router::new()
        .route("/raft/v1/append", post(append))
        .route("/raft/v1/vote", post(vote))
        .route("/raft/v1/pre-vote", post(pre_vote))
        .route("/raft/v1/transfer-leader", post(transfer_leader))
        .route("/raft/v1/snapshot", post(snapshot).layer(DefaultBodyLimit::disable()))
        .layer(axum::middleware::from_fn_with_state(state.replica.clone(), in_group_only));
    Router::new()
        .merge(consensus)
        .route("/raft/v1/bootstrap", get(bootstrap))
        .route("/raft/v1/last-log", get(last_log))
        .route("/raft/v1/propose", post(propose))
        .layer(DefaultBodyLimit::max(MAX_APPEND_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), same_cluster_only))
        .with_state(Arc::new(state))
}

async fn same_cluster_only(State(state): State<RpcState>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<Peer>().cloned();
    let Some(Peer(identity)) = peer else {
        return ApiError::new(atoll_api::ErrorCode::Unauthenticated, "no client identity").into_response();
    };
    if !identity.is_replica_of(&state.cluster) {
        tracing::warn!(peer = %identity, cluster = %state.cluster, path = %request.uri().path(), "refused raft rpc: not a replica of this cluster");
        return ApiError::forbidden(format!("{identity} is not a replica of cluster {}", state.cluster))
            .into_response();
    }
    let version = request.headers().get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("none");
    if version != PROTOCOL_VERSION {
        tracing::warn!(peer = %identity, version, "refused raft rpc: unsupported protocol version");
        return ApiError::bad_request(format!(
            "raft protocol version {version} is not supported (this replica speaks {PROTOCOL_VERSION})"
        ))
        .into_response();
    }
    next.run(request).await
}

/// A replica that started with an empty log answers no consensus RPC until its bootstrap has
/// decided it belongs in the group. A wiped replica restarted under its old id would otherwise
/// answer the leader's append with an empty log: its acknowledged entries gone, which the leader
/// must treat as a broken invariant (the log of a follower went backwards). Refused, it looks
/// unreachable to the leader until it exits (see `bootstrap`).
async fn in_group_only(State(replica): State<Arc<crate::raft::Replica>>, request: Request, next: Next) -> Response {
    if !replica.is_in_group() {
        return ApiError::unavailable("this replica has not yet decided whether it belongs in the group")
            .into_response();
    }
    next.run(request).await
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("unreadable raft rpc: {e}")))
}

async fn append(State(state): State<Arc<RpcState>>, body: Bytes) -> Result<Response, ApiError> {
    let request = parse(&body)?;
    Ok(Json(state.raft.append_entries(request).await).into_response())
}

async fn vote(State(state): State<Arc<RpcState>>, body: Bytes) -> Result<Response, ApiError> {
    let request = parse(&body)?;
    Ok(Json(state.raft.vote(request).await).into_response())
}

async fn pre_vote(State(state): State<Arc<RpcState>>, body: Bytes) -> Result<Response, ApiError> {
    let request = parse(&body)?;
    Ok(Json(state.raft.pre_vote(request).await).into_response())
}

async fn transfer_leader(State(state): State<Arc<RpcState>>, body: Bytes) -> Result<Response, ApiError> {
    let request: TransferLeaderRequest<TypeConfig> = parse(&body)?;
    state.replica.note_transfer(*request.from_leader(), *request.to_node_id());
    Ok(Json(state.raft.handle_transfer_leader(request).await).into_response())
}

fn header_json<T: DeserializeOwned>(headers: &HeaderMap, name: &str) -> Result<T, ApiError> {
    let raw = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request(format!("missing header {name}")))?;
    serde_json::from_str(raw).map_err(|e| ApiError::bad_request(format!("header {name}: {e}")))
}

/// Receive a snapshot: stream the body to a file in the snapshot directory (bounded memory),
/// fsync it, then hand it to openraft to install.
async fn snapshot(State(state): State<Arc<RpcState>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let vote: atoll_raft_store::types::Vote = header_json(&headers, SNAPSHOT_VOTE_HEADER)?;
    let meta: atoll_raft_store::types::SnapshotMeta = header_json(&headers, SNAPSHOT_META_HEADER)?;
    let path = state.state.incoming_snapshot_path();
    let received = receive_to_file(&path, body).await;
    let bytes = match received {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(ApiError::bad_request(format!("receiving the snapshot failed: {e}")));
        }
    };
    tracing::info!(size = bytes, last = ?meta.last_log_id, "snapshot received; installing");
    let file = SnapshotFile::open(&path).map_err(|e| ApiError::internal(e.to_string()))?;
    let snapshot = atoll_raft_store::types::Snapshot { meta, snapshot: file };
    let result = state.raft.install_full_snapshot(vote, snapshot).await;
    // Installed snapshots are moved away; a refused one is left here.
    let _ = tokio::fs::remove_file(&path).await;
    Ok(Json(result).into_response())
}

async fn receive_to_file(path: &std::path::Path, body: Body) -> std::io::Result<u64> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(std::io::Error::other)?;
        total += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    Ok(total)
}

async fn bootstrap(
    State(state): State<Arc<RpcState>>,
    Extension(Peer(identity)): Extension<Peer>,
) -> Result<Json<BootstrapInfo>, ApiError> {
    let atoll_api::Identity::Node { node, .. } = identity else {
        return Err(ApiError::forbidden("only replicas may ask"));
    };
    let initialized = state.raft.is_initialized().await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    let replicas = state.state.replicas().map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(BootstrapInfo {
        initialized,
        registered_incarnation: replicas.get(&node.0).map(|r| r.incarnation.clone()),
    }))
}

async fn last_log(
    State(state): State<Arc<RpcState>>,
) -> Result<Json<Option<atoll_raft_store::types::LogId>>, ApiError> {
    let last = state
        .raft
        .with_raft_state(|st| st.log_ids.last().cloned())
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(last))
}

/// A command forwarded by a follower: applied here if this replica leads, else `not_leader`.
async fn propose(
    State(state): State<Arc<RpcState>>,
    body: Bytes,
) -> Result<Json<atoll_raft_store::CommandResponse>, ApiError> {
    let command: atoll_raft_store::Command = parse(&body)?;
    state.replica.propose_local(command).await.map(Json)
}
