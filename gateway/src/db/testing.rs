//! Databases for tests: a temp SQLite file, or a fresh database on the PostgreSQL server named
//! by `ATOLL_TEST_POSTGRES_URL` (which `scripts/test` starts). A PostgreSQL test without that
//! server fails loudly; it never passes quietly.

use std::path::PathBuf;

use sqlx::Connection;

use crate::config::Database;

/// The variable naming the test PostgreSQL server.
pub const POSTGRES_ENV: &str = "ATOLL_TEST_POSTGRES_URL";

/// A database that exists for one test; the PostgreSQL one is dropped with it.
pub struct TestDatabase {
    pub database: Database,
    drop: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path: PathBuf = dir.path().join("gateway.db");
        Self { database: Database::Sqlite { path }, drop: None, _dir: Some(dir) }
    }

    /// A fresh database on the test server. Panics with what to do when there is none.
    pub async fn postgres() -> Self {
        let admin_url = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
            panic!("{POSTGRES_ENV} is not set: PostgreSQL tests need a server. Run scripts/test (it starts one), or scripts/postgres and export what it prints")
        });
        Self::postgres_on(&admin_url).await
    }

    /// A fresh database on the server at `admin_url` (a URL of any database there).
    pub async fn postgres_on(admin_url: &str) -> Self {
        let admin_url = admin_url.to_string();
        let name = format!("atoll_test_{:016x}", rand_u64());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL server at {admin_url}: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("{POSTGRES_ENV} has no database part: {admin_url}"),
        };
        Self {
            database: Database::Postgres {
                url,
                max_connections: 8,
                idle_in_transaction: std::time::Duration::from_secs(5),
            },
            drop: Some((admin_url, name)),
            _dir: None,
        }
    }

    /// Both engines, for tests that must run against each.
    pub async fn both() -> Vec<(&'static str, TestDatabase)> {
        vec![("sqlite", Self::sqlite()), ("postgres", Self::postgres().await)]
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.drop.take() else { return };
        // Dropping needs its own runtime: Drop may run outside (or at the end of) the test's.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await;
                }
            });
        })
        .join();
    }
}

fn rand_u64() -> u64 {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes).expect("random");
    u64::from_le_bytes(bytes)
}

/// Record a migration this build does not know, as a newer build would have.
pub async fn record_foreign_migration(db: &super::Db, version: i64) {
    super::with_pool!(db, write, |pool| {
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES ($1, 'from a newer build', TRUE, $2, 0)",
        )
        .bind(version)
        .bind(vec![0u8; 48])
        .execute(pool)
        .await
        .map(|_| ())
    })
    .expect("record a foreign migration");
}
