//! The running children of a mesh: its PostgreSQL server and gateway replicas (when the layout
//! has them) and every replica.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::ExitStatus;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use atoll_api::client::NodeClient;
use atoll_api::gateway::ClusterState;
use atoll_api::gateway::JoinTokenRequest;
use atoll_api::gateway::LinkState;
use atoll_api::gateway::Matrix;
use atoll_api::gateway_addrs::GatewayAddrs;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::node::Role;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TrustRoots;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::Deserialize;
use serde::Serialize;

use super::files::MeshDir;
use super::layout::ClusterLayout;
use super::layout::EXIT_WITH_PARENT_ENV;
use super::layout::GatewayReplicaLayout;
use super::layout::Layout;
use super::layout::replica_name;
use super::postgres::Postgres;
use super::postgres::PostgresSettings;

/// Join tokens written for a mesh's replicas live this long: enough for a slow first start.
const JOIN_TOKEN_TTL: Duration = Duration::from_secs(600);

/// One entry of `nodes.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub cluster: String,
    pub node_id: u64,
    pub addr: String,
    pub ops_addr: String,
    pub pid: Option<u32>,
}

/// `gateway.json`: where the mesh's gateway listens and its pid while it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayRecord {
    pub addr: String,
    pub ops_addr: String,
    pub pid: Option<u32>,
}

/// One entry of `gateways.json` (a mesh of gateway replicas): a replica, where it listens and
/// its pid while it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayReplicaRecord {
    pub id: String,
    pub addr: String,
    pub ops_addr: String,
    pub pid: Option<u32>,
}

/// How long a starting gateway replica may take to serve.
const GATEWAY_START_TIMEOUT: Duration = Duration::from_secs(30);

/// A cluster's leader as seen when the mesh became ready.
#[derive(Debug, Clone)]
pub struct ClusterLeader {
    pub cluster: String,
    pub leader: u64,
    pub addr: String,
    pub term: u64,
}

/// The running children of a mesh. Dropping it SIGKILLs any child still running, then stops
/// its PostgreSQL server.
pub struct Mesh {
    pub dir: MeshDir,
    pub layout: Layout,
    exe: PathBuf,
    /// Gateway replicas by their index in the layout.
    gateways: BTreeMap<usize, Child>,
    children: BTreeMap<(String, u64), Child>,
    postgres: Option<Postgres>,
}

impl Mesh {
    /// Write the mesh's files; start its PostgreSQL server (when it has one); start the first
    /// gateway replica and wait until it serves (it creates the tables and the admin token), then
    /// the others; hand every replica without a certificate a join token, and start every
    /// replica.
    pub async fn start(dir: MeshDir, layout: Layout, exe: PathBuf) -> anyhow::Result<Self> {
        dir.materialize(&layout)?;
        let mut mesh = Self { dir, layout, exe, gateways: BTreeMap::new(), children: BTreeMap::new(), postgres: None };
        if let Some(postgres) = &mesh.layout.postgres {
            let gateways = mesh.layout.gateway.as_ref().map_or(1, |g| g.replicas.len()) as u32;
            let settings = PostgresSettings {
                dir: mesh.dir.postgres_dir(),
                ip: "127.0.0.1".to_string(),
                port: postgres.port,
                fsync: true,
                // Each gateway's pool (16 by default) and its listener, with room to spare.
                max_connections: (32 * gateways + 20).max(100),
                netns: None,
                allow_from: Vec::new(),
                bin: None,
            };
            let started = tokio::task::spawn_blocking(move || Postgres::start(settings)).await?;
            mesh.postgres = Some(started.context("starting the mesh's PostgreSQL server")?);
        }
        let gateways = mesh.layout.gateway.as_ref().map_or(0, |g| g.replicas.len());
        if gateways > 0 {
            mesh.spawn_gateway(0)?;
            mesh.wait_for_gateway(0, GATEWAY_START_TIMEOUT).await?;
            for index in 1..gateways {
                mesh.spawn_gateway(index)?;
            }
            for index in 1..gateways {
                mesh.wait_for_gateway(index, GATEWAY_START_TIMEOUT).await?;
            }
        }
        let all: Vec<(String, u64)> = mesh.layout.all().map(|(c, r)| (c.name.clone(), r.id)).collect();
        for (cluster, id) in &all {
            mesh.prepare_enrollment(cluster, *id).await?;
        }
        for (cluster, id) in all {
            mesh.spawn(&cluster, id)?;
        }
        Ok(mesh)
    }

