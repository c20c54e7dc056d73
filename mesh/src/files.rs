//! The files of a mesh directory.
//!
//! ```text
//! DIR/layout.json            clusters, replicas, ports, gateway (reused by the next run)
//! DIR/atoll.yaml             CLI config: gateway, admin token, replica addresses, credentials
//! DIR/nodes.json             [{cluster, node_id, addr, ops_addr, pid}], kept current
//! DIR/gateway.json           {addr, ops_addr, pid} of the gateway, kept current
//! DIR/gateways.json          instead, with gateway replicas: [{id, addr, ops_addr, pid}]
//! DIR/certs/                 the mesh CA (the gateway's CA directory, created here before any
//!                            gateway starts), the operator certificate, and, for standalone
//!                            clusters, the replicas' certificates
//! DIR/gateway/               gateway.yaml, gateway.db, admin.token
//! DIR/gateway/<id>/          with gateway replicas: each one's gateway.yaml (the admin token
//!                            stays in DIR/gateway/admin.token)
//! DIR/relay/                 with gateway replicas: the relay store they share
//! DIR/postgres/              the mesh's own PostgreSQL server, when it has one (see postgres.rs)
//! DIR/<cluster>-<id>/        agent.yaml, data/, and with a gateway: join.token, tls/
//! DIR/logs/                  one log per process (gateway.log, or gateway-<id>.log per replica)
//! ```

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use atoll_api::Identity;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::KeyAlgorithm;

