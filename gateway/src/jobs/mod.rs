//! Jobs at the gateway: submission, the scheduling pass, the lease long poll, reports and logs.
//!
//! The decisions are pure ([`crate::lifecycle`], [`crate::placement`]); this module reads the
//! rows they need, applies what they decide through fenced updates ([`crate::db::jobs`]), and
//! wakes whoever waits:
//!
//! - **submit** checks the spec (every problem, with its path) and the selectors against the
//!   registered clusters, stores the pipeline with its jobs in one transaction (the
//!   acknowledgement), then waits up to [`submit::SUBMIT_PLACEMENT_WAIT`] for the scheduler's next pass,
//!   so the answer usually names the clusters; a busy gateway answers with jobs still queued;
//! - **the scheduling pass** (on every change, and every [`PASS_EVERY`]) moves work off dead or
//!   revoked clusters, settles pipelines whose jobs ended (queued / skipped), and places queued
//!   jobs, binding each to a cluster's new attempt; one pass at a time;
//! - **lease**: a cluster leader's long poll, fenced by term like heartbeats. The answer is the
//!   difference between what the gateway has bound to the cluster and what the leader says it
//!   holds: new attempts to start, attempts to cancel, attempts to drop (moved away or ended);
//! - **reports**: each applied only if the job is still bound to the reporter's (cluster,
//!   attempt), in the state the decision was made on, and the reporter's term is current (one SQL
//!   statement), so exactly one result is accepted;
//! - **logs**: pieces shipped by leaders (kept only for attempts bound to the sender), and reads
//!   that wait for new pieces.
//!
//! One file per duty: [`submit`] (and a user's cancel), [`views`], [`schedule`], [`lease`],
//! [`report`], [`logs`]. This file holds what they share: the parsed-spec cache, the waiters,
//! and the term fence every leader's request passes.

mod lease;
mod logs;
mod report;
mod schedule;
mod submit;
mod views;

pub use lease::MAX_WAIT;
pub use schedule::PASS_EVERY;

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use atoll_api::ApiError;
use atoll_api::ErrorCode;
use atoll_api::ids::JobId;
use atoll_api::ids::Term;
use atoll_api::jobs::InputInfo;
use atoll_api::jobs::JobInfo;
use atoll_api::jobs::OutputInfo;
use atoll_api::jobs::Route;
use atoll_api::spec::PipelineSpec;
use tokio::sync::Notify;

use crate::Gateway;
use crate::bus::Event;
use crate::db::DbError;
use crate::db::jobs::JobRow;
use crate::fence::Fence;
use crate::fence::fence;
use crate::now_ms;
use crate::route::Flow;

/// Largest number of reports or log pieces in one batch.
const MAX_BATCH: usize = 10_000;
/// Most parsed pipeline specs kept in memory.
pub const PIPELINES_CACHED: usize = 10_000;

/// A stored pipeline's spec, parsed once, with what the lifecycle needs.
#[derive(Debug)]
pub struct Pipeline {
    pub spec: PipelineSpec,
    pub order: Vec<usize>,
    pub index: HashMap<String, usize>,
    /// `children[i]`: the jobs that depend on job `i`.
    pub children: Vec<Vec<usize>>,
}

impl Pipeline {
    pub fn new(spec: PipelineSpec) -> Self {
        let order = atoll_api::spec::topological_order(&spec);
        let index: HashMap<String, usize> = spec.jobs.iter().enumerate().map(|(i, j)| (j.name.clone(), i)).collect();
        let mut children = vec![Vec::new(); spec.jobs.len()];
        for (i, job) in spec.jobs.iter().enumerate() {
            for dep in &job.depends_on {
                children[index[&dep.job]].push(i);
            }
        }
        Self { spec, order, index, children }
    }
}

/// In-memory state of the job service: parsed specs, who waits, what to settle.
#[derive(Debug, Default)]
pub struct JobsState {
    pipelines: Mutex<HashMap<String, Arc<Pipeline>>>,
    /// Pipelines whose jobs ended since the last pass.
    dirty: Mutex<BTreeSet<String>>,
    /// Wakes the scheduling loop.
    kick: Notify,
    /// One scheduling pass at a time.
    pass: tokio::sync::Mutex<()>,
    /// Passes started (numbered from 1), counted once the pass holds `pass`, before it reads.
    passes_started: std::sync::atomic::AtomicU64,
    /// The number of the last pass that finished.
    passes_done: tokio::sync::watch::Sender<u64>,
    /// Passes other replicas announced finished (the lease holder's, with several replicas).
    passes_heard: tokio::sync::watch::Sender<u64>,
    /// Per cluster: wakes its leader's lease.
    leases: Mutex<HashMap<String, Arc<Notify>>>,
    /// Wakes log readers (new pieces, or a job ended).
    logs: Notify,
    /// Wakes every long poll at shutdown.
    closing: Notify,
}

