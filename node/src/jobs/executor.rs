//! What runs an attempt: the types every executor shares, and the executor a cluster is
//! configured with (`jobs.executor`).
//!
//! An executor starts a run and reports what happens to it as [`Event`]s on the leader's
//! channel. A [`RunHandle`] stops it on request (cancel: the run ends `killed`; drop: it was moved
//! away or refused, nothing is reported). What happens when the handle is dropped because the
//! replica stops leading depends on the executor: a process run is killed with its group (it
//! cannot outlive its leader, and the next leader reports it `lost`); a Kubernetes Job keeps
//! running in the Kubernetes cluster, and the next leader adopts it.

use std::sync::Arc;

use atoll_api::jobs::LogStream;
use atoll_api::spec::JobSpec;
use atoll_raft_store::jobs::EndState;
use nix::sys::signal::Signal;
use nix::sys::signal::killpg;
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use super::kubernetes::KubernetesExecutor;
use super::process::ProcessExecutor;

/// Something that happened to a run.
#[derive(Debug)]
pub enum Event {
    /// A numbered piece of its output (numbers start at 1 and are stable for the attempt: a
    /// piece sent again under its number is stored once).
    Log {
        job: String,
        attempt: u32,
        seq: u32,
        stream: LogStream,
        data: String,
        at_ms: i64,
    },
    /// The run's output is stored (sent before its `Done`).
    Output {
        job: String,
        attempt: u32,
        output: atoll_raft_store::jobs::OutputRecord,
    },
    Done {
        job: String,
        attempt: u32,
        state: EndState,
        exit_code: Option<i32>,
        message: Option<String>,
    },
}

impl Event {
    /// The run could not start or be followed: it ends in `error`.
    pub fn error(job: &str, attempt: u32, message: impl Into<String>) -> Self {
        Event::Done {
            job: job.to_string(),
            attempt,
            state: EndState::Error,
            exit_code: None,
            message: Some(message.into()),
        }
    }
}

/// Why a run is stopped from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Cancel,
    /// Moved away or refused: killed, nothing reported.
    Drop,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct RunRequest {
    pub job: String,
    pub pipeline: String,
    pub attempt: u32,
    pub spec: JobSpec,
    /// Parents' outputs to put under `$ATOLL_INPUTS/<parent>/` before the run starts.
    pub inputs: Vec<atoll_api::jobs::AssignedInput>,
    /// The attempt's secret (recorded with its start) its helpers show the cluster's replicas:
    /// a Kubernetes pod fetching its inputs and storing its output ([`crate::pods`]).
    pub secret: Option<String>,
}

/// A started run: stops it on request; when dropped, its task is aborted and, for a process run,
/// its process group killed.
#[derive(Debug)]
pub struct RunHandle {
    stop: Option<oneshot::Sender<Stop>>,
    /// The process group to kill when the handle is dropped before the run ended.
    kill_group: Option<std::sync::Arc<std::sync::atomic::AtomicI32>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunHandle {
    /// `kill_group` holds the run's process group once it started (0 before).
    pub fn new(
        stop: oneshot::Sender<Stop>,
        kill_group: Option<std::sync::Arc<std::sync::atomic::AtomicI32>>,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        Self { stop: Some(stop), kill_group, task }
    }

    pub fn stop(&mut self, why: Stop) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(why);
        }
    }
}

impl Drop for RunHandle {
    fn drop(&mut self) {
        if !self.task.is_finished() {
            self.task.abort();
            if let Some(pgid) =
                self.kill_group.as_ref().map(|g| g.load(std::sync::atomic::Ordering::SeqCst)).filter(|g| *g > 0)
            {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
    }
}

/// The executor of a cluster.
#[derive(Clone, Debug)]
pub enum Executor {
    Process(ProcessExecutor),
    Kubernetes(Arc<KubernetesExecutor>),
}

impl Executor {
    /// The executor `config` names; the process executor works under `work_root` and stores
    /// outputs in `outputs`; a Kubernetes pod's helpers trust the CA certificates in `ca`.
    pub async fn build(
        config: &crate::config::JobsConfig,
        work_root: std::path::PathBuf,
        outputs: atoll_store::Blobs,
        cluster: &atoll_api::ids::ClusterName,
        transfers: Arc<crate::transfers::Transfers>,
        ca: &std::path::Path,
        hidden: Vec<std::path::PathBuf>,
    ) -> anyhow::Result<Self> {
        Ok(match &config.executor {
            crate::config::ExecutorConfig::Process => {
                let settings = super::process::ProcessSettings {
                    sandbox: config.sandbox.clone(),
                    hidden,
                    log_limit: config.log_limit,
                };
                Executor::Process(
                    ProcessExecutor::detect(work_root, &settings)
                        .await
                        .map_err(anyhow::Error::msg)?
                        .with_outputs(outputs)
                        .with_transfers(transfers),
                )
            }
            crate::config::ExecutorConfig::Kubernetes(k) => {
                let ca_pem = std::fs::read_to_string(ca)
                    .map_err(|e| anyhow::anyhow!("reading the CA certificate {} for job pods: {e}", ca.display()))?;
                Executor::Kubernetes(Arc::new(
                    KubernetesExecutor::connect(k, cluster.as_str(), ca_pem, transfers, config.log_limit).await?,
                ))
            }
        })
    }

    /// Start a new run of the attempt.
    pub fn start(&self, request: RunRequest, events: mpsc::UnboundedSender<Event>) -> RunHandle {
        match self {
            Executor::Process(p) => p.start(request, events),
            Executor::Kubernetes(k) => k.start(request, events),
        }
    }

    /// Take over a run an earlier leader started; `None` when runs die with their leader (the
    /// process executor), so the attempt is lost.
    pub fn adopt(&self, request: RunRequest, events: mpsc::UnboundedSender<Event>) -> Option<RunHandle> {
        match self {
            Executor::Process(_) => None,
            Executor::Kubernetes(k) => Some(k.adopt(request, events)),
        }
    }

    /// What the run of an attempt is known by outside atoll (recorded in Raft with its start).
    pub fn handle_name(&self, job: &str, attempt: u32) -> Option<String> {
        match self {
            Executor::Process(_) => None,
            Executor::Kubernetes(_) => Some(super::kubernetes::job_name(job, attempt)),
        }
    }

    /// A new secret for an attempt's helpers, where runs have helpers outside the replica (a
    /// Kubernetes pod's); recorded with the start, kept when a run is adopted.
    pub fn new_secret(&self) -> Option<String> {
        match self {
            Executor::Process(_) => None,
            Executor::Kubernetes(_) => {
                use rand::RngCore;
                let mut bytes = [0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
            }
        }
    }

    /// Stop runs this cluster no longer holds (a leader that came back after its work moved
    /// away); a no-op where runs die with their leader.
    pub fn sweep(&self, replica: Arc<crate::raft::Replica>) {
        if let Executor::Kubernetes(k) = self {
            let k = k.clone();
            tokio::spawn(async move { k.sweep(replica).await });
        }
    }
}
