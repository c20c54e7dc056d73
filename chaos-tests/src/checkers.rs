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

/// The gateway never acts on a stale term: the leaders it registers for a cluster go forward
/// in term, one leader per term, and every job result it accepted came from a term it had
/// registered for that cluster.
pub fn gateway_follows_terms(registrations: &[Registration], jobs: &[JobDetail]) -> Verdict {
    let mut problems = Vec::new();
    let mut last: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut known: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for r in registrations {
        known.entry(&r.cluster).or_default().insert(r.term);
        match last.get(r.cluster.as_str()) {
            Some(&(term, leader)) if r.term < term => {
                problems.push(format!(
                    "{} registered term {} (leader {}) after term {term} (leader {leader})",
                    r.cluster, r.term, r.leader
                ));
                continue;
            }
            Some(&(term, leader)) if r.term == term && r.leader != leader => {
                problems.push(format!("{} term {term} registered for leaders {leader} and {}", r.cluster, r.leader));
            }
            _ => {}
        }
        last.insert(&r.cluster, (r.term, r.leader));
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
        format!("{} registrations, {accepted} accepted results", registrations.len()),
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
pub fn routes_follow_the_matrix(jobs: &[JobDetail], snapshots: &[MatrixSnapshot]) -> Verdict {
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
                let before = snapshots.iter().rev().find(|s| s.answered_ms <= taken.at_ms);
                let after = snapshots.iter().find(|s| s.asked_ms >= taken.at_ms);
                let (Some(before), Some(after)) = (before, after) else {
                    unjudged += 1;
                    continue;
                };
                if before.reachable != after.reachable || after.asked_ms - before.answered_ms > MATRIX_GAP_MS {
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
        assert!(gateway_follows_terms(&regs, &[]).holds);
        let stale = [regs.clone(), vec![Registration { cluster: "aws".into(), leader: 1, term: 1 }]].concat();
        assert!(!gateway_follows_terms(&stale, &[]).holds);
        let job = detail("j1", "make", JobState::Finished, vec![attempt(1, "finished", "aws", Some(2))]);
        let v = gateway_follows_terms(&regs, &[job]);
        assert!(!v.holds && v.detail.contains("never registered"), "{v:?}");
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
        let verdict = routes_follow_the_matrix(&[good], &snapshots);
        assert!(verdict.holds, "{verdict:?}");
        assert!(
            verdict.detail.starts_with("3 routes judged by a steady matrix, 1 fallbacks relayed, 2 given"),
            "{verdict:?}"
        );

        let bad = job(vec![given("a", Route::Relay, 1_100, None), given("c", Route::Pull, 1_500, None)]);
        let verdict = routes_follow_the_matrix(&[bad], &snapshots);
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
        let verdict = routes_follow_the_matrix(&[unfallen], &snapshots);
        assert!(!verdict.holds && verdict.detail.contains("pull after falling back"), "{verdict:?}");
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
}
