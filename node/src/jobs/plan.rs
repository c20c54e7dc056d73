//! The leader's job decisions, pure: given what it knows ([`View`]: the replicated attempt
//! records, the runs going here, the capacity, what the executor can do) and what happened (a
//! term began, a lease answer came, runs ended, the gateway answered reports), a [`Plan`]: the
//! runs to stop, the changes to record in Raft (one entry), and the runs to start or adopt once
//! that entry is committed. The leader's loop ([`super`]) gathers the inputs, asks here, and
//! carries the plan out in that order: stops, then the Raft entry, then the starts. Nothing here
//! does IO (it may log what it decided).
//!
//! Also the reports the gateway has still to hear ([`reports`]) and what a lease says is held
//! ([`held`]), both read from the records.

use std::collections::BTreeMap;
use std::collections::HashSet;

use atoll_api::ids::JobId;
use atoll_api::ids::Term;
use atoll_api::jobs::AssignedInput;
use atoll_api::jobs::Held;
use atoll_api::jobs::LeaseResponse;
use atoll_api::jobs::OutputInfo;
use atoll_api::jobs::Report;
use atoll_api::jobs::ReportOutcome;
use atoll_api::jobs::ReportResult;
use atoll_api::jobs::ReportedState;
use atoll_api::spec::JobSpec;
use atoll_raft_store::jobs::EndState;
use atoll_raft_store::jobs::JobOp;
use atoll_raft_store::jobs::JobRecord;
use atoll_raft_store::jobs::RunState;

use super::run::Capabilities;
use super::run::RunRequest;
use super::run::Stop;

/// A run of an attempt: its job and attempt number.
pub type RunKey = (String, u32);

/// What the leader knows when it decides.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The term it leads in, and its node id: recorded with each start.
    pub term: Term,
    pub node: u64,
    /// The attempts the cluster holds (the applied Raft state, mirrored), by job.
    pub records: &'a BTreeMap<String, JobRecord>,
    /// The runs going on this replica.
    pub running: &'a HashSet<RunKey>,
    /// Most runs going at once (`jobs.max_running`).
    pub max_running: usize,
    /// What the cluster's executor can do.
    pub capabilities: Capabilities,
}

/// Whether a run is new or an earlier leader's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    Start,
    Adopt,
}

/// A run to start or adopt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub record: JobRecord,
    pub how: How,
}

/// What to do, in this order: stop `stop`, record `ops` together with a start of each of
/// `start` in one Raft entry, then (once committed) start or adopt those runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `Stop::Drop`: the run is stopped and forgotten (nothing reported); `Stop::Cancel`: it is
    /// stopped and kept until its end arrives.
    pub stop: Vec<(RunKey, Stop)>,
    pub ops: Vec<JobOp>,
    pub start: Vec<Launch>,
}

impl Launch {
    /// The op that records this run's start by `node` in `term` under the executor's `handle`,
    /// and the record marked started. An adopted run keeps its secret (its pod shows the one it
    /// was created with); any other takes `fresh_secret()`.
    pub fn start_op(
        &mut self,
        term: Term,
        node: u64,
        handle: Option<String>,
        fresh_secret: impl FnOnce() -> Option<String>,
    ) -> JobOp {
        let r = &mut self.record;
        let secret = match (self.how, &r.run) {
            (How::Adopt, RunState::Started { secret: Some(secret), .. }) => Some(secret.clone()),
            _ => fresh_secret(),
        };
        r.run = RunState::Started { term: term.0, node, handle: handle.clone(), secret: secret.clone() };
        JobOp::Start { job: r.job.clone(), attempt: r.attempt, term: term.0, node, handle, secret }
    }
}

