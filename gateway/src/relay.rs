//! Moving outputs between clusters: the route of each edge, its tickets, and the relay store.
//!
//! A child's cluster asks, for each input from another cluster, how to get it
//! (`POST /v1/clusters/{name}/transfers`). The answer follows the matrix ([`Flow::route`]): the
//! child's cluster **pulls** from the parent's when it reaches it; else the parent's cluster
//! **pushes** when it reaches the child's; else the output goes through the **relay**: the
//! parent's cluster uploads it to the gateway's relay store, the child's downloads it, both only
//! dialing out. Each answer carries a ticket the CA key signs for exactly that edge and blob
//! ([`atoll_api::ticket`]); push and relay uploads are handed to the parent's cluster with its
//! next lease. A child's cluster that finds a direct route failing says so in its next ask: the
//! edge moves to the relay for good: recorded in the database (a restarted gateway reloads the
//! fallen edges at start, and another gateway on the same database learns of one before it first
//! routes that edge).
//!
//! The same store keeps **sources** (`atoll push`): uploaded by users with the submit scope,
//! registered with `POST /v1/sources`, fetched by any replica by digest.
//!
//! [`Flow::route`]: crate::route::Flow::route

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use atoll_api::ApiError;
use atoll_api::ErrorCode;
use atoll_api::gateway::Scope;
use atoll_api::ids::ClusterName;
use atoll_api::ids::JobId;
use atoll_api::jobs::Route;
use atoll_api::jobs::RouteTaken;
use atoll_api::jobs::SendTask;
use atoll_api::jobs::TransferPlan;
use atoll_api::jobs::TransferRequest;
use atoll_api::ticket::Ticket;
use atoll_api::ticket::TicketOp;
use atoll_store::Digest;
use atoll_store::transfer::Access;
use atoll_store::transfer::Guard;
use futures::future::BoxFuture;

use crate::Gateway;
use crate::auth::Caller;
use crate::jobs::job_id;
use crate::metrics::TransferRoute;
use crate::now_ms;
use crate::route::Fallen;

/// Lifetime of the tickets the gateway signs.
pub const TICKET_TTL: Duration = Duration::from_secs(600);

/// Who may read and write the gateway's store:
/// - relayed outputs: replicas presenting a relay ticket for that blob, of the cluster the
///   ticket names for their side (`relay_put` the parent's, `relay_get` the child's);
/// - sources: users with the submit scope (and operators) upload them (`atoll push`); any
///   replica of a cluster that is not revoked, and readers, may read a registered one.
#[derive(Debug)]
pub struct StoreGuard {
    ca_der: Vec<Vec<u8>>,
    db: crate::db::Db,
}

impl StoreGuard {
    pub fn new(ca_der: Vec<u8>, db: crate::db::Db) -> Self {
        Self { ca_der: vec![ca_der], db }
    }

    /// Asked of the database every time (one indexed read per chunk of 8 MiB): retention may
    /// forget a source, and a gateway replica must not go on serving it from a memory of it.
    async fn is_source(&self, digest: &str) -> Result<bool, ApiError> {
        Ok(self
            .db
            .source(digest)
            .await
            .map_err(|e| ApiError::unavailable(format!("the gateway's database is unavailable: {e}")))?
            .is_some())
    }

    async fn decide(&self, access: Access<'_>) -> Result<(), ApiError> {
        let digest = access.digest.to_string();
        if let Some(ticket) = access.ticket.filter(|t| !t.is_empty()) {
            let op = if access.write { TicketOp::RelayPut } else { TicketOp::RelayGet };
            return Ticket::verify(ticket, &self.ca_der, now_ms())
                .and_then(|t| t.authorizes(op, &digest, access.caller, None))
                .map_err(|e| ApiError::forbidden(format!("relay store: {e}")));
        }
        let caller = access.extensions.get::<Caller>().cloned().unwrap_or(Caller::Anonymous);
        if access.write {
            // Uploading a source; it becomes one when registered (`POST /v1/sources`).
            return caller.require(Scope::Submit);
        }
        match &caller {
            Caller::Node { .. } | Caller::Gateway(_) => {}
            other => other.require(Scope::Read)?,
        }
        if self.is_source(&digest).await? {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{digest} is not a pushed source; a relayed output needs its relay ticket ({})",
                atoll_api::ticket::TicketError::Missing
            )))
        }
    }
}

