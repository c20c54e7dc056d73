//! Enrollment: a replica with a join token and no certificate gets one from the gateway.
//!
//! 1. Fetch the gateway's CA certificate over a connection that verifies nothing, and check its
//!    SHA-256 against the fingerprint pinned in the join token (no secret is sent yet).
//! 2. Over a connection verified against that CA (the server must be a gateway), send the token
//!    and a CSR for `spiffe://atoll/cluster/<name>/node/<id>`; the key never leaves the replica.
//! 3. Write key, certificate and CA as configured (`tls.key`, `tls.cert`, `tls.ca`).
//!
//! Both steps go to the gateway replica in use and move to the next as every call to the
//! gateway does (the enrollment itself only when it surely was not sent: the token is used
//! once). A gateway that cannot be reached or is unavailable is retried with backoff, from the
//! next replica (the replica cannot do anything without a certificate, and its gateway may
//! simply start later); a refusal (bad, used or expired token, wrong identity, revoked
//! cluster, another CA) ends the attempt with the gateway's reason.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use atoll_api::ErrorCode;
use atoll_api::Identity;
use atoll_api::client::ClientError;
use atoll_api::gateway::EnrollRequest;
use atoll_api::gateway_addrs::GatewayAddrs;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::pki::KeyAlgorithm;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TrustRoots;
use atoll_api::token::JoinToken;

use crate::config::AgentConfig;
use crate::config::GatewayLink;

/// Longest pause between two attempts while the gateway is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Whether a failed call is worth trying again (the gateway is away or busy).
fn transient(error: &ClientError) -> bool {
    matches!(error, ClientError::Transport { .. })
        || matches!(error.code(), Some(ErrorCode::Unavailable | ErrorCode::Timeout))
}

/// Call `attempt` until it succeeds or fails for a reason other than the gateway being away.
async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match attempt().await {
            Err(e) if transient(&e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "{what} failed; the gateway may not be up yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
            other => return other,
        }
    }
}

/// Enroll through the gateway replicas of `gateways` (shared with the clients built later).
pub async fn enroll(config: &AgentConfig, link: &GatewayLink, gateways: &GatewayAddrs) -> anyhow::Result<()> {
    let token_text = link.join_token.read().map_err(anyhow::Error::msg)?.with_context(|| {
        format!(
            "{} does not exist and no join token is configured (gateway.join_token or gateway.join_token_file): this replica cannot enroll",
            config.tls.cert.display()
        )
    })?;
    let token = JoinToken::parse(&token_text)?;
    let named = gateways.candidates().join(", ");
    tracing::info!(gateways = %named, "enrolling with the gateway");

    let fetch = GatewayClient::with_addrs(
        atoll_api::tls::ca_bootstrap_client_config()?,
        gateways.clone(),
        None,
        Duration::from_secs(10),
    )?;
    let ca = retrying("fetching the gateway's CA certificate", || fetch.ca())
        .await
        .with_context(|| format!("fetching the CA certificate from the gateway ({named})"))?;
    let der = atoll_api::tls::first_cert_der(ca.ca.as_bytes()).context("the gateway sent no CA certificate")?;
    let fingerprint = atoll_api::token::fingerprint(&der);
    if fingerprint != token.ca_fingerprint {
        anyhow::bail!(
            "the gateway at {} presents a CA with fingerprint {fingerprint}, but the join token pins {}: refusing to enroll (wrong gateway, or a token of another mesh)",
            fetch.addr(),
            token.ca_fingerprint
        );
    }

    let trust = TrustRoots::from_pem(Path::new("the gateway's CA"), ca.ca.as_bytes())?;
    let client = GatewayClient::with_addrs(
        trust.anonymous_client_config(ServerPolicy::Gateway)?,
        gateways.clone(),
        None,
        Duration::from_secs(30),
    )?;
    let identity = Identity::node(config.cluster.clone(), config.node_id);
    let (csr, key) = atoll_api::pki::new_csr(&identity, &config.tls_names, KeyAlgorithm::EcdsaP256)?;
    let request = EnrollRequest { token: token_text, csr };
    let issued = retrying("enrolling", || client.enroll(&request))
        .await
        .with_context(|| format!("enrolling {identity} with the gateway ({named})"))?;
    super::files::write_pair(&config.tls, &key, &issued.cert, Some(&issued.ca))
        .context("writing the issued certificate")?;
    tracing::info!(%identity, cert = %config.tls.cert.display(), "enrolled");
    Ok(())
}