impl JobsState {
    fn lease_waiter(&self, cluster: &str) -> Arc<Notify> {
        self.leases.lock().expect("lease waiters").entry(cluster.to_string()).or_default().clone()
    }

    fn wake_cluster(&self, cluster: &str) {
        self.lease_waiter(cluster).notify_one();
    }

    fn mark_dirty(&self, pipeline: &str) {
        self.dirty.lock().expect("dirty pipelines").insert(pipeline.to_string());
        self.kick.notify_one();
    }

    /// Wake every lease poll and log reader (announcements may have been missed).
    fn wake_all(&self) {
        self.logs.notify_waiters();
        for waiter in self.leases.lock().expect("lease waiters").values() {
            waiter.notify_one();
        }
    }

    /// Wake every long poll (the gateway is stopping).
    pub(crate) fn close(&self) {
        self.closing.notify_waiters();
        self.logs.notify_waiters();
        for waiter in self.leases.lock().expect("lease waiters").values() {
            waiter.notify_waiters();
        }
    }
}

pub(crate) fn db_error(e: DbError) -> ApiError {
    tracing::error!(error = %e, "database error");
    ApiError::unavailable(format!("the gateway's database is unavailable: {e}"))
}

/// A job's id: its pipeline's id and its name.
pub fn job_id(pipeline: &str, name: &str) -> JobId {
    JobId::new(pipeline, name)
}

impl Gateway {
    /// Work for `cluster` changed: wake its leader's lease poll, here and on other replicas.
    pub(crate) fn wake_cluster(&self, cluster: &str) {
        self.jobs.wake_cluster(cluster);
        self.bus.publish(Event::Wake { cluster: cluster.to_string() });
    }

    /// Wake `cluster`'s lease poll on this replica only (another replica announced the change).
    pub(crate) fn wake_cluster_here(&self, cluster: &str) {
        self.jobs.wake_cluster(cluster);
    }

    /// A pipeline's jobs moved: the lease holder settles it.
    pub(crate) fn mark_dirty(&self, pipeline: &str) {
        self.jobs.mark_dirty(pipeline);
        self.bus.publish(Event::Dirty { pipeline: pipeline.to_string() });
    }

    /// Something to place: the lease holder runs a pass.
    pub(crate) fn kick_scheduler(&self) {
        self.jobs.kick.notify_one();
        self.bus.publish(Event::Kick);
    }

    /// New log pieces, or a job ended: log readers look again.
    pub(crate) fn logs_changed(&self) {
        self.jobs.logs.notify_waiters();
        self.bus.publish(Event::Logs);
    }

    /// Apply what another replica announced to this one's memory.
    pub(crate) fn heard(&self, event: Event) {
        match event {
            Event::Wake { cluster } => self.wake_cluster_here(&cluster),
            Event::Dirty { pipeline } => self.jobs.mark_dirty(&pipeline),
            Event::Kick => self.jobs.kick.notify_one(),
            Event::Pass => {
                self.jobs.passes_heard.send_modify(|n| *n += 1);
            }
            Event::Logs => self.jobs.logs.notify_waiters(),
            Event::Send { from, task } => self.heard_send(&from, task),
            Event::Fallen { job, from_job } => self.heard_fallen(&job, &from_job),
        }
    }

    /// Announcements may have been missed: wake every waiter, and settle every waiting
    /// pipeline if this replica schedules.
    pub(crate) async fn missed_announcements(&self) {
        self.jobs.wake_all();
        if self.lease.duty().is_some() {
            if let Err(e) = self.resume_scheduling().await {
                tracing::warn!(error = %e, "reading pipelines to settle failed; the next pass retries");
            }
            self.jobs.kick.notify_one();
        }
    }

    /// How long a long poll may sleep before reading the database again on its own.
    pub(crate) fn recheck_every(&self) -> std::time::Duration {
        if self.bus.is_on() { crate::bus::RECHECK_EVERY } else { MAX_WAIT }
    }

    /// [`Gateway::flow`] for a route an agent acts on. With replicas, from matrix rows read
    /// from the database within two refresh intervals: a replica that could not refresh them
    /// (cut from the database, paused) reads them again first, instead of routing by rows the
    /// others replaced long ago (older than the staleness bound, they call for the relay).
    pub(crate) async fn current_flow(&self) -> Result<Flow, crate::db::DbError> {
        if self.lease.replicated() {
            self.rows.refresh_within(2 * crate::registry::REFRESH_EVERY).await?;
        }
        Ok(self.flow())
    }