impl Guard for StoreGuard {
    fn check<'a>(&'a self, access: Access<'a>) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(self.decide(access))
    }
}

/// How many edges' last routes [`Gateway::note_route`] keeps in memory before starting over.
const ROUTES_GIVEN_CACHED: usize = 100_000;

/// What the gateway keeps in memory of transfers between clusters.
#[derive(Debug, Default)]
pub struct Transfers {
    /// Per parent cluster: outputs to send (push, relay upload), handed out with its next lease.
    sends: Mutex<HashMap<String, Vec<(std::time::Instant, SendTask)>>>,
    /// The edges whose direct transfer failed: relayed from then on.
    fallen: Mutex<Fallen>,
    /// (child job id, attempt, parent name) -> the route last recorded for it (a cache).
    routes_given: Mutex<HashMap<(JobId, u32, String), Route>>,
}

impl Transfers {
    /// A fresh state that knows the edges that fell back to the relay (recorded in the database).
    pub fn with_fallen(fallen: impl IntoIterator<Item = (String, String)>) -> Self {
        Self { fallen: Mutex::new(fallen.into_iter().collect()), ..Self::default() }
    }

    /// The edges that fell back to the relay, as now.
    pub fn fallen(&self) -> Fallen {
        self.fallen.lock().expect("fallen edges").clone()
    }

    /// The sends queued for `cluster`'s leader, handed over (with its lease answer).
    /// Sends queued longer than [`SEND_KEPT`] are dropped: their tickets are near their end, and
    /// the child's cluster asks again for what it still waits for.
    pub fn take_sends(&self, cluster: &str) -> Option<Vec<SendTask>> {
        let queued = self.sends.lock().expect("sends").remove(cluster)?;
        let fresh: Vec<SendTask> =
            queued.into_iter().filter(|(at, _)| at.elapsed() < SEND_KEPT).map(|(_, task)| task).collect();
        (!fresh.is_empty()).then_some(fresh)
    }

    /// Queue a send for `from`'s leader (once per edge until its lease takes it).
    fn queue(&self, from: &str, task: SendTask) {
        let mut sends = self.sends.lock().expect("sends");
        let queue = sends.entry(from.to_string()).or_default();
        let same = |t: &SendTask| t.route == task.route && t.digest == task.digest && t.to == task.to;
        if let Some(queued) = queue.iter_mut().find(|(_, t)| same(t)) {
            *queued = (std::time::Instant::now(), task);
        } else {
            queue.retain(|(at, _)| at.elapsed() < SEND_KEPT);
            queue.push((std::time::Instant::now(), task));
        }
    }
}

/// How long a queued send waits for its cluster's lease poll (on a replica its leader does not
/// use, for ever otherwise).
const SEND_KEPT: Duration = Duration::from_secs(TICKET_TTL.as_secs() / 2);

impl Gateway {
    fn ticket(
        &self,
        op: TicketOp,
        digest: &str,
        from: &ClusterName,
        to: &ClusterName,
        job: &str,
    ) -> Result<String, ApiError> {
        let ticket = Ticket {
            op,
            digest: digest.to_string(),
            from: from.clone(),
            to: to.clone(),
            job: JobId::from(job),
            expires_ms: now_ms() + TICKET_TTL.as_millis() as i64,
        };
        self.ca.authority().sign_ticket(&ticket).map_err(|e| ApiError::internal(format!("signing a ticket: {e}")))
    }

    fn endpoint(&self, cluster: &str) -> Result<String, ApiError> {
        self.registry.get(cluster).and_then(|row| row.endpoint).ok_or_else(|| {
            ApiError::unavailable(format!("cluster {cluster} has no registered endpoint yet; ask again"))
        })
    }

