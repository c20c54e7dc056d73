//! The duties lease and the replicas' presence.
//!
//! One row (`gateway_lease`, name `duties`) says who runs the duties that must run once and
//! under which generation. Times of the lease are by the **database's** clock, so replicas on
//! machines whose clocks disagree still agree on when a lease ran out.
//!
//! Every write of a duty goes through a [`Duty`]: its transaction first reads the lease row at
//! the duty's generation and, on PostgreSQL, holds a share lock on it until it commits
//! ([`Db::fence`]). Taking the lease is an update of that row, so it waits for the duty
//! transactions of the old generation to end, and a duty transaction that starts after the
//! lease changed hands finds no row at its generation and writes nothing
//! ([`DbError::Deposed`]). A paused holder that wakes with a pass half done therefore changes
//! nothing; an idle transaction it left open is ended by the server after the lease's TTL
//! (`idle_in_transaction_session_timeout`), so it cannot hold the next holder up.

use sqlx::Row;

use super::Db;
use super::DbError;
use super::with_pool;

/// The generation a duty acts under, and whether its writes are fenced on it (always, except
/// in the chaos suite's deliberately broken gateway).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duty {
    pub generation: u64,
    pub fenced: bool,
}

impl Duty {
    /// A duty of `generation`, fenced.
    pub fn at(generation: u64) -> Self {
        Self { generation, fenced: true }
    }

    pub(crate) fn column(&self) -> i64 {
        i64::try_from(self.generation).unwrap_or(i64::MAX)
    }
}

/// The lease row as read, with the database's clock at the read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub holder: Option<String>,
    pub incarnation: Option<String>,
    pub generation: u64,
    pub expires_ms: i64,
    pub now_ms: i64,
}

impl LeaseRow {
    /// The holder while the lease runs, none once it ran out.
    pub fn holder_now(&self) -> Option<&str> {
        (self.expires_ms > self.now_ms).then_some(self.holder.as_deref()).flatten()
    }
}

/// An attempt a duty bound or moved, under `generation`, at `at_ms` (the writer's clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DutyWrite {
    pub job: String,
    pub attempt: u32,
    pub generation: u64,
    pub at_ms: i64,
}

/// The duty writes applied after a newer generation was taken (pure): each with the time that
/// newer generation was acquired. `history` is `(generation, holder, acquired_ms)`; empty in a
/// correctly fenced gateway.
pub fn stale_writes(writes: &[DutyWrite], history: &[(u64, String, i64)]) -> Vec<(DutyWrite, i64)> {
    writes
        .iter()
        .filter_map(|w| {
            let superseded = history.iter().filter(|(g, _, _)| *g > w.generation).map(|(_, _, at)| *at).min()?;
            (w.at_ms >= superseded).then(|| (w.clone(), superseded))
        })
        .collect()
}

/// A replica's presence row, with its age by the database's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRow {
    pub id: String,
    pub addr: String,
    pub generation: u64,
    pub age_ms: u64,
}

/// The database's clock in unix milliseconds, as SQL.
fn clock(db: &Db) -> &'static str {
    match db {
        Db::Sqlite { .. } => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)",
        Db::Postgres(_) => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    }
}

fn generation(value: i64) -> Result<u64, DbError> {
    u64::try_from(value).map_err(|e| DbError::corrupt("gateway_lease.generation", e))
}

/// The fence statement each duty transaction starts with (see the module comment).
pub(crate) fn fence_sql(db: &Db) -> &'static str {
    match db {
        Db::Sqlite { .. } => "SELECT generation FROM gateway_lease WHERE name = 'duties' AND generation = $1",
        Db::Postgres(_) => "SELECT generation FROM gateway_lease WHERE name = 'duties' AND generation = $1 FOR SHARE",
    }
}

/// Start a duty's transaction with its fence: `Err(Deposed)` when the lease moved on.
macro_rules! fence {
    ($db:expr, $tx:expr, $duty:expr) => {
        if $duty.fenced {
            let held =
                sqlx::query($crate::db::lease::fence_sql($db)).bind($duty.column()).fetch_optional(&mut *$tx).await?;
            if held.is_none() {
                return Err($crate::db::DbError::Deposed { generation: $duty.generation });
            }
        }
    };
}
pub(crate) use fence;

