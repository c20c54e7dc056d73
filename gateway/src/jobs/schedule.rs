//! The scheduling pass: work moved off lost clusters, pipelines settled, queued jobs placed.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use atoll_api::gateway::ClusterState;
use atoll_api::ids::JobId;
use atoll_api::ids::Label;
use atoll_api::jobs::JobState;

use super::Pipeline;
use crate::Gateway;
use crate::db::DbError;
use crate::db::jobs::JobRow;
use crate::db::lease::Duty;
use crate::lifecycle;
use crate::now_ms;
use crate::placement;

/// The scheduling pass runs at least this often (dead clusters are noticed by time alone).
pub const PASS_EVERY: Duration = Duration::from_millis(500);

impl Gateway {
    /// One scheduling pass: move work off dead clusters, settle, place.
    /// Nothing happens on a replica that does not hold the duties lease.
    pub async fn schedule(&self) -> Result<(), DbError> {
        let _one = self.jobs.pass.lock().await;
        let Some(duty) = self.lease.duty() else { return Ok(()) };
        let number = self.jobs.passes_started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let result = self.schedule_pass(duty).await;
        self.jobs.passes_done.send_replace(number);
        self.bus.publish(crate::bus::Event::Pass);
        match result {
            Err(DbError::Deposed { generation }) => {
                tracing::warn!(
                    generation,
                    "the duties lease moved on during a scheduling pass; the pass wrote nothing more"
                );
                Ok(())
            }
            other => other,
        }
    }

    /// Wait (at most `wait`) for a scheduling pass that starts after this call.
    /// On a replica that does not schedule: wait for the second pass the holder announces after
    /// this call (the first may have started before it).
    pub(super) async fn next_pass(&self, wait: Duration) {
        if self.bus.is_on() && self.lease.duty().is_none() {
            let mut heard = self.jobs.passes_heard.subscribe();
            let after = *heard.borrow_and_update() + 2;
            self.kick_scheduler();
            let _ = tokio::time::timeout(wait, heard.wait_for(|n| *n >= after)).await;
            return;
        }
        let mut done = self.jobs.passes_done.subscribe();
        // A pass numbered after every pass started so far reads the database after this call;
        // one running now may predate the caller.
        let after = self.jobs.passes_started.load(std::sync::atomic::Ordering::SeqCst) + 1;
        self.jobs.kick.notify_one();
        let _ = tokio::time::timeout(wait, done.wait_for(|n| *n >= after)).await;
    }

    async fn schedule_pass(&self, duty: Duty) -> Result<(), DbError> {
        // Silence is judged on heartbeat times every replica wrote: a holder that could not read
        // them lately (it was cut from the database, or paused) reads them first, and judges
        // nobody on an old copy.
        self.registry.refresh_within(crate::registry::REFRESH_EVERY).await?;
        if self.lease.replicated() {
            self.registry.refresh_if_unregistered().await?;
        }
        let now = now_ms();
        let clusters = self.registry.list(now);
        let load: HashMap<String, u64> = self.db.cluster_load().await?.into_iter().collect();

        // 1. Work bound to a dead or revoked cluster goes back to the queue (new attempts).
        for c in &clusters {
            let held = load.get(c.name.as_str()).copied().unwrap_or(0);
            if held > 0 && (c.state == ClusterState::Dead || c.revoked) {
                let touched = self.db.reroute(duty, &c.name, now).await?;
                self.metrics.jobs_rerouted.inc_by(held);
                tracing::warn!(cluster = %c.name, jobs = held, state = ?c.state, revoked = c.revoked, "moving work off a lost cluster");
                for pipeline in touched {
                    self.jobs.dirty.lock().expect("dirty pipelines").insert(pipeline);
                }
            }
        }
        let load: HashMap<String, u64> = self.db.cluster_load().await?.into_iter().collect();

        // 2. Settle pipelines whose jobs ended. A pipeline leaves the dirty set only once it is
        // settled: when the database fails half-way (it restarted, say), it and every one not
        // reached yet stay for the next pass, or their waiting jobs would wait for ever.
        let dirty: Vec<String> =
            std::mem::take(&mut *self.jobs.dirty.lock().expect("dirty pipelines")).into_iter().collect();
        for (at, id) in dirty.iter().enumerate() {
            if let Err(e) = self.settle_pipeline(duty, id, now).await {
                self.jobs.dirty.lock().expect("dirty pipelines").extend(dirty[at..].iter().cloned());
                return Err(e);
            }
        }

        // 3. Place queued jobs.
        let queued = self.db.jobs_in_state(JobState::Queued).await?;
        if queued.is_empty() {
            return Ok(());
        }
        let mut pipelines: HashMap<String, (Arc<Pipeline>, Vec<JobRow>)> = HashMap::new();
        for row in &queued {
            if !pipelines.contains_key(&row.pipeline_id) {
                let Ok(pipeline) = self.pipeline(&row.pipeline_id).await else { continue };
                let rows = self.db.pipeline_jobs(&row.pipeline_id).await?;
                pipelines.insert(row.pipeline_id.clone(), (pipeline, rows));
            }
        }
        let queued: Vec<&JobRow> = queued.iter().filter(|r| pipelines.contains_key(&r.pipeline_id)).collect();
        let labels: Vec<Vec<Label>> =
            clusters.iter().map(|c| c.labels.iter().filter_map(|l| l.parse().ok()).collect()).collect();
        let assumed = atoll_api::spec::Capabilities::assumed();
        let candidates: Vec<placement::Candidate<'_>> = clusters
            .iter()
            .zip(&labels)
            .map(|(c, labels)| placement::Candidate {
                name: &c.name,
                labels,
                enabled: c.enabled && !c.revoked,
                state: c.state,
                load: load.get(c.name.as_str()).copied().unwrap_or(0),
                capabilities: c.capabilities.as_ref().unwrap_or(&assumed),
            })
            .collect();
        let requests: Vec<placement::Request<'_>> = queued
            .iter()
            .map(|row| {
                let (pipeline, rows) = &pipelines[&row.pipeline_id];
                let job = &pipeline.spec.jobs[row.idx];
                placement::Request {
                    cluster: &job.cluster,
                    needs: job.needs(),
                    parent_clusters: job
                        .depends_on
                        .iter()
                        .filter_map(|d| rows.get(pipeline.index[&d.job]).and_then(|r| r.cluster.as_deref()))
                        .collect(),
                    children: pipeline.children[row.idx]
                        .iter()
                        .map(|&c| (&pipeline.spec.jobs[c].cluster, pipeline.spec.jobs[c].needs()))
                        .collect(),
                }
            })
            .collect();
        let flow = self.flow();
        let placed = placement::place(&requests, &candidates, &|from, to| flow.direct(from, to));
        let mut bindings = Vec::new();
        for (row, placement) in queued.iter().zip(placed) {
            match placement {
                placement::Placement::Assigned { cluster, reason } => {
                    let why = match reason {
                        placement::Reason::Preferred => format!("placed on {cluster}: preferred"),
                        placement::Reason::Spread { eligible, relayed_edges } => format!(
                            "placed on {cluster}: least loaded of {eligible} eligible{}",
                            if relayed_edges > 0 {
                                format!(", {relayed_edges} edge(s) need the relay")
                            } else {
                                String::new()
                            }
                        ),
                        placement::Reason::OnlySuspect => {
                            format!("placed on {cluster}: the only eligible cluster, suspect")
                        }
                    };
                    bindings.push((row.id.clone(), row.attempt, cluster, why));
                }
                placement::Placement::Waiting(why) => {
                    if row.reason.as_deref() != Some(why.as_str()) {
                        self.db.set_queued_reason(duty, &row.id, row.attempt, &why).await?;
                    }
                }
            }
        }
        let bound = self.db.assign_many(duty, &bindings, now_ms()).await?;
        let mut woken = BTreeSet::new();
        for ((_, _, cluster, _), ok) in bindings.iter().zip(bound) {
            if ok {
                self.metrics.jobs_assigned.inc();
                woken.insert(cluster.clone());
            }
        }
        for cluster in woken {
            self.wake_cluster(&cluster);
        }
        Ok(())
    }

