//! The cluster registry: who is registered, who leads at which term, who is alive.
//!
//! The database is the record; an in-memory copy serves reads and heartbeats. Decisions are
//! pure functions ([`decide`], [`state`]):
//! - a heartbeat from a lower term than the known one is **fenced** (409): a deposed leader
//!   stops acting;
//! - a heartbeat that changes the registration (a new term, leader, endpoint, labels or
//!   replicas) is written at once, fenced again in SQL (so several gateway replicas agree);
//! - a heartbeat that changes nothing but the time is batched: its time is written with the
//!   others every [`FLUSH_EVERY`];
//! - a cluster's state is `alive`, `suspect` or `dead` by the age of its last heartbeat, counted
//!   from no earlier than this gateway's start: a gateway that was down heard nothing, so its
//!   downtime is nobody's silence (a restart alone never moves work off a cluster).
//!
//! The copy is refreshed from the database every [`REFRESH_EVERY`], so other gateway replicas'
//! writes show within that bound.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use atoll_api::ClusterName;
use atoll_api::gateway::ClusterInfo;
use atoll_api::gateway::ClusterState;
use atoll_api::gateway::Heartbeat;
use atoll_api::gateway::MeshView;
use atoll_api::gateway::PeerCluster;
use atoll_api::ids::Term;

use crate::breakage::Breakage;
use crate::db::Db;
use crate::db::DbError;
use crate::db::clusters::ClusterRow;
use crate::db::clusters::Registered;
use crate::fence::Fence;
use crate::fence::fence;

/// How often batched heartbeat times are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How often the in-memory copy is reloaded from the database.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// What to do with a heartbeat, given what is known of its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Revoked,
    Fenced {
        term: Term,
    },
    /// The registration changed: write it now.
    Register,
    /// Only the time changed: batch it.
    Touch,
}

/// Decide on a heartbeat (pure).
pub fn decide(known: Option<&ClusterRow>, heartbeat: &Heartbeat) -> Decision {
    let Some(row) = known else { return Decision::Register };
    if row.revoked_ms.is_some() {
        return Decision::Revoked;
    }
    if fence(row.term, heartbeat.term) == Fence::Stale {
        return Decision::Fenced { term: row.term };
    }
    let same = heartbeat.term == row.term
        && row.registered_ms.is_some()
        && row.leader_id == Some(heartbeat.leader_id)
        && row.endpoint.as_deref() == Some(heartbeat.endpoint.as_str())
        && row.labels == heartbeat.labels
        && row.replicas == heartbeat.replicas
        && row.capabilities == heartbeat.capabilities;
    if same { Decision::Touch } else { Decision::Register }
}

/// When this gateway could start hearing heartbeats, and the bounds it judges silence by.
#[derive(Clone, Copy, Debug)]
pub struct Judging {
    /// This gateway's start (ms since the epoch).
    pub since_ms: i64,
    pub suspect_after: Duration,
    pub dead_after: Duration,
}

/// A cluster's observed state (pure), by the age of its last heartbeat; `dead` if never seen.
///
/// Silence is counted from no earlier than `judging.since_ms`: a cluster last heard from before
/// this gateway started is `suspect` (nothing known of it yet), and `dead` only once this gateway
/// has itself waited `dead_after` for it. Clusters that kept running while the gateway was down
/// heartbeat again within that bound, so a gateway restart moves no work.
pub fn state(now_ms: i64, last_seen_ms: Option<i64>, judging: Judging) -> ClusterState {
    let Some(seen) = last_seen_ms else { return ClusterState::Dead };
    let heard_since_start = seen >= judging.since_ms;
    let age = u64::try_from(now_ms.saturating_sub(seen.max(judging.since_ms))).unwrap_or(0);
    if age >= judging.dead_after.as_millis() as u64 {
        ClusterState::Dead
    } else if age >= judging.suspect_after.as_millis() as u64 || !heard_since_start {
        ClusterState::Suspect
    } else {
        ClusterState::Alive
    }
}

/// Why a heartbeat was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("cluster {0} is revoked")]
    Revoked(String),
    #[error("stale leader: cluster {cluster} has a leader at term {known}, this heartbeat is from term {got}")]
    Fenced { cluster: String, known: Term, got: Term },
    #[error(transparent)]
    Db(#[from] DbError),
}

