//! The gateway API (`/v1/...`). Who may call what:
//!
//! | route | caller |
//! | --- | --- |
//! | `GET /v1/ca` | anyone (the CA certificate and its fingerprint) |
//! | `POST /v1/enroll` | anyone with a join token |
//! | `POST /v1/renew` | a replica, for its own identity |
//! | `PUT /v1/clusters/{name}/heartbeat` | the leader of `name` (registration + heartbeat, fenced by term) |
//! | `PUT /v1/clusters/{name}/row` | the leader of `name` (its matrix row, fenced by term) |
//! | `GET /v1/clusters`, `GET /v1/matrix` | read scope, or any replica |
//! | `POST /v1/clusters/{name}/enable\|disable\|revoke` | admin |
//! | `POST /v1/tokens/join`, `POST /v1/tokens/user` | admin |
//! | `POST /v1/pipelines` | submit scope (the spec is checked whole; every problem listed) |
//! | `GET /v1/pipelines/{id}`, `GET /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/logs` | read scope |
//! | `POST /v1/jobs/{id}/cancel` | submit scope |
//! | `POST /v1/clusters/{name}/lease\|reports\|logs` | the leader of `name` (fenced by term) |
//! | `POST /v1/clusters/{name}/transfers` | a replica of `name`: how an input of a job bound there travels, with its ticket |
//! | `POST /v1/sources` | submit scope: register a source uploaded to the gateway's store |
//! | `GET /v1/sources/{digest}` | read scope, or any replica |
//! | `GET\|PUT /v1/blobs/{digest}`, `GET\|PUT /v1/blobs/{digest}/chunks/{n}`, `POST /v1/blobs/{digest}/complete` | the gateway's store: a replica with a relay ticket for that blob; a source: uploaded with the submit scope, read by any replica |
//! | `GET /v1/openapi.json` | anyone |
//!
//! Replicas of a revoked cluster are refused whatever they ask (`revoked`, 403).

use std::sync::Arc;

use atoll_api::ApiError;
use atoll_api::ErrorCode;
use atoll_api::Identity;
use atoll_api::error::JsonBody;
use atoll_api::gateway::EnrollRequest;
use atoll_api::gateway::Heartbeat;
use atoll_api::gateway::HeartbeatAck;
use atoll_api::gateway::IssuedCertificate;
use atoll_api::gateway::JoinTokenRequest;
use atoll_api::gateway::RenewRequest;
use atoll_api::gateway::RowReport;
use atoll_api::gateway::Scope;
use atoll_api::gateway::TokenCreated;
use atoll_api::gateway::UserTokenRequest;
use atoll_api::ids::ClusterName;
use atoll_api::ids::Label;
use atoll_api::jobs::JobDetail;
use atoll_api::jobs::JobInfo;
use atoll_api::jobs::LeaseRequest;
use atoll_api::jobs::LeaseResponse;
use atoll_api::jobs::LogBatch;
use atoll_api::jobs::LogPage;
use atoll_api::jobs::ReleaseAnswer;
use atoll_api::jobs::ReleaseRequest;
use atoll_api::jobs::ReportBatch;
use atoll_api::jobs::ReportResults;
use atoll_api::jobs::SourceInfo;
use atoll_api::jobs::SourceRequest;
use atoll_api::jobs::Submitted;
use atoll_api::jobs::TransferPlan;
use atoll_api::jobs::TransferRequest;
use atoll_api::spec::Document;
use atoll_api::token::JoinToken;
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
use axum::routing::put;

use crate::Gateway;
use crate::auth::Caller;
use crate::db::matrix::StoredRow;
use crate::db::tokens::JoinRefused;
use crate::now_ms;
use crate::registry::Refused;

type Shared = State<Arc<Gateway>>;

