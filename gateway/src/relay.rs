//! Moving outputs between clusters: the route of each edge, its tickets, and the relay store.
//!
//! A child's cluster asks, for each input from another cluster, how to get it
//! (`POST /v1/clusters/{name}/transfers`). The answer follows the matrix ([`Flow::route`]): the
//! child's cluster **pulls** from the parent's when it reaches it; else the parent's cluster
//! **pushes** when it reaches the child's; else the output goes through the **relay**: the
//! parent's cluster uploads it to the gateway's relay store, the child's downloads it, both only
//! dialing out. Each answer carries a ticket the CA key signs for exactly that edge and blob
//! ([`atoll_api::ticket`]); push and relay uploads are handed to the parent's cluster with its
//! next lease. A child's cluster that finds a direct route failing says so in its next ask: the
//! edge moves to the relay for good (kept in memory; a restarted gateway routes by the matrix
//! again, which by then shows the failure).
//!
//! [`Flow::route`]: crate::jobs::Flow::route

use std::time::Duration;

use atoll_api::ApiError;
use atoll_api::ErrorCode;
use atoll_api::Identity;
use atoll_api::jobs::Route;
use atoll_api::jobs::SendTask;
use atoll_api::jobs::TransferPlan;
use atoll_api::jobs::TransferRequest;
use atoll_api::ticket::Ticket;
use atoll_api::ticket::TicketOp;
use atoll_store::Digest;
use atoll_store::transfer::Guard;

use crate::Gateway;
use crate::jobs::job_id;
use crate::now_ms;

/// Lifetime of the tickets the gateway signs.
pub const TICKET_TTL: Duration = Duration::from_secs(600);

/// Who may read and write the relay store: replicas presenting a relay ticket for that blob, of
/// the cluster the ticket names for their side.
#[derive(Debug)]
pub struct RelayGuard {
    ca_der: Vec<Vec<u8>>,
}

impl RelayGuard {
    pub fn new(ca_der: Vec<u8>) -> Self {
        Self { ca_der: vec![ca_der] }
    }
}

impl Guard for RelayGuard {
    fn check(
        &self,
        write: bool,
        digest: &Digest,
        caller: Option<&Identity>,
        ticket: Option<&str>,
    ) -> Result<(), ApiError> {
        let ticket = ticket.ok_or_else(|| ApiError::forbidden(atoll_api::ticket::TicketError::Missing.to_string()))?;
        let op = if write { TicketOp::RelayPut } else { TicketOp::RelayGet };
        Ticket::verify(ticket, &self.ca_der, now_ms())
            .and_then(|t| t.authorizes(op, &digest.to_string(), caller, None))
            .map_err(|e| ApiError::forbidden(format!("relay store: {e}")))
    }
}

impl Gateway {
    fn ticket(&self, op: TicketOp, digest: &str, from: &str, to: &str, job: &str) -> Result<String, ApiError> {
        let ticket = Ticket {
            op,
            digest: digest.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            job: job.to_string(),
            expires_ms: now_ms() + TICKET_TTL.as_millis() as i64,
        };
        self.ca.authority().sign_ticket(&ticket).map_err(|e| ApiError::internal(format!("signing a ticket: {e}")))
    }

    fn endpoint(&self, cluster: &str) -> Result<String, ApiError> {
        self.registry.get(cluster).and_then(|row| row.endpoint).ok_or_else(|| {
            ApiError::unavailable(format!("cluster {cluster} has no registered endpoint yet; ask again"))
        })
    }

    /// Queue a send for the parent's cluster (once per edge until its lease takes it).
    fn queue_send(&self, from: &str, task: SendTask) {
        let mut sends = self.jobs.sends.lock().expect("sends");
        let queue = sends.entry(from.to_string()).or_default();
        let same = |t: &SendTask| t.route == task.route && t.digest == task.digest && t.to == task.to;
        if let Some(queued) = queue.iter_mut().find(|t| same(t)) {
            *queued = task;
        } else {
            queue.push(task);
        }
        drop(sends);
        self.jobs.wake_cluster(from);
    }

    /// `POST /v1/clusters/{cluster}/transfers`: how one input of a job bound to `cluster` gets
    /// there.
    pub async fn transfer(&self, cluster: &str, request: &TransferRequest) -> Result<TransferPlan, ApiError> {
        let db = |e: crate::db::DbError| ApiError::unavailable(format!("the gateway's database is unavailable: {e}"));
        let row = self
            .db
            .job(&request.job)
            .await
            .map_err(db)?
            .ok_or_else(|| ApiError::not_found(format!("no job {}", request.job)))?;
        if row.cluster.as_deref() != Some(cluster) || row.attempt != request.attempt || !row.state.is_active() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "job {} attempt {} is not running on {cluster} (it is {} attempt {} on {})",
                    request.job,
                    request.attempt,
                    row.state,
                    row.attempt,
                    row.cluster.as_deref().unwrap_or("no cluster")
                ),
            ));
        }
        let parent_id = job_id(&row.pipeline_id, &request.from_job);
        let parent = self.db.job(&parent_id).await.map_err(db)?.ok_or_else(|| {
            ApiError::bad_request(format!("job {} has no parent {:?}", request.job, request.from_job))
        })?;
        let (digest, size) = parent
            .output
            .clone()
            .ok_or_else(|| ApiError::not_found(format!("parent {} wrote no output", request.from_job)))?;
        let from = parent
            .cluster
            .clone()
            .ok_or_else(|| ApiError::not_found(format!("parent {} ran on no cluster", request.from_job)))?;
        if let Some(why) = &request.failed {
            let fresh =
                self.jobs.fallen.lock().expect("fallen edges").insert((request.job.clone(), request.from_job.clone()));
            if fresh {
                tracing::warn!(job = %request.job, parent = %request.from_job, from = %from, to = cluster, reason = %why, "a direct transfer failed; the edge falls back to the relay");
            }
        }
        let route = self.flow().edge(&request.job, &request.from_job, &from, cluster);
        let mut plan = TransferPlan {
            route,
            digest: digest.clone(),
            size,
            source: from.clone(),
            endpoint: None,
            ticket: None,
            ready: false,
        };
        match route {
            Route::Local => {}
            Route::Pull => {
                plan.endpoint = Some(self.endpoint(&from)?);
                plan.ticket = Some(self.ticket(TicketOp::Pull, &digest, &from, cluster, &request.job)?);
            }
            Route::Push => {
                let task = SendTask {
                    route,
                    digest: digest.clone(),
                    to: cluster.to_string(),
                    job: request.job.clone(),
                    endpoint: Some(self.endpoint(cluster)?),
                    ticket: self.ticket(TicketOp::Push, &digest, &from, cluster, &request.job)?,
                };
                self.queue_send(&from, task);
            }
            Route::Relay => {
                let parsed: Digest =
                    digest.parse().map_err(|e: atoll_store::InvalidDigest| ApiError::internal(e.to_string()))?;
                plan.ready = self
                    .relay
                    .blobs()
                    .manifest(&parsed)
                    .await
                    .map_err(|e| ApiError::unavailable(format!("the relay store: {e}")))?
                    .is_some();
                if !plan.ready {
                    let task = SendTask {
                        route,
                        digest: digest.clone(),
                        to: cluster.to_string(),
                        job: request.job.clone(),
                        endpoint: None,
                        ticket: self.ticket(TicketOp::RelayPut, &digest, &from, cluster, &request.job)?,
                    };
                    self.queue_send(&from, task);
                }
                plan.ticket = Some(self.ticket(TicketOp::RelayGet, &digest, &from, cluster, &request.job)?);
            }
        }
        Ok(plan)
    }
}
