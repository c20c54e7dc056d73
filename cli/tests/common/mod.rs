//! Harness for tests that run real `atoll agent` processes on 127.0.0.1.
#![allow(dead_code)]

pub mod fake_kube;
pub mod git;
pub mod pods;

use std::future::Future;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use atoll::cli_config::CliConfig;
use atoll_api::client::NodeClient;
use atoll_api::gateway::ClusterInfo;
use atoll_api::gateway::LinkState;
use atoll_api::gateway::MatrixCell;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::jobs::JobDetail;
use atoll_api::jobs::JobState;
use atoll_api::jobs::SubmitRequest;
use atoll_api::jobs::Submitted;
use atoll_api::node::NodeStatus;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::IssuedCert;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsFiles;
use atoll_api::tls::TlsIdentity;
use atoll_api::tls::TrustRoots;
use atoll_gateway::config::Database;
use atoll_gateway::db::testing::TestDatabase;
use atoll_mesh::ClusterLeader;
use atoll_mesh::GatewayTiming;
use atoll_mesh::Layout;
use atoll_mesh::Mesh;
use atoll_mesh::MeshDir;
use atoll_mesh::RaftKnobs;

/// A TLS identity from a certificate the test issued itself.
pub fn issued_identity(ca: &CertificateAuthority, cert: &IssuedCert) -> TlsIdentity {
    TlsIdentity::from_pem(
        Path::new("ca.pem"),
        ca.cert_pem().as_bytes(),
        Path::new("cert.pem"),
        cert.cert_pem.as_bytes(),
        Path::new("key.pem"),
        cert.key_pem.as_bytes(),
    )
    .expect("tls identity")
}

/// An HTTPS client for raw requests (a test speaking as some identity).
pub fn https_client(config: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

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
    /// Standalone clusters (no gateway), certificates from the mesh CA.
    pub async fn start(clusters: usize, replicas: usize, raft: RaftKnobs) -> Self {
        let mut layout = Layout::new(clusters, replicas, 0).expect("layout");
        layout.raft = raft;
        Self::start_layout(layout).await
    }

    pub async fn start_layout(layout: Layout) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mesh = Mesh::start(MeshDir::new(dir.path()), layout, atoll_exe()).await.expect("start mesh");
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

/// A failed test keeps its directory and prints where it is, with the tail of every process's
/// log, so a failure in CI can be read without running it again.
impl Drop for TestMesh {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.dir.disable_cleanup(true);
        eprintln!("--- the test failed; its files are kept in {}", self.dir.path().display());
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("logs")) else { return };
        let mut logs: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        logs.sort();
        for path in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- last lines of {}:", path.display());
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("    {line}");
            }
        }
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

/// The gateway's database in a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Short gateway timing for tests (the defaults are 1 s heartbeats, 1 s probes).
pub fn test_gateway_timing() -> GatewayTiming {
    GatewayTiming::fast()
}

/// A mesh with a gateway: replicas enroll with join tokens, leaders register.
pub struct GatewayMesh {
    pub t: TestMesh,
    /// The mesh's gateway, with the admin token.
    pub gateway: GatewayClient,
    /// Dropped after the processes (fields drop in order).
    _database: Option<TestDatabase>,
}

impl GatewayMesh {
    /// Start `clusters` x `replicas` and a gateway on `engine`, with the dev cuts when `cuts`;
    /// returns once every cluster has a registered leader.
    pub async fn start(engine: Engine, clusters: usize, replicas: usize, timing: GatewayTiming, cuts: bool) -> Self {
        Self::start_with(engine, clusters, replicas, timing, cuts, |_| {}).await
    }

    /// As [`GatewayMesh::start`], with the layout changed by `edit` first.
    pub async fn start_with(
        engine: Engine,
        clusters: usize,
        replicas: usize,
        timing: GatewayTiming,
        cuts: bool,
        edit: impl FnOnce(&mut Layout),
    ) -> Self {
        let mut layout = Layout::new(clusters, replicas, 0).expect("layout").with_gateway(0).expect("gateway");
        if cuts {
            layout = layout.with_default_cuts();
        }
        edit(&mut layout);
        let database = match engine {
            Engine::Sqlite => None,
            Engine::Postgres => Some(TestDatabase::postgres().await),
        };
        let gateway = layout.gateway.as_mut().expect("gateway layout");
        gateway.timing = Some(timing);
        gateway.postgres_url = database.as_ref().map(|db| match &db.database {
            Database::Postgres { url, .. } => url.clone(),
            Database::Sqlite { .. } => unreachable!("a PostgreSQL test database"),
        });
        let mut t = TestMesh::start_layout(layout).await;
        t.mesh.wait_for_leaders(&t.client, Duration::from_secs(60)).await.expect("leaders");
        t.mesh.wait_for_registration(Duration::from_secs(60)).await.expect("registration");
        let gateway = t.mesh.gateway_client().expect("gateway client");
        Self { t, gateway, _database: database }
    }

    pub fn addr(&self) -> String {
        self.t.mesh.layout.gateway.as_ref().expect("gateway").addr()
    }

