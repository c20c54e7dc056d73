//! Sending Raft RPCs to the other replicas of the cluster: HTTP/2 over mTLS, JSON bodies, every
//! RPC with a deadline.
//!
//! One HTTP client per peer, which accepts only that peer's identity
//! (`spiffe://atoll/cluster/<name>/node/<id>`): a replica reached at a recycled address is
//! refused. Heartbeats keep openraft's deadline (three quarters of the heartbeat interval);
//! replication carrying entries gets `append_timeout`, sized for a follower's disk sync under
//! load, so a slow fsync does not turn into a storm of retries.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use atoll_api::Identity;
use atoll_api::client::error_chain;
use atoll_api::ids::ClusterName;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsIdentity;
use atoll_raft_store::Member;
use atoll_raft_store::SnapshotFile;
use atoll_raft_store::TypeConfig;
use openraft::OptionalSend;
use openraft::RPCTypes;
use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::errors::RaftError;
use openraft::errors::ReplicationClosed;
use openraft::errors::StreamingError;
use openraft::errors::Unreachable;
use openraft::network::Backoff;
use openraft::network::RPCOption;
use openraft::network::RaftNetworkFactory;
use openraft::network::v2::RaftNetworkV2;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::raft::rpc::PROTOCOL_HEADER;
use crate::raft::rpc::PROTOCOL_VERSION;
use crate::raft::rpc::SNAPSHOT_META_HEADER;
use crate::raft::rpc::SNAPSHOT_VOTE_HEADER;

type Vote = atoll_raft_store::types::Vote;
type Snapshot = atoll_raft_store::types::Snapshot;

/// Makes the per-peer clients openraft asks for.
pub struct NetworkFactory {
    shared: Arc<Shared>,
}

struct Shared {
    me: u64,
    cluster: ClusterName,
    tls: TlsIdentity,
    append_timeout: Duration,
    metrics: Arc<Metrics>,
    /// One HTTP client (one HTTP/2 connection) per peer id and address.
    clients: Mutex<HashMap<(u64, String), reqwest::Client>>,
}

impl NetworkFactory {
    pub fn new(
        me: u64,
        cluster: ClusterName,
        tls: TlsIdentity,
        append_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared { me, cluster, tls, append_timeout, metrics, clients: Mutex::new(HashMap::new()) }),
        }
    }

    fn client(&self, target: u64, node: &Member, kind: ClientKind) -> PeerClient {
        let key = (target, node.addr.clone());
        let mut clients = self.shared.clients.lock().expect("peer clients");
        let http = match clients.get(&key) {
            Some(http) => Ok(http.clone()),
            None => build_http(&self.shared, target).inspect(|http| {
                clients.insert(key, http.clone());
            }),
        };
        PeerClient { shared: self.shared.clone(), target, addr: node.addr.clone(), http, kind }
    }
}

