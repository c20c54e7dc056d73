//! A corrupted, foreign or future-format data directory gives a clear error, never a panic.

use std::fs;
use std::path::Path;

use atoll_raft_store::Command;
use atoll_raft_store::OpenError;
use atoll_raft_store::TypeConfig;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::RaftSnapshotBuilder;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderIdExt;

fn log_id(index: u64) -> atoll_raft_store::types::LogId {
    LogId::new(openraft::impls::leader_id_std::LeaderId::new_committed(1, 1), index)
}

/// A data directory with a few log entries and a snapshot.
async fn populated(root: &Path) {
    let (_, mut log, mut state) = atoll_raft_store::open(root, "c", 1).unwrap();
    let entries: Vec<_> = (0..20)
        .map(|i| openraft::Entry {
            log_id: log_id(i),
            payload: EntryPayload::Normal(Command::SetAnnotation { key: format!("k{i}"), value: "v".repeat(64) }),
        })
        .collect();
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
    let mut builder = state.get_snapshot_builder().await;
    builder.build_snapshot().await.unwrap();
}

fn open_err(root: &Path) -> OpenError {
    match atoll_raft_store::open(root, "c", 1) {
        Ok(_) => panic!("opening {} should fail", root.display()),
        Err(e) => e,
    }
}

#[tokio::test]
async fn garbage_in_place_of_the_log_is_reported_as_corruption() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path()).await;
    let log = dir.path().join("raft/log.redb");
    let size = fs::metadata(&log).unwrap().len() as usize;
    fs::write(&log, (0..size).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>()).unwrap();
    let err = open_err(dir.path());
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("log.redb"), "{err}");
}

#[tokio::test]
async fn swapped_store_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path()).await;
    let raft = dir.path().join("raft");
    fs::rename(raft.join("log.redb"), raft.join("x")).unwrap();
    fs::rename(raft.join("state.redb"), raft.join("log.redb")).unwrap();
    fs::rename(raft.join("x"), raft.join("state.redb")).unwrap();
    let err = open_err(dir.path());
    assert!(err.to_string().contains("atoll-raft-state/1"), "{err}");
}

#[tokio::test]
async fn a_truncated_snapshot_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path()).await;
    let snap = dir.path().join("raft/snapshots/current.snap");
    fs::write(&snap, b"").unwrap();
    let err = open_err(dir.path());
    assert!(err.to_string().contains("current.snap"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    populated(dir.path()).await;
    let snap = dir.path().join("raft/snapshots/current.snap");
    fs::write(&snap, br#"{"header":{"magic":"atoll-snapshot","format":99,"meta":{}}}"#).unwrap();
    let err = open_err(dir.path());
    assert!(err.to_string().contains("format"), "{err}");
}

#[tokio::test]
async fn a_foreign_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("member/snap")).unwrap();
    fs::write(dir.path().join("member/wal"), b"etcd").unwrap();
    let err = open_err(dir.path());
    assert!(matches!(err, OpenError::Foreign { .. }), "{err}");
}

/// Flip bytes all over the log file: opening must return (Ok or a clear error), never panic.
#[tokio::test]
async fn random_byte_flips_never_panic() {
    for round in 0..24u64 {
        let dir = tempfile::tempdir().unwrap();
        populated(dir.path()).await;
        let path = dir.path().join(if round % 2 == 0 { "raft/log.redb" } else { "raft/state.redb" });
        let mut bytes = fs::read(&path).unwrap();
        let len = bytes.len() as u64;
        let mut seed = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for _ in 0..16 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed % len) as usize;
            bytes[at] ^= 0xA5;
        }
        fs::write(&path, &bytes).unwrap();
        let root = dir.path().to_path_buf();
        let outcome = std::panic::catch_unwind(|| atoll_raft_store::open(&root, "c", 1).map(|_| ()));
        match outcome {
            Ok(Ok(())) => eprintln!("round {round}: flips landed in unused space; opened fine"),
            Ok(Err(e)) => eprintln!("round {round}: refused: {e}"),
            Err(_) => panic!("round {round}: opening a corrupted store panicked"),
        }
    }
}
