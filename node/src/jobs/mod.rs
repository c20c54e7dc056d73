//! Jobs on a cluster: what its leader does with the work the gateway binds to it.
//!
//! For one term, the leader:
//! 1. **resumes** from the replicated records: an attempt recorded but never started is started;
//!    one started in an earlier term (by a replica that is gone or no longer leads) is adopted
//!    where its run outlives its leader (a Kubernetes Job), else recorded `lost`, so the gateway
//!    runs it again as a new attempt; ended ones are reported;
//! 2. **leases**: long-polls the gateway with every attempt it holds; the answer says what to
//!    start, cancel or drop. New attempts are recorded in Raft (accepted and started, one entry
//!    for the whole answer) before any process starts;
//! 3. **runs** them on the cluster's [`executor`] ([`process`] or [`kubernetes`]), and records
//!    each end in Raft before reporting it;
//! 4. **reports** every change the gateway has not acknowledged, in batches, after the Raft
//!    commit; an acknowledged final report (or a refused one) lets the record go. Output pieces
//!    are shipped before the reports that follow them.
//!
//! Nothing is lost when the gateway is away: the records stay in Raft and are reported when it
//! answers again; runs go on. When the replica stops leading, the task is dropped: every process
//! run it started is killed with its process group, and the next leader finds them `started` in
//! an older term and reports them lost; Kubernetes Jobs keep running and the next leader adopts
//! them.

pub mod cgroups;
pub mod executor;
pub mod kubernetes;
pub mod process;
pub mod run;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use atoll_api::ErrorCode;
use atoll_api::client::ClientError;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::ids::Term;
use atoll_api::jobs::AssignedInput;
use atoll_api::jobs::Held;
use atoll_api::jobs::LeaseRequest;
use atoll_api::jobs::LeaseResponse;
use atoll_api::jobs::LogBatch;
use atoll_api::jobs::LogPiece;
use atoll_api::jobs::OutputInfo;
use atoll_api::jobs::Report;
use atoll_api::jobs::ReportBatch;
use atoll_api::jobs::ReportOutcome;
use atoll_api::jobs::ReportResult;
use atoll_api::jobs::ReportedState;
use atoll_api::spec::JobSpec;
use atoll_raft_store::Command;
use atoll_raft_store::CommandResponse;
use atoll_raft_store::jobs::EndState;
use atoll_raft_store::jobs::JobOp;
use atoll_raft_store::jobs::JobRecord;
use atoll_raft_store::jobs::RunState;
use executor::Executor;
use run::Event;
use run::RunHandle;
use run::RunRequest;
use run::Stop;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::watch;

use crate::duty::DutyEnd;
use crate::duty::ended_by;
use crate::raft::Replica;

/// How long a lease may wait at the gateway.
pub const LEASE_WAIT: Duration = Duration::from_secs(20);
/// Pause after a failed call to the gateway.
const BACKOFF: Duration = Duration::from_millis(500);
/// Most run events taken in one turn of the leader's loop: a run printing at full speed must not
/// keep the loop (and the runtime thread under it) from everything else.
const EVENTS_PER_TURN: usize = 64;
/// Most bytes of log data in one request to the gateway (well under its body limit), so no
/// single request, nor its encoding, grows with a noisy run.
const LOG_BATCH_BYTES: usize = 1024 * 1024;

/// An answer from the gateway, and a way to say it was handled.
struct Leased {
    answer: LeaseResponse,
    handled: oneshot::Sender<()>,
}

/// What the outbox did with a batch.
struct Sent {
    reports: Vec<Report>,
    result: Result<Vec<ReportResult>, ClientError>,
}

