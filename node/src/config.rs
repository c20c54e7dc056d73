//! `atoll agent` configuration: the YAML file as written, and the checked runtime form.
//!
//! Every key is documented here and in `docs/configuration.md`. Relative paths are resolved
//! against the config file's directory. Environment overrides: see `atoll_api::config_file`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use atoll_api::config_file::ConfigError;
use atoll_api::config_file::resolve;
use atoll_api::ids::ClusterName;
use atoll_api::ids::Label;
use atoll_api::tls::TlsFiles;
use serde::Deserialize;
use serde::Serialize;

/// The agent config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// The cluster this replica belongs to.
    pub cluster: ClusterFile,
    /// This replica.
    pub node: NodeFile,
    /// `host:port` the mTLS listener binds (Raft RPCs and the replica API).
    pub listen: String,
    /// `host:port` peers and tools use to reach this replica (the advertised endpoint);
    /// defaults to `listen`.
    #[serde(default)]
    pub host: Option<String>,
    /// `host:port` of the plain-HTTP ops listener (`/healthz`, `/readyz`, `/metrics` and nothing
    /// else); no ops listener when absent.
    #[serde(default)]
    pub ops_listen: Option<String>,
    /// The initial voters, identical on every replica: the group is bootstrapped with exactly
    /// this set. Replicas added later join through `atoll raft add` and need not be listed.
    pub peers: Vec<PeerFile>,
    /// Raft timing and log compaction.
    #[serde(default)]
    pub raft: RaftFile,
    /// Certificate, key and CA files (PEM).
    pub tls: TlsFile,
    /// How long an orderly shutdown (hand over leadership, drain requests, flush) may take, in
    /// milliseconds.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Joining a mesh through a gateway; absent for a standalone cluster.
    #[serde(default)]
    pub gateway: Option<GatewayFile>,
    /// Network behaviour.
    #[serde(default)]
    pub network: NetworkFile,
    /// How the leader runs the jobs the gateway binds to this cluster.
    #[serde(default)]
    pub jobs: JobsFile,
    /// Where job outputs are stored: one of `local` (default: `<data_dir>/blobs`, fsync'd),
    /// `s3`, `gcs`, `azure` (see `atoll_store::config`).
    #[serde(default)]
    pub storage: atoll_store::StorageFile,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobsFile {
    /// Most runs the leader has going at once; further attempts are recorded and start, oldest
    /// first, as runs end.
    #[serde(default = "default_max_running")]
    pub max_running: usize,
    /// `process` (each attempt a process tree on the leader's machine) or `kubernetes` (each
    /// attempt a Kubernetes Job).
    #[serde(default = "default_executor")]
    pub executor: String,
    /// Settings of the `kubernetes` executor.
    #[serde(default)]
    pub kubernetes: Option<KubernetesFile>,
    /// Most bytes per second one transfer of an output to or from another cluster may move
    /// (0: as fast as the path allows).
    #[serde(default)]
    pub transfer_limit_bytes_per_s: u64,
    /// How the `process` executor fences a job off from its replica.
    #[serde(default)]
    pub sandbox: SandboxFile,
    /// Most bytes of a run's output (stdout and stderr together) kept in its log; past it the
    /// first half and the last half are kept, with a marker saying how many bytes were dropped
    /// between them.
    #[serde(default = "default_log_limit_bytes")]
    pub log_limit_bytes: u64,
    /// A container engine on the host, for `docker`, `docker-image` and `docker-compose` jobs on
    /// the `process` executor; without it those jobs are not placed here.
    #[serde(default)]
    pub containers: Option<ContainersFile>,
}

/// `jobs.containers`: the engine and its options, passed as they are (an operator's podman or
/// docker works as configured).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContainersFile {
    /// The engine's program: `podman` or `docker`, by name (on PATH) or path.
    pub engine: String,
    /// Arguments before every subcommand (podman: `[--runtime, runc]`, storage options).
    #[serde(default)]
    pub engine_args: Vec<String>,
    /// Added to every image build (`[--ulimit, nofile=1024:1024]`, `[--network, none]`).
    #[serde(default)]
    pub build_args: Vec<String>,
    /// Added to every container run.
    #[serde(default)]
    pub run_args: Vec<String>,
    /// Added to every command that talks to a registry for a job's `registries` or
    /// `deployments`: pull, push, and the build of a job that names registries
    /// (`[--cert-dir, /etc/atoll/registry-certs]`, `[--tls-verify=false]` for a plain-HTTP one).
    #[serde(default)]
    pub registry_args: Vec<String>,
    /// The compose program and its first arguments (`[podman-compose]`, `[docker, compose]`);
    /// without it docker-compose jobs are not placed here.
    #[serde(default)]
    pub compose: Vec<String>,
}

/// `jobs.sandbox`: what a `process` job can see and who it runs as.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxFile {
    /// `auto` (a sandbox where the machine allows one, a warning where it does not), `required`
    /// (the replica refuses to start without one) or `off` (jobs run as the replica's user and
    /// see its whole file system; for trusted jobs only).
    #[serde(default = "default_sandbox_mode")]
    pub mode: String,
    /// The user jobs run as when the replica runs as root: a name or `uid:gid`. Never root.
    #[serde(default = "default_sandbox_user")]
    pub user: String,
    /// System paths a job sees, read-only (set-id bits off); missing ones are left out.
    #[serde(default = "default_system_paths")]
    pub system_paths: Vec<PathBuf>,
    /// Niceness of jobs (0 to 19): they run at lower CPU priority than the replica.
    #[serde(default = "default_nice")]
    pub nice: i32,
    /// Paths every job may write, bound at the same place (a cache shared by jobs, say);
    /// none by default. Each must exist when a job starts.
    #[serde(default)]
    pub writable_paths: Vec<PathBuf>,
}

impl Default for SandboxFile {
    fn default() -> Self {
        Self {
            mode: default_sandbox_mode(),
            user: default_sandbox_user(),
            system_paths: default_system_paths(),
            nice: default_nice(),
            writable_paths: Vec::new(),
        }
    }
}

fn default_sandbox_mode() -> String {
    "auto".into()
}

fn default_sandbox_user() -> String {
    "nobody".into()
}

fn default_system_paths() -> Vec<PathBuf> {
    // /run/systemd/resolve: where /etc/resolv.conf points on hosts that resolve names locally.
    ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/run/systemd/resolve"]
        .into_iter()
        .map(PathBuf::from)
        .collect()
}

fn default_nice() -> i32 {
    10
}

fn default_log_limit_bytes() -> u64 {
    16 * 1024 * 1024
}

