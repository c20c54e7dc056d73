//! Prometheus metrics of the gateway: its registry, the HTTP middleware that counts and times
//! every API request, and what a scrape reads fresh (clusters, matrix cells, unfinished jobs).
//! `docs/operations.md` lists every metric with its meaning.

use std::sync::Arc;
use std::sync::Mutex;

use atoll_api::jobs::JobState;
use atoll_api::jobs::Route;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use prometheus_client::registry::Unit;

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
    /// alive, suspect, dead, revoked (clusters); reachable, suspect, unreachable, unknown
    /// (matrix cells); waiting, queued, assigned, running (jobs); a final job state (ends)
    pub state: &'static str,
}

/// An API request: the route as routed (`/v1/jobs/{id}`, not the path asked), the method, and
/// the status answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRequest {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRoute {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    /// received (chunks uploaded to the gateway's store), sent (chunks read from it)
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransferRoute {
    /// local, pull, push, relay
    pub route: &'static str,
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
    pub http_requests: Family<HttpRequest, Counter>,
    pub http_duration: Family<HttpRoute, Histogram>,
    /// Matrix cells by state, set at each scrape.
    pub matrix_cells: Family<StateLabel, Gauge>,
    /// Round-trip times of the reachable cells in accepted rows.
    pub matrix_rtt: Histogram,
    /// Chunk bytes into and out of the gateway's store.
    pub relay_bytes: Family<Direction, Counter>,
    /// Routes given to edges (each new decision for an edge and attempt).
    pub transfer_routes: Family<TransferRoute, Counter>,
    /// Edges moved to the relay after a direct transfer failed.
    pub transfer_fallbacks: Counter,
    /// Unfinished jobs by state, set at each scrape.
    pub jobs: Family<StateLabel, Gauge>,
    /// Jobs that reached a final state, by that state.
    pub job_ends: Family<StateLabel, Counter>,
    /// From a job's submission to its end, by final state.
    pub job_duration: Family<StateLabel, Histogram>,
    /// 1 while this replica holds the duties lease, else 0 (set at each scrape).
    pub lease_held: Gauge,
    /// The lease generation this replica holds or last held (0: never), at each scrape.
    pub lease_generation: Gauge,
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
            flush_duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 14))),
            flush_errors: Family::default(),
            pipelines: Counter::default(),
            jobs_submitted: Counter::default(),
            jobs_assigned: Counter::default(),
            reports: Family::default(),
            jobs_rerouted: Counter::default(),
            blobs_removed: Counter::default(),
            http_requests: Family::default(),
            // 0.5 ms .. 16 s; lease long polls land in +Inf.
            http_duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            matrix_cells: Family::default(),
            // 0.1 ms .. 3.3 s
            matrix_rtt: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            relay_bytes: Family::default(),
            transfer_routes: Family::default(),
            transfer_fallbacks: Counter::default(),
            jobs: Family::default(),
            job_ends: Family::default(),
            // 0.1 s .. 3.6 h
            lease_held: Gauge::default(),
            lease_generation: Gauge::default(),
            job_duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.1, 2.0, 18))),
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
            Unit::Seconds,
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
        registry.register(
            "http_requests",
            "API requests answered, by method, route template and status",
            metrics.http_requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from an API request to its answer's headers, by method and route template",
            Unit::Seconds,
            metrics.http_duration.clone(),
        );
        registry.register(
            "matrix_cells",
            "Directed matrix cells by state, at the scrape",
            metrics.matrix_cells.clone(),
        );
        registry.register_with_unit(
            "matrix_rtt",
            "Round-trip times of reachable links as leaders report them in their rows",
            Unit::Seconds,
            metrics.matrix_rtt.clone(),
        );
        registry.register_with_unit(
            "relay",
            "Chunk bytes received into and sent from the gateway's store (relayed outputs and sources)",
            Unit::Bytes,
            metrics.relay_bytes.clone(),
        );
        registry.register(
            "transfer_routes",
            "Routes given to inputs crossing clusters, each new decision per edge and attempt",
            metrics.transfer_routes.clone(),
        );
        registry.register(
            "transfer_fallbacks",
            "Edges moved to the relay because a direct transfer failed",
            metrics.transfer_fallbacks.clone(),
        );
        registry.register("jobs", "Unfinished jobs by state, at the scrape (the whole database)", metrics.jobs.clone());
        registry.register("job_ends", "Jobs that reached a final state, by that state", metrics.job_ends.clone());
        registry.register_with_unit(
            "job_duration",
            "Time from a job's submission to its end, by final state",
            Unit::Seconds,
            metrics.job_duration.clone(),
        );
        registry.register(
            "lease_held",
            "1 while this replica holds the duties lease (runs scheduling, rerouting, retention), else 0",
            metrics.lease_held.clone(),
        );
        registry.register(
            "lease_generation",
            "The duties lease generation this replica holds or last held (0: never)",
            metrics.lease_generation.clone(),
        );
        *metrics.registry.lock().expect("metrics registry") = registry;
        // Counters with a small known set of labels start at zero, so every series exists from
        // the first scrape (rates and absent-series alerts need them).
        for direction in ["received", "sent"] {
            let _ = metrics.relay_bytes.get_or_create(&Direction { direction });
        }
        for route in [Route::Local, Route::Pull, Route::Push, Route::Relay] {
            let _ = metrics.transfer_routes.get_or_create(&TransferRoute { route: route.as_str() });
        }
        for state in JobState::ALL.into_iter().filter(|state| state.is_final()) {
            let _ = metrics.job_ends.get_or_create(&StateLabel { state: state.as_str() });
        }
        metrics
    }

    /// A job reached the final `state`; it was submitted at `created_ms`.
    pub fn job_ended(&self, state: JobState, created_ms: i64) {
        let label = StateLabel { state: state.as_str() };
        self.job_ends.get_or_create(&label).inc();
        let seconds = crate::now_ms().saturating_sub(created_ms).max(0) as f64 / 1000.0;
        self.job_duration.get_or_create(&label).observe(seconds);
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock().expect("metrics registry"));
        out
    }
}

