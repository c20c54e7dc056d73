//! The job spec: a pipeline of jobs, a superset of InfraBox's `infrabox.json` (version 1), in
//! JSON or YAML.
//!
//! [`parse`] turns text into a checked [`PipelineSpec`] or into *every* problem found, each with
//! the path of the value at fault (`jobs[2].depends_on[0]: unknown job "x"`): it walks the
//! document by hand rather than through serde derive, which would stop at the first error.
//! The reader ([`document`]) refuses duplicate keys and numbers no value holds; the walk checks
//! each value ([`walk`]), then names and dependencies across jobs, then the dependency graph for
//! cycles ([`graph`]) as far as it can be built, also when some jobs have problems of their own.
//! [`check_clusters`] adds the checks that need the registered clusters (selectors no enabled
//! cluster satisfies, `prefer` naming a cluster that cannot run the job); the gateway runs both
//! before storing anything.
//!
//! Messages quote what came from the document with control characters escaped (`"A\0B"`), and
//! a key that is not a plain word is quoted in a path (`environment."A\0B"`); both are written
//! by [`path`], the one module the reader and the walk share.
//!
//! Parsing never panics, whatever the input (a property test feeds it arbitrary documents).

mod document;
mod graph;
mod path;
mod walk;

pub use document::Document;
pub use graph::topological_order;
pub use walk::job_name;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::Serialize;

use crate::ClusterName;
use crate::ids::Label;

/// The one spec version this build reads.
pub const SPEC_VERSION: u64 = 1;
/// Longest job name.
pub const MAX_NAME_LEN: usize = 63;
/// Most jobs in one pipeline.
pub const MAX_JOBS: usize = 10_000;
/// Most retries of one job.
pub const MAX_RETRIES: u32 = 100;
/// Longest timeout: 7 days.
pub const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;
/// Timeout when the spec names none (InfraBox's default).
pub const DEFAULT_TIMEOUT_S: u64 = 3600;

/// A checked pipeline: names unique and well formed, parents known, no cycles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineSpec {
    pub version: u64,
    /// A pushed source (`atoll push DIR`: `sha256:<hex>`) unpacked for every job that names
    /// none of its own, under `$ATOLL_SOURCE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub jobs: Vec<JobSpec>,
}

/// One job of a pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: JobKind,
    /// What to run: for `command`, through `sh -c`; for `docker-image`, the container's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    /// The image of a `docker-image` job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Seconds an attempt may run before it is killed and counted as a failure.
    pub timeout_s: u64,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub cluster: ClusterSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
    /// Further attempts after a `failure` or `error` (0: none).
    #[serde(default)]
    pub retries: u32,
    /// This job's pushed source (`sha256:<hex>`), in place of the pipeline's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl JobSpec {
    /// Whether a cluster runs this job (a `wait` job runs nowhere: the gateway settles it).
    pub fn runs_on_a_cluster(&self) -> bool {
        self.kind != JobKind::Wait
    }
}

/// The job types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// A shell command, run by the cluster's executor (a process, or a pod on Kubernetes).
    Command,
    /// Runs nothing: finishes as soon as its parents let it (groups dependencies).
    Wait,
    /// A container image, run by the Kubernetes executor.
    DockerImage,
}

impl JobKind {
    pub const ALL: [(&'static str, JobKind); 3] =
        [("command", JobKind::Command), ("wait", JobKind::Wait), ("docker-image", JobKind::DockerImage)];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Command => "command",
            JobKind::Wait => "wait",
            JobKind::DockerImage => "docker-image",
        }
    }
}

/// A command: one shell string, or an argument vector (run without shell word splitting).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

/// `resources.limits`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
}

/// Where a job may run: every selector label must be on the cluster; `prefer` names the cluster
/// to use while it is alive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selector: Vec<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer: Option<ClusterName>,
}

impl ClusterSpec {
    /// Whether a cluster with these labels satisfies the selector.
    pub fn matches<'a>(&self, labels: impl IntoIterator<Item = &'a Label>) -> bool {
        let have: BTreeSet<&Label> = labels.into_iter().collect();
        self.selector.iter().all(|l| have.contains(l))
    }
}

/// A parent and the parent states in which the child runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub job: String,
    pub on: BTreeSet<OnState>,
}

impl Dependency {
    /// Whether the child may run after its parent ended in `state`.
    pub fn allows(&self, state: FinalState) -> bool {
        self.on.contains(&OnState::Any) || self.on.contains(&OnState::State(state))
    }
}

/// The final states of a job (InfraBox's, plus `skipped`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalState {
    /// Ran and exited 0.
    Finished,
    /// Ran and exited non-zero, or timed out.
    Failure,
    /// Could not be run (executor or infrastructure error).
    Error,
    /// Ran but reported unstable results.
    Unstable,
    /// Cancelled.
    Killed,
    /// Never ran: a parent ended in a state its `on` condition does not allow.
    Skipped,
}

impl FinalState {
    pub const ALL: [FinalState; 6] = [
        FinalState::Finished,
        FinalState::Failure,
        FinalState::Error,
        FinalState::Unstable,
        FinalState::Killed,
        FinalState::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FinalState::Finished => "finished",
            FinalState::Failure => "failure",
            FinalState::Error => "error",
            FinalState::Unstable => "unstable",
            FinalState::Killed => "killed",
            FinalState::Skipped => "skipped",
        }
    }
}

impl fmt::Display for FinalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One value of a dependency's `on` list: a final state, or `*` (any final state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OnState {
    State(FinalState),
    Any,
}

