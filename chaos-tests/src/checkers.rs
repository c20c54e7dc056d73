//! The invariants, one checker each, over what a run recorded: the history of client
//! operations, every process's log, the jobs as the gateway ended them, the ledger the jobs
//! wrote, and what was left running. Each checker is a pure function of that evidence, so it
//! is tested here on hand-made evidence that breaks it.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use atoll_api::jobs::AttemptState;
use atoll_api::jobs::JobDetail;
use atoll_api::jobs::JobState;
use atoll_api::jobs::Route;
use serde::Serialize;
use time::OffsetDateTime;

use crate::history::Op;
use crate::history::OpKind;
use crate::history::Outcome;
use crate::workload::MatrixSnapshot;

/// One invariant's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub invariant: &'static str,
    pub holds: bool,
    /// What was checked (counts), or what broke it.
    pub detail: String,
}

impl Verdict {
    fn new(invariant: &'static str, problems: Vec<String>, checked: String) -> Self {
        let holds = problems.is_empty();
        let detail = if holds {
            checked
        } else {
            let shown: Vec<&String> = problems.iter().take(8).collect();
            let more = problems.len().saturating_sub(shown.len());
            let mut text = shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ");
            if more > 0 {
                text.push_str(&format!("; and {more} more"));
            }
            text
        };
        Self { invariant, holds, detail }
    }
}

/// A replica saying it leads, from its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadClaim {
    pub cluster: String,
    pub node: u64,
    pub term: u64,
    pub at: OffsetDateTime,
}

/// `<rfc3339> INFO this replica leads term=N` lines of one replica's log.
pub fn lead_claims(cluster: &str, node: u64, log: &str) -> Vec<LeadClaim> {
    log.lines()
        .filter(|line| line.contains("this replica leads"))
        .filter_map(|line| {
            let at =
                OffsetDateTime::parse(line.split_whitespace().next()?, &time::format_description::well_known::Rfc3339)
                    .ok()?;
            let term = field(line, "term")?.parse().ok()?;
            Some(LeadClaim { cluster: cluster.to_string(), node, term, at })
        })
        .collect()
}

/// A span of wall-clock time of the run.
#[derive(Clone, Debug)]
pub struct Window {
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
}

/// `leaders_kept`: no replica claimed leadership while `window` lasted (jobs printing at full
/// speed must not cost a cluster its leader).
pub fn leaders_kept(claims: &[LeadClaim], window: &Window) -> Verdict {
    let problems = claims
        .iter()
        .filter(|c| c.at > window.from && c.at <= window.to)
        .map(|c| format!("{} replica {} took term {} at {} while jobs printed", c.cluster, c.node, c.term, c.at))
        .collect();
    let seconds = (window.to - window.from).as_seconds_f64();
    Verdict::new("leaders kept under noisy jobs", problems, format!("no leader change in {seconds:.1} s of noise"))
}

/// The value of `key=value` (quotes removed) in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    let value = rest.split_whitespace().next()?;
    Some(value.trim_matches('"'))
}

/// At most one leader per term in every cluster.
pub fn one_leader_per_term(claims: &[LeadClaim]) -> Verdict {
    let mut by_term: BTreeMap<(String, u64), BTreeSet<u64>> = BTreeMap::new();
    for claim in claims {
        by_term.entry((claim.cluster.clone(), claim.term)).or_default().insert(claim.node);
    }
    let problems = by_term
        .iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .map(|((cluster, term), nodes)| format!("{cluster} term {term} led by replicas {nodes:?}"))
        .collect();
    Verdict::new("one leader per term", problems, format!("{} terms led", by_term.len()))
}

/// A leader the gateway registered, from its log, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub cluster: String,
    pub leader: u64,
    pub term: u64,
}

pub fn registrations(gateway_log: &str) -> Vec<Registration> {
    gateway_log
        .lines()
        .filter(|line| line.contains("leader registered"))
        .filter_map(|line| {
            Some(Registration {
                cluster: field(line, "cluster")?.to_string(),
                leader: field(line, "leader")?.parse().ok()?,
                term: field(line, "term")?.parse().ok()?,
            })
        })
        .collect()
}

/// The gateway never acts on a stale term: the leaders each gateway replica registers for a
/// cluster go forward in term (each replica's log in its own order: replicas log at their own
/// pace), one leader per term across them all, and every job result the gateway accepted came
/// from a term some replica had registered for that cluster. `registrations` holds one list
/// per replica (one for the only gateway).
pub fn gateway_follows_terms(registrations: &[Vec<Registration>], jobs: &[JobDetail]) -> Verdict {
    let mut problems = Vec::new();
    let mut known: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let mut leaders: BTreeMap<(&str, u64), BTreeSet<u64>> = BTreeMap::new();
    for replica in registrations {
        let mut last: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for r in replica {
            known.entry(&r.cluster).or_default().insert(r.term);
            leaders.entry((&r.cluster, r.term)).or_default().insert(r.leader);
            match last.get(r.cluster.as_str()) {
                Some(&(term, leader)) if r.term < term => {
                    problems.push(format!(
                        "{} registered term {} (leader {}) after term {term} (leader {leader})",
                        r.cluster, r.term, r.leader
                    ));
                    continue;
                }
                _ => {}
            }
            last.insert(&r.cluster, (r.term, r.leader));
        }
    }
    for ((cluster, term), nodes) in &leaders {
        if nodes.len() > 1 {
            let nodes: Vec<String> = nodes.iter().map(ToString::to_string).collect();
            problems.push(format!("{cluster} term {term} registered for leaders {}", nodes.join(" and ")));
        }
    }
    let mut accepted = 0;
    for detail in jobs {
        for attempt in detail.attempts.iter().filter(|a| is_result(&a.state)) {
            accepted += 1;
            if let Some(term) = attempt.term
                && !known.get(attempt.cluster.as_str()).is_some_and(|terms| terms.contains(&term.0))
            {
                problems.push(format!(
                    "job {} attempt {} accepted from {} at term {term}, a term the gateway never registered",
                    detail.job.id, attempt.attempt, attempt.cluster
                ));
            }
        }
    }
    Verdict::new(
        "gateway acts on current terms only",
        problems,
        format!("{} registrations, {accepted} accepted results", registrations.iter().map(Vec::len).sum::<usize>()),
    )
}

