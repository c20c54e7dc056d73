//! The reachability matrix: reported rows joined into the directed matrix.
//!
//! Each cluster leader reports its whole row (its view of every other cluster). The gateway
//! keeps the latest row per reporter (written to the database in batches, one row per reporter,
//! never one SQL row per cell) and joins them on demand with [`join`], a pure function:
//! - the matrix covers registered, unrevoked clusters;
//! - cell `from -> to` is what `from` reported about `to`; `unknown` when `from` never reported
//!   it, or when `from` has been silent (no row, no heartbeat) past the staleness bound;
//! - `mode` is `direct` when either direction of the pair is reachable (the child can pull or
//!   the parent can push), else `relay`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use atoll_api::ClusterName;
use atoll_api::gateway::LinkState;
use atoll_api::gateway::Matrix;
use atoll_api::gateway::MatrixCell;
use atoll_api::gateway::RowCell;
use atoll_api::gateway::TransferMode;
use atoll_api::ids::Term;

use crate::db::Db;
use crate::db::DbError;
use crate::db::clusters::ClusterRow;
use crate::db::matrix::StoredRow;

/// How often reported rows are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// One cell of the matrix, borrowing from the rows (serialized exactly as [`MatrixCell`]).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CellRef<'a> {
    pub from: &'a ClusterName,
    pub to: &'a ClusterName,
    pub state: LinkState,
    pub rtt_ms: Option<f64>,
    pub loss: Option<f64>,
    pub age_ms: Option<u64>,
    pub mode: TransferMode,
}

/// The joined matrix as a dense grid over the sorted cluster names (pure): cell `from -> to` is
/// at `from * n + to`, holding what a fresh `from` reported about `to`.
pub struct Grid<'a> {
    names: Vec<&'a ClusterName>,
    measured: Vec<Option<&'a RowCell>>,
    age_ms: Vec<Option<u64>>,
}

impl<'a> Grid<'a> {
    pub fn new(
        clusters: &'a [ClusterRow],
        rows: &'a BTreeMap<String, Arc<StoredRow>>,
        now_ms: i64,
        stale_after: Duration,
    ) -> Self {
        let mut order: Vec<&ClusterRow> = clusters.iter().collect();
        order.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<&ClusterName> = order.iter().map(|c| &c.name).collect();
        let index: std::collections::HashMap<&str, usize> =
            names.iter().enumerate().map(|(i, name)| (name.as_str(), i)).collect();
        let n = names.len();
        let stale_ms = stale_after.as_millis() as i64;
        let mut measured = vec![None; n * n];
        let mut age_ms = vec![None; n];
        for (from, cluster) in order.iter().enumerate() {
            let row = rows.get(cluster.name.as_str());
            age_ms[from] = row.map(|r| u64::try_from(now_ms.saturating_sub(r.reported_ms)).unwrap_or(0));
            // A reporter is fresh while it reports or heartbeats within the staleness bound.
            let activity = row.map(|r| r.reported_ms).max(cluster.last_seen_ms);
            if activity.is_none_or(|at| now_ms.saturating_sub(at) > stale_ms) {
                continue;
            }
            for cell in row.iter().flat_map(|r| r.cells.iter()) {
                if let Some(&to) = index.get(cell.to.as_str())
                    && to != from
                {
                    measured[from * n + to] = Some(cell);
                }
            }
        }
        Self { names, measured, age_ms }
    }

    pub fn names(&self) -> &[&'a ClusterName] {
        &self.names
    }

