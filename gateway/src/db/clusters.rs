//! The registry rows: one per cluster.

use atoll_api::ClusterName;
use atoll_api::gateway::Heartbeat;
use atoll_api::gateway::ReplicaInfo;
use atoll_api::ids::Term;
use sqlx::Row;

use super::Db;
use super::DbError;
use super::cluster_column;
use super::json_column;
use super::with_pool;

/// A cluster as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRow {
    pub name: ClusterName,
    pub labels: Vec<String>,
    pub enabled: bool,
    pub revoked_ms: Option<i64>,
    pub term: Term,
    pub leader_id: Option<u64>,
    pub endpoint: Option<String>,
    pub replicas: Vec<ReplicaInfo>,
    pub registered_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    /// What its executor runs, as its leader last said.
    pub capabilities: Option<atoll_api::spec::Capabilities>,
}

/// What a registration became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registered {
    Accepted,
    /// A leader of a higher term registered already.
    Fenced {
        term: Term,
    },
    Revoked,
}

macro_rules! columns {
    () => {
        "name, labels, enabled, revoked_ms, term, leader_id, endpoint, replicas, registered_ms, last_seen_ms, capabilities"
    };
}

macro_rules! decode_cluster {
    ($row:expr) => {{
        let row = $row;
        let labels: String = row.try_get("labels")?;
        let replicas: String = row.try_get("replicas")?;
        let term: i64 = row.try_get("term")?;
        let leader: Option<i64> = row.try_get("leader_id")?;
        let capabilities: Option<String> = row.try_get("capabilities")?;
        Ok::<_, DbError>(ClusterRow {
            name: cluster_column("clusters.name", row.try_get("name")?)?,
            labels: json_column("clusters.labels", &labels)?,
            enabled: row.try_get("enabled")?,
            revoked_ms: row.try_get("revoked_ms")?,
            term: Term(u64::try_from(term).map_err(|e| DbError::corrupt("clusters.term", e))?),
            leader_id: leader
                .map(|l| u64::try_from(l).map_err(|e| DbError::corrupt("clusters.leader_id", e)))
                .transpose()?,
            endpoint: row.try_get("endpoint")?,
            replicas: json_column("clusters.replicas", &replicas)?,
            registered_ms: row.try_get("registered_ms")?,
            last_seen_ms: row.try_get("last_seen_ms")?,
            capabilities: capabilities.map(|c| json_column("clusters.capabilities", &c)).transpose()?,
        })
    }};
}

fn to_i64(value: u64, what: &'static str) -> Result<i64, DbError> {
    i64::try_from(value).map_err(|e| DbError::corrupt(what, e))
}

impl Db {
    /// Every cluster, by name.
    pub async fn clusters(&self) -> Result<Vec<ClusterRow>, DbError> {
        const SQL: &str = concat!("SELECT ", columns!(), " FROM clusters ORDER BY name");
        with_pool!(self, read, |pool| {
            let rows = sqlx::query(SQL).fetch_all(pool).await?;
            rows.iter().map(|row| decode_cluster!(row)).collect()
        })
    }

    pub async fn cluster(&self, name: &str) -> Result<Option<ClusterRow>, DbError> {
        const SQL: &str = concat!("SELECT ", columns!(), " FROM clusters WHERE name = $1");
        with_pool!(self, read, |pool| {
            match sqlx::query(SQL).bind(name).fetch_optional(pool).await? {
                Some(row) => decode_cluster!(&row).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Create the cluster's row if it does not exist (a join token names it before it registers).
    pub async fn ensure_cluster(&self, name: &str, labels: &[String]) -> Result<(), DbError> {
        let labels = serde_json::to_string(labels).map_err(|e| DbError::corrupt("clusters.labels", e))?;
        with_pool!(self, write, |pool| {
            sqlx::query("INSERT INTO clusters (name, labels) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .bind(labels)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// Record a leader's registration, fenced: only a term at least as high as the stored one
    /// is accepted, and never for a revoked cluster. Atomic in one statement.
    pub async fn register(&self, name: &str, heartbeat: &Heartbeat, now_ms: i64) -> Result<Registered, DbError> {
        let labels = serde_json::to_string(&heartbeat.labels).map_err(|e| DbError::corrupt("clusters.labels", e))?;
        let replicas =
            serde_json::to_string(&heartbeat.replicas).map_err(|e| DbError::corrupt("clusters.replicas", e))?;
        let term = to_i64(heartbeat.term.0, "clusters.term")?;
        let leader = to_i64(heartbeat.leader_id, "clusters.leader_id")?;
        let capabilities = heartbeat
            .capabilities
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| DbError::corrupt("clusters.capabilities", e))?;
        let result = with_pool!(self, write, |pool| {
            sqlx::query(
                "INSERT INTO clusters (name, labels, term, leader_id, endpoint, replicas, registered_ms, last_seen_ms, capabilities)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)
                 ON CONFLICT (name) DO UPDATE SET
                     labels = excluded.labels, term = excluded.term, leader_id = excluded.leader_id,
                     endpoint = excluded.endpoint, replicas = excluded.replicas, capabilities = excluded.capabilities,
                     registered_ms = excluded.registered_ms, last_seen_ms = excluded.last_seen_ms
                 WHERE clusters.term <= excluded.term AND clusters.revoked_ms IS NULL",
            )
            .bind(name)
            .bind(labels)
            .bind(term)
            .bind(leader)
            .bind(&heartbeat.endpoint)
            .bind(replicas)
            .bind(now_ms)
            .bind(capabilities)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        if result == 1 {
            return Ok(Registered::Accepted);
        }
        match self.cluster(name).await? {
            Some(row) if row.revoked_ms.is_some() => Ok(Registered::Revoked),
            Some(row) => Ok(Registered::Fenced { term: row.term }),
            None => Err(DbError::corrupt("clusters", format!("registration of {name} neither applied nor refused"))),
        }
    }

    /// Record heartbeats that changed nothing but their time: `(cluster, term, seen_ms)`.
    /// A row whose term moved on meanwhile is left alone. One transaction for the batch.
    pub async fn touch(&self, seen: &[(String, Term, i64)]) -> Result<(), DbError> {
        if seen.is_empty() {
            return Ok(());
        }
        with_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            for (name, term, at) in seen {
                sqlx::query("UPDATE clusters SET last_seen_ms = $1 WHERE name = $2 AND term = $3 AND (last_seen_ms IS NULL OR last_seen_ms < $1)")
                    .bind(*at)
                    .bind(name)
                    .bind(to_i64(term.0, "clusters.term")?)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, DbError>(())
        })
    }

    /// Set the admin intent; false when there is no such cluster.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<bool, DbError> {
        let result = with_pool!(self, write, |pool| {
            sqlx::query("UPDATE clusters SET enabled = $1 WHERE name = $2")
                .bind(enabled)
                .bind(name)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(result == 1)
    }

    /// Revoke a cluster (for good); false when there is no such cluster.
    pub async fn revoke(&self, name: &str, now_ms: i64) -> Result<bool, DbError> {
        let result = with_pool!(self, write, |pool| {
            sqlx::query("UPDATE clusters SET revoked_ms = COALESCE(revoked_ms, $1), enabled = FALSE WHERE name = $2")
                .bind(now_ms)
                .bind(name)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(result == 1)
    }
}