/// An attempt state that is an accepted result (a final job state).
fn is_result(state: &AttemptState) -> bool {
    use JobState::*;
    matches!(state, AttemptState::Ended(Finished | Failure | Error | Unstable | Killed))
}

/// Annotations as each replica of a cluster holds them at the end.
pub type Applied = BTreeMap<String, BTreeMap<String, String>>;

/// No acknowledged annotation is lost (every replica of its cluster holds it with its value);
/// none refused outright shows up; an unknown outcome may go either way.
pub fn annotations_durable(ops: &[Op], applied_by_cluster: &BTreeMap<String, Applied>) -> Verdict {
    let mut problems = Vec::new();
    let mut acked = 0;
    for op in ops {
        let OpKind::Annotate { cluster, key, value, .. } = &op.kind else { continue };
        let Some(replicas) = applied_by_cluster.get(cluster) else {
            problems.push(format!("no final state read from {cluster}"));
            continue;
        };
        for (replica, applied) in replicas {
            match (&op.outcome, applied.get(key)) {
                (Outcome::Ok, Some(v)) if v == value => {}
                (Outcome::Ok, other) => problems
                    .push(format!("{key}={value} acknowledged at +{} ms but {replica} has {other:?}", op.completed_ms)),
                (Outcome::Failed(why), Some(v)) if v == value => {
                    problems.push(format!("{key}={value} was refused ({why}) yet {replica} has it"))
                }
                _ => {}
            }
        }
        acked += usize::from(op.outcome == Outcome::Ok);
    }
    Verdict::new("no acknowledged write lost", problems, format!("{acked} acknowledged writes on every replica"))
}

/// One ledger line: `made|got JOB ATTEMPT SUM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub what: String,
    pub job: String,
    pub attempt: u32,
    pub sum: String,
}

pub fn parse_ledger(text: &str) -> Vec<LedgerEntry> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some(LedgerEntry {
                what: parts.next()?.to_string(),
                job: parts.next()?.to_string(),
                attempt: parts.next()?.parse().ok()?,
                sum: parts.next()?.to_string(),
            })
        })
        .collect()
}

/// Every pipeline the gateway acknowledged, with its jobs as the gateway ended them.
pub struct PipelineEnd {
    pub pipeline: String,
    pub jobs: Vec<JobDetail>,
}

/// No accepted job is lost and each has exactly one accepted result: every job of every
/// acknowledged pipeline ended finished, with exactly one attempt holding a result, the one
/// the job names, and that attempt really ran (its line is in the ledger). Moved attempts hold
/// no result: a cluster that returns finishes none of the work moved away from it.
pub fn exactly_one_result(ops: &[Op], ends: &[PipelineEnd], ledger: &[LedgerEntry]) -> Verdict {
    let mut problems = Vec::new();
    let acked: Vec<&String> = ops
        .iter()
        .filter(|op| op.outcome == Outcome::Ok)
        .filter_map(|op| match &op.kind {
            OpKind::Submit { pipeline, .. } => pipeline.as_ref(),
            _ => None,
        })
        .collect();
    let ran: BTreeSet<(&str, u32)> = ledger.iter().map(|e| (e.job.as_str(), e.attempt)).collect();
    let mut jobs = 0;
    for pipeline in &acked {
        let Some(end) = ends.iter().find(|e| &&e.pipeline == pipeline) else {
            problems.push(format!("acknowledged pipeline {pipeline} is unknown to the gateway"));
            continue;
        };
        for detail in &end.jobs {
            jobs += 1;
            let job = &detail.job;
            let results: Vec<_> = detail.attempts.iter().filter(|a| is_result(&a.state)).collect();
            if job.state.as_str() != "finished" {
                problems.push(format!("{} ({}) ended {} ({:?})", job.id, job.name, job.state.as_str(), job.reason));
            }
            match results.as_slice() {
                [one] => {
                    if one.state != job.state.as_str() || Some(&one.cluster) != job.cluster.as_ref() {
                        problems.push(format!(
                            "{}: accepted attempt {} says {} on {}, the job {} on {:?}",
                            job.id,
                            one.attempt,
                            one.state,
                            one.cluster,
                            job.state.as_str(),
                            job.cluster
                        ));
                    }
                    if one.state == "finished" && !ran.contains(&(job.id.as_str(), one.attempt)) {
                        problems.push(format!(
                            "{}: attempt {} accepted as finished but never completed a run",
                            job.id, one.attempt
                        ));
                    }
                }
                many => problems.push(format!("{}: {} accepted results", job.id, many.len())),
            }
            for moved in detail.attempts.iter().filter(|a| a.state == "moved") {
                if results.iter().any(|r| r.attempt == moved.attempt) {
                    problems.push(format!("{}: moved attempt {} holds a result", job.id, moved.attempt));
                }
            }
        }
    }
    Verdict::new(
        "every accepted job ends with exactly one result",
        problems,
        format!("{} pipelines, {jobs} jobs", acked.len()),
    )
}

/// Every output a child received matches its parent's: the sum the child computed over the
/// bytes it got equals the sum the accepted parent attempt wrote, and the digest the gateway
/// shows on the edge is the parent's output digest.
pub fn outputs_match(ends: &[PipelineEnd], ledger: &[LedgerEntry]) -> Verdict {
    let mut problems = Vec::new();
    let mut edges = 0;
    let accepted = |d: &JobDetail| d.attempts.iter().find(|a| a.state == "finished").map(|a| a.attempt);
    for end in ends {
        let Some(make) = end.jobs.iter().find(|d| d.job.name == "make") else { continue };
        let Some(check) = end.jobs.iter().find(|d| d.job.name == "check") else { continue };
        let (Some(make_attempt), Some(check_attempt)) = (accepted(make), accepted(check)) else { continue };
        edges += 1;
        let made = ledger.iter().find(|e| e.what == "made" && e.job == make.job.id && e.attempt == make_attempt);
        let got = ledger.iter().find(|e| e.what == "got" && e.job == check.job.id && e.attempt == check_attempt);
        match (made, got) {
            (Some(made), Some(got)) if made.sum == got.sum => {}
            (made, got) => problems.push(format!(
                "{} -> {}: parent wrote {:?}, child received {:?}",
                make.job.id,
                check.job.id,
                made.map(|m| &m.sum),
                got.map(|g| &g.sum)
            )),
        }
        let parent_digest = make.job.output.as_ref().map(|o| o.digest.as_str());
        let edge_digest = check.job.inputs.iter().find(|i| i.from_job == "make").and_then(|i| i.digest.as_deref());
        if parent_digest != edge_digest {
            problems
                .push(format!("{}: edge digest {edge_digest:?} is not the parent's {parent_digest:?}", check.job.id));
        }
    }
    Verdict::new("children receive their parents' exact outputs", problems, format!("{edges} edges verified"))
}

