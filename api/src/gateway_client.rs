//! The HTTP client of the gateway API, used by replicas (with their certificate) and by the CLI
//! (with a bearer token, or none). It knows every gateway replica: a call goes to the one in use
//! and, when that one fails (no connection, reset, timed out, a 5xx), to the next, each at most
//! once, with a short jittered pause between two; a request that must not be applied twice
//! (a submission, a token, an enrollment) moves on only when it surely was not sent.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;

use crate::client::ClientError;
use crate::client::error_chain;
use crate::client::send_json;
use crate::gateway::ClusterInfo;
use crate::gateway::EnrollRequest;
use crate::gateway::GatewayReplica;
use crate::gateway::Heartbeat;
use crate::gateway::HeartbeatAck;
use crate::gateway::IssuedCertificate;
use crate::gateway::JoinTokenRequest;
use crate::gateway::Matrix;
use crate::gateway::RenewRequest;
use crate::gateway::RowReport;
use crate::gateway::TokenCreated;
use crate::gateway::UserTokenRequest;
use crate::gateway_addrs;
use crate::gateway_addrs::AfterFailure;
use crate::gateway_addrs::GatewayAddrs;
use crate::gateway_addrs::Resend;
use crate::jobs::JobDetail;
use crate::jobs::JobInfo;
use crate::jobs::LeaseRequest;
use crate::jobs::LeaseResponse;
use crate::jobs::LogBatch;
use crate::jobs::LogPage;
use crate::jobs::ReleaseAnswer;
use crate::jobs::ReleaseRequest;
use crate::jobs::ReportBatch;
use crate::jobs::ReportResults;
use crate::jobs::SourceInfo;
use crate::jobs::SourceRequest;
use crate::jobs::SubmitRequest;
use crate::jobs::Submitted;
use crate::jobs::TransferPlan;
use crate::jobs::TransferRequest;

/// `GET /v1/ca`.
#[derive(Clone, Debug, Deserialize)]
pub struct CaInfo {
    pub ca: String,
    pub fingerprint: String,
}

/// A client of the gateway's replicas: each call goes to the replica in use and moves to the
/// next on failure ([`crate::gateway_addrs`]); clients built over one [`GatewayAddrs`] move
/// together.
#[derive(Clone, Debug)]
pub struct GatewayClient {
    http: reqwest::Client,
    addrs: GatewayAddrs,
    token: Option<String>,
}

/// Between two HTTP/2 pings on a connection with a request open, and how long a ping may go
/// unanswered: a replica whose path went silent under a long poll is left after about ten
/// seconds, not at the poll's own timeout. A replica that died is left at once (its
/// connections are reset).
const PING_INTERVAL: Duration = Duration::from_secs(5);

impl GatewayClient {
    /// A client for the gateway at `addr` (`host:port`), over `tls`, sending `token` as a bearer
    /// token when given.
    pub fn new(
        tls: rustls::ClientConfig,
        addr: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::with_addrs(tls, GatewayAddrs::new(&[addr.to_string()]), token, timeout)
    }

    /// A client for the gateway replicas of `addrs`, sharing the address in use with every
    /// other client built over it.
    pub fn with_addrs(
        tls: rustls::ClientConfig,
        addrs: GatewayAddrs,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .http2_keep_alive_interval(PING_INTERVAL)
            .http2_keep_alive_timeout(PING_INTERVAL)
            .build()
            .map_err(|e| ClientError::Transport {
                addr: addrs.candidates().join(", "),
                message: error_chain(&e),
                timed_out: false,
                not_sent: true,
            })?;
        Ok(Self { http, addrs, token })
    }

    /// The replica in use.
    pub fn addr(&self) -> String {
        self.addrs.current()
    }

    /// The replicas this client knows and the one in use (shared with the clients built over
    /// it).
    pub fn addrs(&self) -> &GatewayAddrs {
        &self.addrs
    }

    /// Take the replicas a heartbeat answer listed ([`GatewayAddrs::learn`]).
    pub fn learn(&self, listed: &[String]) {
        self.addrs.learn(listed);
    }

