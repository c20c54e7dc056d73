//! SIGTERM of the leader: it hands leadership over before it stops, so the others never wait
//! out a lease, and nothing acknowledged is lost.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use atoll_api::node::Role;
use atoll_mesh::RaftKnobs;
use common::TestMesh;
use common::annotate_retrying;
use common::eventually;
use common::phase;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_leader_hands_over_first() {
    let mut t = TestMesh::start(1, 3, RaftKnobs::default()).await;
    let leader = t.leader("aws").await;
    let addrs: Vec<String> = t.ids("aws").iter().map(|i| t.addr("aws", *i)).collect();
    let mut acked = BTreeMap::new();
    for i in 0..20 {
        let ack = annotate_retrying(&t.client, &addrs, &format!("k{i}"), "v").await;
        acked.insert(format!("k{i}"), ack.revision);
    }

    phase("SIGTERM the leader and wait for it to exit cleanly");
    t.mesh.signal("aws", leader.leader, Signal::SIGTERM).unwrap();
    let status = eventually(Duration::from_secs(20), "the leader exits", || {
        let exited = t.mesh.reap();
        async move { exited.into_iter().find(|((_, id), _)| *id == leader.leader).map(|(_, s)| s) }
    })
    .await;
    assert!(status.success(), "exit status {status}");
    let log = t.log("aws", leader.leader);
    assert!(log.contains("leadership handed over"), "the leader did not hand over:\n{log}");
    for line in ["readiness off", "draining requests", "stopping the raft core", "stopped"] {
        assert!(log.contains(line), "shutdown step {line:?} missing:\n{log}");
    }

    phase("a survivor leads, without having needed the dead-leader fast path");
    let survivors: Vec<u64> = t.ids("aws").into_iter().filter(|i| *i != leader.leader).collect();
    eventually(Duration::from_secs(5), "a survivor leads", || async {
        for id in &survivors {
            if t.status("aws", *id).await.is_some_and(|s| s.role == Role::Leader) {
                return Some(());
            }
        }
        None
    })
    .await;
    for id in &survivors {
        assert!(!t.log("aws", *id).contains("leader process is gone"), "node {id} saw a crash, not a hand-over");
    }

    phase("everything acknowledged is still there");
    let annotations = t.client.annotations(&t.addr("aws", survivors[0])).await.unwrap();
    assert!(acked.keys().all(|k| annotations.contains_key(k)));
}
