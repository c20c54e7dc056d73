//! The atoll agent replica: one member of a cluster's Raft group.
//!
//! - [`config`]: the agent config file and its checked form.
//! - [`run()`]: boot and orderly shutdown of a replica.
//! - [`raft`]: everything that touches openraft (core, network, RPCs, bootstrap, failover).
//! - [`jobs`]: the leader's job duties: a pure plan of what to record, stop and start, the
//!   loop that carries it out, and the executors (process, Kubernetes).
//! - [`link`]: the link to the gateway: enrollment, renewal, the leader's duties.
//! - [`duty`]: how a leader's duties for a term end (fenced, revoked), shared by the link and
//!   the jobs.
//! - [`transfers`]: outputs between clusters: the blob routes, receiving inputs, sending outputs.
//! - [`pods`]: the pod listener, where a Kubernetes Job's pod fetches its inputs and stores its
//!   output.
//! - [`retention`]: blobs and work directories nobody needs any more go.
//! - [`reachability`]: the link-state detector the leader's probes feed.
//! - [`admission`]: which peers' connections are served (revoked and refused clusters are not).
//! - [`api`]: the replica API on the mTLS listener.
//! - [`ops`]: health, readiness and metrics on the plain ops listener.
//! - [`metrics`]: the Prometheus metrics.
//!
//! Invariants:
//! - only `raft/` touches openraft; everything else sees [`raft::Replica`] and API types;
//! - every listener but the ops and pod ones requires a client certificate from the mesh CA, and
//!   Raft RPCs are accepted only from replicas of the same cluster; the pod listener serves
//!   only an attempt's own blobs and output, to the holder of that attempt's secret;
//! - a write is acknowledged only after it is committed by a quorum and applied;
//! - a replica whose data was wiped never rejoins under its old id.

pub mod admission;
pub mod api;
pub mod config;
pub mod duty;
pub mod jobs;
pub mod link;
pub mod metrics;
pub mod ops;
pub mod pods;
pub mod raft;
pub mod reachability;
pub mod retention;
mod run;
pub mod transfers;

pub use config::AgentConfig;
pub use run::Stopped;
pub use run::run;
