//! The `process` executor: a job's command as a process tree on the leader's machine.
//!
//! Each attempt runs in a fresh work directory (`<data_dir>/work/<job>/<attempt>`, with
//! `output/` and `inputs/`), through `sh -c` (or its argument vector without a shell), with a
//! clean environment: `PATH`, `HOME` (the work directory), `ATOLL_JOB_ID`, `ATOLL_ATTEMPT`,
//! `ATOLL_PIPELINE`, `ATOLL_OUTPUT`, `ATOLL_INPUTS`, InfraBox's (`INFRABOX_JOB_ID`, ...), then
//! the job's own `environment`.
//!
//! The run is its own process group, and (where the machine allows) its own PID namespace whose
//! first process is killed when the replica dies: the kernel then kills everything in the
//! namespace, so nothing a job starts outlives the replica, even after SIGKILL, and even
//! processes that left the group. Cancel, timeout, losing leadership and the end of the run all
//! kill the whole group. Where PID namespaces are not available (no privileges), the group is
//! still killed in every orderly case, and the first process dies with the replica. Processes
//! are started by `atoll_spawn` (one `clone(2)`, no `fork` of the replica, no helper programs).

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicI32;
use std::sync::atomic::Ordering;
use std::time::Duration;

use atoll_api::jobs::InputMode;
use atoll_api::jobs::LogStream;
use atoll_api::spec::Command as JobCommand;
use atoll_api::spec::JobKind;
use atoll_raft_store::jobs::EndState;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use super::run::Event;
use super::run::RunHandle;
use super::run::RunRequest;
use super::run::Stop;
use super::run::dropped_marker;

use super::run::DEFAULT_PATH;
/// Largest log piece.
const PIECE: usize = 16 * 1024;

/// How runs are fenced off from outliving the replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// A PID namespace per run, killed with the replica.
    PidNamespace { user: bool },
    /// Only the first process dies with the replica.
    GroupOnly,
}

/// How runs are fenced off from the replica ([`atoll_spawn::Sandbox`] per run), found at start.
#[derive(Clone, Debug)]
pub struct SandboxTemplate {
    /// The empty directory each run's new root is mounted on.
    pub root: PathBuf,
    pub system_paths: Vec<PathBuf>,
    /// Covered should a system path hold them: the replica's data directory, keys, tokens.
    pub hidden: Vec<PathBuf>,
    /// Who runs execute as; `None`: the replica's user (a replica without privileges).
    pub user: Option<(u32, u32)>,
    pub nice: i32,
    /// Bound read-write into every run (`jobs.sandbox.writable_paths`).
    pub writable_paths: Vec<PathBuf>,
}

/// What the process executor is configured with.
#[derive(Clone, Debug)]
pub struct ProcessSettings {
    pub sandbox: crate::config::SandboxConfig,
    /// Paths of the replica no job may see (data directory, keys, tokens, config).
    pub hidden: Vec<PathBuf>,
    pub log_limit: u64,
    /// The container engine for docker, docker-image and docker-compose jobs (`jobs.containers`).
    pub containers: Option<super::containers::Engine>,
}

impl ProcessSettings {
    /// Defaults for tests: a sandbox where the machine allows it, the default log limit.
    #[cfg(test)]
    pub fn for_tests(hidden: Vec<PathBuf>) -> Self {
        let sandbox = crate::config::default_sandbox().expect("the default sandbox user exists here");
        Self { sandbox, hidden, log_limit: 16 * 1024 * 1024, containers: None }
    }
}

#[derive(Clone, Debug)]
pub struct ProcessExecutor {
    work_root: PathBuf,
    isolation: Isolation,
    sandbox: Option<Arc<SandboxTemplate>>,
    cgroups: Arc<super::cgroups::Cgroups>,
    log_limit: u64,
    /// Where outputs are stored; `None`: outputs stay in the work directory.
    outputs: Option<atoll_store::Blobs>,
    /// How inputs from other clusters arrive; `None`: only same-cluster inputs are delivered.
    transfers: Option<Arc<crate::transfers::Transfers>>,
    /// Runs container jobs; `None`: they are refused.
    containers: Option<Arc<super::containers::Engine>>,
}

/// Whether a run of `true` starts and succeeds with `isolation` (and `sandbox`); why not.
async fn works(isolation: &Isolation, sandbox: Option<atoll_spawn::Sandbox>) -> Result<(), String> {
    let probe = atoll_spawn::Command {
        program: "true".into(),
        args: Vec::new(),
        env: vec![("PATH".into(), DEFAULT_PATH.into())],
        cwd: PathBuf::from("/"),
        namespaces: isolation.namespaces(),
        sandbox,
    };
    let mut spawned = atoll_spawn::spawn(&probe).map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), spawned.child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("the probe ended with {status}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the probe did not end within 5 s".into()),
    }
}

impl Isolation {
    fn namespaces(&self) -> atoll_spawn::Namespaces {
        match self {
            Isolation::PidNamespace { user: false } => atoll_spawn::Namespaces::Pid,
            Isolation::PidNamespace { user: true } => atoll_spawn::Namespaces::UserAndPid,
            Isolation::GroupOnly => atoll_spawn::Namespaces::Shared,
        }
    }
}

impl ProcessExecutor {
    /// Find the strongest isolation this machine allows; with `jobs.sandbox.mode: required`,
    /// an error when it allows no sandbox.
    pub async fn detect(work_root: PathBuf, settings: &ProcessSettings) -> Result<Self, String> {
        // Probe with the very start a run gets, strongest first.
        let mut isolation = Isolation::GroupOnly;
        for candidate in [Isolation::PidNamespace { user: false }, Isolation::PidNamespace { user: true }] {
            if works(&candidate, None).await.is_ok() {
                isolation = candidate;
                break;
            }
        }
        let sandbox = match settings.sandbox.mode {
            crate::config::SandboxMode::Off => {
                tracing::warn!(
                    "process executor: jobs.sandbox.mode is off: jobs run as this replica's user and see its files"
                );
                None
            }
            mode => {
                let root = work_root.parent().unwrap_or(&work_root).join("sandbox-root");
                std::fs::create_dir_all(&root)
                    .map_err(|e| format!("making the sandbox root {}: {e}", root.display()))?;
                let template = SandboxTemplate {
                    root,
                    system_paths: settings.sandbox.system_paths.clone(),
                    hidden: settings.hidden.clone(),
                    // A replica without privileges cannot change user: its jobs keep its own.
                    user: nix::unistd::geteuid().is_root().then_some(settings.sandbox.user),
                    nice: settings.sandbox.nice,
                    writable_paths: settings.sandbox.writable_paths.clone(),
                };
                let probe_dir = template.root.with_file_name("sandbox-probe");
                let _ = std::fs::create_dir_all(&probe_dir);
                let probe = template.for_run(&probe_dir, Vec::new());
                match (works(&isolation, Some(probe)).await, mode) {
                    (Ok(()), _) => {
                        tracing::info!(user = ?template.user, "process executor: each run in its own sandbox");
                        Some(Arc::new(template))
                    }
                    (Err(e), crate::config::SandboxMode::Required) => {
                        return Err(format!("jobs.sandbox.mode is required but this machine allows no sandbox: {e}"));
                    }
                    (Err(e), _) => {
                        tracing::warn!(
                            error = %e,
                            "process executor: NO SANDBOX: this machine allows none, so jobs run as this replica's user \
                             and can read its files (set jobs.sandbox.mode: required to refuse to start instead)"
                        );
                        None
                    }
                }
            }
        };
        // Runs join their cgroups in the sandbox's steps: without a sandbox none are made.
        let cgroups = match &sandbox {
            Some(_) => super::cgroups::Cgroups::detect(Path::new("/sys/fs/cgroup")),
            None => super::cgroups::Cgroups::None,
        };
        if sandbox.is_some() {
            match &cgroups {
                super::cgroups::Cgroups::None => tracing::warn!(
                    "process executor: no cgroups this replica may manage: resources.limits are not enforced"
                ),
                found => tracing::info!(cgroups = %found.describe(), "process executor: resources.limits enforced"),
            }
        }
        match &isolation {
            Isolation::PidNamespace { user } => {
                tracing::info!(user_namespace = user, "process executor: each run in its own PID namespace")
            }
            Isolation::GroupOnly => tracing::warn!(
                "process executor: PID namespaces are not available; a run's own process group is killed when it ends, \
                 but processes it detaches may outlive a replica killed with SIGKILL"
            ),
        }
        let containers = match &settings.containers {
            Some(engine) => {
                let version = engine.check().await?;
                tracing::info!(engine = %engine.program, %version, compose = engine.composes(), "process executor: container jobs through the engine");
                engine.sweep(&work_root).await;
                Some(Arc::new(engine.clone()))
            }
            None => None,
        };
        Ok(Self {
            work_root,
            isolation,
            sandbox,
            cgroups: Arc::new(cgroups),
            log_limit: settings.log_limit,
            outputs: None,
            transfers: None,
            containers,
        })
    }

