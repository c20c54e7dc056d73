//! `atoll-bench dispatch` and `atoll-bench reroute`: jobs through a real mesh.
//!
//! **dispatch**: three clusters x three replicas (process executor) and a gateway on SQLite or
//! PostgreSQL. `--jobs` trivial jobs (`true`, no selector: spread by load) are submitted as
//! pipelines of `--per-pipeline` independent jobs by `--submitters` concurrent clients; the
//! clock runs from the first submission to the last result recorded at the gateway. Each job
//! goes through: one insert (with its pipeline), a scheduling pass, a lease answer, one Raft
//! entry per lease answer (accepted + started), a process, a Raft entry per batch of ends, a
//! `running` and a final report (batched), and an acknowledgement entry. Submit-to-start is
//! from the job's creation to the gateway recording its `running` report.
//!
//! **reroute**: the same mesh with the gateway's default bounds (dead after 10 s without a
//! heartbeat). Per run, `--jobs-per-run` long jobs are placed on `aws` (`prefer`), every `aws`
//! replica is SIGKILLed once they run, and the clock runs until every one of them is running on
//! another cluster; then they are cancelled and `aws` is restarted for the next run.
//!
//! The peer figure in the same invocation is etcd's writes per second at 64 connections: a job
//! costs several replicated writes, so the ratio says how much of the machine's replicated-write
//! capacity a job costs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::jobs::JobState;
use atoll_api::jobs::SubmitRequest;
use tokio::time::Instant;

use super::loadavg;
use super::median;
use super::peers::etcd_throughput;
use super::percentile;
use super::scale::Engine;
use super::spread;
use atoll::cli_config::CliConfig;
use atoll_mesh::Layout;
use atoll_mesh::Mesh;
use atoll_mesh::MeshDir;

#[derive(Debug, Clone, clap::Args)]
pub struct DispatchArgs {
    /// Jobs in all.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// Jobs per pipeline.
    #[arg(long, default_value_t = 500)]
    pub per_pipeline: usize,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 4)]
    pub submitters: usize,
    /// Database engines, one mesh each.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    pub engines: Vec<Engine>,
    /// A PostgreSQL server to create throwaway databases on (or ATOLL_TEST_POSTGRES_URL).
    #[arg(long, env = "ATOLL_TEST_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// The peer baseline directory (holds etcd-throughput).
    #[arg(long, default_value = "../shared/peers")]
    pub peers: PathBuf,
    /// Seconds of etcd throughput in the same invocation; 0 skips etcd.
    #[arg(long, default_value_t = 10)]
    pub etcd_seconds: u64,
    /// Give up after this many seconds per engine.
    #[arg(long, default_value_t = 600)]
    pub max_s: u64,
    /// `jobs.max_running` of every leader (default: the agent's, 32).
    #[arg(long)]
    pub max_running: Option<usize>,
    /// Runs per engine (interleaved: every engine once, then again), for a median and a spread.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RerouteArgs {
    /// Runs (kill aws, wait for its jobs elsewhere, restore).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Jobs on aws per run.
    #[arg(long, default_value_t = 10)]
    pub jobs_per_run: usize,
    /// Give up on one run after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub max_s: u64,
}

/// A started mesh with its gateway's database open for reading.
struct Bench {
    mesh: Mesh,
    gateway: GatewayClient,
    db: atoll_gateway::db::Db,
    _dir: tempfile::TempDir,
    _database: Option<atoll_gateway::testing::TestDatabase>,
}

impl Bench {
    async fn start(engine: Engine, postgres_url: Option<&str>, max_running: Option<usize>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let mut layout = Layout::new(3, 3, 0)?.with_gateway(0)?;
        for cluster in &mut layout.clusters {
            cluster.max_running = max_running;
        }
        let database = match engine {
            Engine::Sqlite => None,
            Engine::Postgres => {
                let server = postgres_url.context(
                    "PostgreSQL: pass --postgres-url or set ATOLL_TEST_POSTGRES_URL (scripts/bench starts a server and sets it)",
                )?;
                Some(atoll_gateway::testing::TestDatabase::postgres_on(server).await)
            }
        };
        if let (Some(gateway), Some(db)) = (layout.gateway.as_mut(), &database)
            && let atoll_gateway::config::Database::Postgres { url, .. } = &db.database
        {
            gateway.postgres_url = Some(url.clone());
        }
        let exe = crate::atoll_exe()?;
        let mut mesh = Mesh::start(MeshDir::new(dir.path()), layout, exe).await?;
        let client = CliConfig::load(&mesh.dir.cli_config())?.node_client()?;
        mesh.wait_for_leaders(&client, Duration::from_secs(60)).await?;
        mesh.wait_for_registration(Duration::from_secs(60)).await?;
        let gateway = mesh.gateway_client()?;
        let target = match &database {
            Some(db) => db.database.clone(),
            None => atoll_gateway::config::Database::Sqlite { path: mesh.dir.gateway_dir().join("gateway.db") },
        };
        let db = atoll_gateway::db::Db::connect(&target).await?;
        Ok(Self { mesh, gateway, db, _dir: dir, _database: database })
    }

