//! The registry and the matrix against a real gateway and real replicas, on SQLite and on
//! PostgreSQL: a leader failover re-registers at a higher term and fences the old leader (also
//! across a gateway crash); a cluster killed entirely goes suspect, then dead, and its row goes
//! unknown; the dev cuts show as a one-way cut and a relayed pair; a cut made at run time shows
//! and heals.

mod common;

use std::time::Duration;
use std::time::Instant;

use atoll_api::ErrorCode;
use atoll_api::client::ClientError;
use atoll_api::gateway::ClusterState;
use atoll_api::gateway::Heartbeat;
use atoll_api::gateway::LinkState;
use atoll_api::gateway::RowCell;
use atoll_api::gateway::RowReport;
use atoll_api::gateway::TransferMode;
use atoll_api::ids::Term;
use common::Engine;
use common::GatewayMesh;
use common::eventually;
use common::phase;
use common::test_gateway_timing;
use nix::sys::signal::Signal;

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (ErrorCode, String) {
    match result {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(e) => (e.code().unwrap_or_else(|| panic!("expected an API error, got {e}")), e.to_string()),
    }
}

async fn failover_fencing(engine: Engine) {
    let mut mesh = GatewayMesh::start(engine, 1, 3, test_gateway_timing(), false).await;
    let before = mesh.cluster("aws").await.expect("aws registered");
    let (old_leader, old_term) = (before.leader.expect("leader"), before.term);
    assert!(old_term >= Term(1));
    assert_eq!(before.replicas.len(), 3, "the registration lists every replica: {:?}", before.replicas);

    phase("SIGKILL the leader: the new leader registers at a higher term");
    let killed_at = Instant::now();
    mesh.t.mesh.kill("aws", old_leader).expect("kill leader");
    let after = eventually(Duration::from_secs(30), "a new leader registered", || async {
        mesh.cluster("aws").await.filter(|c| c.term > old_term && c.leader.is_some_and(|l| l != old_leader))
    })
    .await;
    eprintln!(
        "re-registered {} ms after the kill: leader {} term {} (was {old_leader} at {old_term})",
        killed_at.elapsed().as_millis(),
        after.leader.unwrap_or(0),
        after.term
    );
    assert_eq!(after.state, ClusterState::Alive);

    phase("the old leader's heartbeat and row, at the old term, get 409 stale_leader");
    let stale = mesh.as_replica("aws", old_leader);
    let heartbeat = Heartbeat {
        term: old_term,
        leader_id: old_leader,
        endpoint: mesh.t.addr("aws", old_leader),
        labels: vec!["aws".into()],
        replicas: vec![],
        view_revision: None,
        capabilities: None,
    };
    let (code_seen, message) = code(stale.heartbeat("aws", &heartbeat).await);
    assert_eq!(code_seen, ErrorCode::StaleLeader, "{message}");
    assert!(message.contains(&format!("this heartbeat is from term {old_term}")), "{message}");
    let row = RowReport { term: old_term, cells: vec![] };
    assert_eq!(code(stale.report_row("aws", &row).await).0, ErrorCode::StaleLeader);
    let unchanged = mesh.cluster("aws").await.expect("aws");
    assert_eq!(
        (unchanged.leader, unchanged.term),
        (after.leader, after.term),
        "a stale heartbeat changed the registration"
    );

    phase("a row for a term that never registered is a conflict, not a fence");
    let new_leader = after.leader.expect("leader");
    let ahead = mesh.as_replica("aws", new_leader);
    let (code_seen, message) =
        code(ahead.report_row("aws", &RowReport { term: Term(after.term.0 + 5), cells: vec![] }).await);
    assert_eq!(code_seen, ErrorCode::Conflict, "{message}");

    phase("bad rows name the cell");
    let bad = RowReport {
        term: after.term,
        cells: vec![RowCell { to: "gcp".into(), state: LinkState::Reachable, rtt_ms: Some(1.0), loss: 2.0 }],
    };
    let (code_seen, message) = code(ahead.report_row("aws", &bad).await);
    assert_eq!(code_seen, ErrorCode::BadRequest);
    assert!(message.contains("cells[0]"), "{message}");

    phase("SIGKILL the gateway and start it again: the highest term survives, the fence holds");
    mesh.t.mesh.kill_gateway(0);
    mesh.t.mesh.spawn_gateway(0).expect("restart gateway");
    mesh.t.mesh.wait_for_gateway(0, Duration::from_secs(30)).await.expect("gateway back");
    assert_eq!(code(stale.heartbeat("aws", &heartbeat).await).0, ErrorCode::StaleLeader);
    let back = eventually(Duration::from_secs(30), "the leader heartbeats the restarted gateway", || async {
        mesh.cluster("aws")
            .await
            .filter(|c| c.state == ClusterState::Alive && c.last_seen_ms.is_some_and(|ms| ms < 1_000))
    })
    .await;
    assert_eq!((back.leader, back.term), (after.leader, after.term));

    phase("the old leader comes back as a follower; the registration keeps the new leader");
    mesh.t.mesh.spawn("aws", old_leader).expect("restart old leader");
    eventually(Duration::from_secs(30), "the old leader rejoined", || async {
        mesh.t.status("aws", old_leader).await.filter(|s| s.leader.as_ref().map(|l| l.id) == after.leader)
    })
    .await;
    let still = mesh.cluster("aws").await.expect("aws");
    assert_eq!((still.leader, still.term), (after.leader, after.term));

    phase("a paused leader that resumes does not take the registration back");
    let paused = after.leader.expect("leader");
    mesh.t.mesh.signal("aws", paused, Signal::SIGSTOP).expect("SIGSTOP");
    let third = eventually(Duration::from_secs(30), "a leader after the pause registered", || async {
        mesh.cluster("aws").await.filter(|c| c.term > after.term && c.leader.is_some_and(|l| l != paused))
    })
    .await;
    mesh.t.mesh.signal("aws", paused, Signal::SIGCONT).expect("SIGCONT");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = mesh.cluster("aws").await.expect("aws");
        assert_eq!((now.leader, now.term), (third.leader, third.term), "the resumed leader took the registration back");
    }
}

