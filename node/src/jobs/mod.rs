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
//! What to record, stop and start at each step is decided by [`plan`], pure; this module
//! gathers its inputs (the records, the runs, the lease answer, the capacity, the executor's
//! [`run::Capabilities`]) and carries each plan out: stops, then one Raft entry, then the starts.
//! The executors share only [`run`]; [`executor`] alone names them.
//!
//! Nothing is lost when the gateway is away: the records stay in Raft and are reported when it
//! answers again; runs go on. When the replica stops leading, the task is dropped: every process
//! run it started is killed with its process group, and the next leader finds them `started` in
//! an older term and reports them lost; Kubernetes Jobs keep running and the next leader adopts
//! them.

pub mod cgroups;
pub mod containers;
pub mod executor;
pub mod kubernetes;
pub mod plan;
pub mod process;
pub mod run;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use atoll_api::ErrorCode;
use atoll_api::client::ClientError;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::ids::JobId;
use atoll_api::ids::Term;
use atoll_api::jobs::Held;
use atoll_api::jobs::LeaseRequest;
use atoll_api::jobs::LeaseResponse;
use atoll_api::jobs::LogBatch;
use atoll_api::jobs::LogPiece;
use atoll_api::jobs::Report;
use atoll_api::jobs::ReportBatch;
use atoll_api::jobs::ReportResult;
use atoll_raft_store::Command;
use atoll_raft_store::CommandResponse;
use atoll_raft_store::jobs::JobOp;
use atoll_raft_store::jobs::JobRecord;
use executor::Executor;
use plan::How;
use plan::Launch;
use plan::Plan;
use plan::RunKey;
use plan::View;
use plan::held;
use run::Event;
use run::RunHandle;
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
                    let running = leader.running();
                    let plan = plan::lease(&leader.view(&records, &running), &answer);
                    leader.carry_out(&mut records, plan).await;
                    leader.fill(&mut records, Vec::new()).await;
                    let _ = held_tx.send(held(&records));
                    let _ = handled.send(());
                }
                Some(Err(end)) => return end,
                None => return std::future::pending().await,
            },
            Some(event) = events_rx.recv() => {
                let ends = leader.take_events(event, &mut events_rx, &mut pieces);
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
                        let running = leader.running();
                        let plan = plan::acknowledged(&leader.view(&records, &running), &reports, &results);
                        leader.carry_out(&mut records, plan).await;
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
            outstanding = offer(&out_tx, &records, &mut pieces);
        }
    }
}

