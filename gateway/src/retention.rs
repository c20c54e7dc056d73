//! Retention: when a blob may go.
//!
//! A blob is **needed** while any job that uses it has not ended: the job whose accepted output
//! it is and every child of that job (they read it), every job built from it as a source. Once
//! they all ended it is kept for `retention.keep_s` after the last of them ended; a pushed
//! source also for `keep_s` after its last push, and an output some attempt reported without
//! it being accepted for `keep_s` after that attempt ended. A blob nothing uses is released.
//!
//! The gateway only decides; every store's owner removes what is released: the gateway its
//! relay store ([`run`]), each replica its own store (asking `POST
//! /v1/clusters/{name}/blobs/released`). Whoever removes also keeps what was written or
//! claimed within `keep_s` ([`atoll_store::Blobs::remove_if_older`]), so a blob stored again
//! while the question was out (the same bytes from a new job the gateway does not know of yet)
//! stays.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use atoll_api::ApiError;
use atoll_api::jobs::JobState;
use atoll_api::jobs::ReleaseAnswer;
use atoll_api::jobs::ReleaseRequest;
use atoll_store::Digest;

use crate::Gateway;
use crate::db::retention::BlobUses;
use crate::now_ms;

/// How long each blob must still be kept: `None` while something that uses it runs or waits.
/// Digests nothing uses are absent (pure).
pub fn kept_until(
    uses: &BlobUses,
    children: impl Fn(&str, usize) -> Vec<(JobState, Option<i64>)>,
    keep_ms: i64,
) -> BTreeMap<String, Option<i64>> {
    let mut until: BTreeMap<String, Option<i64>> = BTreeMap::new();
    let mut note = |digest: &str, ended: Option<i64>| {
        let entry = until.entry(digest.to_string()).or_insert(Some(i64::MIN));
        *entry = match (*entry, ended) {
            (Some(t), Some(e)) => Some(t.max(e.saturating_add(keep_ms))),
            _ => None,
        };
    };
    let ended = |state: JobState, finished_ms: Option<i64>| if state.is_final() { finished_ms } else { None };
    for output in &uses.outputs {
        note(&output.digest, ended(output.state, output.finished_ms));
        for (state, finished_ms) in children(&output.pipeline_id, output.idx) {
            note(&output.digest, ended(state, finished_ms));
        }
    }
    for user in &uses.sources_of {
        note(&user.digest, ended(user.state, user.finished_ms));
    }
    for (digest, ended_ms) in &uses.attempts {
        note(digest, *ended_ms);
    }
    for (digest, pushed_ms) in &uses.pushed {
        note(digest, Some(*pushed_ms));
    }
    until
}

impl Gateway {
    /// Of `digests`, those nobody needs any more (see the module doc), as of `now_ms`.
    pub async fn released(&self, digests: &[String], now_ms: i64) -> Result<Vec<String>, ApiError> {
        let db_error = |e: crate::db::DbError| ApiError::unavailable(format!("the gateway's database: {e}"));
        let asked: Vec<&str> = digests.iter().map(String::as_str).collect();
        let uses = self.db.blob_uses(&asked).await.map_err(db_error)?;
        // The children of every producer, a pipeline's rows read once.
        let mut rows: HashMap<String, (Arc<crate::jobs::Pipeline>, Vec<crate::db::jobs::JobRow>)> = HashMap::new();
        for output in &uses.outputs {
            if rows.contains_key(&output.pipeline_id) {
                continue;
            }
            let pipeline = self.pipeline(&output.pipeline_id).await?;
            let jobs = self.db.pipeline_jobs(&output.pipeline_id).await.map_err(db_error)?;
            rows.insert(output.pipeline_id.clone(), (pipeline, jobs));
        }
        let children = |pipeline: &str, idx: usize| {
            let Some((spec, jobs)) = rows.get(pipeline) else { return Vec::new() };
            let children = spec.children.get(idx).map(Vec::as_slice).unwrap_or_default();
            jobs.iter().filter(|j| children.contains(&j.idx)).map(|j| (j.state, j.finished_ms)).collect()
        };
        let keep_ms = i64::try_from(self.config.keep.as_millis()).unwrap_or(i64::MAX);
        let until = kept_until(&uses, children, keep_ms);
        Ok(digests
            .iter()
            .filter(|d| match until.get(d.as_str()) {
                None => true,
                Some(Some(t)) => *t <= now_ms,
                Some(None) => false,
            })
            .cloned()
            .collect())
    }

