//! The routes the gateway gave each input of each attempt, in the order it decided them.

use atoll_api::jobs::Route;
use atoll_api::jobs::RouteTaken;
use sqlx::Row;

use super::Db;
use super::DbError;
use super::cluster_column;
use super::with_pool;

/// One input of one attempt: (child job id, attempt, parent's name).
pub type Edge<'a> = (&'a str, u32, &'a str);

impl Db {
    /// Record `taken` for `edge` unless it is the edge's latest route already; true when a
    /// row was written. Two gateways recording one change at once write it once.
    pub async fn record_route(&self, edge: Edge<'_>, taken: &RouteTaken) -> Result<bool, DbError> {
        let (job, attempt, from_job) = edge;
        let attempt = i64::from(attempt);
        with_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            let last = sqlx::query(
                "SELECT seq, route FROM edge_routes WHERE job_id = $1 AND attempt = $2 AND from_job = $3
                 ORDER BY seq DESC LIMIT 1",
            )
            .bind(job)
            .bind(attempt)
            .bind(from_job)
            .fetch_optional(&mut *tx)
            .await?;
            let (seq, same) = match last {
                Some(row) => {
                    let seq: i64 = row.try_get("seq")?;
                    let route: String = row.try_get("route")?;
                    (seq + 1, route == taken.route.as_str())
                }
                None => (1, false),
            };
            if same {
                return Ok::<_, DbError>(false);
            }
            let written = sqlx::query(
                "INSERT INTO edge_routes (job_id, attempt, from_job, seq, route, from_cluster, at_ms, reason)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (job_id, attempt, from_job, seq) DO NOTHING",
            )
            .bind(job)
            .bind(attempt)
            .bind(from_job)
            .bind(seq)
            .bind(taken.route.as_str())
            .bind(taken.from_cluster.as_str())
            .bind(taken.at_ms)
            .bind(&taken.reason)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(written == 1)
        })
    }

    /// (child job id, parent name) of every edge that fell back to the relay (a route recorded
    /// with a reason): the gateway's fallbacks, at its start.
    pub async fn fallen_edges(&self) -> Result<Vec<(String, String)>, DbError> {
        with_pool!(self, read, |pool| {
            let rows = sqlx::query(
                "SELECT DISTINCT job_id, from_job FROM edge_routes WHERE reason IS NOT NULL ORDER BY job_id, from_job",
            )
            .fetch_all(pool)
            .await?;
            rows.iter().map(|row| Ok::<_, DbError>((row.try_get("job_id")?, row.try_get("from_job")?))).collect()
        })
    }

    /// Whether the edge parent `from_job` -> `job` fell back to the relay (any attempt).
    pub async fn edge_fell_back(&self, job: &str, from_job: &str) -> Result<bool, DbError> {
        with_pool!(self, read, |pool| {
            let row = sqlx::query(
                "SELECT 1 AS fell FROM edge_routes WHERE job_id = $1 AND from_job = $2 AND reason IS NOT NULL LIMIT 1",
            )
            .bind(job)
            .bind(from_job)
            .fetch_optional(pool)
            .await?;
            Ok::<_, DbError>(row.is_some())
        })
    }

    /// Every route given to the inputs of `job`'s attempts: (attempt, route) in decision order.
    pub async fn routes_of(&self, job: &str) -> Result<Vec<(u32, RouteTaken)>, DbError> {
        let rows = self.routes_where("WHERE r.job_id = $1", job).await?;
        Ok(rows.into_iter().map(|(_, attempt, taken)| (attempt, taken)).collect())
    }

    /// Every route given to the inputs of the jobs of `pipeline`: (child job id, attempt,
    /// route) in decision order, in one query (the dashboard draws a pipeline's edges from it).
    pub async fn pipeline_routes(&self, pipeline: &str) -> Result<Vec<(String, u32, RouteTaken)>, DbError> {
        self.routes_where("JOIN jobs j ON j.id = r.job_id WHERE j.pipeline_id = $1", pipeline).await
    }

    async fn routes_where(&self, filter: &'static str, arg: &str) -> Result<Vec<(String, u32, RouteTaken)>, DbError> {
        let sql = format!(
            "SELECT r.job_id, r.attempt, r.from_job, r.from_cluster, r.route, r.at_ms, r.reason FROM edge_routes r
             {filter} ORDER BY r.job_id, r.attempt, r.at_ms, r.from_job, r.seq"
        );
        with_pool!(self, read, |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(arg).fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    let attempt: i64 = row.try_get("attempt")?;
                    let route: String = row.try_get("route")?;
                    Ok::<_, DbError>((
                        row.try_get("job_id")?,
                        u32::try_from(attempt).map_err(|e| DbError::corrupt("edge_routes.attempt", e))?,
                        RouteTaken {
                            from_job: row.try_get("from_job")?,
                            from_cluster: cluster_column("edge_routes.from_cluster", row.try_get("from_cluster")?)?,
                            route: Route::from_name(&route).ok_or_else(|| {
                                DbError::corrupt("edge_routes.route", format!("{route:?} is not a route"))
                            })?,
                            at_ms: row.try_get("at_ms")?,
                            reason: row.try_get("reason")?,
                        },
                    ))
                })
                .collect()
        })
    }
}
