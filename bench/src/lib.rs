//! Benchmarks: each prints its own figures and the peer baseline's from the same run.
//!
//! - [`failover`]: write-unavailability after killing or pausing a leader, next to etcd's.
//! - [`gateway_failover`]: gateway replicas under SIGKILL: clusters heard again, scheduling
//!   again, jobs lost or doubled, next to etcd's leader election.
//! - [`convergence`]: how fast a cut (and a heal) between two clusters shows in the gateway's
//!   matrix, next to how fast etcd notices a dead leader.
//! - [`scale`]: one gateway under a thousand simulated clusters, next to etcd's write latency.
//! - [`jobs`]: jobs per second through a real mesh, and the time to move a dead cluster's jobs.
//! - [`transfer`]: a large output moved by each route (local, pull, push, relay), next to the
//!   machine's loopback TLS stream.
//! - [`peers`]: running the peer baseline's scripts and reading their summaries.
//! - [`args`]: the command line of the `atoll-bench` binary.
//!
//! The meshes they start run the `atoll` binary built beside `atoll-bench` (`target/release/`
//! after `scripts/bench`), exactly what an operator runs.

pub mod args;
pub mod convergence;
pub mod failover;
pub mod gateway_failover;
pub mod jobs;
pub mod peers;
pub mod scale;
pub mod transfer;

use std::time::Duration;

use anyhow::Context;

/// The `atoll` binary beside this one (`cargo build -p atoll -p atoll-bench` puts both in one
/// directory).
pub fn atoll_exe() -> anyhow::Result<std::path::PathBuf> {
    let own = std::env::current_exe().context("finding the atoll-bench binary")?;
    let exe = own.with_file_name("atoll");
    anyhow::ensure!(
        exe.is_file(),
        "{} is missing: build it beside atoll-bench (cargo build --release -p atoll -p atoll-bench; scripts/bench does)",
        exe.display()
    );
    Ok(exe)
}

/// Start a mesh with a gateway in `dir` from the `atoll` binary and wait until every cluster has a
/// leader, is registered, and the matrix is full; with an operator client of the replicas and
/// the gateway's client.
pub async fn ready_mesh(
    dir: &std::path::Path,
    layout: atoll_mesh::Layout,
) -> anyhow::Result<(atoll_mesh::Mesh, atoll_api::client::NodeClient, atoll_api::gateway_client::GatewayClient)> {
    let exe = crate::atoll_exe()?;
    let mut mesh = atoll_mesh::Mesh::start(atoll_mesh::MeshDir::new(dir), layout, exe).await?;
    let client = atoll::cli_config::CliConfig::load(&mesh.dir.cli_config())?.node_client()?;
    mesh.wait_for_leaders(&client, Duration::from_secs(60)).await?;
    mesh.wait_for_registration(Duration::from_secs(60)).await?;
    mesh.wait_for_matrix(Duration::from_secs(60)).await?;
    let gateway = mesh.gateway_client()?;
    Ok((mesh, client, gateway))
}

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Nearest-rank percentile, as the peer baseline computes it.
pub fn percentile(values: &[f64], p: usize) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let k = (n * p).div_ceil(100).max(1) - 1;
    v[k.min(n - 1)]
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// `median, p90, min, max` of a non-empty sample, for one summary line.
pub fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("median {:.0} p90 {:.0} min {:.0} max {:.0}", median(values), percentile(values, 90), min, max)
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_the_peer_baseline() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 90), 18.0);
        assert_eq!(median(&v), 10.5);
        assert_eq!(percentile(&[5.0], 90), 5.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(spread(&[3.0, 1.0, 2.0]), "median 2 p90 3 min 1 max 3");
    }
}
