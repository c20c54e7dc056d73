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

mod container;
mod document;
mod graph;
pub mod include;
mod path;
mod value;
mod walk;

pub use container::secret_name;
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
    /// Environment variables whose values are secrets (`{"$secret": NAME}` or a vault
    /// reference): filled in only in the job's environment when it runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, SecretRef>,
    /// Building, running and publishing images: `docker`, `docker-image` and `docker-compose`
    /// jobs (InfraBox's keys).
    #[serde(default, skip_serializing_if = "ContainerSpec::is_empty")]
    pub container: ContainerSpec,
    /// A `workflow` or `git` include: another pipeline file whose jobs take this job's place,
    /// expanded when the pipeline is submitted (a stored pipeline has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Include>,
    /// Where a job of an expanded pipeline was written: its relative paths (`docker_file`, ...)
    /// start there, and problems point there. `None` in a pipeline without includes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defined_in: Option<DefinedIn>,
}

/// The file an included job comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefinedIn {
    /// Its directory, relative to the root of its tree (`""`: the root).
    pub dir: String,
    /// The file and the job's place in it, as problems name them (`flow/infrabox.json:
    /// jobs[0]`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub at: String,
    /// The repository it was read from, for a `git` include (else the pipeline's source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitAt>,
}

/// A git repository at a commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitAt {
    pub clone_url: String,
    pub commit: String,
}

impl JobSpec {
    /// Whether a cluster runs this job (a `wait` job runs nowhere: the gateway settles it; an
    /// include is replaced by its jobs before anything runs).
    pub fn runs_on_a_cluster(&self) -> bool {
        !matches!(self.kind, JobKind::Wait | JobKind::Workflow | JobKind::Git)
    }
}

/// InfraBox's variables for a job, set by every executor beside atoll's own (`ATOLL_*`), so a
/// job written for InfraBox finds them: `INFRABOX_JOB_ID` (the job's id),
/// `INFRABOX_BUILD_NUMBER` (the pipeline's id: atoll numbers no builds), and
/// `INFRABOX_BUILD_RESTART_COUNTER` (the attempt); for a job of a `git` include,
/// `INFRABOX_COMMIT_ID` and `INFRABOX_GIT_BRANCH` (the commit it was included at). The job's own
/// `environment` may override any of them.
pub fn infrabox_env(job_id: &str, pipeline: &str, attempt: u32, spec: &JobSpec) -> Vec<(String, String)> {
    let mut env = vec![
        ("INFRABOX_JOB_ID".to_string(), job_id.to_string()),
        ("INFRABOX_BUILD_NUMBER".to_string(), pipeline.to_string()),
        ("INFRABOX_BUILD_RESTART_COUNTER".to_string(), attempt.to_string()),
    ];
    if let Some(git) = spec.defined_in.as_ref().and_then(|d| d.git.as_ref()) {
        env.push(("INFRABOX_COMMIT_ID".to_string(), git.commit.clone()));
        env.push(("INFRABOX_GIT_BRANCH".to_string(), git.commit.clone()));
    }
    env
}

/// A secret an environment variable (or a registry's credential) names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretRef {
    /// `{"$secret": NAME}`: one of the gateway's secrets (`atoll secret set`).
    Secret(String),
    /// `{"$vault": NAME, "$vault_secret_path": PATH, "$vault_secret_key": KEY}`: a key of a
    /// secret in a vault.
    Vault { vault: String, path: String, key: String },
}

/// What `docker`, `docker-image` and `docker-compose` jobs add (InfraBox's keys, under their
/// own names). Paths are as the job's file wrote them, resolved when it runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerSpec {
    /// `docker_file`: the Dockerfile, relative to the build context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_file: Option<String>,
    /// `build_context`: relative to the directory of the file that defines the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_context: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub build_arguments: BTreeMap<String, String>,
    /// `build_only` (a `docker` job): build the image and do not run it; InfraBox's default is
    /// `true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_only: Option<bool>,
    /// `target`: the Dockerfile stage to build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `enable_docker_build_kit`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub build_kit: bool,
    /// `run` (a `docker-image` job): `false` only pulls (and publishes) the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<bool>,
    /// `docker_compose_file`: relative to the directory of the file that defines the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose_file: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compose_profiles: Vec<String>,
    /// `stop_timeout`: seconds the services get to stop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout_s: Option<u64>,
    /// `parallel_build`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub parallel_build: bool,
    #[serde(skip_serializing_if = "Cache::is_default")]
    pub cache: Cache,
    /// `security_context.privileged`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    #[serde(skip_serializing_if = "Repository::is_default")]
    pub repository: Repository,
    /// `services`: custom resources made for the job (each `apiVersion`, `kind`, `metadata`
    /// with a unique `name`, `spec`), kept as written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<serde_json::Value>,
    /// `deployments`: where the built (or run) image is pushed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<Registry>,
    /// `registries`: where images are pulled from, with their credentials.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<Registry>,
    /// `resources.kubernetes.limits`: a Kubernetes namespace for the job, with these limits
    /// (older InfraBox files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_limits: Option<Resources>,
}

