//! What every executor shares, and what the leader knows of a run: the [`Event`]s a run
//! reports, how it is stopped ([`Stop`], [`RunHandle`]), what to run ([`RunRequest`]) and what
//! an executor can do ([`Capabilities`]). It names no executor; the executors and the leader
//! name it.
//!
//! A [`RunHandle`] stops a run on request (cancel: the run ends `killed`; drop: it was moved
//! away or refused, nothing is reported). What happens when the handle is dropped because the
//! replica stops leading depends on the executor: a process run is killed with its group (it
//! cannot outlive its leader, and the next leader reports it `lost`); a Kubernetes Job keeps
//! running in the Kubernetes cluster, and the next leader adopts it.

use atoll_api::jobs::LogStream;
use atoll_api::spec::JobSpec;
use atoll_raft_store::jobs::EndState;
use nix::sys::signal::Signal;
use nix::sys::signal::killpg;
use nix::unistd::Pid;
use tokio::sync::oneshot;

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
    /// The values of the job's secret variables, asked of the gateway just before the run (kept
    /// in memory only: never recorded in Raft, never logged).
    pub secrets: SecretValues,
}

/// Secret variables' values: `Debug` shows their names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValues(pub std::collections::BTreeMap<String, String>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SecretValues {
    /// The secret variables (a registry's password, delivered under `deployments[i].password`,
    /// is not one).
    pub fn variables(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().filter(|(key, _)| !key.contains('['))
    }

    /// The password the gateway gave for `deployments[i]` or `registries[i]`.
    pub fn registry_password(&self, list: &str, i: usize) -> Option<&str> {
        self.0.get(&atoll_api::spec::registry_password_key(list, i)).map(String::as_str)
    }

    /// The values to mask in a run's log ([`mask`]): those of [`MASKED_FROM`] bytes or more.
    pub fn masks(&self) -> Vec<&[u8]> {
        self.0.values().map(|v| v.as_bytes()).filter(|v| v.len() >= MASKED_FROM).collect()
    }
}

/// Secret values shorter than this are not masked (every `1` of a log would go).
pub const MASKED_FROM: usize = 4;

/// `bytes` with every whole occurrence of a secret value replaced by `***`; `None` when there is
/// none. A value split between two reads of a pipe is not found: masking is a guard against
/// a tool echoing its command line, not a promise about what a job prints.
pub fn mask(bytes: &[u8], secrets: &[&[u8]]) -> Option<Vec<u8>> {
    if secrets.is_empty() {
        return None;
    }
    let found = |at: usize| secrets.iter().find(|s| bytes[at..].starts_with(s)).map(|s| s.len());
    if !(0..bytes.len()).any(|at| found(at).is_some()) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match found(at) {
            Some(len) => {
                out.extend_from_slice(b"***");
                at += len;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    Some(out)
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

/// `PATH` of a run (and of an engine, when the replica has none).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A short, stable hash of `s` (8 hex digits, FNV-1a), to keep names made from it apart.
pub fn short_hash(s: &str) -> String {
    let hash = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{:08x}", hash as u32)
}

impl RunRequest {
    /// The values of the job's secret variables, asked of the gateway through `transfers` (it
    /// gives them only for an attempt bound to this cluster); every one named must come.
    pub async fn secret_values(&self, transfers: &crate::transfers::Transfers) -> Result<SecretValues, String> {
        let values = transfers.job_secrets(&self.job, self.attempt).await?;
        let missing: Vec<String> =
            self.spec.secret_uses().into_iter().map(|u| u.key).filter(|k| !values.contains_key(k)).collect();
        if !missing.is_empty() {
            return Err(format!("the gateway gave no value for {missing:?}"));
        }
        Ok(SecretValues(values))
    }

    /// What the run needs brought into the cluster's store before it starts.
    pub fn needs(&self) -> crate::transfers::Needs<'_> {
        crate::transfers::Needs {
            job: &self.job,
            attempt: self.attempt,
            source: self.spec.source.as_deref(),
            inputs: &self.inputs,
        }
    }
}

/// What an executor can do, which the leader asks instead of which executor it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// A run goes on when the replica that started it stops leading, and a new leader can
    /// follow it (a Kubernetes Job); otherwise it dies with its leader (a process run) and the
    /// next leader reports it `lost`.
    pub adopts_running: bool,
}

/// The marker between the kept head and tail of a log cut at its limit.
pub fn dropped_marker(dropped: u64, limit: u64) -> String {
    format!(
        "\n[atoll: {dropped} bytes of output dropped here: the log is over its limit of {limit} bytes \
         (jobs.log_limit_bytes); its first and last {} bytes are kept]\n",
        limit / 2
    )
}
