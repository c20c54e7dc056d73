//! Tokens an admin makes: join tokens (enroll replicas of a cluster, each once) and user tokens.

use atoll_api::ApiError;
use atoll_api::ErrorCode;
use atoll_api::error::JsonBody;
use atoll_api::gateway::JoinTokenRequest;
use atoll_api::gateway::Scope;
use atoll_api::gateway::TokenCreated;
use atoll_api::gateway::UserTokenRequest;
use atoll_api::ids::ClusterName;
use atoll_api::ids::Label;
use atoll_api::token::JoinToken;
use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::Response;

use super::Shared;
use super::db_error;
use crate::auth::Caller;
use crate::now_ms;

/// Longest join token lifetime.
const MAX_JOIN_TTL_S: u64 = 30 * 86_400;
/// Most replicas one join token enrolls.
const MAX_JOIN_REPLICAS: u32 = 64;
/// Longest user token lifetime, when one is given.
const MAX_USER_TTL_S: u64 = 10 * 365 * 86_400;

pub(super) async fn join_token(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let request: JoinTokenRequest = body.parse()?;
    let cluster: ClusterName = request
        .cluster
        .parse()
        .map_err(|e: atoll_api::ids::InvalidName| ApiError::bad_request(format!("cluster: {e}")))?;
    for (i, label) in request.labels.iter().enumerate() {
        label.parse::<Label>().map_err(|e| ApiError::bad_request(format!("labels[{i}]: {e}")))?;
    }
    let ttl_s = request.ttl_s.unwrap_or(gateway.config.join_ttl.as_secs());
    if ttl_s == 0 || ttl_s > MAX_JOIN_TTL_S {
        return Err(ApiError::bad_request(format!("ttl_s must be within 1..={MAX_JOIN_TTL_S}")));
    }
    let replicas = request.replicas.unwrap_or(1);
    if replicas == 0 || replicas > MAX_JOIN_REPLICAS {
        return Err(ApiError::bad_request(format!("replicas must be within 1..={MAX_JOIN_REPLICAS}")));
    }
    if gateway.registry.is_revoked(cluster.as_str()) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("cluster {cluster} is revoked; enroll it under a new name"),
        ));
    }
    let secret = atoll_api::token::new_secret();
    let now = now_ms();
    let expires = now + (ttl_s as i64) * 1000;
    gateway
        .db
        .insert_join_token(
            &atoll_api::token::hash_secret(&secret),
            cluster.as_str(),
            &request.labels,
            now,
            expires,
            replicas,
        )
        .await
        .map_err(db_error)?;
    gateway.registry.ensure(cluster.as_str(), &request.labels).await.map_err(db_error)?;
    tracing::info!(%cluster, ttl_s, replicas, by = %caller.describe(), "join token created");
    let token = JoinToken { secret, ca_fingerprint: gateway.ca.fingerprint().to_string() }.encode();
    Ok(Json(TokenCreated { token, expires_at_ms: Some(expires) }).into_response())
}

pub(super) async fn user_token(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let request: UserTokenRequest = body.parse()?;
    if !atoll_api::token::valid_user_name(&request.name) {
        return Err(ApiError::bad_request("name must be 1 to 63 of letters, digits, '.', '_', '-', '@'"));
    }
    if request.scopes.is_empty() {
        return Err(ApiError::bad_request("give at least one scope (read, submit, admin)"));
    }
    if let Some(ttl_s) = request.ttl_s
        && (ttl_s == 0 || ttl_s > MAX_USER_TTL_S)
    {
        return Err(ApiError::bad_request(format!(
            "ttl_s must be within 1..={MAX_USER_TTL_S}, or absent for a token that does not expire"
        )));
    }
    let (token, secret) = atoll_api::token::new_user_token();
    let now = now_ms();
    let expires = request.ttl_s.map(|ttl| now + (ttl as i64) * 1000);
    gateway
        .db
        .insert_user_token(&atoll_api::token::hash_secret(&secret), &request.name, &request.scopes, now, expires)
        .await
        .map_err(db_error)?;
    tracing::info!(user = %request.name, scopes = ?request.scopes, by = %caller.describe(), "user token created");
    Ok(Json(TokenCreated { token, expires_at_ms: expires }).into_response())
}
