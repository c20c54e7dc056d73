//! Gateway replicas under SIGKILL: how long clusters and the scheduler go without a gateway.
//!
//! A mesh with three gateway replicas over one PostgreSQL server (the mesh's own, fsync on) and
//! a pipeline of one job submitted every `--submit-every-ms` through the CLI's client (which
//! knows every replica) throughout. Each round SIGKILLs one replica, alternately the one the
//! cluster leaders use (the one whose heartbeat counter grows fastest; the lease holder only
//! when the leaders use nothing else) and the duties lease holder, measures, then restarts it.
//!
//! Measured per round, from the kill (wall clock, the same machine's as the replicas'):
//! - **heartbeat**: until every cluster's next heartbeat accepted by any replica (the receive
//!   time each replica writes to the registry row);
//! - **lease**: until another replica took the lease (holder rounds);
//! - **binding**: until the next job was bound to a cluster (the next scheduling pass that
//!   placed work; jobs arrive every `--submit-every-ms`);
//!
//! and over the whole run: submit-to-start of the jobs submitted within `--window-ms` after a
//! kill and of the others; **lost** jobs (acknowledged, never finished) and **doubled** jobs
//! (an attempt bound while another attempt of the same job was still bound). The peer is etcd:
//! the time its 3-member cluster takes to elect a new leader after a SIGKILL, in the same run.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use atoll_api::jobs::SubmitRequest;
use atoll_gateway::now_ms;
use sqlx::Row;

use crate::median;
use crate::percentile;

#[derive(Debug, clap::Args)]
pub struct GatewayFailoverArgs {
    /// Rounds of each kind (the replica the leaders use; the lease holder).
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// Gateway replicas.
    #[arg(long, default_value_t = 3)]
    pub gateways: usize,
    /// Clusters.
    #[arg(long, default_value_t = 3)]
    pub clusters: usize,
    /// Replicas per cluster.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// A one-job pipeline is submitted this often.
    #[arg(long, default_value_t = 200)]
    pub submit_every_ms: u64,
    /// Jobs submitted within this long after a kill count as submitted in the window.
    #[arg(long, default_value_t = 10_000)]
    pub window_ms: u64,
    /// The longest a round waits for its measurements.
    #[arg(long, default_value_t = 20_000)]
    pub round_timeout_ms: u64,
    /// The peer baseline (its `etcd-failover` script).
    #[arg(long, default_value = "../shared/peers")]
    pub peers: PathBuf,
    /// etcd leader kills for the peer figure (0: skip).
    #[arg(long, default_value_t = 10)]
    pub etcd_runs: usize,
    /// Keep the mesh directory here instead of removing it.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// The replica the cluster leaders use.
    Used,
    /// The duties lease holder.
    Holder,
}

#[derive(Debug, Default)]
struct Round {
    heartbeat_ms: Option<f64>,
    lease_ms: Option<f64>,
    binding_ms: Option<f64>,
    killed_holder: bool,
}

/// What the submitter recorded: `(submitted at, job id)` of each acknowledged submission, and
/// how many were refused.
#[derive(Debug, Default)]
struct Submitted {
    acked: Vec<(i64, String)>,
    refused: usize,
}

fn pool(mesh: &atoll_mesh::Mesh) -> anyhow::Result<sqlx::PgPool> {
    let url = mesh.postgres().context("the mesh runs no PostgreSQL server")?.url().to_string();
    Ok(sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_lazy(&url)?)
}

