//! The replica as the rest of the node sees it: status, proposals (forwarded to the leader when
//! this replica follows), membership changes and leadership transfer, in API types only.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use atoll_api::ApiError;
use atoll_api::ErrorCode;
use atoll_api::client::error_chain;
use atoll_api::error::ErrorBody;
use atoll_api::ids::ClusterName;
use atoll_api::ids::Term;
use atoll_api::node::AnnotationAck;
use atoll_api::node::AnnotationDetail;
use atoll_api::node::LeaderRef;
use atoll_api::node::MemberInfo;
use atoll_api::node::MembershipAck;
use atoll_api::node::NodeStatus;
use atoll_api::node::Role;
use atoll_raft_store::Command;
use atoll_raft_store::CommandResponse;
use atoll_raft_store::Member;
use atoll_raft_store::StateMachineStore;
use atoll_raft_store::TypeConfig;
use atoll_raft_store::types::Vote;
use openraft::ChangeMembers;
use openraft::RaftMetrics;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::errors::ForwardReason;
use openraft::errors::RaftError;

use crate::metrics::Metrics;
use crate::raft::rpc::AtollRaft;
use crate::raft::rpc::PROTOCOL_HEADER;
use crate::raft::rpc::PROTOCOL_VERSION;

/// Fixed facts about this replica.
#[derive(Clone, Debug)]
pub struct ReplicaInfo {
    pub cluster: ClusterName,
    pub node_id: u64,
    pub addr: String,
    pub labels: Vec<String>,
    pub incarnation: String,
}

/// A running replica.
pub struct Replica {
    pub(crate) raft: AtollRaft,
    pub(crate) state: StateMachineStore,
    info: ReplicaInfo,
    /// Client to the other replicas of this cluster (accepts only their identities).
    pub(crate) peers: reqwest::Client,
    write_timeout: Duration,
    pub(crate) metrics: Arc<Metrics>,
    stopping: AtomicBool,
    /// Set once this replica knows it belongs in the group (its log was present, or the
    /// bootstrap decided to initialize or join). Until then it answers no Raft RPC: a wiped
    /// replica must not answer a leader with an empty log (see `raft::bootstrap`).
    in_group: AtomicBool,
    /// The last leadership transfer announced to this replica: the announcing leader's vote and
    /// the successor. A leader that hands over and then exits is not a crash (see `failover`).
    transfer_notice: std::sync::Mutex<Option<(Vote, u64)>>,
}

/// How long an added learner may take to catch up before `add` gives up waiting.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a leadership transfer may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before retrying a write the leader refused for want of a confirmed lease (a heartbeat
/// round usually confirms it).
const LEASE_RETRY: Duration = Duration::from_millis(5);

fn role(state: ServerState) -> Role {
    match state {
        ServerState::Leader => Role::Leader,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Follower | ServerState::Shutdown => Role::Follower,
    }
}

