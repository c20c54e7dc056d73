//! The shape of a mesh: clusters, replicas, ports, the gateway, and the knobs tests turn.

use anyhow::Context;
use serde::Deserialize;
use serde::Serialize;

/// Environment variable telling an agent to exit when the process that started it dies.
pub const EXIT_WITH_PARENT_ENV: &str = "ATOLL_EXIT_WITH_PARENT";

/// A child's side of [`EXIT_WITH_PARENT_ENV`]: resolves when the process that started this one
/// has exited (this one was re-parented).
pub async fn parent_gone() {
    let parent = std::os::unix::process::parent_id();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if std::os::unix::process::parent_id() != parent {
            return;
        }
    }
}

/// Raft timing for every replica of a mesh (the agents' defaults when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl std::str::FromStr for Timing {
    type Err = anyhow::Error;
    /// `HEARTBEAT/MIN/MAX` in milliseconds, e.g. `20/60/120`.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let parts: Vec<u64> = s
            .split('/')
            .map(|p| p.parse::<u64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("timing {s:?}: expected HEARTBEAT/MIN/MAX in ms"))?;
        match parts.as_slice() {
            [heartbeat_ms, election_timeout_min_ms, election_timeout_max_ms] => Ok(Self {
                heartbeat_ms: *heartbeat_ms,
                election_timeout_min_ms: *election_timeout_min_ms,
                election_timeout_max_ms: *election_timeout_max_ms,
            }),
            _ => anyhow::bail!("timing {s:?}: expected HEARTBEAT/MIN/MAX in ms, e.g. 20/60/120"),
        }
    }
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.heartbeat_ms, self.election_timeout_min_ms, self.election_timeout_max_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaLayout {
    pub id: u64,
    pub port: u16,
    pub ops_port: u16,
    #[serde(flatten)]
    pub place: Placement,
}

/// Where a process of the mesh runs: its address and network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Address to listen on and advertise (127.0.0.1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Network namespace the process runs in (`ip netns exec`); the caller's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

impl Placement {
    pub fn ip(&self) -> &str {
        self.ip.as_deref().unwrap_or("127.0.0.1")
    }
}

impl ReplicaLayout {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.place.ip(), self.port)
    }
    pub fn ops_addr(&self) -> String {
        format!("{}:{}", self.place.ip(), self.ops_port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLayout {
    pub name: String,
    pub labels: Vec<String>,
    pub replicas: Vec<ReplicaLayout>,
    /// Clusters whose replicas this one drops (`network.refuse_inbound_from`).
    #[serde(default)]
    pub refuse_inbound_from: Vec<String>,
    /// Run jobs as Kubernetes Jobs through this API server instead of as processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_api: Option<String>,
    /// With `kubernetes_api`: each replica's pod listener port, in replica order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_ports: Vec<u16>,
    /// `jobs.max_running` of the leader (the agent's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<usize>,
    /// `jobs.transfer_limit_bytes_per_s` (unlimited when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_limit: Option<u64>,
    /// `storage.local.fsync` (the agent's default, on, when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_fsync: Option<bool>,
    /// `jobs.sandbox.writable_paths`: paths every job may write (none when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub job_writable_paths: Vec<std::path::PathBuf>,
}

/// The gateway of a mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayLayout {
    pub port: u16,
    pub ops_port: u16,
    /// PostgreSQL instead of the SQLite default.
    #[serde(default)]
    pub postgres_url: Option<String>,
    /// Timing overrides (tests shorten them).
    #[serde(default)]
    pub timing: Option<GatewayTiming>,
    /// `storage.local.fsync` of the relay store (on when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_fsync: Option<bool>,
    /// `retention.keep_s` and `retention.interval_ms` (the defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<(u64, u64)>,
    #[serde(flatten)]
    pub place: Placement,
    /// Extra environment of the gateway process (the chaos suite's switches).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// The program run as the gateway (`PROGRAM gateway --config FILE`) instead of the mesh's
    /// `atoll`: the chaos suite's deliberately broken gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<std::path::PathBuf>,
}

impl GatewayLayout {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.place.ip(), self.port)
    }
    pub fn ops_addr(&self) -> String {
        format!("{}:{}", self.place.ip(), self.ops_port)
    }
}

/// Gateway timing, in milliseconds (certificate lifetime in seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayTiming {
    pub heartbeat_interval_ms: u64,
    pub suspect_after_ms: u64,
    pub dead_after_ms: u64,
    pub probe_interval_ms: u64,
    pub probe_timeout_ms: u64,
    pub row_interval_ms: u64,
    pub stale_after_ms: u64,
    pub cert_lifetime_s: u64,
}

