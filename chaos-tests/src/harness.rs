//! A mesh of real `atoll` processes inside a [`crate::sandbox::Sandbox`]: the gateway (or each
//! gateway replica, and then their PostgreSQL server) and every replica in a namespace of its
//! own, the suite's clients in one more. The mesh itself is the one `atoll dev` and the
//! integration tests run ([`atoll_mesh::Mesh`]), placed on the sandbox's addresses.

use std::net::Ipv4Addr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use atoll_api::client::NodeClient;
use atoll_api::gateway_addrs::GatewayAddrs;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::node::Role;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsFiles;
use atoll_api::tls::TlsIdentity;
use atoll_api::tls::TrustRoots;
use atoll_mesh::GatewayTiming;
use atoll_mesh::Layout;
use atoll_mesh::LeaseTiming;
use atoll_mesh::Mesh;
use atoll_mesh::MeshDir;
use atoll_mesh::Placement;
use atoll_mesh::replica_name;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::database::Database;
use crate::history::History;

/// Ports every process uses on its own address.
const AGENT_PORT: u16 = 7000;
const GATEWAY_PORT: u16 = 8443;
/// How long one client request of the workload may take before its outcome is unknown.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The directory of a run that its jobs may write (the ledger is in it).
pub const SHARED: &str = "shared";

pub const CLIENT: &str = "client";
/// The only gateway of a mesh without gateway replicas (replicas are named by their ids: `g1`).
pub const GATEWAY: &str = "gateway";
/// The namespace of the delaying proxy.
pub const DELAY: &str = "delay";
/// The namespace of the gateway replicas' PostgreSQL server.
pub const POSTGRES: &str = "postgres";

/// Gateway timing of the suite: the integration tests' short bounds.
pub fn chaos_gateway_timing() -> GatewayTiming {
    GatewayTiming::fast()
}

/// The duties lease's timing of the suite's gateway replicas, short like the rest.
pub fn chaos_lease_timing() -> LeaseTiming {
    LeaseTiming::fast()
}

/// The role (and namespace) of gateway replica `index`: `gateway` for the only one, else its id.
pub fn gateway_role(layout: &Layout, index: usize) -> Option<String> {
    let gateway = layout.gateway.as_ref()?;
    let replica = gateway.replicas.get(index)?;
    Some(if gateway.ha { replica.id.clone() } else { GATEWAY.to_string() })
}

/// The address of each process: the client .1, the gateway .2 (or gateway replica `i`
/// .(11+i) and their database .20), the delaying proxy .3, replica `r` of the `k`-th cluster
/// 198.18.(k+1).r.
pub fn addresses(layout: &Layout) -> Vec<(String, Ipv4Addr)> {
    let mut out = vec![(CLIENT.to_string(), Ipv4Addr::new(198, 18, 0, 1))];
    match &layout.gateway {
        Some(gateway) if gateway.ha => {
            for (i, replica) in gateway.replicas.iter().enumerate() {
                out.push((replica.id.clone(), Ipv4Addr::new(198, 18, 0, 11 + i as u8)));
            }
            out.push((POSTGRES.to_string(), Ipv4Addr::new(198, 18, 0, 20)));
        }
        _ => out.push((GATEWAY.to_string(), Ipv4Addr::new(198, 18, 0, 2))),
    }
    out.push((DELAY.to_string(), Ipv4Addr::new(198, 18, 0, 3)));
    for (k, cluster) in layout.clusters.iter().enumerate() {
        for replica in &cluster.replicas {
            out.push((replica_name(&cluster.name, replica.id), Ipv4Addr::new(198, 18, k as u8 + 1, replica.id as u8)));
        }
    }
    out
}

