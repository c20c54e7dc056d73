//! Pipelines, jobs and attempts.
//!
//! Every transition is one conditional `UPDATE` that names the state (and, for a cluster's
//! report, the binding and the reporter's term) it was decided on: when the row changed in
//! between, nothing applies and the caller re-reads. This is what keeps "exactly one accepted
//! result" true with concurrent requests, and with several gateways over one PostgreSQL.

use atoll_api::ClusterName;
use atoll_api::ids::JobId;
use atoll_api::ids::Term;
use atoll_api::jobs::AttemptState;
use atoll_api::jobs::JobState;
use sqlx::Row;

use super::Db;
use super::DbError;
use super::cluster_column;
use super::lease::Duty;
use super::lease::fence;
use super::with_pool;

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRow {
    pub id: JobId,
    pub pipeline_id: String,
    /// Its index in the pipeline's spec.
    pub idx: usize,
    pub name: String,
    pub state: JobState,
    pub cluster: Option<ClusterName>,
    pub attempt: u32,
    pub failed_attempts: u32,
    pub cancel_requested: bool,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub finished_ms: Option<i64>,
    /// The accepted result's output: digest and size.
    pub output: Option<(String, u64)>,
}

/// An attempt bound to a cluster, as a lease answer first reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundAttempt {
    pub id: JobId,
    pub attempt: u32,
    pub cancel_requested: bool,
}

/// One attempt's history row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRow {
    pub job_id: JobId,
    pub attempt: u32,
    pub cluster: ClusterName,
    pub state: AttemptState,
    pub term: Option<Term>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub bound_ms: i64,
    /// When the cluster reported it running.
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    /// The output the attempt reported: digest and size.
    pub output: Option<(String, u64)>,
}

/// A pipeline as the dashboard lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineSummary {
    pub id: String,
    pub submitted_by: String,
    pub created_ms: i64,
    /// How many of its jobs are in each state (states with none left out).
    pub jobs: Vec<(JobState, u64)>,
}

/// A job of a new pipeline.
#[derive(Clone, Debug)]
pub struct NewJob<'a> {
    pub id: &'a str,
    pub idx: usize,
    pub name: &'a str,
    pub state: JobState,
    pub reason: &'a str,
    /// The source it runs on (its own, else the pipeline's).
    pub source: Option<&'a str>,
}

/// A report's effect, decided by `lifecycle::decide`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    Start,
    End { state: JobState, exit_code: Option<i32>, message: Option<String> },
    Retry { failed_attempts: u32, state: JobState, exit_code: Option<i32>, message: Option<String> },
    Rerun { message: Option<String> },
}

/// One report to apply, as decided.
#[derive(Clone, Debug)]
pub struct ReportApply {
    pub id: JobId,
    pub cluster: String,
    pub attempt: u32,
    /// The state the decision was made on.
    pub from: JobState,
    pub term: Term,
    pub transition: Transition,
    /// The output the report carries (digest, size), kept with a final result.
    pub output: Option<(String, u64)>,
}

/// What a cancel did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// It had not started: it is `killed` now.
    Killed,
    /// It runs on a cluster: the cluster is told at its next lease and reports `killed`.
    Requested,
    /// Already final (or no such job).
    Nothing,
}

macro_rules! job_columns {
    () => {
        "id, pipeline_id, idx, name, state, cluster, attempt, failed_attempts, cancel_requested, reason, exit_code, created_ms, updated_ms, finished_ms, output_digest, output_size"
    };
}

fn count(value: i32, column: &'static str) -> Result<u32, DbError> {
    u32::try_from(value).map_err(|e| DbError::corrupt(column, e))
}

fn int(value: u32, column: &'static str) -> Result<i32, DbError> {
    i32::try_from(value).map_err(|e| DbError::corrupt(column, e))
}