    /// The TLS material a replica enrolled with.
    pub fn replica_tls(&self, cluster: &str, id: u64) -> TlsIdentity {
        let dir = self.t.mesh.dir.replica_dir(cluster, id).join("tls");
        TlsIdentity::load(&TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
        })
        .expect("replica TLS material")
    }

    /// A gateway client presenting a replica's certificate (to speak as that replica).
    pub fn as_replica(&self, cluster: &str, id: u64) -> GatewayClient {
        let config = self.replica_tls(cluster, id).client_config(ServerPolicy::Gateway).expect("client config");
        GatewayClient::new(config, &self.addr(), None, Duration::from_secs(5)).expect("gateway client")
    }

    /// A gateway client with no certificate and `token` (or none).
    pub fn anonymous(&self, token: Option<String>) -> GatewayClient {
        let trust = TrustRoots::load(&self.t.mesh.dir.certs().join("ca.pem")).expect("CA");
        let config = trust.anonymous_client_config(ServerPolicy::Gateway).expect("client config");
        GatewayClient::new(config, &self.addr(), token, Duration::from_secs(5)).expect("gateway client")
    }

    /// Run the CLI against the mesh's config (admin token, operator certificate).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(atoll_exe())
            .arg("--config")
            .arg(self.t.mesh.dir.cli_config())
            .args(args)
            .output()
            .expect("run atoll")
    }

    /// `atoll push DIR --json`, which must succeed: what it printed.
    pub fn push(&self, dir: &std::path::Path) -> serde_json::Value {
        let out = self.cli(&["push", dir.to_str().expect("a UTF-8 path"), "--json"]);
        assert!(out.status.success(), "atoll push: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("push --json")
    }

    /// The cluster as the gateway lists it.
    pub async fn cluster(&self, name: &str) -> Option<ClusterInfo> {
        self.gateway.clusters().await.ok()?.into_iter().find(|c| c.name == name)
    }

    /// The matrix cell `from -> to`.
    pub async fn cell(&self, from: &str, to: &str) -> Option<MatrixCell> {
        self.gateway.matrix().await.ok()?.cells.into_iter().find(|c| c.from == from && c.to == to)
    }

    /// Wait until the cell `from -> to` is in `state` (bounded).
    pub async fn wait_cell(&self, from: &str, to: &str, state: LinkState, timeout: Duration) -> MatrixCell {
        eventually(timeout, &format!("{from}->{to} {state}"), || async {
            self.cell(from, to).await.filter(|c| c.state == state)
        })
        .await
    }
}

/// `on_both_engines!(body, body_sqlite, body_postgres)`: two tests calling `body(Engine)`.
#[macro_export]
macro_rules! on_both_engines {
    ($body:ident, $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            $body(common::Engine::Sqlite).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            $body(common::Engine::Postgres).await
        }
    };
}

// Jobs: submit, wait, and look for what a job left running.

pub async fn submit(gateway: &GatewayClient, yaml: &str) -> Submitted {
    let spec = atoll_api::spec::parse_document(yaml).expect("test spec");
    gateway.submit(&SubmitRequest { spec, files: Default::default() }).await.expect("submit")
}

pub fn id_of(submitted: &Submitted, name: &str) -> String {
    submitted.jobs.iter().find(|j| j.name == name).unwrap_or_else(|| panic!("no job {name}")).id.to_string()
}

pub async fn wait_state(
    gateway: &GatewayClient,
    id: &str,
    timeout: Duration,
    wanted: impl Fn(JobState) -> bool,
) -> JobDetail {
    eventually(timeout, &format!("job {id}"), || async { gateway.job(id).await.ok().filter(|d| wanted(d.job.state)) })
        .await
}

pub async fn wait_final(gateway: &GatewayClient, id: &str) -> JobDetail {
    wait_state(gateway, id, Duration::from_secs(60), JobState::is_final).await
}

/// Processes on this machine whose environment names `job` (and `attempt`, when given): what a
/// job started, wherever it went.
pub fn processes_of(job: &str, attempt: Option<u32>) -> Vec<u32> {
    let want_job = format!("ATOLL_JOB_ID={job}");
    let want_attempt = attempt.map(|a| format!("ATOLL_ATTEMPT={a}"));
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let has = |want: &str| vars.contains(&want.as_bytes());
        if has(&want_job) && want_attempt.as_deref().is_none_or(has) {
            found.push(pid);
        }
    }
    found
}

pub async fn no_processes_left(job: &str, attempt: Option<u32>) {
    eventually(Duration::from_secs(10), &format!("no process of {job} left"), || async {
        processes_of(job, attempt).is_empty().then_some(())
    })
    .await;
}

/// Wait until `id` is running at the gateway and a process of its first attempt is up.
pub async fn wait_running_attempt_1(gateway: &GatewayClient, id: &str) {
    wait_state(gateway, id, Duration::from_secs(30), |s| s == JobState::Running).await;
    eventually(Duration::from_secs(10), "attempt 1 runs", || async {
        (!processes_of(id, Some(1)).is_empty()).then_some(())
    })
    .await;
}
