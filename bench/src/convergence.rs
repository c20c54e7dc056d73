//! `atoll-bench convergence`: how long a cut between two clusters takes to show in the gateway's
//! matrix, and a heal to clear, in a running mesh.
//!
//! A mesh of three clusters (three replicas each, the gateway on SQLite, no cuts) runs with the
//! given probe interval. Per round, after a random pause (so cuts land at every phase of the probe
//! cycle): set the annotation `atoll.io/refuse-inbound-from=gcp` on `aws` (from then on `aws`
//! drops `gcp`'s connections), and poll `GET /v1/matrix` every 10 ms until the cell gcp->aws reads
//! `unreachable`; then delete the annotation and poll until it reads `reachable`. Times run from
//! the moment the annotation is sent (conservative: the cut is in force a few ms later) to the first matrix that
//! shows the new state: the prober's hysteresis (two failed probes, two successful ones) plus
//! the report and the gateway's join.
//!
//! The peer has no reachability matrix; the closest figure it has is how long it takes to notice
//! a failure and act on it (a new leader after a SIGKILL), which the peer baseline measures in
//! the same invocation.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use atoll_api::gateway::LinkState;
use atoll_api::gateway_client::GatewayClient;
use tokio::time::Instant;

use super::loadavg;
use super::ms;
use super::peers::etcd_failover;
use super::spread;
use atoll_mesh::GatewayTiming;
use atoll_mesh::Layout;

/// The annotation that cuts a link at run time.
const REFUSE: &str = "atoll.io/refuse-inbound-from";

#[derive(Debug, Clone, clap::Args)]
pub struct ConvergenceArgs {
    /// Cuts (each followed by a heal) per probe interval.
    #[arg(long, default_value_t = 20)]
    pub cuts: usize,
    /// Probe intervals to measure, in ms, each with its own mesh (1000 is the default).
    #[arg(long, value_delimiter = ',', default_value = "1000,250")]
    pub probe_intervals_ms: Vec<u64>,
    /// Replicas per cluster.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// The peer baseline directory (holds etcd-failover).
    #[arg(long, default_value = "../shared/peers")]
    pub peers: PathBuf,
    /// etcd failover runs in the same invocation; 0 skips etcd.
    #[arg(long, default_value_t = 10)]
    pub etcd_runs: usize,
    /// Give up on one transition after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub max_s: u64,
}

/// Gateway timing around a probe interval: the defaults, with the probe timeout at half the
/// interval (at most the default 500 ms).
fn timing(probe_ms: u64) -> GatewayTiming {
    GatewayTiming {
        heartbeat_interval_ms: 1_000,
        suspect_after_ms: 3_000,
        dead_after_ms: 10_000,
        probe_interval_ms: probe_ms,
        probe_timeout_ms: (probe_ms / 2).clamp(1, 500),
        row_interval_ms: 10_000.max(probe_ms),
        stale_after_ms: 5_000,
        cert_lifetime_s: 86_400,
    }
}

