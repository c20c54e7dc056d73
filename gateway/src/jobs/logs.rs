//! Log batches from cluster leaders, and log reads (a long poll).

use std::collections::BTreeMap;
use std::time::Duration;

use atoll_api::ApiError;
use atoll_api::ids::JobId;
use atoll_api::jobs::LogBatch;
use atoll_api::jobs::LogPage;
use atoll_api::jobs::LogPiece;
use atoll_api::jobs::LogStream;

use super::MAX_BATCH;
use super::MAX_WAIT;
use super::db_error;
use crate::Gateway;
use crate::db::jobs::LogChunk;

/// Log pieces per page.
const LOG_PAGE: u32 = 1000;

impl Gateway {
    /// Store log pieces of attempts bound to `cluster`; others are ignored.
    pub async fn store_logs(&self, cluster: &str, batch: &LogBatch) -> Result<usize, ApiError> {
        if batch.pieces.len() > MAX_BATCH {
            return Err(ApiError::bad_request(format!("a batch may hold at most {MAX_BATCH} pieces")));
        }
        self.fence(cluster, batch.term)?;
        let mut owner: BTreeMap<(&str, u32), bool> = BTreeMap::new();
        let mut chunks = Vec::with_capacity(batch.pieces.len());
        for piece in &batch.pieces {
            let key = (piece.job.as_str(), piece.attempt);
            let ours = match owner.get(&key) {
                Some(ours) => *ours,
                None => {
                    let bound = self.db.attempt_cluster(&piece.job, piece.attempt).await.map_err(db_error)?;
                    let ours = bound.as_deref() == Some(cluster);
                    owner.insert(key, ours);
                    ours
                }
            };
            if ours {
                chunks.push((
                    piece.job.clone(),
                    LogChunk {
                        attempt: piece.attempt,
                        seq: piece.seq,
                        stream: piece.stream.as_str().to_string(),
                        data: piece.data.clone(),
                        at_ms: piece.at_ms,
                    },
                ));
            }
        }
        self.db.append_logs(&chunks).await.map_err(db_error)?;
        if !chunks.is_empty() {
            self.logs_changed();
        }
        Ok(chunks.len())
    }

    /// A job's log after `(attempt, seq)`, waiting up to `wait` for new pieces.
    pub async fn read_logs(&self, id: &str, after: (u32, u32), wait: Duration) -> Result<LogPage, ApiError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let notified = self.jobs.logs.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let row = self.job_row(id).await?;
            let chunks = self.db.read_logs(id, after, LOG_PAGE).await.map_err(db_error)?;
            let ended = row.state.is_final();
            if !chunks.is_empty() || ended || tokio::time::Instant::now() >= deadline || self.is_stopping() {
                let full = chunks.len() as u32 == LOG_PAGE;
                let next = chunks.last().map_or(after, |c| (c.attempt, c.seq));
                let pieces = chunks
                    .into_iter()
                    .map(|c| LogPiece {
                        job: JobId::from(id),
                        attempt: c.attempt,
                        seq: c.seq,
                        stream: match c.stream.as_str() {
                            "stderr" => LogStream::Stderr,
                            "marker" => LogStream::Marker,
                            _ => LogStream::Stdout,
                        },
                        data: c.data,
                        at_ms: c.at_ms,
                    })
                    .collect();
                let truncated = self.db.log_truncated(id).await.map_err(db_error)?;
                return Ok(LogPage { pieces, next_attempt: next.0, next_seq: next.1, done: ended && !full, truncated });
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = tokio::time::sleep(self.recheck_every()) => {}
            }
        }
    }
}