    /// The cell `from -> to` (indices into [`Grid::names`]).
    pub fn cell(&self, from: usize, to: usize) -> CellRef<'a> {
        let n = self.names.len();
        let measured = self.measured[from * n + to];
        let works = |c: Option<&RowCell>| c.is_some_and(|c| c.state == LinkState::Reachable);
        CellRef {
            from: self.names[from],
            to: self.names[to],
            state: measured.map_or(LinkState::Unknown, |c| c.state),
            rtt_ms: measured.and_then(|c| c.rtt_ms),
            loss: measured.map(|c| c.loss),
            age_ms: self.age_ms[from],
            mode: if works(measured) || works(self.measured[to * n + from]) {
                TransferMode::Direct
            } else {
                TransferMode::Relay
            },
        }
    }

    /// How many directed cells are in each link state (every state listed, zero or not).
    pub fn count_by_state(&self) -> [(LinkState, usize); 4] {
        let mut counts =
            [(LinkState::Reachable, 0), (LinkState::Suspect, 0), (LinkState::Unreachable, 0), (LinkState::Unknown, 0)];
        let n = self.names.len();
        for from in 0..n {
            for to in (0..n).filter(|to| *to != from) {
                let state = self.measured[from * n + to].map_or(LinkState::Unknown, |c| c.state);
                if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
                    slot.1 += 1;
                }
            }
        }
        counts
    }

    /// Every directed cell, row by row.
    pub fn cells(&self) -> impl Iterator<Item = CellRef<'a>> + '_ {
        let n = self.names.len();
        (0..n).flat_map(move |from| (0..n).filter(move |to| *to != from).map(move |to| self.cell(from, to)))
    }

    /// Write the JSON of [`Matrix`] in pieces of about `chunk` bytes to `sink` (which may stop
    /// the writing by returning false), without building owned cells: a 1000-cluster matrix
    /// has a million of them.
    pub fn write_json(&self, chunk: usize, mut sink: impl FnMut(Vec<u8>) -> bool) {
        let mut out = Vec::with_capacity(chunk + 4096);
        // Serializing plain data into a Vec cannot fail.
        out.extend_from_slice(b"{\"clusters\":");
        let _ = serde_json::to_writer(&mut out, &self.names);
        out.extend_from_slice(b",\"cells\":[");
        for (i, cell) in self.cells().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = serde_json::to_writer(&mut out, &cell);
            if out.len() >= chunk && !sink(std::mem::replace(&mut out, Vec::with_capacity(chunk + 4096))) {
                return;
            }
        }
        out.extend_from_slice(b"]}");
        sink(out);
    }
}

/// Join the latest rows into the matrix (pure).
pub fn join(
    clusters: &[ClusterRow],
    rows: &BTreeMap<String, Arc<StoredRow>>,
    now_ms: i64,
    stale_after: Duration,
) -> Matrix {
    let grid = Grid::new(clusters, rows, now_ms, stale_after);
    Matrix {
        clusters: grid.names().iter().map(|name| (*name).clone()).collect(),
        cells: grid
            .cells()
            .map(|c| MatrixCell {
                from: c.from.clone(),
                to: c.to.clone(),
                state: c.state,
                rtt_ms: c.rtt_ms,
                loss: c.loss,
                age_ms: c.age_ms,
                mode: c.mode,
            })
            .collect(),
    }
}

/// The latest row of every reporter, with batched writes.
pub struct Rows {
    db: Db,
    latest: Mutex<BTreeMap<String, Arc<StoredRow>>>,
    dirty: Mutex<BTreeMap<String, Arc<StoredRow>>>,
    /// When the last load or refresh that succeeded began.
    read_at: Mutex<tokio::time::Instant>,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows").finish_non_exhaustive()
    }
}

impl Rows {
    pub async fn load(db: Db) -> Result<Self, DbError> {
        let began = tokio::time::Instant::now();
        let latest = db.rows().await?.into_iter().map(|r| (r.reporter.clone(), Arc::new(r))).collect();
        Ok(Self { db, latest: Mutex::new(latest), dirty: Mutex::new(BTreeMap::new()), read_at: Mutex::new(began) })
    }

    /// Keep `row` as its reporter's latest (unless a newer term's row is held).
    pub fn put(&self, row: StoredRow) {
        let row = Arc::new(row);
        let mut latest = self.latest.lock().expect("rows lock");
        if latest.get(&row.reporter).is_some_and(|held| held.term > row.term) {
            return;
        }
        latest.insert(row.reporter.clone(), row.clone());
        self.dirty.lock().expect("dirty lock").insert(row.reporter.clone(), row);
    }

    /// The latest rows (shared, not copied).
    pub fn snapshot(&self) -> BTreeMap<String, Arc<StoredRow>> {
        self.latest.lock().expect("rows lock").clone()
    }