pub struct Registry {
    db: Db,
    judging: Judging,
    /// Silence is counted from no earlier than this either (ms since the epoch): when this
    /// replica took the duties lease ([`Registry::judge_from`]).
    judged_from_ms: std::sync::atomic::AtomicI64,
    /// The chaos suite's deliberately broken gateway acts on stale leaders.
    breakage: Breakage,
    rows: Mutex<BTreeMap<String, ClusterRow>>,
    /// Pending heartbeat times: cluster -> (term, seen).
    touched: Mutex<BTreeMap<String, (Term, i64)>>,
    /// When the last write of pending heartbeat times that succeeded began.
    written_at: Mutex<tokio::time::Instant>,
    /// Digest of what mesh views are made of, kept current with `rows`.
    view_revision: std::sync::atomic::AtomicU64,
    /// When the last load or refresh that succeeded began.
    read_at: Mutex<tokio::time::Instant>,
}

/// A digest of everything a mesh view is made of (pure): equal digests, equal views.
pub fn view_digest<'a>(rows: impl IntoIterator<Item = &'a ClusterRow>) -> u64 {
    use std::hash::Hash;
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    for row in rows {
        (&row.name, &row.endpoint, &row.labels, row.revoked_ms.is_some()).hash(&mut hasher);
    }
    hasher.finish()
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// The registry as the database holds it; clusters are judged from `judging.since_ms` on.
    pub async fn load(db: Db, judging: Judging, breakage: Breakage) -> Result<Self, DbError> {
        let began = tokio::time::Instant::now();
        let rows: BTreeMap<String, ClusterRow> =
            db.clusters().await?.into_iter().map(|r| (r.name.to_string(), r)).collect();
        let view_revision = std::sync::atomic::AtomicU64::new(view_digest(rows.values()));
        Ok(Self {
            db,
            judging,
            judged_from_ms: std::sync::atomic::AtomicI64::new(judging.since_ms),
            breakage,
            rows: Mutex::new(rows),
            touched: Mutex::new(BTreeMap::new()),
            written_at: Mutex::new(tokio::time::Instant::now()),
            view_revision,
            read_at: Mutex::new(began),
        })
    }

    /// Count silence from no earlier than `since_ms` (a replica that just took the duties
    /// lease: what it did not hear while it was not the holder, or while the database was away
    /// from it, is nobody's silence; clusters alive meanwhile are seen again within the bound).
    pub fn judge_from(&self, since_ms: i64) {
        self.judged_from_ms.fetch_max(since_ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// A cluster's state by its silence; `dead` only if also silent for the dead-after bound
    /// since [`Registry::judge_from`]'s time (suspect until then).
    fn state_of(&self, now_ms: i64, last_seen_ms: Option<i64>) -> ClusterState {
        let judged = state(now_ms, last_seen_ms, self.judging);
        let since_ms = self.judged_from_ms.load(std::sync::atomic::Ordering::SeqCst);
        if judged == ClusterState::Dead
            && last_seen_ms.is_some()
            && state(now_ms, last_seen_ms, Judging { since_ms, ..self.judging }) != ClusterState::Dead
        {
            ClusterState::Suspect
        } else {
            judged
        }
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ClusterRow>> {
        self.rows.lock().expect("registry lock")
    }

    /// Recompute the view revision after `rows` changed (called with the lock held).
    fn rows_changed(&self, rows: &BTreeMap<String, ClusterRow>) {
        self.view_revision.store(view_digest(rows.values()), std::sync::atomic::Ordering::Release);
    }

    /// The revision of the mesh views served now.
    pub fn view_revision(&self) -> u64 {
        self.view_revision.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn get(&self, name: &str) -> Option<ClusterRow> {
        self.rows().get(name).cloned()
    }

    pub fn is_revoked(&self, name: &str) -> bool {
        self.rows().get(name).is_some_and(|r| r.revoked_ms.is_some())
    }

    /// Accept a leader's heartbeat (and registration), or say why not.
    pub async fn heartbeat(&self, name: &ClusterName, heartbeat: &Heartbeat, now_ms: i64) -> Result<(), Refused> {
        let known = self.get(name);
        match decide(known.as_ref(), heartbeat) {
            Decision::Revoked => Err(Refused::Revoked(name.to_string())),
            Decision::Fenced { term } if !self.breakage.fencing_disabled() => {
                Err(Refused::Fenced { cluster: name.to_string(), known: term, got: heartbeat.term })
            }
            Decision::Fenced { .. } => {
                // The deliberately broken gateway: act on the stale leader as if it were current.
                tracing::info!(cluster = name.as_str(), leader = heartbeat.leader_id, term = heartbeat.term.0, endpoint = %heartbeat.endpoint, "leader registered");
                if let Some(row) = self.rows().get_mut(name.as_str()) {
                    row.term = heartbeat.term;
                    row.leader_id = Some(heartbeat.leader_id);
                    row.endpoint = Some(heartbeat.endpoint.clone());
                    row.last_seen_ms = Some(now_ms);
                }
                Ok(())
            }
            Decision::Touch => {
                if let Some(row) = self.rows().get_mut(name.as_str()) {
                    row.last_seen_ms = Some(row.last_seen_ms.unwrap_or(0).max(now_ms));
                }
                self.touched.lock().expect("touched lock").insert(name.to_string(), (heartbeat.term, now_ms));
                Ok(())
            }
            Decision::Register => match self.db.register(name, heartbeat, now_ms).await? {
                Registered::Accepted => {
                    let previous = known.as_ref().map(|r| (r.term, r.leader_id));
                    if previous != Some((heartbeat.term, Some(heartbeat.leader_id))) {
                        tracing::info!(cluster = name.as_str(), leader = heartbeat.leader_id, term = heartbeat.term.0, endpoint = %heartbeat.endpoint, "leader registered");
                    }
                    let mut rows = self.rows();
                    let row = rows.entry(name.to_string()).or_insert_with(|| ClusterRow {
                        name: name.clone(),
                        labels: Vec::new(),
                        enabled: true,
                        revoked_ms: None,
                        term: Term(0),
                        leader_id: None,
                        endpoint: None,
                        replicas: Vec::new(),
                        registered_ms: None,
                        last_seen_ms: None,
                        capabilities: None,
                    });
                    row.labels = heartbeat.labels.clone();
                    row.term = heartbeat.term;
                    row.leader_id = Some(heartbeat.leader_id);
                    row.endpoint = Some(heartbeat.endpoint.clone());
                    row.replicas = heartbeat.replicas.clone();
                    row.capabilities = heartbeat.capabilities.clone();
                    row.registered_ms = Some(now_ms);
                    row.last_seen_ms = Some(now_ms);
                    self.rows_changed(&rows);
                    Ok(())
                }
                Registered::Fenced { term } => {
                    self.reload(name).await?;
                    Err(Refused::Fenced { cluster: name.to_string(), known: term, got: heartbeat.term })
                }
                Registered::Revoked => {
                    self.reload(name).await?;
                    Err(Refused::Revoked(name.to_string()))
                }
            },
        }
    }

    async fn reload(&self, name: &str) -> Result<(), DbError> {
        if let Some(row) = self.db.cluster(name).await? {
            let mut rows = self.rows();
            rows.insert(name.to_string(), row);
            self.rows_changed(&rows);
        }
        Ok(())
    }

    /// The mesh as `asking` should see it: the other registered, enabled, unrevoked clusters
    /// with an endpoint, and the revoked ones.
    pub fn view_for(&self, asking: &str) -> MeshView {
        let rows = self.rows();
        let peers = rows
            .values()
            // Disabled clusters are still probed: they take no new work but still hold outputs.
            .filter(|r| r.name != asking && r.revoked_ms.is_none())
            .filter_map(|r| {
                r.endpoint.clone().map(|endpoint| PeerCluster {
                    name: r.name.clone(),
                    endpoint,
                    labels: r.labels.clone(),
                })
            })
            .collect();
        let revoked = rows.values().filter(|r| r.revoked_ms.is_some()).map(|r| r.name.to_string()).collect();
        MeshView { peers, revoked }
    }

    /// Whether some cluster is known here only by name (a join token made for it) and has not
    /// registered here yet: with several replicas it may have registered through another one.
    pub fn has_unregistered(&self) -> bool {
        self.rows().values().any(|r| r.registered_ms.is_none() && r.revoked_ms.is_none())
    }

    /// [`Registry::refresh`] when [`Registry::has_unregistered`]: a cluster that registered
    /// through another replica is not shown (nor judged) as never seen while this one's copy
    /// lags.
    pub async fn refresh_if_unregistered(&self) -> Result<(), DbError> {
        if self.has_unregistered() { self.refresh().await } else { Ok(()) }
    }

    /// Every cluster with its observed state.
    pub fn list(&self, now_ms: i64) -> Vec<ClusterInfo> {
        self.rows()
            .values()
            .map(|r| ClusterInfo {
                name: r.name.clone(),
                labels: r.labels.clone(),
                enabled: r.enabled,
                state: self.state_of(now_ms, r.last_seen_ms),
                leader: r.leader_id,
                term: r.term,
                endpoint: r.endpoint.clone(),
                last_seen_ms: r.last_seen_ms.map(|seen| u64::try_from(now_ms.saturating_sub(seen)).unwrap_or(0)),
                revoked: r.revoked_ms.is_some(),
                replicas: r.replicas.clone(),
                capabilities: r.capabilities.clone(),
            })
            .collect()
    }

    /// Rows of registered, unrevoked clusters (for the matrix).
    pub fn registered(&self) -> Vec<ClusterRow> {
        self.rows().values().filter(|r| r.registered_ms.is_some() && r.revoked_ms.is_none()).cloned().collect()
    }

    pub async fn ensure(&self, name: &str, labels: &[String]) -> Result<(), DbError> {
        self.db.ensure_cluster(name, labels).await?;
        self.reload(name).await
    }

    /// Set the admin intent; false when unknown.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<bool, DbError> {
        let found = self.db.set_enabled(name, enabled).await?;
        self.reload(name).await?;
        Ok(found)
    }

    /// Revoke for good; false when unknown.
    pub async fn revoke(&self, name: &str, now_ms: i64) -> Result<bool, DbError> {
        let found = self.db.revoke(name, now_ms).await?;
        self.reload(name).await?;
        Ok(found)
    }

    /// How many clusters' heartbeat times wait for the next flush.
    pub fn pending_times(&self) -> usize {
        self.touched.lock().expect("touched lock").len()
    }

    /// Write batched heartbeat times.
    ///
    /// A batch that could not be written (an error, or the caller gave up waiting) is put back,
    /// so the times are written with the next one: a heartbeat accepted here is never lost to the
    /// other replicas.
    pub async fn flush(&self) -> Result<(), DbError> {
        let began = tokio::time::Instant::now();
        let batch: Vec<(String, Term, i64)> = {
            let mut touched = self.touched.lock().expect("touched lock");
            std::mem::take(&mut *touched).into_iter().map(|(name, (term, at))| (name, term, at)).collect()
        };
        let mut pending = PutBack { registry: self, batch: Some(batch) };
        self.db.touch(pending.batch.as_deref().unwrap_or_default()).await?;
        pending.batch = None;
        let mut written_at = self.written_at.lock().expect("written lock");
        *written_at = (*written_at).max(began);
        Ok(())
    }

    /// Whether the heartbeat times heard here reach the database: a write of them that began
    /// within `age` succeeded (one with nothing to write counts). A replica whose writes hang
    /// (its connections to the database stuck, its database back for other writes) must not
    /// go on hearing clusters nobody else hears.
    pub fn written_within(&self, age: std::time::Duration) -> bool {
        self.written_at.lock().expect("written lock").elapsed() < age
    }
}

/// Puts an unwritten batch of heartbeat times back when dropped (also when the flush is
/// abandoned mid-way).
struct PutBack<'a> {
    registry: &'a Registry,
    batch: Option<Vec<(String, Term, i64)>>,
}

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        let Some(batch) = self.batch.take() else { return };
        let mut touched = self.registry.touched.lock().expect("touched lock");
        for (name, term, at) in batch {
            let entry = touched.entry(name).or_insert((term, at));
            if (term, at) > *entry {
                *entry = (term, at);
            }
        }
    }
}

