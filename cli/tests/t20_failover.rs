//! Leader crash: a new leader takes over, and no acknowledged write is lost once the old leader
//! is back, whether it catches up from the log or, when the log it missed was purged, from a
//! snapshot.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use atoll_api::client::ClientError;
use atoll_api::ids::Term;
use atoll_api::node::Role;
use atoll_mesh::RaftKnobs;
use common::TestMesh;
use common::annotate_retrying;
use common::eventually;
use common::phase;

async fn write_many(
    t: &TestMesh,
    addrs: &[String],
    prefix: &str,
    n: usize,
    acked: &mut BTreeMap<String, (String, u64)>,
) {
    for i in 0..n {
        let key = format!("{prefix}.{i}");
        let value = format!("{prefix}-value-{i}");
        let ack = annotate_retrying(&t.client, addrs, &key, &value).await;
        acked.insert(key, (value, ack.revision));
    }
}

/// Wait for a survivor to lead with a term above `old_term`; returns its id.
async fn new_leader(t: &TestMesh, survivors: &[u64], old_term: u64) -> u64 {
    eventually(Duration::from_secs(15), "a survivor leads in a later term", || async {
        for id in survivors {
            if let Some(s) = t.status("aws", *id).await
                && s.role == Role::Leader
                && s.term > Term(old_term)
            {
                return Some(*id);
            }
        }
        None
    })
    .await
}

async fn assert_all_present(t: &TestMesh, acked: &BTreeMap<String, (String, u64)>) {
    let last = acked.values().map(|(_, rev)| *rev).max().unwrap_or(0);
    for id in t.ids("aws") {
        eventually(Duration::from_secs(30), &format!("node {id} applied up to {last}"), || async {
            t.status("aws", id).await.filter(|s| s.last_applied.unwrap_or(0) >= last)
        })
        .await;
        let annotations = t.client.annotations(&t.addr("aws", id)).await.expect("annotations");
        for (key, (value, _)) in acked {
            assert_eq!(annotations.get(key), Some(value), "node {id} lost acknowledged annotation {key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    phase("start one cluster of three replicas");
    let mut t = TestMesh::start(1, 3, RaftKnobs::default()).await;
    let leader = t.leader("aws").await;
    let addrs: Vec<String> = t.ids("aws").iter().map(|id| t.addr("aws", *id)).collect();
    let mut acked = BTreeMap::new();

    phase("write through every replica (followers forward to the leader)");
    write_many(&t, &addrs, "before", 30, &mut acked).await;

    phase("SIGKILL the leader while writing to the survivors, one try per write");
    t.mesh.kill("aws", leader.leader).expect("kill leader");
    let survivors: Vec<u64> = t.ids("aws").into_iter().filter(|id| *id != leader.leader).collect();
    // During the election a survivor may say it knows no leader or point at another replica;
    // it must never claim it is not the leader while naming itself. A leader just elected
    // whose lease a majority has not yet confirmed waits for it inside the write.
    let mut refusals = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let first = 'election: loop {
        assert!(tokio::time::Instant::now() < deadline, "no write accepted within 15 s of the kill");
        for id in &survivors {
            match t.client.annotate_once(&t.addr("aws", *id), "first.after.election", "v").await {
                Ok(ack) => break 'election ack,
                Err(ClientError::Api { error, .. }) => {
                    refusals += 1;
                    assert!(
                        error.leader.as_ref().is_none_or(|l| l.id != *id),
                        "node {id} refused a write naming itself leader: {}",
                        error.message
                    );
                }
                Err(_) => refusals += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    acked.insert("first.after.election".to_string(), ("v".to_string(), first.revision));
    eprintln!("{refusals} writes refused during the election");
    let successor = new_leader(&t, &survivors, leader.term).await;
    eprintln!("node {} took over from node {}", successor, leader.leader);

    phase("the survivors saw the process die and did not wait out its lease");
    let noticed = survivors.iter().any(|id| t.log("aws", *id).contains("leader process is gone"));
    assert!(noticed, "no survivor logged the fast failover");

    phase("keep writing while the old leader is down");
    let survivor_addrs: Vec<String> = survivors.iter().map(|id| t.addr("aws", *id)).collect();
    write_many(&t, &survivor_addrs, "during", 30, &mut acked).await;

    phase("restart the old leader: it rejoins as a follower and catches up from the log");
    t.mesh.spawn("aws", leader.leader).expect("restart");
    assert_all_present(&t, &acked).await;
    let old = t.status("aws", leader.leader).await.expect("old leader status");
    assert_eq!(old.role, Role::Follower);
    assert_eq!(old.leader.map(|l| l.id), Some(successor));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_leader_whose_log_was_purged_catches_up_from_a_snapshot() {
    phase("start a cluster that snapshots every 20 entries and keeps 5");
    let knobs =
        RaftKnobs { snapshot_after_entries: Some(20), keep_entries_after_snapshot: Some(5), ..RaftKnobs::default() };
    let mut t = TestMesh::start(1, 3, knobs).await;
    let leader = t.leader("aws").await;
    let addrs: Vec<String> = t.ids("aws").iter().map(|id| t.addr("aws", *id)).collect();
    let mut acked = BTreeMap::new();
    write_many(&t, &addrs, "before", 10, &mut acked).await;
    let old_applied = t.status("aws", leader.leader).await.and_then(|s| s.last_applied).unwrap_or(0);

    phase("SIGKILL the leader, then write enough for the others to snapshot and purge past it");
    t.mesh.kill("aws", leader.leader).expect("kill leader");
    let survivors: Vec<u64> = t.ids("aws").into_iter().filter(|id| *id != leader.leader).collect();
    let successor = new_leader(&t, &survivors, leader.term).await;
    let survivor_addrs: Vec<String> = survivors.iter().map(|id| t.addr("aws", *id)).collect();
    write_many(&t, &survivor_addrs, "during", 80, &mut acked).await;
    let purged = eventually(Duration::from_secs(20), "the new leader purged its log past the old leader", || async {
        t.status("aws", successor).await.and_then(|s| s.purged).filter(|p| *p > old_applied)
    })
    .await;
    eprintln!("new leader purged up to {purged}; old leader had applied {old_applied}");

    phase("restart the old leader: the entries it needs are gone, so it receives a snapshot");
    t.mesh.spawn("aws", leader.leader).expect("restart");
    assert_all_present(&t, &acked).await;
    let log = t.log("aws", leader.leader);
    assert!(log.contains("snapshot received; installing"), "the old leader did not install a snapshot");
    let status = t.status("aws", leader.leader).await.expect("status");
    assert!(status.snapshot.unwrap_or(0) > old_applied, "snapshot index {:?}", status.snapshot);
}
