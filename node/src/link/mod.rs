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

use atoll_api::gateway_addrs::GatewayAddrs;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::ids::Term;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsFiles;
use atoll_api::tls::TlsIdentity;

use crate::raft::Replica;
use duties::DutyEnd;
use duties::Prober;

/// A client of the gateway replicas of `addrs` (moving and learning with every other client
/// built over them), presenting this replica's (current, renewable) certificate, each request
/// given `timeout`.
pub fn gateway_client(tls: &TlsIdentity, addrs: &GatewayAddrs, timeout: Duration) -> anyhow::Result<GatewayClient> {
    Ok(GatewayClient::with_addrs(tls.client_config(ServerPolicy::Gateway)?, addrs.clone(), None, timeout)?)
}

/// Each request to the gateway but the lease's long poll.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The leader's duties for one term: toward the gateway, and the jobs; the first to end (fenced,
/// revoked) ends both.
async fn lead_term(
    replica: Arc<Replica>,
    gateway: GatewayClient,
    leases: GatewayClient,
    prober: Arc<Prober>,
    jobs: Jobs,
    term: Term,
) -> DutyEnd {
    // Two tasks, so a burst of job work never delays the heartbeat that keeps the cluster alive
    // at the gateway; dropping this future aborts both.
    let advertised = jobs.executor.advertised();
    let mut duties =
        AbortOnDrop(tokio::spawn(duties::lead(replica.clone(), gateway.clone(), prober, advertised, term)));
    let mut jobs = AbortOnDrop(tokio::spawn(crate::jobs::lead(
        replica,
        gateway,
        leases,
        jobs.executor,
        jobs.transfers,
        jobs.max_running,
        term,
    )));
    let ended = tokio::select! {
        end = &mut duties.0 => end,
        end = &mut jobs.0 => end,
    };
    ended.unwrap_or_else(|e| DutyEnd::Fenced { term, message: format!("the duties of term {term} failed: {e}") })
}

/// How this cluster runs its jobs.
#[derive(Clone, Debug)]
pub struct Jobs {
    pub executor: crate::jobs::executor::Executor,
    pub max_running: usize,
    /// Sends this cluster's outputs when a lease asks.
    pub transfers: Arc<crate::transfers::Transfers>,
    /// Peers whose transfers failed: fed into the matrix row as failed probes.
    pub failed: Arc<crate::transfers::FailedPeers>,
}

/// Run renewal (certificates naming `names` besides the identity) and, while leading, the
/// duties, toward the gateway replicas of `addrs`; returns only if the cluster is revoked.
pub async fn run(
    replica: Arc<Replica>,
    tls: TlsIdentity,
    files: TlsFiles,
    names: Vec<atoll_api::pki::HostName>,
    addrs: GatewayAddrs,
    jobs: Jobs,
) {
    // One address list for both: a replica that fails under the lease's long poll is left by
    // the heartbeats too, and the replicas a heartbeat answer lists are the lease's as well.
    // The long poll's own timeout only bounds a replica that stops answering without closing
    // its connections (the client's HTTP/2 pings notice that sooner); a replica that dies
    // resets them, and the poll moves on at once.
    let clients = gateway_client(&tls, &addrs, REQUEST_TIMEOUT).and_then(|gateway| {
        let leases = gateway_client(&tls, &addrs, crate::jobs::LEASE_WAIT + Duration::from_secs(10))?;
        Ok((gateway, leases))
    });
    let (gateway, leases) = match clients {
        Ok(clients) => clients,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the gateway client; this replica stays out of the mesh");
            return;
        }
    };
    let renewal =
        tokio::spawn(renew::renew_forever(tls.clone(), files, duties::identity(&replica), names, gateway.clone()));
    let prober = Arc::new(Prober::new(tls, jobs.failed.clone()));
    let mut leadership = replica.leadership();
    let mut running: Option<(Term, AbortOnDrop)> = None;
    let mut fenced_at: Option<Term> = None;
    loop {
        let leading = leadership.current();
        if let Some((term, handle)) = &running
            && leading != Some(*term)
        {
            handle.0.abort();
            tracing::info!(term = term.0, "no longer leading; gateway and job duties stopped");
            running = None;
        }
        if running.is_none()
            && let Some(term) = leading
            && fenced_at.is_none_or(|fenced| term > fenced)
        {
            let task = tokio::spawn(lead_term(
                replica.clone(),
                gateway.clone(),
                leases.clone(),
                prober.clone(),
                jobs.clone(),
                term,
            ));
            running = Some((term, AbortOnDrop(task)));
        }
        tokio::select! {
            () = leadership.changed() => {}
            end = async { (&mut running.as_mut().expect("checked").1.0).await }, if running.is_some() => {
                running = None;
                match end {
                    Ok(DutyEnd::Fenced { term, message }) => {
                        tracing::warn!(term = term.0, reason = %message, "the gateway knows a newer leader; stepping back from gateway duties for this term");
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

/// A task aborted when its handle is dropped: the term's duties (and the runs they own) never
/// outlive the supervisor.
struct AbortOnDrop(tokio::task::JoinHandle<DutyEnd>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
