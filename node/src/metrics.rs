//! Prometheus metrics of a replica, served on the ops listener. `docs/operations.md` lists every
//! metric with its meaning.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// append, heartbeat, vote, pre_vote, snapshot, transfer_leader, forward
    pub rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcErrorLabels {
    pub rpc: &'static str,
    /// unreachable, timeout, network
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// pull, push, relay
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    /// finished, failure, error, unstable, killed, lost
    pub state: &'static str,
}

/// Every metric of a replica.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub term: Gauge,
    pub role: Family<RoleLabels, Gauge>,
    pub is_leader: Gauge,
    pub leader_changes: Counter,
    pub last_log_index: Gauge,
    pub commit_index: Gauge,
    pub last_applied_index: Gauge,
    pub apply_lag: Gauge,
    pub snapshot_index: Gauge,
    pub rpc_duration: Family<RpcLabels, Histogram>,
    pub rpc_errors: Family<RpcErrorLabels, Counter>,
    pub fast_failovers: Counter,
    pub client_writes: Counter,
    pub job_runs_running: Gauge,
    pub job_runs_queued: Gauge,
    pub job_runs_ended: Family<EndLabels, Counter>,
    pub job_run_duration: Histogram,
    pub job_logs_truncated: Counter,
    pub transfer_inputs: Family<RouteLabels, Counter>,
    pub transfer_received_bytes: Family<RouteLabels, Counter>,
    pub transfer_duration: Family<RouteLabels, Histogram>,
    pub transfer_fallbacks: Counter,
    pub transfer_sent_bytes: Family<RouteLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn rpc_histogram() -> Histogram {
    // 100 us .. ~6.5 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("atoll");
        let metrics = Self {
            registry: Mutex::new(Registry::default()),
            term: Gauge::default(),
            role: Family::default(),
            is_leader: Gauge::default(),
            leader_changes: Counter::default(),
            last_log_index: Gauge::default(),
            commit_index: Gauge::default(),
            last_applied_index: Gauge::default(),
            apply_lag: Gauge::default(),
            snapshot_index: Gauge::default(),
            rpc_duration: Family::new_with_constructor(rpc_histogram),
            rpc_errors: Family::default(),
            fast_failovers: Counter::default(),
            client_writes: Counter::default(),
            job_runs_running: Gauge::default(),
            job_runs_queued: Gauge::default(),
            job_runs_ended: Family::default(),
            // 100 ms .. ~27 h
            job_run_duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.1, 3.0, 15)),
            job_logs_truncated: Counter::default(),
            transfer_inputs: Family::default(),
            transfer_received_bytes: Family::default(),
            // 10 ms .. ~11 h
            transfer_duration: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.01, 3.0, 15))
            }),
            transfer_fallbacks: Counter::default(),
            transfer_sent_bytes: Family::default(),
        };
        registry.register("raft_term", "Current Raft term", metrics.term.clone());
        registry.register("raft_role", "1 for the role this replica has now", metrics.role.clone());
        registry.register("raft_is_leader", "1 when this replica leads its cluster", metrics.is_leader.clone());
        registry.register("raft_leader_changes", "Times the known leader changed", metrics.leader_changes.clone());
        registry.register("raft_last_log_index", "Index of the last log entry", metrics.last_log_index.clone());
        registry.register(
            "raft_commit_index",
            "Index of the last committed entry known here",
            metrics.commit_index.clone(),
        );
        registry.register(
            "raft_last_applied_index",
            "Index of the last applied entry",
            metrics.last_applied_index.clone(),
        );
        registry.register("raft_apply_lag", "Committed entries not yet applied", metrics.apply_lag.clone());
        registry.register(
            "raft_snapshot_index",
            "Last index covered by the current snapshot",
            metrics.snapshot_index.clone(),
        );
        registry.register_with_unit(
            "raft_rpc_duration",
            "Duration of Raft RPCs this replica sent",
            prometheus_client::registry::Unit::Seconds,
            metrics.rpc_duration.clone(),
        );
        registry.register("raft_rpc_errors", "Raft RPCs that failed, by kind", metrics.rpc_errors.clone());
        registry.register(
            "raft_fast_failovers",
            "Elections started at once because the leader's process was seen to die",
            metrics.fast_failovers.clone(),
        );
        registry.register(
            "client_writes",
            "Writes committed through this replica as leader",
            metrics.client_writes.clone(),
        );
        registry.register(
            "job_runs_running",
            "Runs this replica's leader has going now",
            metrics.job_runs_running.clone(),
        );
        registry.register(
            "job_runs_queued",
            "Attempts this replica's leader holds that wait for a free slot (jobs.max_running)",
            metrics.job_runs_queued.clone(),
        );
        registry.register("job_runs_ended", "Runs ended here, by how they ended", metrics.job_runs_ended.clone());
        registry.register_with_unit(
            "job_run_duration",
            "Time from a run's start to its end on this replica",
            prometheus_client::registry::Unit::Seconds,
            metrics.job_run_duration.clone(),
        );
        registry.register(
            "job_logs_truncated",
            "Runs whose log went over jobs.log_limit_bytes (cut with a marker)",
            metrics.job_logs_truncated.clone(),
        );
        registry.register(
            "transfer_inputs",
            "Inputs from other clusters received into this cluster's store, by the route that brought them",
            metrics.transfer_inputs.clone(),
        );
        registry.register(
            "transfer_received_bytes",
            "Bytes of inputs from other clusters received here, by route",
            metrics.transfer_received_bytes.clone(),
        );
        registry.register_with_unit(
            "transfer_duration",
            "Time to bring an input from another cluster into this cluster's store, by route",
            prometheus_client::registry::Unit::Seconds,
            metrics.transfer_duration.clone(),
        );
        registry.register(
            "transfer_fallbacks",
            "Direct transfers (pull or push) that failed and fell back to the relay",
            metrics.transfer_fallbacks.clone(),
        );
        registry.register(
            "transfer_sent_bytes",
            "Bytes of outputs this replica pushed to another cluster or uploaded to the relay, by route",
            metrics.transfer_sent_bytes.clone(),
        );
        *metrics.registry.lock().expect("metrics registry") = registry;
        metrics
    }

    pub fn observe_rpc(&self, rpc: &'static str, elapsed: Duration) {
        self.rpc_duration.get_or_create(&RpcLabels { rpc }).observe(elapsed.as_secs_f64());
    }

    pub fn rpc_error(&self, rpc: &'static str, kind: &'static str) {
        self.rpc_errors.get_or_create(&RpcErrorLabels { rpc, kind }).inc();
    }

    /// The OpenMetrics text of every metric (`atoll_api::exposition` serves it as a scraper asks).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry");
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}
