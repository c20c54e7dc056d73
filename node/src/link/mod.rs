//! The replica's link to the gateway (when it belongs to a mesh).
//!
//! - [`enroll`]: getting a first certificate with a join token.
//! - [`renew`]: renewing it at two thirds of its life, without a restart.
//! - [`duties`]: what the leader does: heartbeat (registration), probing, matrix rows.
//! - [`files`]: writing a certificate and key as a pair, crash-safely.
//!
//! [`run`] supervises: renewal on every replica; the duties on the leader only, for as long as
//! it leads in the same term, never again for a term the gateway fenced.

pub mod duties;
pub mod enroll;
pub mod files;
pub mod renew;

use std::sync::Arc;
use std::time::Duration;

use atoll_api::gateway_client::GatewayClient;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsFiles;
use atoll_api::tls::TlsIdentity;

use crate::config::GatewayLink;
use crate::raft::Replica;
use duties::DutyEnd;
use duties::Prober;

/// A client of the gateway presenting this replica's (current, renewable) certificate.
pub fn gateway_client(tls: &TlsIdentity, addr: &str) -> anyhow::Result<GatewayClient> {
    Ok(GatewayClient::new(tls.client_config(ServerPolicy::Gateway)?, addr, None, Duration::from_secs(5))?)
}

/// Run renewal and, while leading, the duties; returns only if the cluster is revoked.
pub async fn run(replica: Arc<Replica>, tls: TlsIdentity, files: TlsFiles, link: GatewayLink) {
    let gateway = match gateway_client(&tls, &link.addr) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the gateway client; this replica stays out of the mesh");
            return;
        }
    };
    let renewal = tokio::spawn(renew::renew_forever(tls.clone(), files, duties::identity(&replica), gateway.clone()));
    let prober = Arc::new(Prober::new(tls));
    let mut leadership = replica.leadership();
    let mut running: Option<(u64, tokio::task::JoinHandle<DutyEnd>)> = None;
    let mut fenced_at: Option<u64> = None;
    loop {
        let leading = leadership.current();
        if let Some((term, handle)) = &running
            && leading != Some(*term)
        {
            handle.abort();
            tracing::info!(term, "no longer leading; gateway duties stopped");
            running = None;
        }
        if running.is_none()
            && let Some(term) = leading
            && fenced_at.is_none_or(|fenced| term > fenced)
        {
            let task = tokio::spawn(duties::lead(replica.clone(), gateway.clone(), prober.clone(), term));
            running = Some((term, task));
        }
        tokio::select! {
            () = leadership.changed() => {}
            end = async { (&mut running.as_mut().expect("checked").1).await }, if running.is_some() => {
                running = None;
                match end {
                    Ok(DutyEnd::Fenced { term, message }) => {
                        tracing::warn!(term, reason = %message, "the gateway knows a newer leader; stepping back from gateway duties for this term");
                        fenced_at = Some(term);
                    }
                    Ok(DutyEnd::Revoked(message)) => {
                        tracing::error!(reason = %message, "this cluster was revoked; gateway duties and renewal stopped");
                        renewal.abort();
                        return;
                    }
                    Err(e) if e.is_cancelled() => {}
                    Err(e) => tracing::error!(error = %e, "gateway duties failed; restarting them"),
                }
            }
        }
    }
}
