//! Gateway replicas over the test PostgreSQL, as real processes: the lease holder SIGKILLed
//! mid-pipeline (the pipeline finishes, one accepted result per job, every cluster alive
//! throughout); the holder paused past its lease and resumed (it changes nothing: no duty
//! write of its old generation lands after the new one was taken); an agent learning a replica
//! added after it started and moving to it; what one replica stored read through another (one
//! relay store, one database); the configurations replicas cannot share, refused at start naming
//! the key.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use atoll_api::gateway::ClusterState;
use atoll_api::gateway::GatewayReplica;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::jobs::JobState;
use atoll_gateway::config::Database;
use atoll_gateway::db::Db;
use atoll_gateway::db::lease::stale_writes;
use atoll_gateway::testing::TestDatabase;
use atoll_mesh::Layout;
use common::TestMesh;
use common::eventually;
use common::id_of;
use common::phase;
use common::submit;
use common::test_gateway_timing;
use common::wait_final;
use common::wait_state;
use nix::sys::signal::Signal;

const CHAIN: &str = r#"
version: 1
jobs:
  - {name: a, type: command, command: "sleep 1"}
  - {name: b, type: command, command: "sleep 1", depends_on: [a]}
  - {name: c, type: command, command: "sleep 1", depends_on: [b]}
"#;

const ONE: &str = "version: 1\njobs:\n  - {name: one, type: command, command: \"true\"}\n";

/// `clusters` clusters of one replica each and `gateways` replicas over a fresh database of
/// the test PostgreSQL server.
async fn replicas_mesh(gateways: usize, clusters: usize) -> (TestMesh, TestDatabase) {
    let database = TestDatabase::postgres().await;
    let Database::Postgres { url, .. } = &database.database else { unreachable!("a PostgreSQL test database") };
    let mut layout = Layout::new(clusters, 1, 0).expect("layout").with_gateway_replicas(gateways, 0).expect("replicas");
    let gateway = layout.gateway.as_mut().expect("gateway");
    gateway.timing = Some(test_gateway_timing());
    gateway.postgres_url = Some(url.clone());
    let mut t = TestMesh::start_layout(layout).await;
    t.mesh.wait_for_leaders(&t.client, Duration::from_secs(60)).await.expect("leaders");
    t.mesh.wait_for_registration(Duration::from_secs(60)).await.expect("registration");
    (t, database)
}

async fn replicas(client: &GatewayClient) -> Vec<GatewayReplica> {
    client.gateways().await.expect("GET /v1/gateways")
}

/// The lease holder's index in the layout, once one holds it.
async fn holder(t: &TestMesh) -> (usize, u64) {
    let ids: Vec<String> =
        t.mesh.layout.gateway.as_ref().expect("gateway").replicas.iter().map(|r| r.id.clone()).collect();
    let client = t.mesh.gateway_client().expect("client");
    eventually(Duration::from_secs(20), "a replica holds the lease", || async {
        let held = replicas(&client).await.into_iter().find(|g| g.holds_lease)?;
        Some((ids.iter().position(|id| *id == held.id)?, held.generation))
    })
    .await
}

/// Poll every cluster's state through every live replica until `stop`; true when one was seen
/// dead.
fn watch_for_deaths(client: GatewayClient, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            if let Ok(clusters) = client.clusters().await {
                for c in clusters.into_iter().filter(|c| c.state == ClusterState::Dead) {
                    seen.push(format!("{} dead (last seen {:?} ms ago)", c.name, c.last_seen_ms));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    })
}

