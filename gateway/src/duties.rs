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
//! **A holder that died is replaced at once.** With several replicas on PostgreSQL, the holder
//! of generation `g` holds a session-level advisory lock on (`LIVENESS_KEY`, `g`) on a
//! connection of its own, taken *before* it takes the lease (for the generation the take will
//! make), so the holder of every generation holds its lock from its first moment. The server
//! releases the lock when that session ends, which it does at once when the holder's process dies
//! (its sockets close). A replica that finds the lease of generation `g` held but the lock of `g`
//! free knows its holder is gone and takes the lease without waiting for it to run out. A holder
//! that is alive but paused, or cut off from the database, keeps its session and its lock: the
//! others wait for the lease to run out, as the TTL says; the new holder's lock is of the new
//! generation, so the old one letting its own go when it wakes changes nothing. Should a live
//! holder's lock connection drop, another replica takes the lease from it: a needless change of
//! holder, made safe by the generation fence like any other.
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

/// The first key of the advisory lock a lease holder holds on a session of its own while it
/// holds the lease ("atol" in ASCII); the second is the generation.
pub const LIVENESS_KEY: i32 = 0x61_74_6f_6c;

/// The second key of a generation's liveness lock.
fn generation_key(generation: u64) -> i32 {
    (generation & 0x7fff_ffff) as i32
}

/// The holder's liveness lock: a connection of this replica's own, and whether it holds
/// [`LIVENESS_KEY`] on it.
#[derive(Default)]
struct Liveness {
    conn: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
    /// The generation whose lock is held here (0: none).
    held: AtomicU64,
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liveness").field("held", &self.held).finish_non_exhaustive()
    }
}

