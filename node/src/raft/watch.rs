//! Follow the Raft core's metrics: update Prometheus gauges, log leader changes, and report a
//! fatal error (the core stopped, e.g. on a storage I/O error) so the node shuts down.

use std::sync::Arc;

use atoll_raft_store::TypeConfig;
use openraft::RaftMetrics;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;
use crate::metrics::RoleLabels;
use crate::raft::Replica;

const ROLES: [(ServerState, &str); 4] = [
    (ServerState::Leader, "leader"),
    (ServerState::Follower, "follower"),
    (ServerState::Candidate, "candidate"),
    (ServerState::Learner, "learner"),
];

fn set(gauge: &Gauge, value: Option<u64>) {
    gauge.set(value.map_or(-1, |v| v as i64));
}

fn record(metrics: &Metrics, m: &RaftMetrics<TypeConfig>) {
    metrics.term.set(m.current_term as i64);
    for (state, name) in ROLES {
        metrics.role.get_or_create(&RoleLabels { role: name }).set(i64::from(m.state == state));
    }
    metrics.is_leader.set(i64::from(m.state == ServerState::Leader));
    set(&metrics.last_log_index, m.last_log_index);
    set(&metrics.commit_index, m.local_committed.map(|id| id.index));
    set(&metrics.last_applied_index, m.last_applied.map(|id| id.index));
    set(&metrics.snapshot_index, m.snapshot.map(|id| id.index));
    let lag = m.local_committed.map_or(0, |c| c.index + 1).saturating_sub(m.last_applied.map_or(0, |a| a.index + 1));
    metrics.apply_lag.set(lag as i64);
}

/// Runs until the core stops; returns the fatal error if it stopped on one.
pub(crate) async fn run(replica: Arc<Replica>) -> Option<String> {
    let mut rx = replica.raft.metrics();
    let mut leader: Option<u64> = None;
    let mut term = 0u64;
    loop {
        let m = rx.borrow_and_update().clone();
        record(&replica.metrics, &m);
        if let Err(fatal) = &m.running_state {
            return Some(fatal.to_string());
        }
        if (m.current_leader, m.current_term) != (leader, term) {
            if m.current_leader != leader {
                replica.metrics.leader_changes.inc();
            }
            match m.current_leader {
                Some(id) if id == replica.info().node_id => tracing::info!(term = m.current_term, "this replica leads"),
                Some(id) => tracing::info!(leader = id, term = m.current_term, "following a new leader"),
                None => tracing::info!(term = m.current_term, previous = ?leader, "no leader known"),
            }
            leader = m.current_leader;
            term = m.current_term;
        }
        if rx.changed().await.is_err() {
            return None;
        }
    }
}