    /// Queue a send for the parent's cluster (once per edge until its lease takes it).
    fn queue_send(&self, from: &str, task: SendTask) {
        self.transfers.queue(from, task.clone());
        // The leader of `from` may poll another replica: that one queues it too. A leader
        // that later moves to a third replica may be handed it again; a send is idempotent
        // (content-addressed, verified), so that costs a transfer, never a wrong result.
        self.bus.publish(crate::bus::Event::Send { from: from.to_string(), task });
        self.wake_cluster(from);
    }

    /// A send another replica queued.
    pub(crate) fn heard_send(&self, from: &str, task: SendTask) {
        self.transfers.queue(from, task);
        self.wake_cluster_here(from);
    }

    /// An edge another replica moved to the relay.
    pub(crate) fn heard_fallen(&self, job: &str, from_job: &str) {
        self.transfers.fallen.lock().expect("fallen edges").insert(job, from_job);
    }

    /// Before an edge's first route from this gateway: another gateway on the same database may
    /// have moved it to the relay; if its record says so, this one relays it too.
    async fn learn_fallback(&self, job: &str, from_job: &str) -> Result<(), crate::db::DbError> {
        if self.transfers.fallen.lock().expect("fallen edges").contains(job, from_job) {
            return Ok(());
        }
        if self.db.edge_fell_back(job, from_job).await? {
            tracing::info!(job, parent = from_job, "the edge fell back to the relay through another gateway");
            self.transfers.fallen.lock().expect("fallen edges").insert(job, from_job);
        }
        Ok(())
    }

    /// Record the route given to an edge unless it is the one last given (`last`, from the
    /// cache that spares the database the repeated asks of one edge: a push or a relay upload
    /// being waited for).
    async fn note_route(
        &self,
        key: (JobId, u32, String),
        last: Option<Route>,
        taken: &RouteTaken,
    ) -> Result<(), crate::db::DbError> {
        if last == Some(taken.route) {
            return Ok(());
        }
        if self.db.record_route((&key.0, key.1, &key.2), taken).await? {
            tracing::debug!(job = %key.0, attempt = key.1, parent = %key.2, route = taken.route.as_str(), "route recorded");
        }
        let mut given = self.transfers.routes_given.lock().expect("routes given");
        if given.len() >= ROUTES_GIVEN_CACHED {
            given.clear();
        }
        given.insert(key, taken.route);
        Ok(())
    }