/// Largest number of cells in a reported row.
const MAX_ROW_CELLS: usize = 100_000;
/// Size of the pieces a large matrix is streamed in.
const MATRIX_CHUNK: usize = 256 * 1024;
/// Longest join token lifetime.
const MAX_JOIN_TTL_S: u64 = 30 * 86_400;
/// Longest user token lifetime, when one is given.
const MAX_USER_TTL_S: u64 = 10 * 365 * 86_400;

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/ca", get(ca))
        .route("/v1/enroll", post(enroll))
        .route("/v1/renew", post(renew))
        .route("/v1/clusters", get(clusters))
        .route("/v1/clusters/{name}/heartbeat", put(heartbeat))
        .route("/v1/clusters/{name}/row", put(row))
        .route("/v1/clusters/{name}/enable", post(enable))
        .route("/v1/clusters/{name}/disable", post(disable))
        .route("/v1/clusters/{name}/revoke", post(revoke))
        .route("/v1/matrix", get(matrix))
        .route("/v1/tokens/join", post(join_token))
        .route("/v1/tokens/user", post(user_token))
        .route("/v1/pipelines", post(submit))
        .route("/v1/pipelines/{id}", get(pipeline))
        .route("/v1/jobs", get(jobs))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/logs", get(logs))
        .route("/v1/clusters/{name}/lease", post(lease))
        .route("/v1/clusters/{name}/reports", post(reports))
        .route("/v1/clusters/{name}/logs", post(ship_logs))
        .route("/v1/clusters/{name}/transfers", post(transfer))
        .route("/v1/clusters/{name}/blobs/released", post(released))
        .route("/v1/sources", post(register_source))
        .route("/v1/sources/{digest}", get(source))
        .route("/v1/openapi.json", get(openapi))
        .with_state(gateway.clone())
        .merge(atoll_store::transfer::routes(gateway.relay.clone()))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), crate::auth::identify))
        .layer(axum::extract::DefaultBodyLimit::max(atoll_api::error::BODY_LIMIT))
        .layer(axum::middleware::map_response(atoll_api::error::envelope))
        .layer(axum::middleware::from_fn_with_state(gateway, crate::metrics::observe_http))
}

fn db_error(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "database error");
    ApiError::unavailable(format!("the gateway's database is unavailable: {e}"))
}

async fn ca(State(gateway): Shared) -> impl IntoResponse {
    Json(serde_json::json!({
        "ca": gateway.ca.authority().cert_pem(),
        "fingerprint": gateway.ca.fingerprint(),
    }))
}

/// A replica without a certificate: join token + CSR in, certificate out.
async fn enroll(State(gateway): Shared, body: JsonBody) -> Result<Json<IssuedCertificate>, ApiError> {
    let request: EnrollRequest = body.parse()?;
    let refuse = |message: String| {
        gateway.metrics.enrollments.get_or_create(&crate::metrics::Outcome { outcome: "refused" }).inc();
        tracing::warn!(reason = %message, "enrollment refused");
        ApiError::bad_request(message)
    };
    let token = JoinToken::parse(&request.token).map_err(|e| refuse(e.to_string()))?;
    if token.ca_fingerprint != gateway.ca.fingerprint() {
        return Err(refuse(format!(
            "this join token was made for another CA (fingerprint {}), not this gateway's ({})",
            token.ca_fingerprint,
            gateway.ca.fingerprint()
        )));
    }
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&request.csr)
        .map_err(|e| refuse(format!("the CSR is unreadable or its signature is invalid: {e}")))?;
    let identity = atoll_api::pki::csr_identity(&csr).map_err(|e| refuse(e.to_string()))?;
    let Identity::Node { cluster, node } = &identity else {
        return Err(refuse(format!("a join token enrolls a replica; the CSR asks for {identity}")));
    };
    if node.0 == 0 {
        return Err(refuse("node ids start at 1".to_string()));
    }
    if gateway.registry.is_revoked(cluster.as_str()) {
        gateway.metrics.enrollments.get_or_create(&crate::metrics::Outcome { outcome: "refused" }).inc();
        return Err(ApiError::new(ErrorCode::Revoked, format!("cluster {cluster} is revoked")));
    }
    let hash = atoll_api::token::hash_secret(&token.secret);
    let grant = match gateway
        .db
        .consume_join_token(&hash, cluster.as_str(), now_ms(), &identity.uri())
        .await
        .map_err(db_error)?
    {
        Ok(grant) => grant,
        Err(JoinRefused::OtherCluster(other)) => {
            return Err(refuse(format!(
                "this join token enrolls replicas of cluster {other}; the CSR asks for {identity}"
            )));
        }
        Err(refused) => return Err(refuse(refused.to_string())),
    };
    let (_, cert, not_after) = gateway
        .ca
        .authority()
        .sign_csr(
            &request.csr,
            gateway.config.cert_lifetime,
            |asked| if asked == &identity { Ok(()) } else { Err(identity.uri()) },
            |name| gateway.ca.replica_may_carry(name),
        )
        .map_err(|e| refuse(e.to_string()))?;
    gateway.registry.ensure(cluster.as_str(), &grant.labels).await.map_err(db_error)?;
    gateway.metrics.enrollments.get_or_create(&crate::metrics::Outcome { outcome: "enrolled" }).inc();
    tracing::info!(%identity, "replica enrolled");
    Ok(Json(IssuedCertificate {
        cert,
        ca: gateway.ca.authority().cert_pem().to_string(),
        cluster: cluster.to_string(),
        node_id: node.0,
        labels: grant.labels,
        not_after_ms: not_after.unix_timestamp() * 1000,
    }))
}

