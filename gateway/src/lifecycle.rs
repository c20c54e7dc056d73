//! The job lifecycle as pure decisions: how a pipeline moves when jobs end ([`settle`]), and what
//! a cluster's report does to a job ([`decide`]). The database applies these decisions with
//! conditional updates, so a decision made on a row that changed meanwhile does not apply.
//!
//! ```text
//!  waiting --parents final, `on` holds--> queued --placed--> assigned --running--> running
//!     |                                     ^                  |  |                  |
//!     +--parents final, `on` fails--> skipped                  |  +------lost--------+--> assigned (attempt+1, same cluster)
//!                                           +--failure/error with retries left, or cluster dead--+ (attempt+1, placed again)
//!                                                       any report of a final state --> finished|failure|error|unstable|killed
//! ```
//!
//! Attempts: a job starts at attempt 1; every new run (retry, lost run, reroute) takes the next
//! number and binds to one cluster. Only the bound (cluster, attempt) may move the job, and only
//! from `assigned` or `running`: that is what makes exactly one result accepted.

use atoll_api::jobs::JobState;
use atoll_api::jobs::ReportedState;
use atoll_api::spec::FinalState;
use atoll_api::spec::JobKind;
use atoll_api::spec::JobSpec;
use atoll_api::spec::PipelineSpec;

/// A change [`settle`] asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    pub job: usize,
    pub state: JobState,
    pub reason: String,
}

/// Move every `waiting` job whose parents have all ended: to `queued` when every dependency's
/// `on` condition holds (a `wait` job straight to `finished`), else to `skipped`. One pass in
/// topological order carries a change through a whole chain. `states[i]` is updated in place.
pub fn settle(spec: &PipelineSpec, order: &[usize], states: &mut [JobState]) -> Vec<Settled> {
    let index: std::collections::HashMap<&str, usize> =
        spec.jobs.iter().enumerate().map(|(i, j)| (j.name.as_str(), i)).collect();
    let mut changes = Vec::new();
    for &i in order {
        if states[i] != JobState::Waiting {
            continue;
        }
        let job = &spec.jobs[i];
        let mut ended = Vec::with_capacity(job.depends_on.len());
        for dep in &job.depends_on {
            match states[index[dep.job.as_str()]].final_state() {
                Some(state) => ended.push((dep, state)),
                None => break,
            }
        }
        if ended.len() < job.depends_on.len() {
            continue;
        }
        let blocked = ended.iter().find(|(dep, state)| !dep.allows(*state));
        let (state, reason) = match blocked {
            Some((dep, state)) => {
                (JobState::Skipped, format!("parent {:?} ended {state}; this job runs on {}", dep.job, on_words(dep)))
            }
            None if job.kind == JobKind::Wait => (JobState::Finished, "every parent ended as required".to_string()),
            None if job.depends_on.is_empty() => (JobState::Queued, "no parents".to_string()),
            None => (JobState::Queued, "every parent ended as required".to_string()),
        };
        states[i] = state;
        changes.push(Settled { job: i, state, reason });
    }
    changes
}

fn on_words(dep: &atoll_api::spec::Dependency) -> String {
    dep.on.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(", ")
}

/// A job as a report sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound<'a> {
    pub state: JobState,
    pub cluster: Option<&'a str>,
    pub attempt: u32,
    /// Attempts that ended in `failure` or `error` so far.
    pub failed_attempts: u32,
    pub cancel_requested: bool,
}

/// What a report does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `assigned` -> `running`.
    Start,
    /// The job ends in this state.
    End(FinalState),
    /// The attempt ended in failure or error and retries are left: a new attempt, placed again.
    Retry { failed_attempts: u32 },
    /// The run was lost: a new attempt on the same cluster.
    Rerun,
    /// Already recorded.
    Duplicate,
    /// Not this cluster's attempt, or contradicts the recorded result.
    Refuse(String),
}

