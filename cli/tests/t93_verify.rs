//! `atoll verify` against a live mesh: every check passes on a healthy one; `--disruptive` kills a
//! leader (pid from nodes.json) and reports the failover it measured; a dead cluster and a stale
//! matrix fail the run with a non-zero exit, naming what is wrong.

mod common;

use std::time::Duration;

use atoll_api::gateway::ClusterState;
use atoll_api::gateway::LinkState;
use common::Engine;
use common::GatewayMesh;
use common::eventually;
use common::phase;
use common::test_gateway_timing;

fn report(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_checks_a_live_mesh_and_measures_a_failover() {
    let mut mesh = GatewayMesh::start(Engine::Sqlite, 2, 3, test_gateway_timing(), false).await;
    for (from, to) in [("aws", "gcp"), ("gcp", "aws")] {
        mesh.wait_cell(from, to, LinkState::Reachable, Duration::from_secs(30)).await;
    }

    phase("a healthy mesh: every check passes");
    let out = mesh.cli(&["verify", "--json"]);
    let healthy = report(&out);
    assert!(out.status.success() && healthy["ok"] == true, "{healthy}");
    for name in [
        "gateway",
        "operator certificate",
        "leader aws",
        "leader gcp",
        "certificate aws-1",
        "certificate gcp-3",
        "link aws->gcp",
        "link gcp->aws",
        "matrix freshness",
    ] {
        assert_eq!(check(&healthy, name)["status"], "ok", "{name}: {healthy}");
    }

    phase("--disruptive kills aws's leader by the pid in nodes.json and times the election");
    let nodes = mesh.t.mesh.dir.nodes_json();
    let before = mesh.cluster("aws").await.expect("aws").leader.expect("leader");
    let out = mesh.cli(&["verify", "--json", "--disruptive", "--cluster", "aws", "--nodes", nodes.to_str().unwrap()]);
    let disrupted = report(&out);
    assert!(out.status.success(), "{disrupted}");
    let failover = &disrupted["failover"];
    assert_eq!((failover["cluster"].as_str(), failover["how"].as_str()), (Some("aws"), Some("kill")), "{failover}");
    assert_eq!(failover["old_leader"], before, "{failover}");
    assert_ne!(failover["new_leader"], before, "{failover}");
    assert!(failover["ms"].as_u64().is_some(), "{failover}");
    assert!(failover["new_term"].as_u64() > failover["old_term"].as_u64(), "{failover}");
    assert!(
        mesh.t.mesh.reap().iter().any(|((c, id), _)| c == "aws" && *id == before),
        "the old leader's process is gone"
    );

    phase("--disruptive naming a cluster that does not exist fails saying so, and kills nothing");
    let pids: Vec<Option<u32>> = mesh.t.ids("gcp").iter().map(|id| mesh.t.mesh.pid("gcp", *id)).collect();
    let out = mesh.cli(&["verify", "--json", "--disruptive", "--cluster", "nosuch"]);
    let refused = report(&out);
    assert!(!out.status.success(), "{refused}");
    assert_eq!(check(&refused, "failover")["status"], "fail", "{refused}");
    assert!(
        check(&refused, "failover")["detail"].as_str().is_some_and(|d| d.contains("no cluster nosuch")),
        "{refused}"
    );
    assert!(mesh.t.mesh.reap().is_empty(), "nothing was killed");
    assert_eq!(pids, mesh.t.ids("gcp").iter().map(|id| mesh.t.mesh.pid("gcp", *id)).collect::<Vec<_>>());

    phase("every replica of gcp dies: its leader check fails, then its rows go stale; exit non-zero");
    for id in mesh.t.ids("gcp") {
        mesh.t.mesh.kill("gcp", id).expect("kill");
    }
    eventually(Duration::from_secs(30), "gcp dead", || async {
        mesh.cluster("gcp").await.filter(|c| c.state == ClusterState::Dead)
    })
    .await;
    mesh.wait_cell("gcp", "aws", LinkState::Unknown, Duration::from_secs(30)).await;
    let out = mesh.cli(&["verify", "--json"]);
    let broken = report(&out);
    assert!(!out.status.success() && broken["ok"] == false, "{broken}");
    assert_eq!(check(&broken, "leader gcp")["status"], "fail", "{broken}");
    assert_eq!(check(&broken, "matrix freshness")["status"], "fail", "{broken}");
    assert_eq!(check(&broken, "certificate gcp-1")["status"], "warn", "not reachable from here: {broken}");
    let table = mesh.cli(&["verify"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("FAIL  leader gcp") && text.contains("checks:"), "{text}");
}
