//! The duties lease: which gateway replica runs the duties that must run once.
//!
//! The scheduling pass (which also moves work off dead clusters and settles pipelines) and
//! retention's passes over the relay store run only on the replica that holds the lease in the
//! database ([`crate::db::lease`]). Each replica, every [`Ha::renew_interval`] when it holds the
//! lease and every [`Ha::retry_interval`] when it does not:
//!
//! - writes its presence (id, address, the generation it holds): the replica list agents get
//!   with each heartbeat answer and `GET /v1/gateways` show;
//! - the holder renews; the others try to take the lease once it ran out (by the database's
//!   clock). The only gateway (`ha.enabled: false`) takes it at once, at start.
//!
//! The holder acts on its lease only until [`Ha::acts_for`] after it sent its last successful
//! renewal (by its own monotonic clock, which runs on while the process is paused): that is one
//! renew interval before anyone else can take it. A holder that was paused or cut off therefore
//! stops by itself, and every duty write is also fenced on the generation in the database, for
//! the pass that was half done when it stopped ([`crate::db::lease::Duty`]).
//!
//! A replica that took the lease counts clusters' silence from no earlier than that moment
//! ([`crate::registry::Registry::judge_from`]), settles every pipeline that waits (what the
//! previous holder was told may not have reached this one), and runs a pass at once.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::Gateway;
use crate::breakage::Breakage;
use crate::config::Ha;
use crate::db::Db;
use crate::db::lease::Duty;
use crate::now_ms;

/// How long after its last write of presence a replica is still listed to agents.
pub fn listed_for(ha: &Ha) -> Duration {
    ha.lease_ttl
}

/// A replica's presence writes must have succeeded within this long for it to accept
/// heartbeats (with `ha.enabled`): a replica that cannot write to the database sends its
/// clusters to another replica instead of hearing them where nobody else can see it.
pub fn database_fresh_for(ha: &Ha) -> Duration {
    ha.renew_interval * 3
}

/// What this replica knows of the lease.
#[derive(Debug)]
pub struct Lease {
    ha: Ha,
    /// This process: a replica restarted under the same id is another incarnation.
    incarnation: String,
    breakage: Breakage,
    held: Mutex<Option<Held>>,
    /// The generation held now or last (0: never).
    last_generation: AtomicU64,
    /// When a presence write last succeeded.
    database_ok: Mutex<Option<Instant>>,
    /// The replicas listed to agents, as last read.
    listed: Mutex<Vec<String>>,
    started_ms: i64,
}

#[derive(Clone, Copy, Debug)]
struct Held {
    generation: u64,
    /// Acting on the lease stops at this instant unless renewed.
    until: Instant,
}