/// Each replica's heartbeat counter (from its ops listener), by index.
async fn heartbeat_counts(mesh: &atoll_mesh::Mesh) -> BTreeMap<usize, f64> {
    let http = reqwest::Client::new();
    let mut counts = BTreeMap::new();
    let Some(gateway) = &mesh.layout.gateway else { return counts };
    for (i, replica) in gateway.replicas.iter().enumerate() {
        let url = format!("http://{}/metrics", replica.ops_addr());
        let Ok(response) = http.get(&url).timeout(Duration::from_secs(2)).send().await else { continue };
        let Ok(text) = response.text().await else { continue };
        if let Some(value) = text
            .lines()
            .find(|l| l.starts_with("atoll_gateway_heartbeats_total "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
        {
            counts.insert(i, value);
        }
    }
    counts
}

/// The replica index the leaders use most now, and the lease holder's index.
async fn targets(mesh: &atoll_mesh::Mesh) -> anyhow::Result<(usize, usize)> {
    let ids: Vec<String> =
        mesh.layout.gateway.as_ref().context("no gateway")?.replicas.iter().map(|r| r.id.clone()).collect();
    let holder = mesh
        .gateway_client()?
        .gateways()
        .await?
        .into_iter()
        .find(|g| g.holds_lease)
        .and_then(|g| ids.iter().position(|id| *id == g.id))
        .context("no replica holds the lease")?;
    let before = heartbeat_counts(mesh).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let after = heartbeat_counts(mesh).await;
    let mut grown: Vec<(f64, usize)> =
        after.iter().map(|(i, n)| (n - before.get(i).copied().unwrap_or(*n), *i)).filter(|(d, _)| *d > 0.0).collect();
    grown.sort_by(|a, b| b.0.total_cmp(&a.0));
    let used = grown.iter().find(|(_, i)| *i != holder).or(grown.first()).map(|(_, i)| *i).unwrap_or(holder);
    Ok((used, holder))
}

/// Every cluster's last heartbeat time in the registry.
async fn last_seen(pool: &sqlx::PgPool) -> anyhow::Result<BTreeMap<String, i64>> {
    let rows =
        sqlx::query("SELECT name, last_seen_ms FROM clusters WHERE last_seen_ms IS NOT NULL").fetch_all(pool).await?;
    rows.iter().map(|r| Ok((r.try_get("name")?, r.try_get("last_seen_ms")?))).collect()
}

async fn measure(
    pool: &sqlx::PgPool,
    clusters: &BTreeSet<String>,
    killed_at: i64,
    holder: bool,
    timeout: Duration,
) -> anyhow::Result<Round> {
    let started = tokio::time::Instant::now();
    let mut round = Round { killed_holder: holder, ..Round::default() };
    let since = |t: i64| (t - killed_at).max(0) as f64;
    while started.elapsed() < timeout {
        if round.heartbeat_ms.is_none() {
            let seen = last_seen(pool).await.unwrap_or_default();
            let heard: Vec<i64> =
                clusters.iter().filter_map(|c| seen.get(c).copied().filter(|t| *t > killed_at)).collect();
            if heard.len() == clusters.len() {
                round.heartbeat_ms = heard.into_iter().max().map(since);
            }
        }
        if holder && round.lease_ms.is_none() {
            let taken: Option<i64> =
                sqlx::query_scalar("SELECT MIN(acquired_ms) FROM gateway_lease_history WHERE acquired_ms > $1")
                    .bind(killed_at)
                    .fetch_one(pool)
                    .await
                    .unwrap_or(None);
            round.lease_ms = taken.map(since);
        }
        if round.binding_ms.is_none() {
            let bound: Option<i64> = sqlx::query_scalar("SELECT MIN(bound_ms) FROM attempts WHERE bound_ms > $1")
                .bind(killed_at)
                .fetch_one(pool)
                .await
                .unwrap_or(None);
            round.binding_ms = bound.map(since);
        }
        if round.heartbeat_ms.is_some() && round.binding_ms.is_some() && (!holder || round.lease_ms.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(round)
}

/// Submit a one-job pipeline every `every` until `stop`.
async fn submit_forever(
    client: atoll_api::gateway_client::GatewayClient,
    every: Duration,
    out: Arc<Mutex<Submitted>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let spec = serde_json::json!({"version": 1, "jobs": [{"name": "a", "type": "command", "command": "true", "timeout": 600}]});
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let at = now_ms();
        match client.submit(&SubmitRequest { spec: spec.clone(), files: Default::default() }).await {
            Ok(done) => {
                if let Some(job) = done.jobs.first() {
                    out.lock().expect("submitted").acked.push((at, job.id.to_string()));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "a submission was refused");
                out.lock().expect("submitted").refused += 1;
            }
        }
    }
}

fn line(name: &str, values: &[f64]) {
    if values.is_empty() {
        println!("  {name:<44} (no sample)");
        return;
    }
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    println!(
        "  {name:<44} median {:>7.0} ms  p90 {:>7.0} ms  max {:>7.0} ms  (n={})",
        median(values),
        percentile(values, 90),
        max,
        values.len()
    );
}

pub async fn run(args: GatewayFailoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.gateways >= 2, "--gateways must be 2 or more (a kill needs a replica to move to)");
    let dir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            tempfile::Builder::new().prefix("gateway-failover-").tempdir_in(dir)?
        }
        None => tempfile::Builder::new().prefix("atoll-bench-gateway-failover-").tempdir()?,
    };
    let layout = atoll_mesh::Layout::new(args.clusters, args.replicas, 0)?
        .with_gateway_replicas(args.gateways, 0)?
        .with_postgres(0)?;
    println!(
        "gateway failover: {} replicas over PostgreSQL (fsync on), {} clusters x {} replicas, default timing (heartbeats every 1 s, lease TTL 5 s, renew 1 s, retry 0.5 s); a pipeline every {} ms; {} rounds of each kind; load {}",
        args.gateways,
        args.clusters,
        args.replicas,
        args.submit_every_ms,
        args.rounds,
        crate::loadavg()
    );
    let (mut mesh, _nodes, _gateway) = crate::ready_mesh(dir.path(), layout).await?;
    let pool = pool(&mesh)?;
    let clusters: BTreeSet<String> = mesh.layout.clusters.iter().map(|c| c.name.clone()).collect();
    let client = atoll::cli_config::CliConfig::load(&mesh.dir.cli_config())?.gateway_client()?;
    let submitted = Arc::new(Mutex::new(Submitted::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let submitter =
        tokio::spawn(submit_forever(client, Duration::from_millis(args.submit_every_ms), submitted.clone(), stop_rx));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut rounds: Vec<(Target, Round)> = Vec::new();
    let mut kills: Vec<i64> = Vec::new();
    for i in 0..2 * args.rounds {
        let target = if i % 2 == 0 { Target::Used } else { Target::Holder };
        let (used, holder) = targets(&mesh).await?;
        let index = if target == Target::Used { used } else { holder };
        let killed_at = now_ms();
        mesh.kill_gateway(index);
        kills.push(killed_at);
        let round =
            measure(&pool, &clusters, killed_at, index == holder, Duration::from_millis(args.round_timeout_ms)).await?;
        println!(
            "round {:>2} {:?} (replica {}{}): heartbeat {:?} ms, lease {:?} ms, binding {:?} ms",
            i + 1,
            target,
            index,
            if index == holder { ", the holder" } else { "" },
            round.heartbeat_ms,
            round.lease_ms,
            round.binding_ms
        );
        rounds.push((target, round));
        mesh.spawn_gateway(index)?;
        mesh.wait_for_gateway(index, Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let _ = stop_tx.send(true);
    let _ = submitter.await;

    // Every acknowledged job must finish; wait for the last ones.
    let acked: Vec<(i64, String)> = submitted.lock().expect("submitted").acked.clone();
    let refused = submitted.lock().expect("submitted").refused;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let unfinished = loop {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE finished_ms IS NULL").fetch_one(&pool).await?;
        if n == 0 || tokio::time::Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let ids: BTreeSet<&str> = acked.iter().map(|(_, id)| id.as_str()).collect();
    let stored: BTreeSet<String> = sqlx::query_scalar("SELECT id FROM jobs WHERE state = 'finished'")
        .fetch_all(&pool)
        .await?
        .into_iter()
        .collect();
    let lost = ids.iter().filter(|id| !stored.contains(**id)).count();
    // An attempt bound while an earlier attempt of the job was still bound: placed twice.
    let doubled: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT a.job_id) FROM attempts a JOIN attempts b ON a.job_id = b.job_id AND a.attempt < b.attempt
         WHERE a.ended_ms IS NULL OR a.ended_ms > b.bound_ms",
    )
    .fetch_one(&pool)
    .await?;
    let starts: Vec<(String, i64, i64)> = sqlx::query(
        "SELECT j.id, j.created_ms, MIN(a.bound_ms) AS bound FROM jobs j JOIN attempts a ON a.job_id = j.id GROUP BY j.id, j.created_ms",
    )
    .fetch_all(&pool)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("id")?, r.try_get("created_ms")?, r.try_get("bound")?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let started: BTreeMap<&str, f64> = starts.iter().map(|(id, c, b)| (id.as_str(), (b - c) as f64)).collect();
    let in_window = |at: i64| kills.iter().any(|k| at >= *k && at < k + args.window_ms as i64);
    let (mut window, mut calm) = (Vec::new(), Vec::new());
    for (at, id) in &acked {
        if let Some(ms) = started.get(id.as_str()) {
            if in_window(*at) { window.push(*ms) } else { calm.push(*ms) }
        }
    }

    // Grouped by what was killed: the leaders often use the holder (the first replica listed),
    // so a round aimed at "the replica the leaders use" may kill the holder too.
    let pick = |holder: bool, f: fn(&Round) -> Option<f64>| -> Vec<f64> {
        rounds.iter().filter(|(_, r)| r.killed_holder == holder).filter_map(|(_, r)| f(r)).collect()
    };
    let count = |holder: bool| rounds.iter().filter(|(_, r)| r.killed_holder == holder).count();
    let aimed_at_used = rounds.iter().filter(|(t, _)| *t == Target::Used).count();
    let used_was_holder = rounds.iter().filter(|(t, r)| *t == Target::Used && r.killed_holder).count();
    println!(
        "\ngateway failover ({} kills; median / p90 / max, ms from the SIGKILL; of the {aimed_at_used} kills of the replica the leaders used, {used_was_holder} hit the holder too):",
        rounds.len()
    );
    println!(" a replica the leaders use, not the holder ({} kills):", count(false));
    line("every cluster's next accepted heartbeat", &pick(false, |r| r.heartbeat_ms));
    line("the next job bound (scheduling)", &pick(false, |r| r.binding_ms));
    println!(" the duties lease holder ({} kills):", count(true));
    line("every cluster's next accepted heartbeat", &pick(true, |r| r.heartbeat_ms));
    line("another replica took the lease", &pick(true, |r| r.lease_ms));
    line("the next job bound (scheduling)", &pick(true, |r| r.binding_ms));
    println!(" jobs:");
    line(&format!("submit to bound, submitted within {} s of a kill", args.window_ms / 1000), &window);
    line("submit to bound, the others", &calm);
    println!(
        "  acknowledged {}, refused at submit {}, lost {lost}, doubled {doubled}, unfinished at the end {unfinished}",
        acked.len(),
        refused
    );
    let never = rounds.iter().filter(|(_, r)| r.heartbeat_ms.is_none()).count();
    if never > 0 {
        println!("  rounds where some cluster was not heard within {} ms: {never}", args.round_timeout_ms);
    }
    println!(
        "  goals: heartbeats on a live replica within 2 heartbeat intervals (2,000 ms); scheduling within the lease TTL + 1 s (6,000 ms); 0 lost, 0 doubled"
    );

    if args.etcd_runs > 0 {
        let script = args.peers.join("etcd-failover");
        anyhow::ensure!(
            script.is_file(),
            "{} not found: pass --peers DIR (the peer baseline), or --etcd-runs 0 to skip etcd",
            script.display()
        );
        drop(mesh);
        let etcd = crate::peers::etcd_failover(&script, args.etcd_runs).await?;
        let holder_binding = pick(true, |r| r.binding_ms);
        println!(
            "peer (same run): etcd 3 members, leader SIGKILL: a new leader after median {:.0} ms (p90 {:.0}); writes again after median {:.0} ms",
            etcd.new_leader.median, etcd.new_leader.p90, etcd.write.median
        );
        if !holder_binding.is_empty() {
            println!(
                "ratio: atoll scheduling again after the holder's death / etcd's new leader = {:.1}x",
                median(&holder_binding) / etcd.new_leader.median.max(1.0)
            );
        }
    } else {
        drop(mesh);
    }
    Ok(())
}
