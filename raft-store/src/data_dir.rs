//! A replica's data directory: who it belongs to, in which format, and where each store lives.
//!
//! ```text
//! DATA_DIR/
//!   atoll-replica.json     marker: format version, cluster, node id, incarnation
//!   raft/log.redb          vote, committed, purge point and log entries
//!   raft/state.redb        the state machine (annotations, replicas, last applied, membership)
//!   raft/snapshots/        current.snap (the last built or installed snapshot) and temp files
//! ```
//!
//! The marker is written once, atomically (temp file, fsync, rename, fsync of the directory), when
//! the directory is created. Opening checks it before anything else touches the directory, so a
//! foreign directory, a newer format or another replica's data is refused with a clear error.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use crate::error::OpenError;

/// Data format version written by this build. Bump it (and add a migration) when any on-disk
/// record changes shape. Format 2: log ids and votes carry standard Raft leader ids (format 1
/// had openraft's advanced ones, several leaders per term).
pub const DATA_FORMAT_VERSION: u32 = 2;

const MARKER: &str = "atoll-replica.json";

/// Contents of the marker file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaIdentity {
    pub format: u32,
    pub cluster: String,
    pub node_id: u64,
    /// Random id made when the directory was created: a wiped and recreated replica gets a new
    /// one, which is how its peers recognise it.
    pub incarnation: String,
}

/// An opened, checked data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
    identity: ReplicaIdentity,
    created: bool,
}

