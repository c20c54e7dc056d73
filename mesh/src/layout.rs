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
    /// `jobs.containers`: the container engine of the process executor (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_containers: Option<JobContainers>,
    /// `jobs.kubernetes.builder` (with `kubernetes_api`): the image builder in job pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_builder: Option<KubernetesBuilder>,
}

/// `jobs.kubernetes.builder` of a cluster's agents, as written to their config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesBuilder {
    pub image: String,
    pub registry: String,
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
}

/// `jobs.containers` of a cluster's agents, as written to their config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobContainers {
    pub engine: String,
    #[serde(default)]
    pub engine_args: Vec<String>,
    #[serde(default)]
    pub build_args: Vec<String>,
    #[serde(default)]
    pub run_args: Vec<String>,
    #[serde(default)]
    pub registry_args: Vec<String>,
    #[serde(default)]
    pub compose: Vec<String>,
}

impl JobContainers {
    /// Podman as this machine runs it: `examples/containers-podman.yaml` (runc, the ulimits the
    /// machine allows, cgroups without systemd; podman-compose given the same).
    pub fn podman() -> Self {
        serde_yaml_ng::from_str(include_str!("../../examples/containers-podman.yaml"))
            .expect("examples/containers-podman.yaml is a jobs.containers block")
    }
}

/// The gateway of a mesh: one replica (`main`, on SQLite unless `postgres_url`), or several
/// over one PostgreSQL database (`ha`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredGatewayLayout")]
pub struct GatewayLayout {
    /// The replicas, in start order (the first starts alone and creates the database's tables
    /// and the admin token; the others start once it serves).
    pub replicas: Vec<GatewayReplicaLayout>,
    /// `ha.enabled` with a relay store the replicas share (`DIR/relay`); needs PostgreSQL
    /// (`postgres_url`, or the mesh's own server: [`Layout::postgres`]).
    #[serde(default)]
    pub ha: bool,
    /// PostgreSQL instead of the SQLite default.
    #[serde(default)]
    pub postgres_url: Option<String>,
    /// Timing overrides (tests shorten them).
    #[serde(default)]
    pub timing: Option<GatewayTiming>,
    /// The duties lease's timing (`ha.lease_ttl_ms`, ...; the gateway's defaults when absent):
    /// tests shorten it with the other timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseTiming>,
    /// `storage.local.fsync` of the relay store (on when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_fsync: Option<bool>,
    /// `retention.keep_s` and `retention.interval_ms` (the defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<(u64, u64)>,
    /// Extra environment of the gateway processes (the chaos suite's switches).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// The program run as the gateway (`PROGRAM gateway --config FILE`) instead of the mesh's
    /// `atoll`: the chaos suite's deliberately broken gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<std::path::PathBuf>,
}

/// The id of the only gateway of a mesh without replicas (the gateway's own default).
pub const SINGLE_GATEWAY_ID: &str = "main";

/// One gateway replica: its id (`spiffe://atoll/gateway/<id>`), ports and place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayReplicaLayout {
    pub id: String,
    pub port: u16,
    pub ops_port: u16,
    /// The dashboard's HTTPS listener, when it is on (`atoll dev` turns it on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_port: Option<u16>,
    #[serde(flatten)]
    pub place: Placement,
}

impl GatewayReplicaLayout {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.place.ip(), self.port)
    }
    pub fn ops_addr(&self) -> String {
        format!("{}:{}", self.place.ip(), self.ops_port)
    }

    /// `ip:port` of the dashboard, when it is on.
    pub fn dashboard_addr(&self) -> Option<String> {
        self.dashboard_port.map(|port| format!("{}:{port}", self.place.ip()))
    }
}

/// `layout.json`'s gateway as written before replicas: one gateway's `port`, `ops_port` and
/// place beside the rest; read as the replica `main`.
#[derive(Deserialize)]
struct StoredGatewayLayout {
    #[serde(default)]
    replicas: Vec<GatewayReplicaLayout>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    ops_port: Option<u16>,
    #[serde(flatten)]
    place: Placement,
    #[serde(default)]
    ha: bool,
    #[serde(default)]
    postgres_url: Option<String>,
    #[serde(default)]
    timing: Option<GatewayTiming>,
    #[serde(default)]
    lease: Option<LeaseTiming>,
    #[serde(default)]
    store_fsync: Option<bool>,
    #[serde(default)]
    retention: Option<(u64, u64)>,
    #[serde(default)]
    env: Vec<(String, String)>,
    #[serde(default)]
    exe: Option<std::path::PathBuf>,
}

