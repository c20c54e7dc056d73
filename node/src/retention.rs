//! Retention on a replica: blobs of its store and work directories nobody needs any more go.
//!
//! Every `retention.interval_ms` (the gateway's setting, learned from its answers) a replica:
//! 1. lists its store and leaves out every blob an attempt this cluster still holds uses (its
//!    output, its inputs, its source: from the replicated records, so an output not yet
//!    reported is never asked about);
//! 2. asks the gateway which of the rest nobody needs (`POST /v1/clusters/{name}/blobs/released`;
//!    see the gateway's `retention` module for the rule) and removes those, each only when
//!    nothing of it was written or claimed within `retention.keep_s`
//!    ([`atoll_store::Blobs::remove_if_older`]);
//! 3. removes the work directories of attempts the cluster no longer holds that were not
//!    touched within `retention.keep_s`, a few per pass (on some filesystems a burst of removals
//!    slows the creation of new directories for minutes), and job directories left empty and
//!    unchanged as long.
//!
//! Each replica with its own store (`local`) cleans it; a shared store (S3, GCS, Azure) is
//! cleaned by the leader only. Work directories are each replica's own.

use std::collections::HashSet;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use atoll_api::jobs::AssignedInput;
use atoll_api::jobs::ReleaseRequest;
use atoll_api::spec::JobSpec;
use atoll_raft_store::jobs::JobRecord;

use crate::raft::Replica;
use crate::transfers::Transfers;

/// Between passes until the gateway said otherwise.
const FIRST_INTERVAL: Duration = Duration::from_secs(60);
/// The first pass, this long after start.
const FIRST_PASS: Duration = Duration::from_secs(2);
/// After a failed pass, at the soonest.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Most work directories removed in one pass.
const WORK_DIRS_PER_PASS: usize = 64;

/// What the attempts this cluster holds use: digests, and (job, attempt) of work directories.
#[derive(Debug, Default)]
pub struct InUse {
    pub blobs: HashSet<String>,
    pub attempts: HashSet<(String, u32)>,
}

impl InUse {
    /// From the replicated records (pure).
    pub fn of(records: &[JobRecord]) -> Self {
        let mut in_use = Self::default();
        for r in records {
            in_use.attempts.insert((r.job.clone(), r.attempt));
            if let Some(output) = &r.output {
                in_use.blobs.insert(output.digest.clone());
            }
            if let Ok(inputs) = serde_json::from_str::<Vec<AssignedInput>>(&r.inputs) {
                in_use.blobs.extend(inputs.into_iter().map(|i| i.digest));
            }
            if let Ok(JobSpec { source: Some(source), .. }) = serde_json::from_str::<JobSpec>(&r.spec) {
                in_use.blobs.insert(source);
            }
        }
        in_use
    }
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub blobs_removed: usize,
    pub work_dirs_removed: usize,
    /// Temporary files a killed writer left in a local store.
    pub temp_files_removed: u64,
}

/// Run passes until the task is dropped.
pub async fn run(replica: Arc<Replica>, transfers: Arc<Transfers>, work_root: PathBuf, own_store: bool) {
    let mut wait = FIRST_PASS;
    loop {
        tokio::time::sleep(wait).await;
        let clean_store = own_store || replica.is_leader();
        match pass(&replica, &transfers, &work_root, clean_store).await {
            Ok((done, interval)) => {
                wait = interval;
                if done != Pass::default() {
                    tracing::info!(
                        blobs = done.blobs_removed,
                        work_dirs = done.work_dirs_removed,
                        temp_files = done.temp_files_removed,
                        "retention removed what nobody needs any more"
                    );
                }
            }
            Err(e) => {
                wait = wait.max(RETRY_AFTER);
                tracing::warn!(error = %e, "a retention pass failed; trying again later");
            }
        }
    }
}