macro_rules! decode_job {
    ($row:expr) => {{
        let row = $row;
        let idx: i32 = row.try_get("idx")?;
        let state: String = row.try_get("state")?;
        Ok::<_, DbError>(JobRow {
            id: JobId::from(row.try_get::<String, _>("id")?),
            pipeline_id: row.try_get("pipeline_id")?,
            idx: usize::try_from(idx).map_err(|e| DbError::corrupt("jobs.idx", e))?,
            name: row.try_get("name")?,
            state: state.parse().map_err(|e| DbError::corrupt("jobs.state", e))?,
            cluster: row
                .try_get::<Option<String>, _>("cluster")?
                .map(|c| cluster_column("jobs.cluster", c))
                .transpose()?,
            attempt: count(row.try_get("attempt")?, "jobs.attempt")?,
            failed_attempts: count(row.try_get("failed_attempts")?, "jobs.failed_attempts")?,
            cancel_requested: row.try_get("cancel_requested")?,
            reason: row.try_get("reason")?,
            exit_code: row.try_get("exit_code")?,
            created_ms: row.try_get("created_ms")?,
            updated_ms: row.try_get("updated_ms")?,
            finished_ms: row.try_get("finished_ms")?,
            output: decode_output(row.try_get("output_digest")?, row.try_get("output_size")?, "jobs.output_size")?,
        })
    }};
}

fn decode_output(
    digest: Option<String>,
    size: Option<i64>,
    column: &'static str,
) -> Result<Option<(String, u64)>, DbError> {
    match (digest, size) {
        (Some(d), Some(s)) => Ok(Some((d, u64::try_from(s).map_err(|e| DbError::corrupt(column, e))?))),
        _ => Ok(None),
    }
}

macro_rules! decode_attempt {
    ($row:expr) => {{
        let row = $row;
        let term: Option<i64> = row.try_get("term")?;
        Ok::<_, DbError>(AttemptRow {
            job_id: JobId::from(row.try_get::<String, _>("job_id")?),
            attempt: count(row.try_get("attempt")?, "attempts.attempt")?,
            cluster: cluster_column("attempts.cluster", row.try_get("cluster")?)?,
            state: {
                let state: String = row.try_get("state")?;
                state.parse().map_err(|e| DbError::corrupt("attempts.state", e))?
            },
            term: term
                .map(|t| u64::try_from(t).map(Term).map_err(|e| DbError::corrupt("attempts.term", e)))
                .transpose()?,
            exit_code: row.try_get("exit_code")?,
            message: row.try_get("message")?,
            bound_ms: row.try_get("bound_ms")?,
            started_ms: row.try_get("started_ms")?,
            ended_ms: row.try_get("ended_ms")?,
            output: decode_output(row.try_get("output_digest")?, row.try_get("output_size")?, "attempts.output_size")?,
        })
    }};
}

/// `SELECT` of jobs with a `WHERE`/`ORDER` tail.
macro_rules! select_jobs {
    ($tail:expr) => {
        concat!("SELECT ", job_columns!(), " FROM jobs ", $tail)
    };
}

/// The fence of a report's update: still bound to the reporter's attempt, still in the state the
/// decision was made on, and the reporter's term at least the cluster's registered one.
macro_rules! fenced {
    ($update:expr) => {
        concat!(
            $update,
            " WHERE id = $1 AND cluster = $2 AND attempt = $3 AND state = $4 AND $5 >= (SELECT term FROM clusters WHERE name = $2)"
        )
    };
}

/// Run a `SELECT` of jobs with one bound argument and decode every row.
macro_rules! fetch_jobs {
    ($db:expr, $tail:expr, $arg:expr) => {
        with_pool!($db, read, |pool| {
            let rows = sqlx::query(select_jobs!($tail)).bind($arg).fetch_all(pool).await?;
            rows.iter().map(|row| decode_job!(row)).collect()
        })
    };
}

/// Run a fenced report update: binds the fence's `$1`-`$5` (id, cluster, attempt, state read,
/// term), then the update's own values; returns the rows changed.
macro_rules! run_fenced {
    ($tx:expr, $update:literal, $fence:expr $(, $value:expr)*) => {{
        let (id, cluster, attempt, from, term) = $fence;
        sqlx::query(fenced!($update))
            .bind(id)
            .bind(cluster)
            .bind(attempt)
            .bind(from)
            .bind(term)
            $(.bind($value))*
            .execute(&mut *$tx)
            .await?
            .rows_affected()
    }};
}

/// Record the end of an attempt in its history row.
const END_ATTEMPT: &str = "UPDATE attempts SET state = $1, term = $2, exit_code = $3, message = $4, ended_ms = $5 WHERE job_id = $6 AND attempt = $7";
const BIND_ATTEMPT: &str =
    "INSERT INTO attempts (job_id, attempt, cluster, state, bound_ms) VALUES ($1, $2, $3, 'bound', $4)
     ON CONFLICT (job_id, attempt) DO NOTHING";
