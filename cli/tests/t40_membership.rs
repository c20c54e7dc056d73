//! Membership: a new replica joins as a learner, catches up and is promoted; a voter is removed;
//! ids are never reused; a wiped replica that comes back under its old id is refused.

mod common;

use std::collections::BTreeMap;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use atoll_api::ErrorCode;
use atoll_api::Identity;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::KeyAlgorithm;
use atoll_mesh::EXIT_WITH_PARENT_ENV;
use atoll_mesh::RaftKnobs;
use atoll_mesh::allocate_ports;
use common::TestMesh;
use common::annotate_retrying;
use common::atoll_exe;
use common::eventually;
use common::https_client;
use common::issued_identity;
use common::phase;

/// A replica started by the test itself (not part of the mesh layout); killed on drop.
struct Extra {
    child: Child,
    addr: String,
    log: std::path::PathBuf,
}

impl Drop for Extra {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write files for node `id` of aws (peers: the initial voters) and start it.
fn start_extra(t: &TestMesh, id: u64) -> Extra {
    let ca = CertificateAuthority::load(&t.mesh.dir.certs()).unwrap();
    let name = format!("aws-{id}");
    ca.issue(&Identity::node("aws".parse().unwrap(), id), Duration::from_secs(86_400), KeyAlgorithm::EcdsaP256)
        .unwrap()
        .save(&t.mesh.dir.certs(), &name)
        .unwrap();
    let ports = allocate_ports(2, 0).unwrap();
    let addr = format!("127.0.0.1:{}", ports[0]);
    let dir = t.mesh.dir.root.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let peers: String =
        t.ids("aws").iter().map(|i| format!("  - {{id: {i}, addr: \"{}\"}}\n", t.addr("aws", *i))).collect();
    let yaml = format!(
        "cluster: {{name: aws, labels: [aws]}}\nnode: {{id: {id}, data_dir: data}}\nlisten: \"{addr}\"\nops_listen: \"127.0.0.1:{}\"\npeers:\n{peers}tls: {{ca: ../certs/ca.pem, cert: ../certs/{name}.pem, key: ../certs/{name}-key.pem}}\n",
        ports[1]
    );
    std::fs::write(dir.join("agent.yaml"), yaml).unwrap();
    let log = t.mesh.dir.root.join("logs").join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(atoll_exe())
        .args(["agent", "--config"])
        .arg(dir.join("agent.yaml"))
        .env(EXIT_WITH_PARENT_ENV, "1")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Extra { child, addr, log }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_join_leave_and_ids_are_never_reused() {
    let mut t = TestMesh::start(1, 3, RaftKnobs::default()).await;
    t.leader("aws").await;
    let any = t.addr("aws", 1);
    let addrs: Vec<String> = t.ids("aws").iter().map(|i| t.addr("aws", *i)).collect();
    let mut acked = BTreeMap::new();
    for i in 0..20 {
        let ack = annotate_retrying(&t.client, &addrs, &format!("k{i}"), "v").await;
        acked.insert(format!("k{i}"), ack.revision);
    }

    phase("start node 4: the group exists, so it waits to be added");
    let four = start_extra(&t, 4);
    eventually(Duration::from_secs(20), "node 4 waits for the leader", || async {
        std::fs::read_to_string(&four.log).unwrap_or_default().contains("the group exists").then_some(())
    })
    .await;

    phase("add node 4 as a learner (returns once it caught up), then promote it");
    let ack = t.client.add_learner(&any, 4, &four.addr).await.expect("add learner");
    assert!(ack.members.iter().any(|m| m.id == 4 && !m.voter), "{:?}", ack.members);
    let ack = t.client.promote(&any, 4).await.expect("promote");
    assert_eq!(ack.members.iter().filter(|m| m.voter).count(), 4, "{:?}", ack.members);
    let annotations = t.client.annotations(&four.addr).await.expect("node 4 annotations");
    assert!(acked.keys().all(|k| annotations.contains_key(k)), "node 4 has not caught up");

    phase("membership changes are refused when they make no sense");
    let err = t.client.add_learner(&any, 4, "127.0.0.1:9").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err}");
    let err = t.client.promote(&any, 4).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err}");
    let err = t.client.remove(&any, 42).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");

