//! Prometheus metrics of the gateway.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Flush {
    /// heartbeats, rows
    pub what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// alive, suspect, dead, revoked
    pub state: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    /// Clusters by observed state, set at each scrape.
    pub clusters: Family<StateLabel, Gauge>,
    pub heartbeats: Counter,
    pub fenced: Counter,
    pub rows: Counter,
    pub enrollments: Family<Outcome, Counter>,
    pub renewals: Counter,
    pub flush_duration: Family<Flush, Histogram>,
    pub flush_errors: Family<Flush, Counter>,
    pub pipelines: Counter,
    pub jobs_submitted: Counter,
    pub jobs_assigned: Counter,
    /// Job reports by outcome (accepted, duplicate, refused).
    pub reports: Family<Outcome, Counter>,
    pub jobs_rerouted: Counter,
    /// Blobs retention removed from the relay store.
    pub blobs_removed: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let metrics = Self {
            registry: Mutex::new(Registry::default()),
            clusters: Family::default(),
            heartbeats: Counter::default(),
            fenced: Counter::default(),
            rows: Counter::default(),
            enrollments: Family::default(),
            renewals: Counter::default(),
            flush_duration: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14))
            }),
            flush_errors: Family::default(),
            pipelines: Counter::default(),
            jobs_submitted: Counter::default(),
            jobs_assigned: Counter::default(),
            reports: Family::default(),
            jobs_rerouted: Counter::default(),
            blobs_removed: Counter::default(),
        };
        let mut registry = Registry::with_prefix("atoll_gateway");
        registry.register("clusters", "Clusters by observed state (revoked ones apart)", metrics.clusters.clone());
        registry.register("heartbeats", "Cluster leader heartbeats received", metrics.heartbeats.clone());
        registry.register("fenced", "Heartbeats and rows refused for a stale term", metrics.fenced.clone());
        registry.register("rows", "Matrix rows received", metrics.rows.clone());
        registry.register("enrollments", "Enrollment attempts by outcome", metrics.enrollments.clone());
        registry.register("renewals", "Certificates renewed", metrics.renewals.clone());
        registry.register_with_unit(
            "flush_duration",
            "Duration of batched database writes",
            prometheus_client::registry::Unit::Seconds,
            metrics.flush_duration.clone(),
        );
        registry.register("flush_errors", "Batched database writes that failed", metrics.flush_errors.clone());
        registry.register("pipelines", "Pipelines submitted", metrics.pipelines.clone());
        registry.register("jobs_submitted", "Jobs submitted", metrics.jobs_submitted.clone());
        registry.register("jobs_assigned", "Job attempts bound to a cluster", metrics.jobs_assigned.clone());
        registry.register("reports", "Job reports from clusters by outcome", metrics.reports.clone());
        registry.register(
            "jobs_rerouted",
            "Job attempts moved off dead or revoked clusters",
            metrics.jobs_rerouted.clone(),
        );
        registry.register(
            "blobs_removed",
            "Blobs retention removed from the relay store",
            metrics.blobs_removed.clone(),
        );
        *metrics.registry.lock().expect("metrics registry") = registry;
        metrics
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock().expect("metrics registry"));
        out
    }
}