/// One pass; returns what it did and when to pass again.
pub async fn pass(
    replica: &Replica,
    transfers: &Transfers,
    work_root: &Path,
    clean_store: bool,
) -> Result<(Pass, Duration), String> {
    let began = SystemTime::now();
    let in_use = InUse::of(&replica.jobs().map_err(|e| format!("reading the held jobs: {e}"))?);
    let blobs = transfers.blobs();
    let candidates: Vec<String> = if clean_store {
        let held = blobs.inventory().await.map_err(|e| e.to_string())?;
        held.into_iter().map(|h| h.digest.to_string()).filter(|d| !in_use.blobs.contains(d)).collect()
    } else {
        Vec::new()
    };
    let mut done = Pass::default();
    let mut keep = None;
    let mut interval = FIRST_INTERVAL;
    // An empty question still learns the retention (for the work directories).
    let batches: Vec<&[String]> =
        if candidates.is_empty() { vec![&[]] } else { candidates.chunks(ReleaseRequest::MAX).collect() };
    for batch in batches {
        let answer = transfers.released(batch.to_vec()).await.map_err(|e| e.to_string())?;
        let kept_for = Duration::from_millis(answer.keep_ms);
        let cutoff = began.checked_sub(kept_for).unwrap_or(SystemTime::UNIX_EPOCH);
        keep = Some(kept_for);
        interval = Duration::from_millis(answer.interval_ms.max(100));
        let asked: HashSet<&String> = batch.iter().collect();
        for digest in answer.released {
            if !asked.contains(&digest) {
                continue;
            }
            let parsed = digest.parse().map_err(|e: atoll_store::InvalidDigest| e.to_string())?;
            if blobs.remove_if_older(&parsed, cutoff).await.map_err(|e| e.to_string())? {
                tracing::debug!(blob = %digest, "removed: nobody needs it any more");
                done.blobs_removed += 1;
            }
        }
    }
    if let Some(keep) = keep {
        let cutoff = began.checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH);
        done.work_dirs_removed = remove_work_dirs(work_root, in_use.attempts, cutoff, WORK_DIRS_PER_PASS).await;
        if clean_store {
            done.temp_files_removed = blobs.remove_stale_temp_files(cutoff).await.map_err(|e| e.to_string())?;
        }
    }
    Ok((done, interval))
}

/// Remove up to `limit` work directories (`root/<job>/<attempt>`) of attempts not in `held`
/// whose last change is older than `cutoff`, and the job directories they leave empty.
pub async fn remove_work_dirs(root: &Path, held: HashSet<(String, u32)>, cutoff: SystemTime, limit: usize) -> usize {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut removed = 0;
        let Ok(jobs) = std::fs::read_dir(&root) else { return 0 };
        for job in jobs.flatten() {
            let job_name = job.file_name().to_string_lossy().into_owned();
            let Ok(attempts) = std::fs::read_dir(job.path()) else { continue };
            for attempt in attempts.flatten() {
                if removed >= limit {
                    return removed;
                }
                let Ok(number) = attempt.file_name().to_string_lossy().parse::<u32>() else { continue };
                if held.contains(&(job_name.clone(), number)) {
                    continue;
                }
                let changed = attempt.metadata().and_then(|m| m.modified());
                if !changed.is_ok_and(|t| t <= cutoff) {
                    continue;
                }
                match std::fs::remove_dir_all(attempt.path()) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(dir = %attempt.path().display(), error = %e, "removing a work directory failed")
                    }
                }
            }
            // Gone only when empty and unchanged since the cutoff: a job directory just made for
            // an attempt about to be prepared (not yet in `held`, its attempt directory not yet
            // made) stays.
            let changed = std::fs::metadata(job.path()).and_then(|m| m.modified());
            if changed.is_ok_and(|t| t <= cutoff) {
                let _ = std::fs::remove_dir(job.path());
            }
        }
        removed
    })
    .await
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_old_work_directories_of_attempts_no_longer_held_go_a_few_at_a_time() {
        let root = tempfile::tempdir().unwrap();
        for (job, attempt) in [("p.a", 1), ("p.a", 2), ("p.b", 1), ("p.c", 1), ("p.d", 1)] {
            let dir = root.path().join(job).join(attempt.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("log"), "x").unwrap();
        }
        let held: HashSet<(String, u32)> = [("p.a".to_string(), 2)].into();
        let future = SystemTime::now() + Duration::from_secs(60);
        assert_eq!(remove_work_dirs(root.path(), held.clone(), SystemTime::UNIX_EPOCH, 10).await, 0, "all newer");
        assert_eq!(remove_work_dirs(root.path(), held.clone(), future, 2).await, 2, "at most the limit");
        assert_eq!(remove_work_dirs(root.path(), held.clone(), future, 10).await, 2);
        assert!(root.path().join("p.a/2/log").exists(), "a held attempt stays");
        assert!(!root.path().join("p.a/1").exists());
        let left: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["p.a".to_string()], "emptied job directories go too");

        // A job directory made just now, its attempt's directory not yet made: it stays.
        std::fs::create_dir(root.path().join("p.e")).unwrap();
        let before = SystemTime::now() - Duration::from_secs(1);
        assert_eq!(remove_work_dirs(root.path(), held, before, 10).await, 0);
        assert!(root.path().join("p.e").is_dir(), "a new job directory is not removed under its attempt");
    }
}
