//! The openraft type configuration of an atoll cluster and the replicated commands.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

openraft::declare_raft_types!(
    /// Types of one atoll cluster's Raft group.
    ///
    /// Leader ids are standard Raft's: at most one leader per term. (openraft's default lets
    /// two replicas lead the same term, ordered by node id; the gateway fences leaders by term
    /// alone, so a superseded leader of the same term would pass its fence.)
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = Member,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

/// A replica's entry in the Raft membership: where its peers reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Advertised `host:port` of the replica's mTLS listener (Raft RPCs and API).
    pub addr: String,
}

impl Member {
    pub fn new(addr: impl Into<String>) -> Self {
        Self { addr: addr.into() }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// A change to the replicated state, proposed through the leader and applied in log order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Set a cluster annotation (operator key/value).
    SetAnnotation { key: String, value: String },
    /// Remove a cluster annotation; removing an absent key is not an error.
    DeleteAnnotation { key: String },
    /// Record the incarnation (random id made when its data dir was created) of a replica, so a
    /// wiped replica that comes back under the same node id is recognised and refused.
    RegisterReplica { node_id: u64, incarnation: String },
    /// Replace the view of the mesh the gateway gave the leader: the other clusters to probe,
    /// and the revoked ones to refuse.
    SetMeshView { view: MeshView },
    /// Changes to the job attempts the cluster holds, applied in order (one entry for a whole
    /// lease answer or report batch).
    Jobs { ops: Vec<crate::jobs::JobOp> },
}

/// The mesh as the gateway last described it to this cluster's leader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshView {
    pub peers: Vec<MeshPeer>,
    pub revoked: Vec<String>,
}

/// Another cluster of the mesh.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MeshPeer {
    pub name: String,
    pub endpoint: String,
    pub labels: Vec<String>,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::SetAnnotation { key, .. } => write!(f, "set_annotation({key})"),
            Command::DeleteAnnotation { key } => write!(f, "delete_annotation({key})"),
            Command::RegisterReplica { node_id, .. } => write!(f, "register_replica({node_id})"),
            Command::SetMeshView { view } => {
                write!(f, "set_mesh_view({} peers, {} revoked)", view.peers.len(), view.revoked.len())
            }
            Command::Jobs { ops } => write!(f, "jobs({} ops)", ops.len()),
        }
    }
}

/// What applying a [`Command`] produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CommandResponse {
    /// An annotation was written: `version` counts writes to this key since it was created,
    /// `revision` is the log index of this write.
    AnnotationSet { key: String, version: u64, revision: u64 },
    /// An annotation was deleted (`existed` false when the key was absent).
    AnnotationDeleted { key: String, existed: bool },
    /// The replica's incarnation was recorded.
    ReplicaRegistered { node_id: u64 },
    /// The mesh view was replaced.
    MeshViewSet,
    /// Job ops applied: per op, whether it changed anything.
    JobsApplied { changed: Vec<bool> },
    /// The command was refused by the state machine; the log entry is kept, nothing changed.
    Refused { reason: String },
    /// A blank or membership entry: nothing to report.
    Noop,
}

/// One stored annotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotation {
    pub value: String,
    /// Number of writes to this key since it was (re)created; 1 after the first write.
    pub version: u64,
    /// Log index of the last write.
    pub revision: u64,
}

/// A replica's recorded incarnation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub incarnation: String,
    /// Log index at which it was recorded.
    pub revision: u64,
}

pub type NodeId = u64;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, crate::SnapshotFile>;
