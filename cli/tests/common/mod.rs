//! Harness for tests that run real `atoll agent` processes on 127.0.0.1.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use atoll::cli_config::CliConfig;
use atoll::mesh::ClusterLeader;
use atoll::mesh::Layout;
use atoll::mesh::Mesh;
use atoll::mesh::MeshDir;
use atoll::mesh::RaftKnobs;
use atoll_api::client::NodeClient;
use atoll_api::node::NodeStatus;

pub fn atoll_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_atoll"))
}

/// Print a test phase, openraft style: what happens next and why.
pub fn phase(text: &str) {
    eprintln!("--- {text}");
}

pub struct TestMesh {
    pub mesh: Mesh,
    pub client: NodeClient,
    pub dir: tempfile::TempDir,
}

impl TestMesh {
    pub async fn start(clusters: usize, replicas: usize, raft: RaftKnobs) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut layout = Layout::new(clusters, replicas, 0).expect("layout");
        layout.raft = raft;
        let mesh = Mesh::start(MeshDir::new(dir.path()), layout, atoll_exe()).expect("start mesh");
        let client = CliConfig::load(&mesh.dir.cli_config()).expect("cli config").node_client().expect("client");
        Self { mesh, client, dir }
    }

    pub fn addr(&self, cluster: &str, id: u64) -> String {
        self.mesh.layout.replica(cluster, id).expect("replica").addr()
    }

    pub fn ops_addr(&self, cluster: &str, id: u64) -> String {
        self.mesh.layout.replica(cluster, id).expect("replica").ops_addr()
    }

    pub fn ids(&self, cluster: &str) -> Vec<u64> {
        self.mesh.layout.cluster(cluster).expect("cluster").replicas.iter().map(|r| r.id).collect()
    }

    /// The agreed leader of `cluster` (waits up to 30 s).
    pub async fn leader(&mut self, cluster: &str) -> ClusterLeader {
        let leaders = self.mesh.wait_for_leaders(&self.client, Duration::from_secs(30)).await.expect("leaders");
        leaders.into_iter().find(|l| l.cluster == cluster).expect("cluster leader")
    }

    pub async fn status(&self, cluster: &str, id: u64) -> Option<NodeStatus> {
        self.client.status(&self.addr(cluster, id)).await.ok()
    }

    pub fn log(&self, cluster: &str, id: u64) -> String {
        std::fs::read_to_string(self.mesh.dir.log_file(cluster, id)).unwrap_or_default()
    }
}

/// Poll `check` every 50 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Write `key=value` through `addr`, retrying while there is no leader (bounded).
pub async fn annotate_retrying(
    client: &NodeClient,
    addrs: &[String],
    key: &str,
    value: &str,
) -> atoll_api::node::AnnotationAck {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last_error = String::new();
    let mut attempt = 0usize;
    while tokio::time::Instant::now() < deadline {
        let addr = &addrs[attempt % addrs.len()];
        attempt += 1;
        match client.annotate(addr, key, value).await {
            Ok(ack) => return ack,
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("writing {key} failed for 20 s: {last_error}");
}