/// A new term: take over the records of earlier terms. Ends this leader saw but could not
/// record (`unrecorded`) come first and are recorded again; an accepted attempt is started (or
/// ended `killed` if cancelled); a started one is adopted where runs outlive their leader, else
/// ended `lost` unless it is this leader's own run going here.
pub fn resume(view: &View<'_>, unrecorded: Vec<JobOp>) -> Plan {
    let adopts = view.capabilities.adopts_running;
    // Applying an end twice changes nothing.
    let mut ops = unrecorded;
    let ended: HashSet<RunKey> = ops.iter().map(|op| (op.job().to_string(), op.attempt())).collect();
    let mut start = Vec::new();
    for r in view.records.values() {
        let key = (r.job.clone(), r.attempt);
        if ended.contains(&key) {
            continue;
        }
        let ours = view.running.contains(&key);
        match &r.run {
            RunState::Accepted if r.cancel => ops.push(end(r, EndState::Killed, "cancelled before it started")),
            RunState::Accepted => start.push(Launch { record: r.clone(), how: How::Start }),
            // A run that outlives its leader (a cancelled one is deleted on adoption).
            RunState::Started { .. } if adopts && !ours => start.push(Launch { record: r.clone(), how: How::Adopt }),
            RunState::Started { term, node, .. } if *term != view.term.0 || *node != view.node => ops.push(end(
                r,
                EndState::Lost,
                &format!("its run was started by node {node} in term {term}, which no longer leads"),
            )),
            RunState::Started { .. } if !ours => ops.push(end(r, EndState::Lost, "its run is gone")),
            _ => {}
        }
    }
    Plan { stop: Vec::new(), ops, start }
}

/// Record `ops` together with the starts of accepted attempts, oldest first, while slots are
/// free.
pub fn fill(view: &View<'_>, ops: Vec<JobOp>) -> Plan {
    let free = view.max_running.saturating_sub(view.running.len());
    let mut waiting: Vec<&JobRecord> = if free == 0 {
        Vec::new()
    } else {
        view.records
            .values()
            .filter(|r| {
                matches!(r.run, RunState::Accepted) && !r.cancel && !view.running.contains(&(r.job.clone(), r.attempt))
            })
            .collect()
    };
    waiting.sort_by_key(|r| r.revision);
    let start = waiting.into_iter().take(free).map(|r| Launch { record: r.clone(), how: How::Start }).collect();
    Plan { stop: Vec::new(), ops, start }
}

/// A lease answer: drops first (the attempt moved away or ended: stop its run, forget it,
/// report nothing), then new attempts (accepted; started in the same entry while slots are
/// free, the rest wait for [`fill`]; one cancelled in the same answer ends `killed`), then
/// cancels of held attempts (a run going here is stopped and reports its end; one not going
/// ends `killed` now).
pub fn lease(view: &View<'_>, answer: &LeaseResponse) -> Plan {
    let mut running = view.running.clone();
    let mut stop = Vec::new();
    let mut ops = Vec::new();
    for drop in &answer.drop {
        let key = (drop.job.to_string(), drop.attempt);
        if running.remove(&key) {
            tracing::info!(job = %drop.job, attempt = drop.attempt, reason = %drop.reason, "stopping a run the gateway moved away");
            stop.push((key, Stop::Drop));
        }
        ops.push(JobOp::Forget { job: drop.job.to_string(), attempt: drop.attempt });
    }
    let cancels: HashSet<RunKey> = answer.cancel.iter().map(|h| (h.job.to_string(), h.attempt)).collect();
    let mut start = Vec::new();
    for a in &answer.assign {
        let spec = match serde_json::to_string(&a.spec) {
            Ok(spec) => spec,
            Err(e) => {
                tracing::error!(job = %a.job, error = %e, "cannot record an assignment");
                continue;
            }
        };
        if view.records.get(a.job.as_str()).is_some_and(|r| r.attempt >= a.attempt) {
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
            job: a.job.to_string(),
            pipeline: a.pipeline.clone(),
            attempt: a.attempt,
            spec: spec.clone(),
            inputs: inputs.clone(),
        });
        if cancels.contains(&(a.job.to_string(), a.attempt)) {
            ops.push(JobOp::Cancel { job: a.job.to_string(), attempt: a.attempt });
            ops.push(JobOp::End {
                job: a.job.to_string(),
                attempt: a.attempt,
                state: EndState::Killed,
                exit_code: None,
                message: Some("cancelled before it started".to_string()),
            });
            continue;
        }
        if running.len() + start.len() < view.max_running {
            let record = JobRecord {
                job: a.job.to_string(),
                pipeline: a.pipeline.clone(),
                attempt: a.attempt,
                spec,
                inputs,
                run: RunState::Accepted,
                cancel: false,
                running_acked: false,
                revision: 0,
                output: None,
            };
            start.push(Launch { record, how: How::Start });
        }
    }
    for h in &answer.cancel {
        let Some(r) = view.records.get(h.job.as_str()).filter(|r| r.attempt == h.attempt) else { continue };
        if r.cancel {
            continue;
        }
        ops.push(JobOp::Cancel { job: h.job.to_string(), attempt: h.attempt });
        let key = (h.job.to_string(), h.attempt);
        if running.contains(&key) {
            stop.push((key, Stop::Cancel));
        } else if !matches!(r.run, RunState::Ended { .. }) {
            ops.push(JobOp::End {
                job: h.job.to_string(),
                attempt: h.attempt,
                state: EndState::Killed,
                exit_code: None,
                message: Some("cancelled".to_string()),
            });
        }
    }
    if !start.is_empty() {
        tracing::debug!(jobs = start.len(), "starting leased jobs");
    }
    Plan { stop, ops, start }
}