impl Registry {
    /// Reload every row from the database, keeping the later heartbeat time of the two.
    pub async fn refresh(&self) -> Result<(), DbError> {
        let began = tokio::time::Instant::now();
        let fresh = self.db.clusters().await?;
        let mut rows = self.rows();
        for mut row in fresh {
            if let Some(mine) = rows.get(row.name.as_str())
                && mine.term == row.term
            {
                row.last_seen_ms = row.last_seen_ms.max(mine.last_seen_ms);
            }
            rows.insert(row.name.to_string(), row);
        }
        self.rows_changed(&rows);
        drop(rows);
        let mut read_at = self.read_at.lock().expect("registry read lock");
        *read_at = (*read_at).max(began);
        Ok(())
    }

    /// [`Registry::refresh`], unless a refresh that began within `age` succeeded: a replica that
    /// could not refresh for a while (cut from the database, paused) reads what the others heard
    /// before it judges anyone's silence.
    pub async fn refresh_within(&self, age: Duration) -> Result<(), DbError> {
        if self.read_at.lock().expect("registry read lock").elapsed() < age {
            return Ok(());
        }
        self.refresh().await
    }
}

#[cfg(test)]
mod tests {
    use atoll_api::gateway::ReplicaInfo;

    use super::*;

    fn heartbeat(term: u64) -> Heartbeat {
        Heartbeat {
            term: Term(term),
            leader_id: 1,
            endpoint: "a:1".into(),
            labels: vec!["x".into()],
            replicas: vec![ReplicaInfo { id: 1, addr: "a:1".into(), voter: true }],
            view_revision: None,
            capabilities: None,
        }
    }