impl From<StoredGatewayLayout> for GatewayLayout {
    fn from(stored: StoredGatewayLayout) -> Self {
        let mut replicas = stored.replicas;
        if let (true, Some(port), Some(ops_port)) = (replicas.is_empty(), stored.port, stored.ops_port) {
            replicas.push(GatewayReplicaLayout {
                id: SINGLE_GATEWAY_ID.to_string(),
                port,
                ops_port,
                dashboard_port: None,
                place: stored.place,
            });
        }
        Self {
            replicas,
            ha: stored.ha,
            postgres_url: stored.postgres_url,
            timing: stored.timing,
            lease: stored.lease,
            store_fsync: stored.store_fsync,
            retention: stored.retention,
            env: stored.env,
            exe: stored.exe,
        }
    }
}

impl GatewayLayout {
    /// The first replica (the only one without `ha`).
    ///
    /// # Panics
    /// On a layout without replicas, which [`Layout`]'s constructors never make.
    pub fn first(&self) -> &GatewayReplicaLayout {
        &self.replicas[0]
    }
    pub fn first_mut(&mut self) -> &mut GatewayReplicaLayout {
        &mut self.replicas[0]
    }
    /// The first replica's address (the only one's without `ha`).
    pub fn addr(&self) -> String {
        self.first().addr()
    }
    /// The first replica's ops address.
    pub fn ops_addr(&self) -> String {
        self.first().ops_addr()
    }
    /// Every replica's address, in order.
    pub fn addrs(&self) -> Vec<String> {
        self.replicas.iter().map(GatewayReplicaLayout::addr).collect()
    }
}

/// A PostgreSQL server the mesh runs itself, under `DIR/postgres` (see [`crate::postgres`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresLayout {
    pub port: u16,
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

/// The duties lease's timing of gateway replicas (`ha.*`), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTiming {
    pub lease_ttl_ms: u64,
    pub renew_interval_ms: u64,
    pub retry_interval_ms: u64,
}

