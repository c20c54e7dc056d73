//! Outputs between clusters, on a replica: serving this cluster's store to tickets, receiving a
//! child's inputs, and sending this cluster's outputs when the gateway asks.
//!
//! - **Serve** (`/v1/blobs/...` on the mTLS listener, [`NodeGuard`]): another cluster's replica
//!   reads a blob with a `pull` ticket naming this cluster as the source and its own as the
//!   destination, or writes one with a `push` ticket naming this cluster as the destination.
//! - **Receive** ([`Transfers::receive`], before a child's command starts): ask the gateway how
//!   each input from another cluster travels, then pull it from the parent's cluster, wait for
//!   the parent's cluster to push it, or fetch it from the relay once the parent's cluster
//!   uploaded it. Whatever the route, the blob lands in this cluster's store (verified), so it
//!   is fetched once for every child here. A direct route that fails (the peer unreachable, a
//!   push that does not come) is reported to the gateway, which moves the edge to the relay, and
//!   counts as a failed probe of that peer in this cluster's matrix row; the fetch goes on from
//!   the chunk it had reached.
//! - **Send** ([`Transfers::send`], from a lease answer): push an output to a child's cluster,
//!   or upload it to the relay. Best effort: the parent has finished whatever happens; the
//!   child's cluster asks again when nothing arrives.
//!
//! The relay and sources are reached at the gateway replica the API calls use; a blob route that
//! keeps failing there moves the calls and the blob routes alike to the next replica.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use atoll_api::ApiError;
use atoll_api::ErrorCode;
use atoll_api::Identity;
use atoll_api::client::ClientError;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::ids::ClusterName;
use atoll_api::ids::JobId;
use atoll_api::jobs::AssignedInput;
use atoll_api::jobs::ReleaseAnswer;
use atoll_api::jobs::ReleaseRequest;
use atoll_api::jobs::Route;
use atoll_api::jobs::SendTask;
use atoll_api::jobs::TransferRequest;
use atoll_api::ticket::Ticket;
use atoll_api::ticket::TicketError;
use atoll_api::ticket::TicketOp;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsIdentity;
use atoll_store::Blobs;
use atoll_store::Digest;
use atoll_store::InvalidDigest;
use atoll_store::StoreError;
use atoll_store::transfer::Access;
use atoll_store::transfer::BlobService;
use atoll_store::transfer::Fetch;
use atoll_store::transfer::Guard;
use atoll_store::transfer::Pace;
use atoll_store::transfer::Remote;
use atoll_store::transfer::TransferError as MoveError;
use futures::future::BoxFuture;
use tokio::time::Instant;