    async fn unfinished(&self) -> anyhow::Result<(i64, String)> {
        let counts = self.db.count_by_state().await?;
        let open: i64 =
            counts.iter().filter(|(s, _)| !s.parse::<JobState>().is_ok_and(JobState::is_final)).map(|(_, n)| n).sum();
        let text = counts.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", ");
        Ok((open, text))
    }
}

fn pipeline(n: usize) -> serde_json::Value {
    let jobs: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"name": format!("j{i}"), "type": "command", "command": "true", "timeout": 600}))
        .collect();
    serde_json::json!({"version": 1, "jobs": jobs})
}

/// Figures of one engine.
struct Dispatch {
    jobs_per_s: f64,
    start_p50: f64,
    start_p99: f64,
}

/// One run on `engine`; the mesh's directory is handed back, to be removed after the last run
/// (see [`dispatch`]).
async fn dispatch_one(args: &DispatchArgs, engine: Engine) -> anyhow::Result<(Dispatch, tempfile::TempDir)> {
    let bench = Bench::start(engine, args.postgres_url.as_deref(), args.max_running).await?;
    let pipelines = args.jobs.div_ceil(args.per_pipeline);
    println!(
        "## {engine:?}: {} jobs in {pipelines} pipelines of {}, {} submitters, load {}",
        args.jobs,
        args.per_pipeline,
        args.submitters,
        loadavg()
    );
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for _ in 0..args.submitters.max(1) {
        let (gateway, next, per, total) = (bench.gateway.clone(), next.clone(), args.per_pipeline, args.jobs);
        submitters.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i * per >= total {
                    return anyhow::Ok(());
                }
                let n = per.min(total - i * per);
                gateway
                    .submit(&SubmitRequest { spec: pipeline(n), files: Default::default() })
                    .await
                    .context("submitting")?;
            }
        }));
    }
    for s in submitters {
        s.await??;
    }
    let submitted = started.elapsed();
    println!(
        "submitted in {:.1} s ({:.0} jobs/s accepted)",
        submitted.as_secs_f64(),
        args.jobs as f64 / submitted.as_secs_f64()
    );
    let deadline = started + Duration::from_secs(args.max_s);
    let mut last_print = Instant::now();
    loop {
        let (open, text) = bench.unfinished().await?;
        if open == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{open} jobs still open after {} s: {text}", args.max_s);
        if last_print.elapsed() > Duration::from_secs(5) {
            println!("  {:.0} s: {text}", started.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, text) = bench.unfinished().await?;
    let times = bench.db.job_times().await?;
    let first = times.iter().map(|t| t.0).min().context("no jobs")?;
    let last = times.iter().filter_map(|t| t.2).max().context("no finished jobs")?;
    let seconds = (last - first) as f64 / 1000.0;
    let to_start: Vec<f64> = times.iter().filter_map(|t| t.1.map(|s| (s - t.0) as f64)).collect();
    anyhow::ensure!(!to_start.is_empty(), "no job recorded a start");
    let result = Dispatch {
        jobs_per_s: args.jobs as f64 / seconds,
        start_p50: percentile(&to_start, 50),
        start_p99: percentile(&to_start, 99),
    };
    println!(
        "{engine:?}: {} jobs submit-to-last-result in {seconds:.1} s = {:.0} jobs/s; submit-to-start p50 {:.0} ms p99 {:.0} ms; states: {text}",
        args.jobs, result.jobs_per_s, result.start_p50, result.start_p99
    );
    let Bench { mut mesh, _dir: dir, .. } = bench;
    mesh.stop_all(Duration::from_secs(15)).await;
    Ok((result, dir))
}

pub async fn dispatch(args: DispatchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.jobs >= 1 && args.per_pipeline >= 1, "--jobs and --per-pipeline must be 1 or more");
    let etcd_script = args.peers.join("etcd-throughput");
    anyhow::ensure!(
        args.etcd_seconds == 0 || etcd_script.exists(),
        "{} not found: pass --peers DIR, or --etcd-seconds 0 to skip the peer",
        etcd_script.display()
    );
    anyhow::ensure!(args.runs >= 1, "--runs must be 1 or more");
    println!("# atoll-bench dispatch: 3 clusters x 3 replicas, process executor, load {}", loadavg());
    let mut results = Vec::new();
    // Every run's directory (tens of thousands of work directories) is removed only after the
    // last run: on a filesystem without a journal, ext4 skips inodes freed in the last minute
    // or more when it makes new ones, and a run right after a mass removal spends much of the
    // machine in that scan (docs/performance.md).
    let mut dirs = Vec::new();
    for _ in 0..args.runs {
        for &engine in &args.engines {
            let (result, dir) = dispatch_one(&args, engine).await?;
            results.push((engine, result));
            dirs.push(dir);
        }
    }
    drop(dirs);
    // Each engine's runs, in the order they ran.
    let runs_of =
        |engine: Engine| -> Vec<&Dispatch> { results.iter().filter(|(e, _)| *e == engine).map(|(_, r)| r).collect() };
    let figures = |runs: &[&Dispatch], f: fn(&Dispatch) -> f64| -> Vec<f64> { runs.iter().map(|r| f(r)).collect() };
    if args.etcd_seconds > 0 {
        println!("## peer: etcd puts/s at 64 connections, same invocation");
        let etcd = etcd_throughput(&etcd_script, 64, args.etcd_seconds).await?;
        println!("etcd: {:.0} puts/s (p50 {:.1} ms, p99 {:.1} ms)", etcd.puts_per_s, etcd.p50_ms, etcd.p99_ms);
        for &engine in &args.engines {
            let ours = median(&figures(&runs_of(engine), |r| r.jobs_per_s));
            println!(
                "ratio ours/etcd ({engine:?}): median jobs/s over etcd puts/s {:.3} ({ours:.0} / {:.0})",
                ours / etcd.puts_per_s,
                etcd.puts_per_s
            );
        }
    }
    for &engine in &args.engines {
        let runs = runs_of(engine);
        println!(
            "summary {engine:?} ({} runs): jobs/s end to end {}; submit-to-start p50 {} ms; p99 {} ms",
            runs.len(),
            spread(&figures(&runs, |r| r.jobs_per_s)),
            spread(&figures(&runs, |r| r.start_p50)),
            spread(&figures(&runs, |r| r.start_p99)),
        );
    }
    Ok(())
}