    /// The container engine, when container jobs run here.
    pub fn containers(&self) -> Option<&super::containers::Engine> {
        self.containers.as_deref()
    }

    /// Whether runs are sandboxed.
    pub fn sandboxed(&self) -> bool {
        self.sandbox.is_some()
    }

    /// Store each run's output (`$ATOLL_OUTPUT`, archived) in `blobs` when the run ends.
    pub fn with_outputs(mut self, blobs: atoll_store::Blobs) -> Self {
        self.outputs = Some(blobs);
        self
    }

    /// Fetch inputs from other clusters through `transfers` (into the same store as outputs).
    pub fn with_transfers(mut self, transfers: Arc<crate::transfers::Transfers>) -> Self {
        self.transfers = Some(transfers);
        self
    }

    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    pub fn work_dir(&self, job: &str, attempt: u32) -> PathBuf {
        self.work_root.join(job).join(attempt.to_string())
    }

    /// Start a run; its logs and its end arrive as [`Event`]s. An attempt that cannot start
    /// (no command, an image job, the work directory, an input that cannot be delivered) ends in
    /// `error`.
    pub fn start(&self, request: RunRequest, events: mpsc::UnboundedSender<Event>) -> RunHandle {
        let (stop_tx, stop_rx) = oneshot::channel();
        let group = Arc::new(AtomicI32::new(0));
        let dir = self.work_dir(&request.job, request.attempt);
        let this = self.clone();
        let in_container = super::containers::runs_in_container(&request.spec.kind);
        let task = if request.inputs.is_empty()
            && request.spec.source.is_none()
            && request.spec.secret_uses().is_empty()
            && !in_container
        {
            // Nothing to fetch: start at once, in the caller's turn.
            let spawned = prepare(&dir, &request).and_then(|()| self.spawn(&request, &dir));
            if let Ok(s) = &spawned {
                group.store(s.spawned.child.id(), Ordering::SeqCst);
            }
            tokio::spawn(async move { this.follow(request, dir, spawned, events, stop_rx).await })
        } else {
            // Inputs first, in the run's own task: the leader's loop never waits for a fetch.
            let started = group.clone();
            let mut stop_rx = stop_rx;
            tokio::spawn(async move {
                let mut request = request;
                let mut prepared = prepare(&dir, &request);
                if prepared.is_ok() {
                    // An input may take long to arrive (another cluster, the relay): a stop
                    // does not wait for it.
                    let inputs = dir.join("inputs");
                    tokio::select! {
                        delivered = this.deliver(&request, &inputs) => prepared = delivered,
                        why = &mut stop_rx => {
                            if let Ok(Stop::Cancel) = why {
                                let message = "cancelled while its inputs were delivered";
                                let _ = events.send(Event::Done {
                                    job: request.job.clone(),
                                    attempt: request.attempt,
                                    state: EndState::Killed,
                                    exit_code: None,
                                    message: Some(message.to_string()),
                                });
                            }
                            return;
                        }
                    }
                }
                if prepared.is_ok() && !request.spec.secret_uses().is_empty() {
                    prepared = match this.secrets(&request).await {
                        Ok(values) => {
                            request.secrets = values;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    };
                }
                if in_container {
                    return this.follow_container(request, dir, prepared, events, stop_rx, started).await;
                }
                let spawned = prepared.and_then(|()| this.spawn(&request, &dir));
                // No await between the spawn and this: a dropped handle kills the group.
                if let Ok(s) = &spawned {
                    started.store(s.spawned.child.id(), Ordering::SeqCst);
                }
                this.follow(request, dir, spawned, events, stop_rx).await
            })
        };
        RunHandle::new(stop_tx, Some(group), task)
    }

    fn spawn(&self, request: &RunRequest, dir: &Path) -> Result<Started, String> {
        let mut command = self.command(request, dir)?;
        let mut cgroup = None;
        if let Some(template) = &self.sandbox {
            let limits = super::cgroups::Limits {
                cpu_millis: request.spec.resources.cpu_millis,
                memory_mib: request.spec.resources.memory_mib,
            };
            cgroup = self
                .cgroups
                .create(&format!("{}.{}.{}", request.job, request.attempt, std::process::id()), limits)
                .map_err(|e| format!("enforcing resources.limits: {e}"))?;
            let procs = cgroup.as_ref().map(super::cgroups::RunCgroup::procs).unwrap_or_default();
            if let Some(user) = template.user {
                give_to(dir, user).map_err(|e| format!("handing the work directory to the job's user: {e}"))?;
            }
            command.sandbox = Some(template.for_run(dir, procs));
        }
        let spawned = atoll_spawn::spawn(&command).map_err(|e| format!("starting the command failed: {e}"))?;
        Ok(Started { spawned, _cgroup: cgroup })
    }

    /// Follow a started run to its end (or report why it did not start).
    async fn follow(
        self,
        request: RunRequest,
        dir: PathBuf,
        spawned: Result<Started, String>,
        events: mpsc::UnboundedSender<Event>,
        mut stop_rx: oneshot::Receiver<Stop>,
    ) {
        let (job, attempt) = (request.job.clone(), request.attempt);
        // The cgroup goes (removed) when this function returns, after the run was reaped.
        let Started { spawned, _cgroup } = match spawned {
            Ok(started) => started,
            Err(message) => {
                let _ = events.send(Event::error(&job, attempt, message));
                return;
            }
        };
        let timeout = Duration::from_secs(request.spec.timeout_s.max(1));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut keeper = LogKeeper::new(&job, attempt, &events, &dir, self.log_limit, &request.secrets);
        let (ended, code) = watch(spawned, &mut keeper, deadline, &mut stop_rx).await;
        keeper.finish().await;
        let Some(outcome) = outcome(ended, code, timeout) else { return };
        self.report(&job, attempt, &dir, outcome, &events).await;
    }

    /// Follow a container job (`docker`, `docker-image`, `docker-compose`) through its steps
    /// ([`super::containers`]); `prepared`: whether its work directory, inputs and secrets are in
    /// place. Each step's process group is put in `group` as it starts, for a dropped handle to
    /// kill; what the run made is removed however it ends.
    async fn follow_container(
        self,
        request: RunRequest,
        dir: PathBuf,
        prepared: Result<(), String>,
        events: mpsc::UnboundedSender<Event>,
        mut stop_rx: oneshot::Receiver<Stop>,
        group: Arc<AtomicI32>,
    ) {
        let (job, attempt) = (request.job.clone(), request.attempt);
        // The job's cache on this replica, kept between its runs (by name: every job of that
        // name shares it, as a build cache is shared).
        let cache = self.work_root.parent().unwrap_or(&self.work_root).join("cache").join(format!(
            "{}-{}",
            request.spec.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            super::run::short_hash(&request.spec.name)
        ));
        let engine = match (prepared, &self.containers) {
            (Err(message), _) => Err(message),
            (Ok(()), None) => Err(format!(
                "a {} job needs a container engine (jobs.containers); this cluster runs processes without one",
                request.spec.kind.as_str()
            )),
            (Ok(()), Some(engine)) => Ok(engine.clone()),
        };
        // Reading the compose file and writing the run's files: off the runtime.
        let planned = match engine {
            Ok(engine) => {
                let (request, dir, work_root) = (request.clone(), dir.clone(), self.work_root.clone());
                let fresh_cache = !request.spec.container.cache.data;
                tokio::task::spawn_blocking(move || {
                    if fresh_cache {
                        let _ = std::fs::remove_dir_all(&cache);
                    }
                    engine.plan(&request, &dir, &work_root, &cache).map(|plan| (engine, plan))
                })
                .await
                .unwrap_or_else(|e| Err(format!("planning the run: {e}")))
            }
            Err(message) => Err(message),
        };
        let (engine, plan) = match planned {
            Ok(planned) => planned,
            Err(message) => {
                // The plan may have written the run's env or auth file before it failed.
                super::containers::remove_run_secrets(&dir);
                let _ = events.send(Event::error(&job, attempt, message));
                return;
            }
        };
        // Removes what the run made, then the run's files holding secrets, however it ends (also
        // when this task is aborted: the replica stopped leading).
        let cleanup = super::containers::Cleanup {
            commands: plan.cleanup.iter().cloned().collect(),
            secrets_in: Some(dir.clone()),
        };
        let timeout = Duration::from_secs(request.spec.timeout_s.max(1));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut keeper = LogKeeper::new(&job, attempt, &events, &dir, self.log_limit, &request.secrets);
        let mut last = (Ended::Exited(Ok(())), Some(0));
        for step in &plan.steps {
            keeper.take(LogStream::Stdout, format!("[atoll] {}\n", step.what).as_bytes()).await;
            let (program, args) = step.argv.split_first().expect("a step has a program");
            let command = atoll_spawn::Command {
                program: program.into(),
                args: args.iter().map(Into::into).collect(),
                env: plan.env.clone(),
                cwd: dir.clone(),
                // The engine runs as the replica, outside any sandbox: containers are its own.
                namespaces: atoll_spawn::Namespaces::Shared,
                sandbox: None,
            };
            let spawned = match atoll_spawn::spawn(&command) {
                Ok(spawned) => spawned,
                Err(e) => {
                    last = (Ended::Exited(Err(std::io::Error::other(format!("starting {program} failed: {e}")))), None);
                    break;
                }
            };
            group.store(spawned.child.id(), Ordering::SeqCst);
            last = watch(spawned, &mut keeper, deadline, &mut stop_rx).await;
            // Reaped: its group id may be anyone's now.
            group.store(0, Ordering::SeqCst);
            if !matches!(last, (Ended::Exited(Ok(())), Some(0))) {
                break;
            }
        }
        let (mut ended, mut code) = last;
        let mut message = None;
        if let (Some(project), Ended::Exited(Ok(()))) = (&plan.compose_project, &ended) {
            // `up` ended: the service that stopped first decides (compose programs differ in
            // what they exit with).
            match engine.compose_result(project).await {
                Ok(Some(end)) => {
                    let (exit, said) = end.verdict();
                    code = Some(exit);
                    message = Some(said);
                }
                Ok(None) => {}
                Err(e) => {
                    ended = Ended::Exited(Err(std::io::Error::other(format!("finding the services' result: {e}"))))
                }
            }
        }
        keeper.finish().await;
        cleanup.now().await;
        if let Some(project) = &plan.compose_project {
            engine.remove_project_leftovers(project).await;
        }
        let Some((state, exit_code, why)) = outcome(ended, code, timeout) else { return };
        let message = match (why, message) {
            (Some(why), Some(m)) => Some(format!("{why} ({m})")),
            (why, m) => why.or(m.filter(|_| state != EndState::Finished)),
        };
        self.report(&job, attempt, &dir, (state, exit_code, message), &events).await;
    }

    /// Store the output of an ended run (a failed job's output matters too), then report its end.
    async fn report(
        &self,
        job: &str,
        attempt: u32,
        work_dir: &Path,
        (mut state, exit_code, mut message): (EndState, Option<i32>, Option<String>),
        events: &mpsc::UnboundedSender<Event>,
    ) {
        let job = job.to_string();
        {
            let (outputs, transfers) = (&self.outputs, &self.transfers);
            if let Some(blobs) = outputs {
                let mut stored = store_output(blobs, work_dir).await;
                // Recorded only once a majority of the cluster's replicas hold it.
                if let (Ok(Some(output)), Some(transfers)) = (&stored, &transfers) {
                    let digest = output.digest.parse().map_err(|e: atoll_store::InvalidDigest| e.to_string());
                    let replicated = match digest {
                        Ok(digest) => transfers.replicate(&digest).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = replicated {
                        stored = Err(format!("copying it to the cluster's other replicas: {e}"));
                    }
                }
                match stored {
                    Ok(Some(output)) => {
                        let _ = events.send(Event::Output { job: job.clone(), attempt, output });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        state = EndState::Error;
                        let why = format!("storing its output in {} failed: {e}", blobs.name());
                        message = Some(match message {
                            Some(m) => format!("{m}; {why}"),
                            None => why,
                        });
                    }
                }
            }
            let _ = events.send(Event::Done { job: job.clone(), attempt, state, exit_code, message });
        }
    }

    /// Put each parent's output under `inputs/<parent>/`: an output from another cluster is first
    /// brought into this cluster's store ([`crate::transfers`]), then every one is copied out,
    /// verified, and unpacked.
    async fn deliver(&self, request: &RunRequest, into: &Path) -> Result<(), String> {
        // Without a gateway link a source can only be one this replica's store already holds.
        let source_to_fetch = request.spec.source.is_some() && self.transfers.is_some();
        if source_to_fetch || request.inputs.iter().any(|i| i.mode != InputMode::Local) {
            let transfers = self
                .transfers
                .as_ref()
                .ok_or("an input from another cluster cannot be fetched: this replica has no gateway link")?;
            transfers.bring_in(request.needs()).await.map_err(|e| e.to_string())?;
        }
        if let Some(source) = &request.spec.source {
            let dir = into.parent().unwrap_or(into).join("source");
            self.deliver_source(source, &dir).await.map_err(|e| format!("delivering source {source}: {e}"))?;
        }
        for input in &request.inputs {
            let started = std::time::Instant::now();
            if let (InputMode::Local, Some(transfers), Ok(digest)) =
                (input.mode, &self.transfers, input.digest.parse::<atoll_store::Digest>())
            {
                // Stored by another replica of this cluster (an earlier leader): copy it here.
                transfers
                    .ensure_local(&digest)
                    .await
                    .map_err(|e| format!("delivering the output of {} ({}): {e}", input.from_job, input.digest))?;
            }
            let blobs = self.outputs.as_ref().ok_or("this replica stores no outputs")?;
            let fail = |e: String| format!("delivering the output of {} ({}): {e}", input.from_job, input.digest);
            let digest: atoll_store::Digest =
                input.digest.parse().map_err(|e: atoll_store::InvalidDigest| fail(e.to_string()))?;
            let archive = into.join(format!(".{}.tar", input.from_job.replace('/', "_")));
            blobs.fetch_to_file(&digest, &archive).await.map_err(|e| fail(e.to_string()))?;
            let (from, to) = (archive.clone(), into.join(&input.from_job));
            let unpacked = tokio::task::spawn_blocking(move || atoll_store::archive::unpack(&from, &to))
                .await
                .map_err(|e| fail(e.to_string()))
                .and_then(|r| r.map_err(|e| fail(e.to_string())));
            let _ = tokio::fs::remove_file(&archive).await;
            unpacked?;
            tracing::info!(
                job = %request.job,
                parent = %input.from_job,
                bytes = input.size,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "input in place"
            );
        }
        Ok(())
    }

    /// Unpack the pushed source `digest` (in this replica's store) into `dir`.
    /// The values of the job's secret variables, from the gateway.
    async fn secrets(&self, request: &RunRequest) -> Result<super::run::SecretValues, String> {
        let transfers = self
            .transfers
            .as_ref()
            .ok_or("the job names secrets, and this replica has no gateway link to ask for them")?;
        request.secret_values(transfers).await
    }

    async fn deliver_source(&self, digest: &str, dir: &Path) -> Result<(), String> {
        let parsed: atoll_store::Digest = digest.parse().map_err(|e: atoll_store::InvalidDigest| e.to_string())?;
        let blobs = self.outputs.as_ref().ok_or("this replica stores no blobs")?;
        let archive = dir.with_file_name(".source.tar");
        blobs.fetch_to_file(&parsed, &archive).await.map_err(|e| e.to_string())?;
        let (from, to) = (archive.clone(), dir.to_path_buf());
        let unpacked = tokio::task::spawn_blocking(move || atoll_store::archive::unpack(&from, &to))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let _ = tokio::fs::remove_file(&archive).await;
        unpacked
    }

    fn command(&self, request: &RunRequest, dir: &Path) -> Result<atoll_spawn::Command, String> {
        let mut argv: Vec<String> = match (&request.spec.kind, &request.spec.command) {
            (JobKind::DockerImage, _) => {
                return Err("a docker-image job needs the kubernetes executor; this cluster runs processes".to_string());
            }
            (kind, _) if *kind != JobKind::Command => {
                return Err(format!("the process executor does not run {} jobs", kind.as_str()));
            }
            (_, Some(JobCommand::Shell(line))) => vec!["sh".to_string(), "-c".to_string(), line.clone()],
            (_, Some(JobCommand::Argv(argv))) if !argv.is_empty() => argv.clone(),
            _ => return Err("the job has no command".to_string()),
        };
        let program = argv.remove(0);
        let os = |s: &str| std::ffi::OsString::from(s);
        let path = |p: PathBuf| p.into_os_string();
        let mut env = vec![
            (os("PATH"), os(DEFAULT_PATH)),
            (os("HOME"), path(dir.to_path_buf())),
            (os("ATOLL_JOB_ID"), os(&request.job)),
            (os("ATOLL_ATTEMPT"), os(&request.attempt.to_string())),
            (os("ATOLL_PIPELINE"), os(&request.pipeline)),
            (os("ATOLL_OUTPUT"), path(dir.join("output"))),
            (os("ATOLL_INPUTS"), path(dir.join("inputs"))),
        ];
        if request.spec.source.is_some() {
            env.push((os("ATOLL_SOURCE"), path(dir.join("source"))));
        }
        for (key, value) in
            atoll_api::spec::infrabox_env(&request.job, &request.pipeline, request.attempt, &request.spec)
        {
            env.push((os(&key), os(&value)));
        }
        // The job's own environment last: it may override any of the above.
        for (key, value) in request.spec.environment.iter().chain(request.secrets.variables()) {
            env.retain(|(k, _)| k.as_os_str() != key.as_str());
            env.push((os(key), os(value)));
        }
        Ok(atoll_spawn::Command {
            program: program.into(),
            args: argv.into_iter().map(Into::into).collect(),
            env,
            cwd: dir.to_path_buf(),
            namespaces: self.isolation.namespaces(),
            sandbox: None,
        })
    }
}

/// A started run and the cgroup it lives in (removed when dropped).
struct Started {
    spawned: atoll_spawn::Spawned,
    _cgroup: Option<super::cgroups::RunCgroup>,
}

impl SandboxTemplate {
    /// The sandbox of the run working in `dir`, joining the cgroups `procs`.
    fn for_run(&self, dir: &Path, procs: Vec<PathBuf>) -> atoll_spawn::Sandbox {
        atoll_spawn::Sandbox {
            root: self.root.clone(),
            read_only: self.system_paths.clone(),
            hidden: self.hidden.clone(),
            read_write: self.writable_paths.iter().cloned().chain([dir.to_path_buf()]).collect(),
            tmp: Some(dir.join("tmp")).filter(|tmp| tmp.is_dir()),
            user: self.user,
            cgroups: procs,
            nice: self.nice,
            low_io_priority: true,
        }
    }
}

/// Hand the work directory `dir` and everything in it to `user` (links themselves, never what
/// they point to), so the job may write its output and read its inputs and source.
fn give_to(dir: &Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        if std::fs::symlink_metadata(&path)?.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

enum Ended {
    Exited(std::io::Result<()>),
    TimedOut,
    Stopped(Stop),
}

/// Follow one started process until it exits, `deadline` passes or a stop arrives, its output
/// into `keeper`; nothing of its group survives it. What ended it, and its exit code (`None`:
/// killed by a signal, or not known).
async fn watch(
    spawned: atoll_spawn::Spawned,
    keeper: &mut LogKeeper<'_>,
    deadline: tokio::time::Instant,
    stop_rx: &mut oneshot::Receiver<Stop>,
) -> (Ended, Option<i32>) {
    let atoll_spawn::Spawned { mut child, stdout, stderr } = spawned;
    let mut logs = Box::pin(pump(Some(stdout), Some(stderr), keeper));
    let mut logs_done = false;
    let ended = loop {
        tokio::select! {
            exited = child.exited() => break Ended::Exited(exited),
            () = tokio::time::sleep_until(deadline) => break Ended::TimedOut,
            why = &mut *stop_rx => match why {
                Ok(why) => break Ended::Stopped(why),
                // The handle is gone: the run is being torn down.
                Err(_) => break Ended::Stopped(Stop::Drop),
            },
            () = &mut logs, if !logs_done => logs_done = true,
        }
    };
    // Whatever ended it, nothing of the group survives the run (killed before the first process
    // is reaped, while the group id is still surely the run's).
    let _ = child.kill_group(nix::libc::SIGKILL);
    let status = child.wait().await.ok();
    if !logs_done {
        // Pipes close once every process holding them is gone; do not wait forever.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut logs).await;
    }
    (ended, status.and_then(|s| s.code()))
}

/// How a run ended, as reported: `None` when it was dropped (nothing is reported).
fn outcome(ended: Ended, code: Option<i32>, timeout: Duration) -> Option<(EndState, Option<i32>, Option<String>)> {
    Some(match ended {
        Ended::Stopped(Stop::Drop) => return None,
        Ended::Stopped(Stop::Cancel) => (EndState::Killed, None, Some("cancelled".to_string())),
        Ended::TimedOut => (
            EndState::Failure,
            None,
            Some(format!("timed out after {} s; the process group was killed", timeout.as_secs())),
        ),
        Ended::Exited(Err(e)) => (EndState::Error, None, Some(format!("waiting for the command failed: {e}"))),
        Ended::Exited(Ok(())) => match code {
            Some(0) => (EndState::Finished, Some(0), None),
            Some(code) => (EndState::Failure, Some(code), Some(format!("exited with {code}"))),
            None => (EndState::Failure, None, Some("killed by a signal".to_string())),
        },
    })
}

/// Archive `dir/output` and store it by digest; `None` when the run wrote no output.
async fn store_output(
    blobs: &atoll_store::Blobs,
    dir: &Path,
) -> Result<Option<atoll_raft_store::jobs::OutputRecord>, String> {
    let output = dir.join("output");
    // The job may have put a link in its place: never followed.
    match std::fs::symlink_metadata(&output) {
        Ok(meta) if !meta.is_dir() => {
            return Err(format!("{} is not a directory (a link there is not followed)", output.display()));
        }
        _ => {}
    }
    let empty = match std::fs::read_dir(&output) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(format!("reading {}: {e}", output.display())),
    };
    if empty {
        return Ok(None);
    }
    let archive = dir.join("output.tar");
    // Whatever the job left under this name goes; the archive is a new file of the replica's.
    let _ = std::fs::remove_file(&archive);
    let (src, dest) = (output.clone(), archive.clone());
    let packed = tokio::task::spawn_blocking(move || atoll_store::archive::pack_dir(&src, &dest))
        .await
        .map_err(|e| format!("archiving the output: {e}"))?
        .map_err(|e| format!("archiving {}: {e}", output.display()))?;
    let stored = blobs.put_file(&archive, &packed.digest).await.map_err(|e| e.to_string());
    let _ = tokio::fs::remove_file(&archive).await;
    let m = stored?.manifest;
    Ok(Some(atoll_raft_store::jobs::OutputRecord {
        digest: m.digest.to_string(),
        size: m.size,
        chunk_size: m.chunk_size,
        chunks: m.chunks.iter().map(ToString::to_string).collect(),
    }))
}

/// A fresh work directory with `output/` and `inputs/`, and `source/` for a job with a source.
/// Nothing more: each inode made here is made once per attempt.
fn prepare(dir: &Path, request: &RunRequest) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("preparing the work directory {}: {e}", dir.display());
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(e)),
        _ => {}
    }
    std::fs::create_dir_all(dir.join("output")).map_err(fail)?;
    std::fs::create_dir(dir.join("inputs")).map_err(fail)?;
    std::fs::create_dir(dir.join("tmp")).map_err(fail)?;
    if request.spec.source.is_some() {
        std::fs::create_dir(dir.join("source")).map_err(fail)?;
    }
    Ok(())
}

fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos().div_euclid(1_000_000) as i64
}

/// Open `path` for writing as a new file of this replica: whatever the job left at that name
/// (a file, a link to somewhere else) is removed first, and a link is never followed.
async fn create_own(path: &Path) -> std::io::Result<tokio::fs::File> {
    let _ = tokio::fs::remove_file(path).await;
    tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .await
}

/// A run's log within its limit: the first half of the limit as written (to the work directory's
/// `log` and to the gateway, piece by piece), the last half in a ring file (`log.tail`) until
/// the run ends, then the marker saying how many bytes were dropped between them and the tail,
/// added to `log` and shipped. Nothing is cut without the marker.
struct LogKeeper<'a> {
    job: &'a str,
    attempt: u32,
    events: &'a mpsc::UnboundedSender<Event>,
    dir: &'a Path,
    limit: u64,
    head: u64,
    tail_cap: u64,
    /// Bytes of output seen.
    seen: u64,
    seq: u32,
    file: Option<tokio::fs::File>,
    ring: Option<tokio::fs::File>,
    /// The work directory refused a file: pieces still go to the gateway.
    unwritable: bool,
    /// Values masked wherever a read holds them whole ([`super::run::mask`]).
    secrets: Vec<&'a [u8]>,
}

impl<'a> LogKeeper<'a> {
    fn new(
        job: &'a str,
        attempt: u32,
        events: &'a mpsc::UnboundedSender<Event>,
        dir: &'a Path,
        limit: u64,
        secrets: &'a super::run::SecretValues,
    ) -> Self {
        let head = limit / 2;
        let secrets = secrets.masks();
        Self {
            job,
            attempt,
            events,
            dir,
            limit,
            head,
            tail_cap: limit - head,
            seen: 0,
            seq: 0,
            file: None,
            ring: None,
            unwritable: false,
            secrets,
        }
    }