/// Longest a child waits for one input from another cluster without any progress before its
/// attempt ends in error.
pub const RECEIVE_LIMIT: Duration = Duration::from_secs(600);
/// A push that makes no progress for this long counts as failed: the edge goes to the relay.
pub const PUSH_STALL: Duration = Duration::from_secs(15);
/// How often a child waiting for a push or the relay asks again (which also re-queues the send
/// if the parent's cluster lost it).
const ASK_AGAIN: Duration = Duration::from_millis(500);
/// Sends running at once on one replica.
const SENDS_AT_ONCE: usize = 4;
/// Per request (one chunk at most).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a transfer failed. Each message is what the attempt's end, or the log, says.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A digest that does not parse.
    #[error("{0}")]
    Digest(#[from] InvalidDigest),
    /// This replica's store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Moving a blob between stores failed.
    #[error("{0}")]
    Move(Box<MoveError>),
    /// A peer cluster's name that is no cluster name.
    #[error("cluster {name:?}: {reason}")]
    ClusterName { name: String, reason: String },
    /// The TLS or HTTP client for a peer could not be built.
    #[error("{0}")]
    Client(String),
    /// The gateway refused to say how an input travels.
    #[error("the gateway: {0}")]
    Gateway(Box<ClientError>),
    /// The gateway could not say which blobs nobody needs.
    #[error("asking the gateway which blobs nobody needs: {0}")]
    Released(Box<ClientError>),
    /// An attempt's source could not be brought in.
    #[error("delivering source {digest}: {error}")]
    Source { digest: String, error: Box<TransferError> },
    /// An input from another cluster could not be brought in.
    #[error("delivering the output of {from_job} ({digest}) from {cluster}: {error}")]
    Input { from_job: String, digest: String, cluster: String, error: Box<TransferError> },
    /// An input made no progress for [`RECEIVE_LIMIT`].
    #[error("the output of {from_job} did not arrive from {cluster} ({seconds} s without progress)")]
    Stalled { from_job: String, cluster: String, seconds: u64 },
    /// The gateway said the input is here, and it is not.
    #[error("{digest} is not in {store}")]
    NotHere { digest: Digest, store: String },
    /// The gateway's store did not give a source.
    #[error("fetching source {digest} from the gateway: {error}")]
    SourceFromGateway { digest: Digest, error: Box<MoveError> },
    /// Too few of the cluster's replicas took a copy of an output.
    #[error(
        "only {copied} of the {others} other replicas took a copy ({failed} failed); a majority of the cluster must hold it"
    )]
    TooFewCopies { copied: usize, others: usize, failed: usize },
    /// No replica of the cluster holds a blob.
    #[error("{digest} is in no replica's store of this cluster ({errors})")]
    NowhereInCluster { digest: Digest, errors: String },
    /// A push task named no endpoint.
    #[error("a push without an endpoint")]
    NoEndpoint,
    /// A send task on a route that sends nothing.
    #[error("nothing to send for a {0} edge")]
    NothingToSend(&'static str),
    /// The replica is shutting down.
    #[error("{0}")]
    Closed(#[from] tokio::sync::AcquireError),
}

impl From<MoveError> for TransferError {
    fn from(e: MoveError) -> Self {
        TransferError::Move(Box::new(e))
    }
}

/// What an attempt needs brought into the cluster's store before it starts: its source (from
/// the gateway) and its inputs (those from other clusters travel by their route).
#[derive(Clone, Copy, Debug)]
pub struct Needs<'a> {
    pub job: &'a str,
    pub attempt: u32,
    pub source: Option<&'a str>,
    pub inputs: &'a [AssignedInput],
}

fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos().div_euclid(1_000_000) as i64
}

/// Who may read or write this replica's store: the cluster's own replicas (copies between
/// them), and other clusters' replicas with a ticket for that blob naming this cluster as its
/// server.
#[derive(Debug)]
pub struct NodeGuard {
    cluster: ClusterName,
    ca_der: Vec<Vec<u8>>,
}

impl NodeGuard {
    pub fn new(cluster: ClusterName, tls: &TlsIdentity) -> Self {
        Self { cluster, ca_der: tls.trust().ca_der().to_vec() }
    }
}

impl Guard for NodeGuard {
    fn check<'a>(&'a self, access: Access<'a>) -> BoxFuture<'a, Result<(), ApiError>> {
        let decided = self.decide(&access);
        Box::pin(async move { decided })
    }
}

impl NodeGuard {
    fn decide(&self, access: &Access<'_>) -> Result<(), ApiError> {
        // The cluster's own replicas copy outputs among themselves (see `Transfers::replicate`).
        if matches!(access.caller, Some(Identity::Node { cluster, .. }) if *cluster == self.cluster) {
            return Ok(());
        }
        let ticket = access.ticket.ok_or_else(|| ApiError::forbidden(TicketError::Missing.to_string()))?;
        let op = if access.write { TicketOp::Push } else { TicketOp::Pull };
        Ticket::verify(ticket, &self.ca_der, now_ms())
            .and_then(|t| t.authorizes(op, &access.digest.to_string(), access.caller, Some(self.cluster.as_str())))
            .map_err(|e| ApiError::forbidden(e.to_string()))
    }
}

