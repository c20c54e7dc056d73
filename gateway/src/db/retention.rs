//! What retention needs to know of a blob: every job and attempt that uses it, found by digest.

use atoll_api::jobs::JobState;
use sqlx::Row;

use super::Db;
use super::DbError;
use super::with_pool;

/// A job that uses a blob: its output (accepted) or its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobUse {
    pub digest: String,
    pub pipeline_id: String,
    pub idx: usize,
    pub state: JobState,
    pub finished_ms: Option<i64>,
}

/// Everything that uses some blobs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobUses {
    /// Jobs whose accepted output it is (their children read it).
    pub outputs: Vec<JobUse>,
    /// Jobs that run on it as their source.
    pub sources_of: Vec<JobUse>,
    /// Attempts that reported it, accepted or not: (digest, when the attempt ended).
    pub attempts: Vec<(String, Option<i64>)>,
    /// Pushed sources: (digest, when last pushed).
    pub pushed: Vec<(String, i64)>,
}

/// `$1, $2, ...` for `n` values.
fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

impl Db {
    /// Every use of `digests`: four indexed queries per hundred digests.
    pub async fn blob_uses(&self, digests: &[&str]) -> Result<BlobUses, DbError> {
        let mut uses = BlobUses::default();
        for chunk in digests.chunks(100) {
            let list = placeholders(chunk.len());
            // 0: accepted outputs, 1: sources of jobs, 2: attempts' outputs, 3: pushed sources.
            let queries = [
                format!(
                    "SELECT output_digest AS digest, pipeline_id, idx, state, finished_ms FROM jobs WHERE output_digest IN ({list})"
                ),
                format!(
                    "SELECT source_digest AS digest, pipeline_id, idx, state, finished_ms FROM jobs WHERE source_digest IN ({list})"
                ),
                format!(
                    "SELECT output_digest AS digest, ended_ms AS at_ms FROM attempts WHERE output_digest IN ({list})"
                ),
                format!("SELECT digest, created_ms AS at_ms FROM sources WHERE digest IN ({list})"),
            ];
            for (kind, sql) in queries.into_iter().enumerate() {
                with_pool!(self, read, |pool| {
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for digest in chunk {
                        query = query.bind(*digest);
                    }
                    for row in query.fetch_all(pool).await? {
                        let digest: String = row.try_get("digest")?;
                        if kind >= 2 {
                            let at_ms: Option<i64> = row.try_get("at_ms")?;
                            match at_ms {
                                _ if kind == 2 => uses.attempts.push((digest, at_ms)),
                                Some(pushed_ms) => uses.pushed.push((digest, pushed_ms)),
                                None => return Err(DbError::corrupt("sources.created_ms", "missing")),
                            }
                            continue;
                        }
                        let idx: i32 = row.try_get("idx")?;
                        let state: String = row.try_get("state")?;
                        let used = JobUse {
                            digest,
                            pipeline_id: row.try_get("pipeline_id")?,
                            idx: usize::try_from(idx).map_err(|e| DbError::corrupt("jobs.idx", e))?,
                            state: state.parse().map_err(|e| DbError::corrupt("jobs.state", e))?,
                            finished_ms: row.try_get("finished_ms")?,
                        };
                        if kind == 0 { uses.outputs.push(used) } else { uses.sources_of.push(used) }
                    }
                });
            }
        }
        Ok(uses)
    }
}