pub async fn reroute(args: RerouteArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 1 && args.jobs_per_run >= 1, "--runs and --jobs-per-run must be 1 or more");
    println!("# atoll-bench reroute: 3 clusters x 3 replicas, default bounds, load {}", loadavg());
    let mut bench = Bench::start(Engine::Sqlite, None, None).await?;
    let replicas: Vec<u64> = bench.mesh.layout.cluster("aws").context("aws")?.replicas.iter().map(|r| r.id).collect();
    let mut samples = Vec::new();
    for run in 1..=args.runs {
        let jobs: Vec<serde_json::Value> = (0..args.jobs_per_run)
            .map(|i| serde_json::json!({"name": format!("r{i}"), "type": "command", "command": "sleep 600", "timeout": 900, "cluster": {"prefer": "aws"}}))
            .collect();
        let submitted = bench
            .gateway
            .submit(&SubmitRequest { spec: serde_json::json!({"version": 1, "jobs": jobs}), files: Default::default() })
            .await?;
        let ids: Vec<String> = submitted.jobs.iter().map(|j| j.id.to_string()).collect();
        let deadline = Instant::now() + Duration::from_secs(args.max_s);
        loop {
            let now = bench.gateway.pipeline(&submitted.pipeline).await?;
            if now.jobs.iter().all(|j| j.state == JobState::Running && j.cluster.as_deref() == Some("aws")) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "run {run}: the jobs did not all run on aws");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let killed = Instant::now();
        for id in &replicas {
            bench.mesh.kill("aws", *id)?;
        }
        loop {
            let now = bench.gateway.pipeline(&submitted.pipeline).await?;
            if now.jobs.iter().all(|j| j.state == JobState::Running && j.cluster.as_deref().is_some_and(|c| c != "aws"))
            {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "run {run}: the jobs did not move off aws");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = super::ms(killed.elapsed());
        println!("run {run}: every aws replica killed -> {} jobs running elsewhere in {took:.0} ms", ids.len());
        samples.push(took);
        for id in &ids {
            bench.gateway.cancel(id).await?;
        }
        for id in &replicas {
            bench.mesh.prepare_enrollment("aws", *id).await?;
            bench.mesh.spawn("aws", *id)?;
        }
        let client = CliConfig::load(&bench.mesh.dir.cli_config())?.node_client()?;
        bench.mesh.wait_for_leaders(&client, Duration::from_secs(60)).await?;
        let back = Instant::now() + Duration::from_secs(60);
        while bench.gateway.clusters().await?.iter().any(|c| c.state != atoll_api::gateway::ClusterState::Alive) {
            anyhow::ensure!(Instant::now() < back, "aws did not come back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(
        "summary: kill every aws replica -> its jobs running elsewhere: {} ms (dead-after bound 10000 ms); median {:.1} s",
        spread(&samples),
        median(&samples) / 1000.0
    );
    bench.mesh.stop_all(Duration::from_secs(15)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn zero_runs_is_refused_before_anything_starts() {
        let args = DispatchArgs {
            jobs: 10,
            per_pipeline: 5,
            submitters: 1,
            engines: vec![Engine::Sqlite],
            postgres_url: None,
            peers: PathBuf::from("/nonexistent"),
            etcd_seconds: 0,
            max_s: 1,
            max_running: None,
            runs: 0,
        };
        let error = dispatch(args).await.expect_err("zero runs");
        assert!(error.to_string().contains("--runs must be 1 or more"), "{error}");
    }
}