impl Db {
    /// The lease row now.
    pub async fn lease(&self) -> Result<LeaseRow, DbError> {
        let sql = format!(
            "SELECT holder, incarnation, generation, expires_ms, {} AS now_ms FROM gateway_lease WHERE name = 'duties'",
            clock(self)
        );
        with_pool!(self, read, |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).fetch_one(pool).await?;
            Ok::<_, DbError>(LeaseRow {
                holder: row.try_get("holder")?,
                incarnation: row.try_get("incarnation")?,
                generation: generation(row.try_get("generation")?)?,
                expires_ms: row.try_get("expires_ms")?,
                now_ms: row.try_get("now_ms")?,
            })
        })
    }

    /// Take the lease for `holder` (this `incarnation` of it) for `ttl_ms` when it ran out, or
    /// at once when `force` (the only gateway, by its config). Returns the new generation.
    /// `acquired_ms` (this process's clock, read after the commit) goes to the history.
    pub async fn take_lease(
        &self,
        holder: &str,
        incarnation: &str,
        ttl_ms: u64,
        force: bool,
    ) -> Result<Option<u64>, DbError> {
        self.take_lease_after(holder, incarnation, ttl_ms, force, None).await
    }

    /// [`Db::take_lease`], only while the lease is still at generation `after` when given (the
    /// one the caller looked at).
    pub async fn take_lease_after(
        &self,
        holder: &str,
        incarnation: &str,
        ttl_ms: u64,
        force: bool,
        after: Option<u64>,
    ) -> Result<Option<u64>, DbError> {
        let now = clock(self);
        let sql = format!(
            "UPDATE gateway_lease SET holder = $1, incarnation = $2, generation = generation + 1, expires_ms = {now} + $3
             WHERE name = 'duties' AND ($4 OR expires_ms <= {now}) AND ($5 < 0 OR generation = $5) RETURNING generation"
        );
        let after = after.map_or(-1, |g| i64::try_from(g).unwrap_or(i64::MAX));
        let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let taken = with_pool!(self, write, |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(holder)
                .bind(incarnation)
                .bind(ttl)
                .bind(force)
                .bind(after)
                .fetch_optional(pool)
                .await?;
            match row {
                Some(row) => Ok::<_, DbError>(Some(generation(row.try_get("generation")?)?)),
                None => Ok(None),
            }
        })?;
        if let Some(g) = taken {
            let acquired_ms = crate::now_ms();
            with_pool!(self, write, |pool| {
                sqlx::query(
                    "INSERT INTO gateway_lease_history (generation, holder, incarnation, acquired_ms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (generation) DO NOTHING",
                )
                .bind(i64::try_from(g).unwrap_or(i64::MAX))
                .bind(holder)
                .bind(incarnation)
                .bind(acquired_ms)
                .execute(pool)
                .await?;
                Ok::<_, DbError>(())
            })?;
        }
        Ok(taken)
    }

    /// Renew the lease held at `generation` by this `incarnation`; false when it is no longer
    /// held (another replica took it).
    pub async fn renew_lease(&self, incarnation: &str, generation: u64, ttl_ms: u64) -> Result<bool, DbError> {
        let sql = format!(
            "UPDATE gateway_lease SET expires_ms = {} + $1 WHERE name = 'duties' AND generation = $2 AND incarnation = $3",
            clock(self)
        );
        with_pool!(self, write, |pool| {
            let done = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(i64::try_from(ttl_ms).unwrap_or(i64::MAX))
                .bind(i64::try_from(generation).unwrap_or(i64::MAX))
                .bind(incarnation)
                .execute(pool)
                .await?
                .rows_affected();
            Ok::<_, DbError>(done == 1)
        })
    }

    /// Give the lease up (an orderly stop): the next replica takes it without waiting.
    pub async fn release_lease(&self, incarnation: &str, generation: u64) -> Result<(), DbError> {
        with_pool!(self, write, |pool| {
            sqlx::query(
                "UPDATE gateway_lease SET expires_ms = 0 WHERE name = 'duties' AND generation = $1 AND incarnation = $2",
            )
            .bind(i64::try_from(generation).unwrap_or(i64::MAX))
            .bind(incarnation)
            .execute(pool)
            .await?;
            Ok::<_, DbError>(())
        })
    }

    /// Every generation and its holder, oldest first: `(generation, holder, acquired_ms)`.
    pub async fn lease_history(&self) -> Result<Vec<(u64, String, i64)>, DbError> {
        with_pool!(self, read, |pool| {
            let rows =
                sqlx::query("SELECT generation, holder, acquired_ms FROM gateway_lease_history ORDER BY generation")
                    .fetch_all(pool)
                    .await?;
            rows.iter()
                .map(|row| {
                    Ok((generation(row.try_get("generation")?)?, row.try_get("holder")?, row.try_get("acquired_ms")?))
                })
                .collect()
        })
    }

    /// Every write of a duty the attempts record, oldest first: each attempt with the
    /// generation of the scheduling pass that bound it or (an attempt moved off a lost cluster)
    /// moved it, and when (the checkers of tests and the chaos suite compare them with
    /// [`Db::lease_history`]).
    pub async fn duty_writes(&self) -> Result<Vec<DutyWrite>, DbError> {
        with_pool!(self, read, |pool| {
            let rows = sqlx::query(
                "SELECT job_id, attempt, generation, CASE WHEN state = 'moved' THEN ended_ms ELSE bound_ms END AS at_ms
                 FROM attempts WHERE generation IS NOT NULL ORDER BY at_ms",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    let attempt: i32 = row.try_get("attempt")?;
                    Ok(DutyWrite {
                        job: row.try_get("job_id")?,
                        attempt: u32::try_from(attempt).map_err(|e| DbError::corrupt("attempts.attempt", e))?,
                        generation: generation(row.try_get("generation")?)?,
                        at_ms: row.try_get::<Option<i64>, _>("at_ms")?.unwrap_or_default(),
                    })
                })
                .collect()
        })
    }

    /// Write this replica's presence (and the generation it holds or last held).
    pub async fn replica_seen(
        &self,
        id: &str,
        addr: &str,
        incarnation: &str,
        started_ms: i64,
        generation: u64,
    ) -> Result<(), DbError> {
        let now = clock(self);
        let sql = format!(
            "INSERT INTO gateway_replicas (id, addr, incarnation, started_ms, seen_ms, generation) VALUES ($1, $2, $3, $4, {now}, $5)
             ON CONFLICT (id) DO UPDATE SET addr = $2, incarnation = $3, started_ms = $4, seen_ms = {now}, generation = $5"
        );
        with_pool!(self, write, |pool| {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(id)
                .bind(addr)
                .bind(incarnation)
                .bind(started_ms)
                .bind(i64::try_from(generation).unwrap_or(i64::MAX))
                .execute(pool)
                .await?;
            Ok::<_, DbError>(())
        })
    }

    /// Remove this replica's presence (an orderly stop): agents stop being told of it.
    pub async fn replica_gone(&self, id: &str, incarnation: &str) -> Result<(), DbError> {
        with_pool!(self, write, |pool| {
            sqlx::query("DELETE FROM gateway_replicas WHERE id = $1 AND incarnation = $2")
                .bind(id)
                .bind(incarnation)
                .execute(pool)
                .await?;
            Ok::<_, DbError>(())
        })
    }

    /// The replicas seen within `within_ms`, by id.
    pub async fn replicas(&self, within_ms: u64) -> Result<Vec<ReplicaRow>, DbError> {
        let sql = format!(
            "SELECT id, addr, generation, {} - seen_ms AS age_ms FROM gateway_replicas ORDER BY id",
            clock(self)
        );
        with_pool!(self, read, |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(pool).await?;
            let mut out = Vec::new();
            for row in &rows {
                let age: i64 = row.try_get("age_ms")?;
                let age_ms = u64::try_from(age).unwrap_or(0);
                if age_ms <= within_ms {
                    out.push(ReplicaRow {
                        id: row.try_get("id")?,
                        addr: row.try_get("addr")?,
                        generation: generation(row.try_get("generation")?)?,
                        age_ms,
                    });
                }
            }
            Ok::<_, DbError>(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_stale_once_a_newer_generation_was_taken_before_it() {
        let w = |generation, at_ms| DutyWrite { job: "p-a".into(), attempt: 1, generation, at_ms };
        let history = vec![(1, "g1".to_string(), 1_000), (2, "g2".to_string(), 5_000), (3, "g1".to_string(), 9_000)];
        let writes = [w(1, 4_999), w(2, 8_000), w(1, 5_000), w(2, 9_500), w(3, 20_000)];
        let stale: Vec<(u64, i64, i64)> =
            stale_writes(&writes, &history).into_iter().map(|(w, at)| (w.generation, w.at_ms, at)).collect();
        assert_eq!(stale, vec![(1, 5_000, 5_000), (2, 9_500, 9_000)]);
        assert!(stale_writes(&writes[..2], &history).is_empty());
    }
}
