//! Wire types of pipelines and jobs: submission, listing, and the lease/report protocol between
//! a cluster leader and the gateway.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde::Serialize;

use crate::ids::ClusterName;
use crate::ids::JobId;
use crate::ids::Term;
use crate::spec::FinalState;
use crate::spec::JobSpec;

/// Where a job stands. Final states are the spec's [`FinalState`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Some parent has not ended yet.
    Waiting,
    /// Ready to run, waiting for a cluster (none eligible right now, or not placed yet).
    Queued,
    /// Placed on a cluster, bound to an attempt; the cluster has not reported it running yet.
    Assigned,
    /// The cluster reported the attempt running.
    Running,
    Finished,
    Failure,
    Error,
    Unstable,
    Killed,
    Skipped,
}

impl JobState {
    pub const ALL: [JobState; 10] = [
        JobState::Waiting,
        JobState::Queued,
        JobState::Assigned,
        JobState::Running,
        JobState::Finished,
        JobState::Failure,
        JobState::Error,
        JobState::Unstable,
        JobState::Killed,
        JobState::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Finished => "finished",
            JobState::Failure => "failure",
            JobState::Error => "error",
            JobState::Unstable => "unstable",
            JobState::Killed => "killed",
            JobState::Skipped => "skipped",
        }
    }

    /// The final state this is, if it is one.
    pub fn final_state(self) -> Option<FinalState> {
        Some(match self {
            JobState::Finished => FinalState::Finished,
            JobState::Failure => FinalState::Failure,
            JobState::Error => FinalState::Error,
            JobState::Unstable => FinalState::Unstable,
            JobState::Killed => FinalState::Killed,
            JobState::Skipped => FinalState::Skipped,
            JobState::Waiting | JobState::Queued | JobState::Assigned | JobState::Running => return None,
        })
    }

    pub fn is_final(self) -> bool {
        self.final_state().is_some()
    }

    /// Bound to a cluster's attempt (assigned or running).
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Assigned | JobState::Running)
    }
}

impl From<FinalState> for JobState {
    fn from(state: FinalState) -> Self {
        match state {
            FinalState::Finished => JobState::Finished,
            FinalState::Failure => JobState::Failure,
            FinalState::Error => JobState::Error,
            FinalState::Unstable => JobState::Unstable,
            FinalState::Killed => JobState::Killed,
            FinalState::Skipped => JobState::Skipped,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

/// How a parent's output reaches a job (`atoll submit --json`: `inputs[].mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputMode {
    Local,
    Direct,
    Relay,
}

/// Which way an input travels: [`InputMode`] with the direction of a direct edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Same cluster: read from its own store.
    Local,
    /// The child's cluster reaches the parent's and fetches from it.
    Pull,
    /// Only the parent's cluster reaches the child's: it sends.
    Push,
    /// Neither reaches the other: the parent's cluster uploads to the gateway, the child's
    /// downloads from it (both only dial out).
    Relay,
}

impl Route {
    pub fn mode(self) -> InputMode {
        match self {
            Route::Local => InputMode::Local,
            Route::Pull | Route::Push => InputMode::Direct,
            Route::Relay => InputMode::Relay,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::Pull => "pull",
            Route::Push => "push",
            Route::Relay => "relay",
        }
    }

    /// The route [`Route::as_str`] names.
    pub fn from_name(name: &str) -> Option<Route> {
        [Route::Local, Route::Pull, Route::Push, Route::Relay].into_iter().find(|r| r.as_str() == name)
    }
}

/// A route the gateway gave one input of one attempt, when the child's cluster asked how to get
/// it: the first, then each change (a direct edge that failed falls back to the relay).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTaken {
    /// The parent's name.
    pub from_job: String,
    /// The parent's cluster.
    pub from_cluster: ClusterName,
    pub route: Route,
    /// When the gateway gave it (ms since the epoch).
    pub at_ms: i64,
    /// Why it changed (the failure the child's cluster reported); `None` for a first route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One parent's output as a job's input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputInfo {
    pub from_job: String,
    /// How it travels; `None` until both ends are placed.
    pub mode: Option<InputMode>,
    /// Which way: `local`, `pull`, `push` or `relay` (a direct edge that failed and fell back
    /// to the relay says `relay`); `None` until both ends are placed.
    #[serde(default)]
    pub route: Option<Route>,
    /// The output's SHA-256; `None` until the parent reported one.
    pub digest: Option<String>,
}

/// A job as users see it (`atoll jobs --json`, `atoll submit --json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub name: String,
    pub id: JobId,
    pub pipeline: String,
    /// The cluster of the current attempt; `None` while waiting or queued.
    pub cluster: Option<ClusterName>,
    pub state: JobState,
    /// Attempts started so far (the current one included).
    pub attempts: u32,
    pub inputs: Vec<InputInfo>,
    /// Why it is where it is (placement, skip, failure, refusal), for people.
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    /// The accepted attempt's output; `None` until it ends, or when it wrote nothing.
    #[serde(default)]
    pub output: Option<OutputInfo>,
    pub cancel_requested: bool,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
}