/// An HTTP client that accepts only `target`'s identity. Building it cannot fail once the TLS
/// material loaded at start; if it ever does, that peer is unreachable (loudly), never reached
/// without mTLS.
fn build_http(shared: &Shared, target: u64) -> Result<reqwest::Client, String> {
    let expected = Identity::node(shared.cluster.clone(), target);
    let config = shared.tls.client_config(ServerPolicy::Exactly(expected)).map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(300))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| error_chain(&e))
        .inspect_err(|e| tracing::error!(node = target, error = %e, "building the peer client failed"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientKind {
    Replication,
    Heartbeat,
    Snapshot,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerClient {
        self.client(target, node, ClientKind::Replication)
    }

    async fn new_heartbeat_client(&mut self, target: u64, node: &Member) -> PeerClient {
        self.client(target, node, ClientKind::Heartbeat)
    }

    async fn new_snapshot_client(&mut self, target: u64, node: &Member) -> PeerClient {
        self.client(target, node, ClientKind::Snapshot)
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    shared: Arc<Shared>,
    target: u64,
    addr: String,
    /// The client, or why there is none.
    http: Result<reqwest::Client, String>,
    kind: ClientKind,
}

/// Why an RPC failed, before it is turned into openraft's error types.
enum Failure {
    Unreachable(String),
    Timeout(Duration),
    Network(String),
}

impl PeerClient {
    fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }

    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        rpc: &'static str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, Failure> {
        let started = Instant::now();
        let result = self.post_inner(path, body, timeout).await;
        let metrics = &self.shared.metrics;
        metrics.observe_rpc(rpc, started.elapsed());
        if let Err(failure) = &result {
            metrics.rpc_error(
                rpc,
                match failure {
                    Failure::Unreachable(_) => "unreachable",
                    Failure::Timeout(_) => "timeout",
                    Failure::Network(_) => "network",
                },
            );
        }
        result
    }

    async fn post_inner<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, Failure> {
        let body = serde_json::to_vec(body).map_err(|e| Failure::Network(format!("encoding the request: {e}")))?;
        let request = self
            .http()?
            .post(self.url(path))
            .header(PROTOCOL_HEADER, PROTOCOL_VERSION)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body);
        let response = request.send().await.map_err(|e| self.classify(e, timeout))?;
        self.decode(response, timeout).await
    }

    fn http(&self) -> Result<&reqwest::Client, Failure> {
        self.http.as_ref().map_err(|e| Failure::Unreachable(format!("node {}: no TLS client: {e}", self.target)))
    }

    fn classify(&self, e: reqwest::Error, timeout: Duration) -> Failure {
        if e.is_timeout() {
            Failure::Timeout(timeout)
        } else if e.is_connect() {
            Failure::Unreachable(format!("node {} at {}: {}", self.target, self.addr, error_chain(&e)))
        } else {
            Failure::Network(format!("node {} at {}: {}", self.target, self.addr, error_chain(&e)))
        }
    }

    async fn decode<Resp: DeserializeOwned>(
        &self,
        response: reqwest::Response,
        timeout: Duration,
    ) -> Result<Resp, Failure> {
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.classify(e, timeout))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(Failure::Network(format!("node {} at {} answered {status}: {text}", self.target, self.addr)));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Network(format!("node {} at {}: unreadable answer: {e}", self.target, self.addr)))
    }

    fn rpc_error(&self, failure: Failure, action: RPCTypes) -> RPCError<TypeConfig> {
        match failure {
            Failure::Unreachable(message) => RPCError::Unreachable(Unreachable::from_string(message)),
            Failure::Timeout(timeout) => RPCError::Timeout(openraft::errors::Timeout {
                action,
                id: self.shared.me,
                target: self.target,
                timeout,
            }),
            Failure::Network(message) => RPCError::Network(NetworkError::from_string(message)),
        }
    }

    /// Unwrap the remote's `Result<T, RaftError>`: a remote fatal error means that replica is
    /// stopping, which is as good as unreachable.
    fn remote<T>(&self, result: Result<T, RaftError<TypeConfig>>) -> Result<T, RPCError<TypeConfig>> {
        result.map_err(|e| {
            RPCError::Unreachable(Unreachable::from_string(format!("node {} at {}: {e}", self.target, self.addr)))
        })
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let heartbeat = request.entries.is_empty() && self.kind == ClientKind::Heartbeat;
        let (rpc, timeout) = if heartbeat {
            ("heartbeat", option.soft_ttl())
        } else {
            ("append", option.soft_ttl().max(self.shared.append_timeout))
        };
        let result: Result<Result<_, RaftError<TypeConfig>>, _> =
            self.post(rpc, "/raft/v1/append", &request, timeout).await;
        self.remote(result.map_err(|f| self.rpc_error(f, RPCTypes::AppendEntries))?)
    }

    async fn vote(
        &mut self,
        request: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let result: Result<Result<_, RaftError<TypeConfig>>, _> =
            self.post("vote", "/raft/v1/vote", &request, option.soft_ttl()).await;
        self.remote(result.map_err(|f| self.rpc_error(f, RPCTypes::Vote))?)
    }

    async fn pre_vote(
        &mut self,
        request: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let result: Result<Result<_, RaftError<TypeConfig>>, _> =
            self.post("pre_vote", "/raft/v1/pre-vote", &request, option.soft_ttl()).await;
        self.remote(result.map_err(|f| self.rpc_error(f, RPCTypes::Vote))?)
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let result: Result<Result<_, openraft::errors::Fatal<TypeConfig>>, _> =
            self.post("transfer_leader", "/raft/v1/transfer-leader", &request, option.soft_ttl()).await;
        let inner = result.map_err(|f| self.rpc_error(f, RPCTypes::TransferLeader))?;
        inner.map_err(|e| RPCError::Unreachable(Unreachable::from_string(format!("node {}: {e}", self.target))))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let timeout = option.soft_ttl();
        let started = Instant::now();
        let send = self.send_snapshot(vote, snapshot, timeout);
        let result = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            result = send => result,
        };
        self.shared.metrics.observe_rpc("snapshot", started.elapsed());
        result.map_err(|failure| {
            self.shared.metrics.rpc_error("snapshot", "network");
            match self.rpc_error(failure, RPCTypes::InstallSnapshot) {
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Network(n) => StreamingError::Network(n),
                RPCError::RemoteError(r) => StreamingError::Network(NetworkError::from_string(r.to_string())),
            }
        })
    }

    fn backoff(&self) -> Option<Backoff> {
        None
    }
}

impl PeerClient {
    /// Stream the snapshot file as the request body; the vote and meta travel in headers.
    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
        timeout: Duration,
    ) -> Result<SnapshotResponse<TypeConfig>, Failure> {
        let vote_json = serde_json::to_string(&vote).map_err(|e| Failure::Network(e.to_string()))?;
        let meta_json = serde_json::to_string(&snapshot.meta).map_err(|e| Failure::Network(e.to_string()))?;
        let size = snapshot.snapshot.len().unwrap_or(0);
        let file = tokio::fs::File::from_std(snapshot.snapshot.into_file());
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
        tracing::info!(target_node = self.target, size, last = ?snapshot.meta.last_log_id, "sending snapshot");
        let response = self
            .http()?
            .post(self.url("/raft/v1/snapshot"))
            .header(PROTOCOL_HEADER, PROTOCOL_VERSION)
            .header(SNAPSHOT_VOTE_HEADER, vote_json)
            .header(SNAPSHOT_META_HEADER, meta_json)
            .header(reqwest::header::CONTENT_LENGTH, size)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| self.classify(e, timeout))?;
        let result: Result<SnapshotResponse<TypeConfig>, openraft::errors::Fatal<TypeConfig>> =
            self.decode(response, timeout).await?;
        result.map_err(|e| Failure::Unreachable(format!("node {}: {e}", self.target)))
    }
}