impl ContainerSpec {
    pub fn is_empty(&self) -> bool {
        *self == ContainerSpec::default()
    }
}

/// `cache`: `data` keeps `/infrabox/cache` between runs of the job (default on); `image` reuses
/// the last built image as a build cache (default off).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cache {
    pub data: bool,
    pub image: bool,
}

impl Default for Cache {
    fn default() -> Self {
        Cache { data: true, image: false }
    }
}

impl Cache {
    pub fn is_default(&self) -> bool {
        *self == Cache::default()
    }
}

/// `repository`: how the job gets the pipeline's source. `clone: false` gives it none;
/// `submodules` and `full_history` are InfraBox's clone options (an atoll source is what `atoll
/// push` packed, so they change nothing there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Repository {
    pub clone: bool,
    pub submodules: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_history: Option<bool>,
}

impl Default for Repository {
    fn default() -> Self {
        Repository { clone: true, submodules: true, full_history: None }
    }
}

impl Repository {
    pub fn is_default(&self) -> bool {
        *self == Repository::default()
    }
}

/// A registry an image is pushed to (`deployments`) or pulled from (`registries`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    #[serde(rename = "type")]
    pub kind: RegistryKind,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub always_push: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<SecretRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistryKind {
    DockerRegistry,
    Ecr,
    Gcr,
}

impl RegistryKind {
    pub const ALL: [(&'static str, RegistryKind); 3] =
        [("docker-registry", RegistryKind::DockerRegistry), ("ecr", RegistryKind::Ecr), ("gcr", RegistryKind::Gcr)];

    /// Its word in a pipeline file (`docker-registry`).
    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, k)| *k == self).map_or("", |(w, _)| w)
    }
}

impl ContainerSpec {
    /// `registries`, then `deployments`, each with its key.
    pub fn registry_lists(&self) -> [(&'static str, &[Registry]); 2] {
        [("registries", &self.registries), ("deployments", &self.deployments)]
    }
}

/// Another pipeline file whose jobs take an include job's place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum Include {
    /// `workflow`: a file of the same source, relative to the directory of the file naming it.
    Workflow { infrabox_file: String },
    /// `git`: a file of another repository at a commit (default `infrabox.json`, then
    /// `infrabox.yaml`, at its root); `environment` overrides the included jobs' variables.
    Git {
        clone_url: String,
        commit: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        branch: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        infrabox_file: Option<String>,
    },
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
    /// Builds the job's Dockerfile, then (unless `build_only`) runs the image.
    Docker,
    /// Runs a docker-compose file's services.
    DockerCompose,
    /// Includes another pipeline file of the same source.
    Workflow,
    /// Includes a pipeline file of another git repository.
    Git,
}