    fn row(term: u64) -> ClusterRow {
        ClusterRow {
            name: "aws".parse().unwrap(),
            labels: vec!["x".into()],
            enabled: true,
            revoked_ms: None,
            term: Term(term),
            leader_id: Some(1),
            endpoint: Some("a:1".into()),
            replicas: vec![ReplicaInfo { id: 1, addr: "a:1".into(), voter: true }],
            registered_ms: Some(0),
            last_seen_ms: Some(0),
            capabilities: None,
        }
    }

    /// Heartbeat times count as written once a write of them succeeded; a replica whose writes
    /// stopped (its flush hanging) is told so by age.
    #[tokio::test]
    async fn heartbeat_writes_are_timed() {
        let test = crate::db::testing::TestDatabase::sqlite();
        let db = Db::connect(&test.database).await.unwrap();
        let judging =
            Judging { since_ms: 0, suspect_after: Duration::from_secs(1), dead_after: Duration::from_secs(2) };
        let registry = Registry::load(db, judging, Breakage::default()).await.unwrap();
        assert!(registry.written_within(Duration::from_secs(3_600)));
        assert!(!registry.written_within(Duration::ZERO), "no write since began within no time");
        registry.flush().await.unwrap();
        assert!(registry.written_within(Duration::from_secs(3_600)));
    }

