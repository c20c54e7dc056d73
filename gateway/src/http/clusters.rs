//! Clusters: a leader's heartbeat (registration, fenced by term), the list, and the admin's
//! enable, disable and revoke.

use atoll_api::ApiError;
use atoll_api::ErrorCode;
use atoll_api::error::JsonBody;
use atoll_api::gateway::Heartbeat;
use atoll_api::gateway::HeartbeatAck;
use atoll_api::gateway::Scope;
use atoll_api::ids::Label;
use axum::Extension;
use axum::Json;
use axum::extract::Path;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::Response;

use super::Shared;
use super::db_error;
use crate::Gateway;
use crate::auth::Caller;
use crate::now_ms;
use crate::registry::Refused;

fn refused(e: Refused) -> ApiError {
    match e {
        Refused::Revoked(cluster) => ApiError::new(ErrorCode::Revoked, format!("cluster {cluster} is revoked")),
        fenced @ Refused::Fenced { .. } => ApiError::new(ErrorCode::StaleLeader, fenced.to_string()),
        Refused::Db(e) => db_error(e),
    }
}

/// The leader of `name` registers and heartbeats; the answer is the mesh as it should see it.
pub(super) async fn heartbeat(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: JsonBody,
) -> Result<Json<HeartbeatAck>, ApiError> {
    let node = caller.replica_of(&name)?;
    let cluster = caller.replica_cluster(&name)?;
    let heartbeat: Heartbeat = body.parse()?;
    if heartbeat.leader_id != node {
        return Err(ApiError::bad_request(format!(
            "node {node} sent a heartbeat naming node {} as leader",
            heartbeat.leader_id
        )));
    }
    for (i, label) in heartbeat.labels.iter().enumerate() {
        label.parse::<Label>().map_err(|e| ApiError::bad_request(format!("labels[{i}]: {e}")))?;
    }
    let written = gateway.registry.written_within(crate::duties::database_fresh_for(&gateway.config.ha));
    if gateway.lease.replicated() && !(gateway.lease.database_fresh() && written) {
        // Heard here, the heartbeat would reach nobody else: the leader moves to another replica.
        return Err(ApiError::unavailable(format!(
            "gateway replica {} cannot write to the database; use another replica",
            gateway.config.id
        )));
    }
    gateway.metrics.heartbeats.inc();
    if let Err(e) = gateway.registry.heartbeat(cluster, &heartbeat, now_ms()).await {
        if matches!(e, Refused::Fenced { .. }) {
            gateway.metrics.fenced.inc();
            tracing::warn!(cluster = %name, term = heartbeat.term.0, error = %e, "stale leader fenced");
        }
        return Err(refused(e));
    }
    let config = &gateway.config;
    let view_revision = gateway.registry.view_revision();
    let view = (heartbeat.view_revision != Some(view_revision)).then(|| gateway.registry.view_for(&name));
    Ok(Json(HeartbeatAck {
        view,
        view_revision,
        heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
        probe_interval_ms: config.probe_interval.as_millis() as u64,
        probe_timeout_ms: config.probe_timeout.as_millis() as u64,
        row_interval_ms: config.row_interval.as_millis() as u64,
        gateways: gateway.lease.listed(),
    }))
}

pub(super) async fn clusters(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    if gateway.lease.replicated() {
        gateway.registry.refresh_if_unregistered().await.map_err(db_error)?;
    }
    Ok(Json(gateway.registry.list(now_ms())).into_response())
}

async fn set_enabled(gateway: &Gateway, caller: &Caller, name: &str, enabled: bool) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    if !gateway.registry.set_enabled(name, enabled).await.map_err(db_error)? {
        return Err(ApiError::not_found(format!("no cluster {name}")));
    }
    tracing::info!(cluster = name, enabled, by = %caller.describe(), "cluster admin intent changed");
    Ok(Json(serde_json::json!({"cluster": name, "enabled": enabled})).into_response())
}

pub(super) async fn enable(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_enabled(&gateway, &caller, &name, true).await
}

pub(super) async fn disable(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_enabled(&gateway, &caller, &name, false).await
}

pub(super) async fn revoke(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    if !gateway.registry.revoke(&name, now_ms()).await.map_err(db_error)? {
        return Err(ApiError::not_found(format!("no cluster {name}")));
    }
    tracing::warn!(cluster = %name, by = %caller.describe(), "cluster revoked");
    Ok(Json(serde_json::json!({"cluster": name, "revoked": true})).into_response())
}