/// The gateway answered a batch of `reports`: an acknowledged `running` is recorded, an
/// acknowledged end lets the attempt go, a refused report stops the run and lets it go; then
/// the slots freed are [`fill`]ed.
pub fn acknowledged(view: &View<'_>, reports: &[Report], results: &[ReportResult]) -> Plan {
    let mut running = view.running.clone();
    let mut stop = Vec::new();
    let mut ops = Vec::new();
    for (report, result) in reports.iter().zip(results) {
        match (result.outcome, report.state) {
            (ReportOutcome::Accepted | ReportOutcome::Duplicate, ReportedState::Running) => {
                ops.push(JobOp::RunningAcked { job: report.job.to_string(), attempt: report.attempt })
            }
            (ReportOutcome::Accepted | ReportOutcome::Duplicate, _) => {
                ops.push(JobOp::Forget { job: report.job.to_string(), attempt: report.attempt })
            }
            (ReportOutcome::Refused, _) => {
                tracing::warn!(job = %report.job, attempt = report.attempt, reason = ?result.reason, "the gateway refused a report; stopping the attempt");
                let key = (report.job.to_string(), report.attempt);
                if running.remove(&key) {
                    stop.push((key, Stop::Drop));
                }
                ops.push(JobOp::Forget { job: report.job.to_string(), attempt: report.attempt });
            }
        }
    }
    let filled = fill(&View { running: &running, ..*view }, ops);
    Plan { stop, ..filled }
}

/// What a lease says the cluster holds.
pub fn held(records: &BTreeMap<String, JobRecord>) -> Vec<Held> {
    records.values().map(|r| Held { job: JobId::from(r.job.clone()), attempt: r.attempt }).collect()
}

/// What the gateway has still to hear, in record order: a start not yet acknowledged, and
/// every end (with its output).
pub fn reports(records: &BTreeMap<String, JobRecord>) -> Vec<Report> {
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
            Some(Report { job: JobId::from(r.job.clone()), attempt: r.attempt, state, exit_code, message, output })
        })
        .collect()
}

/// The attempts waiting for a slot: accepted, not going here.
pub fn queued(records: &BTreeMap<String, JobRecord>, running: &HashSet<RunKey>) -> usize {
    records
        .values()
        .filter(|r| matches!(r.run, RunState::Accepted) && !running.contains(&(r.job.clone(), r.attempt)))
        .count()
}

/// What to run for a started record; why not, when what was recorded does not read back.
pub fn request(r: &JobRecord) -> Result<RunRequest, String> {
    let spec: JobSpec = serde_json::from_str(&r.spec).map_err(|e| format!("the recorded spec is unreadable: {e}"))?;
    let inputs = if r.inputs.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str::<Vec<AssignedInput>>(&r.inputs)
            .map_err(|e| format!("the recorded inputs are unreadable: {e}"))?
    };
    let secret = match &r.run {
        RunState::Started { secret, .. } => secret.clone(),
        _ => None,
    };
    Ok(RunRequest {
        job: r.job.clone(),
        pipeline: r.pipeline.clone(),
        attempt: r.attempt,
        spec,
        inputs,
        secret,
        secrets: Default::default(),
    })
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

fn end(r: &JobRecord, state: EndState, message: &str) -> JobOp {
    JobOp::End { job: r.job.clone(), attempt: r.attempt, state, exit_code: None, message: Some(message.to_string()) }
}

#[cfg(test)]
mod tests {
    use atoll_api::jobs::Assignment;
    use atoll_api::jobs::Revoked;