    /// `POST /v1/clusters/{cluster}/transfers`: how one input of a job bound to `cluster` gets
    /// there.
    pub async fn transfer(&self, cluster: &ClusterName, request: &TransferRequest) -> Result<TransferPlan, ApiError> {
        let db = |e: crate::db::DbError| ApiError::unavailable(format!("the gateway's database is unavailable: {e}"));
        let row = self
            .db
            .job(&request.job)
            .await
            .map_err(db)?
            .ok_or_else(|| ApiError::not_found(format!("no job {}", request.job)))?;
        if row.cluster.as_deref() != Some(cluster) || row.attempt != request.attempt || !row.state.is_active() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "job {} attempt {} is not running on {cluster} (it is {} attempt {} on {})",
                    request.job,
                    request.attempt,
                    row.state,
                    row.attempt,
                    row.cluster.as_deref().unwrap_or("no cluster")
                ),
            ));
        }
        let parent_id = job_id(&row.pipeline_id, &request.from_job);
        let parent = self.db.job(&parent_id).await.map_err(db)?.ok_or_else(|| {
            ApiError::bad_request(format!("job {} has no parent {:?}", request.job, request.from_job))
        })?;
        let (digest, size) = parent
            .output
            .clone()
            .ok_or_else(|| ApiError::not_found(format!("parent {} wrote no output", request.from_job)))?;
        let from = parent
            .cluster
            .clone()
            .ok_or_else(|| ApiError::not_found(format!("parent {} ran on no cluster", request.from_job)))?;
        let key = (request.job.clone(), request.attempt, request.from_job.clone());
        let last = self.transfers.routes_given.lock().expect("routes given").get(&key).copied();
        if let Some(why) = &request.failed {
            let fresh = self.transfers.fallen.lock().expect("fallen edges").insert(&request.job, &request.from_job);
            if fresh {
                self.bus.publish(crate::bus::Event::Fallen {
                    job: request.job.to_string(),
                    from_job: request.from_job.clone(),
                });
                self.metrics.transfer_fallbacks.inc();
                tracing::warn!(job = %request.job, parent = %request.from_job, from = %from, to = cluster.as_str(), reason = %why, "a direct transfer failed; the edge falls back to the relay");
            }
        } else if last.is_none() {
            self.learn_fallback(&request.job, &request.from_job).await.map_err(db)?;
        }
        let route = self.current_flow().await.map_err(db)?.edge(&request.job, &request.from_job, &from, cluster);
        let taken = RouteTaken {
            from_job: request.from_job.clone(),
            from_cluster: from.clone(),
            route,
            at_ms: now_ms(),
            reason: request.failed.clone(),
        };
        self.note_route(key, last, &taken).await.map_err(db)?;
        if last != Some(route) {
            self.metrics.transfer_routes.get_or_create(&TransferRoute { route: route.as_str() }).inc();
        }
        let mut plan = TransferPlan {
            route,
            digest: digest.clone(),
            size,
            source: from.clone(),
            endpoint: None,
            ticket: None,
            ready: false,
        };
        match route {
            Route::Local => {}
            Route::Pull => {
                plan.endpoint = Some(self.endpoint(&from)?);
                plan.ticket = Some(self.ticket(TicketOp::Pull, &digest, &from, cluster, &request.job)?);
            }
            Route::Push => {
                let task = SendTask {
                    route,
                    digest: digest.clone(),
                    to: cluster.clone(),
                    job: request.job.clone(),
                    endpoint: Some(self.endpoint(cluster)?),
                    ticket: self.ticket(TicketOp::Push, &digest, &from, cluster, &request.job)?,
                };
                self.queue_send(&from, task);
            }
            Route::Relay => {
                let parsed: Digest =
                    digest.parse().map_err(|e: atoll_store::InvalidDigest| ApiError::internal(e.to_string()))?;
                plan.ready = self
                    .relay
                    .blobs()
                    .manifest(&parsed)
                    .await
                    .map_err(|e| ApiError::unavailable(format!("the relay store: {e}")))?
                    .is_some();
                if !plan.ready {
                    let task = SendTask {
                        route,
                        digest: digest.clone(),
                        to: cluster.clone(),
                        job: request.job.clone(),
                        endpoint: None,
                        ticket: self.ticket(TicketOp::RelayPut, &digest, &from, cluster, &request.job)?,
                    };
                    self.queue_send(&from, task);
                }
                plan.ticket = Some(self.ticket(TicketOp::RelayGet, &digest, &from, cluster, &request.job)?);
            }
        }
        Ok(plan)
    }

    /// `POST /v1/sources`: register a source uploaded to the gateway's store.
    pub async fn register_source(&self, digest: &str, by: &str) -> Result<atoll_api::jobs::SourceInfo, ApiError> {
        let parsed: Digest =
            digest.parse().map_err(|e: atoll_store::InvalidDigest| ApiError::bad_request(e.to_string()))?;
        let manifest = self
            .relay
            .blobs()
            .manifest(&parsed)
            .await
            .map_err(|e| ApiError::unavailable(format!("the gateway's store: {e}")))?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "{digest} is not in the gateway's store; upload it first (PUT /v1/blobs/{digest})"
                ))
            })?;
        let info = self
            .db
            .put_source(digest, manifest.size, now_ms(), by)
            .await
            .map_err(|e| ApiError::unavailable(format!("the gateway's database is unavailable: {e}")))?;
        tracing::info!(digest, size = info.size, by, "source registered");
        Ok(info)
    }

    /// The registered source `digest`, or a clear error for a submission naming it at `path`.
    pub async fn known_source(&self, digest: &str, path: &str) -> Result<atoll_api::jobs::SourceInfo, ApiError> {
        self.db
            .source(digest)
            .await
            .map_err(|e| ApiError::unavailable(format!("the gateway's database is unavailable: {e}")))?
            .ok_or_else(|| ApiError::bad_request(format!("{path}: {digest} is not a pushed source (atoll push DIR)")))
    }
}
