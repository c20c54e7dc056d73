//! Job attempts a cluster holds, as replicated state.
//!
//! The leader records an attempt before it starts it, records its start (which replica, in which
//! term, under which executor handle) and its end before it reports either, and forgets it once
//! the gateway has the final report. So a new leader knows, from the log alone, every attempt
//! the cluster holds and what the gateway has still to hear about each.

use serde::Deserialize;
use serde::Serialize;

/// One attempt of one job, held by this cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job: String,
    pub pipeline: String,
    pub attempt: u32,
    /// The job's spec as the gateway sent it (JSON), opaque to the store.
    pub spec: String,
    /// Its parents' outputs as the gateway sent them (JSON list; empty: none), opaque.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub inputs: String,
    pub run: RunState,
    /// Cancel was asked: whoever leads kills the run and reports `killed`.
    #[serde(default)]
    pub cancel: bool,
    /// The gateway has acknowledged the `running` report.
    #[serde(default)]
    pub running_acked: bool,
    /// Log index at which the attempt was accepted.
    pub revision: u64,
    /// The run's stored output, recorded before its end is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputRecord>,
}

/// A stored output: its blob's manifest (digests as `sha256:<hex>`), opaque to the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub digest: String,
    pub size: u64,
    pub chunk_size: u64,
    pub chunks: Vec<String>,
}

/// Where an attempt's run stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "run")]
pub enum RunState {
    /// Recorded, not started.
    Accepted,
    /// Started by `node` while it led in `term`; `handle` names the run in its executor (a
    /// Kubernetes Job name) when the run can outlive the replica that started it; `secret`
    /// authorizes the run's helpers (a Kubernetes pod's) to fetch its inputs and store its output.
    Started {
        term: u64,
        node: u64,
        handle: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
    },
    /// Over; the gateway has still to acknowledge it.
    Ended { state: EndState, exit_code: Option<i32>, message: Option<String> },
}

/// How an attempt ended, as the cluster reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndState {
    Finished,
    Failure,
    Error,
    Unstable,
    Killed,
    /// The run is gone (its replica lost leadership or died mid-run).
    Lost,
}

impl EndState {
    pub fn as_str(self) -> &'static str {
        match self {
            EndState::Finished => "finished",
            EndState::Failure => "failure",
            EndState::Error => "error",
            EndState::Unstable => "unstable",
            EndState::Killed => "killed",
            EndState::Lost => "lost",
        }
    }
}

/// One change to the held attempts. Ops that do not match the held attempt (an older attempt,
/// a forgotten job) change nothing and answer `false`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "job_op")]
pub enum JobOp {
    /// Hold a new attempt (replaces an older attempt of the same job).
    Accept {
        job: String,
        pipeline: String,
        attempt: u32,
        spec: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        inputs: String,
    },
    /// The attempt's run started.
    Start {
        job: String,
        attempt: u32,
        term: u64,
        node: u64,
        handle: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
    },
    /// The attempt's run ended.
    End { job: String, attempt: u32, state: EndState, exit_code: Option<i32>, message: Option<String> },
    /// The attempt's output is stored (before its end is recorded).
    Output { job: String, attempt: u32, output: OutputRecord },
    /// Cancel was asked for the attempt.
    Cancel { job: String, attempt: u32 },
    /// The gateway acknowledged the `running` report.
    RunningAcked { job: String, attempt: u32 },
    /// Drop the attempt: the gateway has its final report, or it was moved away.
    Forget { job: String, attempt: u32 },
}

impl JobOp {
    pub fn job(&self) -> &str {
        match self {
            JobOp::Accept { job, .. }
            | JobOp::Start { job, .. }
            | JobOp::End { job, .. }
            | JobOp::Output { job, .. }
            | JobOp::Cancel { job, .. }
            | JobOp::RunningAcked { job, .. }
            | JobOp::Forget { job, .. } => job,
        }
    }

    pub fn attempt(&self) -> u32 {
        match self {
            JobOp::Accept { attempt, .. }
            | JobOp::Start { attempt, .. }
            | JobOp::End { attempt, .. }
            | JobOp::Output { attempt, .. }
            | JobOp::Cancel { attempt, .. }
            | JobOp::RunningAcked { attempt, .. }
            | JobOp::Forget { attempt, .. } => *attempt,
        }
    }

