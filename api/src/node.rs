//! Wire types of a replica's API (`/v1/...` on its mTLS listener).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use crate::ids::ClusterName;
use crate::ids::Term;

/// A replica's role in its Raft group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
        })
    }
}

/// Who leads, and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRef {
    pub id: u64,
    pub addr: String,
}

/// One member of the Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    pub addr: String,
    /// Voters elect and count for quorum; learners only replicate.
    pub voter: bool,
}

/// `GET /v1/status`: one replica's view (`atoll status --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub cluster: ClusterName,
    pub node_id: u64,
    pub role: Role,
    pub term: Term,
    pub leader: Option<LeaderRef>,
    /// Log index of the last entry applied to this replica's state machine.
    pub last_applied: Option<u64>,
    pub members: Vec<MemberInfo>,
    /// Log index of the last entry in this replica's log.
    pub last_log_index: Option<u64>,
    /// Last log index this replica knows to be committed.
    pub committed: Option<u64>,
    /// Log index covered by this replica's current snapshot.
    pub snapshot: Option<u64>,
    /// Log index up to which this replica's log was purged.
    pub purged: Option<u64>,
    pub labels: Vec<String>,
    /// Advertised address of this replica.
    pub addr: String,
    /// Random id made when this replica's data dir was created.
    pub incarnation: String,
    pub version: String,
}

/// `PUT /v1/annotations/{key}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnotationWrite {
    pub value: String,
}

/// What a write became once committed and applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnotationAck {
    pub key: String,
    /// Writes to this key since it was created (1 after the first).
    pub version: u64,
    /// Log index of this write.
    pub revision: u64,
    /// The leader that committed it.
    pub leader: LeaderRef,
}

/// One annotation with its bookkeeping (`GET /v1/annotations?detail=true`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnotationDetail {
    pub value: String,
    pub version: u64,
    pub revision: u64,
}

/// `GET /v1/annotations`: `{KEY: VALUE}` as this replica has applied them.
pub type Annotations = BTreeMap<String, String>;

/// `POST /v1/raft/learners`: add a replica as a learner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddLearner {
    pub id: u64,
    pub addr: String,
}

/// `POST /v1/raft/transfer-leader`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferLeader {
    /// Target replica; the most up-to-date voter when absent.
    pub to: Option<u64>,
}

/// Answer of a membership change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipAck {
    /// Log index of the membership entry.
    pub revision: u64,
    pub members: Vec<MemberInfo>,
}

/// Check an annotation key: 1 to 253 of `[A-Za-z0-9._/-]`, the shape of a Kubernetes annotation
/// key, so keys are safe in URLs, logs and files.
pub fn check_annotation_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 253 {
        return Err(format!("annotation key {key:?} must be 1 to 253 characters"));
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/')) {
        return Err(format!("annotation key {key:?} may hold only letters, digits, '.', '_', '-' and '/'"));
    }
    Ok(())
}

/// Largest annotation value accepted.
pub const MAX_ANNOTATION_VALUE: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_keys() {
        assert!(check_annotation_key("team/owner").is_ok());
        assert!(check_annotation_key("bench.w-1_2").is_ok());
        assert!(check_annotation_key("").is_err());
        assert!(check_annotation_key("a b").is_err());
        assert!(check_annotation_key(&"k".repeat(254)).is_err());
    }

    #[test]
    fn status_json_has_the_contract_fields() {
        let status = NodeStatus {
            cluster: "aws".parse().unwrap(),
            node_id: 1,
            role: Role::Leader,
            term: Term(3),
            leader: Some(LeaderRef { id: 1, addr: "127.0.0.1:1".into() }),
            last_applied: Some(9),
            members: vec![MemberInfo { id: 1, addr: "127.0.0.1:1".into(), voter: true }],
            last_log_index: Some(9),
            committed: Some(9),
            snapshot: None,
            purged: None,
            labels: vec![],
            addr: "127.0.0.1:1".into(),
            incarnation: "x".into(),
            version: "0".into(),
        };
        let json = serde_json::to_value(&status).unwrap();
        for field in ["cluster", "node_id", "role", "term", "leader", "last_applied", "members"] {
            assert!(json.get(field).is_some(), "{field}");
        }
        assert_eq!(json["role"], "leader");
        assert_eq!(json["leader"]["addr"], "127.0.0.1:1");
    }
}
