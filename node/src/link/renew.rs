//! Certificate renewal: at two thirds of its life, a replica asks the gateway for a fresh
//! certificate (new key, same identity), writes it, and swaps it in without a restart. New
//! connections use it at once; open ones keep the old one until they close.

use std::path::Path;
use std::time::Duration;

use atoll_api::Identity;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::pki::HostName;
use atoll_api::pki::KeyAlgorithm;
use atoll_api::tls::TlsFiles;
use atoll_api::tls::TlsIdentity;

/// When to renew a certificate valid from `not_before` to `not_after`: at two thirds.
pub fn renew_at(not_before: time::OffsetDateTime, not_after: time::OffsetDateTime) -> time::OffsetDateTime {
    not_before + (not_after - not_before) * 2 / 3
}

fn until(at: time::OffsetDateTime) -> Duration {
    let left = at - time::OffsetDateTime::now_utc();
    left.try_into().unwrap_or(Duration::ZERO)
}

/// Renew this replica's certificate, asking for `names` besides its identity, for as long as
/// the task runs.
pub async fn renew_forever(
    tls: TlsIdentity,
    files: TlsFiles,
    identity: Identity,
    names: Vec<HostName>,
    gateway: GatewayClient,
) {
    loop {
        let current = match std::fs::read_to_string(&files.cert)
            .map_err(|e| e.to_string())
            .and_then(|pem| atoll_api::pki::validity(&pem))
        {
            Ok(validity) => validity,
            Err(e) => {
                tracing::error!(cert = %files.cert.display(), error = %e, "cannot read the certificate's validity; renewal stopped");
                return;
            }
        };
        let at = renew_at(current.0, current.1);
        tracing::info!(not_after = %current.1, renew_at = %at, "certificate renewal scheduled");
        tokio::time::sleep(until(at)).await;
        let mut delay = Duration::from_secs(5);
        loop {
            match renew_once(&tls, &files, &identity, &names, &gateway).await {
                Ok(not_after) => {
                    tracing::info!(%not_after, "certificate renewed and swapped in");
                    break;
                }
                Err(e) => {
                    let left = until(current.1);
                    tracing::warn!(error = %e, expires_in = ?left, "certificate renewal failed; retrying");
                    tokio::time::sleep(delay.min(left.max(Duration::from_secs(1)))).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}

async fn renew_once(
    tls: &TlsIdentity,
    files: &TlsFiles,
    identity: &Identity,
    names: &[HostName],
    gateway: &GatewayClient,
) -> anyhow::Result<time::OffsetDateTime> {
    let (csr, key) = atoll_api::pki::new_csr(identity, names, KeyAlgorithm::EcdsaP256)?;
    let issued = gateway.renew(&csr).await?;
    let (got, certified) = tls.trust().certified_key(
        &files.ca,
        Path::new("the renewed certificate"),
        issued.cert.as_bytes(),
        Path::new("the new key"),
        key.as_bytes(),
    )?;
    anyhow::ensure!(&got == identity, "the gateway issued a certificate for {got}, not {identity}");
    super::files::write_pair(files, &key, &issued.cert, None)?;
    tls.slot().replace(std::sync::Arc::new(certified));
    Ok(atoll_api::pki::validity(&issued.cert).map_err(anyhow::Error::msg)?.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_happens_at_two_thirds() {
        let start = time::OffsetDateTime::UNIX_EPOCH;
        assert_eq!(renew_at(start, start + time::Duration::hours(24)), start + time::Duration::hours(16));
        assert_eq!(renew_at(start, start + time::Duration::seconds(90)), start + time::Duration::seconds(60));
    }
}