    use super::*;

    const TERM: Term = Term(5);
    const NODE: u64 = 1;

    fn record(key: &str, run: RunState, revision: u64) -> JobRecord {
        let (job, attempt) = split(key);
        JobRecord {
            job,
            pipeline: "p".into(),
            attempt,
            spec: serde_json::to_string(&assignment("x#1").spec).expect("spec"),
            inputs: String::new(),
            run,
            cancel: false,
            running_acked: false,
            revision,
            output: None,
        }
    }

    fn split(key: &str) -> RunKey {
        let (job, attempt) = key.split_once('#').expect("job#attempt");
        (job.to_string(), attempt.parse().expect("attempt"))
    }

    fn accepted(key: &str, revision: u64) -> JobRecord {
        record(key, RunState::Accepted, revision)
    }

    fn started(key: &str, term: u64, node: u64) -> JobRecord {
        record(key, RunState::Started { term, node, handle: None, secret: None }, 1)
    }

    fn ended(key: &str, state: EndState) -> JobRecord {
        record(key, RunState::Ended { state, exit_code: None, message: None }, 1)
    }

    fn cancelled(mut r: JobRecord) -> JobRecord {
        r.cancel = true;
        r
    }

    fn end_op(key: &str, state: EndState) -> JobOp {
        let (job, attempt) = split(key);
        JobOp::End { job, attempt, state, exit_code: None, message: None }
    }