    /// `POST /v1/clusters/{name}/blobs/released`, checked.
    pub async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseAnswer, ApiError> {
        if request.digests.len() > ReleaseRequest::MAX {
            return Err(ApiError::bad_request(format!(
                "digests: {} given, at most {} per request",
                request.digests.len(),
                ReleaseRequest::MAX
            )));
        }
        for (i, digest) in request.digests.iter().enumerate() {
            digest.parse::<Digest>().map_err(|e| ApiError::bad_request(format!("digests[{i}]: {e}")))?;
        }
        Ok(ReleaseAnswer {
            released: self.released(&request.digests, now_ms()).await?,
            keep_ms: u64::try_from(self.config.keep.as_millis()).unwrap_or(u64::MAX),
            interval_ms: u64::try_from(self.config.gc_interval.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// One pass over the relay store: remove every blob nobody needs that was neither written
    /// nor claimed within the retention; a removed source is forgotten first (pipelines may no
    /// longer name it); and temporary files a killed writer left (local store), as old. Returns
    /// how many blobs went.
    /// Only under `duty` (the duties lease): it stops when the lease moves on.
    pub async fn collect_relay(&self, duty: crate::db::lease::Duty) -> Result<usize, String> {
        let began = SystemTime::now();
        let cutoff = began.checked_sub(self.config.keep).unwrap_or(SystemTime::UNIX_EPOCH);
        let blobs = self.relay.blobs();
        let held = blobs.inventory().await.map_err(|e| e.to_string())?;
        let old: Vec<String> = held.into_iter().filter(|h| h.newest <= cutoff).map(|h| h.digest.to_string()).collect();
        let mut removed = 0;
        for batch in old.chunks(ReleaseRequest::MAX) {
            let released = self.released(batch, now_ms()).await.map_err(|e| e.to_string())?;
            for digest in released {
                let parsed: Digest = digest.parse().map_err(|e: atoll_store::InvalidDigest| e.to_string())?;
                if duty.fenced && self.lease.duty() != Some(duty) {
                    return Err(format!("the duties lease moved on (generation {}); stopping", duty.generation));
                }
                self.db.forget_source(duty, &digest).await.map_err(|e| e.to_string())?;
                if blobs.remove_if_older(&parsed, cutoff).await.map_err(|e| e.to_string())? {
                    tracing::info!(blob = %digest, "removed from the relay store: nobody needs it any more");
                    removed += 1;
                }
            }
        }
        let temp_files = blobs.remove_stale_temp_files(cutoff).await.map_err(|e| e.to_string())?;
        if temp_files > 0 {
            tracing::info!(temp_files, "removed temporary files a killed writer left in the relay store");
        }
        Ok(removed)
    }
}

/// Pass over the relay store every `retention.interval_ms` until `stop`.
pub async fn run(gateway: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let every = gateway.config.gc_interval;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Some(duty) = gateway.lease.duty() else { continue };
        match gateway.collect_relay(duty).await {
            Ok(0) => {}
            Ok(removed) => {
                gateway.metrics.blobs_removed.inc_by(removed as u64);
            }
            Err(e) => tracing::warn!(error = %e, "a retention pass over the relay store failed; trying again later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::retention::JobUse;

    fn job(digest: &str, idx: usize, state: JobState, finished_ms: Option<i64>) -> JobUse {
        JobUse { digest: digest.into(), pipeline_id: "p".into(), idx, state, finished_ms }
    }

    #[test]
    fn a_blob_is_kept_while_a_user_runs_or_waits_and_for_the_retention_after_the_last_one_ended() {
        let uses = BlobUses {
            outputs: vec![
                job("out-waiting-child", 0, JobState::Finished, Some(1_000)),
                job("out-all-ended", 1, JobState::Finished, Some(1_000)),
                job("out-no-children", 2, JobState::Failure, Some(3_000)),
            ],
            sources_of: vec![
                job("src", 3, JobState::Finished, Some(2_000)),
                job("src-running", 4, JobState::Running, None),
            ],
            attempts: vec![("lost-output".into(), Some(4_000)), ("out-all-ended".into(), Some(500))],
            pushed: vec![("src".into(), 9_000)],
        };
        let children = |_: &str, idx: usize| match idx {
            0 => vec![(JobState::Finished, Some(5_000)), (JobState::Waiting, None)],
            1 => vec![(JobState::Finished, Some(7_000)), (JobState::Skipped, Some(6_000))],
            _ => Vec::new(),
        };
        let until = kept_until(&uses, children, 100);
        assert_eq!(until["out-waiting-child"], None, "a child still waits for it");
        assert_eq!(until["out-all-ended"], Some(7_100), "the last child ended at 7,000");
        assert_eq!(until["out-no-children"], Some(3_100));
        assert_eq!(until["src"], Some(9_100), "pushed again at 9,000");
        assert_eq!(until["src-running"], None);
        assert_eq!(until["lost-output"], Some(4_100));
        assert!(!until.contains_key("unknown"));
    }
}