/// Hands the outbox what the gateway has still to hear (the reports the records call for) and
/// the log pieces kept; true when it took them (pieces it refused are kept for the next offer).
fn offer(
    out: &mpsc::Sender<(Vec<LogPiece>, Vec<Report>)>,
    records: &BTreeMap<String, JobRecord>,
    pieces: &mut Vec<LogPiece>,
) -> bool {
    let reports = plan::reports(records);
    if reports.is_empty() && pieces.is_empty() {
        return false;
    }
    match out.try_send((std::mem::take(pieces), reports)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full((back, _)) | mpsc::error::TrySendError::Closed((back, _))) => {
            *pieces = back;
            false
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

struct Leader {
    replica: Arc<Replica>,
    executor: Executor,
    /// Most runs going at once (`jobs.max_running`).
    max_running: usize,
    term: Term,
    node: u64,
    runs: HashMap<RunKey, RunHandle>,
    /// When each run of `runs` started here (its duration, for the metrics).
    started: HashMap<RunKey, tokio::time::Instant>,
    events: mpsc::UnboundedSender<Event>,
    /// A Raft write failed; reconcile the runs with the applied state at the next tick.
    needs_resume: bool,
    /// Ends of runs whose recording failed, recorded again by the next resume.
    unrecorded_ends: Vec<JobOp>,
    /// Orders records mirrored here (accepted attempts start oldest first).
    seq: u64,
}

impl Leader {
    /// Takes `first` and the events waiting after it, at most [`EVENTS_PER_TURN`] in one turn:
    /// log pieces go to `pieces` (kept until shipped), outputs and ends come back as the Raft
    /// ops to record.
    fn take_events(
        &mut self,
        first: Event,
        events: &mut mpsc::UnboundedReceiver<Event>,
        pieces: &mut Vec<LogPiece>,
    ) -> Vec<JobOp> {
        let mut ends = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(event) = next {
            taken += 1;
            match event {
                // Kept until shipped: a run ships at most its log limit, so this is
                // bounded by the attempts held.
                Event::Log { job, attempt, seq, stream, data, at_ms } => {
                    if stream == atoll_api::jobs::LogStream::Marker {
                        self.replica.metrics.job_logs_truncated.inc();
                    }
                    pieces.push(LogPiece { job: JobId::from(job), attempt, seq, stream, data, at_ms });
                }
                Event::Output { job, attempt, output } => ends.push(JobOp::Output { job, attempt, output }),
                Event::Done { job, attempt, state, exit_code, message } => {
                    self.runs.remove(&(job.clone(), attempt));
                    if let Some(at) = self.started.remove(&(job.clone(), attempt)) {
                        self.replica.metrics.job_run_duration.observe(at.elapsed().as_secs_f64());
                    }
                    let label = crate::metrics::EndLabels { state: state.as_str() };
                    self.replica.metrics.job_runs_ended.get_or_create(&label).inc();
                    ends.push(JobOp::End { job, attempt, state, exit_code, message });
                }
            }
            next = if taken < EVENTS_PER_TURN { events.try_recv().ok() } else { None };
        }
        ends
    }

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

    /// What the plan is decided on.
    fn view<'a>(&self, records: &'a BTreeMap<String, JobRecord>, running: &'a HashSet<RunKey>) -> View<'a> {
        View {
            term: self.term,
            node: self.node,
            records,
            running,
            max_running: self.max_running,
            capabilities: self.executor.capabilities(),
        }
    }

    /// Take over the records of earlier terms.
    async fn resume(&mut self, records: &mut BTreeMap<String, JobRecord>) {
        let running = self.running();
        let plan = plan::resume(&self.view(records, &running), std::mem::take(&mut self.unrecorded_ends));
        if !plan.ops.is_empty() {
            tracing::info!(lost = plan.ops.len(), "runs of an earlier leader are lost; reporting them");
        }
        let adopted = plan.start.iter().filter(|launch| launch.how == How::Adopt).count();
        if adopted > 0 {
            tracing::info!(adopted, "adopting the runs of an earlier leader");
        }
        self.carry_out(records, plan).await;
    }

    /// Record `ops` together with the starts of accepted attempts, oldest first, while slots
    /// are free; then start those.
    async fn fill(&mut self, records: &mut BTreeMap<String, JobRecord>, ops: Vec<JobOp>) {
        let running = self.running();
        let plan = plan::fill(&self.view(records, &running), ops);
        self.carry_out(records, plan).await;
    }

    /// The runs going here.
    fn running(&self) -> HashSet<RunKey> {
        self.runs.keys().cloned().collect()
    }

    /// Stop what the plan stops; record its ops plus a start (this term, this node) for each
    /// run it starts, in one entry; then start or adopt those runs.
    async fn carry_out(&mut self, records: &mut BTreeMap<String, JobRecord>, plan: Plan) {
        let Plan { stop, mut ops, mut start } = plan;
        for (key, why) in stop {
            match why {
                // Forgotten: dropping the handle ends the run.
                Stop::Drop => {
                    if let Some(mut run) = self.runs.remove(&key) {
                        run.stop(Stop::Drop);
                    }
                }
                // Kept until its end arrives.
                Stop::Cancel => {
                    if let Some(run) = self.runs.get_mut(&key) {
                        run.stop(Stop::Cancel);
                    }
                }
            }
        }
        for launch in &mut start {
            let executor = &self.executor;
            let handle = executor.handle_name(&launch.record.job, launch.record.attempt);
            ops.push(launch.start_op(self.term, self.node, handle, || executor.new_secret()));
        }
        if !self.commit(records, ops).await {
            return;
        }
        for Launch { record: r, how } in start {
            if self.runs.contains_key(&(r.job.clone(), r.attempt)) {
                continue;
            }
            let request = match plan::request(&r) {
                Ok(request) => request,
                Err(message) => {
                    let _ = self.events.send(Event::error(&r.job, r.attempt, message));
                    continue;
                }
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
        metrics.job_runs_queued.set(plan::queued(records, &self.running()) as i64);
    }
}

/// Long-poll the gateway with what the cluster holds; hand each non-empty answer over and wait
/// until it is handled (so the next poll says what is held now). A poll may go to any gateway
/// replica: the client moves to the next when the one in use fails, at once when it dies under
/// the poll (its connection is reset), so an error here means no replica answered.
async fn lease_forever(
    gateway: GatewayClient,
    cluster: String,
    term: Term,
    held: watch::Receiver<Vec<Held>>,
    answers: mpsc::Sender<Result<Leased, DutyEnd>>,
) {
    let mut quiet = None::<tokio::time::Instant>;
    loop {
        let request = LeaseRequest { term, held: held.borrow().clone(), wait_ms: LEASE_WAIT.as_millis() as u64 };
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
            let batch = LogBatch { term, pieces: unshipped.drain(..count).collect() };
            if let Err(e) = gateway.ship_logs(&cluster, &batch).await {
                for piece in batch.pieces.into_iter().rev() {
                    unshipped.push_front(piece);
                }
                result = Err(e);
                break;
            }
        }
        if result.is_ok() && !reports.is_empty() {
            result = gateway.report(&cluster, &ReportBatch { term, reports: reports.clone() }).await.map(|r| r.results);
        }
        if sent.send(Sent { reports, result }).await.is_err() {
            return;
        }
    }
}