    /// What the leader knows: its records, the runs going here, the capacity, and whether runs
    /// outlive their leader.
    struct Given {
        records: Vec<JobRecord>,
        running: &'static [&'static str],
        max_running: usize,
        adopts: bool,
    }

    fn given(records: Vec<JobRecord>, running: &'static [&'static str], max_running: usize) -> Given {
        Given { records, running, max_running, adopts: false }
    }

    fn adopting(g: Given) -> Given {
        Given { adopts: true, ..g }
    }

    impl Given {
        fn decide(&self, what: impl FnOnce(&View<'_>) -> Plan) -> Vec<String> {
            let records: BTreeMap<String, JobRecord> =
                self.records.iter().map(|r| (r.job.clone(), r.clone())).collect();
            let running: HashSet<RunKey> = self.running.iter().map(|k| split(k)).collect();
            let view = View {
                term: TERM,
                node: NODE,
                records: &records,
                running: &running,
                max_running: self.max_running,
                capabilities: Capabilities { adopts_running: self.adopts },
            };
            summary(&what(&view))
        }
    }

    /// A plan, one line per effect, in the order they are carried out.
    fn summary(plan: &Plan) -> Vec<String> {
        let mut lines = Vec::new();
        for ((job, attempt), why) in &plan.stop {
            lines.push(format!("stop {job}#{attempt} {}", if *why == Stop::Drop { "drop" } else { "cancel" }));
        }
        for op in &plan.ops {
            let key = format!("{}#{}", op.job(), op.attempt());
            lines.push(match op {
                JobOp::Accept { .. } => format!("accept {key}"),
                JobOp::Start { .. } => format!("start-op {key}"),
                JobOp::End { state, message: Some(message), .. } => format!("end {key} {}: {message}", state.as_str()),
                JobOp::End { state, message: None, .. } => format!("end {key} {}", state.as_str()),
                JobOp::Output { .. } => format!("output {key}"),
                JobOp::Cancel { .. } => format!("cancel {key}"),
                JobOp::RunningAcked { .. } => format!("acked {key}"),
                JobOp::Forget { .. } => format!("forget {key}"),
            });
        }
        for Launch { record, how } in &plan.start {
            let verb = if *how == How::Adopt { "adopt" } else { "start" };
            lines.push(format!("{verb} {}#{}", record.job, record.attempt));
        }
        lines
    }

    /// One of the plan's decisions, its inputs bound.
    type Decide = Box<dyn FnOnce(&View<'_>) -> Plan>;

    fn check(rows: Vec<(&str, Given, Decide, &[&str])>) {
        for (name, given, what, want) in rows {
            assert_eq!(given.decide(what), want, "{name}");
        }
    }

    fn resume_with(unrecorded: Vec<JobOp>) -> Decide {
        Box::new(move |v| resume(v, unrecorded))
    }

    fn fill_with(ops: Vec<JobOp>) -> Decide {
        Box::new(move |v| fill(v, ops))
    }

    #[test]
    fn a_new_term_takes_over_the_records_of_earlier_ones() {
        check(vec![
            ("nothing held", given(vec![], &[], 4), resume_with(vec![]), &[]),
            (
                "an accepted attempt starts",
                given(vec![accepted("a#1", 3)], &[], 4),
                resume_with(vec![]),
                &["start a#1"],
            ),
            (
                "an accepted attempt cancelled meanwhile ends killed",
                given(vec![cancelled(accepted("a#1", 3))], &[], 4),
                resume_with(vec![]),
                &["end a#1 killed: cancelled before it started"],
            ),
            (
                "after a failover a process run is lost",
                given(vec![started("a#1", 4, 2)], &[], 4),
                resume_with(vec![]),
                &["end a#1 lost: its run was started by node 2 in term 4, which no longer leads"],
            ),
            (
                "after a failover a run that outlives its leader is adopted",
                adopting(given(vec![started("a#1", 4, 2), cancelled(started("b#3", 4, 2))], &[], 4)),
                resume_with(vec![]),
                &["adopt a#1", "adopt b#3"],
            ),
            (
                "this leader's own run going here stays as it is",
                given(vec![started("a#1", 5, NODE)], &["a#1"], 4),
                resume_with(vec![]),
                &[],
            ),
            (
                "this leader's own run that is gone is lost",
                given(vec![started("a#1", 5, NODE)], &[], 4),
                resume_with(vec![]),
                &["end a#1 lost: its run is gone"],
            ),
            (
                "a run going here is not adopted again",
                adopting(given(vec![started("a#1", 5, NODE)], &["a#1"], 4)),
                resume_with(vec![]),
                &[],
            ),
            (
                "an end that could not be recorded is recorded again, first, and its record left alone",
                given(vec![started("a#1", 5, NODE), started("b#1", 4, 2)], &[], 4),
                resume_with(vec![end_op("a#1", EndState::Finished)]),
                &["end a#1 finished", "end b#1 lost: its run was started by node 2 in term 4, which no longer leads"],
            ),
            (
                "an ended attempt waits for its report",
                given(vec![ended("a#1", EndState::Failure)], &[], 4),
                resume_with(vec![]),
                &[],
            ),
        ]);
    }

    #[test]
    fn free_slots_start_the_oldest_waiting_attempts() {
        check(vec![
            (
                "oldest first, up to the free slots",
                given(vec![accepted("b#1", 9), accepted("a#1", 5), accepted("c#1", 7)], &[], 2),
                fill_with(vec![]),
                &["start a#1", "start c#1"],
            ),
            (
                "capacity full: only the ops",
                given(vec![started("r#1", 5, NODE), started("s#1", 5, NODE), accepted("w#1", 3)], &["r#1", "s#1"], 2),
                fill_with(vec![end_op("x#1", EndState::Killed)]),
                &["end x#1 killed"],
            ),
            (
                "a run that ended is recorded with the start of the attempt taking its slot",
                given(vec![started("r#1", 5, NODE), accepted("w#1", 3)], &[], 1),
                fill_with(vec![end_op("r#1", EndState::Finished)]),
                &["end r#1 finished", "start w#1"],
            ),
            (
                "neither a cancelled attempt nor one going already",
                given(vec![cancelled(accepted("c#1", 1)), accepted("g#1", 2), accepted("w#1", 3)], &["g#1"], 4),
                fill_with(vec![]),
                &["start w#1"],
            ),
            ("no capacity at all", given(vec![accepted("w#1", 3)], &[], 0), fill_with(vec![]), &[]),
        ]);
    }

    fn assignment(key: &str) -> Assignment {
        let (job, attempt) = split(key);
        let spec = atoll_api::spec::parse("version: 1\njobs:\n  - {name: x, type: command, command: make}\n")
            .expect("spec")
            .jobs
            .remove(0);
        Assignment { job: job.into(), pipeline: "p".into(), attempt, spec, inputs: Vec::new() }
    }

    fn held_of(key: &str) -> Held {
        let (job, attempt) = split(key);
        Held { job: job.into(), attempt }
    }

    fn revoked(key: &str) -> Revoked {
        let (job, attempt) = split(key);
        Revoked { job: job.into(), attempt, reason: "moved".into() }
    }

    fn answer(assign: &[&str], cancel: &[&str], drop: &[&str]) -> Decide {
        let answer = LeaseResponse {
            assign: assign.iter().map(|k| assignment(k)).collect(),
            cancel: cancel.iter().map(|k| held_of(k)).collect(),
            drop: drop.iter().map(|k| revoked(k)).collect(),
            send: Vec::new(),
        };
        Box::new(move |v| lease(v, &answer))
    }

    #[test]
    fn a_lease_answer_is_recorded_before_anything_starts() {
        check(vec![
            (
                "a fresh lease: accepted and started in one entry",
                given(vec![], &[], 2),
                answer(&["a#1"], &[], &[]),
                &["accept a#1", "start a#1"],
            ),
            (
                "capacity full: accepted, waiting for a slot",
                given(vec![started("r#1", 5, NODE)], &["r#1"], 1),
                answer(&["a#1", "b#1"], &[], &[]),
                &["accept a#1", "accept b#1"],
            ),
            (
                "only the free slots start",
                given(vec![], &[], 1),
                answer(&["a#1", "b#1"], &[], &[]),
                &["accept a#1", "accept b#1", "start a#1"],
            ),
            (
                "a duplicate, or an older attempt than the one held, is ignored",
                given(vec![started("a#2", 5, NODE)], &["a#2"], 4),
                answer(&["a#1", "a#2"], &[], &[]),
                &[],
            ),
            (
                "a newer attempt replaces the held one",
                given(vec![ended("a#1", EndState::Failure)], &[], 4),
                answer(&["a#2"], &[], &[]),
                &["accept a#2", "start a#2"],
            ),
            (
                "assigned and cancelled in one answer: killed before it starts",
                given(vec![], &[], 4),
                answer(&["a#1"], &["a#1"], &[]),
                &["accept a#1", "cancel a#1", "end a#1 killed: cancelled before it started"],
            ),
            (
                "moved away on the gateway: the run is stopped and the attempt forgotten",
                given(vec![started("a#1", 5, NODE)], &["a#1"], 4),
                answer(&[], &[], &["a#1"]),
                &["stop a#1 drop", "forget a#1"],
            ),
            (
                "moved away, not running here: only forgotten",
                given(vec![accepted("a#1", 2)], &[], 4),
                answer(&[], &[], &["a#1"]),
                &["forget a#1"],
            ),
            (
                "a run moved away frees its slot for the answer's assignment",
                given(vec![started("a#1", 5, NODE)], &["a#1"], 1),
                answer(&["b#1"], &[], &["a#1"]),
                &["stop a#1 drop", "forget a#1", "accept b#1", "start b#1"],
            ),
            (
                "cancelled on the gateway while running: stopped, its end comes from the run",
                given(vec![started("a#1", 5, NODE)], &["a#1"], 4),
                answer(&[], &["a#1"], &[]),
                &["stop a#1 cancel", "cancel a#1"],
            ),
            (
                "cancelled while waiting for a slot: killed now",
                given(vec![accepted("a#1", 2)], &[], 4),
                answer(&[], &["a#1"], &[]),
                &["cancel a#1", "end a#1 killed: cancelled"],
            ),
            (
                "cancelled after it ended: recorded, the end stands",
                given(vec![ended("a#1", EndState::Finished)], &[], 4),
                answer(&[], &["a#1"], &[]),
                &["cancel a#1"],
            ),
            (
                "cancelled twice, or another attempt: nothing",
                given(vec![cancelled(started("a#1", 5, NODE)), started("b#2", 5, NODE)], &["a#1", "b#2"], 4),
                answer(&[], &["a#1", "b#1", "z#1"], &[]),
                &[],
            ),
        ]);
    }

    fn reported_as(key: &str, state: ReportedState) -> Report {
        let (job, attempt) = split(key);
        Report { job: job.into(), attempt, state, exit_code: None, message: None, output: None }
    }

    fn result(key: &str, outcome: ReportOutcome) -> ReportResult {
        let (job, attempt) = split(key);
        ReportResult { job: job.into(), attempt, outcome, reason: None }
    }

    fn answered(reports: Vec<Report>, results: Vec<ReportResult>) -> Decide {
        Box::new(move |v| acknowledged(v, &reports, &results))
    }

    #[test]
    fn the_gateways_answer_to_reports_lets_attempts_go() {
        check(vec![
            (
                "an acknowledged start is recorded",
                given(vec![started("a#1", 5, NODE)], &["a#1"], 4),
                answered(
                    vec![reported_as("a#1", ReportedState::Running)],
                    vec![result("a#1", ReportOutcome::Accepted)],
                ),
                &["acked a#1"],
            ),
            (
                "an acknowledged end, or a duplicate, lets the attempt go",
                given(vec![ended("a#1", EndState::Finished), ended("b#1", EndState::Lost)], &[], 4),
                answered(
                    vec![reported_as("a#1", ReportedState::Finished), reported_as("b#1", ReportedState::Lost)],
                    vec![result("a#1", ReportOutcome::Accepted), result("b#1", ReportOutcome::Duplicate)],
                ),
                &["forget a#1", "forget b#1"],
            ),
            (
                "a refused report stops the run, lets it go, and frees its slot",
                given(vec![started("a#1", 5, NODE), accepted("w#1", 4)], &["a#1"], 1),
                answered(vec![reported_as("a#1", ReportedState::Running)], vec![result("a#1", ReportOutcome::Refused)]),
                &["stop a#1 drop", "forget a#1", "start w#1"],
            ),
        ]);
    }

    #[test]
    fn the_gateway_hears_every_unacknowledged_start_and_every_end() {
        let mut acked = started("b#1", 5, NODE);
        acked.running_acked = true;
        let mut with_output = ended("d#1", EndState::Finished);
        with_output.output = Some(atoll_raft_store::jobs::OutputRecord {
            digest: "sha256:aa".into(),
            size: 3,
            chunk_size: 8,
            chunks: Vec::new(),
        });
        let records: BTreeMap<String, JobRecord> =
            [accepted("a#1", 1), acked, started("c#1", 5, NODE), with_output, ended("e#2", EndState::Lost)]
                .into_iter()
                .map(|r| (r.job.clone(), r))
                .collect();
        let got: Vec<(String, ReportedState, bool)> =
            reports(&records).into_iter().map(|r| (r.job.to_string(), r.state, r.output.is_some())).collect();
        assert_eq!(
            got,
            [
                ("c".to_string(), ReportedState::Running, false),
                ("d".to_string(), ReportedState::Finished, true),
                ("e".to_string(), ReportedState::Lost, false),
            ]
        );
        assert_eq!(held(&records).len(), 5, "a lease names every attempt held");
        let running: HashSet<RunKey> = [split("c#1")].into();
        assert_eq!(queued(&records, &running), 1, "only the accepted one waits");
    }

    #[test]
    fn a_start_keeps_an_adopted_runs_secret_and_gives_a_new_run_a_fresh_one() {
        let mut adopted = started("a#1", 4, 2);
        adopted.run = RunState::Started { term: 4, node: 2, handle: Some("h".into()), secret: Some("old".into()) };
        let mut launch = Launch { record: adopted, how: How::Adopt };
        let op = launch.start_op(TERM, NODE, Some("h".into()), || Some("new".into()));
        assert_eq!(
            op,
            JobOp::Start {
                job: "a".into(),
                attempt: 1,
                term: 5,
                node: NODE,
                handle: Some("h".into()),
                secret: Some("old".into())
            }
        );
        assert_eq!(
            launch.record.run,
            RunState::Started { term: 5, node: NODE, handle: Some("h".into()), secret: Some("old".into()) }
        );
        let mut fresh = Launch { record: accepted("b#1", 1), how: How::Start };
        let op = fresh.start_op(TERM, NODE, None, || Some("new".into()));
        assert!(matches!(op, JobOp::Start { secret: Some(s), .. } if s == "new"));
        assert_eq!(request(&fresh.record).unwrap().secret.as_deref(), Some("new"), "the run shows it");
    }

    #[test]
    fn a_record_that_does_not_read_back_is_no_run() {
        let mut bad = accepted("a#1", 1);
        bad.spec = "{".into();
        assert!(request(&bad).unwrap_err().starts_with("the recorded spec is unreadable: "));
        let mut bad = accepted("a#1", 1);
        bad.inputs = "[{".into();
        assert!(request(&bad).unwrap_err().starts_with("the recorded inputs are unreadable: "));
    }
}