impl Liveness {
    /// This replica's own connection for the lock.
    async fn conn<'a>(
        conn: &'a mut Option<sqlx::PgConnection>,
        pool: &sqlx::PgPool,
    ) -> Result<&'a mut sqlx::PgConnection, sqlx::Error> {
        use sqlx::Connection;
        if conn.is_none() {
            *conn = Some(sqlx::PgConnection::connect_with(&pool.connect_options()).await?);
        }
        conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// Try the lock of `generation`: true when it was free (it is then held here).
    async fn try_lock(&self, pool: &sqlx::PgPool, generation: u64) -> Result<bool, sqlx::Error> {
        let mut guard = self.conn.lock().await;
        let taken = match Self::conn(&mut guard, pool).await {
            Ok(c) => {
                sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1, $2)")
                    .bind(LIVENESS_KEY)
                    .bind(generation_key(generation))
                    .fetch_one(c)
                    .await
            }
            Err(e) => Err(e),
        };
        if taken.is_err() {
            // A broken session: the server released whatever it held.
            *guard = None;
            self.held.store(0, Ordering::SeqCst);
        }
        taken
    }

    /// Whether the holder of `generation` is gone: nobody holds its lock.
    async fn holder_gone(&self, pool: &sqlx::PgPool, generation: u64) -> Result<bool, sqlx::Error> {
        if !self.try_lock(pool, generation).await? {
            return Ok(false);
        }
        self.unlock(generation).await;
        Ok(true)
    }

    /// Hold the lock of the generation about to be taken; false when someone else does.
    async fn hold(&self, pool: &sqlx::PgPool, generation: u64) -> Result<bool, sqlx::Error> {
        let taken = self.try_lock(pool, generation).await?;
        if taken {
            self.held.store(generation, Ordering::SeqCst);
        }
        Ok(taken)
    }

    async fn unlock(&self, generation: u64) {
        let mut guard = self.conn.lock().await;
        let Some(c) = guard.as_mut() else { return };
        let released = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(LIVENESS_KEY)
            .bind(generation_key(generation))
            .execute(c)
            .await
            .is_ok();
        if !released {
            // Ending the session releases it.
            *guard = None;
        }
    }

    /// Let the held lock go (stepping down, or the take failed).
    async fn release(&self) {
        let generation = self.held.swap(0, Ordering::SeqCst);
        if generation != 0 {
            self.unlock(generation).await;
        }
    }
}

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
    /// The holder's advisory lock (several replicas on PostgreSQL only).
    liveness: Liveness,
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
            liveness: Liveness::default(),
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
        if !self.ha.enabled {
            // The only gateway by its config: nobody else may take the lease when it runs out,
            // so a slow renewal (a busy SQLite writer) does not stop scheduling. Its writes stay
            // fenced: a second gateway wrongly started on the same database takes the lease by
            // force and this one's writes are refused.
            return Some(Duty::at(held.generation));
        }
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

    /// A write to the database failed or hung: heartbeats are refused until a presence write
    /// succeeds again.
    pub fn database_trouble(&self) {
        *self.database_ok.lock().expect("database ok") = None;
    }

    /// One round: write presence, then renew or try to take the lease. True when this round
    /// took the lease (a new generation).
    async fn round(&self, db: &Db, registry: &crate::registry::Registry, id: &str, addr: &str) -> bool {
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
                    if let Some(held) = self.held.lock().expect("lease").as_mut() {
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
                    if self.ha.enabled && Instant::now() >= h.until && !self.breakage.lease_unfenced() {
                        tracing::warn!(generation = h.generation, error = %e, "renewing the duties lease failed past its term; stepping down");
                        self.step_down().await;
                    } else {
                        tracing::warn!(generation = h.generation, error = %e, "renewing the duties lease failed; retrying");
                    }
                    false
                }
            },
            None => {
                let Some((force, after)) = self.may_take(db).await else { return false };
                match db.take_lease_after(id, &self.incarnation, ttl_ms, force, after).await {
                    Ok(Some(generation)) => {
                        // Before anything acts on the lease: silence is counted from now.
                        registry.judge_from(now_ms());
                        *self.held.lock().expect("lease") = Some(Held { generation, until: sent + self.ha.acts_for() });
                        self.last_generation.store(generation, Ordering::SeqCst);
                        tracing::info!(
                            generation,
                            replica = id,
                            at_once = force && self.ha.enabled,
                            "took the duties lease: this replica schedules"
                        );
                        true
                    }
                    Ok(None) => {
                        self.liveness.release().await;
                        false
                    }
                    Err(e) => {
                        self.liveness.release().await;
                        tracing::warn!(error = %e, "trying to take the duties lease failed");
                        false
                    }
                }
            }
        }
    }

    /// Whether to try taking the lease now, and how: `(force, at generation)`. With one gateway:
    /// always, by force. With several on PostgreSQL: when it ran out, or when its holder's
    /// liveness lock is free (its process is gone: by force); and only once this replica holds
    /// the lock of the generation it would take.
    async fn may_take(&self, db: &Db) -> Option<(bool, Option<u64>)> {
        if !self.ha.enabled {
            return Some((true, None));
        }
        let Db::Postgres(pool) = db else { return Some((false, None)) };
        let lease = match db.lease().await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(error = %e, "reading the duties lease failed");
                return None;
            }
        };
        let force = match lease.holder_now() {
            None => false,
            Some(_) => match self.liveness.holder_gone(pool, lease.generation).await {
                Ok(true) => true,
                Ok(false) => return None,
                Err(e) => {
                    tracing::debug!(error = %e, "the liveness lock did not answer");
                    return None;
                }
            },
        };
        match self.liveness.hold(pool, lease.generation + 1).await {
            Ok(true) => Some((force, Some(lease.generation))),
            Ok(false) => None,
            Err(e) => {
                tracing::debug!(error = %e, "the liveness lock did not answer");
                None
            }
        }
    }

    /// Stop holding: the lease is gone.
    async fn step_down(&self) {
        *self.held.lock().expect("lease") = None;
        self.liveness.release().await;
    }

    /// An orderly stop: give the lease up and remove the presence.
    async fn leave(&self, db: &Db, id: &str) {
        let held = self.held.lock().expect("lease").take();
        self.liveness.release().await;
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
        let took = gateway.lease.round(&gateway.db, &gateway.registry, &id, &addr).await;
        if took {
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
