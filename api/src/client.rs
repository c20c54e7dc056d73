//! The HTTP client of a replica's API, over mTLS; used by the CLI and by replicas themselves.
//!
//! Writes sent to a follower are forwarded by it to the leader; when a replica answers
//! `not_leader` with the leader's address, the client retries there (a bounded number of hops).

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::error::ErrorCode;
use crate::node::AddLearner;
use crate::node::AnnotationAck;
use crate::node::AnnotationDetail;
use crate::node::AnnotationWrite;
use crate::node::Annotations;
use crate::node::MemberInfo;
use crate::node::MembershipAck;
use crate::node::NodeStatus;
use crate::node::TransferLeader;
use crate::tls::ServerPolicy;
use crate::tls::TlsError;
use crate::tls::TlsIdentity;

/// How many times a request follows a `not_leader` answer to the named leader.
const MAX_LEADER_HOPS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not get an answer: connection refused, reset, TLS refused, timed out.
    #[error("{addr}: {message}")]
    /// `not_sent`: it failed while connecting, so the request surely had no effect.
    Transport { addr: String, message: String, timed_out: bool, not_sent: bool },
    /// The replica answered with an error.
    #[error("{addr}: {} ({:?})", .error.message, .error.code)]
    Api { addr: String, error: ApiError },
    /// The replica answered something this client does not understand; `status` is the HTTP
    /// status of an error answer without the envelope (a proxy's 502, say).
    #[error("{addr}: unexpected response: {detail}")]
    Decode { addr: String, detail: String, status: Option<u16> },
}

impl ClientError {
    /// The API error code, when the replica answered.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }

    /// Whether the request surely had no effect: refused before it was applied (not the leader,
    /// bad input, credentials) or never sent (the connection failed).
    pub fn surely_failed(&self) -> bool {
        matches!(self, ClientError::Transport { not_sent: true, .. })
            || matches!(
                self.code(),
                Some(ErrorCode::NotLeader | ErrorCode::BadRequest | ErrorCode::Unauthenticated | ErrorCode::Forbidden)
            )
    }

    /// Whether the outcome is unknown (the request may or may not have taken effect).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Transport { timed_out: true, .. }) || self.code() == Some(ErrorCode::Timeout)
    }
}

/// Format an error with all its sources: reqwest's own message alone says little.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = inner.source();
    }
    out
}

/// Send one JSON request to `https://{addr}{path}` and decode the answer or the error envelope.
pub(crate) async fn send_json<B: Serialize, T: DeserializeOwned>(
    http: &reqwest::Client,
    method: Method,
    addr: &str,
    path: &str,
    body: Option<&B>,
    bearer: Option<&str>,
) -> Result<T, ClientError> {
    let url = format!("https://{addr}{path}");
    let mut request = http.request(method, &url);
    if let Some(body) = body {
        request = request.json(body);
    }
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let transport = |e: reqwest::Error| ClientError::Transport {
        addr: addr.to_string(),
        message: error_chain(&e),
        timed_out: e.is_timeout(),
        not_sent: e.is_connect(),
    };
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(transport)?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            addr: addr.to_string(),
            detail: e.to_string(),
            status: None,
        });
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => Err(ClientError::Api { addr: addr.to_string(), error: body.error.into() }),
        Err(_) => Err(ClientError::Decode {
            addr: addr.to_string(),
            detail: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes).chars().take(200).collect::<String>()),
            status: Some(status.as_u16()),
        }),
    }
}

/// A client of replicas' APIs.
#[derive(Clone, Debug)]
pub struct NodeClient {
    http: reqwest::Client,
}