/// A state of the matrix the run waited for after a change of the network: what, and how long
/// after the change it showed (`None`: not within the wait).
#[derive(Debug, Clone, Serialize)]
pub struct MatrixWait {
    pub what: String,
    pub after_ms: Option<u64>,
}

/// After each change of the network (a cut, a heal) the matrix showed it, with the forwarding
/// mode that follows from it, within `bound_ms`; after the last heal every pair is reachable.
pub fn matrix_follows(waits: &[MatrixWait], bound_ms: u64) -> Verdict {
    let problems = waits
        .iter()
        .filter_map(|w| match w.after_ms {
            Some(ms) if ms <= bound_ms => None,
            Some(ms) => Some(format!("{} showed {ms} ms after the change, past its {bound_ms} ms bound", w.what)),
            None => Some(format!("{} did not show within {bound_ms} ms", w.what)),
        })
        .collect();
    let shown: Vec<String> =
        waits.iter().map(|w| format!("{} after {} ms", w.what, w.after_ms.unwrap_or_default())).collect();
    Verdict::new("matrix follows the network", problems, format!("{} (bound {bound_ms} ms)", shown.join("; ")))
}

/// No process of the run is left once it ends.
pub fn nothing_left_running(leftovers: &BTreeMap<String, Vec<u32>>) -> Verdict {
    let problems =
        leftovers.iter().map(|(role, pids)| format!("{role}: {pids:?} still running after the stop")).collect();
    Verdict::new("no process left", problems, "every namespace empty at the end".into())
}

/// Work moves off a cluster only when the gateway may rightly have lost it: with no fault that
/// kills a cluster, cuts it from the gateway or degrades the links to it, no attempt may end
/// `moved` (a moved attempt runs the work again elsewhere; a restarted gateway or a new leader
/// must not cause that).
pub fn work_moves_only_off_lost_clusters(jobs: &[JobDetail], a_cluster_may_be_lost: bool) -> Verdict {
    let moved: Vec<String> = jobs
        .iter()
        .flat_map(|d| {
            d.attempts
                .iter()
                .filter(|a| a.state == "moved")
                .map(move |a| format!("{} attempt {} moved off {}", d.job.id, a.attempt, a.cluster))
        })
        .collect();
    let count = moved.len();
    let problems = if a_cluster_may_be_lost { Vec::new() } else { moved };
    let checked = if a_cluster_may_be_lost {
        format!("{count} attempts moved (a fault here may lose a cluster)")
    } else {
        format!("no attempt moved across {} jobs", jobs.len())
    };
    Verdict::new("work moves only off lost clusters", problems, checked)
}

/// The route the gateway must give an output made in `from` for a job in `to`, by a matrix
/// (pure; the rule of the gateway's flow): the child pulls when its cluster reaches the
/// parent's, else the parent's pushes when it reaches the child's, else the relay.
pub fn expected_route(from: &str, to: &str, matrix: &MatrixSnapshot) -> Route {
    let reaches = |a: &str, b: &str| matrix.reachable.contains(&(a.to_string(), b.to_string()));
    if from == to {
        Route::Local
    } else if reaches(to, from) {
        Route::Pull
    } else if reaches(from, to) {
        Route::Push
    } else {
        Route::Relay
    }
}

/// Widest gap between two matrix answers around a route decision for it to be judged by them.
const MATRIX_GAP_MS: i64 = 1_500;

/// Forwarding modes follow the matrix: every route the gateway gave an input, judged by the
/// matrix the suite saw just before and just after (when both agree and are close in time,
/// the matrix did not change around the decision), is the one that matrix calls for. An edge
/// that fell back (a route given with the failure that caused it) is relayed from then on,
/// whatever the matrix.
///
/// `lag_ms`: how far one gateway replica's matrix may lag another's (the suite asks one, the
/// route may come from another): a route is judged only if every answer from `lag_ms` before
/// it to `lag_ms` after it agrees, with no gap wider than the usual between two of them (0
/// with one gateway).
pub fn routes_follow_the_matrix(jobs: &[JobDetail], snapshots: &[MatrixSnapshot], lag_ms: i64) -> Verdict {
    let mut problems = Vec::new();
    let (mut judged, mut fallbacks, mut unjudged) = (0, 0, 0);
    for detail in jobs {
        for attempt in &detail.attempts {
            let mut fallen: BTreeSet<&str> = BTreeSet::new();
            for taken in &attempt.routes {
                let edge = format!(
                    "{} attempt {} input from {} ({}->{})",
                    detail.job.id, attempt.attempt, taken.from_job, taken.from_cluster, attempt.cluster
                );
                if taken.reason.is_some() || fallen.contains(taken.from_job.as_str()) {
                    fallen.insert(&taken.from_job);
                    fallbacks += 1;
                    if taken.route != Route::Relay {
                        problems.push(format!(
                            "{edge}: {} after falling back (only relay may follow)",
                            taken.route.as_str()
                        ));
                    }
                    continue;
                }
                let before = snapshots.iter().rposition(|s| s.answered_ms <= taken.at_ms - lag_ms);
                let after = snapshots.iter().position(|s| s.asked_ms >= taken.at_ms + lag_ms);
                let (Some(first), Some(last)) = (before, after) else {
                    unjudged += 1;
                    continue;
                };
                let around = &snapshots[first..=last];
                let before = &around[0];
                let steady = around.iter().all(|s| s.reachable == before.reachable)
                    && around.windows(2).all(|w| w[1].asked_ms - w[0].answered_ms <= MATRIX_GAP_MS);
                if !steady {
                    unjudged += 1;
                    continue;
                }
                judged += 1;
                let expected = expected_route(&taken.from_cluster, &attempt.cluster, before);
                if taken.route != expected {
                    problems.push(format!(
                        "{edge}: the gateway gave {} at {} while the matrix called for {} (reachable: {:?})",
                        taken.route.as_str(),
                        taken.at_ms,
                        expected.as_str(),
                        before.reachable
                    ));
                }
            }
        }
    }
    Verdict::new(
        "forwarding follows the matrix",
        problems,
        format!(
            "{judged} routes judged by a steady matrix, {fallbacks} fallbacks relayed, {unjudged} given while the matrix changed"
        ),
    )
}

