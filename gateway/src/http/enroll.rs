//! Certificates: the CA's, a replica's first one (join token + CSR), and renewals.

use atoll_api::ApiError;
use atoll_api::ErrorCode;
use atoll_api::Identity;
use atoll_api::error::JsonBody;
use atoll_api::gateway::EnrollRequest;
use atoll_api::gateway::IssuedCertificate;
use atoll_api::gateway::RenewRequest;
use atoll_api::token::JoinToken;
use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;

use super::Shared;
use super::db_error;
use crate::Gateway;
use crate::auth::Caller;
use crate::db::tokens::JoinRefused;
use crate::now_ms;

pub(super) async fn ca(State(gateway): Shared) -> impl IntoResponse {
    Json(serde_json::json!({
        "ca": gateway.ca.authority().cert_pem(),
        "fingerprint": gateway.ca.fingerprint(),
    }))
}

/// A replica without a certificate: join token + CSR in, certificate out.
pub(super) async fn enroll(State(gateway): Shared, body: JsonBody) -> Result<Json<IssuedCertificate>, ApiError> {
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
    let issued = issue(&gateway, &request.csr, &identity, grant.labels).map_err(refuse)?;
    gateway.registry.ensure(cluster.as_str(), &issued.labels).await.map_err(db_error)?;
    gateway.metrics.enrollments.get_or_create(&crate::metrics::Outcome { outcome: "enrolled" }).inc();
    tracing::info!(%identity, "replica enrolled");
    Ok(Json(issued))
}

/// A replica renews its certificate, for its own identity only.
pub(super) async fn renew(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    body: JsonBody,
) -> Result<Json<IssuedCertificate>, ApiError> {
    let Caller::Node { cluster, node } = &caller else {
        return Err(ApiError::forbidden(format!("{} has no replica certificate to renew", caller.describe())));
    };
    let request: RenewRequest = body.parse()?;
    let identity = Identity::node(cluster.clone(), *node);
    let issued = issue(&gateway, &request.csr, &identity, Vec::new()).map_err(ApiError::bad_request)?;
    gateway.metrics.renewals.inc();
    tracing::info!(%identity, "certificate renewed");
    Ok(Json(issued))
}

/// Sign `csr` as the certificate of the replica `identity` and nothing else (only names a
/// replica may carry), for the configured lifetime; why not when it cannot be.
fn issue(gateway: &Gateway, csr: &str, identity: &Identity, labels: Vec<String>) -> Result<IssuedCertificate, String> {
    let Identity::Node { cluster, node } = identity else {
        return Err(format!("{identity} is not a replica"));
    };
    let (_, cert, not_after) = gateway
        .ca
        .authority()
        .sign_csr(
            csr,
            gateway.config.cert_lifetime,
            |asked| if asked == identity { Ok(()) } else { Err(identity.uri()) },
            |name| gateway.ca.replica_may_carry(name),
        )
        .map_err(|e| e.to_string())?;
    Ok(IssuedCertificate {
        cert,
        ca: gateway.ca.authority().cert_pem().to_string(),
        cluster: cluster.clone(),
        node_id: node.0,
        labels,
        not_after_ms: not_after.unix_timestamp() * 1000,
    })
}
