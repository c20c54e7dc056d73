//! The gateway replicas: who serves, who holds the duties lease.

use atoll_api::ApiError;
use atoll_api::gateway::GatewayReplica;
use atoll_api::gateway::Scope;
use axum::Extension;
use axum::Json;
use axum::extract::State;

use super::Shared;
use super::db_error;
use crate::auth::Caller;

/// `GET /v1/gateways`: every replica seen within the lease's TTL (with one gateway: itself),
/// and which holds the lease (by the database's record and clock).
pub(super) async fn gateways(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<GatewayReplica>>, ApiError> {
    caller.require(Scope::Read)?;
    Ok(Json(replicas(&gateway).await?))
}

/// The replicas seen within the lease's TTL, and which holds the lease.
pub(crate) async fn replicas(gateway: &crate::Gateway) -> Result<Vec<GatewayReplica>, ApiError> {
    let lease = gateway.db.lease().await.map_err(db_error)?;
    let within = crate::duties::listed_for(&gateway.config.ha);
    let rows = gateway.db.replicas(u64::try_from(within.as_millis()).unwrap_or(u64::MAX)).await.map_err(db_error)?;
    let holder = lease.holder_now().map(str::to_string);
    Ok(rows
        .into_iter()
        .map(|row| {
            let holds_lease = holder.as_deref() == Some(row.id.as_str());
            GatewayReplica {
                holds_lease,
                generation: if holds_lease { lease.generation } else { row.generation },
                id: row.id,
                addr: row.addr,
                last_seen_ms: row.age_ms,
            }
        })
        .collect())
}