impl Default for JobsFile {
    fn default() -> Self {
        Self {
            max_running: default_max_running(),
            executor: default_executor(),
            kubernetes: None,
            transfer_limit_bytes_per_s: 0,
            sandbox: SandboxFile::default(),
            log_limit_bytes: default_log_limit_bytes(),
            containers: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesFile {
    /// URL of the Kubernetes API server; when absent, the in-cluster service account (a replica
    /// running in a pod), else the local kubeconfig.
    #[serde(default)]
    pub api: Option<String>,
    /// Namespace of the Jobs.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Image that runs `command` jobs (`sh -c COMMAND`).
    #[serde(default = "default_command_image")]
    pub command_image: String,
    /// How often a running Job's status is read, in milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// `ip:port` of the pod listener (TLS, no client certificate): a Job's pod fetches its
    /// inputs and stores its output there.
    #[serde(default)]
    pub pod_listen: Option<String>,
    /// URLs by which pods reach the pod listeners of the cluster's replicas (a Service in front
    /// of all of them, or each); default: this replica's `host` with the `pod_listen` port.
    #[serde(default)]
    pub pod_urls: Vec<String>,
    /// Image of the pod's helpers (inputs in, output out); it holds the `atoll` binary.
    #[serde(default = "default_helper_image")]
    pub helper_image: String,
    /// Let job containers run as root (images that need it); by default every container runs
    /// as an unprivileged user under the restricted security context.
    #[serde(default)]
    pub allow_root: bool,
    /// A daemonless image builder in the pod, for `docker` jobs (absent: they do not run here).
    #[serde(default)]
    pub builder: Option<BuilderFile>,
}

/// `jobs.kubernetes.builder`: the container that builds a `docker` job's Dockerfile in its pod
/// and pushes the image to the cluster's registry, which then runs it. Its command line is the
/// builder's (`--dockerfile`, `--context`, `--destination`, `--build-arg`, `--target`): kaniko's
/// executor, or a builder taking the same flags.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuilderFile {
    /// The builder's image (kaniko's executor, say).
    pub image: String,
    /// Where built images go: `registry.example:5000/atoll` (an image is
    /// `<registry>/<job>:<pipeline>-<attempt>`); the cluster's nodes pull from it.
    pub registry: String,
    /// The builder's program in its image.
    #[serde(default = "default_builder_command")]
    pub command: Vec<String>,
    /// More arguments for every build (`--cache=true`, `--insecure`).
    #[serde(default)]
    pub args: Vec<String>,
    /// A Secret (docker `config.json` under the key `config.json`) mounted where the builder
    /// reads registry credentials (`/kaniko/.docker`).
    #[serde(default)]
    pub push_secret: Option<String>,
}

fn default_builder_command() -> Vec<String> {
    vec!["/kaniko/executor".to_string()]
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// `host:port` of the gateway: one replica (the same as `addrs` with one entry).
    #[serde(default)]
    pub addr: Option<String>,
    /// `host:port` of every gateway replica, tried in this order: the replica uses one and moves
    /// to the next when it fails. Each heartbeat answer then lists the replicas alive now, which
    /// replace these (these stay as a last resort). Give `addr` or `addrs`, not both.
    #[serde(default)]
    pub addrs: Option<Vec<String>>,
    /// A join token (`atoll token create --cluster ...`), used once, when `tls.cert` does not
    /// exist yet: the replica then makes its key, sends a CSR, and writes the `tls` files.
    #[serde(default)]
    pub join_token: Option<String>,
    /// A file holding the join token (a mounted secret); takes the place of `join_token`.
    #[serde(default)]
    pub join_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    /// Drop every connection from replicas of these clusters, as a firewall would: for
    /// simulating cut links. The annotation `atoll.io/refuse-inbound-from` (comma-separated
    /// names) adds to it at run time.
    #[serde(default)]
    pub refuse_inbound_from: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Cluster name (`[a-z0-9-]`, up to 63 characters); part of every replica's identity.
    pub name: String,
    /// Labels that job selectors match against (e.g. `[aws, default]`).
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// This replica's id in its cluster (1 or more). Kept for life: the data directory remembers
    /// it, and a wiped replica rejoins under a new id. Give `id` or `id_from_hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Take the id from the machine's host name: one more than the number after its last `-`
    /// (`atoll-agent-0` is 1, `atoll-agent-2` is 3), as a StatefulSet names its pods.
    #[serde(default)]
    pub id_from_hostname: bool,
    /// With `id_from_hostname`: ids for host names that no longer take their ordinal's (a pod
    /// whose volume was lost rejoins under a new id: `{atoll-agent-1: 4}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hostname_ids: BTreeMap<String, u64>,
    /// Where the replica keeps its Raft log, state and snapshots.
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerFile {
    /// The peer's node id.
    pub id: u64,
    /// The peer's advertised `host:port`.
    pub addr: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RaftFile {
    /// How often the leader sends heartbeats, in milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A follower that hears no leader waits the leader's lease (`election_timeout_max_ms`) plus a
    /// random time between these two bounds before it campaigns, in milliseconds.
    #[serde(default = "default_election_min_ms")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "default_election_max_ms")]
    pub election_timeout_max_ms: u64,
    /// Deadline of a replication RPC that carries entries, in milliseconds (heartbeats keep the
    /// heartbeat interval as deadline). Sized for a follower's disk sync under load.
    #[serde(default = "default_append_timeout_ms")]
    pub append_timeout_ms: u64,
    /// Deadline of a snapshot transfer, in milliseconds.
    #[serde(default = "default_snapshot_timeout_ms")]
    pub snapshot_timeout_ms: u64,
    /// Build a snapshot once this many entries were applied since the last one.
    #[serde(default = "default_snapshot_after_entries")]
    pub snapshot_after_entries: u64,
    /// Entries kept in the log after a snapshot (lagging followers catch up from them instead of
    /// receiving the whole snapshot).
    #[serde(default = "default_keep_entries")]
    pub keep_entries_after_snapshot: u64,
    /// Deadline of a client write (commit and apply), in milliseconds; past it the outcome is
    /// reported unknown.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// Take over at once when the leader's process is seen to die (its connections close and a
    /// reconnect is refused), instead of waiting out its lease.
    #[serde(default = "default_true")]
    pub fast_failover: bool,
}

impl Default for RaftFile {
    fn default() -> Self {
        Self {
            heartbeat_ms: default_heartbeat_ms(),
            election_timeout_min_ms: default_election_min_ms(),
            election_timeout_max_ms: default_election_max_ms(),
            append_timeout_ms: default_append_timeout_ms(),
            snapshot_timeout_ms: default_snapshot_timeout_ms(),
            snapshot_after_entries: default_snapshot_after_entries(),
            keep_entries_after_snapshot: default_keep_entries(),
            write_timeout_ms: default_write_timeout_ms(),
            fast_failover: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// The mesh CA certificate(s) this replica trusts.
    pub ca: PathBuf,
    /// This replica's certificate (SAN URI `spiffe://atoll/cluster/<name>/node/<id>`).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// DNS names and IP addresses the certificate asks for besides the host of `host` and the
    /// IP address of `listen` (other names clients reach this replica at), so that standard
    /// HTTPS clients accept it. Used when enrolling and renewing.
    #[serde(default)]
    pub names: Vec<String>,
}

fn default_heartbeat_ms() -> u64 {
    RaftTiming::DEFAULT.heartbeat.as_millis() as u64
}
fn default_election_min_ms() -> u64 {
    RaftTiming::DEFAULT.election_min.as_millis() as u64
}
fn default_election_max_ms() -> u64 {
    RaftTiming::DEFAULT.election_max.as_millis() as u64
}
fn default_append_timeout_ms() -> u64 {
    2_000
}
fn default_snapshot_timeout_ms() -> u64 {
    120_000
}
fn default_snapshot_after_entries() -> u64 {
    5_000
}
fn default_keep_entries() -> u64 {
    1_000
}
fn default_write_timeout_ms() -> u64 {
    5_000
}
fn default_shutdown_grace_ms() -> u64 {
    10_000
}
fn default_true() -> bool {
    true
}
fn default_max_running() -> usize {
    32
}
fn default_executor() -> String {
    "process".to_string()
}
fn default_namespace() -> String {
    "default".to_string()
}
fn default_command_image() -> String {
    "busybox:1.36".to_string()
}
fn default_poll_ms() -> u64 {
    1_000
}
fn default_helper_image() -> String {
    format!("atoll:{}", env!("CARGO_PKG_VERSION"))
}

/// How a cluster runs its jobs, checked.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    pub max_running: usize,
    pub executor: ExecutorConfig,
    /// Bytes per second per transfer; `None`: unlimited.
    pub transfer_limit: Option<u64>,
    pub sandbox: SandboxConfig,
    /// Most bytes of a run's log kept (head and tail halves, a marker between).
    pub log_limit: u64,
    /// The process executor's container engine (`jobs.containers`).
    pub containers: Option<ContainersConfig>,
}

/// `jobs.sandbox`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    /// The user jobs run as when the replica is root: `(uid, gid)`.
    pub user: (u32, u32),
    pub system_paths: Vec<PathBuf>,
    pub nice: i32,
    pub writable_paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    Auto,
    Required,
    Off,
}

fn check_sandbox(
    file: SandboxFile,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<SandboxConfig, ConfigError> {
    let mode = match file.mode.as_str() {
        "auto" => SandboxMode::Auto,
        "required" => SandboxMode::Required,
        "off" => SandboxMode::Off,
        other => {
            return Err(invalid(
                "jobs.sandbox.mode",
                format!("unknown mode {:?} (one of: auto, required, off)", other.escape_debug().to_string()),
            ));
        }
    };
    let user = resolve_user(&file.user).map_err(|e| invalid("jobs.sandbox.user", e))?;
    if user.0 == 0 {
        return Err(invalid("jobs.sandbox.user", format!("{:?} is root; jobs never run as root", file.user)));
    }
    for (i, path) in file.system_paths.iter().enumerate() {
        if !path.is_absolute() || path == Path::new("/") {
            return Err(invalid(
                &format!("jobs.sandbox.system_paths[{i}]"),
                format!("{} is not an absolute path below /", path.display()),
            ));
        }
    }
    for (i, path) in file.writable_paths.iter().enumerate() {
        if !path.is_absolute() || path == Path::new("/") {
            return Err(invalid(
                &format!("jobs.sandbox.writable_paths[{i}]"),
                format!("{} is not an absolute path below /", path.display()),
            ));
        }
    }
    if !(0..=19).contains(&file.nice) {
        return Err(invalid("jobs.sandbox.nice", format!("{} is not a niceness from 0 to 19", file.nice)));
    }
    Ok(SandboxConfig {
        mode,
        user,
        system_paths: file.system_paths,
        nice: file.nice,
        writable_paths: file.writable_paths,
    })
}

/// The sandbox of the defaults (tests, and the process executor built without a config file).
pub fn default_sandbox() -> Result<SandboxConfig, ConfigError> {
    check_sandbox(SandboxFile::default(), &|key, message| ConfigError::invalid("(defaults)", key, message))
}

/// `name` or `uid:gid` as ids.
fn resolve_user(user: &str) -> Result<(u32, u32), String> {
    if let Some((uid, gid)) = user.split_once(':') {
        let parse = |s: &str| s.parse::<u32>().map_err(|_| format!("{user:?} is not uid:gid (two numbers)"));
        return Ok((parse(uid)?, parse(gid)?));
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(found)) => Ok((found.uid.as_raw(), found.gid.as_raw())),
        Ok(None) => {
            Err(format!("no user {:?} on this machine (give a name or uid:gid)", user.escape_debug().to_string()))
        }
        Err(e) => Err(format!("looking up the user {:?}: {e}", user.escape_debug().to_string())),
    }
}

#[derive(Debug, Clone)]
pub enum ExecutorConfig {
    Process,
    Kubernetes(Box<KubernetesConfig>),
}

#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    pub api: Option<String>,
    pub namespace: String,
    pub command_image: String,
    pub poll: Duration,
    /// Where the pod listener binds.
    pub pod_listen: SocketAddr,
    /// How pods reach the replicas' pod listeners, tried in order.
    pub pod_urls: Vec<String>,
    pub helper_image: String,
    pub allow_root: bool,
    pub builder: Option<BuilderConfig>,
}

/// `jobs.kubernetes.builder`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderConfig {
    pub image: String,
    pub registry: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub push_secret: Option<String>,
}

fn check_jobs(
    file: JobsFile,
    advertise: &str,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<JobsConfig, ConfigError> {
    if file.max_running == 0 {
        return Err(invalid("jobs.max_running", "must be 1 or more".into()));
    }
    if file.log_limit_bytes < 4096 {
        return Err(invalid(
            "jobs.log_limit_bytes",
            format!("{} is below the least limit, 4096", file.log_limit_bytes),
        ));
    }
    let sandbox = check_sandbox(file.sandbox, invalid)?;
    let containers = match file.containers {
        Some(_) if file.executor != "process" => {
            return Err(invalid(
                "jobs.containers",
                format!(
                    "applies to the process executor (executor {:?} runs containers itself); remove it",
                    file.executor
                ),
            ));
        }
        Some(c) => Some(check_containers(c, invalid)?),
        None => None,
    };
    let executor = match (file.executor.as_str(), file.kubernetes) {
        ("process", None) => ExecutorConfig::Process,
        ("process", Some(_)) => {
            return Err(invalid(
                "jobs.kubernetes",
                "applies to the kubernetes executor; set jobs.executor: kubernetes, or remove it".into(),
            ));
        }
        ("kubernetes", k) => {
            let Some(k) = k else {
                return Err(invalid(
                    "jobs.kubernetes",
                    "required with executor kubernetes (at least pod_listen: where job pods fetch their inputs and store their outputs)".into(),
                ));
            };
            if let Some(api) = &k.api {
                match reqwest::Url::parse(api) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
                    _ => {
                        return Err(invalid(
                            "jobs.kubernetes.api",
                            format!("{api:?} is not an http:// or https:// URL with a host"),
                        ));
                    }
                }
            }
            let ns = &k.namespace;
            let dns_label = !ns.is_empty()
                && ns.len() <= 63
                && ns.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !ns.starts_with('-')
                && !ns.ends_with('-');
            if !dns_label {
                return Err(invalid(
                    "jobs.kubernetes.namespace",
                    format!("{ns:?} is not a namespace name (lowercase letters, digits and -, up to 63)"),
                ));
            }
            if k.command_image.trim().is_empty() || k.command_image.chars().any(char::is_whitespace) {
                return Err(invalid("jobs.kubernetes.command_image", format!("{:?} is not an image", k.command_image)));
            }
            if k.poll_ms == 0 {
                return Err(invalid("jobs.kubernetes.poll_ms", "must be 1 or more".into()));
            }
            if k.helper_image.trim().is_empty() || k.helper_image.chars().any(char::is_whitespace) {
                return Err(invalid("jobs.kubernetes.helper_image", format!("{:?} is not an image", k.helper_image)));
            }
            let Some(pod_listen) = &k.pod_listen else {
                return Err(invalid(
                    "jobs.kubernetes.pod_listen",
                    "required with executor kubernetes (where job pods fetch their inputs and store their outputs)"
                        .into(),
                ));
            };
            let pod_listen: SocketAddr = pod_listen.parse().map_err(|e| {
                invalid("jobs.kubernetes.pod_listen", format!("{pod_listen:?} is not an ip:port address: {e}"))
            })?;
            let mut pod_urls = k.pod_urls;
            for (i, url) in pod_urls.iter().enumerate() {
                match reqwest::Url::parse(url) {
                    Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
                    _ => {
                        return Err(invalid(
                            &format!("jobs.kubernetes.pod_urls[{i}]"),
                            format!("{url:?} is not an https:// URL with a host"),
                        ));
                    }
                }
            }
            if pod_urls.is_empty() {
                let host = advertise.rsplit_once(':').map_or(advertise, |(host, _)| host);
                pod_urls.push(format!("https://{host}:{}", pod_listen.port()));
            }
            ExecutorConfig::Kubernetes(Box::new(KubernetesConfig {
                api: k.api,
                namespace: k.namespace,
                command_image: k.command_image,
                poll: Duration::from_millis(k.poll_ms),
                pod_listen,
                pod_urls,
                helper_image: k.helper_image,
                allow_root: k.allow_root,
                builder: k.builder.map(|b| check_builder(b, invalid)).transpose()?,
            }))
        }
        (other, _) => {
            return Err(invalid("jobs.executor", format!("unknown executor {other:?} (one of: process, kubernetes)")));
        }
    };
    Ok(JobsConfig {
        max_running: file.max_running,
        executor,
        transfer_limit: (file.transfer_limit_bytes_per_s > 0).then_some(file.transfer_limit_bytes_per_s),
        sandbox,
        log_limit: file.log_limit_bytes,
        containers,
    })
}

fn check_builder(
    file: BuilderFile,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<BuilderConfig, ConfigError> {
    if file.image.trim().is_empty() || file.image.chars().any(char::is_whitespace) {
        return Err(invalid("jobs.kubernetes.builder.image", format!("{:?} is not an image", file.image)));
    }
    let registry = file.registry.trim_end_matches('/');
    if registry.is_empty()
        || registry.contains("://")
        || registry.chars().any(|c| c.is_whitespace() || c.is_uppercase())
    {
        return Err(invalid(
            "jobs.kubernetes.builder.registry",
            format!("{:?} is not a registry and path (host[:port]/path, lowercase, no scheme)", file.registry),
        ));
    }
    if file.command.is_empty() || file.command.iter().any(String::is_empty) {
        return Err(invalid("jobs.kubernetes.builder.command", "needs the builder's program".into()));
    }
    if let Some(i) = file.args.iter().position(String::is_empty) {
        return Err(invalid(&format!("jobs.kubernetes.builder.args[{i}]"), "an argument cannot be empty".into()));
    }
    if let Some(name) = &file.push_secret {
        let dns = !name.is_empty()
            && name.len() <= 253
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !dns {
            return Err(invalid("jobs.kubernetes.builder.push_secret", format!("{name:?} is not a Secret's name")));
        }
    }
    Ok(BuilderConfig {
        image: file.image,
        registry: registry.to_string(),
        command: file.command,
        args: file.args,
        push_secret: file.push_secret,
    })
}

fn check_containers(
    file: ContainersFile,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<ContainersConfig, ConfigError> {
    let word = |key: &str, value: &str| {
        if value.trim().is_empty() || value.chars().any(char::is_whitespace) {
            Err(invalid(key, format!("{value:?} is not a program (a name on PATH or a path, no spaces)")))
        } else {
            Ok(())
        }
    };
    word("jobs.containers.engine", &file.engine)?;
    if let Some(program) = file.compose.first() {
        word("jobs.containers.compose[0]", program)?;
    }
    for (key, list) in [
        ("engine_args", &file.engine_args),
        ("build_args", &file.build_args),
        ("run_args", &file.run_args),
        ("registry_args", &file.registry_args),
        ("compose", &file.compose),
    ] {
        if let Some(i) = list.iter().position(|a| a.is_empty() || a.contains('\0')) {
            return Err(invalid(&format!("jobs.containers.{key}[{i}]"), "an argument cannot be empty".into()));
        }
    }
    Ok(ContainersConfig {
        program: file.engine,
        engine_args: file.engine_args,
        build_args: file.build_args,
        run_args: file.run_args,
        registry_args: file.registry_args,
        compose: file.compose,
    })
}

/// `jobs.containers`, checked: the process executor's container engine ([`crate::jobs::containers`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainersConfig {
    /// `podman` or `docker` (a name on PATH or a path).
    pub program: String,
    /// Before every subcommand (podman: `--runtime runc`, storage options).
    pub engine_args: Vec<String>,
    /// Added to every `build`.
    pub build_args: Vec<String>,
    /// Added to every `run`.
    pub run_args: Vec<String>,
    /// Added to `pull`, `push`, and the `build` of a job that names registries.
    pub registry_args: Vec<String>,
    /// The compose program and its first arguments (`[podman-compose]`, `[docker, compose]`);
    /// empty: docker-compose jobs are not run.
    pub compose: Vec<String>,
}

/// Raft timing, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
}

impl RaftTiming {
    /// 20 ms heartbeats, 60-120 ms election timeout: a follower notices a silent leader after
    /// 180-240 ms. See `docs/performance.md` for what each setting gives on this hardware.
    pub const DEFAULT: RaftTiming = RaftTiming {
        heartbeat: Duration::from_millis(20),
        election_min: Duration::from_millis(60),
        election_max: Duration::from_millis(120),
    };
}

/// The checked runtime configuration of a replica.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub cluster: ClusterName,
    pub labels: Vec<Label>,
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub advertise: String,
    pub ops_listen: Option<SocketAddr>,
    /// Initial voters: id -> advertised address.
    pub peers: BTreeMap<u64, String>,
    pub timing: RaftTiming,
    pub append_timeout: Duration,
    pub snapshot_timeout: Duration,
    pub snapshot_after_entries: u64,
    pub keep_entries_after_snapshot: u64,
    pub write_timeout: Duration,
    pub fast_failover: bool,
    pub tls: TlsFiles,
    /// The DNS names and IP addresses its certificate asks for: the host of `host`, the IP of
    /// `listen` (unless unspecified), then `tls.names`.
    pub tls_names: Vec<atoll_api::pki::HostName>,
    pub shutdown_grace: Duration,
    pub gateway: Option<GatewayLink>,
    pub refuse_inbound_from: Vec<ClusterName>,
    pub jobs: JobsConfig,
    pub storage: atoll_store::StorageConfig,
}

/// How this replica reaches the gateway.
#[derive(Debug, Clone)]
pub struct GatewayLink {
    /// The gateway replicas (`host:port`), in the order they are tried; never empty.
    pub addrs: Vec<String>,
    /// Where the join token comes from, when the replica must enroll.
    pub join_token: JoinTokenSource,
}

#[derive(Debug, Clone)]
pub enum JoinTokenSource {
    None,
    Inline(String),
    File(PathBuf),
}

impl JoinTokenSource {
    /// The token, read now (a file is read only when enrolling).
    pub fn read(&self) -> Result<Option<String>, String> {
        match self {
            JoinTokenSource::None => Ok(None),
            JoinTokenSource::Inline(token) => Ok(Some(token.clone())),
            JoinTokenSource::File(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_string()))
                .map_err(|e| format!("{}: {e}", path.display())),
        }
    }
}

