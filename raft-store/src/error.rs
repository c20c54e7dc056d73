//! Errors of opening a replica's data directory.
//!
//! Once a store is open, errors are returned to openraft as `std::io::Error`: openraft treats any
//! storage error as fatal and stops the replica; nothing is retried silently.

use std::path::PathBuf;

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path} is not an atoll data directory (it holds {found} but no {marker}); refusing to use it")]
    Foreign { path: PathBuf, found: String, marker: &'static str },

    #[error(
        "{path} has data format version {found}, this build reads version {supported}; run the build that wrote it, or start this replica on an empty data directory (it catches up from its peers)"
    )]
    UnsupportedFormat { path: PathBuf, found: u32, supported: u32 },

    #[error("{path} is corrupted: {detail}")]
    Corrupt { path: PathBuf, detail: String },

    #[error(
        "{path} belongs to node {stored_node} of cluster {stored_cluster:?}, but the config says node {node} of cluster {cluster:?}; a replica keeps its id for life (a wiped replica rejoins under a new id)"
    )]
    IdentityMismatch { path: PathBuf, stored_cluster: String, stored_node: u64, cluster: String, node: u64 },

    #[error("{path} is in use by another process")]
    InUse { path: PathBuf },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl OpenError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    /// Map a redb error met while opening `path`.
    pub(crate) fn redb(path: impl Into<PathBuf>, err: impl Into<redb::Error>) -> Self {
        let path = path.into();
        match err.into() {
            redb::Error::DatabaseAlreadyOpen => Self::InUse { path },
            redb::Error::Io(source) if source.kind() == std::io::ErrorKind::InvalidData => {
                Self::Corrupt { path, detail: source.to_string() }
            }
            redb::Error::Io(source) => Self::Io { path, source },
            other => Self::Corrupt { path, detail: other.to_string() },
        }
    }
}

/// Turn any error into the `io::Error` openraft's storage traits return.
pub(crate) fn io_error(err: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(err.to_string())
}