/// The `atoll` binary: `$ATOLL_EXE`, else beside this executable (or one directory up, from
/// `target/*/deps`). Looked up (and checked against the sources) once per process, so a long
/// run is not stopped by an edit made while it goes on.
pub fn atoll_exe() -> anyhow::Result<PathBuf> {
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FOUND.get_or_init(|| find_atoll_exe().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

fn find_atoll_exe() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("ATOLL_EXE") {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe()?;
    let dir = me.parent().context("executable without a directory")?;
    let found = [dir.join("atoll"), dir.parent().map(|p| p.join("atoll")).unwrap_or_default()]
        .into_iter()
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!("no atoll binary beside {} (run `cargo build --workspace` first, or set ATOLL_EXE)", me.display())
        })?;
    // Building this crate does not rebuild the binary: refuse to test an old one.
    let built = std::fs::metadata(&found)?.modified()?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
    if let Some(newer) = newer_source(workspace, ATOLL_CRATES, built) {
        anyhow::bail!(
            "{} is older than {} (run `cargo build --workspace` first; scripts/test does)",
            found.display(),
            newer.display()
        );
    }
    Ok(found)
}

/// The suite's deliberately broken gateway ([`crate::broken`]): beside the `atoll` binary, or
/// beside this executable (or one directory up, from `target/*/deps`).
pub fn broken_gateway_exe() -> anyhow::Result<PathBuf> {
    let atoll = atoll_exe()?;
    let me = std::env::current_exe()?;
    let mut dirs: Vec<PathBuf> = atoll.parent().map(Path::to_path_buf).into_iter().collect();
    if let Some(dir) = me.parent() {
        dirs.push(dir.to_path_buf());
        dirs.extend(dir.parent().map(Path::to_path_buf));
    }
    let found = dirs.iter().map(|dir| dir.join(crate::broken::GATEWAY_EXE)).find(|candidate| candidate.is_file());
    let found = found.with_context(|| {
        format!("no {} beside {} (run `cargo build --workspace` first)", crate::broken::GATEWAY_EXE, atoll.display())
    })?;
    // Built with the suite: refuse one older than the gateway's sources, as for `atoll`.
    let built = std::fs::metadata(&found)?.modified()?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
    if let Some(newer) = newer_source(workspace, BROKEN_GATEWAY_CRATES, built) {
        anyhow::bail!(
            "{} is older than {} (run `cargo build --workspace` first; scripts/test does)",
            found.display(),
            newer.display()
        );
    }
    Ok(found)
}

/// The crates `atoll` is built from.
const ATOLL_CRATES: &[&str] = &["api", "cli", "gateway", "mesh", "node", "raft-store", "spawn", "store"];

/// The crates the suite's broken gateway is built from: the gateway's and the suite's own.
const BROKEN_GATEWAY_CRATES: &[&str] =
    &["api", "chaos-tests", "gateway", "mesh", "node", "raft-store", "spawn", "store"];

/// A Rust source of `crates` changed after `than`, if any.
fn newer_source(workspace: &Path, crates: &[&str], than: std::time::SystemTime) -> Option<PathBuf> {
    let mut stack: Vec<PathBuf> = crates.iter().map(|c| workspace.join(c).join("src")).collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && entry.metadata().and_then(|m| m.modified()).is_ok_and(|m| m > than)
            {
                return Some(path);
            }
        }
    }
    None
}

/// A running mesh in its sandbox, with the clients and the history of the run.
pub struct Chaos {
    pub mesh: Mesh,
    pub node: NodeClient,
    pub gateway: GatewayClient,
    pub history: History,
    pub seed: u64,
    pub ledger: PathBuf,
    /// The gateway replicas' database (a mesh with gateway replicas only).
    pub database: Option<Database>,
}