/// [`BIND_ATTEMPT`] by a scheduling pass: with the lease generation it ran under.
const BIND_ATTEMPT_AT: &str =
    "INSERT INTO attempts (job_id, attempt, cluster, state, bound_ms, generation) VALUES ($1, $2, $3, 'bound', $4, $5)
     ON CONFLICT (job_id, attempt) DO NOTHING";

impl Db {
    /// Store a pipeline and its jobs in one transaction (all or nothing).
    pub async fn insert_pipeline(
        &self,
        id: &str,
        submitted_by: &str,
        spec_json: &str,
        jobs: &[NewJob<'_>],
        now_ms: i64,
    ) -> Result<(), DbError> {
        with_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO pipelines (id, submitted_by, spec, created_ms) VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(submitted_by)
                .bind(spec_json)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            for job in jobs {
                let idx = i32::try_from(job.idx).map_err(|e| DbError::corrupt("jobs.idx", e))?;
                sqlx::query(
                    "INSERT INTO jobs (id, pipeline_id, idx, name, state, reason, created_ms, updated_ms, source_digest)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
                )
                .bind(job.id)
                .bind(id)
                .bind(idx)
                .bind(job.name)
                .bind(job.state.as_str())
                .bind(job.reason)
                .bind(now_ms)
                .bind(job.source)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok::<_, DbError>(())
        })
    }

    /// A pipeline's spec as submitted (checked JSON).
    pub async fn pipeline_spec(&self, id: &str) -> Result<Option<String>, DbError> {
        with_pool!(self, read, |pool| {
            let row = sqlx::query("SELECT spec FROM pipelines WHERE id = $1").bind(id).fetch_optional(pool).await?;
            Ok::<_, DbError>(row.map(|r| r.try_get("spec")).transpose()?)
        })
    }