/// The leader's job duties for `term`, until fenced, revoked or dropped.
pub async fn lead(
    replica: Arc<Replica>,
    gateway: GatewayClient,
    leases: GatewayClient,
    executor: Executor,
    transfers: Arc<crate::transfers::Transfers>,
    max_running: usize,
    term: Term,
) -> DutyEnd {
    let cluster = replica.info().cluster.to_string();
    let node = replica.info().node_id;
    let mut records: BTreeMap<String, JobRecord> = match replica.jobs() {
        Ok(records) => records.into_iter().map(|r| (r.job.clone(), r)).collect(),
        Err(e) => {
            tracing::error!(error = %e, "reading the held jobs failed; job duties wait for the next term");
            return std::future::pending().await;
        }
    };
    let (held_tx, held_rx) = watch::channel(held(&records));
    let (lease_tx, mut lease_rx) = mpsc::channel::<Result<Leased, DutyEnd>>(1);
    let lease_task = tokio::spawn(lease_forever(leases, cluster.clone(), term, held_rx, lease_tx));
    let _lease_guard = AbortOnDrop(lease_task);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<Event>();
    let (out_tx, out_rx) = mpsc::channel::<(Vec<LogPiece>, Vec<Report>)>(1);
    let (sent_tx, mut sent_rx) = mpsc::channel::<Sent>(1);
    let outbox = tokio::spawn(outbox_forever(gateway, cluster.clone(), term, out_rx, sent_tx));
    let _outbox_guard = AbortOnDrop(outbox);
    let _counts_guard = RunCountsOnDrop(replica.clone());

    let mut leader = Leader {
        replica: replica.clone(),
        executor: executor.clone(),
        max_running,
        term,
        node,
        runs: HashMap::new(),
        started: HashMap::new(),
        events: events_tx,
        needs_resume: false,
        unrecorded_ends: Vec::new(),
        seq: u64::MAX / 2,
    };
    leader.resume(&mut records).await;
    let _ = held_tx.send(held(&records));
    executor.sweep(replica);
    tracing::info!(term = term.0, held = records.len(), "job duties started");

    let mut pieces: Vec<LogPiece> = Vec::new();
    let mut outstanding = false;
    let mut retry_at = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            leased = lease_rx.recv() => match leased {
                Some(Ok(Leased { mut answer, handled })) => {
                    for task in std::mem::take(&mut answer.send) {
                        transfers.send(task);
                    }
                    leader.apply_lease(&mut records, answer).await;
                    leader.fill(&mut records, Vec::new()).await;
                    let _ = held_tx.send(held(&records));
                    let _ = handled.send(());
                }
                Some(Err(end)) => return end,
                None => return std::future::pending().await,
            },
            Some(event) = events_rx.recv() => {
                let mut ends = Vec::new();
                let mut next = Some(event);
                let mut taken = 0;
                while let Some(event) = next {
                    taken += 1;
                    match event {
                        // Kept until shipped: a run ships at most its log limit, so this is
                        // bounded by the attempts held.
                        Event::Log { job, attempt, seq, stream, data, at_ms } => {
                            if stream == atoll_api::jobs::LogStream::Marker {
                                leader.replica.metrics.job_logs_truncated.inc();
                            }
                            pieces.push(LogPiece { job, attempt, seq, stream, data, at_ms });
                        }
                        Event::Output { job, attempt, output } => ends.push(JobOp::Output { job, attempt, output }),
                        Event::Done { job, attempt, state, exit_code, message } => {
                            leader.runs.remove(&(job.clone(), attempt));
                            if let Some(at) = leader.started.remove(&(job.clone(), attempt)) {
                                leader.replica.metrics.job_run_duration.observe(at.elapsed().as_secs_f64());
                            }
                            let label = crate::metrics::EndLabels { state: state.as_str() };
                            leader.replica.metrics.job_runs_ended.get_or_create(&label).inc();
                            ends.push(JobOp::End { job, attempt, state, exit_code, message });
                        }
                    }
                    next = if taken < EVENTS_PER_TURN { events_rx.try_recv().ok() } else { None };
                }
                if !ends.is_empty() {
                    // The ends and the starts of the attempts taking their slots: one entry.
                    leader.fill(&mut records, ends).await;
                    let _ = held_tx.send(held(&records));
                }
            },
            sent = sent_rx.recv() => {
                outstanding = false;
                let Some(Sent { reports, result }) = sent else { return std::future::pending().await };
                match result {
                    Ok(results) => {
                        let ops = leader.acknowledged(&reports, &results);
                        leader.fill(&mut records, ops).await;
                        let _ = held_tx.send(held(&records));
                    }
                    Err(e) => match ended_by(&e, term) {
                        Some(end) => return end,
                        None => {
                            tracing::debug!(error = %e, "reporting to the gateway failed; kept for the next try");
                            retry_at = tokio::time::Instant::now() + BACKOFF;
                        }
                    },
                }
            },
            _ = tick.tick() => {
                if leader.needs_resume {
                    // A Raft write failed: take the applied state as it is now.
                    leader.needs_resume = false;
                    leader.resume(&mut records).await;
                    let _ = held_tx.send(held(&records));
                }
            }
        }
        leader.count_runs(&records);
        if !outstanding && tokio::time::Instant::now() >= retry_at {
            let reports = pending_reports(&records);
            if !reports.is_empty() || !pieces.is_empty() {
                match out_tx.try_send((std::mem::take(&mut pieces), reports)) {
                    Ok(()) => outstanding = true,
                    Err(mpsc::error::TrySendError::Full((back, _)) | mpsc::error::TrySendError::Closed((back, _))) => {
                        pieces = back
                    }
                }
            }
        }
    }
}

