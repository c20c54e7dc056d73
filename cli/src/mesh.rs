//! A local mesh of replicas as child processes: the layout (clusters, ids, ports), the files it
//! needs (CA, certificates, agent configs, the CLI config), and the children themselves.
//!
//! Used by `atoll dev`, the benchmarks and the multi-process tests, so all three run exactly
//! what an operator runs: `atoll agent --config FILE` processes talking mTLS on 127.0.0.1.
//!
//! ```text
//! DIR/layout.json            clusters, replicas and ports (reused by the next run)
//! DIR/atoll.yaml             CLI config: replica addresses, operator credentials
//! DIR/nodes.json             [{cluster, node_id, addr, ops_addr, pid}], kept current
//! DIR/certs/                 ca.pem, ca-key.pem, admin.pem, <cluster>-<id>.pem, ...
//! DIR/<cluster>-<id>/        agent.yaml and data/
//! DIR/logs/<cluster>-<id>.log
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use atoll_api::Identity;
use atoll_api::client::NodeClient;
use atoll_api::node::Role;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::KeyAlgorithm;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::Deserialize;
use serde::Serialize;

/// Environment variable telling an agent to exit when the process that started it dies.
pub const EXIT_WITH_PARENT_ENV: &str = "ATOLL_EXIT_WITH_PARENT";

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
}

impl ReplicaLayout {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn ops_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ops_port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLayout {
    pub name: String,
    pub labels: Vec<String>,
    pub replicas: Vec<ReplicaLayout>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub clusters: Vec<ClusterLayout>,
    #[serde(default)]
    pub raft: RaftKnobs,
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

/// `count` ports: consecutive from `base`, or free ones picked by the kernel when `base` is 0.
pub fn allocate_ports(count: usize, base: u16) -> anyhow::Result<Vec<u16>> {
    if base != 0 {
        let last = u32::from(base) + count as u32;
        anyhow::ensure!(last <= u32::from(u16::MAX), "--base-port {base} leaves no room for {count} ports");
        return Ok((0..count as u16).map(|i| base + i).collect());
    }
    // Hold every listener until all are picked, so no port is handed out twice.
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("picking free ports")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
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
                    .map(|id| ReplicaLayout { id, port: next.next().unwrap_or(0), ops_port: next.next().unwrap_or(0) })
                    .collect(),
            })
            .collect();
        Ok(Self { clusters, raft: RaftKnobs::default() })
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

/// Paths inside a mesh directory.
#[derive(Debug, Clone)]
pub struct MeshDir {
    pub root: PathBuf,
}

impl MeshDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn layout_file(&self) -> PathBuf {
        self.root.join("layout.json")
    }
    pub fn certs(&self) -> PathBuf {
        self.root.join("certs")
    }
    pub fn replica_dir(&self, cluster: &str, id: u64) -> PathBuf {
        self.root.join(replica_name(cluster, id))
    }
    pub fn agent_config(&self, cluster: &str, id: u64) -> PathBuf {
        self.replica_dir(cluster, id).join("agent.yaml")
    }
    pub fn data_dir(&self, cluster: &str, id: u64) -> PathBuf {
        self.replica_dir(cluster, id).join("data")
    }
    pub fn log_file(&self, cluster: &str, id: u64) -> PathBuf {
        self.root.join("logs").join(format!("{}.log", replica_name(cluster, id)))
    }
    pub fn cli_config(&self) -> PathBuf {
        self.root.join("atoll.yaml")
    }
    pub fn nodes_json(&self) -> PathBuf {
        self.root.join("nodes.json")
    }

    /// The layout stored here by an earlier run, if any.
    pub fn stored_layout(&self) -> anyhow::Result<Option<Layout>> {
        match fs::read(self.layout_file()) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).with_context(|| format!("reading {}", self.layout_file().display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.layout_file().display())),
        }
    }

    /// Write certificates (kept when present), agent configs, the CLI config and the layout.
    pub fn materialize(&self, layout: &Layout) -> anyhow::Result<()> {
        let certs = self.certs();
        fs::create_dir_all(&certs).with_context(|| format!("creating {}", certs.display()))?;
        fs::create_dir_all(self.root.join("logs"))?;
        let ca = if certs.join("ca.pem").exists() {
            CertificateAuthority::load(&certs)?
        } else {
            let ca = CertificateAuthority::generate("atoll dev mesh CA", Duration::from_secs(10 * 365 * 86_400))?;
            ca.save(&certs)?;
            ca
        };
        let year = Duration::from_secs(365 * 86_400);
        if !certs.join("admin.pem").exists() {
            ca.issue(&Identity::Operator { name: "admin".into() }, year, KeyAlgorithm::EcdsaP256)?
                .save(&certs, "admin")?;
        }
        for (cluster, replica) in layout.all() {
            let name = replica_name(&cluster.name, replica.id);
            if !certs.join(format!("{name}.pem")).exists() {
                let identity = Identity::node(cluster.name.parse()?, replica.id);
                ca.issue(&identity, year, KeyAlgorithm::EcdsaP256)?.save(&certs, &name)?;
            }
            let dir = self.replica_dir(&cluster.name, replica.id);
            fs::create_dir_all(&dir)?;
            fs::write(dir.join("agent.yaml"), agent_yaml(layout, cluster, replica))?;
        }
        fs::write(self.cli_config(), cli_yaml(layout))?;
        fs::write(self.layout_file(), serde_json::to_vec_pretty(layout)?)?;
        Ok(())
    }
}

