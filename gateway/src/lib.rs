//! The atoll gateway: the master of the mesh.
//!
//! - [`config`]: the gateway config file and its checked form.
//! - [`run()`]: boot and orderly shutdown.
//! - [`db`]: all SQL (SQLite or PostgreSQL), migrations.
//! - [`ca`]: the mesh CA, and the gateway's own renewing certificate.
//! - [`auth`]: who is calling (certificate, bearer token, nobody) and what they may do.
//! - [`registry`]: clusters, their leaders and terms (fencing), their observed state.
//! - [`matrix`]: reported rows joined into the directed reachability matrix.
//! - [`placement`]: which cluster runs a job (pure).
//! - [`lifecycle`]: how pipelines and jobs move on reports (pure).
//! - [`jobs`]: submission, the scheduling pass, leases, reports and logs.
//! - [`retention`]: which blobs nobody needs any more; passes over the relay store.
//! - [`api`]: the `/v1` routes; [`ops`]: health, readiness, metrics.
//!
//! Invariants:
//! - only `db/` holds SQL; the registry and matrix decisions are pure functions;
//! - a heartbeat or row from a term lower than the known one is refused (409) and changes
//!   nothing; a registration is fenced again in SQL, so concurrent gateways agree;
//! - tokens are stored only hashed; a join token enrolls one replica of the cluster it names,
//!   and only until it expires; a revoked cluster gets nothing (no enrollment, renewal,
//!   heartbeat or row) and is told to every other cluster at its next heartbeat;
//! - a job report, lease or log batch is fenced by term like a heartbeat, and a report applies
//!   only while the job is bound to the reporter's (cluster, attempt): one accepted result.

pub mod api;
pub mod auth;
pub mod ca;
pub mod config;
pub mod db;
pub mod jobs;
pub mod lifecycle;
pub mod matrix;
pub mod metrics;
pub mod ops;
pub mod placement;
pub mod registry;
pub mod relay;
pub mod retention;
mod run;
pub mod unsafe_switches;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

pub use config::GatewayConfig;
#[cfg(any(test, feature = "testsuite"))]
pub use db::testing;
pub use run::run;

/// The gateway's shared state.
pub struct Gateway {
    pub config: GatewayConfig,
    pub db: db::Db,
    pub ca: std::sync::Arc<ca::GatewayCa>,
    pub registry: registry::Registry,
    pub rows: matrix::Rows,
    pub metrics: metrics::Metrics,
    pub jobs: jobs::JobsState,
    /// The relay store and its routes (`/v1/blobs/...`).
    pub relay: std::sync::Arc<atoll_store::transfer::BlobService>,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("id", &self.config.id).finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Wall-clock unix milliseconds (heartbeat times and token expiry are wall-clock by nature:
/// they are shared through the database).
pub fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos().div_euclid(1_000_000) as i64
}
