//! Durable openraft storage for an atoll replica, on redb.
//!
//! - [`data_dir`]: the replica's data directory and its identity marker (format version,
//!   cluster, node id, incarnation), checked before anything else is opened.
//! - [`log_store`]: the Raft log, vote and commit pointer ([`LogStore`]).
//! - [`state_machine`]: the replicated state and its snapshots ([`StateMachineStore`]).
//! - [`state`]: what each [`Command`] does to the state.
//! - [`snapshot`]: the versioned snapshot file format.
//! - [`types`]: the openraft type configuration ([`TypeConfig`]) and the replicated commands.
//!
//! Invariants:
//! - a vote is on disk before `save_vote` returns; appended entries are on disk before their
//!   flush callback fires; truncate and purge are durable and never leave a hole;
//! - every record carries a format version, and the data directory a format marker: an unknown
//!   version, a foreign directory or a corrupt record is a clear error at open, never a panic;
//! - after any crash the replica restarts at a state it had acknowledged or later: the log is
//!   always durable, the state machine catches up from its last durable point and the snapshot;
//! - any I/O error is returned to openraft, which stops the replica; nothing is retried silently.
//!
//! No networking happens here.

pub mod codec;
pub mod data_dir;
pub mod error;
pub mod jobs;
pub mod log_store;
pub mod snapshot;
mod state;
pub mod state_machine;
pub mod types;

pub use data_dir::DataDir;
pub use error::OpenError;
pub use log_store::LogReader;
pub use log_store::LogStore;
pub use snapshot::SnapshotFile;
pub use state_machine::StateMachineStore;
pub use types::Annotation;
pub use types::Command;
pub use types::CommandResponse;
pub use types::Member;
pub use types::MeshPeer;
pub use types::MeshView;
pub use types::TypeConfig;

/// Open (or create) the data directory of node `node_id` of `cluster` and both stores in it.
///
/// The storage engine can panic on some corruptions of its own structures; such a panic is
/// contained here and reported as [`OpenError::Corrupt`].
pub fn open(
    root: &std::path::Path,
    cluster: &str,
    node_id: u64,
) -> Result<(DataDir, LogStore, StateMachineStore), OpenError> {
    let dir = DataDir::open(root, cluster, node_id)?;
    let log_path = dir.log_path();
    let log = contain_panic(&log_path, || LogStore::open(&log_path))?;
    let state_path = dir.state_path();
    let state = contain_panic(&state_path, || StateMachineStore::open(&state_path, &dir.snapshot_dir()))?;
    Ok((dir, log, state))
}

fn contain_panic<T>(path: &std::path::Path, f: impl FnOnce() -> Result<T, OpenError>) -> Result<T, OpenError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(OpenError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("the storage engine failed reading it: {message}"),
        })
    })
}
