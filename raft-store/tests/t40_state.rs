//! The replicated state: commands applied, then carried whole through a snapshot to another
//! replica.

use atoll_raft_store::Command;
use atoll_raft_store::MeshPeer;
use atoll_raft_store::MeshView;
use atoll_raft_store::jobs::EndState;
use atoll_raft_store::jobs::JobOp;
use atoll_raft_store::jobs::RunState;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use openraft::vote::RaftLeaderIdExt;

fn entry(index: u64, command: Command) -> atoll_raft_store::types::Entry {
    openraft::Entry {
        log_id: LogId::new(openraft::impls::leader_id_std::LeaderId::new_committed(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

#[tokio::test]
async fn every_kind_of_state_travels_in_a_snapshot() {
    let source_dir = tempfile::tempdir().unwrap();
    let (_, _, mut source) = atoll_raft_store::open(source_dir.path(), "c", 1).unwrap();
    let view = MeshView {
        peers: vec![MeshPeer { name: "gcp".into(), endpoint: "10.0.0.2:7101".into(), labels: vec!["gcp".into()] }],
        revoked: vec!["old".into()],
    };
    let commands = vec![
        entry(1, Command::SetAnnotation { key: "team".into(), value: "platform".into() }),
        entry(2, Command::RegisterReplica { node_id: 1, incarnation: "abc".into() }),
        entry(3, Command::SetMeshView { view: view.clone() }),
        entry(4, Command::SetAnnotation { key: "team".into(), value: "infra".into() }),
        entry(
            5,
            Command::Jobs {
                ops: vec![
                    JobOp::Accept {
                        job: "a".into(),
                        pipeline: "p".into(),
                        attempt: 1,
                        spec: "{}".into(),
                        inputs: String::new(),
                    },
                    JobOp::Accept {
                        job: "b".into(),
                        pipeline: "p".into(),
                        attempt: 2,
                        spec: "{}".into(),
                        inputs: String::new(),
                    },
                    JobOp::Start {
                        job: "a".into(),
                        attempt: 1,
                        term: 3,
                        node: 1,
                        handle: Some("k8s-a-1".into()),
                        secret: None,
                    },
                    JobOp::Start { job: "b".into(), attempt: 1, term: 3, node: 1, handle: None, secret: None },
                ],
            },
        ),
        entry(
            6,
            Command::Jobs {
                ops: vec![JobOp::End {
                    job: "b".into(),
                    attempt: 2,
                    state: EndState::Failure,
                    exit_code: Some(3),
                    message: None,
                }],
            },
        ),
    ];
    source.apply(futures::stream::iter(commands.into_iter().map(|e| Ok((e, None))))).await.unwrap();
    assert_eq!(source.mesh_view().unwrap(), view);
    let team = source.annotation("team").unwrap().unwrap();
    assert_eq!((team.value.as_str(), team.version, team.revision), ("infra", 2, 4));
    let jobs = source.jobs().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].run, RunState::Started { term: 3, node: 1, handle: Some("k8s-a-1".into()), secret: None });
    // b's start named attempt 1 while attempt 2 is held: it changed nothing.
    assert_eq!(jobs[1].run, RunState::Ended { state: EndState::Failure, exit_code: Some(3), message: None });

    let snapshot = source.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let (_, _, mut target) = atoll_raft_store::open(target_dir.path(), "c", 2).unwrap();
    target.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    assert_eq!(target.mesh_view().unwrap(), view);
    assert_eq!(target.annotations().unwrap(), source.annotations().unwrap());
    assert_eq!(target.replicas().unwrap(), source.replicas().unwrap());
    assert_eq!(target.jobs().unwrap(), jobs);
    assert_eq!(target.last_applied().unwrap().map(|id| id.index), Some(6));
}