    fn ship(&mut self, stream: LogStream, bytes: &[u8]) {
        for piece in bytes.chunks(PIECE) {
            self.seq += 1;
            let data = String::from_utf8_lossy(piece).into_owned();
            let _ = self.events.send(Event::Log {
                job: self.job.to_string(),
                attempt: self.attempt,
                seq: self.seq,
                stream,
                data,
                at_ms: now_ms(),
            });
        }
    }

    /// A new file of the replica's in the work directory; `None` (said once) when it cannot be
    /// made: the pieces still go to the gateway, and the marker counts what was not kept.
    async fn open(&mut self, name: &str) -> Option<tokio::fs::File> {
        if self.unwritable {
            return None;
        }
        match create_own(&self.dir.join(name)).await {
            Ok(file) => Some(file),
            Err(e) => {
                self.unwritable = true;
                tracing::warn!(job = %self.job, attempt = self.attempt, file = name, error = %e, "the run's log cannot be kept in its work directory");
                None
            }
        }
    }

    async fn write_log(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        if self.file.is_none() {
            self.file = self.open("log").await;
        }
        if let Some(file) = self.file.as_mut() {
            let _ = file.write_all(bytes).await;
        }
    }

    async fn take(&mut self, stream: LogStream, bytes: &[u8]) {
        let masked = super::run::mask(bytes, &self.secrets);
        let mut bytes: &[u8] = masked.as_deref().unwrap_or(bytes);
        if self.seen < self.head {
            let n = bytes.len().min((self.head - self.seen) as usize);
            self.write_log(&bytes[..n]).await;
            self.ship(stream, &bytes[..n]);
            self.seen += n as u64;
            bytes = &bytes[n..];
        }
        if bytes.is_empty() {
            return;
        }
        // Past the head: into the ring, overwriting its oldest bytes.
        use tokio::io::AsyncSeekExt;
        use tokio::io::AsyncWriteExt;
        if self.ring.is_none() {
            self.ring = self.open("log.tail").await;
        }
        // Only the last `tail_cap` bytes of this read can survive.
        let skip = bytes.len().saturating_sub(self.tail_cap as usize);
        let mut at = (self.seen - self.head + skip as u64) % self.tail_cap;
        self.seen += skip as u64;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            let n = bytes.len().min((self.tail_cap - at) as usize);
            if let Some(ring) = self.ring.as_mut() {
                let _ = ring.seek(std::io::SeekFrom::Start(at)).await;
                let _ = ring.write_all(&bytes[..n]).await;
            }
            self.seen += n as u64;
            at = (at + n as u64) % self.tail_cap;
            bytes = &bytes[n..];
        }
    }

    /// The run ended: the marker and the tail, in the log and to the gateway; the log made whole
    /// on disk before the end is reported.
    async fn finish(mut self) {
        use tokio::io::AsyncReadExt;
        use tokio::io::AsyncSeekExt;
        use tokio::io::AsyncWriteExt;
        if self.seen > self.head {
            let past = self.seen - self.head;
            // Without a ring file nothing of the tail was kept: all of it counts as dropped.
            let kept = if self.ring.is_some() { past.min(self.tail_cap) } else { 0 };
            let dropped = past - kept;
            if dropped > 0 {
                let marker = dropped_marker(dropped, self.limit);
                self.write_log(marker.as_bytes()).await;
                self.seq += 1;
                let _ = self.events.send(Event::Log {
                    job: self.job.to_string(),
                    attempt: self.attempt,
                    seq: self.seq,
                    stream: LogStream::Marker,
                    data: marker,
                    at_ms: now_ms(),
                });
            }
            // The ring in order: from the oldest byte kept.
            let start = if past > self.tail_cap { past % self.tail_cap } else { 0 };
            let mut tail = Vec::with_capacity(kept as usize);
            if let Some(mut ring) = self.ring.take() {
                let mut first = vec![0u8; (kept - start.min(kept)) as usize];
                let _ = ring.flush().await;
                if ring.seek(std::io::SeekFrom::Start(start)).await.is_ok() && ring.read_exact(&mut first).await.is_ok()
                {
                    tail.extend_from_slice(&first);
                    let mut wrapped = vec![0u8; (kept as usize).saturating_sub(first.len())];
                    if ring.seek(std::io::SeekFrom::Start(0)).await.is_ok()
                        && ring.read_exact(&mut wrapped).await.is_ok()
                    {
                        tail.extend_from_slice(&wrapped);
                    }
                }
                let _ = tokio::fs::remove_file(self.dir.join("log.tail")).await;
            }
            self.write_log(&tail).await;
            // The tail's stream is not kept per byte: it is shipped as stdout.
            self.ship(LogStream::Stdout, &tail);
        }
        // A write of tokio's file returns once handed to a blocking thread: wait for the last
        // one, so the log is whole in the work directory when the run is reported ended.
        if let Some(f) = self.file.as_mut() {
            let _ = f.flush().await;
        }
    }
}

