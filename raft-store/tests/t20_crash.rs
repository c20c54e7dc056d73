//! Crash safety: a process appends entries (and saves votes, and purges) in a loop, printing each
//! operation once openraft would consider it durable; the test SIGKILLs it at a random moment,
//! reopens the store and checks that everything acknowledged is there, with no hole. Repeated
//! many times on the same data directory, so each round also starts from a crash-recovered store.
//!
//! The child is this test binary itself, re-run with `ATOLL_CRASH_CHILD_DIR` set.

use std::io::BufRead;
use std::io::BufReader;
use std::process::Command as Process;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

use atoll_raft_store::Command;
use atoll_raft_store::TypeConfig;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::RaftLogReader;
use openraft::Vote;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderIdExt;

const ROUNDS: usize = 40;
const CHILD_ENV: &str = "ATOLL_CRASH_CHILD_DIR";

fn log_id(term: u64, index: u64) -> atoll_raft_store::types::LogId {
    LogId::new(openraft::impls::leader_id_std::LeaderId::new_committed(term, 1), index)
}

/// The appender. Runs forever when started by the crash test; when run as an ordinary test it
/// appends a bounded number of entries and checks them, so it is a real test either way.
#[tokio::test(flavor = "current_thread")]
async fn crash_child_appender() {
    let (dir, bounded) = match std::env::var(CHILD_ENV) {
        Ok(dir) => (std::path::PathBuf::from(dir), None),
        Err(_) => (tempfile::tempdir().unwrap().keep(), Some(50u64)),
    };
    let (_, mut log, _) = atoll_raft_store::open(&dir, "crash", 1).expect("open store");
    let state = log.get_log_state().await.expect("log state");
    let mut next = state.last_log_id.map_or(0, |id| id.index + 1);
    let mut term = log.read_vote().await.expect("vote").map_or(1, |v| v.leader_id.term + 1);
    let start = next;
    loop {
        if bounded.is_some_and(|n| next - start >= n) {
            break;
        }
        if next % 16 == 0 {
            let vote = Vote::new_committed(term, 1);
            log.save_vote(&vote).await.expect("save vote");
            println!("vote {term}");
            term += 1;
        }
        if next % 64 == 63 && next > 40 {
            let upto = next - 40;
            log.purge(log_id(1, upto)).await.expect("purge");
            println!("purge {upto}");
        }
        let entry = openraft::Entry {
            log_id: log_id(1, next),
            payload: EntryPayload::Normal(Command::SetAnnotation { key: format!("k{next}"), value: "v".into() }),
        };
        let (tx, rx) = TypeConfig::oneshot();
        log.append([entry], IOFlushed::signal(tx)).await.expect("append");
        rx.await.expect("flush callback").expect("flush result");
        println!("ack {next}");
        next += 1;
    }
    let entries = log.try_get_log_entries(start..next).await.expect("read back");
    assert_eq!(entries.len() as u64, next - start);
}

#[derive(Default, Debug)]
struct Acked {
    entries: Vec<u64>,
    max_vote_term: u64,
    purged: u64,
}

#[tokio::test(flavor = "current_thread")]
async fn acknowledged_entries_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut total_acked = 0usize;
    let mut highest_acked: Option<u64> = None;
    for round in 0..ROUNDS {
        let kill_after = Duration::from_millis(30 + rand::random::<u64>() % 200);
        eprintln!("round {round}: start an appender, SIGKILL it after {kill_after:?}");
        let stderr_path = dir.path().join("child-stderr.txt");
        let mut child = Process::new(&exe)
            .args(["--exact", "crash_child_appender", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, dir.path().join("data"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let mut acked = Acked::default();
        // Wait for the first ack (the child is up), then let it run for `kill_after`.
        let first_deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = rx.recv_timeout(Duration::from_millis(50));
            if let Ok(line) = line {
                record(&mut acked, &line);
            }
            if !acked.entries.is_empty() && started.elapsed() >= kill_after {
                break;
            }
            assert!(Instant::now() < first_deadline, "round {round}: child acknowledged nothing in 30 s");
            if let Some(status) = child.try_wait().unwrap() {
                let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("round {round}: child exited on its own: {status}\n{stderr}");
            }
        }
        child.kill().expect("SIGKILL the child");
        child.wait().unwrap();
        reader.join().unwrap();
        while let Ok(line) = rx.try_recv() {
            record(&mut acked, &line);
        }

        eprintln!("round {round}: child acked {} entries; reopen and check", acked.entries.len());
        let (_, mut log, _) =
            atoll_raft_store::open(&dir.path().join("data"), "crash", 1).expect("reopen after SIGKILL");
        let state = log.get_log_state().await.unwrap();
        let last = state.last_log_id.map(|id| id.index);
        let first_kept = state.last_purged_log_id.map_or(0, |id| id.index + 1);
        assert!(acked.purged < first_kept || acked.purged == 0, "acknowledged purge {} lost", acked.purged);
        let max_acked = *acked.entries.iter().max().unwrap();
        assert!(last >= Some(max_acked), "round {round}: last index {last:?} < acknowledged {max_acked}");
        let entries = log.try_get_log_entries(first_kept..).await.unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        let expected: Vec<u64> = (first_kept..=last.unwrap()).collect();
        assert_eq!(indexes, expected, "round {round}: hole in the log");
        for index in acked.entries.iter().filter(|&&i| i >= first_kept) {
            assert!(indexes.binary_search(index).is_ok(), "round {round}: acknowledged entry {index} lost");
        }
        let vote = log.read_vote().await.unwrap();
        if acked.max_vote_term > 0 {
            let term = vote.expect("acknowledged vote lost").leader_id.term;
            assert!(
                term >= acked.max_vote_term,
                "round {round}: vote term {term} < acknowledged {}",
                acked.max_vote_term
            );
        }
        assert!(highest_acked.is_none_or(|h| max_acked > h), "round {round}: appender did not continue the log");
        highest_acked = Some(max_acked);
        total_acked += acked.entries.len();
    }
    eprintln!("{ROUNDS} SIGKILL rounds, {total_acked} acknowledged appends, none lost");
}

fn record(acked: &mut Acked, line: &str) {
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(value)) = (parts.next(), parts.next().and_then(|v| v.parse::<u64>().ok())) else {
        return;
    };
    match kind {
        "ack" => acked.entries.push(value),
        "vote" => acked.max_vote_term = acked.max_vote_term.max(value),
        "purge" => acked.purged = acked.purged.max(value),
        _ => {}
    }
}