/// Decide what `cluster`'s report about `attempt` does to a job (pure; the caller applies it
/// only if the job is still as read).
pub fn decide(job: &Bound<'_>, spec: &JobSpec, cluster: &str, attempt: u32, report: ReportedState) -> Decision {
    let ours = job.cluster == Some(cluster) && job.attempt == attempt;
    if !ours {
        let now = match job.cluster {
            Some(c) => format!("attempt {} on {c}", job.attempt),
            None => format!("attempt {} not placed yet", job.attempt),
        };
        return Decision::Refuse(format!(
            "{cluster} attempt {attempt} is not the job's current attempt ({now}, {})",
            job.state
        ));
    }
    if let Some(ended) = job.state.final_state() {
        return match report {
            ReportedState::Running | ReportedState::Lost => Decision::Duplicate,
            other => match reported_final(other) {
                Some(state) if state == ended => Decision::Duplicate,
                _ => Decision::Refuse(format!("the attempt already ended {ended}")),
            },
        };
    }
    if !job.state.is_active() {
        return Decision::Refuse(format!("the job is {}, not running here", job.state));
    }
    match report {
        ReportedState::Running if job.state == JobState::Running => Decision::Duplicate,
        ReportedState::Running => Decision::Start,
        ReportedState::Lost => Decision::Rerun,
        other => {
            let state = reported_final(other).expect("every other report is final");
            let failed = matches!(state, FinalState::Failure | FinalState::Error);
            if failed && !job.cancel_requested && job.failed_attempts < spec.retries {
                Decision::Retry { failed_attempts: job.failed_attempts + 1 }
            } else {
                Decision::End(state)
            }
        }
    }
}

fn reported_final(state: ReportedState) -> Option<FinalState> {
    Some(match state {
        ReportedState::Finished => FinalState::Finished,
        ReportedState::Failure => FinalState::Failure,
        ReportedState::Error => FinalState::Error,
        ReportedState::Unstable => FinalState::Unstable,
        ReportedState::Killed => FinalState::Killed,
        ReportedState::Running | ReportedState::Lost => return None,
    })
}

#[cfg(test)]
mod tests {
    use atoll_api::spec;

    use super::*;

    fn pipeline(text: &str) -> (PipelineSpec, Vec<usize>) {
        let spec = spec::parse(text).unwrap();
        let order = spec::topological_order(&spec);
        (spec, order)
    }

    const DIAMOND: &str = "version: 1
jobs:
  - {name: build, type: command, command: make}
  - {name: test, type: command, command: make test, depends_on: [build]}
  - {name: on-fail, type: command, command: report, depends_on: [{job: test, on: [failure, error]}]}
  - {name: always, type: command, command: cleanup, depends_on: [{job: test, on: ['*']}, build]}
  - {name: gate, type: wait, depends_on: [test, always]}
  - {name: after-gate, type: command, command: deploy, depends_on: [gate]}
";

    fn states(spec: &PipelineSpec) -> Vec<JobState> {
        vec![JobState::Waiting; spec.jobs.len()]
    }

    #[test]
    fn roots_are_queued_at_once_and_children_wait() {
        let (spec, order) = pipeline(DIAMOND);
        let mut s = states(&spec);
        let changes = settle(&spec, &order, &mut s);
        assert_eq!(changes, vec![Settled { job: 0, state: JobState::Queued, reason: "no parents".into() }]);
        assert_eq!(s[1..], [JobState::Waiting; 5]);
    }

    #[test]
    fn a_finished_chain_queues_children_and_finishes_wait_jobs_in_one_pass() {
        let (spec, order) = pipeline(DIAMOND);
        let mut s = states(&spec);
        s[0] = JobState::Finished;
        s[1] = JobState::Finished;
        s[3] = JobState::Finished;
        settle(&spec, &order, &mut s);
        // on-fail needs failure/error: skipped; gate is a wait job: finished; after-gate: queued
        assert_eq!(s[2], JobState::Skipped);
        assert_eq!(s[4], JobState::Finished);
        assert_eq!(s[5], JobState::Queued);
    }

    #[test]
    fn a_failed_parent_skips_plain_children_and_runs_the_failure_and_star_branches() {
        let (spec, order) = pipeline(DIAMOND);
        let mut s = states(&spec);
        s[0] = JobState::Finished;
        s[1] = JobState::Failure;
        let changes = settle(&spec, &order, &mut s);
        assert_eq!(s[2], JobState::Queued, "on: [failure, error]");
        assert_eq!(s[3], JobState::Queued, "on: [*]");
        assert_eq!(s[4], JobState::Waiting, "gate waits for always");
        s[3] = JobState::Finished;
        let changes2 = settle(&spec, &order, &mut s);
        assert_eq!(s[4], JobState::Skipped, "gate needs test finished");
        assert_eq!(s[5], JobState::Skipped, "a skip carries down the chain");
        let why = &changes2.iter().find(|c| c.job == 4).unwrap().reason;
        assert_eq!(why, "parent \"test\" ended failure; this job runs on finished");
        assert!(changes.iter().all(|c| c.job != 4));
    }

    #[test]
    fn star_covers_every_final_state_including_skipped_and_killed() {
        let (spec, order) = pipeline(
            "version: 1
jobs:
  - {name: a, type: command, command: x}
  - {name: b, type: command, command: x, depends_on: [a]}
  - {name: c, type: command, command: x, depends_on: [{job: b, on: ['*']}]}
  - {name: k, type: command, command: x, depends_on: [{job: a, on: [killed]}]}
",
        );
        let mut s = states(&spec);
        s[0] = JobState::Killed;
        settle(&spec, &order, &mut s);
        assert_eq!(s, [JobState::Killed, JobState::Skipped, JobState::Queued, JobState::Queued]);
    }

