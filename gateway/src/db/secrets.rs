//! Secrets as stored: sealed values (see [`crate::secrets`]), never plain text.

use sqlx::Row;

use super::Db;
use super::DbError;
use super::with_pool;

/// A secret's record, without its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRow {
    pub name: String,
    pub updated_ms: i64,
    pub updated_by: String,
}

impl Db {
    /// Store `sealed` under `name`, replacing any value it had.
    pub async fn put_secret(&self, name: &str, sealed: &str, now_ms: i64, by: &str) -> Result<(), DbError> {
        with_pool!(self, write, |pool| {
            sqlx::query(
                "INSERT INTO secrets (name, sealed, updated_ms, updated_by) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, updated_ms = excluded.updated_ms,
                 updated_by = excluded.updated_by",
            )
            .bind(name)
            .bind(sealed)
            .bind(now_ms)
            .bind(by)
            .execute(pool)
            .await?;
            Ok::<_, DbError>(())
        })
    }

    /// The sealed value of `name`.
    pub async fn sealed_secret(&self, name: &str) -> Result<Option<String>, DbError> {
        with_pool!(self, read, |pool| {
            let row = sqlx::query("SELECT sealed FROM secrets WHERE name = $1").bind(name).fetch_optional(pool).await?;
            Ok::<_, DbError>(row.map(|r| r.try_get("sealed")).transpose()?)
        })
    }

    /// Every secret's name and when it was set, by name.
    pub async fn secrets(&self) -> Result<Vec<SecretRow>, DbError> {
        with_pool!(self, read, |pool| {
            let rows =
                sqlx::query("SELECT name, updated_ms, updated_by FROM secrets ORDER BY name").fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    Ok::<_, DbError>(SecretRow {
                        name: r.try_get("name")?,
                        updated_ms: r.try_get("updated_ms")?,
                        updated_by: r.try_get("updated_by")?,
                    })
                })
                .collect()
        })
    }

    /// Remove `name`; whether it was there.
    pub async fn delete_secret(&self, name: &str) -> Result<bool, DbError> {
        with_pool!(self, write, |pool| {
            let done = sqlx::query("DELETE FROM secrets WHERE name = $1").bind(name).execute(pool).await?;
            Ok::<_, DbError>(done.rows_affected() == 1)
        })
    }
}
