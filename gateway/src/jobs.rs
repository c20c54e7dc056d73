//! Jobs at the gateway: submission, the scheduling pass, the lease long poll, reports and logs.
//!
//! The decisions are pure ([`crate::lifecycle`], [`crate::placement`]); this module reads the
//! rows they need, applies what they decide through fenced updates ([`crate::db::jobs`]), and
//! wakes whoever waits:
//!
//! - **submit** checks the spec (every problem, with its path) and the selectors against the
//!   registered clusters, stores the pipeline with its jobs in one transaction (the
//!   acknowledgement), then waits up to [`SUBMIT_PLACEMENT_WAIT`] for the scheduler's next pass,
//!   so the answer usually names the clusters; a busy gateway answers with jobs still queued;
//! - **the scheduling pass** (on every change, and every [`PASS_EVERY`]) moves work off dead or
//!   revoked clusters, settles pipelines whose jobs ended (queued / skipped), and places queued
//!   jobs, binding each to a cluster's new attempt; one pass at a time;
//! - **lease**: a cluster leader's long poll, fenced by term like heartbeats. The answer is the
//!   difference between what the gateway has bound to the cluster and what the leader says it
//!   holds: new attempts to start, attempts to cancel, attempts to drop (moved away or ended);
//! - **reports**: each applied only if the job is still bound to the reporter's (cluster,
//!   attempt), in the state the decision was made on, and the reporter's term is current (one SQL
//!   statement), so exactly one result is accepted.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use atoll_api::ApiError;
use atoll_api::ErrorCode;
use atoll_api::gateway::ClusterState;
use atoll_api::gateway::LinkState;
use atoll_api::ids::ClusterName;
use atoll_api::ids::Label;
use atoll_api::jobs::AssignedInput;
use atoll_api::jobs::Assignment;
use atoll_api::jobs::AttemptInfo;
use atoll_api::jobs::Held;
use atoll_api::jobs::InputInfo;
use atoll_api::jobs::JobDetail;
use atoll_api::jobs::JobInfo;
use atoll_api::jobs::JobState;
use atoll_api::jobs::LeaseResponse;
use atoll_api::jobs::LogBatch;
use atoll_api::jobs::LogPage;
use atoll_api::jobs::LogPiece;
use atoll_api::jobs::LogStream;
use atoll_api::jobs::OutputInfo;
use atoll_api::jobs::Report;
use atoll_api::jobs::ReportOutcome;
use atoll_api::jobs::ReportResult;
use atoll_api::jobs::ReportedState;
use atoll_api::jobs::Revoked;
use atoll_api::jobs::Route;
use atoll_api::jobs::Submitted;
use atoll_api::spec::ClusterFacts;
use atoll_api::spec::PipelineSpec;
use tokio::sync::Notify;

use crate::Gateway;
use crate::db::DbError;
use crate::db::jobs::Cancelled;
use crate::db::jobs::JobRow;
use crate::db::jobs::LogChunk;
use crate::db::jobs::NewJob;
use crate::db::jobs::ReportApply;
use crate::db::jobs::Transition;
use crate::lifecycle;
use crate::now_ms;
use crate::placement;

/// The scheduling pass runs at least this often (dead clusters are noticed by time alone).
pub const PASS_EVERY: Duration = Duration::from_millis(500);
/// How long a submission waits for the scheduling pass that places it before answering.
const SUBMIT_PLACEMENT_WAIT: Duration = Duration::from_secs(1);
/// The longest a lease or a log read may be held open.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Log pieces per page.
const LOG_PAGE: u32 = 1000;
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
    /// Per cluster: wakes its leader's lease.
    leases: Mutex<HashMap<String, Arc<Notify>>>,
    /// Wakes log readers (new pieces, or a job ended).
    logs: Notify,
    /// Wakes every long poll at shutdown.
    closing: Notify,
    /// Per parent cluster: outputs to send (push, relay upload), handed out with its next lease.
    pub(crate) sends: Mutex<HashMap<String, Vec<atoll_api::jobs::SendTask>>>,
    /// (child job id, parent name) of edges whose direct transfer failed: relayed from then on.
    pub(crate) fallen: Mutex<HashSet<(String, String)>>,
    /// (child job id, attempt, parent name) -> the route last recorded for it (a cache).
    pub(crate) routes_given: Mutex<HashMap<(String, u32, String), atoll_api::jobs::Route>>,
}

