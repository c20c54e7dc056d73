//! The atoll gateway: the master of the mesh.
//!
//! - [`config`]: the gateway config file and its checked form.
//! - [`run()`]: boot and orderly shutdown.
//! - [`db`]: all SQL (SQLite or PostgreSQL), migrations.
//! - [`ca`]: the mesh CA, and the gateway's own renewing certificate.
//! - [`auth`]: who is calling (certificate, bearer token, nobody) and what they may do.
//! - [`fence`]: the term fence every leader's request passes (pure).
//! - [`registry`]: clusters, their leaders and terms (fencing), their observed state.
//! - [`matrix`]: reported rows joined into the directed reachability matrix.
//! - [`route`]: the route of each edge between clusters, and the edges that fell back (pure).
//! - [`placement`]: which cluster runs a job (pure).
//! - [`lifecycle`]: how pipelines and jobs move on reports (pure).
//! - [`duties`]: the duties lease: which replica runs the scheduling pass and retention.
//! - [`bus`]: what one replica tells the others (PostgreSQL `LISTEN`/`NOTIFY`).
//! - [`jobs`]: submission, the scheduling pass, leases, reports and logs (one file each).
//! - [`relay`]: transfers between clusters (routes, tickets, sends) and the relay store's guard.
//! - [`retention`]: which blobs nobody needs any more; passes over the relay store.
//! - [`metrics`]: what the gateway counts.
//! - [`http`]: the `/v1` routes (one router, a file per resource) and the ops listener.
//! - [`breakage`]: the chaos suite's deliberate breakage, handed to the gateway when it is built
//!   (nothing broken in the product).
//!
//! Invariants:
//! - only `db/` holds SQL; the registry and matrix decisions are pure functions;
//! - a heartbeat or row from a term lower than the known one is refused (409) and changes
//!   nothing; a registration is fenced again in SQL, so concurrent gateways agree;
//! - tokens are stored only hashed; a join token enrolls one replica of the cluster it names,
//!   and only until it expires; a revoked cluster gets nothing (no enrollment, renewal,
//!   heartbeat or row) and is told to every other cluster at its next heartbeat;
//! - a job report, lease or log batch is fenced by term like a heartbeat, and a report applies
//!   only while the job is bound to the reporter's (cluster, attempt): one accepted result;
//! - the duties (scheduling, rerouting, retention) run only on the holder of the duties lease,
//!   and each of their writes is fenced on its generation in the database.

pub mod auth;
pub mod breakage;
pub mod bus;
pub mod ca;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod duties;
pub mod fence;
pub mod http;
pub mod jobs;
pub mod lifecycle;
pub mod matrix;
pub mod metrics;
pub mod placement;
pub mod registry;
pub mod relay;
pub mod retention;
pub mod route;
mod run;
pub mod secrets;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

pub use config::GatewayConfig;
#[cfg(any(test, feature = "testsuite"))]
pub use db::testing;
pub use run::run;
#[cfg(any(test, feature = "testsuite"))]
pub use run::run_broken;

/// The gateway's shared state: the services every module uses (the database, the CA, the
/// registry, matrix rows, metrics, the relay store), and the in-memory state of the job service
/// ([`jobs::JobsState`]) and of transfers ([`relay::Transfers`]), each private to its module.
pub struct Gateway {
    config: GatewayConfig,
    db: db::Db,
    ca: std::sync::Arc<ca::GatewayCa>,
    registry: registry::Registry,
    rows: matrix::Rows,
    metrics: metrics::Metrics,
    jobs: jobs::JobsState,
    transfers: relay::Transfers,
    /// The relay store and its routes (`/v1/blobs/...`).
    relay: std::sync::Arc<atoll_store::transfer::BlobService>,
    /// What the chaos suite's deliberately broken gateway gets wrong (nothing, in the product).
    breakage: breakage::Breakage,
    /// The duties lease: whether this replica schedules.
    lease: duties::Lease,
    /// Announcements to the other replicas (none with one gateway).
    bus: bus::Bus,
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