/// Sets the run gauges to zero when the duties end: a replica that no longer leads runs nothing.
struct RunCountsOnDrop(Arc<Replica>);

impl Drop for RunCountsOnDrop {
    fn drop(&mut self) {
        self.0.metrics.job_runs_running.set(0);
        self.0.metrics.job_runs_queued.set(0);
    }
}

/// Aborts a task when dropped (the job duties end with their term).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn held(records: &BTreeMap<String, JobRecord>) -> Vec<Held> {
    records.values().map(|r| Held { job: r.job.clone(), attempt: r.attempt }).collect()
}

/// What the gateway has still to hear, in record order.
fn pending_reports(records: &BTreeMap<String, JobRecord>) -> Vec<Report> {
    records
        .values()
        .filter_map(|r| {
            let (state, exit_code, message, output) = match &r.run {
                RunState::Accepted => return None,
                RunState::Started { .. } if r.running_acked => return None,
                RunState::Started { .. } => (ReportedState::Running, None, None, None),
                RunState::Ended { state, exit_code, message } => (
                    reported(*state),
                    *exit_code,
                    message.clone(),
                    r.output.as_ref().map(|o| OutputInfo { digest: o.digest.clone(), size: o.size }),
                ),
            };
            Some(Report { job: r.job.clone(), attempt: r.attempt, state, exit_code, message, output })
        })
        .collect()
}

fn reported(state: EndState) -> ReportedState {
    match state {
        EndState::Finished => ReportedState::Finished,
        EndState::Failure => ReportedState::Failure,
        EndState::Error => ReportedState::Error,
        EndState::Unstable => ReportedState::Unstable,
        EndState::Killed => ReportedState::Killed,
        EndState::Lost => ReportedState::Lost,
    }
}

struct Leader {
    replica: Arc<Replica>,
    executor: Executor,
    /// Most runs going at once (`jobs.max_running`).
    max_running: usize,
    term: Term,
    node: u64,
    runs: HashMap<(String, u32), RunHandle>,
    /// When each run of `runs` started here (its duration, for the metrics).
    started: HashMap<(String, u32), tokio::time::Instant>,
    events: mpsc::UnboundedSender<Event>,
    /// A Raft write failed; reconcile the runs with the applied state at the next tick.
    needs_resume: bool,
    /// Ends of runs whose recording failed, recorded again by the next resume.
    unrecorded_ends: Vec<JobOp>,
    /// Orders records mirrored here (accepted attempts start oldest first).
    seq: u64,
}