/// `POST /v1/pipelines`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The job spec as a JSON document (the CLI reads YAML and sends it as JSON).
    pub spec: serde_json::Value,
    /// The pipeline files its `workflow` includes name, by path relative to the spec's own
    /// directory (`atoll submit FILE` sends those it read); the gateway expands the includes
    /// from them, and clones `git` includes itself.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub files: std::collections::BTreeMap<String, String>,
}

/// The answer to a submission: everything is recorded before this is sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub pipeline: String,
    pub jobs: Vec<JobInfo>,
}

/// One job attempt a cluster holds in its replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Held {
    pub job: JobId,
    pub attempt: u32,
}

/// `POST /v1/clusters/{name}/lease`: the leader's long poll for work.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The leader's Raft term (fenced like heartbeats).
    pub term: Term,
    /// Every unfinished attempt the cluster holds.
    pub held: Vec<Held>,
    /// How long the gateway may hold the request when there is nothing to say (capped).
    pub wait_ms: u64,
}

/// Work for a cluster: a job attempt to record in Raft, then run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub job: JobId,
    pub pipeline: String,
    pub attempt: u32,
    pub spec: JobSpec,
    /// The stored outputs of its parents, to put under `$ATOLL_INPUTS/<parent>/` (parents that
    /// wrote nothing are not listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<AssignedInput>,
}

/// One parent's output as an assignment carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedInput {
    /// The parent's name: the directory under `$ATOLL_INPUTS`.
    pub from_job: String,
    /// The parent's job id.
    pub job: JobId,
    /// The cluster whose store holds the output.
    pub cluster: ClusterName,
    pub mode: InputMode,
    pub digest: String,
    pub size: u64,
}

/// `POST /v1/sources`: register a source uploaded to the gateway's store (`atoll push`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRequest {
    pub digest: String,
}

/// A pushed source (`POST /v1/sources`, `GET /v1/sources/{digest}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub digest: String,
    /// Bytes of the archive.
    pub size: u64,
    pub created_ms: i64,
    /// Who pushed it first.
    pub created_by: String,
}

/// `POST /v1/clusters/{name}/blobs/released`: a replica asks which blobs of its store nobody
/// needs any more.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// Digests (`sha256:<hex>`), at most [`ReleaseRequest::MAX`].
    pub digests: Vec<String>,
}

impl ReleaseRequest {
    /// Most digests in one request.
    pub const MAX: usize = 1_000;
}

/// Which of the asked blobs may go, and the retention they were judged by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseAnswer {
    /// No job that uses them is running or waiting, and the last one that did ended more than
    /// `keep_ms` ago (or nothing uses them at all).
    pub released: Vec<String>,
    /// The retention (`retention.keep_s`): nothing written or claimed more recently may go.
    pub keep_ms: u64,
    /// How often a replica should ask (`retention.interval_ms`).
    pub interval_ms: u64,
}

/// `POST /v1/clusters/{name}/transfers`: the child's cluster asks how one input reaches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The child job (bound to the asking cluster).
    pub job: JobId,
    pub attempt: u32,
    /// The parent's name.
    pub from_job: String,
    /// Set when the route given before failed (why, for the log): the gateway moves the edge
    /// to the relay.
    #[serde(default)]
    pub failed: Option<String>,
}

/// The gateway's answer: how to get the input, with a ticket for exactly that.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferPlan {
    pub route: Route,
    pub digest: String,
    pub size: u64,
    /// The parent's cluster.
    pub source: ClusterName,
    /// `pull`: the parent cluster's endpoint to fetch from.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `pull`: a pull ticket; `relay`: a relay-read ticket; `push`: none needed by the child.
    #[serde(default)]
    pub ticket: Option<String>,
    /// `relay`: the blob is complete in the gateway's relay store.
    #[serde(default)]
    pub ready: bool,
}

/// Work for a parent's cluster: send a stored output to a child's cluster (`push`) or to the
/// gateway's relay store (`relay`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SendTask {
    pub route: Route,
    pub digest: String,
    /// The child's cluster.
    pub to: ClusterName,
    /// The child job it is for (for logs).
    pub job: JobId,
    /// `push`: the child cluster's endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    pub ticket: String,
}

/// An attempt the cluster holds that it must stop, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub job: JobId,
    pub attempt: u32,
    pub reason: String,
}

/// The gateway's answer to a lease: what to start, what to cancel (then report `killed`), what to
/// drop without reporting (moved elsewhere or already ended).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseResponse {
    pub assign: Vec<Assignment>,
    pub cancel: Vec<Held>,
    pub drop: Vec<Revoked>,
    /// Outputs of this cluster to send to another cluster or the relay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub send: Vec<SendTask>,
}

