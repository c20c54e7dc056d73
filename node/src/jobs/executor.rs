//! The executor a cluster is configured with (`jobs.executor`): [`process`](super::process) or
//! [`kubernetes`](super::kubernetes). An executor starts a run and reports what happens to it as
//! [`Event`]s on the leader's channel; the types they share are in [`super::run`], and what each
//! can do is its [`Capabilities`].

use std::sync::Arc;

use tokio::sync::mpsc;

use super::kubernetes::KubernetesExecutor;
use super::process::ProcessExecutor;
use super::run::Capabilities;
use super::run::Event;
use super::run::RunHandle;
use super::run::RunRequest;

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
                    containers: config.containers.clone(),
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

    /// What this executor can do.
    pub fn capabilities(&self) -> Capabilities {
        match self {
            Executor::Process(_) => Capabilities { adopts_running: false },
            Executor::Kubernetes(_) => Capabilities { adopts_running: true },
        }
    }

    /// What this cluster runs, as its heartbeat says: placement sends a job only where it can
    /// run, and submit refuses a pipeline no matching cluster can run.
    pub fn advertised(&self) -> atoll_api::spec::Capabilities {
        use atoll_api::spec::JobKind;
        match self {
            Executor::Process(p) => {
                let mut runs = vec![JobKind::Command];
                let mut missing = Vec::new();
                match p.containers() {
                    Some(engine) => {
                        runs.extend([JobKind::DockerImage, JobKind::Docker]);
                        if engine.composes() {
                            runs.push(JobKind::DockerCompose);
                        } else {
                            missing.push("no compose program (jobs.containers.compose)".to_string());
                        }
                    }
                    None => missing.push("no container engine (jobs.containers)".to_string()),
                }
                // Registry logins are the engine's: an auth file of the run's.
                let registries = p.containers().is_some();
                atoll_api::spec::Capabilities { executor: "process".into(), runs, secrets: true, registries, missing }
            }
            Executor::Kubernetes(k) => {
                let mut runs = vec![JobKind::Command, JobKind::DockerImage];
                let mut missing = Vec::new();
                if k.builds_images() {
                    runs.push(JobKind::Docker);
                } else {
                    missing.push("no image builder (jobs.kubernetes.builder)".to_string());
                }
                missing.push("docker-compose needs the process executor with a compose program".to_string());
                atoll_api::spec::Capabilities {
                    executor: "kubernetes".into(),
                    runs,
                    secrets: true,
                    registries: false,
                    missing,
                }
            }
        }
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