impl JobsState {
    /// A fresh state that knows the edges that fell back to the relay (recorded in the database).
    pub fn with_fallen(fallen: impl IntoIterator<Item = (String, String)>) -> Self {
        Self { fallen: Mutex::new(fallen.into_iter().collect()), ..Self::default() }
    }

    fn lease_waiter(&self, cluster: &str) -> Arc<Notify> {
        self.leases.lock().expect("lease waiters").entry(cluster.to_string()).or_default().clone()
    }

    pub(crate) fn wake_cluster(&self, cluster: &str) {
        self.lease_waiter(cluster).notify_one();
    }

    fn mark_dirty(&self, pipeline: &str) {
        self.dirty.lock().expect("dirty pipelines").insert(pipeline.to_string());
        self.kick.notify_one();
    }

    /// Wake every long poll (the gateway is stopping).
    pub fn close(&self) {
        self.closing.notify_waiters();
        self.logs.notify_waiters();
        for waiter in self.leases.lock().expect("lease waiters").values() {
            waiter.notify_waiters();
        }
    }
}

fn db_error(e: DbError) -> ApiError {
    tracing::error!(error = %e, "database error");
    ApiError::unavailable(format!("the gateway's database is unavailable: {e}"))
}

/// A new random id: 12 lowercase hex digits.
fn new_pipeline_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// A job's id: its pipeline's id and its name.
pub fn job_id(pipeline: &str, name: &str) -> String {
    format!("{pipeline}.{name}")
}

/// How outputs can flow between clusters, from the joined matrix and the edges that fell back
/// to the relay.
pub(crate) struct Flow {
    index: HashMap<String, usize>,
    /// `reach[from * n + to]`: `from` measured `to` reachable.
    reach: Vec<bool>,
    /// (child job id, parent name) of the edges whose direct transfer failed.
    fallen: HashSet<(String, String)>,
}

impl Flow {
    fn reaches(&self, from: &str, to: &str) -> bool {
        match (self.index.get(from), self.index.get(to)) {
            (Some(&a), Some(&b)) => a == b || self.reach[a * self.index.len() + b],
            _ => false,
        }
    }

    /// Whether an output made in `from` can reach a job in `to` without the relay.
    fn direct(&self, from: &str, to: &str) -> bool {
        self.reaches(from, to) || self.reaches(to, from)
    }

    /// The way an output made in `from` reaches a job in `to` (pure): the child pulls when its
    /// cluster reaches the parent's, else the parent's pushes when it reaches the child's, else
    /// the relay.
    pub(crate) fn route(&self, from: &str, to: &str) -> Route {
        if from == to {
            Route::Local
        } else if crate::unsafe_switches::matrix_ignored() {
            // The deliberately broken build: pull whatever the matrix says.
            Route::Pull
        } else if self.reaches(to, from) {
            Route::Pull
        } else if self.reaches(from, to) {
            Route::Push
        } else {
            Route::Relay
        }
    }

    /// [`Flow::route`] for the edge parent `from_job` (in `from`) -> job `child` (in `to`),
    /// honouring a fallback to the relay.
    pub(crate) fn edge(&self, child: &str, from_job: &str, from: &str, to: &str) -> Route {
        let route = self.route(from, to);
        if route != Route::Local && self.fallen.contains(&(child.to_string(), from_job.to_string())) {
            Route::Relay
        } else {
            route
        }
    }
}

