//! The files of a mesh directory.
//!
//! ```text
//! DIR/layout.json            clusters, replicas, ports, gateway (reused by the next run)
//! DIR/atoll.yaml             CLI config: gateway, admin token, replica addresses, credentials
//! DIR/nodes.json             [{cluster, node_id, addr, ops_addr, pid}], kept current
//! DIR/gateway.json           {addr, ops_addr, pid} of the gateway, kept current
//! DIR/certs/                 the mesh CA (the gateway's CA directory), the operator certificate,
//!                            and, for standalone clusters, the replicas' certificates
//! DIR/gateway/               gateway.yaml, gateway.db, admin.token
//! DIR/<cluster>-<id>/        agent.yaml, data/, and with a gateway: join.token, tls/
//! DIR/logs/                  one log per process
//! ```

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use atoll_api::Identity;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::KeyAlgorithm;

use super::layout::ClusterLayout;
use super::layout::Layout;
use super::layout::ReplicaLayout;
use super::layout::replica_name;

/// Paths inside a mesh directory.
#[derive(Debug, Clone)]
pub struct MeshDir {
    pub root: PathBuf,
}

/// Replicas whose certificate expires within this enroll again (a replica renews a still valid
/// certificate by itself).
const RENEW_MARGIN: Duration = Duration::from_secs(30);

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
    pub fn gateway_dir(&self) -> PathBuf {
        self.root.join("gateway")
    }
    pub fn admin_token(&self) -> PathBuf {
        self.gateway_dir().join("admin.token")
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
    pub fn join_token(&self, cluster: &str, id: u64) -> PathBuf {
        self.replica_dir(cluster, id).join("join.token")
    }
    /// Where an enrolled replica keeps its certificate.
    pub fn enrolled_cert(&self, cluster: &str, id: u64) -> PathBuf {
        self.replica_dir(cluster, id).join("tls").join("node.pem")
    }
    pub fn log_file(&self, cluster: &str, id: u64) -> PathBuf {
        self.root.join("logs").join(format!("{}.log", replica_name(cluster, id)))
    }
    pub fn gateway_log(&self) -> PathBuf {
        self.root.join("logs").join("gateway.log")
    }
    pub fn cli_config(&self) -> PathBuf {
        self.root.join("atoll.yaml")
    }
    pub fn nodes_json(&self) -> PathBuf {
        self.root.join("nodes.json")
    }
    pub fn gateway_json(&self) -> PathBuf {
        self.root.join("gateway.json")
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

    /// Whether a replica of a gateway mesh must (re)enroll: no certificate, or one about to
    /// expire (then its old files are removed so it enrolls again).
    pub fn needs_enrollment(&self, cluster: &str, id: u64) -> anyhow::Result<bool> {
        let cert = self.enrolled_cert(cluster, id);
        let Ok(pem) = fs::read_to_string(&cert) else { return Ok(true) };
        let fresh = atoll_api::pki::validity(&pem)
            .map(|(_, not_after)| not_after > time::OffsetDateTime::now_utc() + RENEW_MARGIN)
            .unwrap_or(false);
        if !fresh {
            fs::remove_file(&cert).with_context(|| format!("removing {}", cert.display()))?;
            let _ = fs::remove_file(cert.with_file_name("node-key.pem"));
        }
        Ok(!fresh)
    }

    /// Write certificates (kept when present), configs and the layout.
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
        if layout.gateway.is_some() {
            fs::create_dir_all(self.gateway_dir())?;
            fs::write(self.gateway_dir().join("gateway.yaml"), gateway_yaml(layout))?;
        }
        for (cluster, replica) in layout.all() {
            let name = replica_name(&cluster.name, replica.id);
            if layout.gateway.is_none() && !certs.join(format!("{name}.pem")).exists() {
                let identity = Identity::node(cluster.name.parse()?, replica.id);
                let names = [replica.place.ip().parse::<atoll_api::pki::HostName>().map_err(anyhow::Error::msg)?];
                ca.issue_named(&identity, &names, year, KeyAlgorithm::EcdsaP256)?.save(&certs, &name)?;
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
    match &layout.gateway {
        Some(gateway) => {
            out.push_str("tls:\n  ca: tls/ca.pem\n  cert: tls/node.pem\n  key: tls/node-key.pem\n");
            out.push_str(&format!("gateway:\n  addr: \"{}\"\n  join_token_file: join.token\n", gateway.addr()));
        }
        None => out.push_str(&format!(
            "tls:\n  ca: ../certs/ca.pem\n  cert: ../certs/{name}.pem\n  key: ../certs/{name}-key.pem\n"
        )),
    }
    if !cluster.refuse_inbound_from.is_empty() {
        out.push_str(&format!("network:\n  refuse_inbound_from: [{}]\n", cluster.refuse_inbound_from.join(", ")));
    }
    if cluster.kubernetes_api.is_some()
        || cluster.max_running.is_some()
        || cluster.transfer_limit.is_some()
        || !cluster.job_writable_paths.is_empty()
    {
        out.push_str("jobs:\n");
    }
    if !cluster.job_writable_paths.is_empty() {
        let paths: Vec<String> =
            cluster.job_writable_paths.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
        out.push_str(&format!("  sandbox:\n    writable_paths: [{}]\n", paths.join(", ")));
    }
    if let Some(n) = cluster.max_running {
        out.push_str(&format!("  max_running: {n}\n"));
    }
    if let Some(n) = cluster.transfer_limit {
        out.push_str(&format!("  transfer_limit_bytes_per_s: {n}\n"));
    }
    if let Some(api) = &cluster.kubernetes_api {
        out.push_str(&format!(
            "  executor: kubernetes\n  kubernetes:\n    api: \"{api}\"\n    namespace: atoll\n    poll_ms: 100\n"
        ));
        // Pods reach every replica's pod listener (as through a Service in front of them).
        let index = cluster.replicas.iter().position(|r| r.id == replica.id).unwrap_or(0);
        if let Some(port) = cluster.pod_ports.get(index) {
            out.push_str(&format!("    pod_listen: \"{}:{port}\"\n    pod_urls:\n", replica.place.ip()));
            for (peer, port) in cluster.replicas.iter().zip(&cluster.pod_ports) {
                out.push_str(&format!("      - \"https://{}:{port}\"\n", peer.place.ip()));
            }
        }
    }
    if let Some(fsync) = cluster.store_fsync {
        out.push_str(&format!("storage:\n  local:\n    fsync: {fsync}\n"));
    }
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

fn gateway_yaml(layout: &Layout) -> String {
    let Some(gateway) = &layout.gateway else { return String::new() };
    let mut out = String::from("# Written by atoll from layout.json; regenerated at every start.\n");
    out.push_str(&format!("listen: \"{}\"\nops_listen: \"{}\"\n", gateway.addr(), gateway.ops_addr()));
    out.push_str("ca_dir: ../certs\nadmin_token_file: admin.token\n");
    match &gateway.postgres_url {
        Some(url) => out.push_str(&format!("database:\n  postgres:\n    url: \"{url}\"\n")),
        None => out.push_str("database:\n  sqlite:\n    path: gateway.db\n"),
    }
    if let Some(t) = gateway.timing {
        out.push_str(&format!(
            "clusters:\n  heartbeat_interval_ms: {}\n  suspect_after_ms: {}\n  dead_after_ms: {}\n",
            t.heartbeat_interval_ms, t.suspect_after_ms, t.dead_after_ms
        ));
        out.push_str(&format!(
            "matrix:\n  probe_interval_ms: {}\n  probe_timeout_ms: {}\n  row_interval_ms: {}\n  stale_after_ms: {}\n",
            t.probe_interval_ms, t.probe_timeout_ms, t.row_interval_ms, t.stale_after_ms
        ));
        out.push_str(&format!("certificates:\n  lifetime_s: {}\n", t.cert_lifetime_s));
    }
    if let Some(fsync) = gateway.store_fsync {
        out.push_str(&format!("storage:\n  local:\n    fsync: {fsync}\n"));
    }
    if let Some((keep_s, interval_ms)) = gateway.retention {
        out.push_str(&format!("retention:\n  keep_s: {keep_s}\n  interval_ms: {interval_ms}\n"));
    }
    out
}

fn cli_yaml(layout: &Layout) -> String {
    let mut out =
        String::from("# atoll CLI config written by atoll: gateway, admin token, replica addresses, credentials.\n");
    match &layout.gateway {
        Some(gateway) => out.push_str(&format!("gateway: [\"{}\"]\ntoken_file: gateway/admin.token\n", gateway.addr())),
        None => out.push_str("gateway: []\n"),
    }
    out.push_str("nodes:\n");
    for (cluster, replica) in layout.all() {
        out.push_str(&format!("  - {{cluster: {}, id: {}, addr: \"{}\"}}\n", cluster.name, replica.id, replica.addr()));
    }
    out.push_str("tls:\n  ca: certs/ca.pem\n  cert: certs/admin.pem\n  key: certs/admin-key.pem\n");
    out
}
