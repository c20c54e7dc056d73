//! The clients that run through every fault: annotation writers (one per cluster, each write
//! through a replica picked by the seed) and a pipeline submitter whose jobs write what they
//! did to a ledger file the checkers read (the processes share this machine's filesystem).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use atoll_api::client::ClientError;
use atoll_api::client::NodeClient;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::jobs::SubmitRequest;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;

use crate::history::History;
use crate::history::OpKind;
use crate::history::Outcome;

/// Sort a client error into a definite failure (refused before it could take effect) or an
/// unknown outcome (the request may have been applied).
pub fn classify(error: &ClientError) -> Outcome {
    if error.surely_failed() { Outcome::Failed(error.to_string()) } else { Outcome::Unknown(error.to_string()) }
}

/// Write `chaos-<n>` annotations through `addrs` until `stop` turns true.
pub async fn annotation_writer(
    client: NodeClient,
    cluster: String,
    addrs: Vec<String>,
    history: Arc<History>,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let via = addrs[rng.random_range(0..addrs.len())].clone();
        let key = format!("chaos-{n}");
        let value = format!("{seed:x}-{n}");
        let invoked = history.now_ms();
        let outcome = tokio::select! {
            result = client.annotate(&via, &key, &value) => match result {
                Ok(_) => Outcome::Ok,
                Err(e) => classify(&e),
            },
            // Stopping mid-request leaves its outcome unknown.
            _ = stop.changed() => Outcome::Unknown("the run stopped while it was in flight".into()),
        };
        history.record(OpKind::Annotate { cluster: cluster.clone(), via, key, value }, invoked, outcome);
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..60))).await;
    }
}

/// The pipeline every submission carries: `make` writes random bytes and their SHA-256 to its
/// output and the ledger; `check` verifies what it received against the sum its parent wrote
/// and puts the sum it computed in the ledger. The jobs name no selector, so they can run on any
/// cluster (and be moved when one dies); `prefer` spreads them over two clusters so the edge
/// crosses clusters whenever both are alive.
pub fn pipeline_spec(ledger: &Path, make_on: &str, check_on: &str, run_ms: u64) -> serde_json::Value {
    let ledger = ledger.display();
    let sleep = format!("sleep {}.{:03}", run_ms / 1000, run_ms % 1000);
    serde_json::json!({
        "version": 1,
        "jobs": [
            {
                "name": "make",
                "type": "command",
                "command": format!(
                    "head -c 262144 /dev/urandom > \"$ATOLL_OUTPUT/data\" && sum=$(sha256sum \"$ATOLL_OUTPUT/data\" | cut -d' ' -f1) && echo \"$sum\" > \"$ATOLL_OUTPUT/sum\" && {sleep} && echo \"made $ATOLL_JOB_ID $ATOLL_ATTEMPT $sum\" >> {ledger}"
                ),
                "cluster": {"prefer": make_on},
                "timeout": 120,
            },
            {
                "name": "check",
                "type": "command",
                "command": format!(
                    "sum=$(sha256sum \"$ATOLL_INPUTS/make/data\" | cut -d' ' -f1) && test \"$sum\" = \"$(cat \"$ATOLL_INPUTS/make/sum\")\" && {sleep} && echo \"got $ATOLL_JOB_ID $ATOLL_ATTEMPT $sum\" >> {ledger}"
                ),
                "cluster": {"prefer": check_on},
                "depends_on": ["make"],
                "timeout": 120,
            },
        ],
    })
}

/// Submit a pipeline every `every` until `stop` turns true, alternating which cluster is
/// preferred for each end.
#[allow(clippy::too_many_arguments)]
pub async fn submitter(
    gateway: GatewayClient,
    clusters: Vec<String>,
    ledger: std::path::PathBuf,
    history: Arc<History>,
    every: Duration,
    run_ms: u64,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut n = 0usize;
    while !*stop.borrow() {
        n += 1;
        let make_on = &clusters[rng.random_range(0..clusters.len())];
        let others: Vec<&String> = clusters.iter().filter(|c| *c != make_on).collect();
        let check_on = others.get(rng.random_range(0..others.len().max(1))).copied().unwrap_or(make_on);
        let spec = pipeline_spec(&ledger, make_on, check_on, run_ms);
        let name = format!("p{n} {make_on}->{check_on}");
        let invoked = history.now_ms();
        let (pipeline, outcome) = match gateway.submit(&SubmitRequest { spec, files: Default::default() }).await {
            Ok(submitted) => (Some(submitted.pipeline), Outcome::Ok),
            Err(e) => (None, classify(&e)),
        };
        history.record(OpKind::Submit { name, pipeline }, invoked, outcome);
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
}

/// The gateway's matrix as the suite saw it: which directed links were reachable (any other
/// state, or no cell, is not), and when the question was asked and answered (ms since the
/// epoch).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MatrixSnapshot {
    pub asked_ms: i64,
    pub answered_ms: i64,
    /// (from, to) of every `reachable` cell.
    pub reachable: std::collections::BTreeSet<(String, String)>,
}

fn epoch_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Ask the gateway for its matrix every `every` until `stop` turns true (answers only; an
/// unanswered ask leaves a gap).
pub async fn matrix_watcher(
    gateway: GatewayClient,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> Vec<MatrixSnapshot> {
    let mut snapshots = Vec::new();
    while !*stop.borrow() {
        let asked_ms = epoch_ms();
        if let Ok(matrix) = gateway.matrix().await {
            let reachable = matrix
                .cells
                .iter()
                .filter(|c| c.state == atoll_api::gateway::LinkState::Reachable)
                .map(|c| (c.from.to_string(), c.to.to_string()))
                .collect();
            snapshots.push(MatrixSnapshot { asked_ms, answered_ms: epoch_ms(), reachable });
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
    snapshots
}