/// A replica renews its certificate, for its own identity only.
async fn renew(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    body: JsonBody,
) -> Result<Json<IssuedCertificate>, ApiError> {
    let Caller::Node { cluster, node } = &caller else {
        return Err(ApiError::forbidden(format!("{} has no replica certificate to renew", caller.describe())));
    };
    let request: RenewRequest = body.parse()?;
    let identity = Identity::node(cluster.clone(), *node);
    let (_, cert, not_after) = gateway
        .ca
        .authority()
        .sign_csr(
            &request.csr,
            gateway.config.cert_lifetime,
            |asked| if asked == &identity { Ok(()) } else { Err(identity.uri()) },
            |name| gateway.ca.replica_may_carry(name),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    gateway.metrics.renewals.inc();
    tracing::info!(%identity, "certificate renewed");
    Ok(Json(IssuedCertificate {
        cert,
        ca: gateway.ca.authority().cert_pem().to_string(),
        cluster: cluster.to_string(),
        node_id: *node,
        labels: Vec::new(),
        not_after_ms: not_after.unix_timestamp() * 1000,
    }))
}

fn refused(e: Refused) -> ApiError {
    match e {
        Refused::Revoked(cluster) => ApiError::new(ErrorCode::Revoked, format!("cluster {cluster} is revoked")),
        fenced @ Refused::Fenced { .. } => ApiError::new(ErrorCode::StaleLeader, fenced.to_string()),
        Refused::Db(e) => db_error(e),
    }
}

/// The leader of `name` registers and heartbeats; the answer is the mesh as it should see it.
async fn heartbeat(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: JsonBody,
) -> Result<Json<HeartbeatAck>, ApiError> {
    let node = caller.replica_of(&name)?;
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
    gateway.metrics.heartbeats.inc();
    if let Err(e) = gateway.registry.heartbeat(&name, &heartbeat, now_ms()).await {
        if matches!(e, Refused::Fenced { .. }) {
            gateway.metrics.fenced.inc();
            tracing::warn!(cluster = %name, term = heartbeat.term, error = %e, "stale leader fenced");
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
    }))
}

/// The leader of `name` reports its whole matrix row.
async fn row(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    caller.replica_of(&name)?;
    let report: RowReport = body.parse()?;
    gateway.fence(&name, report.term)?;
    if report.cells.len() > MAX_ROW_CELLS {
        return Err(ApiError::bad_request(format!("a row may hold at most {MAX_ROW_CELLS} cells")));
    }
    for (i, cell) in report.cells.iter().enumerate() {
        if cell.to == name {
            return Err(ApiError::bad_request(format!("cells[{i}]: a cluster does not report on itself")));
        }
        if !(0.0..=1.0).contains(&cell.loss) || cell.rtt_ms.is_some_and(|r| !r.is_finite() || r < 0.0) {
            return Err(ApiError::bad_request(format!(
                "cells[{i}]: loss must be within 0..1 and rtt_ms a positive number"
            )));
        }
    }
    gateway.metrics.rows.inc();
    for cell in report.cells.iter().filter(|cell| cell.state == atoll_api::gateway::LinkState::Reachable) {
        if let Some(rtt_ms) = cell.rtt_ms {
            gateway.metrics.matrix_rtt.observe(rtt_ms / 1000.0);
        }
    }
    gateway.rows.put(StoredRow { reporter: name, term: report.term, cells: report.cells, reported_ms: now_ms() });
    Ok(Json(serde_json::json!({"accepted": true})).into_response())
}

async fn clusters(State(gateway): Shared, Extension(caller): Extension<Caller>) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
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

async fn enable(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_enabled(&gateway, &caller, &name, true).await
}

async fn disable(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_enabled(&gateway, &caller, &name, false).await
}