on_both_engines!(failover_fencing, failover_fencing_sqlite, failover_fencing_postgres);

async fn dead_cluster(engine: Engine) {
    let mut mesh = GatewayMesh::start(engine, 2, 1, test_gateway_timing(), false).await;
    mesh.wait_cell("aws", "gcp", LinkState::Reachable, Duration::from_secs(30)).await;
    mesh.wait_cell("gcp", "aws", LinkState::Reachable, Duration::from_secs(30)).await;

    phase("SIGKILL every replica of gcp: suspect, then dead, by the age of its last heartbeat");
    // Each answer's state must agree with the heartbeat age it reports (one clock reading on the
    // gateway), and states only worsen. The 1.5 s suspect window is checked whenever a poll lands
    // in it; a poll delayed past it on a loaded machine must not fail the test.
    let timing = test_gateway_timing();
    let killed_at = Instant::now();
    mesh.t.mesh.kill("gcp", 1).expect("kill gcp");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let info = mesh.cluster("gcp").await.expect("gcp listed");
        let age = info.last_seen_ms.expect("gcp was seen");
        let expected = match age {
            a if a >= timing.dead_after_ms => ClusterState::Dead,
            a if a >= timing.suspect_after_ms => ClusterState::Suspect,
            _ => ClusterState::Alive,
        };
        assert_eq!(info.state, expected, "state disagrees with heartbeat age {age} ms: {info:?}");
        if seen.last() != Some(&info.state) {
            eprintln!("gcp {} (heartbeat {age} ms old) at {} ms", info.state, killed_at.elapsed().as_millis());
            seen.push(info.state);
        }
        if info.state == ClusterState::Dead {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rank = |s: &ClusterState| match s {
        ClusterState::Alive => 0,
        ClusterState::Suspect => 1,
        ClusterState::Dead => 2,
    };
    assert!(seen.windows(2).all(|w| rank(&w[0]) < rank(&w[1])), "states only worsen: {seen:?}");
    assert_eq!(seen.last(), Some(&ClusterState::Dead), "dead within 30 s: {seen:?}");

    phase("aws's probes fail: aws->gcp unreachable; gcp's own row goes unknown once stale");
    mesh.wait_cell("aws", "gcp", LinkState::Unreachable, Duration::from_secs(30)).await;
    let unknown = mesh.wait_cell("gcp", "aws", LinkState::Unknown, Duration::from_secs(30)).await;
    assert!(unknown.age_ms.is_some_and(|age| age >= 2_000), "{unknown:?}");
    assert_eq!(unknown.mode, TransferMode::Relay, "no direction known to work: {unknown:?}");

    phase("gcp comes back: alive, reachable both ways");
    mesh.t.mesh.spawn("gcp", 1).expect("restart gcp");
    eventually(Duration::from_secs(30), "gcp alive again", || async {
        mesh.cluster("gcp").await.filter(|c| c.state == ClusterState::Alive)
    })
    .await;
    mesh.wait_cell("aws", "gcp", LinkState::Reachable, Duration::from_secs(30)).await;
    mesh.wait_cell("gcp", "aws", LinkState::Reachable, Duration::from_secs(30)).await;
}

on_both_engines!(dead_cluster, dead_cluster_sqlite, dead_cluster_postgres);

async fn matrix_cuts(engine: Engine) {
    let mesh = GatewayMesh::start(engine, 3, 1, test_gateway_timing(), true).await;

    phase("the dev cuts: aws->onprem one way (direct the other way), gcp<->onprem both (relay)");
    let wait = Duration::from_secs(30);
    let expected = [
        ("aws", "onprem", LinkState::Unreachable, TransferMode::Direct),
        ("onprem", "aws", LinkState::Reachable, TransferMode::Direct),
        ("gcp", "onprem", LinkState::Unreachable, TransferMode::Relay),
        ("onprem", "gcp", LinkState::Unreachable, TransferMode::Relay),
        ("aws", "gcp", LinkState::Reachable, TransferMode::Direct),
        ("gcp", "aws", LinkState::Reachable, TransferMode::Direct),
    ];
    for (from, to, state, _) in expected {
        mesh.wait_cell(from, to, state, wait).await;
    }
    let matrix = mesh.gateway.matrix().await.expect("matrix");
    for (from, to, state, mode) in expected {
        let cell = matrix.cells.iter().find(|c| c.from == from && c.to == to).expect("cell");
        assert_eq!((cell.state, cell.mode), (state, mode), "{cell:?}");
        if state == LinkState::Reachable {
            assert!(cell.rtt_ms.is_some_and(|rtt| rtt >= 0.0), "{cell:?}");
        }
    }

    phase("atoll matrix --json has the contract fields; the table marks relays");
    let out = mesh.cli(&["matrix", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let matrix: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(matrix["clusters"], serde_json::json!(["aws", "gcp", "onprem"]));
    let cells = matrix["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 6, "directed pairs of 3 clusters");
    for field in ["from", "to", "state", "rtt_ms", "loss", "age_ms", "mode"] {
        assert!(cells[0].get(field).is_some(), "cell lacks {field}: {}", cells[0]);
    }
    let out = mesh.cli(&["matrix"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let onprem_row = table.lines().find(|l| l.starts_with("onprem")).expect("onprem row");
    assert!(onprem_row.contains("unreachable [relay]") && onprem_row.contains("reachable"), "{table}");

    phase("cut gcp->aws at run time with the annotation, then heal it");
    let aws = mesh.t.addr("aws", 1);
    let cut_at = Instant::now();
    mesh.t.client.annotate(&aws, "atoll.io/refuse-inbound-from", "gcp").await.expect("annotate");
    let cell = mesh.wait_cell("gcp", "aws", LinkState::Unreachable, wait).await;
    eprintln!("gcp->aws unreachable {} ms after the cut", cut_at.elapsed().as_millis());
    assert_eq!(cell.mode, TransferMode::Direct, "aws still reaches gcp: {cell:?}");
    let healed_at = Instant::now();
    mesh.t.client.delete_annotation(&aws, "atoll.io/refuse-inbound-from").await.expect("delete annotation");
    mesh.wait_cell("gcp", "aws", LinkState::Reachable, wait).await;
    eprintln!("gcp->aws reachable {} ms after the heal", healed_at.elapsed().as_millis());
}

on_both_engines!(matrix_cuts, matrix_cuts_sqlite, matrix_cuts_postgres);