fn agent_yaml(layout: &Layout, cluster: &ClusterLayout, replica: &ReplicaLayout) -> String {
    let name = replica_name(&cluster.name, replica.id);
    let mut out = String::new();
    out.push_str("# Written by atoll from layout.json; regenerated at every start.\n");
    out.push_str(&format!("cluster:\n  name: {}\n  labels: [{}]\n", cluster.name, cluster.labels.join(", ")));
    out.push_str(&format!("node:\n  id: {}\n  data_dir: data\n", replica.id));
    out.push_str(&format!("listen: \"{}\"\nops_listen: \"{}\"\n", replica.addr(), replica.ops_addr()));
    out.push_str("peers:\n");
    for peer in &cluster.replicas {
        out.push_str(&format!("  - {{id: {}, addr: \"{}\"}}\n", peer.id, peer.addr()));
    }
    out.push_str(&format!(
        "tls:\n  ca: ../certs/ca.pem\n  cert: ../certs/{name}.pem\n  key: ../certs/{name}-key.pem\n"
    ));
    let raft = &layout.raft;
    out.push_str("raft:\n");
    if let Some(t) = raft.timing {
        out.push_str(&format!(
            "  heartbeat_ms: {}\n  election_timeout_min_ms: {}\n  election_timeout_max_ms: {}\n",
            t.heartbeat_ms, t.election_timeout_min_ms, t.election_timeout_max_ms
        ));
    }
    if let Some(n) = raft.snapshot_after_entries {
        out.push_str(&format!("  snapshot_after_entries: {n}\n"));
    }
    if let Some(n) = raft.keep_entries_after_snapshot {
        out.push_str(&format!("  keep_entries_after_snapshot: {n}\n"));
    }
    out.push_str(&format!("  fast_failover: {}\n", raft.fast_failover));
    out
}

fn cli_yaml(layout: &Layout) -> String {
    let mut out = String::from("# atoll CLI config written by atoll: replica addresses and operator credentials.\n");
    out.push_str("gateway: []\nnodes:\n");
    for (cluster, replica) in layout.all() {
        out.push_str(&format!("  - {{cluster: {}, id: {}, addr: \"{}\"}}\n", cluster.name, replica.id, replica.addr()));
    }
    out.push_str("tls:\n  ca: certs/ca.pem\n  cert: certs/admin.pem\n  key: certs/admin-key.pem\n");
    out
}

/// One entry of `nodes.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub cluster: String,
    pub node_id: u64,
    pub addr: String,
    pub ops_addr: String,
    pub pid: Option<u32>,
}

/// A cluster's leader as seen when the mesh became ready.
#[derive(Debug, Clone)]
pub struct ClusterLeader {
    pub cluster: String,
    pub leader: u64,
    pub addr: String,
    pub term: u64,
}

/// The running children of a mesh. Dropping it SIGKILLs any child still running.
pub struct Mesh {
    pub dir: MeshDir,
    pub layout: Layout,
    exe: PathBuf,
    children: BTreeMap<(String, u64), Child>,
}

impl Mesh {
    /// Write the mesh's files and start every replica.
    pub fn start(dir: MeshDir, layout: Layout, exe: PathBuf) -> anyhow::Result<Self> {
        dir.materialize(&layout)?;
        let mut mesh = Self { dir, layout, exe, children: BTreeMap::new() };
        let all: Vec<(String, u64)> = mesh.layout.all().map(|(c, r)| (c.name.clone(), r.id)).collect();
        for (cluster, id) in all {
            mesh.spawn(&cluster, id)?;
        }
        Ok(mesh)
    }

    /// Start (or restart) one replica; returns its pid.
    pub fn spawn(&mut self, cluster: &str, id: u64) -> anyhow::Result<u32> {
        anyhow::ensure!(self.layout.replica(cluster, id).is_some(), "no replica {cluster}-{id} in this mesh");
        if let Some(mut old) = self.children.remove(&(cluster.to_string(), id)) {
            let _ = old.kill();
            let _ = old.wait();
        }
        let log_path = self.dir.log_file(cluster, id);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let child = std::process::Command::new(&self.exe)
            .arg("agent")
            .arg("--config")
            .arg(self.dir.agent_config(cluster, id))
            .env(EXIT_WITH_PARENT_ENV, "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        let pid = child.id();
        self.children.insert((cluster.to_string(), id), child);
        self.write_nodes_json()?;
        Ok(pid)
    }

    pub fn pid(&self, cluster: &str, id: u64) -> Option<u32> {
        self.children.get(&(cluster.to_string(), id)).map(Child::id)
    }

    /// Send `signal` to a running replica.
    pub fn signal(&self, cluster: &str, id: u64, signal: Signal) -> anyhow::Result<()> {
        let pid = self.pid(cluster, id).with_context(|| format!("{} is not running", replica_name(cluster, id)))?;
        nix::sys::signal::kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("signalling {}", replica_name(cluster, id)))
    }