/// The node id a StatefulSet pod's host name gives: one more than its ordinal, the number after
/// the last `-` (`atoll-agent-2` is 3).
pub fn id_from_hostname(host: &str) -> Result<u64, String> {
    let ordinal = host
        .rsplit_once('-')
        .map(|(_, ordinal)| ordinal)
        .filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            format!("the host name {host:?} does not end in -<ordinal> (as a StatefulSet's pods do: atoll-agent-0)")
        })?;
    ordinal
        .parse::<u64>()
        .ok()
        .and_then(|o| o.checked_add(1))
        .ok_or_else(|| format!("the ordinal of the host name {host:?} is too large"))
}

/// Whether `addr` is `host:port` with a non-empty host and a valid port.
fn check_host_port(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not host:port"));
    };
    if host.is_empty() {
        return Err(format!("{addr:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{addr:?} has no valid port")),
    }
}

impl AgentConfig {
    /// Load `path`, applying `ATOLL__...` overrides from the environment, and check it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file: AgentFile = atoll_api::config_file::load(path, &atoll_api::config_file::env_overrides())?;
        Self::check(file, &path.display().to_string(), &atoll_api::config_file::base_dir(path))
    }

    /// [`Self::load`], and the effective config as YAML (`--check-config`): the file with
    /// overrides and defaults, the node id it resolved to, secrets redacted.
    pub fn load_effective(path: &Path) -> Result<(Self, String), ConfigError> {
        let file: AgentFile = atoll_api::config_file::load(path, &atoll_api::config_file::env_overrides())?;
        let origin = path.display().to_string();
        let config = Self::check(file.clone(), &origin, &atoll_api::config_file::base_dir(path))?;
        let effective = atoll_api::config_file::effective_yaml(
            &file,
            &[("node.id", atoll_api::config_file::YamlValue::from(config.node_id))],
        )
        .map_err(|e| ConfigError::invalid(&origin, "(effective config)", e))?;
        Ok((config, effective))
    }

    /// Check a parsed file; `origin` names it in errors, `base` resolves relative paths.
    pub fn check(file: AgentFile, origin: &str, base: &Path) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::invalid(origin, key, message);
        let cluster: ClusterName = file
            .cluster
            .name
            .parse()
            .map_err(|e: atoll_api::ids::InvalidName| invalid("cluster.name", e.to_string()))?;
        let mut labels = Vec::new();
        for (i, label) in file.cluster.labels.iter().enumerate() {
            labels.push(label.parse::<Label>().map_err(|e| invalid(&format!("cluster.labels[{i}]"), e.to_string()))?);
        }
        let node_id = match (file.node.id, file.node.id_from_hostname) {
            (Some(_), true) => {
                return Err(invalid("node.id", "give node.id or node.id_from_hostname, not both".into()));
            }
            (None, false) => return Err(invalid("node.id", "missing (or set node.id_from_hostname: true)".into())),
            (Some(0), false) => return Err(invalid("node.id", "must be 1 or more".into())),
            (Some(id), false) => id,
            (None, true) => {
                let host = nix::unistd::gethostname()
                    .map_err(|e| invalid("node.id_from_hostname", format!("reading the host name: {e}")))?;
                let host = host.to_string_lossy();
                match file.node.hostname_ids.get(host.as_ref()) {
                    Some(0) => return Err(invalid(&format!("node.hostname_ids.{host}"), "must be 1 or more".into())),
                    Some(id) => *id,
                    None => id_from_hostname(&host).map_err(|e| invalid("node.id_from_hostname", e))?,
                }
            }
        };
        if !file.node.hostname_ids.is_empty() && !file.node.id_from_hostname {
            return Err(invalid("node.hostname_ids", "only with node.id_from_hostname: true".into()));
        }
        let listen: SocketAddr = file
            .listen
            .parse()
            .map_err(|e| invalid("listen", format!("{:?} is not an ip:port address: {e}", file.listen)))?;
        let advertise = file.host.clone().unwrap_or_else(|| file.listen.clone());
        check_host_port(&advertise).map_err(|e| invalid("host", e))?;
        if listen.ip().is_unspecified() && file.host.is_none() {
            return Err(invalid(
                "host",
                format!("required when listen is {listen} (peers cannot dial an unspecified address)"),
            ));
        }
        let tls_names = atoll_api::pki::configured_server_names(&advertise, listen, &file.tls.names, "tls.names")
            .map_err(|(key, message)| invalid(&key, message))?;
        let ops_listen = match &file.ops_listen {
            Some(addr) => Some(
                addr.parse().map_err(|e| invalid("ops_listen", format!("{addr:?} is not an ip:port address: {e}")))?,
            ),
            None => None,
        };
        if ops_listen == Some(listen) {
            return Err(invalid("ops_listen", "must differ from listen".into()));
        }
        let mut peers = BTreeMap::new();
        for (i, peer) in file.peers.iter().enumerate() {
            let key = format!("peers[{i}]");
            if peer.id == 0 {
                return Err(invalid(&format!("{key}.id"), "must be 1 or more".into()));
            }
            check_host_port(&peer.addr).map_err(|e| invalid(&format!("{key}.addr"), e))?;
            if let Some(other) = peers.insert(peer.id, peer.addr.clone()) {
                return Err(invalid(
                    &format!("{key}.id"),
                    format!("node {} is listed twice ({other} and {})", peer.id, peer.addr),
                ));
            }
        }
        if let Some((id, _)) = peers.iter().find(|(id, addr)| **id != node_id && **addr == advertise) {
            return Err(invalid("peers", format!("peer {id} has this replica's address {advertise}")));
        }
        if let Some(addr) = peers.get(&node_id)
            && *addr != advertise
        {
            return Err(invalid(
                "peers",
                format!("lists this replica (node {}) at {addr}, but it advertises {advertise} (host)", node_id),
            ));
        }
        let raft = &file.raft;
        let timing = RaftTiming {
            heartbeat: Duration::from_millis(raft.heartbeat_ms),
            election_min: Duration::from_millis(raft.election_timeout_min_ms),
            election_max: Duration::from_millis(raft.election_timeout_max_ms),
        };
        if raft.heartbeat_ms == 0 {
            return Err(invalid("raft.heartbeat_ms", "must be 1 or more".into()));
        }
        if raft.election_timeout_min_ms < 2 * raft.heartbeat_ms {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                format!(
                    "must be at least twice raft.heartbeat_ms ({}), so one lost heartbeat does not start an election",
                    raft.heartbeat_ms
                ),
            ));
        }
        if raft.election_timeout_max_ms <= raft.election_timeout_min_ms {
            return Err(invalid(
                "raft.election_timeout_max_ms",
                "must be greater than raft.election_timeout_min_ms".into(),
            ));
        }
        if raft.snapshot_after_entries == 0 {
            return Err(invalid("raft.snapshot_after_entries", "must be 1 or more".into()));
        }
        for (key, value) in [
            ("raft.append_timeout_ms", raft.append_timeout_ms),
            ("raft.snapshot_timeout_ms", raft.snapshot_timeout_ms),
            ("raft.write_timeout_ms", raft.write_timeout_ms),
            ("shutdown_grace_ms", file.shutdown_grace_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be 1 or more".into()));
            }
        }
        let gateway = match file.gateway {
            None => None,
            Some(g) => {
                let addrs = match (g.addr, g.addrs) {
                    (Some(_), Some(_)) => {
                        return Err(invalid("gateway", "give one of addr and addrs".into()));
                    }
                    (None, None) => {
                        return Err(invalid("gateway", "give addr (one gateway) or addrs (its replicas)".into()));
                    }
                    (Some(addr), None) => {
                        check_host_port(&addr).map_err(|e| invalid("gateway.addr", e))?;
                        vec![addr]
                    }
                    (None, Some(addrs)) => {
                        if addrs.is_empty() {
                            return Err(invalid("gateway.addrs", "must list at least one host:port".into()));
                        }
                        for (i, addr) in addrs.iter().enumerate() {
                            check_host_port(addr).map_err(|e| invalid(&format!("gateway.addrs[{i}]"), e))?;
                            if addrs[..i].contains(addr) {
                                return Err(invalid(
                                    &format!("gateway.addrs[{i}]"),
                                    format!("{addr:?} is listed twice"),
                                ));
                            }
                        }
                        addrs
                    }
                };
                let join_token = match (g.join_token, g.join_token_file) {
                    (Some(_), Some(_)) => {
                        return Err(invalid("gateway", "give one of join_token and join_token_file".into()));
                    }
                    (Some(token), None) => {
                        atoll_api::token::JoinToken::parse(&token)
                            .map_err(|e| invalid("gateway.join_token", e.to_string()))?;
                        JoinTokenSource::Inline(token)
                    }
                    (None, Some(path)) => JoinTokenSource::File(resolve(base, &path)),
                    (None, None) => JoinTokenSource::None,
                };
                Some(GatewayLink { addrs, join_token })
            }
        };
        let mut refuse_inbound_from = Vec::new();
        for (i, name) in file.network.refuse_inbound_from.iter().enumerate() {
            let name: ClusterName = name.parse().map_err(|e: atoll_api::ids::InvalidName| {
                invalid(&format!("network.refuse_inbound_from[{i}]"), e.to_string())
            })?;
            if name == cluster {
                return Err(invalid(
                    &format!("network.refuse_inbound_from[{i}]"),
                    "a cluster cannot refuse its own replicas".into(),
                ));
            }
            refuse_inbound_from.push(name);
        }
        let jobs = check_jobs(file.jobs, &advertise, &invalid)?;
        let data_dir = resolve(base, &file.node.data_dir);
        let storage = file.storage.check(origin, "storage", base, data_dir.join("blobs"))?;
        Ok(Self {
            jobs,
            storage,
            gateway,
            refuse_inbound_from,
            cluster,
            labels,
            node_id,
            data_dir,
            listen,
            advertise,
            ops_listen,
            peers,
            timing,
            append_timeout: Duration::from_millis(raft.append_timeout_ms),
            snapshot_timeout: Duration::from_millis(raft.snapshot_timeout_ms),
            snapshot_after_entries: raft.snapshot_after_entries,
            keep_entries_after_snapshot: raft.keep_entries_after_snapshot,
            write_timeout: Duration::from_millis(raft.write_timeout_ms),
            fast_failover: raft.fast_failover,
            tls: TlsFiles {
                ca: resolve(base, &file.tls.ca),
                cert: resolve(base, &file.tls.cert),
                key: resolve(base, &file.tls.key),
            },
            tls_names,
            shutdown_grace: Duration::from_millis(file.shutdown_grace_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster: {name: aws, labels: [aws, default]}
node: {id: 1, data_dir: data}
listen: 127.0.0.1:7101
ops_listen: 127.0.0.1:9101
peers:
  - {id: 1, addr: "127.0.0.1:7101"}
  - {id: 2, addr: "127.0.0.1:7102"}
  - {id: 3, addr: "127.0.0.1:7103"}
tls: {ca: certs/ca.pem, cert: certs/n1.pem, key: /abs/n1-key.pem}
"#;

    fn check(text: &str) -> Result<AgentConfig, ConfigError> {
        let file: AgentFile = atoll_api::config_file::parse(text, "agent.yaml", &[])?;
        AgentConfig::check(file, "agent.yaml", Path::new("/etc/atoll"))
    }

    #[test]
    fn a_good_file_resolves_paths_and_defaults() {
        let config = check(GOOD).unwrap();
        assert_eq!(config.cluster.as_str(), "aws");
        assert_eq!(config.advertise, "127.0.0.1:7101");
        assert_eq!(config.tls_names, vec![atoll_api::pki::HostName::Ip([127, 0, 0, 1].into())]);
        assert_eq!(config.data_dir, Path::new("/etc/atoll/data"));
        assert_eq!(config.tls.ca, Path::new("/etc/atoll/certs/ca.pem"));
        assert_eq!(config.tls.key, Path::new("/abs/n1-key.pem"));
        assert_eq!(config.timing, RaftTiming::DEFAULT);
        assert_eq!(config.peers.len(), 3);
    }

    #[test]
    fn a_statefulset_pod_takes_its_id_from_its_ordinal() {
        assert_eq!(id_from_hostname("atoll-agent-0"), Ok(1));
        assert_eq!(id_from_hostname("atoll-agent-2"), Ok(3));
        assert_eq!(id_from_hostname("aws-10"), Ok(11));
        for bad in ["atoll-agent", "atoll-agent-", "agent-x1", "host", "a-99999999999999999999"] {
            let err = id_from_hostname(bad).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
        let both = GOOD.replace("id: 1, data_dir", "id: 1, id_from_hostname: true, data_dir");
        assert!(check(&both).unwrap_err().to_string().contains("node.id: give node.id or node.id_from_hostname"));
        let neither = GOOD.replace("id: 1, data_dir", "data_dir");
        assert!(check(&neither).unwrap_err().to_string().contains("node.id: missing"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (GOOD.replace("name: aws", "name: AWS"), "cluster.name"),
            (GOOD.replace("labels: [aws, default]", "labels: [aws, 'Bad Label']"), "cluster.labels[1]"),
            (GOOD.replace("id: 1, data_dir", "id: 0, data_dir"), "node.id"),
            (GOOD.replace("listen: 127.0.0.1:7101", "listen: nowhere"), "listen"),
            (GOOD.replace("{id: 3, addr: \"127.0.0.1:7103\"}", "{id: 2, addr: \"127.0.0.1:7104\"}"), "peers[2].id"),
            (GOOD.replace("\"127.0.0.1:7103\"", "\"127.0.0.1\""), "peers[2].addr"),
            (GOOD.replace("{id: 1, addr: \"127.0.0.1:7101\"}", "{id: 1, addr: \"127.0.0.1:7109\"}"), "peers"),
            (
                format!("{GOOD}raft: {{heartbeat_ms: 50, election_timeout_min_ms: 60}}\n"),
                "raft.election_timeout_min_ms",
            ),
            (format!("{GOOD}raft: {{election_timeout_max_ms: 10}}\n"), "raft.election_timeout_max_ms"),
            (format!("{GOOD}raft: {{heartbeat: 5}}\n"), "raft.heartbeat"),
            (format!("{GOOD}colour: blue\n"), "colour"),
            (
                GOOD.replace("key: /abs/n1-key.pem}", "key: /abs/n1-key.pem, names: [aws-1.example, 'no such']}"),
                "tls.names[1]",
            ),
            (format!("{GOOD}jobs: {{max_running: 0}}\n"), "jobs.max_running"),
            (format!("{GOOD}jobs: {{log_limit_bytes: 100}}\n"), "jobs.log_limit_bytes"),
            (format!("{GOOD}jobs: {{sandbox: {{mode: sometimes}}}}\n"), "jobs.sandbox.mode"),
            (format!("{GOOD}jobs: {{sandbox: {{user: root}}}}\n"), "jobs.sandbox.user"),
            (format!("{GOOD}jobs: {{sandbox: {{user: '0:0'}}}}\n"), "jobs.sandbox.user"),
            (format!("{GOOD}jobs: {{sandbox: {{user: no-such-user-here}}}}\n"), "jobs.sandbox.user"),
            (format!("{GOOD}jobs: {{sandbox: {{user: '12:x'}}}}\n"), "jobs.sandbox.user"),
            (format!("{GOOD}jobs: {{sandbox: {{system_paths: [/usr, usr/lib]}}}}\n"), "jobs.sandbox.system_paths[1]"),
            (format!("{GOOD}jobs: {{sandbox: {{writable_paths: [/]}}}}\n"), "jobs.sandbox.writable_paths[0]"),
            (format!("{GOOD}jobs: {{sandbox: {{nice: 20}}}}\n"), "jobs.sandbox.nice"),
            (format!("{GOOD}jobs: {{sandbox: {{users: nobody}}}}\n"), "jobs.sandbox.users"),
            (format!("{GOOD}jobs: {{executor: docker}}\n"), "jobs.executor"),
            (format!("{GOOD}jobs: {{containers: {{engine: ''}}}}\n"), "jobs.containers.engine"),
            (format!("{GOOD}jobs: {{containers: {{engine: 'pod man'}}}}\n"), "jobs.containers.engine"),
            (
                format!("{GOOD}jobs: {{containers: {{engine: podman, run_args: [--rm, '']}}}}\n"),
                "jobs.containers.run_args[1]",
            ),
            (format!("{GOOD}jobs: {{containers: {{engine: podman, compose: ['']}}}}\n"), "jobs.containers.compose[0]"),
            (
                format!("{GOOD}jobs: {{containers: {{engine: podman, registry_args: [--cert-dir, '']}}}}\n"),
                "jobs.containers.registry_args[1]",
            ),
            (format!("{GOOD}jobs: {{containers: {{engine: podman, composer: x}}}}\n"), "jobs.containers.composer"),
            (
                format!(
                    "{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pod_listen: '127.0.0.1:9000'}}, containers: {{engine: podman}}}}\n"
                ),
                "jobs.containers",
            ),
            (
                format!(
                    "{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pod_listen: '127.0.0.1:9000', builder: {{image: 'a b', registry: r.io/atoll}}}}}}\n"
                ),
                "jobs.kubernetes.builder.image",
            ),
            (
                format!(
                    "{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pod_listen: '127.0.0.1:9000', builder: {{image: k, registry: 'https://r.io/atoll'}}}}}}\n"
                ),
                "jobs.kubernetes.builder.registry",
            ),
            (
                format!(
                    "{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pod_listen: '127.0.0.1:9000', builder: {{image: k, registry: r.io/atoll, command: []}}}}}}\n"
                ),
                "jobs.kubernetes.builder.command",
            ),
            (
                format!(
                    "{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pod_listen: '127.0.0.1:9000', builder: {{image: k, registry: r.io/atoll, args: [--x, '']}}}}}}\n"
                ),
                "jobs.kubernetes.builder.args[1]",
            ),
            (
                format!(
                    "{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pod_listen: '127.0.0.1:9000', builder: {{image: k, registry: r.io/atoll, push_secret: 'Bad Name'}}}}}}\n"
                ),
                "jobs.kubernetes.builder.push_secret",
            ),
            (
                format!(
                    "{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pod_listen: '127.0.0.1:9000', builder: {{image: k}}}}}}\n"
                ),
                "jobs.kubernetes.builder",
            ),
            (format!("{GOOD}jobs: {{kubernetes: {{namespace: ci}}}}\n"), "jobs.kubernetes"),
            (
                format!(
                    "{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pod_listen: '0.0.0.0:7201', api: 'ftp://x'}}}}\n"
                ),
                "jobs.kubernetes.api",
            ),
            (
                format!(
                    "{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pod_listen: '0.0.0.0:7201', namespace: CI}}}}\n"
                ),
                "jobs.kubernetes.namespace",
            ),
            (
                format!(
                    "{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pod_listen: '0.0.0.0:7201', command_image: 'a b'}}}}\n"
                ),
                "jobs.kubernetes.command_image",
            ),
            (
                format!(
                    "{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pod_listen: '0.0.0.0:7201', poll_ms: 0}}}}\n"
                ),
                "jobs.kubernetes.poll_ms",
            ),
            (format!("{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pol_ms: 5}}}}\n"), "jobs.kubernetes.pol_ms"),
            (format!("{GOOD}jobs: {{executor: kubernetes}}\n"), "jobs.kubernetes"),
            (
                format!("{GOOD}jobs: {{executor: kubernetes, kubernetes: {{namespace: ci}}}}\n"),
                "jobs.kubernetes.pod_listen",
            ),
            (
                format!("{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pod_listen: '7201'}}}}\n"),
                "jobs.kubernetes.pod_listen",
            ),
            (
                format!(
                    "{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pod_listen: '0.0.0.0:7201', pod_urls: ['https://a:1', 'http://b:2']}}}}\n"
                ),
                "jobs.kubernetes.pod_urls[1]",
            ),
            (
                format!(
                    "{GOOD}jobs: {{executor: kubernetes, kubernetes: {{pod_listen: '0.0.0.0:7201', helper_image: ''}}}}\n"
                ),
                "jobs.kubernetes.helper_image",
            ),
        ];
        for (text, key) in cases {
            let err = check(&text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("agent.yaml: {key}:")), "expected {key}, got {err}");
        }
    }

    #[test]
    fn the_gateway_is_one_address_or_a_list_of_replicas() {
        let with = |gateway: &str| format!("{GOOD}gateway: {{{gateway}, join_token_file: join.token}}\n");
        let link = |text: &str| check(text).unwrap().gateway.expect("a gateway");
        assert_eq!(link(&with("addr: 'gw:7000'")).addrs, ["gw:7000"], "addr alone: a list of one");
        let several = link(&with("addrs: ['gw-1:7000', 'gw-2:7000', '10.0.0.3:7000']"));
        assert_eq!(several.addrs, ["gw-1:7000", "gw-2:7000", "10.0.0.3:7000"], "in the order given");
        assert!(matches!(several.join_token, JoinTokenSource::File(_)));

        let cases = [
            (with("addr: 'gw:7000', addrs: ['gw:7000']"), "gateway"),
            (format!("{GOOD}gateway: {{join_token_file: join.token}}\n"), "gateway"),
            (with("addrs: []"), "gateway.addrs"),
            (with("addrs: ['gw-1:7000', 'gw-2']"), "gateway.addrs[1]"),
            (with("addrs: ['gw-1:7000', ':7000']"), "gateway.addrs[1]"),
            (with("addrs: ['gw-1:7000', 'gw-1:7000']"), "gateway.addrs[1]"),
            (with("addr: 'gw'"), "gateway.addr"),
            (with("addrs: 'gw:7000'"), "gateway.addrs"),
        ];
        for (text, key) in cases {
            let err = check(&text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("agent.yaml: {key}:")), "expected {key}, got {err}");
        }
    }

    #[test]
    fn jobs_run_as_processes_unless_told_otherwise() {
        let config = check(GOOD).unwrap();
        assert_eq!(config.jobs.max_running, 32);
        assert!(matches!(config.jobs.executor, ExecutorConfig::Process));
        let text = format!(
            "{GOOD}jobs:\n  max_running: 4\n  executor: kubernetes\n  kubernetes: {{api: 'http://127.0.0.1:8001', namespace: ci, pod_listen: '0.0.0.0:7201'}}\n"
        );
        let config = check(&text).unwrap();
        assert_eq!(config.jobs.max_running, 4);
        let ExecutorConfig::Kubernetes(k) = config.jobs.executor else { panic!("kubernetes expected") };
        assert_eq!(k.api.as_deref(), Some("http://127.0.0.1:8001"));
        assert_eq!(k.namespace, "ci");
        assert_eq!(k.command_image, "busybox:1.36");
        assert_eq!(k.poll, Duration::from_secs(1));
        assert_eq!(k.pod_listen, "0.0.0.0:7201".parse().unwrap());
        assert_eq!(k.pod_urls, ["https://127.0.0.1:7201"], "this replica's host with the pod listener's port");
        assert_eq!(k.helper_image, format!("atoll:{}", env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn an_unspecified_listen_address_needs_a_host() {
        let text = GOOD.replace("listen: 127.0.0.1:7101", "listen: 0.0.0.0:7101");
        let err = check(&text).unwrap_err().to_string();
        assert!(err.contains("host: required"), "{err}");
        let text = format!("{text}host: 127.0.0.1:7101\n");
        assert!(check(&text).is_ok());
    }
}