/// The route a chunk of the gateway's store travels on.
const CHUNK_ROUTE: &str = "/v1/blobs/{digest}/chunks/{index}";

/// Middleware of the API router: count and time every request by method, route template and
/// status, and count the chunk bytes that enter and leave the gateway's store.
pub async fn observe_http(
    axum::extract::State(gateway): axum::extract::State<Arc<crate::Gateway>>,
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = tokio::time::Instant::now();
    let method = request.method().clone();
    // Labels come from a bounded set: routes as routed, methods HTTP defines (any other is
    // `other`), so a client cannot make new series at will.
    let method_label = match method.as_str() {
        known @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS") => known,
        _ => "other",
    };
    let route = matched.as_ref().map_or("unmatched", |m| m.as_str()).to_string();
    let sent_len = content_length(request.headers());
    let response = next.run(request).await;
    let metrics = &gateway.metrics;
    let status = response.status();
    metrics
        .http_duration
        .get_or_create(&HttpRoute { method: method_label.to_string(), route: route.clone() })
        .observe(started.elapsed().as_secs_f64());
    if route == CHUNK_ROUTE && status.is_success() {
        if method == axum::http::Method::PUT {
            metrics.relay_bytes.get_or_create(&Direction { direction: "received" }).inc_by(sent_len.unwrap_or(0));
        } else if method == axum::http::Method::GET {
            let len = content_length(response.headers())
                .or_else(|| axum::body::HttpBody::size_hint(response.body()).exact())
                .unwrap_or(0);
            metrics.relay_bytes.get_or_create(&Direction { direction: "sent" }).inc_by(len);
        }
    }
    metrics
        .http_requests
        .get_or_create(&HttpRequest { method: method.to_string(), route, status: status.as_u16() })
        .inc();
    response
}

fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers.get(axum::http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