impl GatewayTiming {
    /// Short bounds for tests and the chaos suite (the defaults are 1 s heartbeats, 1 s probes):
    /// 200 ms heartbeats, suspect after 1 s, dead after 2.5 s; probes every 500 ms (400 ms
    /// timeout), rows every second, stale after 2 s.
    pub fn fast() -> Self {
        Self {
            heartbeat_interval_ms: 200,
            suspect_after_ms: 1_000,
            dead_after_ms: 2_500,
            probe_interval_ms: 500,
            probe_timeout_ms: 400,
            row_interval_ms: 1_000,
            stale_after_ms: 2_000,
            cert_lifetime_s: 86_400,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub clusters: Vec<ClusterLayout>,
    #[serde(default)]
    pub raft: RaftKnobs,
    /// A gateway the clusters enroll with and report to; standalone clusters without.
    #[serde(default)]
    pub gateway: Option<GatewayLayout>,
}

/// Raft settings written into every replica's config; the agents' defaults where absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftKnobs {
    #[serde(default)]
    pub timing: Option<Timing>,
    #[serde(default = "yes")]
    pub fast_failover: bool,
    #[serde(default)]
    pub snapshot_after_entries: Option<u64>,
    #[serde(default)]
    pub keep_entries_after_snapshot: Option<u64>,
}

impl Default for RaftKnobs {
    fn default() -> Self {
        Self { timing: None, fast_failover: true, snapshot_after_entries: None, keep_entries_after_snapshot: None }
    }
}

fn yes() -> bool {
    true
}

/// The default clusters: `aws` (labels aws, default), `gcp`, `onprem`, then `c4`, `c5`, ...
pub fn default_clusters(n: usize) -> Vec<(String, Vec<String>)> {
    (0..n)
        .map(|i| match i {
            0 => ("aws".to_string(), vec!["aws".to_string(), "default".to_string()]),
            1 => ("gcp".to_string(), vec!["gcp".to_string()]),
            2 => ("onprem".to_string(), vec!["onprem".to_string()]),
            i => (format!("c{}", i + 1), vec![format!("c{}", i + 1)]),
        })
        .collect()
}

/// `count` ports: consecutive from `base`, or free ones reserved for this process when `base` is
/// 0 (see [`super::ports`]).
pub fn allocate_ports(count: usize, base: u16) -> anyhow::Result<Vec<u16>> {
    if base != 0 {
        let last = u32::from(base) + count as u32;
        anyhow::ensure!(last <= u32::from(u16::MAX), "--base-port {base} leaves no room for {count} ports");
        return Ok((0..count as u16).map(|i| base + i).collect());
    }
    super::ports::reserve_free_ports(count)
}

impl Layout {
    pub fn new(clusters: usize, replicas: usize, base_port: u16) -> anyhow::Result<Self> {
        anyhow::ensure!(clusters >= 1, "--clusters must be 1 or more");
        anyhow::ensure!(
            replicas >= 1 && replicas % 2 == 1,
            "--replicas must be odd (1, 3, 5, ...): a Raft group needs a clear majority"
        );
        let ports = allocate_ports(clusters * replicas * 2, base_port)?;
        let mut next = ports.into_iter();
        let clusters = default_clusters(clusters)
            .into_iter()
            .map(|(name, labels)| ClusterLayout {
                name,
                labels,
                replicas: (1..=replicas as u64)
                    .map(|id| ReplicaLayout {
                        id,
                        port: next.next().unwrap_or(0),
                        ops_port: next.next().unwrap_or(0),
                        place: Placement::default(),
                    })
                    .collect(),
                refuse_inbound_from: Vec::new(),
                kubernetes_api: None,
                pod_ports: Vec::new(),
                max_running: None,
                transfer_limit: None,
                store_fsync: None,
                job_writable_paths: Vec::new(),
            })
            .collect();
        Ok(Self { clusters, raft: RaftKnobs::default(), gateway: None })
    }

    /// Add a gateway, on the two ports after the replicas' when `base_port` is set, else on free
    /// ones.
    pub fn with_gateway(mut self, base_port: u16) -> anyhow::Result<Self> {
        let replicas: usize = self.clusters.iter().map(|c| c.replicas.len()).sum();
        let ports = if base_port == 0 {
            allocate_ports(2, 0)?
        } else {
            let first = u16::try_from(usize::from(base_port) + 2 * replicas)
                .context("--base-port leaves no room for the gateway")?;
            allocate_ports(2, first)?
        };
        self.gateway = Some(GatewayLayout {
            port: ports[0],
            ops_port: ports[1],
            postgres_url: None,
            timing: None,
            store_fsync: None,
            retention: None,
            place: Placement::default(),
            env: Vec::new(),
            exe: None,
        });
        Ok(self)
    }

    /// The cuts `atoll dev` shows: `onprem` refuses `aws` and `gcp`, `gcp` refuses `onprem`, so
    /// aws->onprem is cut one way (aws<-onprem still works: direct transfers) and gcp<->onprem
    /// both ways (transfers relayed through the gateway).
    pub fn with_default_cuts(mut self) -> Self {
        let names: Vec<String> = self.clusters.iter().map(|c| c.name.clone()).collect();
        let present = |n: &str| names.iter().any(|name| name == n);
        for cluster in &mut self.clusters {
            cluster.refuse_inbound_from = match cluster.name.as_str() {
                "onprem" => ["aws", "gcp"].into_iter().filter(|n| present(n)).map(str::to_string).collect(),
                "gcp" if present("onprem") => vec!["onprem".to_string()],
                _ => Vec::new(),
            };
        }
        self
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterLayout> {
        self.clusters.iter().find(|c| c.name == name)
    }

    pub fn replica(&self, cluster: &str, id: u64) -> Option<&ReplicaLayout> {
        self.cluster(cluster)?.replicas.iter().find(|r| r.id == id)
    }

    /// Every replica as (cluster, replica).
    pub fn all(&self) -> impl Iterator<Item = (&ClusterLayout, &ReplicaLayout)> {
        self.clusters.iter().flat_map(|c| c.replicas.iter().map(move |r| (c, r)))
    }
}

/// Name of a replica in files and messages: `aws-1`.
pub fn replica_name(cluster: &str, id: u64) -> String {
    format!("{cluster}-{id}")
}