    /// Settle one pipeline: its waiting jobs whose parents ended are queued, skipped or ended.
    async fn settle_pipeline(&self, duty: Duty, id: &str, now: i64) -> Result<(), DbError> {
        let pipeline = match self.pipeline(id).await {
            Ok(pipeline) => pipeline,
            Err(e) if e.code == atoll_api::ErrorCode::NotFound => return Ok(()),
            Err(e) => {
                // The spec could not be read now: try again at the next pass.
                tracing::warn!(pipeline = %id, error = %e.message, "reading a pipeline to settle it failed");
                self.jobs.dirty.lock().expect("dirty pipelines").insert(id.to_string());
                return Ok(());
            }
        };
        let rows = self.db.pipeline_jobs(id).await?;
        let mut states: Vec<JobState> = rows.iter().map(|r| r.state).collect();
        if states.len() != pipeline.spec.jobs.len() {
            tracing::error!(pipeline = %id, "stored jobs do not match the stored spec; not settling it");
            return Ok(());
        }
        let settled = lifecycle::settle(&pipeline.spec, &pipeline.order, &mut states);
        let ended: Vec<(JobState, i64)> =
            settled.iter().filter(|c| c.state.is_final()).map(|c| (c.state, rows[c.job].created_ms)).collect();
        let changes: Vec<(JobId, JobState, String)> =
            settled.into_iter().map(|c| (rows[c.job].id.clone(), c.state, c.reason)).collect();
        self.db.settle_jobs(duty, &changes, now).await?;
        if !ended.is_empty() {
            self.logs_changed();
            // A job ending at settle (skipped, wait) may unblock its children: settle again.
            self.jobs.dirty.lock().expect("dirty pipelines").insert(id.to_string());
        }
        for (state, created_ms) in ended {
            self.metrics.job_ended(state, created_ms);
        }
        Ok(())
    }

    /// Pipelines with waiting jobs are settled at the first pass (after a restart).
    pub async fn resume_scheduling(&self) -> Result<(), DbError> {
        let waiting = self.db.waiting_pipelines().await?;
        let mut dirty = self.jobs.dirty.lock().expect("dirty pipelines");
        dirty.extend(waiting);
        Ok(())
    }

    /// Run scheduling passes until `stop`: on every change, and every [`PASS_EVERY`].
    pub async fn schedule_forever(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if let Err(e) = self.resume_scheduling().await {
            tracing::warn!(error = %e, "reading pipelines to resume failed; the loop retries");
        }
        loop {
            tokio::select! {
                () = self.jobs.kick.notified() => {}
                () = tokio::time::sleep(PASS_EVERY) => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.schedule().await {
                tracing::warn!(error = %e, "scheduling pass failed; retrying");
            }
        }
    }
}