async fn revoke(
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

async fn matrix(State(gateway): Shared, Extension(caller): Extension<Caller>) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let (clusters, rows, stale_after) =
        (gateway.registry.registered(), gateway.rows.snapshot(), gateway.config.stale_after);
    // A thousand clusters make a million cells (~100 MB of JSON): join and serialize off the
    // request threads, streaming the body as it is written.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::convert::Infallible>>(4);
    tokio::task::spawn_blocking(move || {
        let grid = crate::matrix::Grid::new(&clusters, &rows, now_ms(), stale_after);
        grid.write_json(MATRIX_CHUNK, |piece| tx.blocking_send(Ok(piece.into())).is_ok());
    });
    let pieces = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|piece| (piece, rx)) });
    let body = axum::body::Body::from_stream(pieces);
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn join_token(
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
        .insert_join_token(&atoll_api::token::hash_secret(&secret), cluster.as_str(), &request.labels, now, expires)
        .await
        .map_err(db_error)?;
    gateway.registry.ensure(cluster.as_str(), &request.labels).await.map_err(db_error)?;
    tracing::info!(%cluster, ttl_s, by = %caller.describe(), "join token created");
    let token = JoinToken { secret, ca_fingerprint: gateway.ca.fingerprint().to_string() }.encode();
    Ok(Json(TokenCreated { token, expires_at_ms: Some(expires) }).into_response())
}

async fn user_token(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let request: UserTokenRequest = body.parse()?;
    if request.name.is_empty()
        || request.name.len() > 63
        || !request.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
    {
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

async fn submit(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    body: JsonBody,
) -> Result<Json<Submitted>, ApiError> {
    caller.require(Scope::Submit)?;
    let request: Submission = body.parse()?;
    Ok(Json(gateway.submit(&request.spec, &caller.describe()).await?))
}

/// An [`atoll_api::jobs::SubmitRequest`] as the gateway reads it: the spec read as a
/// [`Document`], which keeps the duplicate keys it found (a plain JSON value keeps the last of
/// them without a word).
#[derive(serde::Deserialize)]
struct Submission {
    spec: Document,
}

async fn pipeline(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Submitted>, ApiError> {
    caller.require(Scope::Read)?;
    Ok(Json(gateway.pipeline_info(&id).await?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
}

async fn jobs(
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

async fn job(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobDetail>, ApiError> {
    caller.require(Scope::Read)?;
    Ok(Json(gateway.job_detail(&id).await?))
}

async fn cancel(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobInfo>, ApiError> {
    caller.require(Scope::Submit)?;
    Ok(Json(gateway.cancel(&id, &caller.describe()).await?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    #[serde(default)]
    after_attempt: u32,
    #[serde(default)]
    after_seq: u32,
    #[serde(default)]
    wait_ms: u64,
}

async fn logs(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Json<LogPage>, ApiError> {
    caller.require(Scope::Read)?;
    let wait = std::time::Duration::from_millis(query.wait_ms);
    Ok(Json(gateway.read_logs(&id, (query.after_attempt, query.after_seq), wait).await?))
}

/// The leader of `name` asks for work (long poll).
async fn lease(
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

/// Register a source uploaded to the gateway's store (`atoll push`).
async fn register_source(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    body: JsonBody,
) -> Result<Json<SourceInfo>, ApiError> {
    caller.require(Scope::Submit)?;
    let request: SourceRequest = body.parse()?;
    Ok(Json(gateway.register_source(&request.digest, &caller.describe()).await?))
}

async fn source(
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

/// A replica of `name` asks how an input of a job bound there travels.
async fn transfer(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: JsonBody,
) -> Result<Json<TransferPlan>, ApiError> {
    caller.replica_of(&name)?;
    let request: TransferRequest = body.parse()?;
    Ok(Json(gateway.transfer(&name, &request).await?))
}

/// A replica of `name` asks which blobs of its store nobody needs any more.
async fn released(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: JsonBody,
) -> Result<Json<ReleaseAnswer>, ApiError> {
    caller.replica_of(&name)?;
    let request: ReleaseRequest = body.parse()?;
    Ok(Json(gateway.release(&request).await?))
}

/// The leader of `name` reports job state changes.
async fn reports(
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
async fn ship_logs(
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
        assert!(problems.is_empty(), "the gateway OpenAPI document is out of date:\n{}", problems.join("\n"));
    }
}
