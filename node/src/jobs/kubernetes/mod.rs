//! The `kubernetes` executor: each attempt is a Kubernetes Job in the cluster's namespace.
//!
//! The Job's name is derived from the job id and attempt alone ([`job_name`]), and recorded in
//! Raft with the attempt's start, so a new leader finds the run of an earlier one and **adopts**
//! it (follows its status and logs) instead of starting it again. Creating a Job that exists
//! already is adoption too, so a leader that died between recording the start and creating the
//! Job loses nothing.
//!
//! The Job carries the labels `app.kubernetes.io/managed-by=atoll`, `atoll.dev/cluster`,
//! `atoll.dev/pipeline`, `atoll.dev/job` and `atoll.dev/attempt`, and the exact job id in the
//! annotation `atoll.dev/job-id`. It runs once (`backoffLimit: 0`, `restartPolicy: Never`: atoll
//! does the retrying), with `activeDeadlineSeconds` set to the job's timeout, the job's
//! environment plus `ATOLL_*`, `resources.limits` as container limits, and two `emptyDir`
//! volumes for `ATOLL_OUTPUT` (`/atoll/output`) and `ATOLL_INPUTS` (`/atoll/inputs`).
//! A `command` job runs `sh -c COMMAND` in `jobs.kubernetes.command_image`; a `docker-image` job
//! runs its image (with its command when it has one).
//!
//! Logs are followed line by line; a line's number is its piece number, so a new leader that
//! follows the log again from the start sends the same pieces under the same numbers and the
//! gateway keeps each once. When the Job ends, the end is reported and the Job deleted (its pods
//! with it). Cancel deletes it at once. A leader sweeps the Jobs of its cluster that no held
//! attempt names (work moved away while the cluster was cut off) and deletes them.

pub mod manifest;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use atoll_api::jobs::LogStream;
use atoll_raft_store::jobs::EndState;
use futures::AsyncBufReadExt;
use futures::TryStreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use kube::api::ListParams;
use kube::api::LogParams;
use kube::api::PostParams;
use manifest::INPUTS_HELPER;
use manifest::LABEL_CLUSTER;
use manifest::LABEL_MANAGED_BY;
use manifest::MAIN_CONTAINER;
use manifest::OUTPUT_HELPER;
use manifest::PodEnd;
use manifest::PodSetup;
use manifest::build_job;
use manifest::helper_failure;
pub use manifest::job_name;
use manifest::label_value;
use manifest::outcome;
use manifest::with_helpers;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use super::run::Event;
use super::run::RunHandle;
use super::run::RunRequest;
use super::run::Stop;
use crate::config::KubernetesConfig;
use crate::raft::Replica;

/// The label the Kubernetes Job controller puts on a Job's pods.
const POD_JOB_LABEL: &str = "batch.kubernetes.io/job-name";
/// How often a failed call to the Kubernetes API is tried before an unstarted run is `error`.
const CREATE_TRIES: u32 = 5;
/// How long the end of a log may take to arrive once the Job ended.
const LOG_DRAIN: Duration = Duration::from_secs(2);

/// Runs attempts as Kubernetes Jobs.
#[derive(Clone)]
pub struct KubernetesExecutor {
    client: kube::Client,
    namespace: String,
    setup: PodSetup,
    cluster: String,
    poll: Duration,
    /// Brings inputs from other clusters and sources into the cluster's store before a Job is
    /// created, and reads the output a pod recorded.
    transfers: Arc<crate::transfers::Transfers>,
    /// Most bytes of a Job's log kept ([`LineKeeper`]).
    log_limit: u64,
}