use super::layout::ClusterLayout;
use super::layout::GatewayLayout;
use super::layout::GatewayReplicaLayout;
use super::layout::Layout;
use super::layout::ReplicaLayout;
use super::layout::SINGLE_GATEWAY_ID;
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
    /// The read-scope token `atoll dev` writes for signing in to the dashboard.
    pub fn dashboard_token(&self) -> PathBuf {
        self.root.join("dashboard-token")
    }

    /// The gateway's directory: the single gateway's config and database, the admin token.
    pub fn gateway_dir(&self) -> PathBuf {
        self.root.join("gateway")
    }
    /// Where gateway replica `id` keeps its config: [`MeshDir::gateway_dir`] for the single
    /// gateway (`main`), a directory of its own in it for each replica.
    pub fn gateway_home(&self, id: &str) -> PathBuf {
        if id == SINGLE_GATEWAY_ID { self.gateway_dir() } else { self.gateway_dir().join(id) }
    }
    pub fn gateway_config(&self, id: &str) -> PathBuf {
        self.gateway_home(id).join("gateway.yaml")
    }
    /// The relay store gateway replicas share.
    pub fn relay_store(&self) -> PathBuf {
        self.root.join("relay")
    }
    /// The mesh's own PostgreSQL server (data, log, password, URL).
    pub fn postgres_dir(&self) -> PathBuf {
        self.root.join("postgres")
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
    /// The log of gateway replica `id`: `gateway.log` for the single gateway (`main`).
    pub fn gateway_log(&self, id: &str) -> PathBuf {
        let name = if id == SINGLE_GATEWAY_ID { "gateway.log".to_string() } else { format!("gateway-{id}.log") };
        self.root.join("logs").join(name)
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
    pub fn gateways_json(&self) -> PathBuf {
        self.root.join("gateways.json")
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
        if let Some(gateway) = &layout.gateway {
            anyhow::ensure!(!gateway.replicas.is_empty(), "the layout's gateway has no replicas");
            anyhow::ensure!(
                !gateway.ha || gateway.postgres_url.is_some() || layout.postgres.is_some(),
                "gateway replicas need PostgreSQL: a postgres_url or the mesh's own server"
            );
            fs::create_dir_all(self.gateway_dir())?;
            if gateway.ha {
                fs::create_dir_all(self.relay_store())?;
            }
            for replica in &gateway.replicas {
                fs::create_dir_all(self.gateway_home(&replica.id))?;
                fs::write(self.gateway_config(&replica.id), gateway_yaml(layout, gateway, replica))?;
            }
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
            match gateway.replicas.as_slice() {
                [one] => out.push_str(&format!("gateway:\n  addr: \"{}\"\n", one.addr())),
                replicas => {
                    out.push_str("gateway:\n  addrs:\n");
                    for replica in replicas {
                        out.push_str(&format!("    - \"{}\"\n", replica.addr()));
                    }
                }
            }
            out.push_str("  join_token_file: join.token\n");
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
        || cluster.job_containers.is_some()
    {
        out.push_str("jobs:\n");
    }
    if let Some(c) = &cluster.job_containers {
        // JSON strings and lists are YAML too.
        let list = |l: &[String]| serde_json::to_string(l).unwrap_or_default();
        out.push_str(&format!(
            "  containers:\n    engine: {}\n    engine_args: {}\n    build_args: {}\n    run_args: {}\n    registry_args: {}\n    compose: {}\n",
            serde_json::to_string(&c.engine).unwrap_or_default(),
            list(&c.engine_args),
            list(&c.build_args),
            list(&c.run_args),
            list(&c.registry_args),
            list(&c.compose)
        ));
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
        if let Some(b) = &cluster.kubernetes_builder {
            let text = |s: &String| serde_json::to_string(s).unwrap_or_default();
            let list = |l: &[String]| serde_json::to_string(l).unwrap_or_default();
            out.push_str(&format!(
                "    builder:\n      image: {}\n      registry: {}\n      command: {}\n      args: {}\n",
                text(&b.image),
                text(&b.registry),
                list(&b.command),
                list(&b.args)
            ));
        }
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

/// One gateway replica's config. Paths are relative to its directory: `DIR/gateway/` for the
/// single gateway, `DIR/gateway/<id>/` for a replica.
fn gateway_yaml(layout: &Layout, gateway: &GatewayLayout, replica: &GatewayReplicaLayout) -> String {
    let up = if replica.id == SINGLE_GATEWAY_ID { ".." } else { "../.." };
    let mut out = String::from("# Written by atoll from layout.json; regenerated at every start.\n");
    if replica.id != SINGLE_GATEWAY_ID {
        out.push_str(&format!("id: {}\n", replica.id));
    }
    out.push_str(&format!("listen: \"{}\"\nops_listen: \"{}\"\n", replica.addr(), replica.ops_addr()));
    out.push_str(&format!("ca_dir: {up}/certs\n"));
    if let Some(addr) = replica.dashboard_addr() {
        out.push_str(&format!("dashboard:\n  listen: \"{addr}\"\n"));
    }
    let admin_token = if replica.id == SINGLE_GATEWAY_ID { "admin.token" } else { "../admin.token" };
    out.push_str(&format!("admin_token_file: {admin_token}\n"));
    match (&gateway.postgres_url, &layout.postgres) {
        (Some(url), _) => out.push_str(&format!("database:\n  postgres:\n    url: \"{url}\"\n")),
        // The password stays out of the config, in the server's 0600 file.
        (None, Some(_)) => out.push_str(&format!("database:\n  postgres:\n    url_file: {up}/postgres/url\n")),
        (None, None) => out.push_str("database:\n  sqlite:\n    path: gateway.db\n"),
    }
    if gateway.ha || gateway.lease.is_some() {
        out.push_str(&format!("ha:\n  enabled: {}\n", gateway.ha));
    }
    if let Some(l) = gateway.lease {
        out.push_str(&format!(
            "  lease_ttl_ms: {}\n  renew_interval_ms: {}\n  retry_interval_ms: {}\n",
            l.lease_ttl_ms, l.renew_interval_ms, l.retry_interval_ms
        ));
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
    if gateway.ha || gateway.store_fsync.is_some() {
        out.push_str("storage:\n  local:\n");
        if gateway.ha {
            out.push_str(&format!("    path: {up}/relay\n    shared: true\n"));
        }
        if let Some(fsync) = gateway.store_fsync {
            out.push_str(&format!("    fsync: {fsync}\n"));
        }
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
        Some(gateway) => {
            let addrs: Vec<String> = gateway.addrs().iter().map(|a| format!("\"{a}\"")).collect();
            out.push_str(&format!("gateway: [{}]\ntoken_file: gateway/admin.token\n", addrs.join(", ")));
        }
        None => out.push_str("gateway: []\n"),
    }
    out.push_str("nodes:\n");
    for (cluster, replica) in layout.all() {
        out.push_str(&format!("  - {{cluster: {}, id: {}, addr: \"{}\"}}\n", cluster.name, replica.id, replica.addr()));
    }
    out.push_str("tls:\n  ca: certs/ca.pem\n  cert: certs/admin.pem\n  key: certs/admin-key.pem\n");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn yaml(path: &std::path::Path) -> Value {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        atoll_api::config_file::parse(&text, &path.display().to_string(), &[]).expect("YAML")
    }

    fn written(layout: &Layout) -> (tempfile::TempDir, MeshDir) {
        let temp = tempfile::tempdir().unwrap();
        let dir = MeshDir::new(temp.path().join("mesh"));
        dir.materialize(layout).unwrap();
        (temp, dir)
    }

    #[test]
    fn gateway_replicas_each_get_a_config_over_the_meshs_postgres_sharing_ca_token_and_relay() {
        let layout = Layout::new(2, 3, 0).unwrap().with_gateway_replicas(3, 0).unwrap().with_postgres(0).unwrap();
        let (_temp, dir) = written(&layout);
        let gateway = layout.gateway.as_ref().unwrap();
        for replica in &gateway.replicas {
            let config = dir.gateway_config(&replica.id);
            assert_eq!(config, dir.root.join("gateway").join(&replica.id).join("gateway.yaml"));
            let doc = yaml(&config);
            assert_eq!(doc["id"], replica.id.as_str());
            assert_eq!(doc["listen"], replica.addr().as_str());
            assert_eq!(doc["ops_listen"], replica.ops_addr().as_str());
            // Relative to DIR/gateway/<id>/: one CA, one admin token, one database, one store.
            assert_eq!(doc["ca_dir"], "../../certs");
            assert_eq!(doc["admin_token_file"], "../admin.token");
            assert_eq!(doc["database"]["postgres"]["url_file"], "../../postgres/url");
            assert!(doc["database"].get("sqlite").is_none());
            assert_eq!(doc["ha"]["enabled"], true);
            assert_eq!(doc["storage"]["local"]["path"], "../../relay");
            assert_eq!(doc["storage"]["local"]["shared"], true);
            assert_eq!(dir.gateway_log(&replica.id), dir.root.join("logs").join(format!("gateway-{}.log", replica.id)));
        }
        assert!(dir.relay_store().is_dir());
        assert!(
            dir.certs().join("ca.pem").exists() && dir.certs().join("ca-key.pem").exists(),
            "the CA exists before any replica starts"
        );
        for (cluster, replica) in layout.all() {
            let doc = yaml(&dir.agent_config(&cluster.name, replica.id));
            assert!(doc["gateway"].get("addr").is_none(), "{doc}");
            assert_eq!(doc["gateway"]["addrs"], serde_json::json!(gateway.addrs()));
            assert_eq!(doc["gateway"]["join_token_file"], "join.token");
        }
        let cli = yaml(&dir.cli_config());
        assert_eq!(cli["gateway"], serde_json::json!(gateway.addrs()));
        assert_eq!(cli["token_file"], "gateway/admin.token");
    }

    #[test]
    fn gateway_replicas_on_a_given_url_name_it_and_one_replica_is_reached_at_one_addr() {
        let mut layout = Layout::new(1, 1, 0).unwrap().with_gateway_replicas(1, 0).unwrap();
        layout.gateway.as_mut().unwrap().postgres_url = Some("postgres://a@127.0.0.1:5432/b".into());
        let (_temp, dir) = written(&layout);
        let doc = yaml(&dir.gateway_config("g1"));
        assert_eq!(doc["database"]["postgres"]["url"], "postgres://a@127.0.0.1:5432/b");
        assert_eq!(doc["ha"]["enabled"], true);
        let agent = yaml(&dir.agent_config("aws", 1));
        assert_eq!(agent["gateway"]["addr"], layout.gateway.as_ref().unwrap().addr().as_str());
        assert!(agent["gateway"].get("addrs").is_none());
    }

    #[test]
    fn the_lease_timing_goes_into_every_replicas_ha_section() {
        let mut layout = Layout::new(1, 1, 0).unwrap().with_gateway_replicas(2, 0).unwrap();
        let gateway = layout.gateway.as_mut().unwrap();
        gateway.postgres_url = Some("postgres://a@127.0.0.1:5432/b".into());
        gateway.lease = Some(crate::LeaseTiming::fast());
        let (_temp, dir) = written(&layout);
        for id in ["g1", "g2"] {
            let doc = yaml(&dir.gateway_config(id));
            assert_eq!(
                doc["ha"],
                serde_json::json!({"enabled": true, "lease_ttl_ms": 1500, "renew_interval_ms": 300, "retry_interval_ms": 200})
            );
        }
        let again: Layout = serde_json::from_slice(&serde_json::to_vec(&layout).unwrap()).unwrap();
        assert_eq!(again, layout, "the lease timing is kept in layout.json");
    }

    #[test]
    fn gateway_replicas_without_postgres_are_refused() {
        let layout = Layout::new(1, 1, 0).unwrap().with_gateway_replicas(2, 0).unwrap();
        let temp = tempfile::tempdir().unwrap();
        let error = MeshDir::new(temp.path()).materialize(&layout).unwrap_err();
        assert!(format!("{error:#}").contains("need PostgreSQL"), "{error:#}");
    }

    #[test]
    fn the_single_gateway_is_written_as_before() {
        let layout = Layout::new(1, 1, 0).unwrap().with_gateway(0).unwrap();
        let (_temp, dir) = written(&layout);
        let gateway = layout.gateway.as_ref().unwrap();
        assert_eq!(dir.gateway_config(SINGLE_GATEWAY_ID), dir.gateway_dir().join("gateway.yaml"));
        assert_eq!(dir.gateway_log(SINGLE_GATEWAY_ID), dir.root.join("logs").join("gateway.log"));
        let doc = yaml(&dir.gateway_config(SINGLE_GATEWAY_ID));
        assert!(doc.get("id").is_none() && doc.get("ha").is_none() && doc.get("storage").is_none(), "{doc}");
        assert_eq!(doc["ca_dir"], "../certs");
        assert_eq!(doc["admin_token_file"], "admin.token");
        assert_eq!(doc["database"]["sqlite"]["path"], "gateway.db");
        assert!(!dir.relay_store().exists() && !dir.postgres_dir().exists());
        let agent = yaml(&dir.agent_config("aws", 1));
        assert_eq!(agent["gateway"]["addr"], gateway.addr().as_str());
        assert_eq!(yaml(&dir.cli_config())["gateway"], serde_json::json!([gateway.addr()]));
    }
}