/// Poll the matrix until gcp->aws is `want`; returns when it was first seen, and whether
/// `suspect` showed on the way.
async fn wait_for(gateway: &GatewayClient, want: LinkState, max: Duration) -> anyhow::Result<(Instant, bool)> {
    let deadline = Instant::now() + max;
    let mut suspect_seen = false;
    loop {
        if let Ok(matrix) = gateway.matrix().await
            && let Some(cell) = matrix.cells.iter().find(|c| c.from == "gcp" && c.to == "aws")
        {
            if cell.state == want {
                return Ok((Instant::now(), suspect_seen));
            }
            suspect_seen |= cell.state == LinkState::Suspect;
        }
        anyhow::ensure!(Instant::now() < deadline, "gcp->aws did not become {want} within {max:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A pause in [0, bound), so that cuts land at every phase of the probe cycle.
fn jitter(bound: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    bound.mul_f64(f64::from(nanos % 1_000_000) / 1_000_000.0)
}

/// One mesh at one probe interval: `cuts` cut/heal rounds; returns (cut ms, heal ms) samples.
async fn measure(args: &ConvergenceArgs, probe_ms: u64) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let mut layout = Layout::new(3, args.replicas, 0)?.with_gateway(0)?;
    if let Some(gateway) = layout.gateway.as_mut() {
        gateway.timing = Some(timing(probe_ms));
    }
    let (mut mesh, client, gateway) = super::ready_mesh(dir.path(), layout).await?;
    let aws: Vec<String> = mesh.layout.cluster("aws").context("aws")?.replicas.iter().map(|r| r.addr()).collect();
    let max = Duration::from_secs(args.max_s);
    let interval = Duration::from_millis(probe_ms);
    let (mut cuts, mut heals) = (Vec::new(), Vec::new());
    println!("## probe interval {probe_ms} ms: {} cuts, load {}", args.cuts, loadavg());
    for round in 1..=args.cuts {
        tokio::time::sleep(interval + jitter(interval)).await;
        let cut_at = Instant::now();
        client.annotate(&aws[round % aws.len()], REFUSE, "gcp").await.context("cutting gcp->aws")?;
        let (seen, suspect) = wait_for(&gateway, LinkState::Unreachable, max).await?;
        let cut = ms(seen - cut_at);
        tokio::time::sleep(interval + jitter(interval)).await;
        let heal_at = Instant::now();
        client.delete_annotation(&aws[round % aws.len()], REFUSE).await.context("healing gcp->aws")?;
        let (healed, _) = wait_for(&gateway, LinkState::Reachable, max).await?;
        let heal = ms(healed - heal_at);
        println!(
            "round {round:>2}: cut -> unreachable {cut:>6.0} ms ({:.2} probe intervals{}), heal -> reachable {heal:>6.0} ms ({:.2})",
            cut / probe_ms as f64,
            if suspect { ", suspect seen" } else { "" },
            heal / probe_ms as f64
        );
        cuts.push(cut);
        heals.push(heal);
    }
    mesh.stop_all(Duration::from_secs(15)).await;
    Ok((cuts, heals))
}

pub async fn run(args: ConvergenceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.cuts >= 1, "--cuts must be 1 or more");
    anyhow::ensure!(args.probe_intervals_ms.iter().all(|&p| p >= 50), "--probe-intervals-ms must each be 50 or more");
    let etcd_script = args.peers.join("etcd-failover");
    anyhow::ensure!(
        args.etcd_runs == 0 || etcd_script.exists(),
        "{} not found: pass --peers DIR, or --etcd-runs 0 to skip the peer",
        etcd_script.display()
    );
    println!(
        "# atoll-bench convergence: 3 clusters x {} replicas, gateway on SQLite, load {}",
        args.replicas,
        loadavg()
    );
    let mut results = Vec::new();
    for &probe_ms in &args.probe_intervals_ms {
        let (cuts, heals) = measure(&args, probe_ms).await?;
        results.push((probe_ms, cuts, heals));
    }
    println!("## summary (ms from the cut or heal to the first matrix showing it; nearest-rank p90)");
    for (probe_ms, cuts, heals) in &results {
        let per = |v: &[f64]| v.iter().map(|x| x / *probe_ms as f64).collect::<Vec<_>>();
        let intervals = |v: &[f64]| {
            let p = per(v);
            format!(
                "median {:.2} p90 {:.2} max {:.2}",
                super::median(&p),
                super::percentile(&p, 90),
                p.iter().copied().fold(0.0, f64::max)
            )
        };
        println!(
            "probe {probe_ms} ms: cut  -> unreachable {} ms; in probe intervals {}",
            spread(cuts),
            intervals(cuts)
        );
        println!(
            "probe {probe_ms} ms: heal -> reachable   {} ms; in probe intervals {}",
            spread(heals),
            intervals(heals)
        );
    }
    if args.etcd_runs > 0 {
        println!("## peer: etcd noticing a dead leader (50/250 ms, pre-vote), same invocation");
        let etcd = etcd_failover(&etcd_script, args.etcd_runs).await?;
        println!(
            "etcd new leader after SIGKILL: median {:.0} p90 {:.0} ms (write-unavailability median {:.0} p90 {:.0})",
            etcd.new_leader.median, etcd.new_leader.p90, etcd.write.median, etcd.write.p90
        );
        for (probe_ms, cuts, _) in &results {
            println!(
                "ratio ours/etcd (cut detection at probe {probe_ms} ms / etcd leader-loss detection): median {:.2} p90 {:.2}",
                super::median(cuts) / etcd.new_leader.median,
                super::percentile(cuts, 90) / etcd.new_leader.p90
            );
        }
    }
    Ok(())
}