impl OnState {
    /// The words `on` accepts.
    pub const WORDS: [&'static str; 6] = ["finished", "failure", "error", "unstable", "killed", "*"];

    pub fn parse(word: &str) -> Option<OnState> {
        if word == "*" {
            return Some(OnState::Any);
        }
        FinalState::ALL.into_iter().find(|s| s.as_str() == word && *s != FinalState::Skipped).map(OnState::State)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnState::State(s) => s.as_str(),
            OnState::Any => "*",
        }
    }
}

impl Serialize for OnState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OnState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let word = String::deserialize(d)?;
        OnState::parse(&word).ok_or_else(|| serde::de::Error::custom(format!("unknown `on` state {word:?}")))
    }
}

/// One problem in a spec, at a path such as `jobs[2].depends_on[0]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecProblem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Every problem found in a spec (never empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecProblem>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} problem{} in the job spec:", if n == 1 { "" } else { "s" })?;
        for p in &self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// Parse and check a spec (JSON when it starts with `{`, YAML otherwise).
pub fn parse(text: &str) -> Result<PipelineSpec, SpecErrors> {
    from_document(&document::read(text)?)
}

/// Check a spec already parsed into a JSON value.
pub fn from_value(value: &serde_json::Value) -> Result<PipelineSpec, SpecErrors> {
    check(value, Vec::new(), &BTreeSet::new())
}

/// Check a spec read as a [`Document`] (the gateway reads a submission's `spec` as one, so
/// duplicate keys sent over HTTP are refused too).
pub fn from_document(document: &Document) -> Result<PipelineSpec, SpecErrors> {
    check(&document.value, document.problems.clone(), &document.replaced)
}

/// The walk over `value`, after the reader's `problems`; the walk's problems at `replaced`
/// paths (values the reader refused) would repeat the reader's and are left out.
fn check(
    value: &serde_json::Value,
    mut problems: Vec<SpecProblem>,
    replaced: &BTreeSet<String>,
) -> Result<PipelineSpec, SpecErrors> {
    let mut walked = Vec::new();
    let spec = walk::pipeline(value, &mut walked);
    problems.extend(walked.into_iter().filter(|p| !replaced.contains(&p.path)));
    // document order: the pipeline's own keys, then job by job (stable, so each job's problems
    // keep the order in which its keys were checked)
    problems.sort_by_key(|p| job_index(&p.path));
    match spec {
        Some(spec) if problems.is_empty() => Ok(spec),
        _ => {
            debug_assert!(!problems.is_empty(), "a spec that did not parse has a problem");
            Err(SpecErrors(problems))
        }
    }
}

/// `Some(i)` for a path inside `jobs[i]` (`None` sorts first).
fn job_index(path: &str) -> Option<usize> {
    let rest = path.strip_prefix("jobs[")?;
    rest[..rest.find(']')?].parse().ok()
}

/// Read a spec file's text (JSON or YAML) as a JSON document, unchecked but for what only the
/// text shows: duplicate keys and numbers no JSON value holds are refused here.
pub fn parse_document(text: &str) -> Result<serde_json::Value, SpecErrors> {
    let document = document::read(text)?;
    if document.problems.is_empty() { Ok(document.value) } else { Err(SpecErrors(document.problems)) }
}

/// What [`check_clusters`] needs to know of a registered cluster.
#[derive(Clone, Debug)]
pub struct ClusterFacts<'a> {
    pub name: &'a ClusterName,
    pub labels: &'a [Label],
    pub enabled: bool,
}

/// The checks that need the registered clusters: every job that runs on a cluster has an
/// enabled cluster satisfying its selector, and its `prefer` names such a cluster.
pub fn check_clusters(spec: &PipelineSpec, clusters: &[ClusterFacts<'_>]) -> Result<(), SpecErrors> {
    let mut problems = Vec::new();
    for (i, job) in spec.jobs.iter().enumerate() {
        if !job.runs_on_a_cluster() {
            continue;
        }
        let satisfied: Vec<&ClusterFacts<'_>> =
            clusters.iter().filter(|c| c.enabled && job.cluster.matches(c.labels)).collect();
        if satisfied.is_empty() {
            let known = clusters
                .iter()
                .map(|c| {
                    let labels: Vec<&str> = c.labels.iter().map(Label::as_str).collect();
                    format!("{} [{}]{}", c.name, labels.join(", "), if c.enabled { "" } else { " (disabled)" })
                })
                .collect::<Vec<_>>();
            let wanted: Vec<&str> = job.cluster.selector.iter().map(Label::as_str).collect();
            problems.push(SpecProblem {
                path: format!("jobs[{i}].cluster.selector"),
                message: format!(
                    "no enabled cluster has all of [{}] (clusters: {})",
                    wanted.join(", "),
                    if known.is_empty() { "none registered".to_string() } else { known.join("; ") }
                ),
            });
        }
        if let Some(prefer) = &job.cluster.prefer
            && !satisfied.iter().any(|c| c.name == prefer)
        {
            let why = match clusters.iter().find(|c| c.name == prefer) {
                None => "no such cluster is registered",
                Some(c) if !c.enabled => "that cluster is disabled",
                Some(_) => "that cluster does not have every selector label",
            };
            problems.push(SpecProblem {
                path: format!("jobs[{i}].cluster.prefer"),
                message: format!("prefers cluster \"{prefer}\", but {why}"),
            });
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(SpecErrors(problems)) }
}

#[cfg(test)]
mod tests;