    /// Apply to the held record of the op's job (pure): the new record (`None`: removed) and
    /// whether anything changed.
    pub fn apply(&self, held: Option<&JobRecord>, revision: u64) -> (Option<JobRecord>, bool) {
        let keep = (held.cloned(), false);
        let ours = held.filter(|r| r.attempt == self.attempt());
        match self {
            JobOp::Accept { job, pipeline, attempt, spec, inputs } => {
                if held.is_some_and(|r| r.attempt >= *attempt) {
                    return keep;
                }
                let record = JobRecord {
                    job: job.clone(),
                    pipeline: pipeline.clone(),
                    attempt: *attempt,
                    spec: spec.clone(),
                    inputs: inputs.clone(),
                    run: RunState::Accepted,
                    cancel: false,
                    running_acked: false,
                    revision,
                    output: None,
                };
                (Some(record), true)
            }
            JobOp::Start { term, node, handle, secret, .. } => match ours {
                Some(r) if !matches!(r.run, RunState::Ended { .. }) => {
                    let mut r = r.clone();
                    r.run =
                        RunState::Started { term: *term, node: *node, handle: handle.clone(), secret: secret.clone() };
                    (Some(r), true)
                }
                _ => keep,
            },
            JobOp::End { state, exit_code, message, .. } => match ours {
                Some(r) if !matches!(r.run, RunState::Ended { .. }) => {
                    let mut r = r.clone();
                    r.run = RunState::Ended { state: *state, exit_code: *exit_code, message: message.clone() };
                    (Some(r), true)
                }
                _ => keep,
            },
            JobOp::Output { output, .. } => match ours {
                Some(r) if !matches!(r.run, RunState::Ended { .. }) && r.output.is_none() => {
                    let mut r = r.clone();
                    r.output = Some(output.clone());
                    (Some(r), true)
                }
                _ => keep,
            },
            JobOp::Cancel { .. } => match ours {
                Some(r) if !r.cancel => {
                    let mut r = r.clone();
                    r.cancel = true;
                    (Some(r), true)
                }
                _ => keep,
            },
            JobOp::RunningAcked { .. } => match ours {
                Some(r) if !r.running_acked => {
                    let mut r = r.clone();
                    r.running_acked = true;
                    (Some(r), true)
                }
                _ => keep,
            },
            JobOp::Forget { .. } => match ours {
                Some(_) => (None, true),
                None => keep,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(attempt: u32) -> JobOp {
        JobOp::Accept { job: "j".into(), pipeline: "p".into(), attempt, spec: "{}".into(), inputs: String::new() }
    }

    #[test]
    fn an_attempt_moves_through_its_states_and_is_forgotten() {
        let (r, changed) = accept(1).apply(None, 5);
        assert!(changed);
        let r = r.unwrap();
        assert_eq!((r.run.clone(), r.revision), (RunState::Accepted, 5));
        let start = JobOp::Start { job: "j".into(), attempt: 1, term: 3, node: 2, handle: None, secret: None };
        let (r, _) = start.apply(Some(&r), 6);
        let r = r.unwrap();
        assert_eq!(r.run, RunState::Started { term: 3, node: 2, handle: None, secret: None });
        let end =
            JobOp::End { job: "j".into(), attempt: 1, state: EndState::Finished, exit_code: Some(0), message: None };
        let (r, _) = end.apply(Some(&r), 7);
        let r = r.unwrap();
        // An end is final: a later start or end of the same attempt changes nothing.
        assert_eq!(start.apply(Some(&r), 8), (Some(r.clone()), false));
        let other = JobOp::End { job: "j".into(), attempt: 1, state: EndState::Killed, exit_code: None, message: None };
        assert_eq!(other.apply(Some(&r), 8), (Some(r.clone()), false));
        let (gone, changed) = JobOp::Forget { job: "j".into(), attempt: 1 }.apply(Some(&r), 9);
        assert!(changed && gone.is_none());
    }

    #[test]
    fn an_output_is_recorded_once_and_only_before_the_end() {
        let (r, _) = accept(1).apply(None, 1);
        let output =
            OutputRecord { digest: "sha256:aa".into(), size: 3, chunk_size: 8, chunks: vec!["sha256:bb".into()] };
        let op = JobOp::Output { job: "j".into(), attempt: 1, output: output.clone() };
        let (r, changed) = op.apply(r.as_ref(), 2);
        assert!(changed);
        let r = r.unwrap();
        assert_eq!(r.output.as_ref(), Some(&output));
        let other = OutputRecord { digest: "sha256:cc".into(), ..output.clone() };
        let again = JobOp::Output { job: "j".into(), attempt: 1, output: other.clone() };
        assert_eq!(again.apply(Some(&r), 3), (Some(r.clone()), false), "the first output stays");
        let end =
            JobOp::End { job: "j".into(), attempt: 1, state: EndState::Finished, exit_code: Some(0), message: None };
        let (ended, _) = end.apply(Some(&accept(1).apply(None, 1).0.unwrap()), 4);
        let late = JobOp::Output { job: "j".into(), attempt: 1, output: other };
        assert_eq!(late.apply(ended.as_ref(), 5), (ended.clone(), false), "an ended attempt takes no output");
        let wrong = JobOp::Output { job: "j".into(), attempt: 2, output };
        assert_eq!(wrong.apply(Some(&r), 6), (Some(r.clone()), false));
    }

    #[test]
    fn ops_for_another_attempt_change_nothing() {
        let (r, _) = accept(2).apply(None, 1);
        let r = r.unwrap();
        assert_eq!(accept(1).apply(Some(&r), 2), (Some(r.clone()), false), "an older attempt never replaces a newer");
        assert_eq!(accept(2).apply(Some(&r), 2), (Some(r.clone()), false), "accepting twice is idempotent");
        let forget_old = JobOp::Forget { job: "j".into(), attempt: 1 };
        assert_eq!(forget_old.apply(Some(&r), 3), (Some(r.clone()), false));
        let cancel_old = JobOp::Cancel { job: "j".into(), attempt: 1 };
        assert_eq!(cancel_old.apply(Some(&r), 3), (Some(r.clone()), false));
        let (newer, changed) = accept(3).apply(Some(&r), 4);
        assert!(changed);
        assert_eq!(newer.unwrap().attempt, 3, "a newer attempt replaces the held one");
    }
}