    /// The rows of `ids` that exist, in no particular order: one query per hundred ids (a
    /// report batch is read at once, not a round trip per report).
    pub async fn jobs_by_id(&self, ids: &[&str]) -> Result<Vec<JobRow>, DbError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(select_jobs!("WHERE id IN ({})"), placeholders.join(", "));
            with_pool!(self, read, |pool| {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    query = query.bind(*id);
                }
                for row in query.fetch_all(pool).await? {
                    out.push(decode_job!(&row)?);
                }
            });
        }
        Ok(out)
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobRow>, DbError> {
        with_pool!(self, read, |pool| {
            match sqlx::query(select_jobs!("WHERE id = $1")).bind(id).fetch_optional(pool).await? {
                Some(row) => decode_job!(&row).map(Some),
                None => Ok(None),
            }
        })
    }

    /// A pipeline's jobs in spec order.
    pub async fn pipeline_jobs(&self, pipeline_id: &str) -> Result<Vec<JobRow>, DbError> {
        fetch_jobs!(self, "WHERE pipeline_id = $1 ORDER BY idx", pipeline_id)
    }

    /// The newest jobs first (by pipeline submission, then spec order), at most `limit`.
    pub async fn recent_jobs(&self, limit: u32) -> Result<Vec<JobRow>, DbError> {
        fetch_jobs!(self, "ORDER BY created_ms DESC, pipeline_id DESC, idx LIMIT $1", i64::from(limit))
    }

    /// The newest pipelines first, at most `limit`, each with how many of its jobs are in each
    /// state: the dashboard's pipelines page.
    pub async fn recent_pipelines(&self, limit: u32) -> Result<Vec<PipelineSummary>, DbError> {
        with_pool!(self, read, |pool| {
            let rows = sqlx::query(
                "SELECT p.id, p.submitted_by, p.created_ms, j.state, COUNT(*) AS n FROM pipelines p
                 JOIN jobs j ON j.pipeline_id = p.id
                 WHERE p.id IN (SELECT id FROM pipelines ORDER BY created_ms DESC, id DESC LIMIT $1)
                 GROUP BY p.id, p.submitted_by, p.created_ms, j.state
                 ORDER BY p.created_ms DESC, p.id DESC",
            )
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            let mut out: Vec<PipelineSummary> = Vec::new();
            for row in &rows {
                let id: String = row.try_get("id")?;
                let state: String = row.try_get("state")?;
                let state = state.parse().map_err(|e| DbError::corrupt("jobs.state", e))?;
                let n: i64 = row.try_get("n")?;
                if out.last().is_none_or(|p| p.id != id) {
                    out.push(PipelineSummary {
                        id,
                        submitted_by: row.try_get("submitted_by")?,
                        created_ms: row.try_get("created_ms")?,
                        jobs: Vec::new(),
                    });
                }
                out.last_mut().expect("pushed above").jobs.push((state, u64::try_from(n).unwrap_or(0)));
            }
            Ok::<_, DbError>(out)
        })
    }

    /// Jobs in `state`, oldest first.
    pub async fn jobs_in_state(&self, state: JobState) -> Result<Vec<JobRow>, DbError> {
        fetch_jobs!(self, "WHERE state = $1 ORDER BY created_ms, pipeline_id, idx", state.as_str())
    }

    /// The attempts bound to `cluster` and not ended (assigned or running), oldest first: just
    /// their keys and cancel flags, read on every lease answer (the rows of the few not yet
    /// held are read apart, with [`Db::jobs_by_id`]).
    pub async fn bound_attempts(&self, cluster: &str) -> Result<Vec<BoundAttempt>, DbError> {
        with_pool!(self, read, |pool| {
            let rows = sqlx::query(
                "SELECT id, attempt, cancel_requested FROM jobs WHERE cluster = $1 AND state IN ('assigned', 'running') ORDER BY created_ms, pipeline_id, idx",
            )
            .bind(cluster)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(BoundAttempt {
                        id: JobId::from(row.try_get::<String, _>("id")?),
                        attempt: count(row.try_get("attempt")?, "jobs.attempt")?,
                        cancel_requested: row.try_get("cancel_requested")?,
                    })
                })
                .collect()
        })
    }

    /// Per cluster: attempts placed there but not started (`assigned`), and running.
    pub async fn cluster_job_counts(&self) -> Result<std::collections::HashMap<String, (u64, u64)>, DbError> {
        with_pool!(self, read, |pool| {
            let rows = sqlx::query(
                "SELECT cluster, state, COUNT(*) AS n FROM jobs WHERE state IN ('assigned', 'running') AND cluster IS NOT NULL GROUP BY cluster, state",
            )
            .fetch_all(pool)
            .await?;
            let mut out: std::collections::HashMap<String, (u64, u64)> = std::collections::HashMap::new();
            for row in &rows {
                let n = u64::try_from(row.try_get::<i64, _>("n")?).map_err(|e| DbError::corrupt("jobs count", e))?;
                let entry = out.entry(row.try_get("cluster")?).or_default();
                if row.try_get::<String, _>("state")? == "assigned" {
                    entry.0 = n;
                } else {
                    entry.1 = n;
                }
            }
            Ok::<_, DbError>(out)
        })
    }

    /// Unfinished jobs bound to each cluster (placement's load).
    pub async fn cluster_load(&self) -> Result<Vec<(String, u64)>, DbError> {
        with_pool!(self, read, |pool| {
            let rows = sqlx::query(
                "SELECT cluster, COUNT(*) AS n FROM jobs WHERE state IN ('assigned', 'running') AND cluster IS NOT NULL GROUP BY cluster",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    let n: i64 = row.try_get("n")?;
                    Ok((row.try_get("cluster")?, u64::try_from(n).map_err(|e| DbError::corrupt("jobs count", e))?))
                })
                .collect()
        })
    }

    pub async fn attempts(&self, job_id: &str) -> Result<Vec<AttemptRow>, DbError> {
        with_pool!(self, read, |pool| {
            let rows = sqlx::query(
                "SELECT job_id, attempt, cluster, state, term, exit_code, message, bound_ms, started_ms, ended_ms, output_digest, output_size
                 FROM attempts WHERE job_id = $1 ORDER BY attempt",
            )
            .bind(job_id)
            .fetch_all(pool)
            .await?;
            rows.iter().map(|row| decode_attempt!(row)).collect()
        })
    }

    /// Move `waiting` jobs on (settled by `lifecycle::settle`): `(job id, new state, reason)`.
    /// Jobs no longer waiting are left alone. One transaction.
    pub async fn settle_jobs(
        &self,
        duty: Duty,
        changes: &[(JobId, JobState, String)],
        now_ms: i64,
    ) -> Result<(), DbError> {
        if changes.is_empty() {
            return Ok(());
        }
        with_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            fence!(self, tx, duty);
            for (id, state, reason) in changes {
                let finished = state.is_final().then_some(now_ms);
                sqlx::query(
                    "UPDATE jobs SET state = $1, reason = $2, updated_ms = $3, finished_ms = $4 WHERE id = $5 AND state = 'waiting'",
                )
                .bind(state.as_str())
                .bind(reason)
                .bind(now_ms)
                .bind(finished)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok::<_, DbError>(())
        })
    }

    /// Bind a queued job's attempt to a cluster; false when the job is no longer queued at
    /// that attempt.
    pub async fn assign(
        &self,
        duty: Duty,
        id: &str,
        attempt: u32,
        cluster: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool, DbError> {
        let binding = (JobId::from(id), attempt, cluster.to_string(), reason.to_string());
        Ok(self.assign_many(duty, std::slice::from_ref(&binding), now_ms).await?[0])
    }

    /// Apply a cluster's report, fenced: only if the job is still `from` and bound to
    /// (`cluster`, `attempt`), and `term` is at least the cluster's registered term. False when
    /// any of that no longer holds (nothing changed).
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_report(
        &self,
        id: &str,
        cluster: &str,
        attempt: u32,
        from: JobState,
        term: u64,
        transition: &Transition,
        now_ms: i64,
    ) -> Result<bool, DbError> {
        let item = ReportApply {
            id: JobId::from(id),
            cluster: cluster.to_string(),
            attempt,
            from,
            term: Term(term),
            transition: transition.clone(),
            output: None,
        };
        Ok(self.apply_reports(std::slice::from_ref(&item), now_ms).await?[0])
    }

    /// Apply many fenced reports (see [`Db::apply_report`]) in one transaction: one commit for a
    /// whole batch. Each applies or not on its own.
    pub async fn apply_reports(&self, items: &[ReportApply], now_ms: i64) -> Result<Vec<bool>, DbError> {
        with_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            let mut applied = Vec::with_capacity(items.len());
            for item in items {
                let (id, cluster, attempt, from, transition) =
                    (item.id.as_str(), item.cluster.as_str(), item.attempt, item.from, &item.transition);
                let a = int(attempt, "jobs.attempt")?;
                let t = i64::try_from(item.term.0).map_err(|e| DbError::corrupt("clusters.term", e))?;
                let fence = (id, cluster, a, from.as_str(), t);
                let done = match transition {
                    Transition::Start => {
                        let done = run_fenced!(tx, "UPDATE jobs SET state = 'running', updated_ms = $6", fence, now_ms);
                        if done == 1 {
                            sqlx::query("UPDATE attempts SET started_ms = $1 WHERE job_id = $2 AND attempt = $3")
                                .bind(now_ms)
                                .bind(id)
                                .bind(a)
                                .execute(&mut *tx)
                                .await?;
                        }
                        done
                    }
                    Transition::End { state, exit_code, message } => {
                        let done = run_fenced!(
                            tx,
                            "UPDATE jobs SET state = $6, exit_code = $7, reason = $8, updated_ms = $9, finished_ms = $9",
                            fence,
                            state.as_str(),
                            *exit_code,
                            message,
                            now_ms
                        );
                        if done == 1 {
                            end_attempt(
                                &mut tx,
                                id,
                                a,
                                AttemptState::Ended(*state),
                                t,
                                *exit_code,
                                message.as_deref(),
                                now_ms,
                            )
                            .await?;
                            if let Some((digest, size)) = &item.output {
                                let size = i64::try_from(*size).map_err(|e| DbError::corrupt("jobs.output_size", e))?;
                                for sql in [
                                    "UPDATE jobs SET output_digest = $1, output_size = $2 WHERE id = $3 AND attempt = $4",
                                    "UPDATE attempts SET output_digest = $1, output_size = $2 WHERE job_id = $3 AND attempt = $4",
                                ] {
                                    sqlx::query(sql).bind(digest).bind(size).bind(id).bind(a).execute(&mut *tx).await?;
                                }
                            }
                        }
                        done
                    }
                    Transition::Retry { failed_attempts, state, exit_code, message } => {
                        let done = run_fenced!(
                            tx,
                            "UPDATE jobs SET state = 'queued', cluster = NULL, attempt = attempt + 1, failed_attempts = $6,
                             exit_code = $7, reason = $8, updated_ms = $9",
                            fence,
                            int(*failed_attempts, "jobs.failed_attempts")?,
                            *exit_code,
                            format!("attempt {attempt} ended {state}; retrying"),
                            now_ms
                        );
                        if done == 1 {
                            end_attempt(
                                &mut tx,
                                id,
                                a,
                                AttemptState::Ended(*state),
                                t,
                                *exit_code,
                                message.as_deref(),
                                now_ms,
                            )
                            .await?;
                        }
                        done
                    }
                    Transition::Rerun { message } => {
                        let done = run_fenced!(
                            tx,
                            "UPDATE jobs SET state = 'assigned', attempt = attempt + 1, reason = $6, updated_ms = $7",
                            fence,
                            format!("attempt {attempt} was lost on {cluster}; running it again there"),
                            now_ms
                        );
                        if done == 1 {
                            end_attempt(&mut tx, id, a, AttemptState::Lost, t, None, message.as_deref(), now_ms)
                                .await?;
                            sqlx::query(BIND_ATTEMPT)
                                .bind(id)
                                .bind(a + 1)
                                .bind(cluster)
                                .bind(now_ms)
                                .execute(&mut *tx)
                                .await?;
                        }
                        done
                    }
                };
                applied.push(done == 1);
            }
            tx.commit().await?;
            Ok::<_, DbError>(applied)
        })
    }

    /// Cancel a job: kill it at once if it has not started, else ask its cluster.
    pub async fn cancel(&self, id: &str, now_ms: i64) -> Result<Cancelled, DbError> {
        with_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            let killed = sqlx::query(
                "UPDATE jobs SET state = 'killed', reason = 'cancelled before it started', updated_ms = $1, finished_ms = $1
                 WHERE id = $2 AND state IN ('waiting', 'queued')",
            )
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let requested = if killed == 0 {
                sqlx::query(
                    "UPDATE jobs SET cancel_requested = TRUE, updated_ms = $1 WHERE id = $2 AND state IN ('assigned', 'running')",
                )
                .bind(now_ms)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            } else {
                0
            };
            tx.commit().await?;
            Ok::<_, DbError>(match (killed, requested) {
                (1, _) => Cancelled::Killed,
                (_, 1) => Cancelled::Requested,
                _ => Cancelled::Nothing,
            })
        })
    }

    /// Take a dead cluster's work away: every job bound to it gets a new attempt, queued for
    /// placement elsewhere (a job whose cancel was asked is `killed` instead). Returns the
    /// pipelines touched.
    pub async fn reroute(&self, duty: Duty, cluster: &str, now_ms: i64) -> Result<Vec<String>, DbError> {
        with_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            fence!(self, tx, duty);
            let rows = sqlx::query(
                "SELECT id, pipeline_id, attempt, cancel_requested FROM jobs WHERE cluster = $1 AND state IN ('assigned', 'running')",
            )
            .bind(cluster)
            .fetch_all(&mut *tx)
            .await?;
            let mut pipelines = Vec::new();
            for row in &rows {
                let id: String = row.try_get("id")?;
                let attempt: i32 = row.try_get("attempt")?;
                let cancelled: bool = row.try_get("cancel_requested")?;
                let reason = if cancelled {
                    format!("cancelled; cluster {cluster} died before it confirmed")
                } else {
                    format!("cluster {cluster} is dead; attempt {attempt} moved away")
                };
                let sql = if cancelled {
                    "UPDATE jobs SET state = 'killed', reason = $1, updated_ms = $2, finished_ms = $2
                     WHERE id = $3 AND attempt = $4 AND cluster = $5 AND state IN ('assigned', 'running')"
                } else {
                    "UPDATE jobs SET state = 'queued', cluster = NULL, attempt = attempt + 1, reason = $1, updated_ms = $2
                     WHERE id = $3 AND attempt = $4 AND cluster = $5 AND state IN ('assigned', 'running')"
                };
                let done = sqlx::query(sql)
                    .bind(&reason)
                    .bind(now_ms)
                    .bind(&id)
                    .bind(attempt)
                    .bind(cluster)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if done == 1 {
                    end_attempt(&mut tx, &id, attempt, AttemptState::Moved, -1, None, Some(&reason), now_ms).await?;
                    sqlx::query("UPDATE attempts SET generation = $1 WHERE job_id = $2 AND attempt = $3")
                        .bind(duty.column())
                        .bind(&id)
                        .bind(attempt)
                        .execute(&mut *tx)
                        .await?;
                    pipelines.push(row.try_get("pipeline_id")?);
                }
            }
            tx.commit().await?;
            pipelines.sort();
            pipelines.dedup();
            Ok::<_, DbError>(pipelines)
        })
    }
}