    /// How outputs flow between clusters now: the joined matrix, the edges that fell back to the
    /// relay, and (in the chaos suite's broken gateway) the matrix ignored.
    pub(crate) fn flow(&self) -> Flow {
        let clusters = self.registry.registered();
        let rows = self.rows.snapshot();
        let grid = crate::matrix::Grid::new(&clusters, &rows, now_ms(), self.config.stale_after);
        let fallen = self.transfers.fallen();
        Flow::new(&grid, fallen, self.breakage.matrix_ignored())
    }

    /// A stored pipeline's parsed spec (cached, at most [`PIPELINES_CACHED`]).
    pub(crate) async fn pipeline(&self, id: &str) -> Result<Arc<Pipeline>, ApiError> {
        if let Some(p) = self.jobs.pipelines.lock().expect("pipelines").get(id) {
            return Ok(p.clone());
        }
        let text = self
            .db
            .pipeline_spec(id)
            .await
            .map_err(db_error)?
            .ok_or_else(|| ApiError::not_found(format!("no pipeline {id}")))?;
        let spec: PipelineSpec = serde_json::from_str(&text)
            .map_err(|e| ApiError::internal(format!("the stored spec of pipeline {id} is unreadable: {e}")))?;
        let pipeline = Arc::new(Pipeline::new(spec));
        self.remember_pipeline(id, pipeline.clone());
        Ok(pipeline)
    }

    fn remember_pipeline(&self, id: &str, pipeline: Arc<Pipeline>) {
        let mut cached = self.jobs.pipelines.lock().expect("pipelines");
        if cached.len() >= PIPELINES_CACHED {
            // Bounded: a long-lived gateway sees any number of pipelines; reading one again is
            // one query.
            cached.clear();
        }
        cached.insert(id.to_string(), pipeline);
    }

    pub(crate) async fn job_row(&self, id: &str) -> Result<JobRow, ApiError> {
        self.db.job(id).await.map_err(db_error)?.ok_or_else(|| ApiError::not_found(format!("no job {id}")))
    }

    /// The term fence shared by leases, reports and logs: the cluster is registered at exactly
    /// this term (lower: a deposed leader, 409 `stale_leader`; higher: register first).
    pub fn fence(&self, cluster: &str, term: Term) -> Result<(), ApiError> {
        let Some(known) = self.registry.get(cluster) else {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("cluster {cluster} has not registered; heartbeat first"),
            ));
        };
        if known.revoked_ms.is_some() {
            return Err(ApiError::new(ErrorCode::Revoked, format!("cluster {cluster} is revoked")));
        }
        let stands = fence(known.term, term);
        if stands == Fence::Stale && !self.breakage.fencing_disabled() {
            self.metrics.fenced.inc();
            return Err(ApiError::new(
                ErrorCode::StaleLeader,
                format!(
                    "stale leader: cluster {cluster} has a leader at term {}, this request is from term {term}",
                    known.term
                ),
            ));
        }
        if stands == Fence::Ahead {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("term {term} of cluster {cluster} has not registered; heartbeat first"),
            ));
        }
        Ok(())
    }
}

/// The source a job runs on: its own, else its pipeline's (for jobs that run on a cluster).
fn effective_source<'a>(job: &'a atoll_api::spec::JobSpec, pipeline: &'a PipelineSpec) -> Option<&'a str> {
    match &job.source {
        Some(own) => Some(own),
        None if job.runs_on_a_cluster() => pipeline.source.as_deref(),
        None => None,
    }
}

/// A job as users see it (pure): `siblings` are its pipeline's rows (for its inputs).
fn info(row: &JobRow, pipeline: &Pipeline, siblings: &[JobRow], flow: &Flow) -> JobInfo {
    let job = &pipeline.spec.jobs[row.idx];
    let inputs = job
        .depends_on
        .iter()
        .map(|dep| {
            let parent = siblings.iter().find(|s| s.name == dep.job);
            let route = match (parent.and_then(|p| p.cluster.as_deref()), row.cluster.as_deref()) {
                (Some(from), Some(to)) => Some(flow.edge(&row.id, &dep.job, from, to)),
                _ => None,
            };
            let digest = parent.and_then(|p| p.output.as_ref()).map(|(d, _)| d.clone());
            InputInfo { from_job: dep.job.clone(), mode: route.map(Route::mode), route, digest }
        })
        .collect();
    JobInfo {
        name: row.name.clone(),
        id: row.id.clone(),
        pipeline: row.pipeline_id.clone(),
        cluster: row.cluster.clone(),
        state: row.state,
        attempts: if row.cluster.is_some() { row.attempt } else { row.attempt - 1 },
        inputs,
        reason: row.reason.clone(),
        exit_code: row.exit_code,
        output: row.output.as_ref().map(|(digest, size)| OutputInfo { digest: digest.clone(), size: *size }),
        cancel_requested: row.cancel_requested,
        created_ms: row.created_ms,
        finished_ms: row.finished_ms,
    }
}