impl LeaseResponse {
    pub fn is_empty(&self) -> bool {
        self.assign.is_empty() && self.cancel.is_empty() && self.drop.is_empty() && self.send.is_empty()
    }
}

/// What a cluster says about one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportedState {
    Running,
    Finished,
    Failure,
    Error,
    Unstable,
    Killed,
    /// The attempt's run is gone (its replica lost leadership or died); run it again as a new
    /// attempt on this cluster.
    Lost,
}

/// One state change of one attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub job: JobId,
    pub attempt: u32,
    pub state: ReportedState,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub message: Option<String>,
    /// The attempt's stored output (with a final state; none when it wrote nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputInfo>,
}

/// A job's stored output: content-addressed in its cluster's store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputInfo {
    /// `sha256:<64 hex>` of the output archive (tar).
    pub digest: String,
    /// Bytes of the archive.
    pub size: u64,
}

/// `POST /v1/clusters/{name}/reports`: state changes, in the order they happened.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportBatch {
    pub term: Term,
    pub reports: Vec<Report>,
}

/// What became of one report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportOutcome {
    /// Recorded.
    Accepted,
    /// Recorded earlier (a resent report): nothing changed.
    Duplicate,
    /// Not this cluster's attempt any more, or contradicts the recorded result: dropped. The
    /// cluster stops the attempt.
    Refused,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportResult {
    pub job: JobId,
    pub attempt: u32,
    pub outcome: ReportOutcome,
    pub reason: Option<String>,
}

/// The answer to a report batch, one result per report, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportResults {
    pub results: Vec<ReportResult>,
}

/// What became of an attempt (`GET /v1/jobs/{id}`, and the gateway's history rows keep the same
/// words): `bound` while it runs; then the job state it ended the job in, or `moved`, `lost`,
/// `retried`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptState {
    /// Bound to its cluster, not ended yet.
    Bound,
    /// Ended the job in this state (or, for a failed attempt that is retried, ended in it).
    Ended(JobState),
    /// Moved off a lost cluster by the gateway.
    Moved,
    /// Lost on its cluster (run again there as the next attempt).
    Lost,
    /// Retried (a name older rows may hold).
    Retried,
}

impl AttemptState {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Bound => "bound",
            AttemptState::Ended(state) => state.as_str(),
            AttemptState::Moved => "moved",
            AttemptState::Lost => "lost",
            AttemptState::Retried => "retried",
        }
    }
}

impl fmt::Display for AttemptState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AttemptState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bound" => Ok(AttemptState::Bound),
            "moved" => Ok(AttemptState::Moved),
            "lost" => Ok(AttemptState::Lost),
            "retried" => Ok(AttemptState::Retried),
            other => other.parse().map(AttemptState::Ended).map_err(|_| format!("unknown attempt state {other:?}")),
        }
    }
}

/// Its word, as on the wire: `state == "moved"`.
impl PartialEq<str> for AttemptState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for AttemptState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for AttemptState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AttemptState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// One attempt in a job's history (`GET /v1/jobs/{id}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptInfo {
    pub attempt: u32,
    pub cluster: ClusterName,
    pub state: AttemptState,
    /// The reporting leader's term (`None` when the gateway ended it: moved away).
    pub term: Option<Term>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub bound_ms: i64,
    /// When the cluster reported it running.
    #[serde(default)]
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    /// How its inputs from other clusters travelled, in the order the gateway decided (inputs
    /// already in the cluster's store, e.g. fetched for a sibling, need no route).
    #[serde(default)]
    pub routes: Vec<RouteTaken>,
}

/// A job with its attempts (`GET /v1/jobs/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    pub job: JobInfo,
    pub attempts: Vec<AttemptInfo>,
    /// An attempt's log went over its limit (`jobs.log_limit_bytes`): `atoll logs` shows where
    /// and how many bytes were dropped.
    #[serde(default)]
    pub log_truncated: bool,
}

/// Which stream a log piece came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Not the job's output: atoll's note where bytes of a log over its limit were dropped.
    Marker,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Marker => "marker",
        }
    }
}

/// A numbered piece of an attempt's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPiece {
    pub job: JobId,
    pub attempt: u32,
    /// Numbered from 1 within the attempt; a resent piece is stored once.
    pub seq: u32,
    pub stream: LogStream,
    pub data: String,
    pub at_ms: i64,
}

/// `POST /v1/clusters/{name}/logs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogBatch {
    pub term: Term,
    pub pieces: Vec<LogPiece>,
}

/// `GET /v1/jobs/{id}/logs`: pieces after the cursor, and where to continue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    pub pieces: Vec<LogPiece>,
    /// Pass as `after_attempt` / `after_seq` to read on.
    pub next_attempt: u32,
    pub next_seq: u32,
    /// The job is final and every piece up to here was read: following can stop.
    pub done: bool,
    /// An attempt's log went over its limit: bytes were dropped where a `marker` piece says.
    #[serde(default)]
    pub truncated: bool,
}