/// One piece of a job's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogChunk {
    pub attempt: u32,
    pub seq: u32,
    pub stream: String,
    pub data: String,
    pub at_ms: i64,
}

impl Db {
    /// Bind queued jobs to clusters in one transaction: `(job id, attempt, cluster, reason)`.
    /// Returns the ones bound (a job no longer queued at that attempt is skipped).
    pub async fn assign_many(
        &self,
        duty: Duty,
        bindings: &[(JobId, u32, String, String)],
        now_ms: i64,
    ) -> Result<Vec<bool>, DbError> {
        if bindings.is_empty() {
            return Ok(Vec::new());
        }
        with_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            fence!(self, tx, duty);
            let mut bound = Vec::with_capacity(bindings.len());
            for (id, attempt, cluster, reason) in bindings {
                let attempt = int(*attempt, "jobs.attempt")?;
                let done = sqlx::query(
                    "UPDATE jobs SET state = 'assigned', cluster = $1, reason = $2, updated_ms = $3
                     WHERE id = $4 AND state = 'queued' AND attempt = $5 AND NOT cancel_requested",
                )
                .bind(cluster)
                .bind(reason)
                .bind(now_ms)
                .bind(id.as_str())
                .bind(attempt)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if done == 1 {
                    sqlx::query(BIND_ATTEMPT_AT)
                        .bind(id.as_str())
                        .bind(attempt)
                        .bind(cluster)
                        .bind(now_ms)
                        .bind(duty.column())
                        .execute(&mut *tx)
                        .await?;
                }
                bound.push(done == 1);
            }
            tx.commit().await?;
            Ok::<_, DbError>(bound)
        })
    }

    /// Every job's times: `(created, started of its current attempt, finished)` (benchmarks).
    pub async fn job_times(&self) -> Result<Vec<(i64, Option<i64>, Option<i64>)>, DbError> {
        with_pool!(self, read, |pool| {
            let rows = sqlx::query(
                "SELECT j.created_ms, a.started_ms, j.finished_ms FROM jobs j
                 LEFT JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok::<_, DbError>((
                        row.try_get("created_ms")?,
                        row.try_get("started_ms")?,
                        row.try_get("finished_ms")?,
                    ))
                })
                .collect()
        })
    }

    /// Jobs by state (benchmarks, metrics).
    pub async fn count_by_state(&self) -> Result<Vec<(String, i64)>, DbError> {
        with_pool!(self, read, |pool| {
            let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetch_all(pool).await?;
            rows.iter().map(|row| Ok::<_, DbError>((row.try_get("state")?, row.try_get("n")?))).collect()
        })
    }

    /// Unfinished jobs (waiting, queued, assigned, running) by state, read through the state
    /// index (metrics, at every scrape).
    pub async fn count_unfinished(&self) -> Result<Vec<(String, i64)>, DbError> {
        with_pool!(self, read, |pool| {
            let rows = sqlx::query(
                "SELECT state, COUNT(*) AS n FROM jobs WHERE state IN ('waiting', 'queued', 'assigned', 'running') GROUP BY state",
            )
            .fetch_all(pool)
            .await?;
            rows.iter().map(|row| Ok::<_, DbError>((row.try_get("state")?, row.try_get("n")?))).collect()
        })
    }

    /// Say why a queued job waits for a cluster.
    pub async fn set_queued_reason(&self, duty: Duty, id: &str, attempt: u32, reason: &str) -> Result<(), DbError> {
        let attempt = int(attempt, "jobs.attempt")?;
        with_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            fence!(self, tx, duty);
            sqlx::query("UPDATE jobs SET reason = $1 WHERE id = $2 AND attempt = $3 AND state = 'queued'")
                .bind(reason)
                .bind(id)
                .bind(attempt)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, DbError>(())
        })
    }

    /// Pipelines with a job still `waiting` (to settle after a restart).
    pub async fn waiting_pipelines(&self) -> Result<Vec<String>, DbError> {
        with_pool!(self, read, |pool| {
            let rows =
                sqlx::query("SELECT DISTINCT pipeline_id FROM jobs WHERE state = 'waiting'").fetch_all(pool).await?;
            rows.iter().map(|row| Ok::<_, DbError>(row.try_get("pipeline_id")?)).collect()
        })
    }

    /// The cluster an attempt was bound to.
    pub async fn attempt_cluster(&self, job_id: &str, attempt: u32) -> Result<Option<String>, DbError> {
        let attempt = int(attempt, "attempts.attempt")?;
        with_pool!(self, read, |pool| {
            let row = sqlx::query("SELECT cluster FROM attempts WHERE job_id = $1 AND attempt = $2")
                .bind(job_id)
                .bind(attempt)
                .fetch_optional(pool)
                .await?;
            Ok::<_, DbError>(row.map(|r| r.try_get("cluster")).transpose()?)
        })
    }

    /// Store log pieces: `(job id, chunk)`; a piece stored before is kept as it was.
    pub async fn append_logs(&self, chunks: &[(JobId, LogChunk)]) -> Result<(), DbError> {
        if chunks.is_empty() {
            return Ok(());
        }
        with_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            for (job, c) in chunks {
                sqlx::query(
                    "INSERT INTO log_chunks (job_id, attempt, seq, stream, data, at_ms) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (job_id, attempt, seq) DO NOTHING",
                )
                .bind(job.as_str())
                .bind(int(c.attempt, "log_chunks.attempt")?)
                .bind(int(c.seq, "log_chunks.seq")?)
                .bind(&c.stream)
                .bind(&c.data)
                .bind(c.at_ms)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok::<_, DbError>(())
        })
    }

    /// A job's log pieces after `(attempt, seq)`, in order, at most `limit`.
    pub async fn read_logs(&self, job_id: &str, after: (u32, u32), limit: u32) -> Result<Vec<LogChunk>, DbError> {
        let (attempt, seq) = (int(after.0, "attempt")?, int(after.1, "seq")?);
        with_pool!(self, read, |pool| {
            let rows = sqlx::query(
                "SELECT attempt, seq, stream, data, at_ms FROM log_chunks
                 WHERE job_id = $1 AND (attempt > $2 OR (attempt = $2 AND seq > $3))
                 ORDER BY attempt, seq LIMIT $4",
            )
            .bind(job_id)
            .bind(attempt)
            .bind(seq)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok::<_, DbError>(LogChunk {
                        attempt: count(row.try_get("attempt")?, "log_chunks.attempt")?,
                        seq: count(row.try_get("seq")?, "log_chunks.seq")?,
                        stream: row.try_get("stream")?,
                        data: row.try_get("data")?,
                        at_ms: row.try_get("at_ms")?,
                    })
                })
                .collect()
        })
    }

    /// Whether a job's log was cut at its limit (a marker piece holds how much was dropped).
    pub async fn log_truncated(&self, job_id: &str) -> Result<bool, DbError> {
        with_pool!(self, read, |pool| {
            let row = sqlx::query("SELECT 1 AS one FROM log_chunks WHERE job_id = $1 AND stream = 'marker' LIMIT 1")
                .bind(job_id)
                .fetch_optional(pool)
                .await?;
            Ok::<_, DbError>(row.is_some())
        })
    }
}