/// Peers whose direct transfers failed since the duties last looked: each counts as a failed
/// probe in this cluster's matrix row.
#[derive(Debug, Default)]
pub struct FailedPeers(Mutex<Vec<String>>);

impl FailedPeers {
    pub fn push(&self, cluster: &str) {
        self.0.lock().expect("failed peers").push(cluster.to_string());
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("failed peers"))
    }
}

/// Transfers of one replica.
pub struct Transfers {
    cluster: String,
    replica: Arc<crate::raft::Replica>,
    /// The store is this replica's own (`local`): outputs are copied to the other replicas.
    own_store: bool,
    service: Arc<BlobService>,
    tls: TlsIdentity,
    /// Also the blob routes' address: the gateway replica in use, which moves when either fails.
    gateway: GatewayClient,
    pace: Pace,
    failed: Arc<FailedPeers>,
    clients: Mutex<BTreeMap<String, reqwest::Client>>,
    sending: Mutex<HashSet<(Route, String, String)>>,
    send_slots: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Transfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfers").field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

impl Transfers {
    /// The values of the secret variables of `job`'s attempt `attempt`, from the gateway (which
    /// gives them only for an attempt bound to this cluster).
    pub async fn job_secrets(
        &self,
        job: &str,
        attempt: u32,
    ) -> Result<std::collections::BTreeMap<String, String>, String> {
        self.gateway
            .job_secrets(&self.cluster, job, attempt)
            .await
            .map_err(|e| format!("asking the gateway for the job's secrets: {e}"))
    }

    pub fn new(
        replica: Arc<crate::raft::Replica>,
        own_store: bool,
        service: Arc<BlobService>,
        tls: TlsIdentity,
        gateway: GatewayClient,
        limit: Option<u64>,
        failed: Arc<FailedPeers>,
    ) -> Self {
        Self {
            cluster: replica.info().cluster.to_string(),
            replica,
            own_store,
            service,
            tls,
            gateway,
            pace: Pace::limited(limit),
            failed,
            clients: Mutex::new(BTreeMap::new()),
            sending: Mutex::new(HashSet::new()),
            send_slots: tokio::sync::Semaphore::new(SENDS_AT_ONCE),
        }
    }

    pub fn blobs(&self) -> &Blobs {
        self.service.blobs()
    }

    pub fn replica(&self) -> &Arc<crate::raft::Replica> {
        &self.replica
    }

