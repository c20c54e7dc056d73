//! Wire types of the gateway API (`/v1/...` on the gateway's HTTPS listener).

use serde::Deserialize;
use serde::Serialize;

use crate::ids::ClusterName;
use crate::ids::Term;

/// `POST /v1/enroll`: a replica without a certificate presents a join token and a CSR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The join token's secret part (`atoll token create --cluster ...`).
    pub token: String,
    /// PKCS#10 CSR (PEM) for `spiffe://atoll/cluster/<cluster>/node/<id>`.
    pub csr: String,
}

/// A signed certificate and what it is for (answer to enroll and renew).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// The certificate (PEM).
    pub cert: String,
    /// The CA certificate (PEM) to trust.
    pub ca: String,
    pub cluster: ClusterName,
    pub node_id: u64,
    /// Labels the join token assigned to the cluster (empty on renewal).
    pub labels: Vec<String>,
    /// Validity end, unix milliseconds.
    pub not_after_ms: i64,
}

/// `POST /v1/renew`: a replica with a valid certificate asks for a fresh one for the same identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr: String,
}

/// One replica of a cluster, as its leader registers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaInfo {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
}

/// `PUT /v1/clusters/{name}/heartbeat`: a cluster leader registers and heartbeats in one request
/// (idempotent; sent every heartbeat interval). Fenced by `term`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub term: Term,
    pub leader_id: u64,
    /// Where other clusters reach this one (the leader's advertised address).
    pub endpoint: String,
    pub labels: Vec<String>,
    pub replicas: Vec<ReplicaInfo>,
    /// The revision of the mesh view the sender holds: the answer carries the view only when
    /// the gateway's differs (a thousand clusters need not download the mesh every second).
    #[serde(default)]
    pub view_revision: Option<u64>,
    /// What the cluster's executor runs (`None` from a leader that does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<crate::spec::Capabilities>,
}

/// Another cluster, as a leader needs to know it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerCluster {
    pub name: ClusterName,
    pub endpoint: String,
    pub labels: Vec<String>,
}

/// The mesh as the gateway tells a leader at each heartbeat (and the leader replicates to its
/// followers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshView {
    /// Registered, not revoked clusters other than the asking one (disabled ones included).
    pub peers: Vec<PeerCluster>,
    /// Revoked clusters: refuse their replicas.
    pub revoked: Vec<String>,
}

/// Answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The mesh as the leader should see it; absent when the heartbeat named this revision.
    pub view: Option<MeshView>,
    pub view_revision: u64,
    /// How often to heartbeat, probe, and report the whole matrix row, in milliseconds.
    pub heartbeat_interval_ms: u64,
    pub probe_interval_ms: u64,
    pub probe_timeout_ms: u64,
    pub row_interval_ms: u64,
    /// `host:port` of every gateway replica alive now (from the database): the leader moves
    /// to the next of these when the one it uses fails. Empty from a gateway that does not know.
    #[serde(default)]
    pub gateways: Vec<String>,
}

/// The state of one directed link, as the prober sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Reachable,
    Suspect,
    Unreachable,
    /// Not measured, or the reporter has been silent past the staleness bound.
    Unknown,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Reachable => "reachable",
            LinkState::Suspect => "suspect",
            LinkState::Unreachable => "unreachable",
            LinkState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One measured link in a reported row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowCell {
    pub to: String,
    pub state: LinkState,
    /// Smoothed round-trip time of successful probes, when there were any.
    pub rtt_ms: Option<f64>,
    /// Fraction of failed probes over the recent window, 0 to 1.
    pub loss: f64,
}

/// `PUT /v1/clusters/{name}/row`: a leader's whole row of the matrix (sent at once on any change
/// and periodically). Fenced by `term`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowReport {
    pub term: Term,
    pub cells: Vec<RowCell>,
}

/// How an output made in `from` would reach a job in `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferMode {
    Direct,
    Relay,
}

/// One cell of the matrix (`GET /v1/matrix`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatrixCell {
    pub from: ClusterName,
    pub to: ClusterName,
    pub state: LinkState,
    pub rtt_ms: Option<f64>,
    pub loss: Option<f64>,
    /// Age of the reporter's row, milliseconds; `None` when it never reported.
    pub age_ms: Option<u64>,
    pub mode: TransferMode,
}

/// `GET /v1/matrix` and `atoll matrix --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    pub clusters: Vec<ClusterName>,
    pub cells: Vec<MatrixCell>,
}

/// A cluster's health as the gateway observes it from heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    Alive,
    Suspect,
    Dead,
}

impl std::fmt::Display for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClusterState::Alive => "alive",
            ClusterState::Suspect => "suspect",
            ClusterState::Dead => "dead",
        })
    }
}

/// `GET /v1/clusters` and `atoll clusters --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: ClusterName,
    pub labels: Vec<String>,
    /// Admin intent: a disabled cluster receives no new work.
    pub enabled: bool,
    /// Observed from heartbeat age; `dead` also when it never registered.
    pub state: ClusterState,
    pub leader: Option<u64>,
    pub term: Term,
    pub endpoint: Option<String>,
    /// Milliseconds since the last heartbeat; `None` when it never registered.
    pub last_seen_ms: Option<u64>,
    pub revoked: bool,
    pub replicas: Vec<ReplicaInfo>,
    /// What its executor runs, as its leader last said; `None` until it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<crate::spec::Capabilities>,
}

/// `GET /v1/gateways` and `atoll gateways --json`: one gateway replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayReplica {
    /// The replica's id (its certificate names `spiffe://atoll/gateway/<id>`).
    pub id: String,
    /// `host:port` agents and users reach it at.
    pub addr: String,
    /// Whether it holds the duties lease (runs the scheduling pass, rerouting, retention).
    pub holds_lease: bool,
    /// The lease generation it holds (when `holds_lease`), else the one it last held (0: never).
    pub generation: u64,
    /// Milliseconds since it last wrote its presence to the database.
    pub last_seen_ms: u64,
}

/// What a user token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Submit,
    Admin,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "submit" => Ok(Scope::Submit),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("unknown scope {other:?} (expected read, submit or admin)")),
        }
    }
}

/// `POST /v1/tokens/join` (admin).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    pub cluster: String,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Lifetime in seconds (default: the gateway's `join_token_ttl`).
    #[serde(default)]
    pub ttl_s: Option<u64>,
    /// How many replicas of the cluster the token enrolls, each once (default 1; at most 64): one
    /// token for every pod of a StatefulSet, from one Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

/// `POST /v1/tokens/user` (admin).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserTokenRequest {
    pub name: String,
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// A freshly made token: shown once, stored only hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    pub expires_at_ms: Option<i64>,
}

/// A secret as `GET /v1/secrets` lists it: never its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    pub updated_ms: i64,
    /// Who set it (`user NAME`, `operator NAME`).
    pub updated_by: String,
}

/// `PUT /v1/secrets/{name}` (admin).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    pub value: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(..)")
    }
}