/// No duty write of an old generation applied after a newer one was taken.
async fn no_stale_writes(database: &TestDatabase) {
    let db = Db::connect(&database.database).await.expect("database");
    let writes = db.duty_writes().await.expect("duty writes");
    let history = db.lease_history().await.expect("lease history");
    let stale = stale_writes(&writes, &history);
    assert!(!writes.is_empty(), "the scheduler wrote nothing?");
    assert!(stale.is_empty(), "writes of an old generation applied after a newer one: {stale:?} (history {history:?})");
    let mut generations: Vec<u64> = history.iter().map(|(g, _, _)| *g).collect();
    generations.dedup();
    assert_eq!(generations.len(), history.len(), "one holder per generation: {history:?}");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_lease_holder_mid_pipeline_loses_nothing() {
    let (mut t, database) = replicas_mesh(3, 2).await;
    let client = t.mesh.gateway_client().expect("client");
    let (index, generation) = holder(&t).await;
    phase(&format!("replica {index} holds the lease at generation {generation}; a pipeline of three jobs starts"));
    let submitted = submit(&client, CHAIN).await;
    let a = id_of(&submitted, "a");
    wait_state(&client, &a, Duration::from_secs(30), |s| s == JobState::Running).await;
    let stop = Arc::new(AtomicBool::new(false));
    let deaths = watch_for_deaths(t.mesh.gateway_client().expect("client"), stop.clone());

    phase("SIGKILL the lease holder while a runs");
    t.mesh.kill_gateway(index);
    let client = t.mesh.gateway_client().expect("client over the live replicas");
    for name in ["a", "b", "c"] {
        let detail = wait_final(&client, &id_of(&submitted, name)).await;
        assert_eq!(detail.job.state, JobState::Finished, "{name}: {detail:?}");
        assert_eq!(detail.attempts.len(), 1, "{name} ran once, one accepted result: {:?}", detail.attempts);
    }
    let moved = eventually(Duration::from_secs(20), "another replica holds the lease", || async {
        replicas(&client).await.into_iter().find(|g| g.holds_lease && g.generation > generation)
    })
    .await;
    phase(&format!("{} took the lease at generation {}", moved.id, moved.generation));
    stop.store(true, Ordering::SeqCst);
    let deaths = deaths.await.expect("watcher");
    assert!(deaths.is_empty(), "every cluster stays alive while the holder changes: {deaths:?}");

    phase("the killed replica comes back and is listed again, not holding the lease");
    t.mesh.spawn_gateway(index).expect("restart");
    t.mesh.wait_for_gateway(index, Duration::from_secs(30)).await.expect("serves");
    let id = t.mesh.layout.gateway.as_ref().expect("gateway").replicas[index].id.clone();
    eventually(Duration::from_secs(10), "the restarted replica is listed", || async {
        replicas(&client).await.into_iter().find(|g| g.id == id && !g.holds_lease)
    })
    .await;
    no_stale_writes(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_changes_nothing_when_it_wakes() {
    let (t, database) = replicas_mesh(3, 2).await;
    let (index, generation) = holder(&t).await;
    let other = (index + 1) % 3;
    let client = t.mesh.gateway_client_at(other).expect("client of a replica that stays up");
    phase(&format!("SIGSTOP the holder (replica {index}, generation {generation}) past its lease"));
    t.mesh.signal_gateway(index, Signal::SIGSTOP).expect("SIGSTOP");
    let during = submit(&client, ONE).await;
    let moved = eventually(Duration::from_secs(20), "another replica takes the lease", || async {
        replicas(&client).await.into_iter().find(|g| g.holds_lease && g.generation > generation)
    })
    .await;
    let done = wait_final(&client, &id_of(&during, "one")).await;
    assert_eq!(done.job.state, JobState::Finished, "placed by the new holder ({})", moved.id);

    phase("SIGCONT: the old holder wakes believing nothing; work goes on");
    t.mesh.signal_gateway(index, Signal::SIGCONT).expect("SIGCONT");
    let mut after = Vec::new();
    for _ in 0..5 {
        after.push(submit(&client, ONE).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for submitted in &after {
        let detail = wait_final(&client, &id_of(submitted, "one")).await;
        assert_eq!(detail.job.state, JobState::Finished);
        assert_eq!(detail.attempts.len(), 1, "placed once: {:?}", detail.attempts);
    }
    let log = std::fs::read_to_string(t.mesh.gateway_log(index).expect("log path")).unwrap_or_default();
    assert!(
        log.contains("stepping down") || log.contains("taken by another replica"),
        "the woken holder says it stepped down; its log ends:\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    no_stale_writes(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_learns_a_replica_added_after_it_started() {
    let (mut t, _database) = replicas_mesh(2, 1).await;
    let client = t.mesh.gateway_client().expect("client");
    phase("a third replica, which no agent config names, joins");
    let dir = t.mesh.dir.root.join("gateway");
    let ports = atoll_mesh::allocate_ports(2, 0).expect("ports");
    let g2 = std::fs::read_to_string(dir.join("g2").join("gateway.yaml")).expect("g2 config");
    let g3_addr = format!("127.0.0.1:{}", ports[0]);
    let g3: String = g2
        .lines()
        .map(|line| match line {
            l if l.starts_with("id:") => "id: g3".to_string(),
            l if l.starts_with("listen:") => format!("listen: \"{g3_addr}\""),
            l if l.starts_with("ops_listen:") => format!("ops_listen: \"127.0.0.1:{}\"", ports[1]),
            l => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let agent_config = std::fs::read_to_string(t.mesh.dir.agent_config("aws", 1)).expect("agent config");
    assert!(!agent_config.contains(&g3_addr), "no agent config names the new replica");
    std::fs::create_dir_all(dir.join("g3")).expect("g3 dir");
    std::fs::write(dir.join("g3").join("gateway.yaml"), g3).expect("g3 config");
    let log = std::fs::File::create(t.mesh.dir.root.join("logs").join("gateway-g3.log")).expect("log");
    let mut g3_process = std::process::Command::new(common::atoll_exe())
        .args(["gateway", "--config"])
        .arg(dir.join("g3").join("gateway.yaml"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start g3");
    eventually(Duration::from_secs(20), "g3 is listed", || async {
        replicas(&client).await.into_iter().find(|g| g.id == "g3")
    })
    .await;

    phase("both configured replicas die: the agent moves to the one it learned of");
    // Heartbeat answers carry the list every interval; give them a few.
    tokio::time::sleep(Duration::from_secs(2)).await;
    t.mesh.kill_gateway(0);
    t.mesh.kill_gateway(1);
    let before = atoll_gateway::now_ms();
    let db = Db::connect(&_database.database).await.expect("database");
    eventually(Duration::from_secs(20), "aws is heard through g3", || async {
        let cluster = db.cluster("aws").await.ok()??;
        cluster.last_seen_ms.filter(|seen| *seen > before + 500)
    })
    .await;
    phase("and work placed by g3 (which took the lease) runs there");
    let trust = atoll_api::tls::TrustRoots::load(&t.mesh.dir.certs().join("ca.pem")).expect("CA");
    let token = std::fs::read_to_string(t.mesh.dir.admin_token()).expect("admin token").trim().to_string();
    let g3_client = GatewayClient::new(
        trust.anonymous_client_config(atoll_api::tls::ServerPolicy::Gateway).expect("tls"),
        &g3_addr,
        Some(token),
        Duration::from_secs(5),
    )
    .expect("g3 client");
    let submitted = submit(&g3_client, ONE).await;
    let detail = wait_final(&g3_client, &id_of(&submitted, "one")).await;
    assert_eq!(detail.job.state, JobState::Finished);
    let aws_log = std::fs::read_to_string(t.mesh.dir.log_file("aws", 1)).unwrap_or_default();
    assert!(aws_log.contains(&g3_addr), "the agent's log names the replica it moved to");
    db.close().await;
    let _ = g3_process.kill();
    let _ = g3_process.wait();
}

/// A CLI config like the mesh's, naming only the replica at `addr`.
fn cli_config_for(t: &TestMesh, addr: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(t.mesh.dir.cli_config()).expect("CLI config");
    let only: String = text
        .lines()
        .map(|line| if line.starts_with("gateway:") { format!("gateway: [\"{addr}\"]") } else { line.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    let path = t.mesh.dir.root.join(format!("atoll-{}.yaml", addr.replace([':', '.'], "-")));
    std::fs::write(&path, only).expect("CLI config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_replica_stored_is_read_through_another() {
    let (t, _database) = replicas_mesh(2, 1).await;
    let addrs = t.mesh.layout.gateway.as_ref().expect("gateway").addrs();
    phase("atoll push through g1 alone");
    let source = tempfile::tempdir().expect("source dir");
    std::fs::write(source.path().join("data.txt"), "stored through one replica\n").expect("source file");
    let out = std::process::Command::new(common::atoll_exe())
        .arg("--config")
        .arg(cli_config_for(&t, &addrs[0]))
        .args(["push", source.path().to_str().expect("utf-8"), "--json"])
        .output()
        .expect("atoll push");
    assert!(out.status.success(), "atoll push: {}", String::from_utf8_lossy(&out.stderr));
    let pushed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("push --json");
    let digest = pushed["digest"].as_str().expect("digest").to_string();

    phase("g2 knows the source and serves its bytes from the shared store");
    let trust = atoll_api::tls::TrustRoots::load(&t.mesh.dir.certs().join("ca.pem")).expect("CA");
    let http = common::https_client(trust.anonymous_client_config(atoll_api::tls::ServerPolicy::Gateway).expect("tls"));
    let token = std::fs::read_to_string(t.mesh.dir.admin_token()).expect("admin token").trim().to_string();
    let get = |path: String| {
        let http = http.clone();
        let (addr, token) = (addrs[1].clone(), token.clone());
        async move {
            let response = http.get(format!("https://{addr}{path}")).bearer_auth(token).send().await.expect("GET");
            assert!(response.status().is_success(), "GET {path} through g2: {}", response.status());
            response.bytes().await.expect("body")
        }
    };
    let info: serde_json::Value = serde_json::from_slice(&get(format!("/v1/sources/{digest}")).await).expect("source");
    assert_eq!(info["digest"], digest.as_str(), "{info}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&get(format!("/v1/blobs/{digest}")).await).expect("manifest");
    let size = manifest["size"].as_u64().expect("size");
    let chunk = get(format!("/v1/blobs/{digest}/chunks/0")).await;
    assert_eq!(chunk.len() as u64, size.min(chunk.len() as u64));
    assert!(!chunk.is_empty(), "the bytes g1 stored come back through g2");
}

#[test]
fn configurations_the_replicas_cannot_share_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = "listen: 127.0.0.1:0\nca_dir: ca\nha: {enabled: true}\n";
    let pg = "database: {postgres: {url: \"postgres://atoll@127.0.0.1:1/x\"}}\n";
    let cases = [
        (base.to_string(), "ha.enabled: several gateway replicas need database.postgres"),
        (format!("{base}{pg}"), "storage.local.shared"),
        (format!("{base}{pg}storage: {{local: {{path: relay, shared: true}}}}\n"), "ca_dir:"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("gateway-{i}.yaml"));
        std::fs::write(&path, text).expect("config");
        let out = std::process::Command::new(common::atoll_exe())
            .args(["gateway", "--config"])
            .arg(&path)
            .output()
            .expect("run atoll gateway");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} must be refused");
        assert!(stderr.contains(key), "case {i}: expected {key:?} in:\n{stderr}");
    }
}