/// A gateway replica saying it took the duties lease, from its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTake {
    pub replica: String,
    pub generation: u64,
    pub at: OffsetDateTime,
}

/// `<rfc3339> INFO took the duties lease: ... generation=N replica="g1"` lines of the log of
/// gateway replica `role` (the line's own `replica` when it names one).
pub fn lease_takes(role: &str, log: &str) -> Vec<LeaseTake> {
    log.lines()
        .filter(|line| line.contains("took the duties lease"))
        .filter_map(|line| {
            let at =
                OffsetDateTime::parse(line.split_whitespace().next()?, &time::format_description::well_known::Rfc3339)
                    .ok()?;
            Some(LeaseTake {
                replica: field(line, "replica").unwrap_or(role).to_string(),
                generation: field(line, "generation")?.parse().ok()?,
                at,
            })
        })
        .collect()
}

/// One generation of the duties lease as the database recorded it (`gateway_lease_history`):
/// who took it and when (the taker's clock, read once its take committed; every process of a
/// run shares this machine's clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Generation {
    pub generation: u64,
    pub holder: String,
    pub incarnation: String,
    pub acquired_ms: i64,
}

/// At most one holder per generation of the duties lease: no two replicas (nor one replica
/// twice) say they took the same generation, and each one that says so is the holder the
/// database's history records for it.
pub fn one_holder_per_generation(takes: &[LeaseTake], history: &[Generation]) -> Verdict {
    let mut problems = Vec::new();
    let mut by_generation: BTreeMap<u64, Vec<&LeaseTake>> = BTreeMap::new();
    for take in takes {
        by_generation.entry(take.generation).or_default().push(take);
    }
    for (generation, claims) in &by_generation {
        if claims.len() > 1 {
            let who: Vec<String> = claims.iter().map(|t| format!("{} at {}", t.replica, t.at)).collect();
            problems.push(format!("generation {generation} taken {} times: {}", claims.len(), who.join(", ")));
        }
        match history.iter().find(|g| g.generation == *generation) {
            None => problems.push(format!(
                "{} says it took generation {generation}, which the database's history does not hold",
                claims[0].replica
            )),
            Some(recorded) => {
                for claim in claims.iter().filter(|c| c.replica != recorded.holder) {
                    problems.push(format!(
                        "{} says it took generation {generation}, the database's history names {}",
                        claim.replica, recorded.holder
                    ));
                }
            }
        }
    }
    let holders: BTreeSet<&str> = history.iter().map(|g| g.holder.as_str()).collect();
    Verdict::new(
        "at most one lease holder per generation",
        problems,
        format!(
            "{} generations recorded ({} taken in the logs), held by {}",
            history.len(),
            takes.len(),
            holders.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

/// An attempt as the gateway's database holds it at the end of a run (`attempts`): when it was
/// bound and ended (the binding replica's clock), and the lease generation of the scheduling
/// pass that bound it or, for an attempt moved off a lost cluster, moved it (none for an
/// attempt a report bound: a lost run started again in its cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    pub job: String,
    pub attempt: u32,
    pub cluster: String,
    pub state: String,
    pub bound_ms: i64,
    pub ended_ms: Option<i64>,
    pub generation: Option<u64>,
}

/// No job placed twice: no attempt of a job was bound while another attempt of the same job
/// was still bound (bound no later, and not yet ended).
pub fn no_job_placed_twice(attempts: &[AttemptRecord]) -> Verdict {
    let mut problems = Vec::new();
    let mut by_job: BTreeMap<&str, Vec<&AttemptRecord>> = BTreeMap::new();
    for a in attempts {
        by_job.entry(&a.job).or_default().push(a);
    }
    let jobs = by_job.len();
    for (job, list) in &mut by_job {
        list.sort_by_key(|a| a.attempt);
        for (i, earlier) in list.iter().enumerate() {
            for later in &list[i + 1..] {
                let (first, second) =
                    if earlier.bound_ms <= later.bound_ms { (earlier, later) } else { (later, earlier) };
                if first.ended_ms.is_none_or(|ended| ended > second.bound_ms) {
                    let until = match first.ended_ms {
                        Some(ended) => format!("until {ended}"),
                        None => "to the end".to_string(),
                    };
                    problems.push(format!(
                        "{job}: attempt {} bound on {} at {} while attempt {} (bound on {} at {}) was still bound ({until})",
                        second.attempt, second.cluster, second.bound_ms, first.attempt, first.cluster, first.bound_ms
                    ));
                }
            }
        }
    }
    Verdict::new(
        "no job placed twice",
        problems,
        format!("{} attempts of {jobs} jobs, never two bound at once", attempts.len()),
    )
}

/// No write of an old generation applied: every attempt a scheduling pass bound (or moved off a
/// lost cluster) under generation `g` was written (bound, or moved: its end) before any later
/// generation was taken, by the database's history, and under a generation the history holds.
pub fn no_old_generation_writes(attempts: &[AttemptRecord], history: &[Generation]) -> Verdict {
    let mut problems = Vec::new();
    let (mut judged, mut by_reports) = (0, 0);
    let mut generations: BTreeSet<u64> = BTreeSet::new();
    for a in attempts {
        let Some(g) = a.generation else {
            by_reports += 1;
            continue;
        };
        judged += 1;
        generations.insert(g);
        let (what, at) = match (a.state.as_str(), a.ended_ms) {
            ("moved", Some(ended)) => ("moved off", ended),
            _ => ("bound on", a.bound_ms),
        };
        if !history.iter().any(|h| h.generation == g) {
            problems.push(format!(
                "{} attempt {} {what} {} at {at} under generation {g}, which the database's history does not hold",
                a.job, a.attempt, a.cluster
            ));
            continue;
        }
        let next = history.iter().filter(|h| h.generation > g).min_by_key(|h| h.generation);
        if let Some(next) = next
            && at > next.acquired_ms
        {
            problems.push(format!(
                "{} attempt {} {what} {} at {at} under generation {g}, {} ms after generation {} was taken by {} at {}",
                a.job,
                a.attempt,
                a.cluster,
                at - next.acquired_ms,
                next.generation,
                next.holder,
                next.acquired_ms
            ));
        }
    }
    Verdict::new(
        "no write of an old generation applied",
        problems,
        format!(
            "{judged} attempts written by scheduling passes of {} generations, each before the next generation was taken ({by_reports} bound by reports)",
            generations.len()
        ),
    )
}

/// A gateway replica's `moving work off a lost cluster` line: `role: cluster (state) at time`.
pub fn work_moved_lines(role: &str, log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("moving work off a lost cluster"))
        .map(|line| {
            let at = line.split_whitespace().next().unwrap_or("?");
            let cluster = field(line, "cluster").unwrap_or("?");
            let state = field(line, "state").unwrap_or("?");
            format!("{role} moved work off {cluster} ({state}) at {at}")
        })
        .collect()
}

/// A cluster's last heartbeat time as the gateway's database held it when the suite looked
/// (`clusters.last_seen_ms`, written by whichever replica heard it; times in ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeardSample {
    pub at_ms: i64,
    pub cluster: String,
    pub last_seen_ms: Option<i64>,
}