    phase("remove node 1; the group keeps working with 2, 3 and 4");
    let ack = t.client.remove(&t.addr("aws", 2), 1).await.expect("remove node 1");
    let voters: Vec<u64> = ack.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    assert_eq!(voters, vec![2, 3, 4]);
    let remaining = vec![t.addr("aws", 2), t.addr("aws", 3), four.addr.clone()];
    annotate_retrying(&t.client, &remaining, "after.removal", "ok").await;

    phase("node id 1 was used: it cannot be given to a new replica");
    let err = t.client.add_learner(&t.addr("aws", 2), 1, "127.0.0.1:9").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err}");
    assert!(err.to_string().contains("ids are never reused"), "{err}");

    phase("wipe node 3's data and start it again under id 3: it refuses to rejoin");
    t.mesh.kill("aws", 3).unwrap();
    std::fs::remove_dir_all(t.mesh.dir.data_dir("aws", 3)).unwrap();
    t.mesh.spawn("aws", 3).unwrap();
    let status = eventually(Duration::from_secs(30), "the wiped replica exits", || {
        let exited = t.mesh.reap();
        async move { exited.into_iter().find(|((_, id), _)| *id == 3).map(|(_, status)| status) }
    })
    .await;
    assert!(!status.success(), "a wiped replica must not run");
    let log = t.log("aws", 3);
    assert!(log.contains("rejoin under a new id"), "log of the wiped replica:\n{log}");

    phase("the group still has a quorum (2 and 4 of 2, 3, 4) and accepts writes");
    annotate_retrying(&t.client, &[t.addr("aws", 2), four.addr.clone()], "after.wipe", "ok").await;
}

/// The cause of a leader crash once seen under load: a wiped replica, restarted under its old
/// id, answered the leader's append with an empty log before its bootstrap refused it, and the
/// leader (rightly) treated a follower's log going backwards as a broken invariant. A replica
/// that has not decided whether it belongs in the group must answer no consensus RPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_replica_answers_no_consensus_rpc() {
    let mut t = TestMesh::start(1, 3, RaftKnobs::default()).await;
    t.leader("aws").await;

    phase("stop every replica, wipe node 3 and start only it: alone, it cannot decide and waits");
    for id in [1, 2, 3] {
        t.mesh.kill("aws", id).unwrap();
    }
    std::fs::remove_dir_all(t.mesh.dir.data_dir("aws", 3)).unwrap();
    t.mesh.spawn("aws", 3).unwrap();
    eventually(Duration::from_secs(20), "node 3 waits for its peers", || async {
        t.log("aws", 3).contains("waiting for peers before bootstrapping").then_some(())
    })
    .await;

    phase("speaking as node 2: appends, votes and pre-votes are refused as unavailable; bootstrap answers");
    let ca = CertificateAuthority::load(&t.mesh.dir.certs()).unwrap();
    let node2 = ca
        .issue(&Identity::node("aws".parse().unwrap(), 2), Duration::from_secs(86_400), KeyAlgorithm::EcdsaP256)
        .unwrap();
    let client =
        https_client(issued_identity(&ca, &node2).client_config(atoll_api::tls::ServerPolicy::AnyNode).unwrap());
    let target = t.addr("aws", 3);
    for rpc in ["append", "vote", "pre-vote", "snapshot"] {
        let response = client
            .post(format!("https://{target}/raft/v1/{rpc}"))
            .header("x-atoll-raft-protocol", "1")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503, "{rpc}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable", "{rpc}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("not yet decided"), "{rpc}: {body}");
    }
    let response = client
        .get(format!("https://{target}/raft/v1/bootstrap"))
        .header("x-atoll-raft-protocol", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the bootstrap question is answered while undecided");
}
