//! A local mesh as child processes: the layout (clusters, ids, ports, the gateway and its
//! replicas), the files it needs (CA, configs, join tokens, the CLI config), and the children
//! themselves, with the PostgreSQL server gateway replicas share when the mesh runs its own.
//!
//! Used by `atoll dev`, the benchmarks and the multi-process tests, so all three run exactly
//! what an operator runs: an `atoll gateway` and `atoll agent --config FILE` processes talking
//! mTLS on 127.0.0.1. With a gateway, replicas start without certificates and enroll with a
//! join token, as they would in production. Several gateway replicas share one CA directory,
//! created before any of them starts, and one PostgreSQL database; the first replica starts
//! alone and serves before the others start.
//!
//! - [`layout`]: what the mesh is made of, stored as `layout.json`.
//! - [`files`]: the directory and the files written from the layout.
//! - [`run`]: starting, watching and stopping the processes.
//! - [`postgres`]: a PostgreSQL server of the mesh's own (also the chaos suite's), installed
//!   when missing, initialised once, reused across runs of the same directory.
//! - [`registry`]: an image registry for the tests of registry logins.

mod files;
mod layout;
mod ports;
pub mod postgres;
pub mod registry;
mod run;

pub use files::MeshDir;
pub use layout::ClusterLayout;
pub use layout::EXIT_WITH_PARENT_ENV;
pub use layout::GatewayLayout;
pub use layout::GatewayReplicaLayout;
pub use layout::GatewayTiming;
pub use layout::JobContainers;
pub use layout::KubernetesBuilder;
pub use layout::Layout;
pub use layout::LeaseTiming;
pub use layout::Placement;
pub use layout::PostgresLayout;
pub use layout::RaftKnobs;
pub use layout::ReplicaLayout;
pub use layout::SINGLE_GATEWAY_ID;
pub use layout::Timing;
pub use layout::allocate_ports;
pub use layout::default_clusters;
pub use layout::parent_gone;
pub use layout::replica_name;
pub use run::ClusterLeader;
pub use run::GatewayRecord;
pub use run::GatewayReplicaRecord;
pub use run::Mesh;
pub use run::NodeRecord;
pub use run::tail;
pub use run::wipe;