/// Read both pipes until they close into the run's [`LogKeeper`].
async fn pump(
    stdout: Option<tokio::net::unix::pipe::Receiver>,
    stderr: Option<tokio::net::unix::pipe::Receiver>,
    keeper: &mut LogKeeper<'_>,
) {
    let (mut out, mut err) = (stdout, stderr);
    let (mut out_buf, mut err_buf) = (vec![0u8; PIECE], vec![0u8; PIECE]);
    while out.is_some() || err.is_some() {
        let (stream, read) = tokio::select! {
            n = async { out.as_mut().expect("guarded").read(&mut out_buf).await }, if out.is_some() => (LogStream::Stdout, n),
            n = async { err.as_mut().expect("guarded").read(&mut err_buf).await }, if err.is_some() => (LogStream::Stderr, n),
        };
        let n = match read {
            Ok(0) | Err(_) => {
                match stream {
                    LogStream::Stderr => err = None,
                    _ => out = None,
                }
                continue;
            }
            Ok(n) => n,
        };
        let bytes = match stream {
            LogStream::Stderr => &err_buf[..n],
            _ => &out_buf[..n],
        };
        keeper.take(stream, bytes).await;
    }
}

#[cfg(test)]
mod tests {
    use atoll_api::jobs::AssignedInput;

    use super::*;

    fn request(command: &str, inputs: Vec<AssignedInput>) -> RunRequest {
        let doc = format!(
            "version: 1\njobs:\n  - name: child\n    type: command\n    command: '{command}'\n    timeout: 30\n"
        );
        let spec = atoll_api::spec::parse(&doc).expect("spec").jobs.remove(0);
        RunRequest {
            job: "0123456789ab.child".into(),
            pipeline: "0123456789ab".into(),
            attempt: 1,
            spec,
            inputs,
            secret: None,
            secrets: Default::default(),
        }
    }

    fn input(from_job: &str, digest: &atoll_store::Digest, mode: InputMode) -> AssignedInput {
        AssignedInput {
            from_job: from_job.into(),
            job: atoll_api::ids::JobId::new("0123456789ab", from_job),
            cluster: "aws".parse().unwrap(),
            mode,
            digest: digest.to_string(),
            size: 0,
        }
    }

