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
use std::sync::Mutex;
use std::time::Duration;

use atoll_api::gateway::LinkState;
use atoll_api::gateway::Matrix;
use atoll_api::gateway::MatrixCell;
use atoll_api::gateway::RowCell;
use atoll_api::gateway::TransferMode;

use crate::db::Db;
use crate::db::DbError;
use crate::db::clusters::ClusterRow;
use crate::db::matrix::StoredRow;

/// How often reported rows are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// One reporter as the join sees it: fresh or not, when it last reported, its cells by target.
type ReporterView<'a> = (bool, Option<i64>, BTreeMap<&'a str, &'a RowCell>);

/// Join the latest rows into the matrix (pure).
pub fn join(clusters: &[ClusterRow], rows: &BTreeMap<String, StoredRow>, now_ms: i64, stale_after: Duration) -> Matrix {
    let mut names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    let stale_ms = stale_after.as_millis() as i64;
    let last_seen: BTreeMap<&str, Option<i64>> = clusters.iter().map(|c| (c.name.as_str(), c.last_seen_ms)).collect();
    // Per reporter: whether it is fresh, when it reported, and its cells by target.
    let views: BTreeMap<&str, ReporterView<'_>> = names
        .iter()
        .map(|from| {
            let row = rows.get(*from);
            let activity = row.map(|r| r.reported_ms).max(last_seen.get(from).copied().flatten());
            let fresh = activity.is_some_and(|at| now_ms.saturating_sub(at) <= stale_ms);
            let cells = row.map(|r| r.cells.iter().map(|c| (c.to.as_str(), c)).collect()).unwrap_or_default();
            (*from, (fresh, row.map(|r| r.reported_ms), cells))
        })
        .collect();
    let state_of = |from: &str, to: &str| -> Option<&RowCell> {
        let (fresh, _, cells) = views.get(from)?;
        if *fresh { cells.get(to).copied() } else { None }
    };
    let mut cells = Vec::with_capacity(names.len() * names.len().saturating_sub(1));
    for from in &names {
        for to in &names {
            if from == to {
                continue;
            }
            let measured = state_of(from, to);
            let back = state_of(to, from);
            let works = |c: Option<&RowCell>| c.is_some_and(|c| c.state == LinkState::Reachable);
            let reported_ms = views.get(from).and_then(|(_, at, _)| *at);
            cells.push(MatrixCell {
                from: from.to_string(),
                to: to.to_string(),
                state: measured.map_or(LinkState::Unknown, |c| c.state),
                rtt_ms: measured.and_then(|c| c.rtt_ms),
                loss: measured.map(|c| c.loss),
                age_ms: reported_ms.map(|at| u64::try_from(now_ms.saturating_sub(at)).unwrap_or(0)),
                mode: if works(measured) || works(back) { TransferMode::Direct } else { TransferMode::Relay },
            });
        }
    }
    Matrix { clusters: names.into_iter().map(str::to_string).collect(), cells }
}

/// The latest row of every reporter, with batched writes.
pub struct Rows {
    db: Db,
    latest: Mutex<BTreeMap<String, StoredRow>>,
    dirty: Mutex<BTreeMap<String, StoredRow>>,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows").finish_non_exhaustive()
    }
}

impl Rows {
    pub async fn load(db: Db) -> Result<Self, DbError> {
        let latest = db.rows().await?.into_iter().map(|r| (r.reporter.clone(), r)).collect();
        Ok(Self { db, latest: Mutex::new(latest), dirty: Mutex::new(BTreeMap::new()) })
    }

    /// Keep `row` as its reporter's latest (unless a newer term's row is held).
    pub fn put(&self, row: StoredRow) {
        let mut latest = self.latest.lock().expect("rows lock");
        if latest.get(&row.reporter).is_some_and(|held| held.term > row.term) {
            return;
        }
        latest.insert(row.reporter.clone(), row.clone());
        self.dirty.lock().expect("dirty lock").insert(row.reporter.clone(), row);
    }

    pub fn snapshot(&self) -> BTreeMap<String, StoredRow> {
        self.latest.lock().expect("rows lock").clone()
    }

    pub async fn flush(&self) -> Result<(), DbError> {
        let batch: Vec<StoredRow> =
            std::mem::take(&mut *self.dirty.lock().expect("dirty lock")).into_values().collect();
        self.db.put_rows(&batch).await
    }

    /// Reload rows written by other gateway replicas.
    pub async fn refresh(&self) -> Result<(), DbError> {
        let fresh = self.db.rows().await?;
        let mut latest = self.latest.lock().expect("rows lock");
        for row in fresh {
            let newer = latest
                .get(&row.reporter)
                .is_none_or(|held| (row.term, row.reported_ms) > (held.term, held.reported_ms));
            if newer {
                latest.insert(row.reporter.clone(), row);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str, last_seen: Option<i64>) -> ClusterRow {
        ClusterRow {
            name: name.into(),
            labels: vec![],
            enabled: true,
            revoked_ms: None,
            term: 1,
            leader_id: Some(1),
            endpoint: Some(format!("{name}:1")),
            replicas: vec![],
            registered_ms: Some(0),
            last_seen_ms: last_seen,
        }
    }

    fn row(reporter: &str, at: i64, cells: &[(&str, LinkState)]) -> (String, StoredRow) {
        (
            reporter.to_string(),
            StoredRow {
                reporter: reporter.into(),
                term: 1,
                cells: cells
                    .iter()
                    .map(|(to, s)| RowCell { to: to.to_string(), state: *s, rtt_ms: Some(2.0), loss: 0.0 })
                    .collect(),
                reported_ms: at,
            },
        )
    }

    fn cell<'a>(m: &'a Matrix, from: &str, to: &str) -> &'a MatrixCell {
        m.cells.iter().find(|c| c.from == from && c.to == to).unwrap()
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