impl NodeClient {
    /// A client presenting `tls`'s certificate, accepting servers per `policy`, giving each
    /// request `timeout`.
    pub fn new(tls: &TlsIdentity, policy: ServerPolicy, timeout: Duration) -> Result<Self, TlsError> {
        let config = tls.client_config(policy)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(error_chain(&e))))?;
        Ok(Self { http })
    }

    /// The underlying HTTP client (shares connections with this one).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        send_json(&self.http, method, addr, path, body, None).await
    }

    /// Call, following `not_leader` answers to the leader they name.
    async fn call_leader<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut target = addr.to_string();
        let mut hops = 0;
        loop {
            match self.call(method.clone(), &target, path, body).await {
                Err(ClientError::Api { error, addr })
                    if error.code == ErrorCode::NotLeader && hops < MAX_LEADER_HOPS =>
                {
                    match error.leader {
                        Some(leader) if leader.addr != target => {
                            tracing::debug!(from = %addr, to = %leader.addr, "following the leader");
                            target = leader.addr;
                            hops += 1;
                        }
                        _ => return Err(ClientError::Api { error, addr }),
                    }
                }
                other => return other,
            }
        }
    }

    pub async fn status(&self, addr: &str) -> Result<NodeStatus, ClientError> {
        self.call::<(), _>(Method::GET, addr, "/v1/status", None).await
    }

    /// `{KEY: VALUE}` as the replica at `addr` has applied them.
    pub async fn annotations(&self, addr: &str) -> Result<Annotations, ClientError> {
        self.call::<(), _>(Method::GET, addr, "/v1/annotations", None).await
    }

    /// Annotations with version and revision.
    pub async fn annotations_detail(
        &self,
        addr: &str,
    ) -> Result<std::collections::BTreeMap<String, AnnotationDetail>, ClientError> {
        self.call::<(), _>(Method::GET, addr, "/v1/annotations?detail=true", None).await
    }

    /// Set an annotation through the replica at `addr` (forwarded to the leader).
    pub async fn annotate(&self, addr: &str, key: &str, value: &str) -> Result<AnnotationAck, ClientError> {
        let body = AnnotationWrite { value: value.to_string() };
        self.call_leader(Method::PUT, addr, &format!("/v1/annotations/{key}"), Some(&body)).await
    }

    /// Remove an annotation; returns whether it existed.
    pub async fn delete_annotation(&self, addr: &str, key: &str) -> Result<bool, ClientError> {
        #[derive(serde::Deserialize)]
        struct Deleted {
            existed: bool,
        }
        let deleted: Deleted =
            self.call_leader::<(), _>(Method::DELETE, addr, &format!("/v1/annotations/{key}"), None).await?;
        Ok(deleted.existed)
    }

    /// Set an annotation with exactly one request to `addr` (it forwards to its leader), without
    /// following `not_leader` answers: what a latency probe needs.
    pub async fn annotate_once(&self, addr: &str, key: &str, value: &str) -> Result<AnnotationAck, ClientError> {
        let body = AnnotationWrite { value: value.to_string() };
        self.call(Method::PUT, addr, &format!("/v1/annotations/{key}"), Some(&body)).await
    }

    pub async fn members(&self, addr: &str) -> Result<Vec<MemberInfo>, ClientError> {
        self.call::<(), _>(Method::GET, addr, "/v1/raft/members", None).await
    }

    /// Add a replica as a learner; returns once it has caught up.
    pub async fn add_learner(&self, addr: &str, id: u64, node_addr: &str) -> Result<MembershipAck, ClientError> {
        let body = AddLearner { id, addr: node_addr.to_string() };
        self.call_leader(Method::POST, addr, "/v1/raft/learners", Some(&body)).await
    }

    /// Make a learner a voter.
    pub async fn promote(&self, addr: &str, id: u64) -> Result<MembershipAck, ClientError> {
        self.call_leader::<(), _>(Method::POST, addr, &format!("/v1/raft/voters/{id}"), None).await
    }

    /// Remove a replica from the group.
    pub async fn remove(&self, addr: &str, id: u64) -> Result<MembershipAck, ClientError> {
        self.call_leader::<(), _>(Method::DELETE, addr, &format!("/v1/raft/members/{id}"), None).await
    }

    /// Ask the leader to hand leadership to `to` (or the most up-to-date voter).
    pub async fn transfer_leader(&self, addr: &str, to: Option<u64>) -> Result<NodeStatus, ClientError> {
        self.call_leader(Method::POST, addr, "/v1/raft/transfer-leader", Some(&TransferLeader { to })).await
    }
}