/// Every cluster reaches a live gateway replica within the bound: no gateway replica judged a
/// cluster lost and moved its work (`moved`: the replicas' `moving work off a lost cluster`
/// lines), no attempt ended `moved`, and at no sample had a cluster gone unheard (by the
/// database) longer than `bound_ms`, nor longer than `dead_after_ms` counted from when the
/// generation holding the lease then was taken (a new holder judges silence from its take:
/// past that, the holder would have judged the cluster dead).
pub fn clusters_heard_throughout(
    clusters: &[String],
    moved: &[String],
    attempts: &[AttemptRecord],
    samples: &[HeardSample],
    history: &[Generation],
    bound_ms: u64,
    dead_after_ms: u64,
) -> Verdict {
    let mut problems: Vec<String> = moved.to_vec();
    for a in attempts.iter().filter(|a| a.state == "moved") {
        problems.push(format!("{} attempt {} moved off {}", a.job, a.attempt, a.cluster));
    }
    let mut longest = Vec::new();
    for cluster in clusters {
        let heard: Vec<(i64, i64)> = samples
            .iter()
            .filter(|s| &s.cluster == cluster)
            .filter_map(|s| s.last_seen_ms.map(|seen| (s.at_ms, seen)))
            .collect();
        let Some((ms, at)) = heard.iter().map(|&(at, seen)| (at - seen, at)).max() else {
            problems.push(format!("no heartbeat time of {cluster} was sampled"));
            continue;
        };
        if ms > bound_ms as i64 {
            problems.push(format!("{cluster} unheard for {ms} ms (sampled at {at}), past the {bound_ms} ms bound"));
        }
        longest.push(format!("{cluster} {ms} ms"));
        let judged = heard
            .iter()
            .map(|&(at, seen)| {
                let taken = history.iter().filter(|g| g.acquired_ms <= at).map(|g| g.acquired_ms).max();
                (at - seen.max(taken.unwrap_or(seen)), at)
            })
            .max();
        if let Some((ms, at)) = judged
            && ms > dead_after_ms as i64
        {
            problems.push(format!(
                "{cluster} unheard for {ms} ms since the lease holder of the time took it (sampled at {at}), past the {dead_after_ms} ms dead-after bound"
            ));
        }
    }
    Verdict::new(
        "every cluster reaches a live gateway replica",
        problems,
        format!(
            "no work moved; longest silence {} (bound {bound_ms} ms, dead after {dead_after_ms} ms; {} samples)",
            longest.join(", "),
            samples.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use atoll_api::ids::Term;

    use super::*;
    use atoll_api::jobs::AttemptInfo;
    use atoll_api::jobs::InputInfo;
    use atoll_api::jobs::JobInfo;
    use atoll_api::jobs::JobState;
    use atoll_api::jobs::OutputInfo;

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn lead_claims_are_read_from_log_lines() {
        let log = "2026-11-23T21:35:07.233155Z  INFO this replica leads term=1\n\
                   2026-11-23T21:35:07.233202Z  INFO leading toward the gateway term=1 gateway=1.2.3.4:5\n\
                   2026-11-23T21:36:00.000001Z  INFO this replica leads term=7\n";
        let claims = lead_claims("aws", 2, log);
        assert_eq!(claims.len(), 2);
        assert_eq!((claims[1].term, claims[1].at), (7, at("2026-11-23T21:36:00.000001Z")));
    }

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let claim = |node, term| LeadClaim { cluster: "aws".into(), node, term, at: at("2026-01-01T00:00:00Z") };
        assert!(one_leader_per_term(&[claim(1, 1), claim(2, 2), claim(2, 2)]).holds);
        let broken = one_leader_per_term(&[claim(1, 1), claim(2, 1)]);
        assert!(!broken.holds && broken.detail.contains("aws term 1"), "{broken:?}");
    }

    #[test]
    fn a_registration_going_back_in_term_is_caught() {
        let log = "t INFO leader registered cluster=\"aws\" leader=1 term=1 endpoint=x\n\
                   t INFO leader registered cluster=\"aws\" leader=2 term=3 endpoint=x\n";
        let regs = registrations(log);
        assert_eq!(regs[1], Registration { cluster: "aws".into(), leader: 2, term: 3 });
        assert!(gateway_follows_terms(std::slice::from_ref(&regs), &[]).holds);
        let stale = [regs.clone(), vec![Registration { cluster: "aws".into(), leader: 1, term: 1 }]].concat();
        assert!(!gateway_follows_terms(&[stale], &[]).holds);
        let job = detail("j1", "make", JobState::Finished, vec![attempt(1, "finished", "aws", Some(2))]);
        let v = gateway_follows_terms(std::slice::from_ref(&regs), &[job]);
        assert!(!v.holds && v.detail.contains("never registered"), "{v:?}");
        // Replicas log at their own pace: one still logging term 1 while another logged term 3
        // is no step back; two leaders of one term across replicas is.
        let old = vec![Registration { cluster: "aws".into(), leader: 1, term: 1 }];
        assert!(gateway_follows_terms(&[regs.clone(), old], &[]).holds);
        let other = vec![Registration { cluster: "aws".into(), leader: 3, term: 3 }];
        let v = gateway_follows_terms(&[regs, other], &[]);
        assert!(!v.holds && v.detail.contains("aws term 3 registered for leaders 2 and 3"), "{v:?}");
    }

    fn op(kind: OpKind, outcome: Outcome) -> Op {
        Op { kind, invoked_ms: 0, completed_ms: 1, outcome }
    }

    fn annotate(key: &str, value: &str) -> OpKind {
        OpKind::Annotate { cluster: "aws".into(), via: "x".into(), key: key.into(), value: value.into() }
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught_and_unknowns_go_either_way() {
        let ops = vec![
            op(annotate("a", "1"), Outcome::Ok),
            op(annotate("b", "2"), Outcome::Unknown("timeout".into())),
            op(annotate("c", "3"), Outcome::Failed("not leader".into())),
        ];
        let replica = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let state = |r1: BTreeMap<String, String>, r2| {
            BTreeMap::from([(
                "aws".to_string(),
                BTreeMap::from([("aws-1".to_string(), r1), ("aws-2".to_string(), r2)]),
            )])
        };
        assert!(
            annotations_durable(&ops, &state(replica(&[("a", "1"), ("b", "2")]), replica(&[("a", "1"), ("b", "2")])))
                .holds
        );
        assert!(annotations_durable(&ops, &state(replica(&[("a", "1")]), replica(&[("a", "1")]))).holds);
        let lost = annotations_durable(&ops, &state(replica(&[("a", "1")]), replica(&[])));
        assert!(!lost.holds && lost.detail.contains("aws-2"), "{lost:?}");
        assert!(!annotations_durable(&ops, &state(replica(&[("a", "1"), ("c", "3")]), replica(&[("a", "1")]))).holds);
    }

    fn attempt(n: u32, state: &str, cluster: &str, term: Option<u64>) -> AttemptInfo {
        AttemptInfo {
            attempt: n,
            cluster: cluster.parse().unwrap(),
            state: state.parse().expect("an attempt state"),
            term: term.map(Term),
            exit_code: None,
            message: None,
            bound_ms: 0,
            started_ms: None,
            ended_ms: None,
            routes: Vec::new(),
        }
    }

    fn detail(id: &str, name: &str, state: JobState, attempts: Vec<AttemptInfo>) -> JobDetail {
        let cluster = attempts.iter().rev().find(|a| is_result(&a.state)).map(|a| a.cluster.clone());
        JobDetail {
            log_truncated: false,
            job: JobInfo {
                name: name.into(),
                id: id.into(),
                pipeline: "p".into(),
                cluster,
                state,
                attempts: attempts.len() as u32,
                inputs: Vec::new(),
                reason: None,
                exit_code: None,
                output: None,
                cancel_requested: false,
                created_ms: 0,
                finished_ms: None,
            },
            attempts,
        }
    }

    fn ledger(lines: &str) -> Vec<LedgerEntry> {
        parse_ledger(lines)
    }

    fn snapshot(at: i64, reachable: &[(&str, &str)]) -> MatrixSnapshot {
        MatrixSnapshot {
            asked_ms: at,
            answered_ms: at + 5,
            reachable: reachable.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        }
    }

    fn given(from_job: &str, route: Route, at_ms: i64, reason: Option<&str>) -> atoll_api::jobs::RouteTaken {
        atoll_api::jobs::RouteTaken {
            from_job: from_job.into(),
            from_cluster: "aws".parse().unwrap(),
            route,
            at_ms,
            reason: reason.map(str::to_string),
        }
    }

    #[test]
    fn a_route_against_a_steady_matrix_is_caught_and_changes_are_not_judged() {
        let whole = [("aws", "gcp"), ("gcp", "aws")];
        let one_way = [("aws", "gcp")]; // gcp no longer reaches aws: aws pushes
        let snapshots = [
            snapshot(1_000, &whole),
            snapshot(1_200, &whole),
            snapshot(1_400, &one_way),
            snapshot(1_600, &one_way),
            snapshot(1_800, &[]),
            snapshot(2_000, &[]),
            snapshot(9_000, &[]),
        ];
        let job = |routes: Vec<atoll_api::jobs::RouteTaken>| {
            let mut d = detail("j1", "check", JobState::Finished, vec![attempt(1, "finished", "gcp", Some(1))]);
            d.attempts[0].routes = routes;
            d
        };
        let good = job(vec![
            given("a", Route::Pull, 1_100, None),
            given("b", Route::Relay, 1_300, None), // the matrix changed around it: not judged
            given("c", Route::Push, 1_500, None),
            given("d", Route::Relay, 1_900, None),
            given("a", Route::Relay, 1_950, Some("pulling from aws: refused")),
            given("e", Route::Pull, 5_000, None), // a gap in the answers: not judged
        ]);
        let verdict = routes_follow_the_matrix(&[good], &snapshots, 0);
        assert!(verdict.holds, "{verdict:?}");
        assert!(
            verdict.detail.starts_with("3 routes judged by a steady matrix, 1 fallbacks relayed, 2 given"),
            "{verdict:?}"
        );

        let bad = job(vec![given("a", Route::Relay, 1_100, None), given("c", Route::Pull, 1_500, None)]);
        let verdict = routes_follow_the_matrix(&[bad], &snapshots, 0);
        assert!(!verdict.holds, "{verdict:?}");
        assert!(
            verdict.detail.contains(
                "j1 attempt 1 input from a (aws->gcp): the gateway gave relay at 1100 while the matrix called for pull"
            ),
            "{verdict:?}"
        );
        assert!(verdict.detail.contains("gave pull at 1500 while the matrix called for push"), "{verdict:?}");

        let unfallen = job(vec![
            given("a", Route::Relay, 1_100, Some("pulling from aws: refused")),
            given("a", Route::Pull, 1_150, None),
        ]);
        let verdict = routes_follow_the_matrix(&[unfallen], &snapshots, 0);
        assert!(!verdict.holds && verdict.detail.contains("pull after falling back"), "{verdict:?}");
        // With replicas the route may come from one whose matrix lags the one the suite asked:
        // the pull given at 1500 is not judged when the answers 150 ms around it disagree.
        let lagging = job(vec![given("c", Route::Pull, 1_500, None)]);
        assert!(!routes_follow_the_matrix(std::slice::from_ref(&lagging), &snapshots, 0).holds);
        let verdict = routes_follow_the_matrix(&[lagging], &snapshots, 150);
        assert!(verdict.holds && verdict.detail.starts_with("0 routes judged"), "{verdict:?}");
    }

    #[test]
    fn work_moved_without_a_lost_cluster_is_caught() {
        let moved = detail(
            "j1",
            "a",
            JobState::Finished,
            vec![attempt(1, "moved", "aws", None), attempt(2, "finished", "gcp", Some(1))],
        );
        let stayed = detail("j2", "b", JobState::Finished, vec![attempt(1, "finished", "aws", Some(1))]);
        let jobs = [moved, stayed];
        let broken = work_moves_only_off_lost_clusters(&jobs, false);
        assert!(!broken.holds && broken.detail.contains("j1 attempt 1 moved off aws"), "{broken:?}");
        assert!(work_moves_only_off_lost_clusters(&jobs, true).holds);
        assert!(work_moves_only_off_lost_clusters(&jobs[1..], false).holds);
    }

    #[test]
    fn a_job_lost_or_with_two_results_or_with_a_moved_result_is_caught() {
        let ops = vec![op(OpKind::Submit { name: "p1".into(), pipeline: Some("p".into()) }, Outcome::Ok)];
        let good = detail(
            "j1",
            "make",
            JobState::Finished,
            vec![attempt(1, "moved", "gcp", Some(1)), attempt(2, "finished", "aws", Some(1))],
        );
        let ran = ledger("made j1 2 abc\n");
        let end = |d: JobDetail| vec![PipelineEnd { pipeline: "p".into(), jobs: vec![d] }];
        assert!(exactly_one_result(&ops, &end(good.clone()), &ran).holds);
        assert!(!exactly_one_result(&ops, &end(good.clone()), &ledger("")).holds, "a result no run produced");
        assert!(!exactly_one_result(&ops, &[], &ran).holds, "an acknowledged pipeline lost");
        let two = detail(
            "j1",
            "make",
            JobState::Finished,
            vec![attempt(1, "finished", "gcp", Some(1)), attempt(2, "finished", "aws", Some(1))],
        );
        assert!(!exactly_one_result(&ops, &end(two), &ledger("made j1 1 a\nmade j1 2 b\n")).holds);
        let stuck = detail("j1", "make", JobState::Running, vec![attempt(1, "bound", "aws", Some(1))]);
        assert!(!exactly_one_result(&ops, &end(stuck), &ran).holds);
    }

    #[test]
    fn a_child_receiving_other_bytes_is_caught() {
        let mut make = detail("m", "make", JobState::Finished, vec![attempt(1, "finished", "aws", Some(1))]);
        make.job.output = Some(OutputInfo { digest: "sha256:aa".into(), size: 1 });
        let mut check = detail("c", "check", JobState::Finished, vec![attempt(1, "finished", "gcp", Some(1))]);
        check.job.inputs =
            vec![InputInfo { from_job: "make".into(), mode: None, route: None, digest: Some("sha256:aa".into()) }];
        let ends = vec![PipelineEnd { pipeline: "p".into(), jobs: vec![make.clone(), check.clone()] }];
        assert!(outputs_match(&ends, &ledger("made m 1 s1\ngot c 1 s1\n")).holds);
        assert!(!outputs_match(&ends, &ledger("made m 1 s1\ngot c 1 s2\n")).holds);
        check.job.inputs[0].digest = Some("sha256:bb".into());
        let ends = vec![PipelineEnd { pipeline: "p".into(), jobs: vec![make, check] }];
        assert!(!outputs_match(&ends, &ledger("made m 1 s1\ngot c 1 s1\n")).holds);
    }

    #[test]
    fn convergence_and_leftovers_have_their_verdicts() {
        let wait = |ms| vec![MatrixWait { what: "all reachable".into(), after_ms: ms }];
        assert!(matrix_follows(&wait(Some(900)), 1_000).holds);
        assert!(!matrix_follows(&wait(Some(1_100)), 1_000).holds);
        assert!(!matrix_follows(&wait(None), 1_000).holds);
        assert!(nothing_left_running(&BTreeMap::new()).holds);
        assert!(!nothing_left_running(&BTreeMap::from([("aws-1".to_string(), vec![42])])).holds);
    }

    #[test]
    fn lease_takes_are_read_from_log_lines() {
        let log = "2026-11-23T21:35:07.233155Z  INFO took the duties lease: this replica schedules generation=3 replica=\"g2\"\n\
                   2026-11-23T21:35:07.300000Z  INFO gateway replicas replicas=[\"a\"]\n\
                   2026-11-23T21:36:00.000001Z  INFO took the duties lease: this replica schedules generation=7\n";
        let takes = lease_takes("g2", log);
        assert_eq!(takes.len(), 2);
        assert_eq!(takes[0], LeaseTake { replica: "g2".into(), generation: 3, at: at("2026-11-23T21:35:07.233155Z") });
        assert_eq!(
            (takes[1].replica.as_str(), takes[1].generation),
            ("g2", 7),
            "the log's replica when the line names none"
        );
    }

    fn generation(generation: u64, holder: &str, acquired_ms: i64) -> Generation {
        Generation { generation, holder: holder.into(), incarnation: format!("{holder}-i"), acquired_ms }
    }

    fn take(replica: &str, generation: u64) -> LeaseTake {
        LeaseTake { replica: replica.into(), generation, at: at("2026-01-01T00:00:00Z") }
    }

    #[test]
    fn two_holders_of_one_generation_are_caught() {
        let history = [generation(1, "g1", 100), generation(2, "g2", 2_000), generation(3, "g1", 5_000)];
        let good = one_holder_per_generation(&[take("g1", 1), take("g2", 2), take("g1", 3)], &history);
        assert!(good.holds, "{good:?}");
        assert!(good.detail.contains("3 generations recorded (3 taken in the logs), held by g1, g2"), "{good:?}");
        let twice = one_holder_per_generation(&[take("g1", 1), take("g2", 2), take("g3", 2)], &history);
        assert!(!twice.holds && twice.detail.contains("generation 2 taken 2 times: g2 at"), "{twice:?}");
        assert!(twice.detail.contains("g3 says it took generation 2, the database's history names g2"), "{twice:?}");
        let unknown = one_holder_per_generation(&[take("g3", 4)], &history);
        assert!(!unknown.holds && unknown.detail.contains("g3 says it took generation 4, which"), "{unknown:?}");
    }

    fn placed(
        job: &str,
        attempt: u32,
        state: &str,
        bound_ms: i64,
        ended_ms: Option<i64>,
        generation: Option<u64>,
    ) -> AttemptRecord {
        AttemptRecord {
            job: job.into(),
            attempt,
            cluster: if attempt % 2 == 1 { "aws".into() } else { "gcp".into() },
            state: state.into(),
            bound_ms,
            ended_ms,
            generation,
        }
    }

    #[test]
    fn a_job_bound_twice_at_once_is_caught() {
        let good = [
            placed("j1", 1, "moved", 100, Some(500), Some(1)),
            placed("j1", 2, "finished", 500, Some(900), Some(2)),
            placed("j2", 1, "lost", 100, Some(300), Some(1)),
            placed("j2", 2, "finished", 300, Some(700), None),
        ];
        let v = no_job_placed_twice(&good);
        assert!(v.holds, "{v:?}");
        assert_eq!(v.detail, "4 attempts of 2 jobs, never two bound at once");
        let overlapping = [
            placed("j1", 1, "finished", 100, Some(900), Some(1)),
            placed("j1", 2, "finished", 500, Some(950), Some(2)),
        ];
        let v = no_job_placed_twice(&overlapping);
        assert!(!v.holds, "{v:?}");
        assert!(
            v.detail.contains(
                "j1: attempt 2 bound on gcp at 500 while attempt 1 (bound on aws at 100) was still bound (until 900)"
            ),
            "{v:?}"
        );
        let never_ended = [placed("j1", 1, "bound", 100, None, Some(1)), placed("j1", 2, "bound", 500, None, Some(2))];
        assert!(no_job_placed_twice(&never_ended).detail.contains("(to the end)"));
    }

    #[test]
    fn a_write_of_an_old_generation_is_caught() {
        let history = [generation(1, "g1", 100), generation(2, "g2", 2_000), generation(4, "g3", 5_000)];
        let good = [
            placed("j1", 1, "finished", 1_500, Some(3_000), Some(1)),
            placed("j2", 1, "moved", 150, Some(1_999), Some(1)),
            placed("j2", 2, "finished", 2_500, Some(2_600), Some(2)),
            placed("j3", 1, "finished", 9_000, Some(9_500), Some(4)),
            placed("j3", 2, "finished", 9_600, Some(9_700), None),
        ];
        let v = no_old_generation_writes(&good, &history);
        assert!(v.holds, "{v:?}");
        assert!(v.detail.starts_with("4 attempts written by scheduling passes of 3 generations"), "{v:?}");
        // The zombie: generation 1 binding after generation 2 was taken; generation 2 moving
        // work after generation 4 was (the next one recorded, 3 never was).
        let zombie = [
            placed("j4", 1, "finished", 2_100, Some(2_900), Some(1)),
            placed("j5", 1, "moved", 1_000, Some(5_050), Some(2)),
        ];
        let v = no_old_generation_writes(&zombie, &history);
        assert!(!v.holds, "{v:?}");
        assert!(v.detail.contains("j4 attempt 1 bound on aws at 2100 under generation 1, 100 ms after generation 2 was taken by g2 at 2000"), "{v:?}");
        assert!(
            v.detail.contains("j5 attempt 1 moved off aws at 5050 under generation 2, 50 ms after generation 4"),
            "{v:?}"
        );
        let unrecorded = no_old_generation_writes(&[placed("j6", 1, "bound", 100, None, Some(3))], &history);
        assert!(
            !unrecorded.holds
                && unrecorded.detail.contains("under generation 3, which the database's history does not hold")
        );
    }

    #[test]
    fn a_cluster_lost_or_unheard_too_long_is_caught() {
        let clusters = ["aws".to_string(), "gcp".to_string()];
        let sample = |at_ms, cluster: &str, seen| HeardSample { at_ms, cluster: cluster.into(), last_seen_ms: seen };
        let samples = [
            sample(1_000, "aws", Some(900)),
            sample(1_000, "gcp", Some(800)),
            sample(3_000, "aws", Some(1_100)),
            sample(3_000, "gcp", Some(2_900)),
        ];
        let history = [generation(1, "g1", 0), generation(2, "g2", 2_000)];
        let check = |samples: &[HeardSample], bound, dead_after| {
            clusters_heard_throughout(&clusters, &[], &[], samples, &history, bound, dead_after)
        };
        let v = check(&samples, 2_000, 1_500);
        assert!(v.holds, "{v:?}");
        assert_eq!(
            v.detail,
            "no work moved; longest silence aws 1900 ms, gcp 200 ms (bound 2000 ms, dead after 1500 ms; 4 samples)"
        );
        let v = check(&samples, 1_500, 1_500);
        assert!(
            !v.holds && v.detail.contains("aws unheard for 1900 ms (sampled at 3000), past the 1500 ms bound"),
            "{v:?}"
        );
        // Silence counts from the take of the generation holding the lease: aws was silent 1900
        // ms, 1000 of them since generation 2 was taken.
        let v = check(&samples, 2_000, 900);
        assert!(
            !v.holds
                && v.detail.contains(
                    "aws unheard for 1000 ms since the lease holder of the time took it (sampled at 3000), past the 900 ms dead-after bound"
                ),
            "{v:?}"
        );
        let log =
            "2026-01-01T00:00:01Z  WARN moving work off a lost cluster cluster=aws jobs=2 state=Dead revoked=false\n";
        let moved = work_moved_lines("g2", log);
        assert_eq!(moved, ["g2 moved work off aws (Dead) at 2026-01-01T00:00:01Z"]);
        let attempts = [placed("j1", 1, "moved", 1, Some(2), Some(1))];
        let v = clusters_heard_throughout(&clusters, &moved, &attempts, &samples, &history, 2_000, 1_500);
        assert!(
            !v.holds && v.detail.contains("g2 moved work off aws") && v.detail.contains("j1 attempt 1 moved off aws"),
            "{v:?}"
        );
        let v = check(&samples[..1], 2_000, 1_500);
        assert!(!v.holds && v.detail.contains("no heartbeat time of gcp was sampled"), "{v:?}");
    }
}