    /// SIGKILL a replica and reap it.
    pub fn kill(&mut self, cluster: &str, id: u64) -> anyhow::Result<()> {
        let mut child = self
            .children
            .remove(&(cluster.to_string(), id))
            .with_context(|| format!("{} is not running", replica_name(cluster, id)))?;
        child.kill()?;
        child.wait()?;
        self.write_nodes_json()
    }

    /// Children that exited since the last call, with their status; they are forgotten.
    pub fn reap(&mut self) -> Vec<((String, u64), std::process::ExitStatus)> {
        let mut exited = Vec::new();
        for (key, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push((key.clone(), status));
            }
        }
        for (key, _) in &exited {
            self.children.remove(key);
        }
        if !exited.is_empty() {
            let _ = self.write_nodes_json();
        }
        exited
    }

    /// SIGTERM every child, wait up to `grace`, then SIGKILL what is left.
    pub async fn stop_all(&mut self, grace: Duration) {
        for child in self.children.values() {
            let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline
            && self.children.values_mut().any(|c| matches!(c.try_wait(), Ok(None)))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (key, child) in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                tracing::warn!(replica = %replica_name(&key.0, key.1), "did not stop in time; killing it");
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.children.clear();
        let _ = self.write_nodes_json();
    }

    pub fn write_nodes_json(&self) -> anyhow::Result<()> {
        let records: Vec<NodeRecord> = self
            .layout
            .all()
            .map(|(c, r)| NodeRecord {
                cluster: c.name.clone(),
                node_id: r.id,
                addr: r.addr(),
                ops_addr: r.ops_addr(),
                pid: self.pid(&c.name, r.id),
            })
            .collect();
        let path = self.dir.nodes_json();
        let temp = path.with_extension("json.tmp");
        fs::write(&temp, serde_json::to_vec_pretty(&records)?)?;
        fs::rename(&temp, &path)?;
        Ok(())
    }

    /// Every cluster's agreed leader now, or the names of clusters without one.
    pub async fn leaders_now(&self, client: &NodeClient) -> Result<Vec<ClusterLeader>, Vec<String>> {
        let mut leaders = Vec::new();
        let mut missing = Vec::new();
        for cluster in &self.layout.clusters {
            match self.agreed_leader(client, cluster).await {
                Some(leader) => leaders.push(leader),
                None => missing.push(cluster.name.clone()),
            }
        }
        if missing.is_empty() { Ok(leaders) } else { Err(missing) }
    }

    /// Wait until every cluster has a leader that all its running replicas agree on; fail at
    /// once, with the end of its log, if a replica exits meanwhile.
    pub async fn wait_for_leaders(
        &mut self,
        client: &NodeClient,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ClusterLeader>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(((cluster, id), status)) = self.reap().into_iter().next() {
                let log = self.dir.log_file(&cluster, id);
                anyhow::bail!(
                    "{} exited ({status}) before the mesh was ready; end of {}:\n{}",
                    replica_name(&cluster, id),
                    log.display(),
                    tail(&log, 15)
                );
            }
            match self.leaders_now(client).await {
                Ok(leaders) => return Ok(leaders),
                Err(missing) if tokio::time::Instant::now() >= deadline => anyhow::bail!(
                    "no agreed leader in cluster(s) {} after {timeout:?}; see {}",
                    missing.join(", "),
                    self.dir.root.join("logs").display()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn agreed_leader(&self, client: &NodeClient, cluster: &ClusterLayout) -> Option<ClusterLeader> {
        let mut seen: Option<(u64, u64)> = None;
        let mut leader_confirmed = false;
        for replica in &cluster.replicas {
            if self.pid(&cluster.name, replica.id).is_none() {
                continue;
            }
            let status = client.status(&replica.addr()).await.ok()?;
            let leader = status.leader.as_ref()?.id;
            match seen {
                None => seen = Some((leader, status.term)),
                Some((l, _)) if l != leader => return None,
                Some(_) => {}
            }
            if status.node_id == leader && status.role == Role::Leader {
                leader_confirmed = true;
            }
        }
        let (leader, term) = seen?;
        if !leader_confirmed {
            return None;
        }
        let addr = self.layout.replica(&cluster.name, leader)?.addr();
        Some(ClusterLeader { cluster: cluster.name.clone(), leader, addr, term })
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Remove a directory's contents after checking it is a mesh directory (or empty).
pub fn wipe(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let looks_like_mesh = dir.join("layout.json").exists() || fs::read_dir(dir)?.next().is_none();
    anyhow::ensure!(
        looks_like_mesh,
        "{} does not look like an atoll mesh directory (no layout.json); not deleting it",
        dir.display()
    );
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// The last `lines` lines of a file (for error messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