impl std::fmt::Debug for KubernetesExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesExecutor")
            .field("namespace", &self.namespace)
            .field("setup", &self.setup)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl KubernetesExecutor {
    /// A client for `config.api`, or (when absent) the in-cluster service account, else the
    /// local kubeconfig.
    pub async fn connect(
        config: &KubernetesConfig,
        cluster: &str,
        ca_pem: String,
        transfers: Arc<crate::transfers::Transfers>,
        log_limit: u64,
    ) -> anyhow::Result<Self> {
        let mut kube_config = match &config.api {
            Some(url) => kube::Config::new(url.parse()?),
            None => kube::Config::infer().await?,
        };
        kube_config.default_namespace.clone_from(&config.namespace);
        let client = kube::Client::try_from(kube_config)?;
        tracing::info!(api = config.api.as_deref().unwrap_or("(inferred)"), namespace = %config.namespace, "kubernetes executor: each attempt is a Kubernetes Job");
        Ok(Self {
            client,
            namespace: config.namespace.clone(),
            setup: PodSetup {
                command_image: config.command_image.clone(),
                helper_image: config.helper_image.clone(),
                pod_urls: config.pod_urls.clone(),
                ca_pem,
                allow_root: config.allow_root,
                builder: config.builder.clone(),
            },
            cluster: cluster.to_string(),
            poll: config.poll,
            transfers,
            log_limit,
        })
    }

    /// Whether `docker` jobs' images are built in their pods (`jobs.kubernetes.builder`).
    pub fn builds_images(&self) -> bool {
        self.setup.builder.is_some()
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets(&self) -> Api<k8s_openapi::api::core::v1::Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The attempt's Secret, for a job naming secrets: the values asked of the gateway (which
    /// gives them only for an attempt bound to this cluster), created before the Job refers to
    /// it. Already there (a retry, an adopted start): kept.
    async fn ensure_secret(&self, request: &RunRequest) -> Result<crate::jobs::run::SecretValues, String> {
        if request.spec.secret_env.is_empty() {
            return Ok(Default::default());
        }
        let values = request.secret_values(&self.transfers).await?;
        // Variables only: a registry's password is never a pod's (this executor takes no jobs
        // that name one).
        let variables = values.variables().map(|(k, v)| (k.clone(), v.clone())).collect();
        let secret = manifest::secret_for(request, &self.cluster, &variables);
        let name = job_name(&request.job, request.attempt);
        match self.secrets().create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(values),
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(values),
            Err(kube::Error::Api(status)) => Err(format!("Kubernetes refused the Secret {name}: {}", status.message)),
            Err(e) => Err(format!("creating the Secret {name}: {e}")),
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Create the attempt's Job and follow it.
    pub fn start(self: &Arc<Self>, request: RunRequest, events: mpsc::UnboundedSender<Event>) -> RunHandle {
        self.run(request, events, false)
    }

    /// Follow the Job an earlier leader created (creating it if it never was).
    pub fn adopt(self: &Arc<Self>, request: RunRequest, events: mpsc::UnboundedSender<Event>) -> RunHandle {
        self.run(request, events, true)
    }

    fn run(self: &Arc<Self>, request: RunRequest, events: mpsc::UnboundedSender<Event>, adopt: bool) -> RunHandle {
        let (stop_tx, stop_rx) = oneshot::channel::<Stop>();
        let stopped = Arc::new(AtomicBool::new(false));
        let name = job_name(&request.job, request.attempt);
        // Apart from the follower: the handle (and with it the follower) may go at once after a
        // stop, and the Job must still be deleted. A handle dropped without a stop (leadership
        // lost) leaves the Job running for the next leader.
        let stopper = {
            let (this, stopped, events) = (self.clone(), stopped.clone(), events.clone());
            let (job, attempt) = (request.job.clone(), request.attempt);
            async move {
                let Ok(why) = stop_rx.await else { return };
                stopped.store(true, Ordering::SeqCst);
                this.delete(&name).await;
                if why == Stop::Cancel {
                    let _ = events.send(Event::Done {
                        job,
                        attempt,
                        state: EndState::Killed,
                        exit_code: None,
                        message: Some("cancelled; its Kubernetes Job was deleted".to_string()),
                    });
                }
            }
        };
        tokio::spawn(stopper);
        let task = tokio::spawn(self.clone().follow(request, events, stopped, adopt));
        RunHandle::new(stop_tx, None, task)
    }

    /// Follow the Job to its end, then report the end and delete the Job. Says nothing once
    /// the run was stopped.
    async fn follow(
        self: Arc<Self>,
        request: RunRequest,
        events: mpsc::UnboundedSender<Event>,
        stopped: Arc<AtomicBool>,
        adopt: bool,
    ) {
        let (job, attempt) = (request.job.clone(), request.attempt);
        let name = job_name(&job, attempt);
        if !adopt {
            // Into this cluster's store first; the pod's inputs helper reads them from there.
            let delivered = self.transfers.bring_in(request.needs()).await;
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = delivered {
                let _ = events.send(Event::error(&job, attempt, e.to_string()));
                return;
            }
        }
        // What Kubernetes would refuse is said before anything is made.
        if let Err(message) = build_job(&request, &self.cluster, &self.setup) {
            let _ = events.send(Event::error(&job, attempt, message));
            return;
        }
        let mut secrets = Default::default();
        let ensured = match self.ensure_secret(&request).await {
            Ok(values) => {
                secrets = values;
                self.ensure(&request, &name, adopt).await
            }
            Err(e) => Err(format!("its secrets: {e}")),
        };
        if stopped.load(Ordering::SeqCst) {
            // Stopped while the Job was being created: make sure it goes.
            self.delete(&name).await;
            return;
        }
        if let Err(message) = ensured {
            // No Job refers to the Secret: it goes.
            self.delete_secret(&name).await;
            let _ = events.send(Event::error(&job, attempt, message));
            return;
        }
        let logs = tokio::spawn(self.clone().stream_logs(name.clone(), job.clone(), attempt, events.clone(), secrets));
        let _logs_guard = AbortLogs(&logs);
        let mut failures = 0u32;
        loop {
            tokio::time::sleep(self.poll).await;
            let read = self.jobs().get_opt(&name).await;
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            match read {
                Ok(Some(k8s_job)) => {
                    failures = 0;
                    if outcome(&k8s_job, None).is_none() {
                        continue; // still running: no need to read its pod
                    }
                    let pod = self.pod_end(&name).await;
                    if let Some(end) = outcome(&k8s_job, pod.exit_code) {
                        let (state, exit_code, message) = with_helpers(end, &pod);
                        // An output the pod stored is in the replicated record: before the end.
                        if let Some(output) = self.recorded_output(&job, attempt) {
                            self.hold_here(&output.digest).await;
                            let _ = events.send(Event::Output { job: job.clone(), attempt, output });
                        }
                        // The rest of the log first, then the end, then the Job goes.
                        let _ = tokio::time::timeout(LOG_DRAIN, async {
                            while !logs.is_finished() {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        })
                        .await;
                        // Spawned: the handle, and this task with it, go as soon as the end
                        // arrives.
                        let this = self.clone();
                        tokio::spawn(async move { this.delete(&name).await });
                        let _ = events.send(Event::Done { job, attempt, state, exit_code, message });
                        return;
                    }
                }
                Ok(None) => {
                    self.delete_secret(&name).await;
                    let _ = events.send(Event::error(
                        &job,
                        attempt,
                        format!("its Kubernetes Job {name} was deleted outside atoll"),
                    ));
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(job = %job, attempt, kube_job = %name, error = %e, "reading a Kubernetes Job failed; retrying");
                    }
                }
            }
        }
    }

    /// Make sure the Job exists: created (or, adopting, found or created).
    async fn ensure(&self, request: &RunRequest, name: &str, adopt: bool) -> Result<(), String> {
        let manifest = build_job(request, &self.cluster, &self.setup)?;
        let mut last = String::new();
        for try_no in 0..CREATE_TRIES {
            if try_no > 0 {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(try_no))).await;
            }
            if adopt {
                match self.jobs().get_opt(name).await {
                    Ok(Some(_)) => {
                        tracing::info!(job = %request.job, attempt = request.attempt, kube_job = %name, "adopted a running Kubernetes Job");
                        return Ok(());
                    }
                    Ok(None) => {
                        tracing::info!(job = %request.job, attempt = request.attempt, kube_job = %name, "the Kubernetes Job of a started attempt does not exist; creating it")
                    }
                    Err(e) => {
                        last = e.to_string();
                        continue;
                    }
                }
            }
            match self.jobs().create(&PostParams::default(), &manifest).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.is_already_exists() => return Ok(()),
                Err(kube::Error::Api(status)) if status.code / 100 == 4 => {
                    return Err(format!("Kubernetes refused the Job {name}: {}", status.message));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("creating the Kubernetes Job {name} failed {CREATE_TRIES} times: {last}"))
    }

    /// Delete the Job, and its Secret when it has one.
    async fn delete(&self, name: &str) {
        match self.jobs().delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => tracing::warn!(kube_job = %name, error = %e, "deleting a Kubernetes Job failed"),
        }
        self.delete_secret(name).await;
    }

    async fn delete_secret(&self, name: &str) {
        match self.secrets().delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => tracing::warn!(secret = %name, error = %e, "deleting an attempt's Kubernetes Secret failed"),
        }
    }

    /// The output recorded for the attempt (by whichever replica its pod stored it with).
    fn recorded_output(&self, job: &str, attempt: u32) -> Option<atoll_raft_store::jobs::OutputRecord> {
        let records = self.transfers.replica().jobs().ok()?;
        records.into_iter().find(|r| r.job == job && r.attempt == attempt)?.output
    }

    /// Copy a blob into this replica's store when the pod stored it with another replica: the
    /// leader serves the pulls of other clusters (pushes and relay uploads copy it themselves).
    async fn hold_here(&self, digest: &str) {
        let Ok(parsed) = digest.parse::<atoll_store::Digest>() else { return };
        if let Err(e) = self.transfers.ensure_local(&parsed).await {
            tracing::warn!(output = %digest, error = %e, "copying a pod's output to the leader failed; it is on a majority of the replicas");
        }
    }

    /// What the Job's (last) pod says of its end.
    async fn pod_end(&self, name: &str) -> PodEnd {
        let Ok(pods) = self.pods().list(&ListParams::default().labels(&format!("{POD_JOB_LABEL}={name}"))).await else {
            return PodEnd::default();
        };
        let Some(status) = pods.items.into_iter().rev().find_map(|pod| pod.status) else { return PodEnd::default() };
        let terminated = |statuses: &Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>, name: &str| {
            statuses.iter().flatten().find(|s| s.name == name).and_then(|s| s.state.as_ref()?.terminated.clone())
        };
        let failed =
            |name: &str| terminated(&status.init_container_statuses, name).and_then(|t| helper_failure(name, &t));
        PodEnd {
            exit_code: terminated(&status.container_statuses, MAIN_CONTAINER).map(|t| t.exit_code),
            inputs_failed: failed(INPUTS_HELPER),
            output_failed: failed(OUTPUT_HELPER),
            build_failed: terminated(&status.init_container_statuses, manifest::BUILD_CONTAINER)
                .and_then(|t| helper_failure(manifest::BUILD_CONTAINER, &t).map(|why| (t.exit_code, why))),
        }
    }

    /// Follow the log of the Job's pod once it started, one piece per line.
    async fn stream_logs(
        self: Arc<Self>,
        name: String,
        job: String,
        attempt: u32,
        events: mpsc::UnboundedSender<Event>,
        secrets: crate::jobs::run::SecretValues,
    ) {
        let masks = secrets.masks();
        let selector = format!("{POD_JOB_LABEL}={name}");
        let pod = loop {
            if let Ok(pods) = self.pods().list(&ListParams::default().labels(&selector)).await
                && let Some(pod) = pods.items.into_iter().find(|p| {
                    p.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|phase| phase != "Pending")
                })
                && let Some(pod_name) = pod.metadata.name
            {
                break pod_name;
            }
            tokio::time::sleep(self.poll).await;
        };
        let params = LogParams { follow: true, container: Some(MAIN_CONTAINER.to_string()), ..Default::default() };
        let reader = match self.pods().log_stream(&pod, &params).await {
            Ok(reader) => reader,
            Err(e) => {
                tracing::warn!(kube_job = %name, pod = %pod, error = %e, "following the log of a Kubernetes pod failed");
                return;
            }
        };
        let mut lines = reader.lines();
        let mut keeper = LineKeeper::new(self.log_limit);
        let send = |seq: u32, stream: LogStream, data: String| {
            let at_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos().div_euclid(1_000_000) as i64;
            events.send(Event::Log { job: job.clone(), attempt, seq, stream, data, at_ms }).is_ok()
        };
        while let Ok(Some(line)) = lines.try_next().await {
            let line = match crate::jobs::run::mask(line.as_bytes(), &masks) {
                Some(masked) => String::from_utf8_lossy(&masked).into_owned(),
                None => line,
            };
            if let Some((seq, data)) = keeper.line(format!("{line}\n"))
                && !send(seq, LogStream::Stdout, data)
            {
                return;
            }
        }
        for (seq, stream, data) in keeper.finish() {
            if !send(seq, stream, data) {
                return;
            }
        }
    }

    /// Delete this cluster's Jobs that no held attempt names (their work moved away).
    pub async fn sweep(&self, replica: Arc<Replica>) {
        let selector = format!("{LABEL_MANAGED_BY}=atoll,{LABEL_CLUSTER}={}", label_value(&self.cluster));
        let listed = match self.jobs().list(&ListParams::default().labels(&selector)).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(error = %e, "listing this cluster's Kubernetes Jobs failed; not sweeping");
                return;
            }
        };
        // Secrets listed before the held attempts are read, as Jobs are: a Secret made for an
        // attempt that starts after this read is not listed.
        let secrets = self.secrets().list(&ListParams::default().labels(&selector)).await;
        // Read after listing: a Job is created only after its attempt's start is applied, so
        // every listed Job of a held attempt is in this set.
        let held: HashSet<String> = match replica.jobs() {
            Ok(records) => records.into_iter().map(|r| job_name(&r.job, r.attempt)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the held jobs failed; not sweeping");
                return;
            }
        };
        for k8s_job in listed.items {
            let Some(name) = k8s_job.metadata.name else { continue };
            if !held.contains(&name) {
                tracing::info!(kube_job = %name, "deleting a Kubernetes Job this cluster no longer holds");
                self.delete(&name).await;
            }
        }
        // Secrets whose Job is gone (a leader that died between the two deletes).
        match secrets {
            Ok(secrets) => {
                for secret in secrets.items {
                    let Some(name) = secret.metadata.name else { continue };
                    if !held.contains(&name) {
                        self.delete_secret(&name).await;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing this cluster's Kubernetes Secrets failed; not sweeping them"),
        }
    }
}

/// A pod's log within the limit, line by line: the lines of the first half shipped as they
/// come, numbered by line; past it, the last half kept in memory and, once the log ended, the
/// marker and those lines. A new leader following the log again from its start numbers every
/// piece alike, so the gateway keeps each once.
struct LineKeeper {
    limit: u64,
    head: u64,
    tail_cap: u64,
    seen: u64,
    seq: u32,
    tail: std::collections::VecDeque<String>,
    tail_bytes: u64,
    dropped: u64,
}

impl LineKeeper {
    fn new(limit: u64) -> Self {
        let head = limit / 2;
        Self {
            limit,
            head,
            tail_cap: limit - head,
            seen: 0,
            seq: 0,
            tail: Default::default(),
            tail_bytes: 0,
            dropped: 0,
        }
    }

    /// A line of the log: what to ship now (its number and text), if anything.
    fn line(&mut self, mut line: String) -> Option<(u32, String)> {
        let size = line.len() as u64;
        if self.seen + size <= self.head {
            self.seen += size;
            self.seq += 1;
            return Some((self.seq, line));
        }
        self.seen += size;
        if size > self.tail_cap {
            // One line longer than the whole tail: its end is kept.
            let mut cut = line.len() - self.tail_cap as usize;
            while !line.is_char_boundary(cut) {
                cut += 1;
            }
            self.dropped += cut as u64;
            line = line.split_off(cut);
        }
        self.tail_bytes += line.len() as u64;
        self.tail.push_back(line);
        while self.tail_bytes > self.tail_cap {
            let Some(oldest) = self.tail.pop_front() else { break };
            self.tail_bytes -= oldest.len() as u64;
            self.dropped += oldest.len() as u64;
        }
        None
    }

    /// The log ended: the marker (when bytes were dropped) and the kept tail, numbered on.
    fn finish(mut self) -> Vec<(u32, LogStream, String)> {
        let mut pieces = Vec::new();
        if self.dropped > 0 {
            self.seq += 1;
            pieces.push((self.seq, LogStream::Marker, super::run::dropped_marker(self.dropped, self.limit)));
        }
        for line in std::mem::take(&mut self.tail) {
            self.seq += 1;
            pieces.push((self.seq, LogStream::Stdout, line));
        }
        pieces
    }
}

/// Aborts the log follower when the run's task ends or is aborted.
struct AbortLogs<'a>(&'a tokio::task::JoinHandle<()>);

impl Drop for AbortLogs<'_> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_log_over_its_limit_keeps_its_first_and_last_lines_with_a_marker_between() {
        let mut keeper = LineKeeper::new(100);
        let mut shipped = Vec::new();
        for i in 0..100 {
            if let Some(piece) = keeper.line(format!("line {i:03}\n")) {
                shipped.push(piece);
            }
        }
        // 9 bytes a line: 5 lines fit the 50-byte head, 5 the 50-byte tail.
        assert_eq!(shipped.len(), 5);
        assert_eq!(shipped[0], (1, "line 000\n".to_string()));
        let rest = keeper.finish();
        assert_eq!(rest.len(), 6, "{rest:?}");
        assert_eq!(rest[0].1, LogStream::Marker);
        assert!(rest[0].2.contains("810 bytes of output dropped"), "{}", rest[0].2);
        assert_eq!(rest[0].0, 6, "numbered on from the head");
        assert_eq!(rest[5], (11, LogStream::Stdout, "line 099\n".to_string()));
        // Under the limit: everything as it came, no marker.
        let mut small = LineKeeper::new(100);
        assert!(small.line("short\n".into()).is_some());
        assert!(small.finish().is_empty());
    }
}