impl Leader {
    /// Commit `ops` in one Raft entry and mirror them; on failure the mirror is reloaded from
    /// the applied state (the entry may still commit) and the runs reconciled with it.
    async fn commit(&mut self, records: &mut BTreeMap<String, JobRecord>, ops: Vec<JobOp>) -> bool {
        if ops.is_empty() {
            return true;
        }
        match self.replica.propose_local(Command::Jobs { ops: ops.clone() }).await {
            Ok(CommandResponse::JobsApplied { .. }) => {
                for op in &ops {
                    self.seq += 1;
                    let (next, changed) = op.apply(records.get(op.job()), self.seq);
                    if changed {
                        match next {
                            Some(record) => records.insert(record.job.clone(), record),
                            None => records.remove(op.job()),
                        };
                    }
                }
                true
            }
            other => {
                tracing::warn!(result = ?other, "recording job changes in Raft failed; reloading the held jobs");
                // Ends are known only here once their runs are gone: keep them for the next try,
                // or the reload would find the attempts started, and run or adopt them again.
                self.unrecorded_ends.extend(ops.into_iter().filter(|op| matches!(op, JobOp::End { .. })));
                tokio::time::sleep(BACKOFF).await;
                if let Ok(applied) = self.replica.jobs() {
                    *records = applied.into_iter().map(|r| (r.job.clone(), r)).collect();
                }
                self.needs_resume = true;
                false
            }
        }
    }

    /// Take over the records of earlier terms.
    async fn resume(&mut self, records: &mut BTreeMap<String, JobRecord>) {
        let adopts = self.executor.capabilities().adopts_running;
        // First the ends this leader saw but could not record (applying one twice changes nothing).
        let mut ops = std::mem::take(&mut self.unrecorded_ends);
        let ended: std::collections::HashSet<(String, u32)> =
            ops.iter().map(|op| (op.job().to_string(), op.attempt())).collect();
        let mut start = Vec::new();
        for r in records.values() {
            if ended.contains(&(r.job.clone(), r.attempt)) {
                continue;
            }
            let ours = self.runs.contains_key(&(r.job.clone(), r.attempt));
            match &r.run {
                RunState::Accepted if r.cancel => ops.push(end(r, EndState::Killed, "cancelled before it started")),
                RunState::Accepted => start.push((r.clone(), How::Start)),
                // A run that outlives its leader (a cancelled one is deleted on adoption).
                RunState::Started { .. } if adopts && !ours => start.push((r.clone(), How::Adopt)),
                RunState::Started { term, node, .. } if *term != self.term.0 || *node != self.node => ops.push(end(
                    r,
                    EndState::Lost,
                    &format!("its run was started by node {node} in term {term}, which no longer leads"),
                )),
                RunState::Started { .. } if !ours => ops.push(end(r, EndState::Lost, "its run is gone")),
                _ => {}
            }
        }
        if !ops.is_empty() {
            tracing::info!(lost = ops.len(), "runs of an earlier leader are lost; reporting them");
        }
        let adopted = start.iter().filter(|(_, how)| *how == How::Adopt).count();
        if adopted > 0 {
            tracing::info!(adopted, "adopting the runs of an earlier leader");
        }
        self.start_all(records, start, ops).await;
    }