impl Replica {
    pub(crate) fn new(
        raft: AtollRaft,
        state: StateMachineStore,
        info: ReplicaInfo,
        peers: reqwest::Client,
        write_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            raft,
            state,
            info,
            peers,
            write_timeout,
            metrics,
            stopping: AtomicBool::new(false),
            in_group: AtomicBool::new(false),
            transfer_notice: std::sync::Mutex::new(None),
        }
    }

    /// Remember that the leader of `vote` announced a hand-over to `to`.
    pub(crate) fn note_transfer(&self, vote: Vote, to: u64) {
        *self.transfer_notice.lock().unwrap_or_else(|e| e.into_inner()) = Some((vote, to));
    }

    /// The successor the leader of `vote` announced, if it announced one.
    pub(crate) fn announced_successor(&self, vote: &Vote) -> Option<u64> {
        let notice = self.transfer_notice.lock().unwrap_or_else(|e| e.into_inner());
        notice.as_ref().filter(|(v, _)| v == vote).map(|(_, to)| *to)
    }

    pub fn info(&self) -> &ReplicaInfo {
        &self.info
    }

    pub(crate) fn metrics_snapshot(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Whether the Raft core still runs (false after a fatal storage error).
    pub fn is_running(&self) -> bool {
        self.raft.metrics().borrow_watched().running_state.is_ok()
    }

    /// Set when an orderly shutdown begins.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub(crate) fn mark_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether this replica may take part in Raft (answer appends, votes and snapshots).
    pub(crate) fn is_in_group(&self) -> bool {
        self.in_group.load(Ordering::SeqCst)
    }

    pub(crate) fn mark_in_group(&self) {
        self.in_group.store(true, Ordering::SeqCst);
    }

    pub fn status(&self) -> NodeStatus {
        let m = self.metrics_snapshot();
        NodeStatus {
            cluster: self.info.cluster.clone(),
            node_id: self.info.node_id,
            role: role(m.state),
            term: Term(m.current_term),
            leader: leader_ref(&m),
            last_applied: m.last_applied.map(|id| id.index),
            members: members(&m),
            last_log_index: m.last_log_index,
            committed: m.local_committed.map(|id| id.index),
            snapshot: m.snapshot.map(|id| id.index),
            purged: m.purged.map(|id| id.index),
            labels: self.info.labels.clone(),
            addr: self.info.addr.clone(),
            incarnation: self.info.incarnation.clone(),
            version: atoll_api::VERSION.to_string(),
        }
    }

    pub fn leader(&self) -> Option<LeaderRef> {
        leader_ref(&self.metrics_snapshot())
    }

    pub fn is_leader(&self) -> bool {
        self.metrics_snapshot().state == ServerState::Leader
    }

    fn not_leader(&self) -> ApiError {
        let leader = self.leader();
        let message = match &leader {
            Some(l) => format!(
                "node {} is not the leader of cluster {}; node {} at {} is",
                self.info.node_id, self.info.cluster, l.id, l.addr
            ),
            None => format!(
                "node {} is not the leader of cluster {} and knows no leader",
                self.info.node_id, self.info.cluster
            ),
        };
        let code = if leader.is_some() { ErrorCode::NotLeader } else { ErrorCode::Unavailable };
        ApiError::new(code, message).with_leader(leader)
    }

    fn require_leader(&self) -> Result<(), ApiError> {
        if self.is_leader() { Ok(()) } else { Err(self.not_leader()) }
    }

    /// Propose `command` here if this replica leads, else forward it to the leader.
    pub async fn propose(&self, command: Command) -> Result<CommandResponse, ApiError> {
        if self.is_leader() {
            return self.propose_local(command).await;
        }
        match self.leader() {
            Some(leader) => self.forward(&leader, &command).await,
            None => Err(self.not_leader()),
        }
    }

    /// Commit and apply `command` through this replica's Raft core (it must lead).
    ///
    /// A leader refuses writes while its lease is not confirmed: just elected, before a majority
    /// acknowledged its first entry, or when heartbeats to a majority ran late. That refusal is
    /// made before anything is appended, so the write is retried here until the lease holds or
    /// the write timeout passes; a client only hears of it if the leader stays cut off.
    pub async fn propose_local(&self, command: Command) -> Result<CommandResponse, ApiError> {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        let written = tokio::time::timeout_at(
            deadline,
            self.with_confirmed_lease(deadline, || self.raft.client_write(command.clone())),
        )
        .await;
        match written {
            Err(_) => Err(ApiError::new(
                ErrorCode::Timeout,
                format!("the write did not commit within {:?}; its outcome is unknown", self.write_timeout),
            )),
            Ok(Ok(response)) => {
                self.metrics.client_writes.inc();
                Ok(response.data)
            }
            Ok(Err(e)) => Err(self.write_error(e)),
        }
    }

    /// Run `op` (a write through the Raft core), again while the leader refuses it for want of a
    /// confirmed lease, until `deadline`. The refusal comes before anything is appended, so a
    /// retry never writes twice.
    async fn with_confirmed_lease<T, F, Fut>(
        &self,
        deadline: tokio::time::Instant,
        mut op: F,
    ) -> Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>>,
    {
        loop {
            match op().await {
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))
                    if f.reason == ForwardReason::LeaseExpired
                        && tokio::time::Instant::now() + LEASE_RETRY < deadline =>
                {
                    tokio::time::sleep(LEASE_RETRY).await;
                }
                other => return other,
            }
        }
    }

    fn write_error(&self, error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ApiError {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) if f.reason == ForwardReason::LeaseExpired => {
                ApiError::unavailable(format!(
                    "node {} leads cluster {} but has not heard from a majority within its lease for {:?}; \
                     nothing was written",
                    self.info.node_id, self.info.cluster, self.write_timeout
                ))
            }
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match (f.leader_id, f.leader_node) {
                // Handing over (or stepped down with a known successor): point there.
                (Some(id), Some(node)) if id != self.info.node_id => {
                    let message = format!(
                        "node {} is not the leader of cluster {}; leadership is moving to node {id} at {}",
                        self.info.node_id, self.info.cluster, node.addr
                    );
                    ApiError::new(ErrorCode::NotLeader, message).with_leader(Some(LeaderRef { id, addr: node.addr }))
                }
                _ => self.not_leader(),
            },
            RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => ApiError::new(
                ErrorCode::Timeout,
                "leadership changed before the write committed; its outcome is unknown",
            )
            .with_leader(self.leader()),
            RaftError::APIError(e @ ClientWriteError::ChangeMembershipError(_)) => {
                ApiError::new(ErrorCode::Conflict, e.to_string())
            }
            RaftError::APIError(e @ ClientWriteError::PreconditionFailed(_)) => {
                ApiError::new(ErrorCode::Conflict, e.to_string())
            }
            RaftError::Fatal(fatal) => ApiError::unavailable(format!("this replica has stopped: {fatal}")),
        }
    }

    /// Send `command` to the leader over `/raft/v1/propose`.
    async fn forward(&self, leader: &LeaderRef, command: &Command) -> Result<CommandResponse, ApiError> {
        let started = tokio::time::Instant::now();
        let response = self
            .peers
            .post(format!("https://{}/raft/v1/propose", leader.addr))
            .header(PROTOCOL_HEADER, PROTOCOL_VERSION)
            .timeout(self.write_timeout)
            .json(command)
            .send()
            .await;
        self.metrics.observe_rpc("forward", started.elapsed());
        let response = response.map_err(|e| {
            let code = if e.is_timeout() { ErrorCode::Timeout } else { ErrorCode::Unavailable };
            self.metrics.rpc_error("forward", if e.is_timeout() { "timeout" } else { "unreachable" });
            ApiError::new(
                code,
                format!("forwarding to the leader, node {} at {}, failed: {}", leader.id, leader.addr, error_chain(&e)),
            )
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiError::unavailable(format!("reading the leader's answer: {}", error_chain(&e))))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::internal(format!("unreadable answer from the leader: {e}")));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(body.error.into()),
            Err(_) => Err(ApiError::unavailable(format!("the leader answered {status}"))),
        }
    }

    pub async fn annotate(&self, key: &str, value: &str) -> Result<AnnotationAck, ApiError> {
        let command = Command::SetAnnotation { key: key.to_string(), value: value.to_string() };
        match self.propose(command).await? {
            CommandResponse::AnnotationSet { key, version, revision } => {
                let leader = self.leader().unwrap_or(LeaderRef { id: 0, addr: String::new() });
                Ok(AnnotationAck { key, version, revision, leader })
            }
            other => Err(ApiError::internal(format!("unexpected answer to an annotation write: {other:?}"))),
        }
    }

    /// The job attempts this cluster holds, as applied here.
    pub fn jobs(&self) -> std::io::Result<Vec<atoll_raft_store::jobs::JobRecord>> {
        self.state.jobs()
    }

    /// The mesh view as last replicated.
    pub fn mesh_view(&self) -> atoll_raft_store::MeshView {
        self.state.mesh_view().unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the mesh view failed");
            atoll_raft_store::MeshView::default()
        })
    }

    /// Replicate a new mesh view (leader only).
    pub async fn set_mesh_view(&self, view: atoll_raft_store::MeshView) -> Result<(), ApiError> {
        match self.propose_local(Command::SetMeshView { view }).await? {
            CommandResponse::MeshViewSet => Ok(()),
            other => Err(ApiError::internal(format!("unexpected answer to a mesh view: {other:?}"))),
        }
    }

    /// One annotation's value, as applied here.
    pub fn annotation(&self, key: &str) -> Option<String> {
        self.state.annotation(key).ok().flatten().map(|a| a.value)
    }

    /// Follow whether (and in which term) this replica leads.
    pub fn leadership(&self) -> Leadership {
        Leadership { rx: self.raft.metrics() }
    }

    pub fn annotations(&self) -> Result<BTreeMap<String, AnnotationDetail>, ApiError> {
        let stored = self.state.annotations().map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(stored
            .into_iter()
            .map(|(k, a)| (k, AnnotationDetail { value: a.value, version: a.version, revision: a.revision }))
            .collect())
    }

    pub fn members(&self) -> Vec<MemberInfo> {
        members(&self.metrics_snapshot())
    }

    fn membership_ack(&self, revision: u64) -> MembershipAck {
        MembershipAck { revision, members: self.members() }
    }

    fn membership_error(&self, e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ApiError {
        self.write_error(e)
    }

    /// Add a replica as a learner and wait until it has caught up.
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<MembershipAck, ApiError> {
        self.require_leader()?;
        if id == 0 {
            return Err(ApiError::bad_request("node id must be 1 or more"));
        }
        if self.members().iter().any(|m| m.id == id) {
            return Err(ApiError::new(ErrorCode::Conflict, format!("node {id} is already a member")));
        }
        if let Some(record) = self.state.replicas().map_err(|e| ApiError::internal(e.to_string()))?.get(&id) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "node id {id} was used before (incarnation {}, registered at revision {}); ids are never reused: give the new replica a new id",
                    record.incarnation, record.revision
                ),
            ));
        }
        if self.members().iter().any(|m| m.addr == addr) {
            return Err(ApiError::new(ErrorCode::Conflict, format!("a member already has the address {addr}")));
        }
        tracing::info!(node = id, addr, "adding a learner");
        let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
        let result = tokio::time::timeout_at(
            deadline,
            self.with_confirmed_lease(deadline, || self.raft.add_learner(id, Member::new(addr), true)),
        )
        .await;
        match result {
            Err(_) => Err(ApiError::new(
                ErrorCode::Timeout,
                format!("node {id} was added as a learner but did not catch up within {CATCH_UP_TIMEOUT:?}"),
            )),
            Ok(Ok(response)) => Ok(self.membership_ack(response.log_id.index)),
            Ok(Err(e)) => Err(self.membership_error(e)),
        }
    }

    /// Change the membership once the lease is confirmed (within the write timeout).
    async fn change_membership(
        &self,
        change: ChangeMembers<u64, Member>,
    ) -> Result<openraft::raft::ClientWriteResponse<TypeConfig>, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>
    {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        self.with_confirmed_lease(deadline, || self.raft.change_membership(change.clone(), false)).await
    }

    /// Make a learner a voter.
    pub async fn promote(&self, id: u64) -> Result<MembershipAck, ApiError> {
        self.require_leader()?;
        match self.members().iter().find(|m| m.id == id) {
            None => return Err(ApiError::not_found(format!("node {id} is not a member; add it as a learner first"))),
            Some(m) if m.voter => {
                return Err(ApiError::new(ErrorCode::Conflict, format!("node {id} is already a voter")));
            }
            Some(_) => {}
        }
        tracing::info!(node = id, "promoting a learner to voter");
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        match self.change_membership(change).await {
            Ok(response) => Ok(self.membership_ack(response.log_id.index)),
            Err(e) => Err(self.membership_error(e)),
        }
    }

    /// Remove a replica (voter or learner) from the group.
    pub async fn remove(&self, id: u64) -> Result<MembershipAck, ApiError> {
        self.require_leader()?;
        let member = self.members().into_iter().find(|m| m.id == id);
        let change = match member {
            None => return Err(ApiError::not_found(format!("node {id} is not a member"))),
            Some(m) if m.voter => ChangeMembers::RemoveVoters(BTreeSet::from([id])),
            Some(_) => ChangeMembers::RemoveNodes(BTreeSet::from([id])),
        };
        tracing::info!(node = id, "removing a member");
        match self.change_membership(change).await {
            Ok(response) => Ok(self.membership_ack(response.log_id.index)),
            Err(e) => Err(self.membership_error(e)),
        }
    }

    /// The voter that should lead after this one: the most up to date by replication progress.
    fn successor(&self, m: &RaftMetrics<TypeConfig>) -> Option<u64> {
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let replication = m.replication.as_ref()?;
        replication
            .iter()
            .filter(|(id, _)| voters.contains(id) && **id != self.info.node_id)
            .max_by(|(a_id, a), (b_id, b)| a.cmp(b).then(b_id.cmp(a_id)))
            .map(|(id, _)| *id)
    }

    /// Hand leadership to `to` (or the most up-to-date voter) and wait until it has moved.
    pub async fn transfer_leadership(&self, to: Option<u64>) -> Result<NodeStatus, ApiError> {
        self.require_leader()?;
        let m = self.metrics_snapshot();
        let target = match to {
            Some(id) if id == self.info.node_id => return Ok(self.status()),
            Some(id) => {
                if !m.membership_config.membership().voter_ids().any(|v| v == id) {
                    return Err(ApiError::bad_request(format!("node {id} is not a voter")));
                }
                id
            }
            None => self
                .successor(&m)
                .ok_or_else(|| ApiError::new(ErrorCode::Conflict, "there is no other voter to hand leadership to"))?,
        };
        if self.hand_over(target, TRANSFER_TIMEOUT).await {
            Ok(self.status())
        } else {
            Err(ApiError::new(
                ErrorCode::Timeout,
                format!("leadership did not move to node {target} within {TRANSFER_TIMEOUT:?}"),
            ))
        }
    }

    /// Ask the Raft core to transfer leadership to `target`; true once another replica leads.
    pub(crate) async fn hand_over(&self, target: u64, wait: Duration) -> bool {
        tracing::info!(to = target, "handing leadership over");
        if self.raft.trigger().transfer_leader(target).await.is_err() {
            return false;
        }
        let me = self.info.node_id;
        let moved = self
            .raft
            .wait(Some(wait))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != me) || m.state != ServerState::Leader,
                "leadership moved",
            )
            .await;
        moved.is_ok()
    }

    /// At shutdown: if leading, hand leadership to the most up-to-date voter.
    pub(crate) async fn step_down_for_shutdown(&self, wait: Duration) {
        let m = self.metrics_snapshot();
        if m.state != ServerState::Leader {
            return;
        }
        match self.successor(&m) {
            Some(target) => {
                if self.hand_over(target, wait).await {
                    tracing::info!(to = target, "leadership handed over");
                } else {
                    tracing::warn!(
                        to = target,
                        "leadership hand-over did not finish; peers will elect after the lease"
                    );
                }
            }
            None => tracing::info!("no other voter to hand leadership to"),
        }
    }
}

/// Whether, and in which term, this replica leads; wakes up on changes.
pub struct Leadership {
    rx: openraft::type_config::alias::WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>,
}

impl Leadership {
    /// `Some(term)` while this replica leads (openraft's term, typed here for the rest of the
    /// node).
    pub fn current(&self) -> Option<Term> {
        let m = self.rx.borrow_watched();
        (m.state == ServerState::Leader).then_some(Term(m.current_term))
    }

    /// Resolves when leadership (or the term) may have changed; never if the core stopped.
    pub async fn changed(&mut self) {
        let before = self.current();
        loop {
            if self.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if self.current() != before {
                return;
            }
        }
    }
}

fn leader_ref(m: &RaftMetrics<TypeConfig>) -> Option<LeaderRef> {
    let id = m.current_leader?;
    let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
    Some(LeaderRef { id, addr })
}

fn members(m: &RaftMetrics<TypeConfig>) -> Vec<MemberInfo> {
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| MemberInfo { id: *id, addr: node.addr.clone(), voter: voters.contains(id) })
        .collect()
}