    /// Run to its end: the state and message.
    async fn run(executor: &ProcessExecutor, request: RunRequest) -> (EndState, Option<String>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _handle = executor.start(request, tx);
        let done = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match rx.recv().await.expect("events") {
                    Event::Done { state, message, .. } => return (state, message),
                    _ => continue,
                }
            }
        });
        done.await.expect("the run ends")
    }

    #[tokio::test]
    async fn a_work_directory_holds_output_and_inputs_and_a_log_only_once_something_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let executor =
            ProcessExecutor::detect(dir.path().join("work"), &ProcessSettings::for_tests(Vec::new())).await.unwrap();
        let work = executor.work_dir("0123456789ab.child", 1);
        // No source: no source/ and no ATOLL_SOURCE; output/ and inputs/ are there.
        let check = r#"test -d "$ATOLL_OUTPUT" && test -d "$ATOLL_INPUTS" && test -z "${ATOLL_SOURCE+set}""#;
        let (state, message) = run(&executor, request(check, Vec::new())).await;
        assert_eq!(state, EndState::Finished, "{message:?}");
        assert!(!work.join("source").exists());
        assert!(!work.join("log").exists(), "a silent run leaves no log file");

        let (state, message) = run(&executor, request("echo hello; echo oops >&2", Vec::new())).await;
        assert_eq!(state, EndState::Finished, "{message:?}");
        let log = std::fs::read_to_string(work.join("log")).expect("the log of a run that wrote");
        assert!(log.contains("hello") && log.contains("oops"), "{log}");
    }

    #[tokio::test]
    async fn a_log_over_its_limit_keeps_head_and_tail_with_a_marker_in_the_work_directory_and_the_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = ProcessSettings::for_tests(Vec::new());
        settings.log_limit = 8192;
        let executor = ProcessExecutor::detect(dir.path().join("work"), &settings).await.unwrap();
        // 20,000 numbered lines (108,894 bytes): far over the limit.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _handle = executor.start(request("seq 1 20000", Vec::new()), tx);
        let mut shipped = String::new();
        let mut markers = Vec::new();
        let state = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match rx.recv().await.expect("events") {
                    Event::Log { stream: LogStream::Marker, data, .. } => markers.push(data),
                    Event::Log { data, .. } => shipped.push_str(&data),
                    Event::Done { state, .. } => return state,
                    _ => {}
                }
            }
        })
        .await
        .expect("the run ends");
        assert_eq!(state, EndState::Finished);
        assert_eq!(markers.len(), 1, "one marker: {markers:?}");
        let total: usize = (1..=20000).map(|n: u32| n.to_string().len() + 1).sum();
        assert!(markers[0].contains(&format!("{} bytes of output dropped", total - 8192)), "{}", markers[0]);
        assert_eq!(shipped.len(), 8192, "head and tail shipped whole");
        assert!(shipped.starts_with("1\n2\n3\n") && shipped.ends_with("19999\n20000\n"));
        let log = std::fs::read_to_string(executor.work_dir("0123456789ab.child", 1).join("log")).unwrap();
        assert_eq!(log, format!("{}{}{}", &shipped[..4096], markers[0], &shipped[4096..]), "the same cut on disk");
        assert!(!executor.work_dir("0123456789ab.child", 1).join("log.tail").exists());
    }

    #[tokio::test]
    async fn local_inputs_are_in_place_before_the_run_and_a_missing_one_fails_it_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = atoll_store::Blobs::open(&atoll_store::StorageConfig::local(dir.path().join("blobs"))).unwrap();
        let out = dir.path().join("parent-output");
        std::fs::create_dir_all(out.join("bin")).unwrap();
        std::fs::write(out.join("bin/app"), "artifact").unwrap();
        let packed = atoll_store::archive::pack_dir(&out, &dir.path().join("p.tar")).unwrap();
        blobs.put_file(&dir.path().join("p.tar"), &packed.digest).await.unwrap();
        let executor = ProcessExecutor::detect(dir.path().join("work"), &ProcessSettings::for_tests(Vec::new()))
            .await
            .unwrap()
            .with_outputs(blobs);

        let check = r#"test "$(cat $ATOLL_INPUTS/build/bin/app)" = artifact"#;
        let inputs = vec![input("build", &packed.digest, InputMode::Local)];
        let (state, message) = run(&executor, request(check, inputs)).await;
        assert_eq!(state, EndState::Finished, "{message:?}");

        // An input from another cluster needs the gateway link: without one the run fails,
        // saying so, and never starts.
        let remote = vec![input("remote", &atoll_store::Digest::of(b"elsewhere"), InputMode::Relay)];
        let (state, message) = run(&executor, request("true", remote)).await;
        assert_eq!(state, EndState::Error);
        assert!(message.unwrap_or_default().contains("no gateway link"));

        let missing = atoll_store::Digest::of(b"never stored");
        let (state, message) = run(&executor, request("true", vec![input("gone", &missing, InputMode::Local)])).await;
        assert_eq!(state, EndState::Error);
        let message = message.unwrap_or_default();
        assert!(message.contains("delivering the output of gone") && message.contains("is not in local"), "{message}");
    }

    /// A process executor with podman, storing outputs in `dir/blobs`; `source` packed and stored.
    async fn with_podman(dir: &Path, source: &Path) -> (ProcessExecutor, atoll_store::Blobs, String) {
        with_engine(dir, source, super::super::containers::Engine::podman_for_tests()).await
    }

    async fn with_engine(
        dir: &Path,
        source: &Path,
        engine: super::super::containers::Engine,
    ) -> (ProcessExecutor, atoll_store::Blobs, String) {
        let blobs = atoll_store::Blobs::open(&atoll_store::StorageConfig::local(dir.join("blobs"))).unwrap();
        let packed = atoll_store::archive::pack_dir(source, &dir.join("s.tar")).unwrap();
        blobs.put_file(&dir.join("s.tar"), &packed.digest).await.unwrap();
        let mut settings = ProcessSettings::for_tests(Vec::new());
        settings.containers = Some(engine);
        let executor = ProcessExecutor::detect(dir.join("work"), &settings)
            .await
            .expect("podman answers (scripts/test installs it)")
            .with_outputs(blobs.clone());
        (executor, blobs, packed.digest.to_string())
    }

    fn container_request(doc: &str, source: &str) -> RunRequest {
        let mut spec = atoll_api::spec::parse(doc).expect("spec").jobs.remove(0);
        spec.source = Some(source.to_string());
        RunRequest {
            job: format!("0123456789ab.{}", spec.name),
            pipeline: "0123456789ab".into(),
            attempt: 1,
            spec,
            inputs: Vec::new(),
            secret: None,
            secrets: Default::default(),
        }
    }

    /// Run to its end: state, message, the whole log.
    async fn run_logged(executor: &ProcessExecutor, request: RunRequest) -> (EndState, Option<String>, String) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _handle = executor.start(request, tx);
        let mut log = String::new();
        let done = tokio::time::timeout(Duration::from_secs(300), async {
            loop {
                match rx.recv().await.expect("events") {
                    Event::Log { data, .. } => log.push_str(&data),
                    Event::Done { state, message, .. } => return (state, message),
                    _ => continue,
                }
            }
        });
        let (state, message) = done.await.expect("the run ends");
        (state, message, log)
    }

    /// The containers labelled with the executor's work root: none once runs ended.
    async fn leftovers(executor: &ProcessExecutor) -> String {
        let engine = executor.containers().unwrap();
        let label = format!("label=atoll.work={}", executor.work_root.display());
        super::super::containers::output(&engine.command("ps", ["-a".into(), "-q".into(), "--filter".into(), label]))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_docker_job_builds_its_dockerfile_and_runs_it_with_infraboxs_paths_and_its_secret_masked() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        std::fs::create_dir_all(source.join("app/infrabox/producer")).unwrap();
        std::fs::write(
            source.join("app/infrabox/producer/Dockerfile"),
            "FROM localhost/atoll-base:bookworm\nARG GREETING\nRUN echo \"$GREETING from the build\" > /greeting\n\
             CMD [\"sh\", \"-c\", \"cat /greeting > /infrabox/output/greeting; cat /infrabox/inputs/parent/made > /infrabox/output/from-parent; \
             ls /infrabox/context > /infrabox/output/context; echo token=$TOKEN; echo cache > /infrabox/cache/kept; echo job=$INFRABOX_JOB_ID\"]\n",
        )
        .unwrap();
        let (executor, blobs, digest) = with_podman(dir.path(), &source).await;
        // A parent's output, delivered to /infrabox/inputs/parent.
        let out = dir.path().join("parent-out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("made"), "by the parent").unwrap();
        let packed = atoll_store::archive::pack_dir(&out, &dir.path().join("p.tar")).unwrap();
        blobs.put_file(&dir.path().join("p.tar"), &packed.digest).await.unwrap();

        let doc = r#"{"version": 1, "jobs": [{"type": "docker", "name": "producer", "build_only": false,
            "resources": {"limits": {"cpu": 1, "memory": 256}}, "docker_file": "infrabox/producer/Dockerfile",
            "build_arguments": {"GREETING": "hello"}, "environment": {"TOKEN": {"$secret": "token"}}, "timeout": 300}]}"#;
        let mut request = container_request(doc, &digest);
        request.inputs = vec![input("parent", &packed.digest, InputMode::Local)];
        // The job's file is in app/: its paths start there.
        request.spec.defined_in = Some(atoll_api::spec::DefinedIn { dir: "app".into(), at: String::new(), git: None });
        request.spec.secret_env.clear();
        request.secrets = super::super::run::SecretValues([("TOKEN".to_string(), "s3cr3t-value".to_string())].into());
        let (state, message, log) = run_logged(&executor, request).await;
        assert_eq!(state, EndState::Finished, "{message:?}\n{log}");
        assert!(log.contains("[atoll] building localhost/atoll/producer-"), "{log}");
        assert!(log.contains("token=***") && !log.contains("s3cr3t-value"), "the secret is masked: {log}");
        assert!(log.contains("job=0123456789ab.producer"), "{log}");
        let work = executor.work_dir("0123456789ab.producer", 1);
        let read = |f: &str| std::fs::read_to_string(work.join("output").join(f)).unwrap();
        assert_eq!(read("greeting"), "hello from the build\n");
        assert_eq!(read("from-parent"), "by the parent");
        assert_eq!(read("context"), "infrabox\n", "the context is the job file's directory");
        let kept = std::fs::read_dir(dir.path().join("cache")).unwrap().flatten().any(|entry| {
            entry.file_name().to_string_lossy().starts_with("producer-") && entry.path().join("kept").is_file()
        });
        assert!(kept, "the cache is kept for the job's next run");
        assert_eq!(leftovers(&executor).await.trim(), "", "no container is left");

        // A failing build fails the job, with the engine's words in the log.
        std::fs::write(
            source.join("app/infrabox/producer/Dockerfile"),
            "FROM localhost/atoll-base:bookworm\nRUN exit 7\n",
        )
        .unwrap();
        let (executor, _, digest) = with_podman(dir.path(), &source).await;
        // The secret's value comes from the gateway: left out from here on.
        let doc = doc.replace(r#""environment": {"TOKEN": {"$secret": "token"}}, "#, "");
        let in_app = |doc: &str| {
            let mut request = container_request(doc, &digest);
            request.spec.defined_in =
                Some(atoll_api::spec::DefinedIn { dir: "app".into(), at: String::new(), git: None });
            request
        };
        let (state, message, log) = run_logged(&executor, in_app(&doc)).await;
        assert_eq!(state, EndState::Failure, "{message:?}\n{log}");
        assert!(message.unwrap_or_default().starts_with("exited with"), "{log}");

        // A Dockerfile outside the source is refused before anything runs.
        let escape = doc.replace("infrabox/producer/Dockerfile", "../../../../../../../../../../../../etc/passwd");
        let (state, message, _) = run_logged(&executor, in_app(&escape)).await;
        assert_eq!(state, EndState::Error);
        assert!(message.unwrap_or_default().contains("leads out of the job's source"));
    }

    #[tokio::test]
    async fn a_docker_job_pushes_to_a_registry_it_logs_in_to_and_a_docker_image_job_pulls_from_it() {
        let dir = tempfile::tempdir().unwrap();
        use atoll_mesh::registry::REGISTRY_PASSWORD;
        use atoll_mesh::registry::REGISTRY_USER;
        let registry = atoll_mesh::registry::ImageRegistry::start(&dir.path().join("registry")).await.unwrap();
        let source = dir.path().join("src");
        std::fs::create_dir_all(source.join("infrabox/app")).unwrap();
        std::fs::write(
            source.join("infrabox/app/Dockerfile"),
            "FROM localhost/atoll-base:bookworm AS base\nRUN echo from the base stage > /made\n\
             FROM base AS final\nRUN echo from the final stage > /made\n",
        )
        .unwrap();
        let mut engine = super::super::containers::Engine::podman_for_tests();
        engine.registry_args = vec!["--cert-dir".into(), registry.certs.display().to_string()];
        let (executor, _, digest) = with_engine(dir.path(), &source, engine.clone()).await;
        let host = &registry.addr;
        let secrets = |keys: &[&str], password: &str| {
            super::super::run::SecretValues(keys.iter().map(|k| (k.to_string(), password.to_string())).collect())
        };

        // A docker job: built, then pushed twice: as the built image, and its `base` stage.
        let login = format!(r#""username": "{REGISTRY_USER}", "password": {{"$secret": "registry"}}"#);
        let doc = format!(
            r#"{{"version": 1, "jobs": [{{"type": "docker", "name": "app", "docker_file": "infrabox/app/Dockerfile",
              "deployments": [{{"type": "docker-registry", "host": "{host}", "repository": "atoll/app", {login}}},
                              {{"type": "docker-registry", "host": "{host}", "repository": "atoll/base", "tag": "v1", "target": "base", {login}}}]}}]}}"#
        );
        let mut request = container_request(&doc, &digest);
        request.secrets = secrets(&["deployments[0].password", "deployments[1].password"], REGISTRY_PASSWORD);
        // The values are given here, not asked of a gateway.
        request.spec.container.deployments.iter_mut().for_each(|d| d.password = None);
        let (state, message, log) = run_logged(&executor, request).await;
        assert_eq!(state, EndState::Finished, "{message:?}\n{log}");
        let pushed = format!("{host}/atoll/app:build_0123456789ab");
        assert!(log.contains(&format!("[atoll] pushing {pushed}")), "{log}");
        assert!(log.contains(&format!("[atoll] building stage base for {host}/atoll/base:v1")), "{log}");
        assert!(!log.contains(REGISTRY_PASSWORD), "the password never shows: {log}");
        let work = executor.work_dir("0123456789ab.app", 1);
        assert!(!work.join(".atoll-auth").exists() && !work.join(".atoll-env").exists(), "no secret stays on disk");
        // The local names went with the run: what is pulled next comes from the registry.
        let names = |prefixes: Vec<String>| {
            let all = engine.command("images", ["--format".into(), "{{.Repository}}:{{.Tag}}".into()]);
            async move {
                let listed = super::super::containers::output(&all).await.unwrap();
                listed
                    .lines()
                    .filter(|l| prefixes.iter().any(|p| l.starts_with(p.as_str())))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(names(vec![host.clone()]).await, Vec::<String>::new(), "no local name of the registry's is left");

        // A docker-image job pulls each back with its login, and runs it; its variables hold
        // no password.
        let pull = |image: &str, password: &str| {
            let doc = format!(
                r#"{{"version": 1, "jobs": [{{"type": "docker-image", "name": "use", "image": "{image}", "command": ["sh", "-c", "cat /made; env"],
                  "registries": [{{"type": "docker-registry", "host": "{host}", "repository": "atoll/app", {login}}}]}}]}}"#
            );
            let mut request = container_request(&doc, &digest);
            request.secrets = secrets(&["registries[0].password"], password);
            request.spec.container.registries[0].password = None;
            request
        };
        let (state, message, log) = run_logged(&executor, pull(&pushed, REGISTRY_PASSWORD)).await;
        assert_eq!(state, EndState::Finished, "{message:?}\n{log}");
        assert!(log.contains(&format!("[atoll] pulling {pushed}")) && log.contains("from the final stage"), "{log}");
        assert!(log.contains("INFRABOX_JOB_ID="), "the variables are printed: {log}");
        assert!(!log.contains("password") && !log.contains("***"), "no password among them: {log}");
        let (state, message, log) =
            run_logged(&executor, pull(&format!("{host}/atoll/base:v1"), REGISTRY_PASSWORD)).await;
        assert_eq!(state, EndState::Finished, "{message:?}\n{log}");
        assert!(log.contains("from the base stage"), "{log}");

        // A wrong password: the pull fails with the registry's words, and the password is masked.
        let _ =
            super::super::containers::output(&engine.command("rmi", ["-f".into(), "--".into(), pushed.clone()])).await;
        let (state, _, log) = run_logged(&executor, pull(&pushed, "not-the-password")).await;
        assert_eq!(state, EndState::Failure, "{log}");
        assert!(log.to_lowercase().contains("unauthorized") || log.contains("401"), "{log}");
        assert!(!log.contains("not-the-password"), "{log}");
        assert_eq!(leftovers(&executor).await.trim(), "", "no container is left");

        // `always_push`: pushed before the run, so a failing run has pushed (a docker-image
        // job's image, under the deployment's name; an image under localhost/ is not pulled).
        let doc = format!(
            r#"{{"version": 1, "jobs": [{{"type": "docker-image", "name": "copy", "image": "localhost/atoll-base:bookworm",
              "command": ["sh", "-c", "echo failing; exit 3"],
              "deployments": [{{"type": "docker-registry", "host": "{host}", "repository": "atoll/copy", "tag": "v2", "always_push": true, {login}}}]}}]}}"#
        );
        let mut request = container_request(&doc, &digest);
        request.secrets = secrets(&["deployments[0].password"], REGISTRY_PASSWORD);
        request.spec.container.deployments[0].password = None;
        let (state, _, log) = run_logged(&executor, request).await;
        assert_eq!(state, EndState::Failure, "{log}");
        let (pushing, failing) = (log.find("[atoll] pushing").unwrap_or(usize::MAX), log.find("failing").unwrap_or(0));
        assert!(pushing < failing && !log.contains("[atoll] pulling"), "pushed, then run: {log}");
        let (state, message, log) =
            run_logged(&executor, pull(&format!("{host}/atoll/copy:v2"), REGISTRY_PASSWORD)).await;
        assert_eq!(state, EndState::Finished, "{message:?}\n{log}");

        // A run whose plan fails after its files were written leaves no secret on disk.
        let doc = format!(
            r#"{{"version": 1, "jobs": [{{"type": "docker", "name": "astray", "docker_file": "../../Dockerfile",
              "deployments": [{{"type": "docker-registry", "host": "{host}", "repository": "atoll/astray", {login}}}]}}]}}"#
        );
        let mut request = container_request(&doc, &digest);
        request.secrets = secrets(&["deployments[0].password"], REGISTRY_PASSWORD);
        request.spec.container.deployments[0].password = None;
        let (state, message, _) = run_logged(&executor, request).await;
        assert_eq!(state, EndState::Error, "{message:?}");
        let work = executor.work_dir("0123456789ab.astray", 1);
        assert!(!work.join(".atoll-auth").exists() && !work.join(".atoll-env").exists(), "no secret stays on disk");
        // The images pulled from this registry (its port is this run's), and the built-only
        // image of the job (the product, which the engine keeps): not kept by the test.
        let ours = names(vec![host.clone(), "localhost/atoll/app-".into()]).await;
        if !ours.is_empty() {
            let mut rmi = vec!["-f".to_string(), "--".to_string()];
            rmi.extend(ours);
            super::super::containers::output(&engine.command("rmi", rmi)).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_docker_image_job_runs_its_command_and_cancel_removes_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        std::fs::create_dir_all(&source).unwrap();
        let (executor, _, digest) = with_podman(dir.path(), &source).await;
        let doc = r#"{"version": 1, "jobs": [{"type": "docker-image", "name": "img", "image": "localhost/atoll-base:bookworm",
            "command": ["sh", "-c", "echo out > /infrabox/output/o; echo ran $ATOLL_OUTPUT"],
            "resources": {"limits": {"cpu": 1, "memory": 256}}}]}"#;
        let (state, message, log) = run_logged(&executor, container_request(doc, &digest)).await;
        assert_eq!(state, EndState::Finished, "{message:?}\n{log}");
        assert!(log.contains("ran /infrabox/output"), "{log}");
        assert!(executor.work_dir("0123456789ab.img", 1).join("output/o").is_file());

        let slow = doc.replace("echo out > /infrabox/output/o; echo ran $ATOLL_OUTPUT", "echo started; sleep 600");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut handle = executor.start(container_request(&slow, &digest), tx);
        let started = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(event) = rx.recv().await {
                if matches!(&event, Event::Log { data, .. } if data.contains("started")) {
                    return;
                }
            }
        });
        started.await.expect("the container starts");
        handle.stop(Stop::Cancel);
        let state = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                if let Some(Event::Done { state, .. }) = rx.recv().await {
                    return state;
                }
            }
        })
        .await
        .expect("the cancel ends the run");
        assert_eq!(state, EndState::Killed);
        assert_eq!(leftovers(&executor).await.trim(), "", "the cancelled container is removed");
    }

    #[tokio::test]
    async fn a_docker_compose_job_runs_its_services_and_the_first_to_stop_decides() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        std::fs::create_dir_all(source.join("infrabox/test/svc")).unwrap();
        std::fs::write(
            source.join("infrabox/test/svc/Dockerfile"),
            "FROM localhost/atoll-base:bookworm\nRUN echo built > /built\n",
        )
        .unwrap();
        let compose = |exit: u8| {
            format!(
                "services:\n  db:\n    image: localhost/atoll-base:bookworm\n    command: [\"sleep\", \"600\"]\n  test:\n    build: ./svc\n    \
                 command: [\"sh\", \"-c\", \"cat /built; echo job $$INFRABOX_JOB_ID; echo hi > /infrabox/output/t; exit {exit}\"]\n"
            )
        };
        std::fs::write(source.join("infrabox/test/docker-compose.yml"), compose(0)).unwrap();
        let (executor, _, digest) = with_podman(dir.path(), &source).await;
        let doc = r#"{"version": 1, "jobs": [{"type": "docker-compose", "name": "test",
            "resources": {"limits": {"cpu": 1, "memory": 1024}}, "docker_compose_file": "infrabox/test/docker-compose.yml",
            "stop_timeout": 2}]}"#;
        let (state, message, log) = run_logged(&executor, container_request(doc, &digest)).await;
        assert_eq!(state, EndState::Finished, "{message:?}\n{log}");
        assert!(log.contains("built") && log.contains("job 0123456789ab.test"), "{log}");
        assert!(executor.work_dir("0123456789ab.test", 1).join("output/t").is_file());
        assert_eq!(leftovers(&executor).await.trim(), "", "the project is down");
        let engine = executor.containers().unwrap();
        // The project's name carries a hash of the job's id.
        let project = format!("atoll_0123456789ab_test_1_{}", super::super::run::short_hash("0123456789ab.test"));
        let images = super::super::containers::output(
            &engine.command("images", ["-q".into(), "--filter".into(), format!("reference=*{project}_*")]),
        )
        .await
        .unwrap();
        assert_eq!(images.trim(), "", "the images the project built are gone with it");
        let networks = super::super::containers::output(
            &engine.command("network", ["ls".into(), "-q".into(), "--filter".into(), format!("name={project}")]),
        )
        .await
        .unwrap();
        assert_eq!(networks.trim(), "", "and its networks");

        std::fs::write(source.join("infrabox/test/docker-compose.yml"), compose(3)).unwrap();
        let (executor, _, digest) = with_podman(dir.path(), &source).await;
        let (state, message, log) = run_logged(&executor, container_request(doc, &digest)).await;
        assert_eq!(state, EndState::Failure, "{message:?}\n{log}");
        let message = message.unwrap_or_default();
        assert!(message.contains("exited with 3") && message.contains("test_1 stopped first"), "{message}");
        assert_eq!(leftovers(&executor).await.trim(), "");
    }

    #[tokio::test]
    async fn without_an_engine_a_container_job_fails_saying_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let executor =
            ProcessExecutor::detect(dir.path().join("work"), &ProcessSettings::for_tests(Vec::new())).await.unwrap();
        let doc = r#"{"version": 1, "jobs": [{"type": "docker-image", "name": "img", "image": "x"}]}"#;
        let mut request = container_request(doc, "unused");
        request.spec.source = None;
        let (state, message) = run(&executor, request).await;
        assert_eq!(state, EndState::Error);
        assert!(message.unwrap_or_default().contains("needs a container engine (jobs.containers)"));
    }

    #[test]
    fn secrets_are_masked_where_a_read_holds_them_whole() {
        let secrets: Vec<&[u8]> = vec![b"hunter2", b"abcd"];
        use super::super::run::mask;
        assert_eq!(mask(b"pw=hunter2 and abcdabcd", &secrets).unwrap(), b"pw=*** and ******");
        assert_eq!(mask(b"nothing here", &secrets), None);
        assert_eq!(mask(b"hunter2", &[]), None);
    }
}