    /// Bring what an attempt needs from outside the cluster into this replica's store: its
    /// source from the gateway, and each input from another cluster by its route.
    pub async fn bring_in(&self, needs: Needs<'_>) -> Result<(), TransferError> {
        if let Some(source) = needs.source {
            let fail = |e: TransferError| TransferError::Source { digest: source.to_string(), error: Box::new(e) };
            let digest: Digest = source.parse().map_err(|e: InvalidDigest| fail(e.into()))?;
            self.fetch_source(&digest).await.map_err(fail)?;
        }
        for input in needs.inputs.iter().filter(|i| i.mode != atoll_api::jobs::InputMode::Local) {
            self.receive(needs.job, needs.attempt, input).await.map_err(|e| TransferError::Input {
                from_job: input.from_job.clone(),
                digest: input.digest.clone(),
                cluster: input.cluster.to_string(),
                error: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// An HTTP client accepting only `cluster`'s replicas (`None`: the gateway).
    fn client(&self, cluster: Option<&str>) -> Result<reqwest::Client, TransferError> {
        let key = cluster.unwrap_or("").to_string();
        let mut clients = self.clients.lock().expect("transfer clients");
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let policy = match cluster {
            Some(name) => ServerPolicy::NodeOf(
                name.parse::<ClusterName>()
                    .map_err(|e| TransferError::ClusterName { name: name.to_string(), reason: e.to_string() })?,
            ),
            None => ServerPolicy::Gateway,
        };
        let config = self.tls.client_config(policy).map_err(|e| TransferError::Client(e.to_string()))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| TransferError::Client(atoll_api::client::error_chain(&e)))?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Which of `digests` (blobs of this replica's store) nobody needs any more, and the
    /// retention the gateway judged them by.
    pub async fn released(&self, digests: Vec<String>) -> Result<ReleaseAnswer, TransferError> {
        self.gateway
            .released(&self.cluster, &ReleaseRequest { digests })
            .await
            .map_err(|e| TransferError::Released(Box::new(e)))
    }

    /// Make sure the output of `input`'s parent (in another cluster) is in this cluster's store.
    pub async fn receive(&self, job: &str, attempt: u32, input: &AssignedInput) -> Result<(), TransferError> {
        let digest: Digest = input.digest.parse()?;
        if self.blobs().manifest(&digest).await?.is_some() {
            return Ok(());
        }
        let started = Instant::now();
        // Pushed from afar, a large output may take long: the limit counts from the last progress.
        let mut deadline = started + RECEIVE_LIMIT;
        let mut fetch = Fetch::new(digest.clone());
        let mut failed: Option<String> = None;
        let mut push_progress: Option<(usize, Instant)> = None;
        let mut relayed_from: Option<usize> = None;
        let mut route_seen: Option<Route> = None;
        let mut reached = 0;
        loop {
            if fetch.next_chunk() > reached {
                reached = fetch.next_chunk();
                deadline = Instant::now() + RECEIVE_LIMIT;
            }
            if Instant::now() >= deadline {
                return Err(TransferError::Stalled {
                    from_job: input.from_job.clone(),
                    cluster: input.cluster.to_string(),
                    seconds: RECEIVE_LIMIT.as_secs(),
                });
            }
            let request = TransferRequest {
                job: JobId::from(job),
                attempt,
                from_job: input.from_job.clone(),
                failed: failed.take(),
            };
            let plan = match self.gateway.transfer(&self.cluster, &request).await {
                Ok(plan) => plan,
                Err(e)
                    if matches!(e.code(), Some(ErrorCode::Conflict | ErrorCode::NotFound | ErrorCode::BadRequest)) =>
                {
                    return Err(TransferError::Gateway(Box::new(e)));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "asking the gateway how an input travels failed; asking again");
                    failed = request.failed;
                    tokio::time::sleep(ASK_AGAIN).await;
                    continue;
                }
            };
            if route_seen != Some(plan.route) {
                tracing::info!(job, parent = %input.from_job, from = %plan.source, route = plan.route.as_str(), size = plan.size, "receiving an input");
                route_seen = Some(plan.route);
            }
            match plan.route {
                Route::Local => {
                    return match self.blobs().manifest(&digest).await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err(TransferError::NotHere {
                            digest: digest.clone(),
                            store: self.blobs().name().to_string(),
                        }),
                        Err(e) => Err(e.into()),
                    };
                }
                Route::Pull => {
                    let remote = Remote::https(
                        self.client(Some(&plan.source))?,
                        plan.endpoint.as_deref().unwrap_or_default(),
                        plan.ticket.clone().unwrap_or_default(),
                    );
                    match fetch.run(&remote, self.blobs(), &self.pace).await {
                        Ok(_) => {
                            self.received(job, input, &fetch, relayed_from, started, Route::Pull);
                            return Ok(());
                        }
                        Err(e) if e.is_path_failure() => {
                            tracing::warn!(job, parent = %input.from_job, from = %plan.source, error = %e, chunk = fetch.next_chunk(), "pulling an input failed; falling back to the relay");
                            self.replica.metrics.transfer_fallbacks.inc();
                            self.failed.push(&plan.source);
                            failed = Some(format!("pulling from {}: {e}", plan.source));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Route::Push => {
                    if self.blobs().manifest(&digest).await?.is_some() {
                        self.received(job, input, &fetch, relayed_from, started, Route::Push);
                        return Ok(());
                    }
                    let now = self.service.upload_progress(&digest).await.unwrap_or(0);
                    match push_progress {
                        Some((seen, since)) if seen == now && since.elapsed() >= PUSH_STALL => {
                            tracing::warn!(job, parent = %input.from_job, from = %plan.source, chunks = now, "a push made no progress; falling back to the relay");
                            self.replica.metrics.transfer_fallbacks.inc();
                            self.failed.push(&plan.source);
                            failed = Some(format!(
                                "no push from {} arrived for {} s (at chunk {now})",
                                plan.source,
                                PUSH_STALL.as_secs()
                            ));
                            push_progress = None;
                            continue;
                        }
                        Some((seen, _)) if seen == now => {}
                        _ => {
                            push_progress = Some((now, Instant::now()));
                            deadline = Instant::now() + RECEIVE_LIMIT;
                        }
                    }
                    tokio::time::sleep(ASK_AGAIN).await;
                }
                Route::Relay => {
                    relayed_from.get_or_insert(fetch.next_chunk());
                    let gateway = self.gateway.addr();
                    let remote = Remote::https(self.client(None)?, &gateway, plan.ticket.clone().unwrap_or_default());
                    // While the parent's cluster still uploads, chunks are fetched as they
                    // arrive at the gateway.
                    let fetched = if plan.ready {
                        fetch.run(&remote, self.blobs(), &self.pace).await
                    } else {
                        fetch.run_while_uploading(&remote, self.blobs(), &self.pace).await
                    };
                    match fetched {
                        Ok(_) => {
                            self.received(job, input, &fetch, relayed_from, started, Route::Relay);
                            return Ok(());
                        }
                        // The upload has not begun: ask again (which also re-queues it).
                        Err(MoveError::Refused { code: Some(ErrorCode::NotFound), .. }) if !plan.ready => {
                            tokio::time::sleep(ASK_AGAIN).await;
                        }
                        Err(e) if e.is_path_failure() => {
                            tracing::warn!(job, parent = %input.from_job, error = %e, chunk = fetch.next_chunk(), "fetching an input from the relay failed; trying again");
                            gateway_failed(&self.gateway, &gateway, &e);
                            tokio::time::sleep(ASK_AGAIN).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }

    fn received(
        &self,
        job: &str,
        input: &AssignedInput,
        fetch: &Fetch,
        relayed_from: Option<usize>,
        started: Instant,
        route: Route,
    ) {
        // A pull or push that fell back ends on the relay: counted by the route that brought it.
        let route = if relayed_from.is_some() { Route::Relay } else { route };
        let labels = crate::metrics::RouteLabels { route: route.as_str() };
        let metrics = &self.replica.metrics;
        metrics.transfer_inputs.get_or_create(&labels).inc();
        metrics.transfer_received_bytes.get_or_create(&labels).inc_by(fetch.moved);
        metrics.transfer_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        tracing::info!(
            job,
            parent = %input.from_job,
            from = %input.cluster,
            elapsed_ms = started.elapsed().as_millis() as u64,
            bytes = fetch.moved,
            refetched = fetch.refetched,
            relayed_from_chunk = ?relayed_from,
            "input received"
        );
    }

    /// Make sure this replica's store holds the pushed source `digest`, fetching it from the
    /// gateway's store when it does not (then every later job here reads it locally).
    pub async fn fetch_source(&self, digest: &Digest) -> Result<(), TransferError> {
        if self.blobs().manifest(digest).await?.is_some() {
            return Ok(());
        }
        let started = Instant::now();
        let mut fetch = Fetch::new(digest.clone());
        loop {
            // The replica in use at each try: one that failed is left for the next.
            let gateway = self.gateway.addr();
            let remote = Remote::https(self.client(None)?, &gateway, String::new());
            match fetch.run(&remote, self.blobs(), &self.pace).await {
                Ok(_) => {
                    tracing::info!(source = %digest, bytes = fetch.moved, elapsed_ms = started.elapsed().as_millis() as u64, "source fetched from the gateway");
                    return Ok(());
                }
                Err(e) if e.is_path_failure() && started.elapsed() < RECEIVE_LIMIT => {
                    tracing::warn!(source = %digest, error = %e, "fetching a source from the gateway failed; trying again");
                    gateway_failed(&self.gateway, &gateway, &e);
                    tokio::time::sleep(ASK_AGAIN).await;
                }
                Err(e) => return Err(TransferError::SourceFromGateway { digest: digest.clone(), error: Box::new(e) }),
            }
        }
    }

    /// The other voters of this cluster: (id, address).
    fn other_voters(&self) -> (Vec<(u64, String)>, usize) {
        let members = self.replica.members();
        let voters = members.iter().filter(|m| m.voter).count();
        let own = self.replica.info().node_id;
        let others = members.into_iter().filter(|m| m.voter && m.id != own).map(|m| (m.id, m.addr)).collect();
        (others, voters)
    }

    /// Copy a blob this replica just stored to the cluster's other replicas, and return once a
    /// majority of the voters (this one included) hold it, so a recorded output survives the
    /// loss of this replica. The copies to the others go on in the background. Nothing to do
    /// when the store is shared (S3, GCS, Azure) or the cluster has one replica.
    pub async fn replicate(&self, digest: &Digest) -> Result<(), TransferError> {
        if !self.own_store {
            return Ok(());
        }
        let (others, voters) = self.other_voters();
        let needed = (voters / 2 + 1).saturating_sub(1);
        if needed == 0 {
            return Ok(());
        }
        let client = self.client(Some(&self.cluster))?;
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for (id, addr) in others {
            let (blobs, digest, done) = (self.blobs().clone(), digest.clone(), done_tx.clone());
            let remote = Remote::https(client.clone(), &addr, String::new());
            let pace = Pace::limited(self.pace.limit);
            tokio::spawn(async move {
                let result = atoll_store::transfer::send(&blobs, &digest, &remote, &pace).await;
                if let Err(e) = &result {
                    tracing::warn!(replica = id, blob = %digest, error = %e, "copying an output to a replica failed");
                }
                let _ = done.send(result.is_ok());
            });
        }
        drop(done_tx);
        let (mut copied, mut failed) = (0, 0);
        while let Some(ok) = done_rx.recv().await {
            if ok {
                copied += 1;
                if copied >= needed {
                    return Ok(());
                }
            } else {
                failed += 1;
            }
        }
        Err(TransferError::TooFewCopies { copied, others: copied + failed, failed })
    }

    /// Make sure this replica's store holds `digest`, copying it from another replica of the
    /// cluster when it does not (a new leader that was behind, or down, when it was stored).
    pub async fn ensure_local(&self, digest: &Digest) -> Result<(), TransferError> {
        if self.blobs().manifest(digest).await?.is_some() || !self.own_store {
            return Ok(());
        }
        let client = self.client(Some(&self.cluster))?;
        let mut fetch = Fetch::new(digest.clone());
        let mut errors = Vec::new();
        for (id, addr) in self.other_voters().0 {
            let remote = Remote::https(client.clone(), &addr, String::new());
            match fetch.run(&remote, self.blobs(), &self.pace).await {
                Ok(_) => {
                    tracing::info!(blob = %digest, from = id, bytes = fetch.moved, "copied an output from another replica");
                    return Ok(());
                }
                Err(e) => errors.push(format!("replica {id}: {e}")),
            }
        }
        Err(TransferError::NowhereInCluster { digest: digest.clone(), errors: errors.join("; ") })
    }

    /// Send one output as a lease answer asked (in the background, once per task at a time).
    pub fn send(self: &Arc<Self>, task: SendTask) {
        let key = (task.route, task.digest.clone(), task.to.to_string());
        if !self.sending.lock().expect("sending").insert(key.clone()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.send_now(&task).await;
            this.sending.lock().expect("sending").remove(&key);
            match result {
                Ok(bytes) => {
                    let labels = crate::metrics::RouteLabels { route: task.route.as_str() };
                    this.replica.metrics.transfer_sent_bytes.get_or_create(&labels).inc_by(bytes);
                    tracing::info!(route = task.route.as_str(), digest = %task.digest, to = %task.to, job = %task.job, bytes, "output sent")
                }
                Err(e) => {
                    tracing::warn!(route = task.route.as_str(), digest = %task.digest, to = %task.to, job = %task.job, error = %e, "sending an output failed; the child's cluster will ask again")
                }
            }
        });
    }

    async fn send_now(&self, task: &SendTask) -> Result<u64, TransferError> {
        let _slot = self.send_slots.acquire().await?;
        let digest: Digest = task.digest.parse()?;
        self.ensure_local(&digest).await?;
        let gateway = self.gateway.addr();
        let remote = match task.route {
            Route::Push => Remote::https(
                self.client(Some(&task.to))?,
                task.endpoint.as_deref().ok_or(TransferError::NoEndpoint)?,
                task.ticket.clone(),
            ),
            Route::Relay => Remote::https(self.client(None)?, &gateway, task.ticket.clone()),
            other => return Err(TransferError::NothingToSend(other.as_str())),
        };
        match atoll_store::transfer::send(self.blobs(), &digest, &remote, &self.pace).await {
            Ok(bytes) => Ok(bytes),
            Err(e) => {
                if task.route == Route::Push && e.is_path_failure() {
                    self.failed.push(&task.to);
                }
                // The next send (the child's cluster asks again) goes to the next replica.
                if task.route == Route::Relay {
                    gateway_failed(&self.gateway, &gateway, &e);
                }
                Err(e.into())
            }
        }
    }
}

/// A blob route of the gateway replica at `addr` could not be reached (or kept failing): the
/// calls and blob routes that would start there start at the next replica. A refusal (a ticket,
/// a blob not there yet) is an answer, and moves nothing.
fn gateway_failed(gateway: &GatewayClient, addr: &str, error: &MoveError) {
    if matches!(error, MoveError::Unreachable { .. }) {
        gateway.addrs().failed(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_errors_say_what_they_said_as_strings() {
        let digest: Digest = format!("sha256:{}", "a".repeat(64)).parse().expect("a digest");
        let not_here = TransferError::NotHere { digest: digest.clone(), store: "local".into() };
        assert_eq!(not_here.to_string(), format!("{digest} is not in local"));
        let input = TransferError::Input {
            from_job: "build".into(),
            digest: digest.to_string(),
            cluster: "gcp".into(),
            error: Box::new(not_here),
        };
        assert_eq!(
            input.to_string(),
            format!("delivering the output of build ({digest}) from gcp: {digest} is not in local")
        );
        let bad = || "nope".parse::<Digest>().expect_err("no digest");
        let source = TransferError::Source { digest: "nope".into(), error: Box::new(bad().into()) };
        assert_eq!(source.to_string(), format!("delivering source nope: {}", bad()));
        let stalled = TransferError::Stalled { from_job: "build".into(), cluster: "gcp".into(), seconds: 600 };
        assert_eq!(stalled.to_string(), "the output of build did not arrive from gcp (600 s without progress)");
        assert_eq!(
            TransferError::TooFewCopies { copied: 1, others: 3, failed: 2 }.to_string(),
            "only 1 of the 3 other replicas took a copy (2 failed); a majority of the cluster must hold it"
        );
        assert_eq!(
            TransferError::NowhereInCluster { digest: digest.clone(), errors: "replica 2: x; replica 3: y".into() }
                .to_string(),
            format!("{digest} is in no replica's store of this cluster (replica 2: x; replica 3: y)")
        );
        assert_eq!(TransferError::NoEndpoint.to_string(), "a push without an endpoint");
        assert_eq!(TransferError::NothingToSend(Route::Local.as_str()).to_string(), "nothing to send for a local edge");
        let name = TransferError::ClusterName { name: "Bad".into(), reason: "invalid".into() };
        assert_eq!(name.to_string(), "cluster \"Bad\": invalid");
    }
}