impl JobKind {
    pub const ALL: [(&'static str, JobKind); 7] = [
        ("command", JobKind::Command),
        ("wait", JobKind::Wait),
        ("docker-image", JobKind::DockerImage),
        ("docker", JobKind::Docker),
        ("docker-compose", JobKind::DockerCompose),
        ("workflow", JobKind::Workflow),
        ("git", JobKind::Git),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Command => "command",
            JobKind::Wait => "wait",
            JobKind::DockerImage => "docker-image",
            JobKind::Docker => "docker",
            JobKind::DockerCompose => "docker-compose",
            JobKind::Workflow => "workflow",
            JobKind::Git => "git",
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
    /// What its executor runs, as its leader last said (`None`: never said).
    pub capabilities: Option<&'a Capabilities>,
}

/// What a cluster's executor runs, as its leader advertises it in every heartbeat: a job goes
/// only where it can run, and a pipeline no matching cluster can run is refused at submit,
/// naming the job, the key and what is missing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `process` or `kubernetes`.
    pub executor: String,
    /// The job types it runs (a type this build does not know is left out: a newer agent's).
    #[serde(deserialize_with = "known_kinds")]
    pub runs: Vec<JobKind>,
    /// Whether it gives jobs secret variables.
    pub secrets: bool,
    /// Whether it works with registries for a job: logs in (`registries`), pushes images
    /// (`deployments`), pulls one without running it (`run: false`). Absent from an older agent:
    /// it does not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub registries: bool,
    /// What it lacks, in an operator's words (`no container engine (jobs.containers)`), shown
    /// when a job needs it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

fn known_kinds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<JobKind>, D::Error> {
    let words: Vec<serde_json::Value> = Vec::deserialize(d)?;
    Ok(words.into_iter().filter_map(|w| serde_json::from_value(w).ok()).collect())
}

impl Capabilities {
    /// What a cluster that never said is taken to run: what every executor ran before clusters
    /// advertised what they run (command jobs, with secrets).
    pub fn assumed() -> Self {
        Capabilities {
            executor: "unknown".into(),
            runs: vec![JobKind::Command],
            secrets: true,
            registries: false,
            missing: Vec::new(),
        }
    }

    /// What of `needs` it lacks, as (the key that asks, what is missing); empty when it runs
    /// such a job.
    pub fn lacks(&self, needs: Needs) -> Vec<(&'static str, String)> {
        let mut lacks = Vec::new();
        let runs_kind = needs.kind == JobKind::Wait || self.runs.contains(&needs.kind);
        if !runs_kind {
            let hint = if self.missing.is_empty() { String::new() } else { format!(": {}", self.missing.join("; ")) };
            lacks.push(("type", format!("runs no {} jobs ({} executor{hint})", needs.kind.as_str(), self.executor)));
        }
        if needs.secrets && !self.secrets {
            lacks.push(("environment", format!("gives jobs no secrets ({} executor)", self.executor)));
        }
        // Said where it is the reason (a cluster that runs no such jobs says that instead).
        if let Some(key) = needs.registries
            && !self.registries
            && runs_kind
        {
            lacks.push((
                key,
                format!(
                    "does not log in to registries, push images or pull one without running it ({} executor)",
                    self.executor
                ),
            ));
        }
        lacks
    }
}

/// What a job asks of the cluster that runs it, beyond its labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    pub kind: JobKind,
    pub secrets: bool,
    /// The key that asks for work with registries (`deployments`, `registries`, `run`), if any.
    pub registries: Option<&'static str>,
}

/// A secret a job names: the key its value is delivered under, where the job names it, and the
/// reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUse<'a> {
    /// A variable's own name (`environment`), or `deployments[i].password` /
    /// `registries[i].password` (never a variable's name: variables have no brackets).
    pub key: String,
    /// Where in the job: `environment.NAME`, or the same as `key` for a registry's password.
    pub path: String,
    pub secret: &'a SecretRef,
}

impl JobSpec {
    pub fn needs(&self) -> Needs {
        let registries = if !self.container.deployments.is_empty() {
            Some("deployments")
        } else if !self.container.registries.is_empty() {
            Some("registries")
        } else if self.container.run == Some(false) {
            Some("run")
        } else {
            None
        };
        Needs { kind: self.kind, secrets: !self.secret_uses().is_empty(), registries }
    }

    /// Every secret the job names: its secret variables, then its registries' passwords.
    pub fn secret_uses(&self) -> Vec<SecretUse<'_>> {
        let mut uses: Vec<SecretUse<'_>> = self
            .secret_env
            .iter()
            .map(|(var, secret)| SecretUse { key: var.clone(), path: format!("environment.{var}"), secret })
            .collect();
        for (list, registries) in self.container.registry_lists() {
            for (i, registry) in registries.iter().enumerate() {
                if let Some(secret) = &registry.password {
                    let key = registry_password_key(list, i);
                    uses.push(SecretUse { path: key.clone(), key, secret });
                }
            }
        }
        uses
    }
}

/// The key a registry's password is delivered under: `deployments[0].password`.
pub fn registry_password_key(list: &str, i: usize) -> String {
    format!("{list}[{i}].password")
}

impl PipelineSpec {
    /// Where problems of job `i` point: `jobs[i]` for a job of the submitted file, the file and
    /// the job's place in it for an included one (`flow/infrabox.json: jobs[0]`).
    pub fn job_path(&self, i: usize) -> String {
        match self.jobs.get(i).and_then(|j| j.defined_in.as_ref()) {
            Some(d) if !d.at.is_empty() => d.at.clone(),
            _ => format!("jobs[{i}]"),
        }
    }
}