impl DataDir {
    /// Open `root` for node `node_id` of `cluster`, creating it when it does not exist or is
    /// empty.
    pub fn open(root: &Path, cluster: &str, node_id: u64) -> Result<Self, OpenError> {
        let marker = root.join(MARKER);
        let created = match fs::read(&marker) {
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::ensure_empty_or_absent(root)?;
                let identity = ReplicaIdentity {
                    format: DATA_FORMAT_VERSION,
                    cluster: cluster.to_string(),
                    node_id,
                    incarnation: new_incarnation(),
                };
                write_marker(root, &identity)?;
                true
            }
            Err(e) => return Err(OpenError::io(&marker, e)),
        };
        let identity = read_marker(&marker)?;
        if identity.format != DATA_FORMAT_VERSION {
            return Err(OpenError::UnsupportedFormat {
                path: root.to_path_buf(),
                found: identity.format,
                supported: DATA_FORMAT_VERSION,
            });
        }
        if identity.cluster != cluster || identity.node_id != node_id {
            return Err(OpenError::IdentityMismatch {
                path: root.to_path_buf(),
                stored_cluster: identity.cluster,
                stored_node: identity.node_id,
                cluster: cluster.to_string(),
                node: node_id,
            });
        }
        for dir in [root.join("raft"), root.join("raft").join("snapshots")] {
            fs::create_dir_all(&dir).map_err(|e| OpenError::io(&dir, e))?;
        }
        Ok(Self { root: root.to_path_buf(), identity, created })
    }

    fn ensure_empty_or_absent(root: &Path) -> Result<(), OpenError> {
        let entries = match fs::read_dir(root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(root).map_err(|e| OpenError::io(root, e))?;
                return Ok(());
            }
            Err(e) => return Err(OpenError::io(root, e)),
        };
        let mut found: Vec<String> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| OpenError::io(root, e))?;
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
        if found.is_empty() {
            return Ok(());
        }
        found.sort();
        let shown: Vec<&str> = found.iter().take(3).map(String::as_str).collect();
        let more = if found.len() > 3 { format!(" and {} more", found.len() - 3) } else { String::new() };
        Err(OpenError::Foreign {
            path: root.to_path_buf(),
            found: format!("{}{more}", shown.join(", ")),
            marker: MARKER,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn identity(&self) -> &ReplicaIdentity {
        &self.identity
    }

    /// Whether this call created the directory (a brand-new replica).
    pub fn created(&self) -> bool {
        self.created
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("raft").join("log.redb")
    }

    pub fn state_path(&self) -> PathBuf {
        self.root.join("raft").join("state.redb")
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.root.join("raft").join("snapshots")
    }
}

fn read_marker(marker: &Path) -> Result<ReplicaIdentity, OpenError> {
    let bytes = fs::read(marker).map_err(|e| OpenError::io(marker, e))?;
    // Look at the format first, so a newer build's marker with fields we do not know yet is
    // reported as a version problem rather than as corruption.
    #[derive(Deserialize)]
    struct FormatOnly {
        format: u32,
    }
    let format = serde_json::from_slice::<FormatOnly>(&bytes)
        .map_err(|e| OpenError::Corrupt {
            path: marker.to_path_buf(),
            detail: format!("unreadable replica marker: {e}"),
        })?
        .format;
    if format != DATA_FORMAT_VERSION {
        return Err(OpenError::UnsupportedFormat {
            path: marker.parent().unwrap_or(marker).to_path_buf(),
            found: format,
            supported: DATA_FORMAT_VERSION,
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| OpenError::Corrupt {
        path: marker.to_path_buf(),
        detail: format!("unreadable replica marker: {e}"),
    })
}

fn write_marker(root: &Path, identity: &ReplicaIdentity) -> Result<(), OpenError> {
    let marker = root.join(MARKER);
    let temp = root.join(format!("{MARKER}.tmp"));
    let bytes = serde_json::to_vec_pretty(identity).map_err(|e| OpenError::io(&marker, std::io::Error::other(e)))?;
    write_file_durably(&temp, &marker, &bytes).map_err(|e| OpenError::io(&marker, e))
}

/// Write `bytes` to `temp`, fsync it, rename it over `target` and fsync the directory.
pub(crate) fn write_file_durably(temp: &Path, target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(temp, target)?;
    sync_parent(target)
}

/// fsync the directory holding `path`, so a rename or create in it is durable.
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::File::open(parent)?.sync_all()
}

fn new_incarnation() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reopens_with_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("replica");
        let first = DataDir::open(&root, "aws", 2).unwrap();
        assert!(first.created());
        let again = DataDir::open(&root, "aws", 2).unwrap();
        assert!(!again.created());
        assert_eq!(first.identity(), again.identity());
        assert_eq!(again.identity().incarnation.len(), 32);
    }

    #[test]
    fn refuses_another_node_id() {
        let dir = tempfile::tempdir().unwrap();
        DataDir::open(dir.path(), "aws", 2).unwrap();
        let err = DataDir::open(dir.path(), "aws", 3).unwrap_err();
        assert!(matches!(err, OpenError::IdentityMismatch { stored_node: 2, node: 3, .. }), "{err}");
        assert!(err.to_string().contains("rejoins under a new id"), "{err}");
        let err = DataDir::open(dir.path(), "gcp", 2).unwrap_err();
        assert!(matches!(err, OpenError::IdentityMismatch { .. }), "{err}");
    }

    #[test]
    fn refuses_a_foreign_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("member.wal"), b"not ours").unwrap();
        let err = DataDir::open(dir.path(), "aws", 1).unwrap_err();
        assert!(matches!(err, OpenError::Foreign { .. }), "{err}");
        assert!(err.to_string().contains("member.wal"), "{err}");
    }

    #[test]
    fn refuses_a_garbled_marker_and_a_newer_format() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MARKER), b"\x00\x01garbage").unwrap();
        let err = DataDir::open(dir.path(), "aws", 1).unwrap_err();
        assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");

        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(MARKER),
            br#"{"format": 9, "cluster": "aws", "node_id": 1, "incarnation": "x", "shiny": true}"#,
        )
        .unwrap();
        let err = DataDir::open(dir.path(), "aws", 1).unwrap_err();
        assert!(matches!(err, OpenError::UnsupportedFormat { found: 9, supported: 2, .. }), "{err}");

        // A directory written before leader ids became standard Raft's is refused by version.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MARKER), br#"{"format": 1, "cluster": "aws", "node_id": 1, "incarnation": "x"}"#)
            .unwrap();
        let err = DataDir::open(dir.path(), "aws", 1).unwrap_err();
        assert!(matches!(err, OpenError::UnsupportedFormat { found: 1, supported: 2, .. }), "{err}");
    }
}