fn incarnation() -> String {
    use rand::Rng;
    let bytes: [u8; 8] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Lease {
    pub fn new(ha: Ha, breakage: Breakage) -> Self {
        Self {
            ha,
            incarnation: incarnation(),
            breakage,
            held: Mutex::new(None),
            last_generation: AtomicU64::new(0),
            database_ok: Mutex::new(None),
            listed: Mutex::new(Vec::new()),
            started_ms: now_ms(),
        }
    }

    /// This process's incarnation (random at start).
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// The duty to act under now, if this replica holds the lease.
    pub fn duty(&self) -> Option<Duty> {
        let held = (*self.held.lock().expect("lease"))?;
        if self.breakage.lease_unfenced() {
            // The deliberately broken gateway: acts on a lease it no longer holds, unfenced.
            return Some(Duty { generation: held.generation, fenced: false });
        }
        (Instant::now() < held.until).then_some(Duty::at(held.generation))
    }

    /// The generation held now, or last held (0: never).
    pub fn generation(&self) -> u64 {
        self.last_generation.load(Ordering::SeqCst)
    }

    /// `host:port` of every replica alive, as last read (with `ha.enabled`; else empty: an
    /// agent keeps the addresses it was configured with).
    pub fn listed(&self) -> Vec<String> {
        if self.ha.enabled { self.listed.lock().expect("listed").clone() } else { Vec::new() }
    }

    /// Whether this replica is one of several (`ha.enabled`).
    pub fn replicated(&self) -> bool {
        self.ha.enabled
    }

    /// Whether this replica's presence writes succeeded recently (see [`database_fresh_for`]).
    pub fn database_fresh(&self) -> bool {
        self.database_ok.lock().expect("database ok").is_some_and(|at| at.elapsed() < database_fresh_for(&self.ha))
    }

    /// One round: write presence, then renew or try to take the lease. True when this round
    /// took the lease (a new generation).
    async fn round(&self, db: &Db, id: &str, addr: &str) -> bool {
        let held = *self.held.lock().expect("lease");
        let sent = Instant::now();
        match db.replica_seen(id, addr, &self.incarnation, self.started_ms, self.generation()).await {
            Ok(()) => *self.database_ok.lock().expect("database ok") = Some(sent),
            Err(e) => tracing::warn!(error = %e, "writing this replica's presence failed"),
        }
        match db.replicas(u64::try_from(listed_for(&self.ha).as_millis()).unwrap_or(u64::MAX)).await {
            Ok(rows) => {
                let addrs: Vec<String> = rows.into_iter().map(|r| r.addr).collect();
                let mut listed = self.listed.lock().expect("listed");
                if *listed != addrs {
                    tracing::info!(replicas = ?addrs, "gateway replicas");
                    *listed = addrs;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the replica list failed"),
        }
        let ttl_ms = u64::try_from(self.ha.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        match held {
            Some(h) => match db.renew_lease(&self.incarnation, h.generation, ttl_ms).await {
                Ok(true) => {
                    let mut held = self.held.lock().expect("lease");
                    if let Some(held) = held.as_mut() {
                        held.until = sent + self.ha.acts_for();
                    }
                    false
                }
                Ok(false) if self.breakage.lease_unfenced() => false,
                Ok(false) => {
                    tracing::warn!(
                        generation = h.generation,
                        "the duties lease was taken by another replica; stepping down"
                    );
                    *self.held.lock().expect("lease") = None;
                    false
                }
                Err(e) => {
                    if Instant::now() >= h.until && !self.breakage.lease_unfenced() {
                        tracing::warn!(generation = h.generation, error = %e, "renewing the duties lease failed past its term; stepping down");
                        *self.held.lock().expect("lease") = None;
                    } else {
                        tracing::warn!(generation = h.generation, error = %e, "renewing the duties lease failed; retrying");
                    }
                    false
                }
            },
            None => match db.take_lease(id, &self.incarnation, ttl_ms, !self.ha.enabled).await {
                Ok(Some(generation)) => {
                    *self.held.lock().expect("lease") = Some(Held { generation, until: sent + self.ha.acts_for() });
                    self.last_generation.store(generation, Ordering::SeqCst);
                    tracing::info!(generation, replica = id, "took the duties lease: this replica schedules");
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "trying to take the duties lease failed");
                    false
                }
            },
        }
    }

    /// An orderly stop: give the lease up and remove the presence.
    async fn leave(&self, db: &Db, id: &str) {
        let held = self.held.lock().expect("lease").take();
        if let Some(h) = held {
            match db.release_lease(&self.incarnation, h.generation).await {
                Ok(()) => tracing::info!(generation = h.generation, "duties lease released"),
                Err(e) => tracing::warn!(error = %e, "releasing the duties lease failed; it runs out by itself"),
            }
        }
        if let Err(e) = db.replica_gone(id, &self.incarnation).await {
            tracing::warn!(error = %e, "removing this replica's presence failed; it ages out");
        }
    }
}

/// Hold, renew or wait for the lease until `stop`; then give it up.
pub async fn run(gateway: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let (id, addr) = (gateway.config.id.clone(), gateway.config.advertise.clone());
    loop {
        let took = gateway.lease.round(&gateway.db, &id, &addr).await;
        if took {
            gateway.registry.judge_from(now_ms());
            if let Err(e) = gateway.resume_scheduling().await {
                tracing::warn!(error = %e, "reading pipelines to settle failed; the next pass retries");
            }
            gateway.kick_scheduler();
        }
        let every = if gateway.lease.duty().is_some() {
            gateway.lease.ha.renew_interval
        } else {
            gateway.lease.ha.retry_interval
        };
        tokio::select! {
            _ = stop.changed() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    gateway.lease.leave(&gateway.db, &id).await;
}
