//! Pushed sources: which blobs of the gateway's store pipelines may name.

use atoll_api::jobs::SourceInfo;
use sqlx::Row;

use super::Db;
use super::DbError;
use super::with_pool;

impl Db {
    /// Record a source; a second push of the same digest only moves its time on (its retention
    /// counts from the last push). The stored row.
    pub async fn put_source(&self, digest: &str, size: u64, now_ms: i64, by: &str) -> Result<SourceInfo, DbError> {
        let size = i64::try_from(size).map_err(|e| DbError::corrupt("sources.size", e))?;
        with_pool!(self, write, |pool| {
            sqlx::query(
                "INSERT INTO sources (digest, size, created_ms, created_by) VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO UPDATE SET created_ms = excluded.created_ms WHERE sources.created_ms < excluded.created_ms",
            )
            .bind(digest)
            .bind(size)
            .bind(now_ms)
            .bind(by)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        self.source(digest)
            .await?
            .ok_or_else(|| DbError::corrupt("sources", format!("{digest} vanished after its insert")))
    }

    /// A source by digest.
    pub async fn source(&self, digest: &str) -> Result<Option<SourceInfo>, DbError> {
        with_pool!(self, read, |pool| {
            let row = sqlx::query("SELECT digest, size, created_ms, created_by FROM sources WHERE digest = $1")
                .bind(digest)
                .fetch_optional(pool)
                .await?;
            match row {
                Some(row) => {
                    let size: i64 = row.try_get("size")?;
                    Ok::<_, DbError>(Some(SourceInfo {
                        digest: row.try_get("digest")?,
                        size: u64::try_from(size).map_err(|e| DbError::corrupt("sources.size", e))?,
                        created_ms: row.try_get("created_ms")?,
                        created_by: row.try_get("created_by")?,
                    }))
                }
                None => Ok(None),
            }
        })
    }

    /// Forget a source whose blob retention removes: pipelines may no longer name it.
    pub async fn forget_source(&self, duty: super::lease::Duty, digest: &str) -> Result<(), DbError> {
        with_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            super::lease::fence!(self, tx, duty);
            sqlx::query("DELETE FROM sources WHERE digest = $1").bind(digest).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, DbError>(())
        })
    }
}
