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

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
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
}

impl ProcessSettings {
    /// Defaults for tests: a sandbox where the machine allows it, the default log limit.
    #[cfg(test)]
    pub fn for_tests(hidden: Vec<PathBuf>) -> Self {
        let sandbox = crate::config::default_sandbox().expect("the default sandbox user exists here");
        Self { sandbox, hidden, log_limit: 16 * 1024 * 1024 }
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
        Ok(Self {
            work_root,
            isolation,
            sandbox,
            cgroups: Arc::new(cgroups),
            log_limit: settings.log_limit,
            outputs: None,
            transfers: None,
        })
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
        let task = if request.inputs.is_empty() && request.spec.source.is_none() && request.spec.secret_env.is_empty() {
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
                if prepared.is_ok() && !request.spec.secret_env.is_empty() {
                    prepared = match this.secrets(&request).await {
                        Ok(values) => {
                            request.secrets = values;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    };
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
        stop_rx: oneshot::Receiver<Stop>,
    ) {
        let (job, attempt) = (request.job.clone(), request.attempt);
        // The cgroup goes (removed) when this function returns, after the run was reaped.
        let Started { spawned: atoll_spawn::Spawned { mut child, stdout, stderr }, _cgroup } = match spawned {
            Ok(started) => started,
            Err(message) => {
                let _ = events.send(Event::error(&job, attempt, message));
                return;
            }
        };
        let timeout = Duration::from_secs(request.spec.timeout_s.max(1));
        let outputs = self.outputs.clone();
        let transfers = self.transfers.clone();
        let work_dir = dir.clone();
        {
            let keeper = LogKeeper::new(&job, attempt, &events, &dir, self.log_limit);
            let logs = pump(Some(stdout), Some(stderr), keeper);
            tokio::pin!(logs);
            let mut stop_rx = stop_rx;
            let mut logs_done = false;
            let ended = loop {
                tokio::select! {
                    exited = child.exited() => break Ended::Exited(exited),
                    () = tokio::time::sleep(timeout) => break Ended::TimedOut,
                    why = &mut stop_rx => match why {
                        Ok(why) => break Ended::Stopped(why),
                        // The handle is gone: the run is being torn down.
                        Err(_) => break Ended::Stopped(Stop::Drop),
                    },
                    () = &mut logs, if !logs_done => logs_done = true,
                }
            };
            // Whatever ended it, nothing of the group survives the run (killed before the first
            // process is reaped, while the group id is still surely the run's).
            let _ = child.kill_group(nix::libc::SIGKILL);
            let status = child.wait().await.ok();
            if !logs_done {
                // Pipes close once every process holding them is gone; do not wait forever.
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut logs).await;
            }
            let (mut state, exit_code, mut message) = match ended {
                Ended::Stopped(Stop::Drop) => return,
                Ended::Stopped(Stop::Cancel) => (EndState::Killed, None, Some("cancelled".to_string())),
                Ended::TimedOut => (
                    EndState::Failure,
                    None,
                    Some(format!("timed out after {} s; the process group was killed", timeout.as_secs())),
                ),
                Ended::Exited(Err(e)) => (EndState::Error, None, Some(format!("waiting for the command failed: {e}"))),
                Ended::Exited(Ok(_)) => match status.and_then(|s| s.code()) {
                    Some(0) => (EndState::Finished, Some(0), None),
                    Some(code) => (EndState::Failure, Some(code), Some(format!("exited with {code}"))),
                    None => (EndState::Failure, None, Some("killed by a signal".to_string())),
                },
            };
            // The output of every ended run counts (a failed job's output matters too).
            if let Some(blobs) = &outputs {
                let mut stored = store_output(blobs, &work_dir).await;
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
        if request.spec.source.is_some() || request.inputs.iter().any(|i| i.mode != InputMode::Local) {
            let transfers = self.transfers.as_ref().ok_or(
                "an input from another cluster or a source cannot be fetched: this replica has no gateway link",
            )?;
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
        let values = transfers.job_secrets(&request.job, request.attempt).await?;
        let missing: Vec<&String> = request.spec.secret_env.keys().filter(|k| !values.contains_key(*k)).collect();
        if !missing.is_empty() {
            return Err(format!("the gateway gave no value for {missing:?}"));
        }
        Ok(super::run::SecretValues(values))
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
        for (key, value) in request.spec.environment.iter().chain(&request.secrets.0) {
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
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(fail)?;
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
}

impl<'a> LogKeeper<'a> {
    fn new(job: &'a str, attempt: u32, events: &'a mpsc::UnboundedSender<Event>, dir: &'a Path, limit: u64) -> Self {
        let head = limit / 2;
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

    async fn take(&mut self, stream: LogStream, mut bytes: &[u8]) {
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
    mut keeper: LogKeeper<'_>,
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
    keeper.finish().await;
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
}