impl LeaseTiming {
    /// Short bounds beside [`GatewayTiming::fast`] (the defaults are a 5 s lease renewed every
    /// second, retried every 500 ms): a 1.5 s lease renewed every 300 ms, retried every 200 ms,
    /// so a holder that dies without a word is replaced within 1.7 s, well before its clusters'
    /// 2.5 s dead-after bound.
    pub fn fast() -> Self {
        Self { lease_ttl_ms: 1_500, renew_interval_ms: 300, retry_interval_ms: 200 }
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
    /// A PostgreSQL server the mesh starts before its gateway replicas and stops after them;
    /// the gateways' database when they name no other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresLayout>,
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
                job_containers: None,
                kubernetes_builder: None,
            })
            .collect();
        Ok(Self { clusters, raft: RaftKnobs::default(), gateway: None, postgres: None })
    }

    /// Add a gateway (`main`, on SQLite), on the two ports after the replicas' when `base_port`
    /// is set, else on free ones.
    pub fn with_gateway(self, base_port: u16) -> anyhow::Result<Self> {
        self.with_gateway_replicas_named(vec![SINGLE_GATEWAY_ID.to_string()], false, base_port)
    }

    /// Add `count` gateway replicas `g1`, `g2`, ... over one PostgreSQL database (`ha`), each on
    /// two ports (after the replicas' when `base_port` is set, else free ones). The database is
    /// the caller's to give: `postgres_url`, or [`Layout::with_postgres`].
    pub fn with_gateway_replicas(self, count: usize, base_port: u16) -> anyhow::Result<Self> {
        anyhow::ensure!(count >= 1, "--gateways must be 1 or more");
        self.with_gateway_replicas_named((1..=count).map(|i| format!("g{i}")).collect(), true, base_port)
    }

    fn with_gateway_replicas_named(mut self, ids: Vec<String>, ha: bool, base_port: u16) -> anyhow::Result<Self> {
        let ports = allocate_ports(2 * ids.len(), self.base_after_replicas(base_port, 0)?)?;
        let mut next = ports.into_iter();
        let replicas = ids
            .into_iter()
            .map(|id| GatewayReplicaLayout {
                id,
                port: next.next().unwrap_or(0),
                ops_port: next.next().unwrap_or(0),
                dashboard_port: None,
                place: Placement::default(),
            })
            .collect();
        self.gateway = Some(GatewayLayout {
            replicas,
            ha,
            postgres_url: None,
            timing: None,
            lease: None,
            store_fsync: None,
            retention: None,
            env: Vec::new(),
            exe: None,
        });
        Ok(self)
    }

    /// Turn the dashboard on for every gateway replica that has none yet, each on a free port.
    pub fn with_dashboard(mut self) -> anyhow::Result<Self> {
        if let Some(gateway) = self.gateway.as_mut() {
            for replica in gateway.replicas.iter_mut().filter(|r| r.dashboard_port.is_none()) {
                replica.dashboard_port = Some(allocate_ports(1, 0)?[0]);
            }
        }
        Ok(self)
    }

    /// Add a PostgreSQL server of the mesh's own (the gateways' database), on the port after the
    /// gateway replicas' when `base_port` is set, else on a free one.
    pub fn with_postgres(mut self, base_port: u16) -> anyhow::Result<Self> {
        let gateway_ports = self.gateway.as_ref().map_or(0, |g| 2 * g.replicas.len());
        let port = allocate_ports(1, self.base_after_replicas(base_port, gateway_ports)?)?[0];
        self.postgres = Some(PostgresLayout { port });
        Ok(self)
    }

    /// The first port after the replicas' and `more` others, from `base_port`; 0 (free ports)
    /// when `base_port` is 0.
    fn base_after_replicas(&self, base_port: u16, more: usize) -> anyhow::Result<u16> {
        if base_port == 0 {
            return Ok(0);
        }
        let replicas: usize = self.clusters.iter().map(|c| c.replicas.len()).sum();
        u16::try_from(usize::from(base_port) + 2 * replicas + more)
            .context("--base-port leaves no room for the gateway and its database")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_replicas_take_ids_and_the_ports_after_the_replicas_then_postgres_one_more() {
        let layout =
            Layout::new(2, 3, 20_000).unwrap().with_gateway_replicas(3, 20_000).unwrap().with_postgres(20_000).unwrap();
        let gateway = layout.gateway.as_ref().unwrap();
        assert!(gateway.ha);
        let ids: Vec<&str> = gateway.replicas.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["g1", "g2", "g3"]);
        // 2 clusters x 3 replicas x 2 ports = 12 ports from 20000; then 2 per gateway replica.
        let ports: Vec<(u16, u16)> = gateway.replicas.iter().map(|r| (r.port, r.ops_port)).collect();
        assert_eq!(ports, [(20_012, 20_013), (20_014, 20_015), (20_016, 20_017)]);
        assert_eq!(gateway.addrs(), ["127.0.0.1:20012", "127.0.0.1:20014", "127.0.0.1:20016"]);
        assert_eq!(layout.postgres, Some(PostgresLayout { port: 20_018 }));
    }

    #[test]
    fn free_ports_for_gateway_replicas_and_postgres_are_all_distinct() {
        let layout = Layout::new(1, 1, 0).unwrap().with_gateway_replicas(3, 0).unwrap().with_postgres(0).unwrap();
        let mut ports: Vec<u16> = layout.all().flat_map(|(_, r)| [r.port, r.ops_port]).collect();
        let gateway = layout.gateway.as_ref().unwrap();
        ports.extend(gateway.replicas.iter().flat_map(|r| [r.port, r.ops_port]));
        ports.push(layout.postgres.as_ref().unwrap().port);
        let count = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), count, "a port was handed out twice");
    }

    #[test]
    fn one_gateway_stays_main_without_ha_and_without_postgres() {
        let layout = Layout::new(1, 1, 20_000).unwrap().with_gateway(20_000).unwrap();
        let gateway = layout.gateway.as_ref().unwrap();
        assert!(!gateway.ha);
        assert_eq!(gateway.replicas.len(), 1);
        assert_eq!(gateway.first().id, SINGLE_GATEWAY_ID);
        assert_eq!(gateway.addr(), "127.0.0.1:20002");
        assert_eq!(layout.postgres, None);
        assert!(Layout::new(1, 1, 0).unwrap().with_gateway_replicas(0, 0).is_err());
    }

    #[test]
    fn a_layout_json_written_before_replicas_reads_as_the_single_gateway() {
        let old = r#"{"clusters": [], "gateway": {"port": 7000, "ops_port": 7001, "ip": "10.0.0.1",
            "postgres_url": null, "timing": null, "store_fsync": false}}"#;
        let layout: Layout = serde_json::from_str(old).unwrap();
        let gateway = layout.gateway.as_ref().unwrap();
        assert_eq!(gateway.replicas.len(), 1);
        assert_eq!(gateway.first().id, SINGLE_GATEWAY_ID);
        assert_eq!(gateway.addr(), "10.0.0.1:7000");
        assert_eq!(gateway.ops_addr(), "10.0.0.1:7001");
        assert_eq!(gateway.store_fsync, Some(false));
        assert!(!gateway.ha);
        // And the new form reads back as written.
        let again: Layout = serde_json::from_slice(&serde_json::to_vec(&layout).unwrap()).unwrap();
        assert_eq!(again, layout);
        let replicas = Layout::new(1, 1, 0).unwrap().with_gateway_replicas(2, 0).unwrap().with_postgres(0).unwrap();
        let again: Layout = serde_json::from_slice(&serde_json::to_vec(&replicas).unwrap()).unwrap();
        assert_eq!(again, replicas);
    }
}