impl Gateway {
    pub(crate) fn flow(&self) -> Flow {
        let clusters = self.registry.registered();
        let rows = self.rows.snapshot();
        let grid = crate::matrix::Grid::new(&clusters, &rows, now_ms(), self.config.stale_after);
        let n = grid.names().len();
        let index = grid.names().iter().enumerate().map(|(i, name)| (name.to_string(), i)).collect();
        let mut reach = vec![false; n * n];
        for from in 0..n {
            for to in 0..n {
                reach[from * n + to] = from == to || grid.cell(from, to).state == LinkState::Reachable;
            }
        }
        let fallen = self.jobs.fallen.lock().expect("fallen edges").clone();
        Flow { index, reach, fallen }
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

    /// Check and store a pipeline; everything is recorded before this returns.
    pub async fn submit(&self, document: &atoll_api::spec::Document, by: &str) -> Result<Submitted, ApiError> {
        let spec = atoll_api::spec::from_document(document).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let clusters = self.registry.list(now_ms());
        let parsed: Vec<(ClusterName, Vec<Label>, bool)> = clusters
            .iter()
            .filter_map(|c| {
                let name = c.name.parse().ok()?;
                let labels = c.labels.iter().filter_map(|l| l.parse().ok()).collect();
                Some((name, labels, c.enabled && !c.revoked))
            })
            .collect();
        let facts: Vec<ClusterFacts<'_>> =
            parsed.iter().map(|(name, labels, enabled)| ClusterFacts { name, labels, enabled: *enabled }).collect();
        atoll_api::spec::check_clusters(&spec, &facts).map_err(|e| ApiError::bad_request(e.to_string()))?;
        // Every source named must have been pushed.
        if let Some(source) = &spec.source {
            self.known_source(source, "source").await?;
        }
        for (i, job) in spec.jobs.iter().enumerate() {
            if let Some(source) = &job.source {
                self.known_source(source, &format!("jobs[{i}].source")).await?;
            }
        }

        let pipeline = Pipeline::new(spec);
        let mut states = vec![JobState::Waiting; pipeline.spec.jobs.len()];
        let settled = lifecycle::settle(&pipeline.spec, &pipeline.order, &mut states);
        let mut reasons: Vec<String> = vec!["waiting for its parents".to_string(); states.len()];
        for change in settled {
            reasons[change.job] = change.reason;
        }
        let id = new_pipeline_id();
        let ids: Vec<String> = pipeline.spec.jobs.iter().map(|j| job_id(&id, &j.name)).collect();
        let jobs: Vec<NewJob<'_>> = pipeline
            .spec
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| NewJob {
                id: &ids[i],
                idx: i,
                name: &j.name,
                state: states[i],
                reason: &reasons[i],
                source: effective_source(j, &pipeline.spec),
            })
            .collect();
        let text = serde_json::to_string(&pipeline.spec).map_err(|e| ApiError::internal(e.to_string()))?;
        self.db.insert_pipeline(&id, by, &text, &jobs, now_ms()).await.map_err(db_error)?;
        self.metrics.pipelines.inc();
        self.metrics.jobs_submitted.inc_by(jobs.len() as u64);
        tracing::info!(pipeline = %id, jobs = jobs.len(), by, "pipeline submitted");
        self.remember_pipeline(&id, Arc::new(pipeline));
        // Stored: the submission stands. Let the scheduler place it, and answer with the
        // clusters if that is quick; a busy gateway answers sooner, with jobs still queued.
        self.next_pass(SUBMIT_PLACEMENT_WAIT).await;
        self.pipeline_info(&id).await
    }

    /// A pipeline's jobs as users see them.
    pub async fn pipeline_info(&self, id: &str) -> Result<Submitted, ApiError> {
        let pipeline = self.pipeline(id).await?;
        let rows = self.db.pipeline_jobs(id).await.map_err(db_error)?;
        let flow = self.flow();
        let jobs = rows.iter().map(|row| info(row, &pipeline, &rows, &flow)).collect();
        Ok(Submitted { pipeline: id.to_string(), jobs })
    }