/// Close an attempt's history row (`term` -1: ended by the gateway, not by a report).
#[allow(clippy::too_many_arguments)]
async fn end_attempt<'c, DB>(
    tx: &mut sqlx::Transaction<'c, DB>,
    id: &str,
    attempt: i32,
    state: AttemptState,
    term: i64,
    exit_code: Option<i32>,
    message: Option<&str>,
    now_ms: i64,
) -> Result<(), DbError>
where
    DB: sqlx::Database,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'e> &'e mut <DB as sqlx::Database>::Connection: sqlx::Executor<'e, Database = DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<i32>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let term = (term >= 0).then_some(term);
    sqlx::query(END_ATTEMPT)
        .bind(state.as_str())
        .bind(term)
        .bind(exit_code)
        .bind(message)
        .bind(now_ms)
        .bind(id)
        .bind(attempt)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_states_keep_their_words_in_the_database() {
        for (state, word) in [
            (AttemptState::Bound, "bound"),
            (AttemptState::Moved, "moved"),
            (AttemptState::Lost, "lost"),
            (AttemptState::Retried, "retried"),
            (AttemptState::Ended(JobState::Finished), "finished"),
            (AttemptState::Ended(JobState::Failure), "failure"),
        ] {
            assert_eq!(state.as_str(), word);
            assert_eq!(word.parse::<AttemptState>(), Ok(state));
        }
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<AttemptState>(), Ok(AttemptState::Ended(state)));
        }
        assert!(BIND_ATTEMPT.contains(&format!("'{}'", AttemptState::Bound)), "a new attempt is bound");
        assert!("nonsense".parse::<AttemptState>().is_err());
    }
}