    /// Record `ops`, plus a start (this term, this node) for each of `start`, then start or
    /// adopt those runs.
    async fn start_all(
        &mut self,
        records: &mut BTreeMap<String, JobRecord>,
        start: Vec<(JobRecord, How)>,
        mut ops: Vec<JobOp>,
    ) {
        let mut start = start;
        for (r, how) in &mut start {
            // An adopted run keeps its secret: its pod shows the one it was created with.
            let secret = match (&*how, &r.run) {
                (How::Adopt, RunState::Started { secret: Some(secret), .. }) => Some(secret.clone()),
                _ => self.executor.new_secret(),
            };
            ops.push(JobOp::Start {
                job: r.job.clone(),
                attempt: r.attempt,
                term: self.term.0,
                node: self.node,
                handle: self.executor.handle_name(&r.job, r.attempt),
                secret: secret.clone(),
            });
            r.run = RunState::Started { term: self.term.0, node: self.node, handle: None, secret };
        }
        if !self.commit(records, ops).await {
            return;
        }
        for (r, how) in start {
            if self.runs.contains_key(&(r.job.clone(), r.attempt)) {
                continue;
            }
            let spec: JobSpec = match serde_json::from_str(&r.spec) {
                Ok(spec) => spec,
                Err(e) => {
                    let _ = self.events.send(Event::Done {
                        job: r.job.clone(),
                        attempt: r.attempt,
                        state: EndState::Error,
                        exit_code: None,
                        message: Some(format!("the recorded spec is unreadable: {e}")),
                    });
                    continue;
                }
            };
            let inputs = if r.inputs.is_empty() {
                Ok(Vec::new())
            } else {
                serde_json::from_str::<Vec<AssignedInput>>(&r.inputs)
            };
            let inputs = match inputs {
                Ok(inputs) => inputs,
                Err(e) => {
                    let message = format!("the recorded inputs are unreadable: {e}");
                    let _ = self.events.send(Event::error(&r.job, r.attempt, message));
                    continue;
                }
            };
            let secret = match &r.run {
                RunState::Started { secret, .. } => secret.clone(),
                _ => None,
            };
            let request = RunRequest {
                job: r.job.clone(),
                pipeline: r.pipeline.clone(),
                attempt: r.attempt,
                spec,
                inputs,
                secret,
            };
            let mut handle = match how {
                How::Start => self.executor.start(request, self.events.clone()),
                How::Adopt => match self.executor.adopt(request, self.events.clone()) {
                    Some(handle) => handle,
                    None => continue,
                },
            };
            if r.cancel {
                handle.stop(Stop::Cancel);
            }
            self.started.insert((r.job.clone(), r.attempt), tokio::time::Instant::now());
            self.runs.insert((r.job, r.attempt), handle);
        }
    }

    /// The runs going and the attempts waiting for a slot, for the metrics.
    fn count_runs(&self, records: &BTreeMap<String, JobRecord>) {
        let metrics = &self.replica.metrics;
        metrics.job_runs_running.set(self.runs.len() as i64);
        let queued = records
            .values()
            .filter(|r| matches!(r.run, RunState::Accepted) && !self.runs.contains_key(&(r.job.clone(), r.attempt)))
            .count();
        metrics.job_runs_queued.set(queued as i64);
    }

    /// Record `ops` together with the starts of accepted attempts, oldest first, while slots
    /// are free; then start those.
    async fn fill(&mut self, records: &mut BTreeMap<String, JobRecord>, ops: Vec<JobOp>) {
        let free = self.max_running.saturating_sub(self.runs.len());
        if free == 0 {
            self.commit(records, ops).await;
            return;
        }
        let mut waiting: Vec<&JobRecord> = records
            .values()
            .filter(|r| {
                matches!(r.run, RunState::Accepted) && !r.cancel && !self.runs.contains_key(&(r.job.clone(), r.attempt))
            })
            .collect();
        if waiting.is_empty() {
            self.commit(records, ops).await;
            return;
        }
        waiting.sort_by_key(|r| r.revision);
        let start: Vec<(JobRecord, How)> = waiting.into_iter().take(free).map(|r| (r.clone(), How::Start)).collect();
        self.start_all(records, start, ops).await;
    }

