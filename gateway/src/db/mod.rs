//! All SQL of the gateway lives here (and only here).
//!
//! One SQL text per query serves both engines (`$N` placeholders work on both, as do `ON
//! CONFLICT ... DO UPDATE ... WHERE` and `RETURNING`); [`with_pool!`] runs it on whichever pool
//! is configured. SQLite runs in WAL mode with `synchronous=FULL` (a commit is on disk before it is
//! acknowledged: a submitted job survives a power loss) and a busy timeout, with a single-connection pool for
//! writes (one writer) and a small pool for reads; PostgreSQL uses one pool. Migrations are
//! embedded and applied at start under sqlx's migration lock; a database migrated by a newer
//! build is refused.
//!
//! - [`clusters`]: the registry rows.
//! - [`tokens`]: join tokens and user tokens (hashed).
//! - [`matrix`]: one matrix row per reporting cluster.
//! - [`jobs`]: pipelines, jobs and attempts; every transition a conditional update.
//! - [`secrets`]: sealed secret values (`atoll secret set`).
//! - [`lease`]: the duties lease of gateway replicas, its fence, and the replicas' presence.
//! - [`testing`]: throwaway databases for tests (SQLite files, PostgreSQL databases).

pub mod clusters;
pub mod jobs;
pub mod lease;
pub mod matrix;
pub mod retention;
pub mod routes;
pub mod secrets;
pub mod sessions;
pub mod sources;
#[cfg(any(test, feature = "testsuite"))]
pub mod testing;
pub mod tokens;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migration;
use sqlx::migrate::MigrationType;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::sqlite::SqliteJournalMode;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::sqlite::SqliteSynchronous;

use crate::config::Database;

/// The embedded migrations, in order.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../../migrations/0001_initial.sql")),
    (2, "jobs", include_str!("../../migrations/0002_jobs.sql")),
    (3, "logs", include_str!("../../migrations/0003_logs.sql")),
    (4, "outputs", include_str!("../../migrations/0004_outputs.sql")),
    (5, "sources", include_str!("../../migrations/0005_sources.sql")),
    (6, "edge routes", include_str!("../../migrations/0006_edge_routes.sql")),
    (7, "retention", include_str!("../../migrations/0007_retention.sql")),
    (8, "replicas", include_str!("../../migrations/0008_replicas.sql")),
    (9, "join token uses", include_str!("../../migrations/0009_join_token_uses.sql")),
    (10, "dashboard sessions", include_str!("../../migrations/0010_dashboard_sessions.sql")),
    (11, "secrets", include_str!("../../migrations/0011_secrets.sql")),
    (12, "capabilities", include_str!("../../migrations/0012_capabilities.sql")),
];

/// A connected, migrated database.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite { write: sqlx::SqlitePool, read: sqlx::SqlitePool },
    Postgres(sqlx::PgPool),
}

/// Run `$body` with `$pool` bound to the reading (`read`) or writing (`write`) pool.
macro_rules! with_pool {
    ($db:expr, read, |$pool:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite { read: $pool, .. } => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
    ($db:expr, write, |$pool:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite { write: $pool, .. } => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("connecting to the database ({target}) failed: {source}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the database was migrated by a newer atoll (schema version {found}; this build knows up to {known}): upgrade the gateway, or point it at another database"
    )]
    NewerSchema { found: i64, known: i64 },
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    #[error(
        "this gateway no longer holds the duties lease at generation {generation}: another replica took it; nothing was written"
    )]
    Deposed { generation: u64 },
    #[error("corrupt value in column {column}: {detail}")]
    Corrupt { column: &'static str, detail: String },
}

impl DbError {
    pub(crate) fn corrupt(column: &'static str, detail: impl std::fmt::Display) -> Self {
        DbError::Corrupt { column, detail: detail.to_string() }
    }
}

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                use sqlx::SqlSafeStr;
                Migration::new(*version, (*description).into(), MigrationType::Simple, (*sql).into_sql_str(), false)
            })
            .collect(),
    )
}

/// Redact the password of a database URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

impl Db {
    /// Connect and apply the embedded migrations.
    pub async fn connect(database: &Database) -> Result<Self, DbError> {
        let db = match database {
            Database::Sqlite { path } => {
                let target = path.display().to_string();
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true);
                let connect = |size: u32| {
                    SqlitePoolOptions::new()
                        .max_connections(size)
                        .acquire_timeout(Duration::from_secs(10))
                        .connect_with(options.clone())
                };
                let write = connect(1).await.map_err(|source| DbError::Connect { target: target.clone(), source })?;
                let read = connect(4).await.map_err(|source| DbError::Connect { target, source })?;
                Db::Sqlite { write, read }
            }
            Database::Postgres { url, max_connections, idle_in_transaction } => {
                let options = sqlx::postgres::PgConnectOptions::from_str(url)
                    .map_err(|source| DbError::Connect { target: redact(url), source })?
                    // A paused replica's open transaction (a lease fence holds a share lock)
                    // is ended by the server, so it cannot hold up the next lease holder.
                    .options([(
                        "idle_in_transaction_session_timeout",
                        format!("{}ms", idle_in_transaction.as_millis().max(1)),
                    )]);
                let pool = PgPoolOptions::new()
                    .max_connections(*max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
                    .map_err(|source| DbError::Connect { target: redact(url), source })?;
                Db::Postgres(pool)
            }
        };
        let migrator = migrator();
        let known = MIGRATIONS.iter().map(|(version, _, _)| *version).max().unwrap_or(0);
        with_pool!(&db, write, |pool| migrator.run(pool).await).map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(found) => DbError::NewerSchema { found, known },
            other => DbError::Migrate(other),
        })?;
        Ok(db)
    }

    /// Which engine, for logs and metrics.
    pub fn engine(&self) -> &'static str {
        match self {
            Db::Sqlite { .. } => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// A cheap round trip (readiness).
    pub async fn ping(&self) -> Result<(), DbError> {
        with_pool!(self, read, |pool| sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite { write, read } => {
                write.close().await;
                read.close().await;
            }
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// Decode a column holding a cluster's name (checked when it was written; a row that holds
/// another is corrupt).
pub(crate) fn cluster_column(column: &'static str, text: String) -> Result<atoll_api::ClusterName, DbError> {
    text.parse().map_err(|e| DbError::corrupt(column, e))
}

/// Decode a JSON text column.
pub(crate) fn json_column<T: serde::de::DeserializeOwned>(column: &'static str, text: &str) -> Result<T, DbError> {
    serde_json::from_str(text).map_err(|e| DbError::corrupt(column, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://atoll:secret@db:5432/atoll"), "postgres://atoll:***@db:5432/atoll");
        assert_eq!(redact("postgres://db/atoll"), "postgres://db/atoll");
    }
}