    /// A request any replica may get again: moves on whenever a replica fails.
    async fn call<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.call_as(Resend::Safe, method, path, body).await
    }

    /// Try the replicas in turn, from the one in use, each at most once, pausing
    /// [`gateway_addrs::backoff`] before each move; as far as `resend` allows.
    async fn call_as<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        resend: Resend,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let plan = self.addrs.plan();
        let mut earlier: Vec<ClientError> = Vec::new();
        for (n, addr) in plan.iter().enumerate() {
            if n > 0 {
                tokio::time::sleep(gateway_addrs::backoff(n as u32, rand::random::<f64>())).await;
            }
            let error = match send_json(&self.http, method.clone(), addr, path, body, self.token.as_deref()).await {
                Ok(answer) => {
                    self.addrs.answered(addr);
                    return Ok(answer);
                }
                Err(error) => error,
            };
            match gateway_addrs::after_failure(&error, resend) {
                AfterFailure::Answered => {
                    self.addrs.answered(addr);
                    return Err(gateway_addrs::with_earlier(error, &earlier));
                }
                AfterFailure::GiveUp => {
                    self.addrs.failed(addr);
                    return Err(gateway_addrs::with_earlier(error, &earlier));
                }
                AfterFailure::TryNext => {
                    self.addrs.failed(addr);
                    tracing::debug!(%error, path, "a gateway replica failed; trying the next");
                    earlier.push(error);
                }
            }
        }
        match earlier.pop() {
            Some(last) => Err(gateway_addrs::with_earlier(last, &earlier)),
            None => Err(ClientError::Transport {
                addr: String::new(),
                message: "no gateway address is configured".into(),
                timed_out: false,
                not_sent: true,
            }),
        }
    }

    /// `GET path`, read as `T` (`serde::de::IgnoredAny` checks the JSON without keeping it).
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), _>(Method::GET, path, None).await
    }

    pub async fn ca(&self) -> Result<CaInfo, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/ca", None).await
    }

    /// `POST /v1/enroll`: sent again only when not sent at all (a join token is used once).
    pub async fn enroll(&self, request: &EnrollRequest) -> Result<IssuedCertificate, ClientError> {
        self.call_as(Resend::OnlyUnsent, Method::POST, "/v1/enroll", Some(request)).await
    }

    pub async fn renew(&self, csr: &str) -> Result<IssuedCertificate, ClientError> {
        self.call(Method::POST, "/v1/renew", Some(&RenewRequest { csr: csr.to_string() })).await
    }

    pub async fn heartbeat(&self, cluster: &str, heartbeat: &Heartbeat) -> Result<HeartbeatAck, ClientError> {
        self.call(Method::PUT, &format!("/v1/clusters/{cluster}/heartbeat"), Some(heartbeat)).await
    }

    pub async fn report_row(&self, cluster: &str, row: &RowReport) -> Result<(), ClientError> {
        let _: serde_json::Value = self.call(Method::PUT, &format!("/v1/clusters/{cluster}/row"), Some(row)).await?;
        Ok(())
    }

    pub async fn clusters(&self) -> Result<Vec<ClusterInfo>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/clusters", None).await
    }

    /// `enable`, `disable` or `revoke` a cluster.
    pub async fn cluster_action(&self, cluster: &str, action: &str) -> Result<serde_json::Value, ClientError> {
        self.call::<(), _>(Method::POST, &format!("/v1/clusters/{cluster}/{action}"), None).await
    }

    /// `PUT /v1/secrets/{name}` (admin): store a secret's value.
    pub async fn set_secret(&self, name: &str, value: &str) -> Result<serde_json::Value, ClientError> {
        let body = crate::gateway::SecretValue { value: value.to_string() };
        self.call(Method::PUT, &format!("/v1/secrets/{name}"), Some(&body)).await
    }

    /// `GET /v1/secrets` (admin): every secret's name, never a value.
    pub async fn secrets(&self) -> Result<Vec<crate::gateway::SecretInfo>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/secrets", None).await
    }

    /// `DELETE /v1/secrets/{name}` (admin).
    pub async fn delete_secret(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.call::<(), _>(Method::DELETE, &format!("/v1/secrets/{name}"), None).await
    }

    /// `GET /v1/clusters/{cluster}/jobs/{job}/secrets?attempt=N` (the cluster's replicas): the
    /// secret variables of an attempt bound to the cluster, for its run's environment only.
    pub async fn job_secrets(
        &self,
        cluster: &str,
        job: &str,
        attempt: u32,
    ) -> Result<std::collections::BTreeMap<String, String>, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/clusters/{cluster}/jobs/{job}/secrets?attempt={attempt}"), None)
            .await
    }

    /// `GET /v1/gateways`: the gateway replicas, which one holds the lease.
    pub async fn gateways(&self) -> Result<Vec<GatewayReplica>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/gateways", None).await
    }

    pub async fn matrix(&self) -> Result<Matrix, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/matrix", None).await
    }

    /// `POST /v1/tokens/join`: sent again only when not sent at all (each try makes a token).
    pub async fn join_token(&self, request: &JoinTokenRequest) -> Result<TokenCreated, ClientError> {
        self.call_as(Resend::OnlyUnsent, Method::POST, "/v1/tokens/join", Some(request)).await
    }

    /// `POST /v1/tokens/user`: sent again only when not sent at all (each try makes a token).
    pub async fn user_token(&self, request: &UserTokenRequest) -> Result<TokenCreated, ClientError> {
        self.call_as(Resend::OnlyUnsent, Method::POST, "/v1/tokens/user", Some(request)).await
    }

    /// `POST /v1/pipelines`: submit a pipeline (the spec as JSON). Sent again only when not sent
    /// at all: a submission whose answer timed out may have been stored, and a second one would
    /// be a second pipeline.
    pub async fn submit(&self, request: &SubmitRequest) -> Result<Submitted, ClientError> {
        self.call_as(Resend::OnlyUnsent, Method::POST, "/v1/pipelines", Some(request)).await
    }

    /// `GET /v1/pipelines/{id}`: a pipeline's jobs in spec order.
    pub async fn pipeline(&self, id: &str) -> Result<Submitted, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/pipelines/{id}"), None).await
    }

    /// `GET /v1/jobs?limit=N`: the newest jobs.
    pub async fn jobs(&self, limit: u32) -> Result<Vec<JobInfo>, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/jobs?limit={limit}"), None).await
    }

    pub async fn job(&self, id: &str) -> Result<JobDetail, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/jobs/{id}"), None).await
    }

    pub async fn cancel(&self, id: &str) -> Result<JobInfo, ClientError> {
        self.call::<(), _>(Method::POST, &format!("/v1/jobs/{id}/cancel"), None).await
    }

    /// `GET /v1/jobs/{id}/logs`: pieces after `(attempt, seq)`, waiting up to `wait_ms` for new
    /// ones.
    pub async fn logs(&self, id: &str, after: (u32, u32), wait_ms: u64) -> Result<LogPage, ClientError> {
        let path = format!("/v1/jobs/{id}/logs?after_attempt={}&after_seq={}&wait_ms={wait_ms}", after.0, after.1);
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `POST /v1/clusters/{name}/lease`: the leader's long poll for work.
    pub async fn lease(&self, cluster: &str, request: &LeaseRequest) -> Result<LeaseResponse, ClientError> {
        self.call(Method::POST, &format!("/v1/clusters/{cluster}/lease"), Some(request)).await
    }

    /// `POST /v1/sources`: register a source whose blob was uploaded.
    pub async fn register_source(&self, digest: &str) -> Result<SourceInfo, ClientError> {
        self.call(Method::POST, "/v1/sources", Some(&SourceRequest { digest: digest.to_string() })).await
    }

    /// `POST /v1/clusters/{name}/transfers`: how one input of a job bound here travels.
    pub async fn transfer(&self, cluster: &str, request: &TransferRequest) -> Result<TransferPlan, ClientError> {
        self.call(Method::POST, &format!("/v1/clusters/{cluster}/transfers"), Some(request)).await
    }

    /// `POST /v1/clusters/{name}/blobs/released`: which of these blobs nobody needs any more.
    pub async fn released(&self, cluster: &str, request: &ReleaseRequest) -> Result<ReleaseAnswer, ClientError> {
        self.call(Method::POST, &format!("/v1/clusters/{cluster}/blobs/released"), Some(request)).await
    }

    /// `POST /v1/clusters/{name}/reports`.
    pub async fn report(&self, cluster: &str, batch: &ReportBatch) -> Result<ReportResults, ClientError> {
        self.call(Method::POST, &format!("/v1/clusters/{cluster}/reports"), Some(batch)).await
    }

    /// `POST /v1/clusters/{name}/logs`.
    pub async fn ship_logs(&self, cluster: &str, batch: &LogBatch) -> Result<(), ClientError> {
        let _: serde_json::Value =
            self.call(Method::POST, &format!("/v1/clusters/{cluster}/logs"), Some(batch)).await?;
        Ok(())
    }
}