impl Chaos {
    /// The layout for `clusters` clusters of 3 replicas and the gateway (or `gateways` gateway
    /// replicas over PostgreSQL, whose URL the caller sets), placed in the sandbox's namespaces.
    pub fn layout(clusters: usize, gateways: usize, sandbox_netns: impl Fn(&str) -> String) -> anyhow::Result<Layout> {
        let layout = Layout::new(clusters, 3, 0)?;
        let mut layout =
            if gateways > 1 { layout.with_gateway_replicas(gateways, 0)? } else { layout.with_gateway(0)? };
        let ips = addresses(&layout);
        let ip_of = |role: &str| ips.iter().find(|(r, _)| r == role).map(|(_, ip)| ip.to_string());
        for cluster in &mut layout.clusters {
            for replica in &mut cluster.replicas {
                let role = replica_name(&cluster.name, replica.id);
                replica.port = AGENT_PORT;
                replica.ops_port = AGENT_PORT + 1;
                replica.place = Placement { ip: ip_of(&role), netns: Some(sandbox_netns(&role)) };
            }
        }
        let roles: Vec<String> = (0..gateways).filter_map(|i| gateway_role(&layout, i)).collect();
        if let Some(gateway) = &mut layout.gateway {
            gateway.timing = Some(chaos_gateway_timing());
            if gateway.ha {
                gateway.lease = Some(chaos_lease_timing());
            }
            for (replica, role) in gateway.replicas.iter_mut().zip(&roles) {
                replica.port = GATEWAY_PORT;
                replica.ops_port = GATEWAY_PORT + 1;
                replica.place = Placement { ip: ip_of(role), netns: Some(sandbox_netns(role)) };
            }
        }
        Ok(layout)
    }

