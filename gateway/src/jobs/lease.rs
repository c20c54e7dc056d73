//! A cluster leader's long poll: the difference between what the gateway has bound to the
//! cluster and what the leader holds.

use std::collections::HashMap;
use std::collections::HashSet;
use std::time::Duration;

use atoll_api::ApiError;
use atoll_api::ids::JobId;
use atoll_api::ids::Term;
use atoll_api::jobs::AssignedInput;
use atoll_api::jobs::Assignment;
use atoll_api::jobs::Held;
use atoll_api::jobs::JobState;
use atoll_api::jobs::LeaseResponse;
use atoll_api::jobs::Revoked;

use super::db_error;
use super::effective_source;
use super::job_id;
use crate::Gateway;
use crate::db::jobs::JobRow;
use crate::route::Flow;

/// The longest a lease or a log read may be held open.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

impl Gateway {
    /// A cluster leader's long poll: what to start, cancel or drop, given what it holds.
    pub async fn lease(
        &self,
        cluster: &str,
        term: Term,
        held: &[Held],
        wait: Duration,
    ) -> Result<LeaseResponse, ApiError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let waiter = self.jobs.lease_waiter(cluster);
        loop {
            self.fence(cluster, term)?;
            let notified = waiter.notified();
            let closing = self.jobs.closing.notified();
            tokio::pin!(notified, closing);
            notified.as_mut().enable();
            closing.as_mut().enable();
            let answer = self.lease_answer(cluster, held).await?;
            if !answer.is_empty() || tokio::time::Instant::now() >= deadline || self.is_stopping() {
                return Ok(answer);
            }
            tokio::select! {
                () = notified => {}
                () = closing => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = tokio::time::sleep(self.recheck_every()) => {}
            }
        }
    }

    async fn lease_answer(&self, cluster: &str, held: &[Held]) -> Result<LeaseResponse, ApiError> {
        let active = self.db.bound_attempts(cluster).await.map_err(db_error)?;
        let holds: HashSet<(&str, u32)> = held.iter().map(|h| (h.job.as_str(), h.attempt)).collect();
        // Whole rows only of the attempts to hand out; one still as read is handed out (a row
        // that changed in between is left for the next answer).
        let new: Vec<&str> =
            active.iter().filter(|b| !holds.contains(&(b.id.as_str(), b.attempt))).map(|b| b.id.as_str()).collect();
        let rows: HashMap<JobId, JobRow> =
            self.db.jobs_by_id(&new).await.map_err(db_error)?.into_iter().map(|r| (r.id.clone(), r)).collect();
        let mut answer = LeaseResponse::default();
        let mut bound: HashSet<(&str, u32)> = HashSet::new();
        // A pipeline's rows, read once per answer, for the inputs of the jobs that have parents.
        let mut siblings: HashMap<String, Vec<JobRow>> = HashMap::new();
        let mut flow: Option<Flow> = None;
        for b in &active {
            bound.insert((b.id.as_str(), b.attempt));
            let unchanged = |r: &&JobRow| {
                r.attempt == b.attempt
                    && r.cluster.as_deref() == Some(cluster)
                    && matches!(r.state, JobState::Assigned | JobState::Running)
            };
            if !holds.contains(&(b.id.as_str(), b.attempt))
                && let Some(row) = rows.get(&b.id).filter(unchanged)
            {
                let pipeline = self.pipeline(&row.pipeline_id).await?;
                let spec = &pipeline.spec.jobs[row.idx];
                let inputs = if spec.depends_on.is_empty() {
                    Vec::new()
                } else {
                    if !siblings.contains_key(&row.pipeline_id) {
                        let rows = self.db.pipeline_jobs(&row.pipeline_id).await.map_err(db_error)?;
                        siblings.insert(row.pipeline_id.clone(), rows);
                    }
                    if flow.is_none() {
                        flow = Some(self.current_flow().await.map_err(db_error)?);
                    }
                    let flow = flow.as_ref().expect("set above");
                    assigned_inputs(spec, cluster, &siblings[&row.pipeline_id], flow)
                };
                let mut spec = spec.clone();
                spec.source = effective_source(&spec, &pipeline.spec).map(str::to_string);
                answer.assign.push(Assignment {
                    job: row.id.clone(),
                    pipeline: row.pipeline_id.clone(),
                    attempt: row.attempt,
                    spec,
                    inputs,
                });
            }
            if b.cancel_requested {
                answer.cancel.push(Held { job: b.id.clone(), attempt: b.attempt });
            }
        }
        for h in held {
            if bound.contains(&(h.job.as_str(), h.attempt)) {
                continue;
            }
            let reason = match self.db.job(&h.job).await.map_err(db_error)? {
                None => "no such job".to_string(),
                Some(row) if row.attempt != h.attempt || row.cluster.as_deref() != Some(cluster) => {
                    match &row.cluster {
                        Some(other) => format!("the job moved to attempt {} on {other}", row.attempt),
                        None => format!("the job moved to attempt {}, not placed yet", row.attempt),
                    }
                }
                Some(row) => format!("the job is {}", row.state),
            };
            answer.drop.push(Revoked { job: h.job.clone(), attempt: h.attempt, reason });
        }
        if let Some(sends) = self.transfers.take_sends(cluster) {
            answer.send = sends;
        }
        Ok(answer)
    }
}

/// The stored outputs of a job's parents, as an assignment to `cluster` carries them (pure):
/// parents that wrote nothing are left out.
fn assigned_inputs(
    spec: &atoll_api::spec::JobSpec,
    cluster: &str,
    siblings: &[JobRow],
    flow: &Flow,
) -> Vec<AssignedInput> {
    spec.depends_on
        .iter()
        .filter_map(|dep| {
            let parent = siblings.iter().find(|s| s.name == dep.job)?;
            let (digest, size) = parent.output.clone()?;
            let from = parent.cluster.clone()?;
            Some(AssignedInput {
                from_job: dep.job.clone(),
                job: parent.id.clone(),
                mode: flow.edge(&job_id(&parent.pipeline_id, &spec.name), &dep.job, &from, cluster).mode(),
                cluster: from,
                digest,
                size,
            })
        })
        .collect()
}
