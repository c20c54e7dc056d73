//! The gateway replicas' database as the suite reads it: who holds the duties lease now (to aim
//! a fault at the holder), the clusters' last heartbeat times (sampled throughout a run) and, at
//! the end, the lease's history and every attempt with the generation that wrote it. Reads
//! only: the gateway's own SQL lives in its `db/` module; these few queries are the suite's
//! evidence, and every one is bounded in time (the database may be down or cut off).

use std::time::Duration;

use anyhow::Context;
use sqlx::Row;
use tokio::sync::watch;

use crate::checkers::AttemptRecord;
use crate::checkers::Generation;
use crate::checkers::HeardSample;

/// How long one read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// The database's clock in unix milliseconds, as the gateway reads it.
const NOW: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// A connection pool to the gateway replicas' PostgreSQL database.
#[derive(Clone)]
pub struct Database {
    pool: sqlx::PgPool,
}

/// Milliseconds since the epoch by this machine's clock (the processes' clock too).
pub fn epoch_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

async fn bounded<T>(what: &str, read: impl Future<Output = Result<T, sqlx::Error>>) -> anyhow::Result<T> {
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .with_context(|| format!("reading {what} from the gateway's database timed out"))?
        .with_context(|| format!("reading {what} from the gateway's database"))
}

fn unsigned(value: i64, what: &str) -> anyhow::Result<u64> {
    u64::try_from(value).with_context(|| format!("{what} {value} is negative"))
}

impl Database {
    /// Connect (lazily: the pool opens connections as reads need them).
    pub fn connect(url: &str) -> anyhow::Result<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(READ_TIMEOUT)
            .connect_lazy(url)
            .context("the gateway's database URL")?;
        Ok(Self { pool })
    }

    /// The replica holding the duties lease now and its generation (none while it has run out).
    pub async fn holder(&self) -> anyhow::Result<Option<(String, u64)>> {
        let sql = format!(
            "SELECT holder, generation FROM gateway_lease WHERE name = 'duties' AND holder IS NOT NULL AND expires_ms > {NOW}"
        );
        let row = bounded("the lease", sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_optional(&self.pool)).await?;
        match row {
            Some(row) => {
                let holder: String = row.try_get("holder")?;
                Ok(Some((holder, unsigned(row.try_get("generation")?, "generation")?)))
            }
            None => Ok(None),
        }
    }

    /// Every generation of the lease and who took it, oldest first.
    pub async fn lease_history(&self) -> anyhow::Result<Vec<Generation>> {
        let rows = bounded(
            "the lease's history",
            sqlx::query(
                "SELECT generation, holder, incarnation, acquired_ms FROM gateway_lease_history ORDER BY generation",
            )
            .fetch_all(&self.pool),
        )
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Generation {
                    generation: unsigned(row.try_get("generation")?, "generation")?,
                    holder: row.try_get("holder")?,
                    incarnation: row.try_get("incarnation")?,
                    acquired_ms: row.try_get("acquired_ms")?,
                })
            })
            .collect()
    }

    /// Every attempt of every job.
    pub async fn attempts(&self) -> anyhow::Result<Vec<AttemptRecord>> {
        let rows = bounded(
            "the attempts",
            sqlx::query(
                "SELECT job_id, attempt, cluster, state, bound_ms, ended_ms, generation FROM attempts ORDER BY job_id, attempt",
            )
            .fetch_all(&self.pool),
        )
        .await?;
        rows.iter()
            .map(|row| {
                let attempt: i32 = row.try_get("attempt")?;
                let generation: Option<i64> = row.try_get("generation")?;
                Ok(AttemptRecord {
                    job: row.try_get("job_id")?,
                    attempt: u32::try_from(attempt).context("a negative attempt")?,
                    cluster: row.try_get("cluster")?,
                    state: row.try_get("state")?,
                    bound_ms: row.try_get("bound_ms")?,
                    ended_ms: row.try_get("ended_ms")?,
                    generation: generation.map(|g| unsigned(g, "generation")).transpose()?,
                })
            })
            .collect()
    }

    /// Each cluster's last heartbeat time now, stamped with when it was asked.
    pub async fn heard(&self) -> anyhow::Result<Vec<HeardSample>> {
        let at_ms = epoch_ms();
        let rows = bounded(
            "the clusters",
            sqlx::query("SELECT name, last_seen_ms FROM clusters ORDER BY name").fetch_all(&self.pool),
        )
        .await?;
        rows.iter()
            .map(|row| {
                Ok(HeardSample { at_ms, cluster: row.try_get("name")?, last_seen_ms: row.try_get("last_seen_ms")? })
            })
            .collect()
    }
}

/// Sample every cluster's last heartbeat time every `every` until `stop` turns true (a read
/// that fails leaves a gap, which shows no silence).
pub async fn heard_sampler(db: Database, every: Duration, mut stop: watch::Receiver<bool>) -> Vec<HeardSample> {
    let mut samples = Vec::new();
    while !*stop.borrow() {
        if let Ok(heard) = db.heard().await {
            samples.extend(heard);
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
    samples
}
