//! Join tokens and user tokens, stored only as SHA-256 hashes of their secrets.

use atoll_api::gateway::Scope;
use sqlx::Row;

use super::Db;
use super::DbError;
use super::json_column;
use super::with_pool;

/// What a consumed join token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinGrant {
    pub cluster: String,
    pub labels: Vec<String>,
}

/// Why a join token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    #[error("unknown join token")]
    Unknown,
    #[error("this join token was already used (by {by}): it enrolls {max_uses} replica(s), each once")]
    Used { by: String, max_uses: i64 },
    #[error("this join token expired")]
    Expired,
    #[error("this join token enrolls replicas of cluster {0}, not of the cluster the CSR names")]
    OtherCluster(String),
}

/// A user token as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub expires_ms: Option<i64>,
}

impl Db {
    pub async fn insert_join_token(
        &self,
        hash: &str,
        cluster: &str,
        labels: &[String],
        created_ms: i64,
        expires_ms: i64,
        max_uses: u32,
    ) -> Result<(), DbError> {
        let labels = serde_json::to_string(labels).map_err(|e| DbError::corrupt("join_tokens.labels", e))?;
        with_pool!(self, write, |pool| {
            sqlx::query(
                "INSERT INTO join_tokens (hash, cluster, labels, created_ms, expires_ms, max_uses)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(hash)
            .bind(cluster)
            .bind(labels)
            .bind(created_ms)
            .bind(expires_ms)
            .bind(i64::from(max_uses))
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// Use a join token once, for a replica of `cluster`: atomically counts one use if it has
    /// uses left, is unexpired and made for that cluster; otherwise says why not (and leaves it).
    /// `used_by` lists every replica it enrolled.
    pub async fn consume_join_token(
        &self,
        hash: &str,
        cluster: &str,
        now_ms: i64,
        used_by: &str,
    ) -> Result<Result<JoinGrant, JoinRefused>, DbError> {
        let claimed = with_pool!(self, write, |pool| {
            sqlx::query(
                "UPDATE join_tokens SET used_ms = $1, uses = uses + 1,
                        used_by = CASE WHEN used_by IS NULL THEN $2 ELSE used_by || ', ' || $2 END
                 WHERE hash = $3 AND uses < max_uses AND expires_ms > $1 AND cluster = $4
                 RETURNING cluster, labels",
            )
            .bind(now_ms)
            .bind(used_by)
            .bind(hash)
            .bind(cluster)
            .fetch_optional(pool)
            .await?
            .map(|row| Ok::<_, DbError>((row.try_get::<String, _>("cluster")?, row.try_get::<String, _>("labels")?)))
            .transpose()
        })?;
        if let Some((cluster, labels)) = claimed {
            return Ok(Ok(JoinGrant { cluster, labels: json_column("join_tokens.labels", &labels)? }));
        }
        let known = with_pool!(self, read, |pool| {
            sqlx::query("SELECT cluster, used_by, expires_ms, uses, max_uses FROM join_tokens WHERE hash = $1")
                .bind(hash)
                .fetch_optional(pool)
                .await?
                .map(|row| {
                    Ok::<_, sqlx::Error>((
                        row.try_get::<String, _>("cluster")?,
                        row.try_get::<Option<String>, _>("used_by")?,
                        row.try_get::<i64, _>("expires_ms")?,
                        row.try_get::<i64, _>("uses")? >= row.try_get::<i64, _>("max_uses")?,
                        row.try_get::<i64, _>("max_uses")?,
                    ))
                })
                .transpose()
        })?;
        Ok(Err(match known {
            None => JoinRefused::Unknown,
            Some((_, by, _, true, max_uses)) => JoinRefused::Used { by: by.unwrap_or_default(), max_uses },
            Some((_, _, expires, false, _)) if expires <= now_ms => JoinRefused::Expired,
            Some((other, _, _, false, _)) => JoinRefused::OtherCluster(other),
        }))
    }

    pub async fn insert_user_token(
        &self,
        hash: &str,
        name: &str,
        scopes: &[Scope],
        created_ms: i64,
        expires_ms: Option<i64>,
    ) -> Result<(), DbError> {
        let scopes = serde_json::to_string(scopes).map_err(|e| DbError::corrupt("user_tokens.scopes", e))?;
        with_pool!(self, write, |pool| {
            sqlx::query(
                "INSERT INTO user_tokens (hash, name, scopes, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(hash)
            .bind(name)
            .bind(scopes)
            .bind(created_ms)
            .bind(expires_ms)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// The user of a token hash, if it exists and has not expired.
    pub async fn user_token(&self, hash: &str, now_ms: i64) -> Result<Option<UserRow>, DbError> {
        with_pool!(self, read, |pool| {
            let row = sqlx::query(
                "SELECT name, scopes, expires_ms FROM user_tokens WHERE hash = $1 AND (expires_ms IS NULL OR expires_ms > $2)",
            )
            .bind(hash)
            .bind(now_ms)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(row) => {
                    let scopes: String = row.try_get("scopes")?;
                    Ok(Some(UserRow {
                        name: row.try_get("name")?,
                        scopes: json_column("user_tokens.scopes", &scopes)?,
                        expires_ms: row.try_get("expires_ms")?,
                    }))
                }
                None => Ok::<_, DbError>(None),
            }
        })
    }

    /// Whether any unexpired token has the admin scope.
    pub async fn has_admin_token(&self, now_ms: i64) -> Result<bool, DbError> {
        let rows = with_pool!(self, read, |pool| {
            sqlx::query("SELECT scopes FROM user_tokens WHERE expires_ms IS NULL OR expires_ms > $1")
                .bind(now_ms)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| row.try_get::<String, _>("scopes"))
                .collect::<Result<Vec<_>, _>>()
        })?;
        for scopes in rows {
            let scopes: Vec<Scope> = json_column("user_tokens.scopes", &scopes)?;
            if scopes.contains(&Scope::Admin) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