    /// Start the mesh (the caller is in the client namespace) and wait until every cluster has
    /// a leader registered with the gateway and the matrix is settled.
    pub async fn start(dir: &Path, layout: Layout, seed: u64) -> anyhow::Result<Self> {
        // The workload's jobs append to the ledger: the one path outside their work directory
        // they may write (`jobs.sandbox.writable_paths`, set by [`Chaos::layout`]'s caller).
        let ledger = dir.join(SHARED).join("ledger");
        std::fs::create_dir_all(dir.join(SHARED))?;
        std::fs::write(&ledger, "")?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(SHARED), std::fs::Permissions::from_mode(0o777))?;
        std::fs::set_permissions(&ledger, std::fs::Permissions::from_mode(0o666))?;
        let mut mesh = Mesh::start(MeshDir::new(dir), layout, atoll_exe()?).await?;
        let certs = mesh.dir.certs();
        let identity = TlsIdentity::load(&TlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join("admin.pem"),
            key: certs.join("admin-key.pem"),
        })?;
        let node = NodeClient::new(&identity, ServerPolicy::AnyNode, CLIENT_TIMEOUT)?;
        let wait = Duration::from_secs(60);
        mesh.wait_for_leaders(&node, wait).await?;
        mesh.wait_for_registration(wait).await?;
        mesh.wait_for_matrix(wait).await?;
        let gateway = gateway_client(&mesh)?;
        Ok(Self { mesh, node, gateway, history: History::new(), seed, ledger, database: None })
    }

    /// The gateway's timing in this mesh.
    pub fn timing(&self) -> GatewayTiming {
        self.mesh.layout.gateway.as_ref().and_then(|g| g.timing).unwrap_or_else(chaos_gateway_timing)
    }

    pub fn clusters(&self) -> Vec<String> {
        self.mesh.layout.clusters.iter().map(|c| c.name.clone()).collect()
    }

    pub fn replica_ids(&self, cluster: &str) -> Vec<u64> {
        self.mesh.layout.cluster(cluster).map(|c| c.replicas.iter().map(|r| r.id).collect()).unwrap_or_default()
    }

    pub fn addr(&self, cluster: &str, id: u64) -> String {
        self.mesh.layout.replica(cluster, id).map(|r| r.addr()).unwrap_or_default()
    }

    /// The replica of `cluster` that says it leads, with its term (asking every running one).
    pub async fn leader(&self, cluster: &str) -> Option<(u64, u64)> {
        for id in self.replica_ids(cluster) {
            if self.mesh.pid(cluster, id).is_none() {
                continue;
            }
            if let Ok(status) = self.node.status(&self.addr(cluster, id)).await
                && status.role == Role::Leader
            {
                return Some((id, status.term.0));
            }
        }
        None
    }

    /// Wait (bounded) for a leader of `cluster`.
    pub async fn wait_leader(&self, cluster: &str, timeout: Duration) -> anyhow::Result<(u64, u64)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.leader(cluster).await {
                return Ok(found);
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "{cluster} has no leader after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Send a signal to a running process of the mesh (`gateway` or `aws-1`).
    pub fn signal(&self, role: &str, signal: Signal) -> anyhow::Result<()> {
        let pid = self.pid(role).with_context(|| format!("{role} is not running"))?;
        nix::sys::signal::kill(Pid::from_raw(pid as i32), signal).with_context(|| format!("signalling {role}"))
    }

    pub fn pid(&self, role: &str) -> Option<u32> {
        if let Some(index) = self.gateway_index(role) {
            return self.mesh.gateway_pid(index);
        }
        let (cluster, id) = split_role(role)?;
        self.mesh.pid(cluster, id)
    }

    /// The roles of the gateway (`gateway`) or of its replicas (`g1`, `g2`, ...), in order.
    pub fn gateway_roles(&self) -> Vec<String> {
        let count = self.mesh.layout.gateway.as_ref().map_or(0, |g| g.replicas.len());
        (0..count).filter_map(|i| gateway_role(&self.mesh.layout, i)).collect()
    }

    /// The index of the gateway replica whose role is `role`.
    pub fn gateway_index(&self, role: &str) -> Option<usize> {
        self.gateway_roles().iter().position(|r| r == role)
    }

    /// The address of the gateway replica whose role is `role`.
    pub fn gateway_addr(&self, role: &str) -> Option<String> {
        let index = self.gateway_index(role)?;
        Some(self.mesh.layout.gateway.as_ref()?.replicas.get(index)?.addr())
    }

    /// The role of the gateway replica listening at `addr`.
    pub fn gateway_at(&self, addr: &str) -> Option<String> {
        let gateway = self.mesh.layout.gateway.as_ref()?;
        let index = gateway.replicas.iter().position(|r| r.addr() == addr)?;
        gateway_role(&self.mesh.layout, index)
    }

    /// The gateway replica holding the duties lease now and its generation, waiting (bounded)
    /// for one: a mesh with gateway replicas only.
    pub async fn lease_holder(&self, timeout: Duration) -> anyhow::Result<(String, u64)> {
        let database = self.database.as_ref().context("this mesh has no gateway replicas")?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = match database.holder().await {
                Ok(Some((holder, generation))) if self.gateway_index(&holder).is_some() => {
                    return Ok((holder, generation));
                }
                Ok(other) => format!("holder {other:?}"),
                Err(e) => format!("{e:#}"),
            };
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "no gateway replica holds the lease ({last})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The gateway replica replica `id` of `cluster` uses now (by its role): the replica its log
    /// last said it moved to, else the first it was configured with.
    pub fn gateway_in_use(&self, cluster: &str, id: u64) -> anyhow::Result<String> {
        let log = std::fs::read_to_string(self.mesh.dir.log_file(cluster, id))?;
        let first = self.mesh.layout.gateway.as_ref().context("no gateway")?.addr();
        let addr = gateway_moved_to(&log).unwrap_or(first);
        self.gateway_at(&addr).with_context(|| format!("no gateway replica listens at {addr}"))
    }

    /// Start a replica again (it keeps its data and certificate).
    pub fn restart(&mut self, cluster: &str, id: u64) -> anyhow::Result<()> {
        self.mesh.spawn(cluster, id).map(|_| ())
    }

    /// Start gateway replica `index` (the gateway: 0) again and wait until it serves.
    pub async fn restart_gateway(&mut self, index: usize) -> anyhow::Result<()> {
        self.mesh.spawn_gateway(index)?;
        self.mesh.wait_for_gateway(index, Duration::from_secs(30)).await?;
        self.gateway = gateway_client(&self.mesh)?;
        Ok(())
    }

    /// A client of gateway replica `index` alone (admin token, the workload's timeout).
    pub fn gateway_client_at(&self, index: usize) -> anyhow::Result<GatewayClient> {
        let gateway = self.mesh.layout.gateway.as_ref().context("no gateway")?;
        let replica = gateway.replicas.get(index).with_context(|| format!("no gateway replica {index}"))?;
        client_over(&self.mesh, &[replica.addr()])
    }

    /// Every process's log, by role (the gateway's, or each gateway replica's, first).
    pub fn logs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (index, role) in self.gateway_roles().into_iter().enumerate() {
            let log = self.mesh.gateway_log(index).ok().and_then(|log| std::fs::read_to_string(log).ok());
            out.push((role, log.unwrap_or_default()));
        }
        for (cluster, replica) in self.mesh.layout.all() {
            let text = std::fs::read_to_string(self.mesh.dir.log_file(&cluster.name, replica.id)).unwrap_or_default();
            out.push((replica_name(&cluster.name, replica.id), text));
        }
        out
    }
}