/// What no executor of this build runs yet (and a pipeline of no jobs), each with the path of
/// the key that asks for it:
/// such a pipeline reads (`atoll validate --offline` accepts every InfraBox key) but is refused
/// where it would run, by name, rather than run with the key silently ignored.
pub fn unsupported(spec: &PipelineSpec) -> Vec<SpecProblem> {
    let mut problems = Vec::new();
    if spec.jobs.is_empty() {
        problems
            .push(SpecProblem { path: "jobs".into(), message: "empty: a pipeline with no jobs runs nothing".into() });
    }
    for (i, job) in spec.jobs.iter().enumerate() {
        let mut say = |key: &str, what: &str| {
            problems.push(SpecProblem {
                path: format!("{}.{key}", spec.job_path(i)),
                message: format!("job {:?}: {what}", job.name),
            })
        };
        match job.kind {
            JobKind::Workflow | JobKind::Git => say(
                "type",
                &format!(
                    "a {} include must be expanded first (atoll validate/submit FILE expands it)",
                    job.kind.as_str()
                ),
            ),
            JobKind::Command | JobKind::Wait | JobKind::DockerImage | JobKind::Docker | JobKind::DockerCompose => {}
        }
        for (name, secret) in &job.secret_env {
            if let SecretRef::Vault { .. } = secret {
                say(
                    &format!("environment.{name}"),
                    "vault references are not read; store the value with `atoll secret set NAME` and name it as {\"$secret\": NAME}",
                );
            }
        }
        let c = &job.container;
        for (list, registries) in c.registry_lists() {
            for (r, registry) in registries.iter().enumerate() {
                if registry.kind != RegistryKind::DockerRegistry {
                    let kind = registry.kind.as_str();
                    say(
                        &format!("{list}[{r}].type"),
                        &format!(
                            "{kind} logins are not made by atoll: use type docker-registry with the registry's \
                             username and a token as password (a secret)"
                        ),
                    );
                }
            }
        }
        if job.kind == JobKind::DockerImage
            && let Some(r) = c.deployments.iter().position(|d| d.target.is_some())
        {
            say(&format!("deployments[{r}].target"), "names a build stage, and a docker-image job builds nothing");
        }
        let keys: [(bool, &str, &str); 6] = [
            (
                !c.registries.is_empty() && job.kind == JobKind::DockerCompose,
                "registries",
                "logging in to registries for a docker-compose job's services is not supported yet",
            ),
            (!c.services.is_empty(), "services", "services (custom resources made for a job) are not supported yet"),
            (c.privileged, "security_context.privileged", "privileged containers are not supported"),
            (c.kubernetes_limits.is_some(), "resources.kubernetes", "a Kubernetes namespace per job is not provided"),
            (c.cache.image, "cache.image", "reusing the last built image as a build cache is not supported yet"),
            (
                c.build_context.is_some() && job.kind == JobKind::DockerImage,
                "build_context",
                "mounting a build context into a docker-image job is not supported yet",
            ),
        ];
        for (asked, key, what) in keys {
            if asked {
                say(key, what);
            }
        }
    }
    problems
}

/// The checks that need the registered clusters: every job that runs on a cluster has an
/// enabled cluster satisfying its selector, and its `prefer` names such a cluster; and nothing
/// [`unsupported`] is asked for.
pub fn check_clusters(spec: &PipelineSpec, clusters: &[ClusterFacts<'_>]) -> Result<(), SpecErrors> {
    let mut problems = unsupported(spec);
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
                path: format!("{}.cluster.selector", spec.job_path(i)),
                message: format!(
                    "no enabled cluster has all of [{}] (clusters: {})",
                    wanted.join(", "),
                    if known.is_empty() { "none registered".to_string() } else { known.join("; ") }
                ),
            });
        }
        // Of the clusters with its labels, those that run what it needs.
        let assumed = Capabilities::assumed();
        let lacking = |c: &ClusterFacts<'_>| c.capabilities.unwrap_or(&assumed).lacks(job.needs());
        if !satisfied.is_empty() && satisfied.iter().all(|c| !lacking(c).is_empty()) {
            let mut by_key: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for c in &satisfied {
                for (key, what) in lacking(c) {
                    by_key.entry(key).or_default().push(format!("{} {what}", c.name));
                }
            }
            for (key, why) in by_key {
                let key = match key {
                    "environment" => job.secret_uses().first().map_or("environment".to_string(), |u| u.path.clone()),
                    other => other.to_string(),
                };
                problems.push(SpecProblem {
                    path: format!("{}.{key}", spec.job_path(i)),
                    message: format!("job {:?}: no cluster with its labels can run it: {}", job.name, why.join("; ")),
                });
            }
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
                path: format!("{}.cluster.prefer", spec.job_path(i)),
                message: format!("prefers cluster \"{prefer}\", but {why}"),
            });
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(SpecErrors(problems)) }
}

#[cfg(test)]
mod include_tests;
#[cfg(test)]
mod tests;