    /// The newest jobs first.
    pub async fn recent_jobs(&self, limit: u32) -> Result<Vec<JobInfo>, ApiError> {
        let rows = self.db.recent_jobs(limit).await.map_err(db_error)?;
        let flow = self.flow();
        let mut siblings: HashMap<String, Vec<JobRow>> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let pipeline = self.pipeline(&row.pipeline_id).await?;
            if !siblings.contains_key(&row.pipeline_id) {
                let all = self.db.pipeline_jobs(&row.pipeline_id).await.map_err(db_error)?;
                siblings.insert(row.pipeline_id.clone(), all);
            }
            out.push(info(row, &pipeline, &siblings[&row.pipeline_id], &flow));
        }
        Ok(out)
    }

    async fn job_row(&self, id: &str) -> Result<JobRow, ApiError> {
        self.db.job(id).await.map_err(db_error)?.ok_or_else(|| ApiError::not_found(format!("no job {id}")))
    }

    pub async fn job_detail(&self, id: &str) -> Result<JobDetail, ApiError> {
        let row = self.job_row(id).await?;
        let pipeline = self.pipeline(&row.pipeline_id).await?;
        let siblings = self.db.pipeline_jobs(&row.pipeline_id).await.map_err(db_error)?;
        let attempts = self.db.attempts(id).await.map_err(db_error)?;
        let mut routes = self.db.routes_of(id).await.map_err(db_error)?;
        let log_truncated = self.db.log_truncated(id).await.map_err(db_error)?;
        Ok(JobDetail {
            log_truncated,
            job: info(&row, &pipeline, &siblings, &self.flow()),
            attempts: attempts
                .into_iter()
                .map(|a| AttemptInfo {
                    attempt: a.attempt,
                    cluster: a.cluster,
                    state: a.state,
                    term: a.term,
                    exit_code: a.exit_code,
                    message: a.message,
                    bound_ms: a.bound_ms,
                    started_ms: a.started_ms,
                    ended_ms: a.ended_ms,
                    routes: routes
                        .extract_if(.., |(attempt, _)| *attempt == a.attempt)
                        .map(|(_, taken)| taken)
                        .collect(),
                })
                .collect(),
        })
    }

    /// Cancel a job: at once when it has not started, else through its cluster.
    pub async fn cancel(&self, id: &str, by: &str) -> Result<JobInfo, ApiError> {
        let row = self.job_row(id).await?;
        match self.db.cancel(id, now_ms()).await.map_err(db_error)? {
            Cancelled::Killed => {
                self.metrics.job_ended(JobState::Killed, row.created_ms);
                tracing::info!(job = id, by, "job cancelled before it started");
                self.jobs.logs.notify_waiters();
                self.jobs.mark_dirty(&row.pipeline_id);
            }
            Cancelled::Requested => {
                tracing::info!(job = id, by, cluster = ?row.cluster, "cancel asked of the job's cluster");
                if let Some(cluster) = &row.cluster {
                    self.jobs.wake_cluster(cluster);
                }
            }
            Cancelled::Nothing => {}
        }
        let row = self.job_row(id).await?;
        let pipeline = self.pipeline(&row.pipeline_id).await?;
        let siblings = self.db.pipeline_jobs(&row.pipeline_id).await.map_err(db_error)?;
        Ok(info(&row, &pipeline, &siblings, &self.flow()))
    }

    /// The term fence shared by leases, reports and logs: the cluster is registered at exactly
    /// this term (lower: a deposed leader, 409 `stale_leader`; higher: register first).
    pub fn fence(&self, cluster: &str, term: u64) -> Result<(), ApiError> {
        let Some(known) = self.registry.get(cluster) else {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("cluster {cluster} has not registered; heartbeat first"),
            ));
        };
        if known.revoked_ms.is_some() {
            return Err(ApiError::new(ErrorCode::Revoked, format!("cluster {cluster} is revoked")));
        }
        if term < known.term && !crate::unsafe_switches::fencing_disabled() {
            self.metrics.fenced.inc();
            return Err(ApiError::new(
                ErrorCode::StaleLeader,
                format!(
                    "stale leader: cluster {cluster} has a leader at term {}, this request is from term {term}",
                    known.term
                ),
            ));
        }
        if term > known.term {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("term {term} of cluster {cluster} has not registered; heartbeat first"),
            ));
        }
        Ok(())
    }

    /// A cluster leader's long poll: what to start, cancel or drop, given what it holds.
    pub async fn lease(
        &self,
        cluster: &str,
        term: u64,
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
        let rows: HashMap<String, JobRow> =
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
                    let flow = flow.get_or_insert_with(|| self.flow());
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
        if let Some(sends) = self.jobs.sends.lock().expect("sends").remove(cluster) {
            answer.send = sends;
        }
        Ok(answer)
    }

    /// Apply a batch of reports, each on its own, in one transaction per round; the batch as a
    /// whole is fenced by term. A report whose job changed between the read and the fenced update
    /// is decided again on the fresh row (at most three rounds).
    pub async fn report(&self, cluster: &str, term: u64, reports: &[Report]) -> Result<Vec<ReportResult>, ApiError> {
        if reports.len() > MAX_BATCH {
            return Err(ApiError::bad_request(format!("a batch may hold at most {MAX_BATCH} reports")));
        }
        self.fence(cluster, term)?;
        let mut outcomes: Vec<Option<(ReportOutcome, Option<String>)>> = vec![None; reports.len()];
        let mut pending: Vec<usize> = (0..reports.len()).collect();
        for _round in 0..3 {
            if pending.is_empty() {
                break;
            }
            let mut items = Vec::new();
            let mut owners = Vec::new();
            let ids: Vec<&str> = pending.iter().map(|&i| reports[i].job.as_str()).collect();
            let rows: HashMap<String, JobRow> =
                self.db.jobs_by_id(&ids).await.map_err(db_error)?.into_iter().map(|r| (r.id.clone(), r)).collect();
            for &i in &pending {
                let report = &reports[i];
                match self.decide_report(cluster, term, report, rows.get(&report.job)).await? {
                    Err(outcome) => outcomes[i] = Some(outcome),
                    Ok((item, pipeline)) => {
                        items.push(item);
                        owners.push((i, pipeline));
                    }
                }
            }
            let applied = self.db.apply_reports(&items, now_ms()).await.map_err(db_error)?;
            pending.clear();
            for ((item, (i, pipeline)), ok) in items.iter().zip(owners).zip(applied) {
                if !ok {
                    // The row changed since it was read (or a newer term registered).
                    pending.push(i);
                    continue;
                }
                outcomes[i] = Some((ReportOutcome::Accepted, None));
                match item.transition {
                    Transition::Start => {}
                    Transition::End { state, .. } => {
                        if let Some(row) = rows.get(&item.id)
                            && state.is_final()
                        {
                            self.metrics.job_ended(state, row.created_ms);
                        }
                        self.jobs.logs.notify_waiters();
                        self.jobs.mark_dirty(&pipeline);
                    }
                    Transition::Retry { .. } => self.jobs.kick.notify_one(),
                    Transition::Rerun { .. } => self.jobs.wake_cluster(cluster),
                }
            }
        }
        if !pending.is_empty() {
            self.fence(cluster, term)?;
        }
        let mut results = Vec::with_capacity(reports.len());
        for (report, outcome) in reports.iter().zip(outcomes) {
            let (outcome, reason) = outcome.unwrap_or((
                ReportOutcome::Refused,
                Some("the job kept changing while the report was applied; resend it".to_string()),
            ));
            let label = match outcome {
                ReportOutcome::Accepted => "accepted",
                ReportOutcome::Duplicate => "duplicate",
                ReportOutcome::Refused => "refused",
            };
            self.metrics.reports.get_or_create(&crate::metrics::Outcome { outcome: label }).inc();
            if outcome == ReportOutcome::Refused {
                tracing::info!(cluster, job = %report.job, attempt = report.attempt, reason = ?reason, "report refused");
            }
            results.push(ReportResult { job: report.job.clone(), attempt: report.attempt, outcome, reason });
        }
        Ok(results)
    }

    /// Decide one report on the job as stored (`row`, read with the batch): the fenced update
    /// to make (with the job's pipeline), or the outcome when there is nothing to apply.
    async fn decide_report(
        &self,
        cluster: &str,
        term: u64,
        report: &Report,
        row: Option<&JobRow>,
    ) -> Result<Result<(ReportApply, String), (ReportOutcome, Option<String>)>, ApiError> {
        let Some(row) = row else {
            return Ok(Err((ReportOutcome::Refused, Some(format!("no job {}", report.job)))));
        };
        let pipeline = self.pipeline(&row.pipeline_id).await?;
        let spec = &pipeline.spec.jobs[row.idx];
        let bound = lifecycle::Bound {
            state: row.state,
            cluster: row.cluster.as_deref(),
            attempt: row.attempt,
            failed_attempts: row.failed_attempts,
            cancel_requested: row.cancel_requested,
        };
        let message = report.message.clone();
        let transition = match lifecycle::decide(&bound, spec, cluster, report.attempt, report.state) {
            lifecycle::Decision::Duplicate => return Ok(Err((ReportOutcome::Duplicate, None))),
            lifecycle::Decision::Refuse(reason) => return Ok(Err((ReportOutcome::Refused, Some(reason)))),
            lifecycle::Decision::Start => Transition::Start,
            lifecycle::Decision::End(state) => {
                Transition::End { state: state.into(), exit_code: report.exit_code, message }
            }
            lifecycle::Decision::Retry { failed_attempts } => Transition::Retry {
                failed_attempts,
                state: if report.state == ReportedState::Error { JobState::Error } else { JobState::Failure },
                exit_code: report.exit_code,
                message,
            },
            lifecycle::Decision::Rerun => Transition::Rerun { message },
        };
        let output = match &report.output {
            Some(o) => match o.digest.parse::<atoll_store::Digest>() {
                Ok(d) => Some((d.to_string(), o.size)),
                Err(e) => return Ok(Err((ReportOutcome::Refused, Some(format!("output: {e}"))))),
            },
            None => None,
        };
        let item = ReportApply {
            id: report.job.clone(),
            cluster: cluster.to_string(),
            attempt: report.attempt,
            from: row.state,
            term,
            transition,
            output,
        };
        Ok(Ok((item, row.pipeline_id.clone())))
    }

    /// Store log pieces of attempts bound to `cluster`; others are ignored.
    pub async fn store_logs(&self, cluster: &str, batch: &LogBatch) -> Result<usize, ApiError> {
        if batch.pieces.len() > MAX_BATCH {
            return Err(ApiError::bad_request(format!("a batch may hold at most {MAX_BATCH} pieces")));
        }
        self.fence(cluster, batch.term)?;
        let mut owner: BTreeMap<(&str, u32), bool> = BTreeMap::new();
        let mut chunks = Vec::with_capacity(batch.pieces.len());
        for piece in &batch.pieces {
            let key = (piece.job.as_str(), piece.attempt);
            let ours = match owner.get(&key) {
                Some(ours) => *ours,
                None => {
                    let bound = self.db.attempt_cluster(&piece.job, piece.attempt).await.map_err(db_error)?;
                    let ours = bound.as_deref() == Some(cluster);
                    owner.insert(key, ours);
                    ours
                }
            };
            if ours {
                chunks.push((
                    piece.job.clone(),
                    LogChunk {
                        attempt: piece.attempt,
                        seq: piece.seq,
                        stream: piece.stream.as_str().to_string(),
                        data: piece.data.clone(),
                        at_ms: piece.at_ms,
                    },
                ));
            }
        }
        self.db.append_logs(&chunks).await.map_err(db_error)?;
        if !chunks.is_empty() {
            self.jobs.logs.notify_waiters();
        }
        Ok(chunks.len())
    }

    /// A job's log after `(attempt, seq)`, waiting up to `wait` for new pieces.
    pub async fn read_logs(&self, id: &str, after: (u32, u32), wait: Duration) -> Result<LogPage, ApiError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let notified = self.jobs.logs.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let row = self.job_row(id).await?;
            let chunks = self.db.read_logs(id, after, LOG_PAGE).await.map_err(db_error)?;
            let ended = row.state.is_final();
            if !chunks.is_empty() || ended || tokio::time::Instant::now() >= deadline || self.is_stopping() {
                let full = chunks.len() as u32 == LOG_PAGE;
                let next = chunks.last().map_or(after, |c| (c.attempt, c.seq));
                let pieces = chunks
                    .into_iter()
                    .map(|c| LogPiece {
                        job: id.to_string(),
                        attempt: c.attempt,
                        seq: c.seq,
                        stream: match c.stream.as_str() {
                            "stderr" => LogStream::Stderr,
                            "marker" => LogStream::Marker,
                            _ => LogStream::Stdout,
                        },
                        data: c.data,
                        at_ms: c.at_ms,
                    })
                    .collect();
                let truncated = self.db.log_truncated(id).await.map_err(db_error)?;
                return Ok(LogPage { pieces, next_attempt: next.0, next_seq: next.1, done: ended && !full, truncated });
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// One scheduling pass: move work off dead clusters, settle, place.
    pub async fn schedule(&self) -> Result<(), DbError> {
        let _one = self.jobs.pass.lock().await;
        let number = self.jobs.passes_started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let result = self.schedule_pass().await;
        self.jobs.passes_done.send_replace(number);
        result
    }

    /// Wait (at most `wait`) for a scheduling pass that starts after this call.
    async fn next_pass(&self, wait: Duration) {
        let mut done = self.jobs.passes_done.subscribe();
        // A pass numbered after every pass started so far reads the database after this call;
        // one running now may predate the caller.
        let after = self.jobs.passes_started.load(std::sync::atomic::Ordering::SeqCst) + 1;
        self.jobs.kick.notify_one();
        let _ = tokio::time::timeout(wait, done.wait_for(|n| *n >= after)).await;
    }

    async fn schedule_pass(&self) -> Result<(), DbError> {
        let now = now_ms();
        let clusters = self.registry.list(now);
        let load: HashMap<String, u64> = self.db.cluster_load().await?.into_iter().collect();

        // 1. Work bound to a dead or revoked cluster goes back to the queue (new attempts).
        for c in &clusters {
            let held = load.get(&c.name).copied().unwrap_or(0);
            if held > 0 && (c.state == ClusterState::Dead || c.revoked) {
                let touched = self.db.reroute(&c.name, now).await?;
                self.metrics.jobs_rerouted.inc_by(held);
                tracing::warn!(cluster = %c.name, jobs = held, state = ?c.state, revoked = c.revoked, "moving work off a lost cluster");
                for pipeline in touched {
                    self.jobs.dirty.lock().expect("dirty pipelines").insert(pipeline);
                }
            }
        }
        let load: HashMap<String, u64> = self.db.cluster_load().await?.into_iter().collect();

        // 2. Settle pipelines whose jobs ended.
        let dirty = std::mem::take(&mut *self.jobs.dirty.lock().expect("dirty pipelines"));
        for id in dirty {
            let Ok(pipeline) = self.pipeline(&id).await else { continue };
            let rows = self.db.pipeline_jobs(&id).await?;
            let mut states: Vec<JobState> = rows.iter().map(|r| r.state).collect();
            if states.len() != pipeline.spec.jobs.len() {
                tracing::error!(pipeline = %id, "stored jobs do not match the stored spec; not settling it");
                continue;
            }
            let settled = lifecycle::settle(&pipeline.spec, &pipeline.order, &mut states);
            let ended: Vec<(JobState, i64)> =
                settled.iter().filter(|c| c.state.is_final()).map(|c| (c.state, rows[c.job].created_ms)).collect();
            let changes: Vec<(String, JobState, String)> =
                settled.into_iter().map(|c| (rows[c.job].id.clone(), c.state, c.reason)).collect();
            if !ended.is_empty() {
                self.jobs.logs.notify_waiters();
                // A job ending at settle (skipped, wait) may unblock its children: settle again.
                self.jobs.dirty.lock().expect("dirty pipelines").insert(id.clone());
            }
            self.db.settle_jobs(&changes, now).await?;
            for (state, created_ms) in ended {
                self.metrics.job_ended(state, created_ms);
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
        let candidates: Vec<placement::Candidate<'_>> = clusters
            .iter()
            .zip(&labels)
            .map(|(c, labels)| placement::Candidate {
                name: &c.name,
                labels,
                enabled: c.enabled && !c.revoked,
                state: c.state,
                load: load.get(&c.name).copied().unwrap_or(0),
            })
            .collect();
        let requests: Vec<placement::Request<'_>> = queued
            .iter()
            .map(|row| {
                let (pipeline, rows) = &pipelines[&row.pipeline_id];
                let job = &pipeline.spec.jobs[row.idx];
                placement::Request {
                    cluster: &job.cluster,
                    parent_clusters: job
                        .depends_on
                        .iter()
                        .filter_map(|d| rows.get(pipeline.index[&d.job]).and_then(|r| r.cluster.as_deref()))
                        .collect(),
                    children: pipeline.children[row.idx].iter().map(|&c| &pipeline.spec.jobs[c].cluster).collect(),
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
                        self.db.set_queued_reason(&row.id, row.attempt, &why).await?;
                    }
                }
            }
        }
        let bound = self.db.assign_many(&bindings, now_ms()).await?;
        let mut woken = BTreeSet::new();
        for ((_, _, cluster, _), ok) in bindings.iter().zip(bound) {
            if ok {
                self.metrics.jobs_assigned.inc();
                woken.insert(cluster.clone());
            }
        }
        for cluster in woken {
            self.jobs.wake_cluster(&cluster);
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

/// The source a job runs on: its own, else its pipeline's (for jobs that run on a cluster).
fn effective_source<'a>(job: &'a atoll_api::spec::JobSpec, pipeline: &'a PipelineSpec) -> Option<&'a str> {
    match &job.source {
        Some(own) => Some(own),
        None if job.runs_on_a_cluster() => pipeline.source.as_deref(),
        None => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A flow over `names` where `links` lists the directed pairs measured reachable.
    fn flow(names: &[&str], links: &[(&str, &str)], fallen: &[(&str, &str)]) -> Flow {
        let n = names.len();
        let index: HashMap<String, usize> = names.iter().enumerate().map(|(i, n)| (n.to_string(), i)).collect();
        let mut reach = vec![false; n * n];
        for (from, to) in links {
            reach[index[*from] * n + index[*to]] = true;
        }
        let fallen = fallen.iter().map(|(j, p)| (j.to_string(), p.to_string())).collect();
        Flow { index, reach, fallen }
    }

    #[test]
    fn every_route_is_chosen_exactly_where_the_matrix_demands_it() {
        let names = ["a", "b"];
        // Output made in a, child in b: every combination of the two directions.
        for (a_to_b, b_to_a, expected) in [
            (true, true, Route::Pull),
            (false, true, Route::Pull),
            (true, false, Route::Push),
            (false, false, Route::Relay),
        ] {
            let mut links = Vec::new();
            if a_to_b {
                links.push(("a", "b"));
            }
            if b_to_a {
                links.push(("b", "a"));
            }
            let f = flow(&names, &links, &[]);
            assert_eq!(f.route("a", "b"), expected, "a->b {a_to_b}, b->a {b_to_a}");
            assert_eq!(f.direct("a", "b"), expected != Route::Relay);
            assert_eq!(f.route("a", "a"), Route::Local);
        }
        // An unknown cluster (not registered, no row): nothing is known to work.
        assert_eq!(flow(&names, &[("a", "b")], &[]).route("a", "zz"), Route::Relay);
    }

    #[test]
    fn an_edge_that_fell_back_is_relayed_whatever_the_matrix_says_but_local_stays_local() {
        let f = flow(&["a", "b"], &[("a", "b"), ("b", "a")], &[("p.child", "parent")]);
        assert_eq!(f.edge("p.child", "parent", "a", "b"), Route::Relay);
        assert_eq!(f.edge("p.child", "other", "a", "b"), Route::Pull);
        assert_eq!(f.edge("p.sibling", "parent", "a", "b"), Route::Pull);
        assert_eq!(f.edge("p.child", "parent", "a", "a"), Route::Local);
        assert_eq!(Route::Relay.mode(), atoll_api::jobs::InputMode::Relay);
        assert_eq!(Route::Push.mode(), atoll_api::jobs::InputMode::Direct);
    }
}
