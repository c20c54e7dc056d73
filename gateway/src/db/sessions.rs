//! Dashboard sessions: a cookie's id stands for the user token it was opened with, until it
//! expires; both are stored hashed. Any replica serves a session another opened.

use sqlx::Row;

use super::Db;
use super::DbError;
use super::json_column;
use super::tokens::UserRow;
use super::with_pool;

/// A session as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub token_hash: String,
    pub csrf: String,
    pub expires_ms: i64,
}

impl Db {
    pub async fn insert_session(
        &self,
        id_hash: &str,
        token_hash: &str,
        csrf: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<(), DbError> {
        with_pool!(self, write, |pool| {
            // Expired sessions go as new ones come: the table holds only live sign-ins.
            sqlx::query("DELETE FROM dashboard_sessions WHERE expires_ms <= $1").bind(now_ms).execute(pool).await?;
            sqlx::query(
                "INSERT INTO dashboard_sessions (id_hash, token_hash, csrf, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id_hash)
            .bind(token_hash)
            .bind(csrf)
            .bind(now_ms)
            .bind(expires_ms)
            .execute(pool)
            .await?;
            Ok::<_, DbError>(())
        })
    }

    /// The unexpired session `id_hash` with the user token it stands for, in one query: none when
    /// either is gone (signed out, timed out, the token revoked or expired).
    pub async fn session_user(&self, id_hash: &str, now_ms: i64) -> Result<Option<(SessionRow, UserRow)>, DbError> {
        with_pool!(self, read, |pool| {
            let row = sqlx::query(
                "SELECT s.token_hash, s.csrf, s.expires_ms AS session_expires_ms, u.name, u.scopes, u.expires_ms
                 FROM dashboard_sessions s JOIN user_tokens u ON u.hash = s.token_hash
                 WHERE s.id_hash = $1 AND s.expires_ms > $2 AND (u.expires_ms IS NULL OR u.expires_ms > $2)",
            )
            .bind(id_hash)
            .bind(now_ms)
            .fetch_optional(pool)
            .await?;
            let Some(row) = row else { return Ok::<_, DbError>(None) };
            let scopes: String = row.try_get("scopes")?;
            Ok(Some((
                SessionRow {
                    token_hash: row.try_get("token_hash")?,
                    csrf: row.try_get("csrf")?,
                    expires_ms: row.try_get("session_expires_ms")?,
                },
                UserRow {
                    name: row.try_get("name")?,
                    scopes: json_column("user_tokens.scopes", &scopes)?,
                    expires_ms: row.try_get("expires_ms")?,
                },
            )))
        })
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<(), DbError> {
        with_pool!(self, write, |pool| {
            sqlx::query("DELETE FROM dashboard_sessions WHERE id_hash = $1").bind(id_hash).execute(pool).await?;
            Ok::<_, DbError>(())
        })
    }
}