    fn open_log(path: &Path) -> anyhow::Result<fs::File> {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))
    }

    /// Start `atoll ARGS` (or `exe ARGS`) with its output appended to `log`, inside `netns` when
    /// given (`ip netns exec` execs in place, so the pid is the atoll process's own).
    fn command(
        &self,
        exe: Option<&Path>,
        netns: Option<&str>,
        env: &[(String, String)],
        args: &[&std::ffi::OsStr],
        log: &Path,
    ) -> anyhow::Result<Child> {
        let log = Self::open_log(log)?;
        let exe = exe.unwrap_or(&self.exe);
        let mut command = match netns {
            Some(netns) => {
                let mut command = std::process::Command::new("ip");
                command.args(["netns", "exec", netns]).arg(exe);
                command
            }
            None => std::process::Command::new(exe),
        };
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(EXIT_WITH_PARENT_ENV, "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))
    }

    /// Gateway replica `index` of the layout.
    fn gateway_replica(&self, index: usize) -> anyhow::Result<&GatewayReplicaLayout> {
        let gateway = self.layout.gateway.as_ref().context("this mesh has no gateway")?;
        gateway.replicas.get(index).with_context(|| format!("this mesh has no gateway replica {index}"))
    }

    /// How gateway replica `index` is named in messages: `the gateway`, or `gateway g2`.
    pub fn gateway_name(&self, index: usize) -> String {
        match self.layout.gateway.as_ref() {
            Some(g) if g.ha => format!("gateway {}", g.replicas.get(index).map_or("?", |r| r.id.as_str())),
            _ => "the gateway".to_string(),
        }
    }

    /// The log of gateway replica `index`.
    pub fn gateway_log(&self, index: usize) -> anyhow::Result<PathBuf> {
        Ok(self.dir.gateway_log(&self.gateway_replica(index)?.id))
    }

    /// Start (or restart) gateway replica `index` (0: the only one without replicas); returns
    /// its pid.
    pub fn spawn_gateway(&mut self, index: usize) -> anyhow::Result<u32> {
        let replica = self.gateway_replica(index)?.clone();
        self.kill_gateway(index);
        let gateway = self.layout.gateway.as_ref().context("this mesh has no gateway")?;
        let (env, exe) = (gateway.env.clone(), gateway.exe.clone());
        let config = self.dir.gateway_config(&replica.id);
        let child = self.command(
            exe.as_deref(),
            replica.place.netns.as_deref(),
            &env,
            &["gateway".as_ref(), "--config".as_ref(), config.as_os_str()],
            &self.dir.gateway_log(&replica.id),
        )?;
        let pid = child.id();
        self.gateways.insert(index, child);
        self.write_nodes_json()?;
        Ok(pid)
    }

    /// SIGKILL gateway replica `index`, if running, and reap it.
    pub fn kill_gateway(&mut self, index: usize) {
        if let Some(mut old) = self.gateways.remove(&index) {
            let _ = old.kill();
            let _ = old.wait();
            let _ = self.write_nodes_json();
        }
    }

    pub fn gateway_pid(&self, index: usize) -> Option<u32> {
        self.gateways.get(&index).map(Child::id)
    }

    /// Send `signal` to running gateway replica `index`.
    pub fn signal_gateway(&self, index: usize, signal: Signal) -> anyhow::Result<()> {
        let name = self.gateway_name(index);
        let pid = self.gateway_pid(index).with_context(|| format!("{name} is not running"))?;
        nix::sys::signal::kill(Pid::from_raw(pid as i32), signal).with_context(|| format!("signalling {name}"))
    }

    /// Gateway replicas that exited since the last call, by index, with their status; they are
    /// forgotten.
    pub fn reap_gateways(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut exited = Vec::new();
        for (index, child) in &mut self.gateways {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push((*index, status));
            }
        }
        for (index, _) in &exited {
            self.gateways.remove(index);
        }
        if !exited.is_empty() {
            let _ = self.write_nodes_json();
        }
        exited
    }

    fn gateway_exited_error(&self, index: usize, status: ExitStatus) -> anyhow::Error {
        let name = self.gateway_name(index);
        match self.gateway_log(index) {
            Ok(log) => anyhow::anyhow!("{name} exited ({status}); end of {}:\n{}", log.display(), tail(&log, 15)),
            Err(e) => anyhow::anyhow!("{name} exited ({status}) ({e:#})"),
        }
    }

    /// The mesh's own PostgreSQL server, when it has one.
    pub fn postgres(&self) -> Option<&Postgres> {
        self.postgres.as_ref()
    }

    /// A client of the mesh's gateway holding the admin token the gateway wrote at first start,
    /// over every replica (those running first), moving to the next when one fails.
    pub fn gateway_client(&self) -> anyhow::Result<GatewayClient> {
        let gateway = self.layout.gateway.as_ref().context("this mesh has no gateway")?;
        let (running, stopped): (Vec<_>, Vec<_>) =
            gateway.replicas.iter().enumerate().partition(|(index, _)| self.gateways.contains_key(index));
        let addrs: Vec<String> = running.into_iter().chain(stopped).map(|(_, r)| r.addr()).collect();
        self.client_over(GatewayAddrs::new(&addrs))
    }

    /// A client of gateway replica `index` alone, holding the admin token.
    pub fn gateway_client_at(&self, index: usize) -> anyhow::Result<GatewayClient> {
        let addr = self.gateway_replica(index)?.addr();
        self.client_over(GatewayAddrs::new(&[addr]))
    }

    fn client_over(&self, addrs: GatewayAddrs) -> anyhow::Result<GatewayClient> {
        let token_file = self.dir.admin_token();
        let token = fs::read_to_string(&token_file)
            .with_context(|| format!("reading the admin token {}", token_file.display()))?
            .trim()
            .to_string();
        let trust = TrustRoots::load(&self.dir.certs().join("ca.pem"))?;
        Ok(GatewayClient::with_addrs(
            trust.anonymous_client_config(ServerPolicy::Gateway)?,
            addrs,
            Some(token),
            Duration::from_secs(5),
        )?)
    }

    /// Wait until gateway replica `index` answers `GET /v1/ca` over TLS.
    pub async fn wait_for_gateway(&mut self, index: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some((exited, status)) = self.reap_gateways().into_iter().next() {
                return Err(self.gateway_exited_error(exited, status));
            }
            let last_error = match self.gateway_client_at(index) {
                Ok(client) => match client.ca().await {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{} did not serve within {timeout:?} ({last_error}); see {}",
                    self.gateway_name(index),
                    self.gateway_log(index)?.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// With a gateway: when the replica has no usable certificate, write it a fresh join token
    /// so it enrolls at its next start. Nothing to do for standalone meshes.
    pub async fn prepare_enrollment(&self, cluster: &str, id: u64) -> anyhow::Result<()> {
        if self.layout.gateway.is_none() || !self.dir.needs_enrollment(cluster, id)? {
            return Ok(());
        }
        let labels = self.layout.cluster(cluster).map(|c| c.labels.clone()).unwrap_or_default();
        let created = self
            .gateway_client()?
            .join_token(&JoinTokenRequest {
                cluster: cluster.to_string(),
                labels,
                ttl_s: Some(JOIN_TOKEN_TTL.as_secs()),
                replicas: None,
            })
            .await
            .with_context(|| format!("creating a join token for {}", replica_name(cluster, id)))?;
        let path = self.dir.join_token(cluster, id);
        crate::postgres::write_private(&path, &format!("{}\n", created.token))
    }

    /// Start (or restart) one replica; returns its pid. A replica of a gateway mesh that has no
    /// certificate needs [`Mesh::prepare_enrollment`] first.
    pub fn spawn(&mut self, cluster: &str, id: u64) -> anyhow::Result<u32> {
        let netns = self
            .layout
            .replica(cluster, id)
            .with_context(|| format!("no replica {cluster}-{id} in this mesh"))?
            .place
            .netns
            .clone();
        if let Some(mut old) = self.children.remove(&(cluster.to_string(), id)) {
            let _ = old.kill();
            let _ = old.wait();
        }
        let config = self.dir.agent_config(cluster, id);
        let child = self.command(
            None,
            netns.as_deref(),
            &[],
            &["agent".as_ref(), "--config".as_ref(), config.as_os_str()],
            &self.dir.log_file(cluster, id),
        )?;
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

    /// Replicas that exited since the last call, with their status; they are forgotten.
    pub fn reap(&mut self) -> Vec<((String, u64), ExitStatus)> {
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

    /// SIGTERM every child, wait up to `grace`, then SIGKILL what is left; then stop the
    /// PostgreSQL server. Replicas stop before the gateway replicas, so their last reports are
    /// not refused, and those before their database.
    pub async fn stop_all(&mut self, grace: Duration) {
        let mut replicas: Vec<(String, Child)> = std::mem::take(&mut self.children)
            .into_iter()
            .map(|((c, id), child)| (replica_name(&c, id), child))
            .collect();
        stop_children(&mut replicas, grace).await;
        let _ = self.write_nodes_json();
        let mut gateways: Vec<(String, Child)> = std::mem::take(&mut self.gateways)
            .into_iter()
            .map(|(index, child)| (self.gateway_name(index), child))
            .collect();
        if !gateways.is_empty() {
            stop_children(&mut gateways, grace).await;
            let _ = self.write_nodes_json();
        }
        if let Some(postgres) = self.postgres.take() {
            let stopped = tokio::task::spawn_blocking(move || postgres.stop()).await;
            if let Ok(Err(e)) = stopped {
                tracing::warn!(error = %format!("{e:#}"), "stopping PostgreSQL");
            }
        }
    }

    /// Write `nodes.json` (the replicas) and, with a gateway, `gateway.json` (the single gateway)
    /// or `gateways.json` (gateway replicas), atomically.
    pub fn write_nodes_json(&self) -> anyhow::Result<()> {
        match &self.layout.gateway {
            Some(gateway) if gateway.ha => {
                let records: Vec<GatewayReplicaRecord> = gateway
                    .replicas
                    .iter()
                    .enumerate()
                    .map(|(index, r)| GatewayReplicaRecord {
                        id: r.id.clone(),
                        addr: r.addr(),
                        ops_addr: r.ops_addr(),
                        pid: self.gateway_pid(index),
                    })
                    .collect();
                write_atomic(&self.dir.gateways_json(), &serde_json::to_vec_pretty(&records)?)?;
            }
            Some(gateway) => {
                let record =
                    GatewayRecord { addr: gateway.addr(), ops_addr: gateway.ops_addr(), pid: self.gateway_pid(0) };
                write_atomic(&self.dir.gateway_json(), &serde_json::to_vec_pretty(&record)?)?;
            }
            None => {}
        }
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
        write_atomic(&self.dir.nodes_json(), &serde_json::to_vec_pretty(&records)?)
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

    /// Fail, with the end of its log, if a child exited.
    fn check_children(&mut self) -> anyhow::Result<()> {
        if let Some((index, status)) = self.reap_gateways().into_iter().next() {
            return Err(self.gateway_exited_error(index, status));
        }
        if let Some(((cluster, id), status)) = self.reap().into_iter().next() {
            let log = self.dir.log_file(&cluster, id);
            anyhow::bail!(
                "{} exited ({status}) before the mesh was ready; end of {}:\n{}",
                replica_name(&cluster, id),
                log.display(),
                tail(&log, 15)
            );
        }
        Ok(())
    }

    /// Wait until every cluster has a leader that all its running replicas agree on; fail at
    /// once, with the end of its log, if a child exits meanwhile.
    pub async fn wait_for_leaders(
        &mut self,
        client: &NodeClient,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ClusterLeader>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.check_children()?;
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

    /// Wait until the gateway lists every cluster of the layout as alive with a leader.
    pub async fn wait_for_registration(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Vec<atoll_api::gateway::ClusterInfo>> {
        let client = self.gateway_client()?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.check_children()?;
            let missing: Vec<String> = match client.clusters().await {
                Ok(clusters) => {
                    let missing = self
                        .layout
                        .clusters
                        .iter()
                        .filter(|want| {
                            !clusters
                                .iter()
                                .any(|c| c.name == want.name && c.state == ClusterState::Alive && c.leader.is_some())
                        })
                        .map(|c| c.name.clone())
                        .collect::<Vec<_>>();
                    if missing.is_empty() {
                        return Ok(clusters);
                    }
                    missing
                }
                Err(e) => vec![format!("(gateway: {e})")],
            };
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "cluster(s) {} not registered with the gateway after {timeout:?}; see {}",
                    missing.join(", "),
                    self.dir.root.join("logs").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until the gateway's matrix has a settled state (reachable or unreachable) for every
    /// pair of clusters.
    pub async fn wait_for_matrix(&mut self, timeout: Duration) -> anyhow::Result<Matrix> {
        let client = self.gateway_client()?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.check_children()?;
            let unsettled = match client.matrix().await {
                Ok(matrix) => {
                    let unsettled: Vec<String> = matrix
                        .cells
                        .iter()
                        .filter(|c| matches!(c.state, LinkState::Unknown | LinkState::Suspect))
                        .map(|c| format!("{}->{} ({})", c.from, c.to, c.state))
                        .collect();
                    let complete = matrix.clusters.len() == self.layout.clusters.len();
                    if unsettled.is_empty() && complete {
                        return Ok(matrix);
                    }
                    unsettled
                }
                Err(e) => vec![format!("(gateway: {e})")],
            };
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("matrix not settled after {timeout:?}: {}", unsettled.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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
                None => seen = Some((leader, status.term.0)),
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

/// SIGTERM the children, wait up to `grace` for all, then SIGKILL what is left.
async fn stop_children(children: &mut [(String, Child)], grace: Duration) {
    for (_, child) in children.iter() {
        let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline && children.iter_mut().any(|(_, c)| matches!(c.try_wait(), Ok(None))) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (name, child) in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            tracing::warn!(process = %name, "did not stop in time; killing it");
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temp = path.with_extension("json.tmp");
    fs::write(&temp, bytes).with_context(|| format!("writing {}", temp.display()))?;
    fs::rename(&temp, path).with_context(|| format!("renaming {}", temp.display()))
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for child in self.children.values_mut().chain(self.gateways.values_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Remove a directory's contents after checking it is a mesh directory (or empty); a PostgreSQL
/// server of the mesh that a killed run left running is stopped first.
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
    super::postgres::stop_left_running(&MeshDir::new(dir).postgres_dir())?;
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// The last `lines` lines of a file (for error messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