/// `aws-1` -> (`aws`, 1).
pub fn split_role(role: &str) -> Option<(&str, u64)> {
    let (cluster, id) = role.rsplit_once('-')?;
    Some((cluster, id.parse().ok()?))
}

/// `to` of the last `now using another gateway replica` line of an agent's log.
pub fn gateway_moved_to(log: &str) -> Option<String> {
    log.lines().rev().find(|line| line.contains("now using another gateway replica")).and_then(|line| {
        let start = line.find(" to=")? + 4;
        Some(line[start..].split_whitespace().next()?.trim_matches('"').to_string())
    })
}

/// The suite's gateway client: over every replica, moving to the next when one fails.
fn gateway_client(mesh: &Mesh) -> anyhow::Result<GatewayClient> {
    let gateway = mesh.layout.gateway.as_ref().context("no gateway")?;
    client_over(mesh, &gateway.addrs())
}

fn client_over(mesh: &Mesh, addrs: &[String]) -> anyhow::Result<GatewayClient> {
    let token = std::fs::read_to_string(mesh.dir.admin_token())?.trim().to_string();
    let trust = TrustRoots::load(&mesh.dir.certs().join("ca.pem"))?;
    Ok(GatewayClient::with_addrs(
        trust.anonymous_client_config(ServerPolicy::Gateway)?,
        GatewayAddrs::new(addrs),
        Some(token),
        CLIENT_TIMEOUT,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_an_agent_moved_to_is_read_from_its_log() {
        let log = "2026-01-01T00:00:00Z  INFO now using another gateway replica from=198.18.0.11:8443 to=198.18.0.12:8443\n\
                   2026-01-01T00:00:05Z  INFO now using another gateway replica from=198.18.0.12:8443 to=198.18.0.13:8443\n\
                   2026-01-01T00:00:06Z  INFO registered with the gateway term=2\n";
        assert_eq!(gateway_moved_to(log).as_deref(), Some("198.18.0.13:8443"));
        assert_eq!(gateway_moved_to("nothing\n"), None);
    }

    #[test]
    fn gateway_replicas_and_their_database_get_addresses_of_their_own() {
        let single = Chaos::layout(2, 1, |role| format!("ns-{role}")).unwrap();
        let roles: Vec<String> = addresses(&single).into_iter().map(|(r, _)| r).collect();
        assert!(roles.contains(&GATEWAY.to_string()) && !roles.contains(&POSTGRES.to_string()), "{roles:?}");
        assert_eq!(single.gateway.as_ref().unwrap().lease, None, "the only gateway keeps its defaults");
        let ha = Chaos::layout(2, 3, |role| format!("ns-{role}")).unwrap();
        let ips = addresses(&ha);
        let ip = |role: &str| ips.iter().find(|(r, _)| r == role).map(|(_, ip)| ip.to_string());
        assert_eq!(ip("g1").as_deref(), Some("198.18.0.11"));
        assert_eq!(ip("g3").as_deref(), Some("198.18.0.13"));
        assert_eq!(ip(POSTGRES).as_deref(), Some("198.18.0.20"));
        assert_eq!(ip(GATEWAY), None);
        let gateway = ha.gateway.as_ref().unwrap();
        assert_eq!(gateway.addrs(), ["198.18.0.11:8443", "198.18.0.12:8443", "198.18.0.13:8443"]);
        assert_eq!(gateway.replicas[1].place.netns.as_deref(), Some("ns-g2"));
        assert_eq!(gateway.lease, Some(chaos_lease_timing()));
        assert_eq!(gateway_role(&ha, 2).as_deref(), Some("g3"));
    }
}