    #[test]
    fn heartbeats_are_fenced_written_or_batched() {
        assert_eq!(decide(None, &heartbeat(1)), Decision::Register);
        assert_eq!(decide(Some(&row(3)), &heartbeat(3)), Decision::Touch);
        assert_eq!(decide(Some(&row(3)), &heartbeat(2)), Decision::Fenced { term: Term(3) });
        assert_eq!(decide(Some(&row(3)), &heartbeat(4)), Decision::Register);
        let mut moved = heartbeat(3);
        moved.endpoint = "b:1".into();
        assert_eq!(decide(Some(&row(3)), &moved), Decision::Register);
        let mut unregistered = row(0);
        unregistered.registered_ms = None;
        assert_eq!(
            decide(Some(&unregistered), &heartbeat(0)),
            Decision::Register,
            "a token-made row is not a registration"
        );
        let mut revoked = row(3);
        revoked.revoked_ms = Some(1);
        assert_eq!(decide(Some(&revoked), &heartbeat(9)), Decision::Revoked);
    }

    #[test]
    fn the_view_digest_follows_what_views_are_made_of() {
        let base = view_digest([&row(3)]);
        let mut later = row(3);
        later.term = Term(9);
        later.last_seen_ms = Some(99);
        assert_eq!(view_digest([&later]), base, "terms and times do not change views");
        later.endpoint = Some("b:1".into());
        assert_ne!(view_digest([&later]), base);
        let mut revoked = row(3);
        revoked.revoked_ms = Some(1);
        assert_ne!(view_digest([&revoked]), base);
    }

    fn judging(since_ms: i64) -> Judging {
        Judging { since_ms, suspect_after: Duration::from_secs(3), dead_after: Duration::from_secs(10) }
    }

    #[test]
    fn states_follow_heartbeat_age() {
        let j = judging(0);
        assert_eq!(state(10_000, Some(9_000), j), ClusterState::Alive);
        assert_eq!(state(10_000, Some(7_000), j), ClusterState::Suspect);
        assert_eq!(state(10_000, Some(0), j), ClusterState::Dead);
        assert_eq!(state(10_000, None, j), ClusterState::Dead);
        assert_eq!(state(10_000, Some(11_000), j), ClusterState::Alive, "a clock step back is not a death");
    }

    #[test]
    fn silence_counts_from_the_gateway_start() {
        // Last heard at 1 s; the gateway was down and started again at 60 s.
        let j = judging(60_000);
        assert_eq!(state(60_001, Some(1_000), j), ClusterState::Suspect, "not heard from yet: suspect, not dead");
        assert_eq!(state(69_999, Some(1_000), j), ClusterState::Suspect);
        assert_eq!(state(70_000, Some(1_000), j), ClusterState::Dead, "dead after waiting dead_after itself");
        assert_eq!(state(60_500, Some(60_100), j), ClusterState::Alive, "heard since the start");
        assert_eq!(state(64_000, Some(60_100), j), ClusterState::Suspect);
        assert_eq!(state(70_100, Some(60_100), j), ClusterState::Dead);
        assert_eq!(state(60_001, None, j), ClusterState::Dead, "never registered");
    }
}