    fn command(retries: u32) -> JobSpec {
        let mut spec = spec::parse("version: 1\njobs: [{name: j, type: command, command: x}]").unwrap().jobs.remove(0);
        spec.retries = retries;
        spec
    }

    fn bound(state: JobState, cluster: &str, attempt: u32) -> Bound<'_> {
        Bound { state, cluster: Some(cluster), attempt, failed_attempts: 0, cancel_requested: false }
    }

    #[test]
    fn the_bound_attempt_starts_and_ends_the_job() {
        let spec = command(0);
        let job = bound(JobState::Assigned, "aws", 1);
        assert_eq!(decide(&job, &spec, "aws", 1, ReportedState::Running), Decision::Start);
        assert_eq!(
            decide(&job, &spec, "aws", 1, ReportedState::Finished),
            Decision::End(FinalState::Finished),
            "a run so short that `running` was never reported still ends"
        );
        let job = bound(JobState::Running, "aws", 1);
        assert_eq!(decide(&job, &spec, "aws", 1, ReportedState::Running), Decision::Duplicate);
        assert_eq!(decide(&job, &spec, "aws", 1, ReportedState::Failure), Decision::End(FinalState::Failure));
        assert_eq!(decide(&job, &spec, "aws", 1, ReportedState::Killed), Decision::End(FinalState::Killed));
    }

    #[test]
    fn exactly_one_result_is_accepted() {
        let spec = command(0);
        let ended = bound(JobState::Finished, "aws", 1);
        assert_eq!(decide(&ended, &spec, "aws", 1, ReportedState::Finished), Decision::Duplicate, "a resent report");
        assert!(
            matches!(decide(&ended, &spec, "aws", 1, ReportedState::Failure), Decision::Refuse(r) if r.contains("already ended finished"))
        );
        assert_eq!(decide(&ended, &spec, "aws", 1, ReportedState::Running), Decision::Duplicate);
    }

    #[test]
    fn other_clusters_and_old_attempts_are_refused() {
        let spec = command(0);
        let moved = bound(JobState::Running, "gcp", 2);
        let Decision::Refuse(why) = decide(&moved, &spec, "aws", 1, ReportedState::Finished) else { panic!() };
        assert_eq!(why, "aws attempt 1 is not the job's current attempt (attempt 2 on gcp, running)");
        assert!(matches!(decide(&moved, &spec, "gcp", 1, ReportedState::Finished), Decision::Refuse(_)));
        assert!(matches!(decide(&moved, &spec, "aws", 2, ReportedState::Running), Decision::Refuse(_)));
        let queued =
            Bound { state: JobState::Queued, cluster: None, attempt: 2, failed_attempts: 0, cancel_requested: false };
        let Decision::Refuse(why) = decide(&queued, &spec, "aws", 1, ReportedState::Finished) else { panic!() };
        assert!(why.contains("attempt 2 not placed yet"), "{why}");
    }

    #[test]
    fn failures_retry_while_retries_last_but_not_when_cancelled() {
        let spec = command(2);
        let mut job = bound(JobState::Running, "aws", 1);
        assert_eq!(decide(&job, &spec, "aws", 1, ReportedState::Failure), Decision::Retry { failed_attempts: 1 });
        job.failed_attempts = 1;
        assert_eq!(decide(&job, &spec, "aws", 1, ReportedState::Error), Decision::Retry { failed_attempts: 2 });
        job.failed_attempts = 2;
        assert_eq!(decide(&job, &spec, "aws", 1, ReportedState::Failure), Decision::End(FinalState::Failure));
        let mut job = bound(JobState::Running, "aws", 1);
        job.cancel_requested = true;
        assert_eq!(decide(&job, &spec, "aws", 1, ReportedState::Failure), Decision::End(FinalState::Failure));
        assert_eq!(
            decide(&job, &spec, "aws", 1, ReportedState::Unstable),
            Decision::End(FinalState::Unstable),
            "unstable is not retried"
        );
    }

    #[test]
    fn a_lost_run_is_run_again_and_does_not_count_as_a_failure() {
        let spec = command(0);
        let job = bound(JobState::Running, "aws", 3);
        assert_eq!(decide(&job, &spec, "aws", 3, ReportedState::Lost), Decision::Rerun);
        let job = bound(JobState::Assigned, "aws", 3);
        assert_eq!(decide(&job, &spec, "aws", 3, ReportedState::Lost), Decision::Rerun);
    }
}