    async fn apply_lease(&mut self, records: &mut BTreeMap<String, JobRecord>, answer: LeaseResponse) {
        // Drops first: the attempt moved away or ended; stop it, forget it, report nothing.
        let mut ops = Vec::new();
        for drop in &answer.drop {
            if let Some(mut run) = self.runs.remove(&(drop.job.clone(), drop.attempt)) {
                tracing::info!(job = %drop.job, attempt = drop.attempt, reason = %drop.reason, "stopping a run the gateway moved away");
                run.stop(Stop::Drop);
            }
            ops.push(JobOp::Forget { job: drop.job.clone(), attempt: drop.attempt });
        }
        let cancels: std::collections::HashSet<(String, u32)> =
            answer.cancel.iter().map(|h| (h.job.clone(), h.attempt)).collect();
        let mut start = Vec::new();
        for a in answer.assign {
            let spec = match serde_json::to_string(&a.spec) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::error!(job = %a.job, error = %e, "cannot record an assignment");
                    continue;
                }
            };
            if records.get(&a.job).is_some_and(|r| r.attempt >= a.attempt) {
                continue;
            }
            let inputs = if a.inputs.is_empty() {
                String::new()
            } else {
                match serde_json::to_string(&a.inputs) {
                    Ok(inputs) => inputs,
                    Err(e) => {
                        tracing::error!(job = %a.job, error = %e, "cannot record an assignment's inputs");
                        continue;
                    }
                }
            };
            ops.push(JobOp::Accept {
                job: a.job.clone(),
                pipeline: a.pipeline.clone(),
                attempt: a.attempt,
                spec: spec.clone(),
                inputs: inputs.clone(),
            });
            if cancels.contains(&(a.job.clone(), a.attempt)) {
                ops.push(JobOp::Cancel { job: a.job.clone(), attempt: a.attempt });
                ops.push(JobOp::End {
                    job: a.job,
                    attempt: a.attempt,
                    state: EndState::Killed,
                    exit_code: None,
                    message: Some("cancelled before it started".to_string()),
                });
                continue;
            }
            // Started in the same entry while slots are free; the rest wait, accepted, for
            // `fill` to start them as runs end.
            if self.runs.len() + start.len() < self.max_running {
                let record = JobRecord {
                    job: a.job,
                    pipeline: a.pipeline,
                    attempt: a.attempt,
                    spec,
                    inputs,
                    run: RunState::Accepted,
                    cancel: false,
                    running_acked: false,
                    revision: 0,
                    output: None,
                };
                start.push((record, How::Start));
            }
        }
        for h in &answer.cancel {
            let Some(r) = records.get(&h.job).filter(|r| r.attempt == h.attempt) else { continue };
            if r.cancel {
                continue;
            }
            ops.push(JobOp::Cancel { job: h.job.clone(), attempt: h.attempt });
            match self.runs.get_mut(&(h.job.clone(), h.attempt)) {
                Some(run) => run.stop(Stop::Cancel),
                None if !matches!(r.run, RunState::Ended { .. }) => ops.push(JobOp::End {
                    job: h.job.clone(),
                    attempt: h.attempt,
                    state: EndState::Killed,
                    exit_code: None,
                    message: Some("cancelled".to_string()),
                }),
                None => {}
            }
        }
        if !start.is_empty() {
            tracing::debug!(jobs = start.len(), "starting leased jobs");
        }
        self.start_all(records, start, ops).await;
    }

    /// The gateway answered a report batch: what to record.
    fn acknowledged(&mut self, reports: &[Report], results: &[ReportResult]) -> Vec<JobOp> {
        let mut ops = Vec::new();
        for (report, result) in reports.iter().zip(results) {
            match (result.outcome, report.state) {
                (ReportOutcome::Accepted | ReportOutcome::Duplicate, ReportedState::Running) => {
                    ops.push(JobOp::RunningAcked { job: report.job.clone(), attempt: report.attempt })
                }
                (ReportOutcome::Accepted | ReportOutcome::Duplicate, _) => {
                    ops.push(JobOp::Forget { job: report.job.clone(), attempt: report.attempt })
                }
                (ReportOutcome::Refused, _) => {
                    tracing::warn!(job = %report.job, attempt = report.attempt, reason = ?result.reason, "the gateway refused a report; stopping the attempt");
                    if let Some(mut run) = self.runs.remove(&(report.job.clone(), report.attempt)) {
                        run.stop(Stop::Drop);
                    }
                    ops.push(JobOp::Forget { job: report.job.clone(), attempt: report.attempt });
                }
            }
        }
        ops
    }
}