    pub async fn flush(&self) -> Result<(), DbError> {
        let batch: Vec<Arc<StoredRow>> =
            std::mem::take(&mut *self.dirty.lock().expect("dirty lock")).into_values().collect();
        if let Err(e) = self.db.put_rows(&batch).await {
            // Keep them for the next flush, unless a newer row came meanwhile.
            let mut dirty = self.dirty.lock().expect("dirty lock");
            for row in batch {
                dirty.entry(row.reporter.clone()).or_insert(row);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Load rows that other gateway replicas wrote: only the versions are read, and the cells
    /// only of rows newer than the ones held (with one gateway: none).
    pub async fn refresh(&self) -> Result<(), DbError> {
        let began = tokio::time::Instant::now();
        let versions = self.db.row_versions().await?;
        let stale: Vec<String> = {
            let latest = self.latest.lock().expect("rows lock");
            versions
                .into_iter()
                .filter(|(reporter, term, reported_ms)| {
                    latest.get(reporter).is_none_or(|held| (Term(*term), *reported_ms) > (held.term, held.reported_ms))
                })
                .map(|(reporter, _, _)| reporter)
                .collect()
        };
        for reporter in stale {
            let Some(row) = self.db.row(&reporter).await? else { continue };
            let mut latest = self.latest.lock().expect("rows lock");
            let newer = latest
                .get(&row.reporter)
                .is_none_or(|held| (row.term, row.reported_ms) > (held.term, held.reported_ms));
            if newer {
                latest.insert(row.reporter.clone(), Arc::new(row));
            }
        }
        let mut read_at = self.read_at.lock().expect("rows read lock");
        *read_at = (*read_at).max(began);
        Ok(())
    }

    /// [`Rows::refresh`], unless a refresh that began within `age` succeeded: rows this replica
    /// could not refresh for a while (it was cut from the database, or paused) are read again
    /// before anything is decided from them.
    pub async fn refresh_within(&self, age: std::time::Duration) -> Result<(), DbError> {
        if self.read_at.lock().expect("rows read lock").elapsed() < age {
            return Ok(());
        }
        self.refresh().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str, last_seen: Option<i64>) -> ClusterRow {
        ClusterRow {
            name: name.parse().unwrap(),
            labels: vec![],
            enabled: true,
            revoked_ms: None,
            term: Term(1),
            leader_id: Some(1),
            endpoint: Some(format!("{name}:1")),
            replicas: vec![],
            registered_ms: Some(0),
            last_seen_ms: last_seen,
            capabilities: None,
        }
    }

    fn row(reporter: &str, at: i64, cells: &[(&str, LinkState)]) -> (String, Arc<StoredRow>) {
        (
            reporter.to_string(),
            Arc::new(StoredRow {
                reporter: reporter.into(),
                term: Term(1),
                cells: cells
                    .iter()
                    .map(|(to, s)| RowCell { to: to.to_string(), state: *s, rtt_ms: Some(2.0), loss: 0.0 })
                    .collect(),
                reported_ms: at,
            }),
        )
    }

    fn cell<'a>(m: &'a Matrix, from: &str, to: &str) -> &'a MatrixCell {
        m.cells.iter().find(|c| c.from == from && c.to == to).unwrap()
    }

    /// Rows a replica could not refresh for longer than asked are read again before use; fresh
    /// ones are not.
    #[tokio::test]
    async fn rows_not_refreshed_lately_are_read_again() {
        let test = crate::db::testing::TestDatabase::sqlite();
        let db = Db::connect(&test.database).await.unwrap();
        let here = Rows::load(db.clone()).await.unwrap();
        let other = Rows::load(db).await.unwrap();
        let (_, row) = row("aws", 1_000, &[("gcp", LinkState::Reachable)]);
        other.put(StoredRow::clone(&row));
        other.flush().await.unwrap();
        here.refresh_within(std::time::Duration::from_secs(3_600)).await.unwrap();
        assert!(here.snapshot().is_empty(), "refreshed within the hour: not read again");
        here.refresh_within(std::time::Duration::ZERO).await.unwrap();
        assert_eq!(here.snapshot().get("aws").map(|r| r.reported_ms), Some(1_000));
    }

    /// The default dev mesh: onprem refuses aws and gcp; gcp refuses onprem.
    #[test]
    fn one_way_and_two_way_cuts() {
        use LinkState::*;
        let clusters = [cluster("aws", Some(10_000)), cluster("gcp", Some(10_000)), cluster("onprem", Some(10_000))];
        let rows: BTreeMap<_, _> = [
            row("aws", 9_000, &[("gcp", Reachable), ("onprem", Unreachable)]),
            row("gcp", 9_000, &[("aws", Reachable), ("onprem", Unreachable)]),
            row("onprem", 9_000, &[("aws", Reachable), ("gcp", Unreachable)]),
        ]
        .into();
        let m = join(&clusters, &rows, 10_000, Duration::from_secs(5));
        assert_eq!(m.clusters, vec!["aws", "gcp", "onprem"]);
        assert_eq!(m.cells.len(), 6);
        // aws -> onprem is cut one way only: still direct (onprem can reach aws).
        assert_eq!(cell(&m, "aws", "onprem").state, Unreachable);
        assert_eq!(cell(&m, "aws", "onprem").mode, TransferMode::Direct);
        assert_eq!(cell(&m, "onprem", "aws").mode, TransferMode::Direct);
        // gcp <-> onprem is cut both ways: relay.
        assert_eq!(cell(&m, "gcp", "onprem").mode, TransferMode::Relay);
        assert_eq!(cell(&m, "onprem", "gcp").mode, TransferMode::Relay);
        assert_eq!(cell(&m, "aws", "gcp").mode, TransferMode::Direct);
        assert_eq!(cell(&m, "aws", "gcp").age_ms, Some(1_000));
    }

    #[test]
    fn silent_reporters_and_missing_cells_are_unknown() {
        use LinkState::*;
        let clusters = [cluster("aws", Some(1_000)), cluster("gcp", Some(20_000)), cluster("onprem", Some(20_000))];
        let rows: BTreeMap<_, _> =
            [row("aws", 1_000, &[("gcp", Reachable)]), row("gcp", 19_000, &[("aws", Unreachable)])].into();
        let m = join(&clusters, &rows, 20_000, Duration::from_secs(5));
        // aws has been silent for 19 s: its cells are unknown, its old measurement ignored.
        assert_eq!(cell(&m, "aws", "gcp").state, Unknown);
        assert_eq!(cell(&m, "aws", "gcp").rtt_ms, None);
        assert_eq!(cell(&m, "aws", "gcp").age_ms, Some(19_000));
        // gcp reported nothing about onprem; onprem never reported.
        assert_eq!(cell(&m, "gcp", "onprem").state, Unknown);
        assert_eq!(cell(&m, "onprem", "aws").state, Unknown);
        assert_eq!(cell(&m, "onprem", "aws").age_ms, None);
        // Unknown both ways means no direct path is known: relay.
        assert_eq!(cell(&m, "gcp", "onprem").mode, TransferMode::Relay);
        // The metrics count the same states, every state listed.
        let counts = Grid::new(&clusters, &rows, 20_000, Duration::from_secs(5)).count_by_state();
        assert_eq!(counts, [(Reachable, 0), (Suspect, 0), (Unreachable, 1), (Unknown, 5)]);
    }

    #[test]
    fn the_streamed_json_is_the_matrix() {
        use LinkState::*;
        let clusters = [cluster("aws", Some(10_000)), cluster("gcp", Some(1_000))];
        let rows: BTreeMap<_, _> =
            [row("aws", 9_000, &[("gcp", Unreachable)]), row("gcp", 1_000, &[("aws", Reachable)])].into();
        let grid = Grid::new(&clusters, &rows, 10_000, Duration::from_secs(5));
        for chunk in [1, 64, 1 << 20] {
            let mut json = Vec::new();
            grid.write_json(chunk, |piece| {
                json.extend(piece);
                true
            });
            let streamed: Matrix = serde_json::from_slice(&json).unwrap();
            assert_eq!(streamed, join(&clusters, &rows, 10_000, Duration::from_secs(5)), "chunk {chunk}");
        }
    }

    #[test]
    fn a_reporter_that_heartbeats_keeps_its_row_fresh() {
        use LinkState::*;
        // The row is old (rows are sent on change and every row interval), but the reporter
        // heartbeats: its row still holds.
        let clusters = [cluster("aws", Some(30_000)), cluster("gcp", Some(30_000))];
        let rows: BTreeMap<_, _> = [row("aws", 1_000, &[("gcp", Reachable)])].into();
        let m = join(&clusters, &rows, 30_000, Duration::from_secs(5));
        assert_eq!(cell(&m, "aws", "gcp").state, Reachable);
    }
}