/// Whether a run is new or an earlier leader's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How {
    Start,
    Adopt,
}

fn end(r: &JobRecord, state: EndState, message: &str) -> JobOp {
    JobOp::End { job: r.job.clone(), attempt: r.attempt, state, exit_code: None, message: Some(message.to_string()) }
}

/// Long-poll the gateway with what the cluster holds; hand each non-empty answer over and wait
/// until it is handled (so the next poll says what is held now).
async fn lease_forever(
    gateway: GatewayClient,
    cluster: String,
    term: Term,
    held: watch::Receiver<Vec<Held>>,
    answers: mpsc::Sender<Result<Leased, DutyEnd>>,
) {
    let mut quiet = None::<tokio::time::Instant>;
    loop {
        let request =
            LeaseRequest { term: term.0, held: held.borrow().clone(), wait_ms: LEASE_WAIT.as_millis() as u64 };
        match gateway.lease(&cluster, &request).await {
            Ok(answer) if answer.is_empty() => {}
            Ok(answer) => {
                let (handled, done) = oneshot::channel();
                if answers.send(Ok(Leased { answer, handled })).await.is_err() {
                    return;
                }
                let _ = done.await;
            }
            Err(e) => {
                if let Some(end) = ended_by(&e, term) {
                    let _ = answers.send(Err(end)).await;
                    return;
                }
                if e.code() == Some(ErrorCode::Conflict) {
                    // The first heartbeat of the term has not reached the gateway yet.
                    tracing::debug!(error = %e, "the gateway does not know this term yet; asking again");
                } else if quiet.is_none_or(|at: tokio::time::Instant| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "asking the gateway for work failed; held jobs keep running, retrying");
                    quiet = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}

/// Ship log pieces, then the reports that follow them; answer each batch.
async fn outbox_forever(
    gateway: GatewayClient,
    cluster: String,
    term: Term,
    mut batches: mpsc::Receiver<(Vec<LogPiece>, Vec<Report>)>,
    sent: mpsc::Sender<Sent>,
) {
    let mut unshipped: std::collections::VecDeque<LogPiece> = std::collections::VecDeque::new();
    while let Some((pieces, reports)) = batches.recv().await {
        unshipped.extend(pieces);
        let mut result = Ok(Vec::new());
        // In requests of at most LOG_BATCH_BYTES, oldest first; what fails stays, in order.
        while !unshipped.is_empty() {
            let mut size = 0;
            let mut count = 0;
            for piece in &unshipped {
                if count > 0 && size + piece.data.len() > LOG_BATCH_BYTES {
                    break;
                }
                size += piece.data.len();
                count += 1;
            }
            let batch = LogBatch { term: term.0, pieces: unshipped.drain(..count).collect() };
            if let Err(e) = gateway.ship_logs(&cluster, &batch).await {
                for piece in batch.pieces.into_iter().rev() {
                    unshipped.push_front(piece);
                }
                result = Err(e);
                break;
            }
        }
        if result.is_ok() && !reports.is_empty() {
            result = gateway
                .report(&cluster, &ReportBatch { term: term.0, reports: reports.clone() })
                .await
                .map(|r| r.results);
        }
        if sent.send(Sent { reports, result }).await.is_err() {
            return;
        }
    }
}
