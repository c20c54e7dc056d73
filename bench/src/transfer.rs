//! `atoll-bench transfer`: a large output moved by each route through a real mesh.
//!
//! Three clusters x one replica and a gateway, with the dev cuts (onprem refuses aws and gcp,
//! gcp refuses onprem), so each route is the one the matrix demands:
//!
//! | route | parent | child | moved by |
//! | --- | --- | --- | --- |
//! | local | aws | aws | the child's replica: copied out of its own store and unpacked |
//! | pull | aws | onprem | onprem fetches from aws |
//! | push | onprem | aws | onprem sends to aws |
//! | relay | onprem | gcp | onprem uploads to the gateway, gcp downloads |
//!
//! One route at a time, `--runs` times each: the parent writes `--size-mib` MiB (zeros after a
//! unique first line, so every run is a new blob), the child starts when it ended. The time is
//! the receiving replica's own (`elapsed_ms` of its `input received` line: from its first
//! question to the gateway to the verified blob in its store; for `local`, of `input in place`).
//! Memory: the resident set of the sending and the receiving replica (and the gateway for the
//! relay), sampled every 50 ms from before the child starts until it ended; the peak above the
//! level before. Files of each run are deleted after it.
//!
//! **Fallback** (`--fallback-runs`): a pull (aws -> onprem) is cut when a third of its chunks
//! arrived (aws drops onprem's requests, as `atoll dev` cuts); the clock runs from the cut to
//! the receiving replica's log saying it falls back to the relay, and to the child's input
//! complete; the log says which chunk the relay went on from and whether any byte was fetched
//! twice.
//!
//! The machine's disk as a local store writes (8 MiB files, each fsync'd) is measured after the
//! mesh stopped: every byte a transfer moves is written that way once.
//!
//! The peer figure in the same invocation: `loopback-bandwidth`'s TLS 1.3 stream between two
//! processes over one loopback connection (and plain TCP), the machine's bound for one
//! encrypted stream.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::jobs::JobState;
use atoll_api::jobs::Route;
use atoll_api::jobs::SubmitRequest;
use tokio::time::Instant;

use super::loadavg;
use super::median;
use super::peers::loopback_streams;
use atoll_mesh::Layout;
use atoll_mesh::Mesh;

#[derive(Debug, Clone, clap::Args)]
pub struct TransferArgs {
    /// Size of the output, in MiB.
    #[arg(long, default_value_t = 2048)]
    pub size_mib: u64,
    /// Runs per route.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Routes to measure.
    #[arg(long, value_delimiter = ',', default_value = "local,pull,push,relay")]
    pub routes: Vec<String>,
    /// The peer baseline directory (holds loopback-bandwidth).
    #[arg(long, default_value = "../shared/peers")]
    pub peers: PathBuf,
    /// Seconds per peer stream test (3 repeats each); 0 skips the peer baseline.
    #[arg(long, default_value_t = 3)]
    pub peer_seconds: u64,
    /// Give up on one transfer after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub max_s: u64,
    /// Write the replicas' local stores without fsync (default: fsync on, as the agent's
    /// default): shows what the path costs without the disk's sync.
    #[arg(long)]
    pub no_fsync: bool,
    /// Runs of the fallback measurement (a pull cut mid-transfer); 0 skips it.
    #[arg(long, default_value_t = 3)]
    pub fallback_runs: usize,
}

/// Parent cluster, child cluster, and the replica processes whose memory matters.
fn plan(route: Route) -> (&'static str, &'static str) {
    match route {
        Route::Local => ("aws", "aws"),
        Route::Pull => ("aws", "onprem"),
        Route::Push => ("onprem", "aws"),
        Route::Relay => ("onprem", "gcp"),
    }
}

/// Resident set size of a process, in bytes.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One measured transfer.
struct Measured {
    mb_s: f64,
    /// Peak resident set above the level before, per process, in MiB.
    peaks: Vec<(String, f64)>,
}

fn spec(route: Route, run: usize, size_mib: u64) -> serde_json::Value {
    let (from, to) = plan(route);
    let bytes = size_mib * 1024 * 1024;
    serde_json::json!({"version": 1, "jobs": [
        {"name": "parent", "type": "command", "timeout": 3600, "cluster": {"selector": [from]},
         "command": format!("cd \"$ATOLL_OUTPUT\" && {{ echo \"{} run {run} $ATOLL_JOB_ID\"; head -c {bytes} /dev/zero; }} > data.bin", route.as_str())},
        {"name": "child", "type": "command", "timeout": 3600, "cluster": {"selector": [to]},
         "depends_on": ["parent"], "command": "test -s \"$ATOLL_INPUTS/parent/data.bin\""},
    ]})
}

async fn wait_job(
    gateway: &GatewayClient,
    id: &str,
    wanted: impl Fn(JobState) -> bool,
    max: Duration,
) -> anyhow::Result<JobState> {
    let deadline = Instant::now() + max;
    loop {
        let state = gateway.job(id).await?.job.state;
        if wanted(state) {
            return Ok(state);
        }
        anyhow::ensure!(Instant::now() < deadline, "job {id} is still {state} after {max:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Free the disk for the next run: the work directories and every stored copy of the run's blob.
async fn forget(mesh: &Mesh, gateway: &GatewayClient, parent: &str, child: &str) -> anyhow::Result<()> {
    let digest = gateway.job(parent).await?.job.output.map(|o| o.digest).unwrap_or_default();
    let hex = digest.trim_start_matches("sha256:").to_string();
    let mut dirs = vec![mesh.dir.gateway_dir().join("blobs/sha256").join(&hex)];
    for cluster in ["aws", "gcp", "onprem"] {
        let data = mesh.dir.data_dir(cluster, 1);
        dirs.push(data.join("blobs/sha256").join(&hex));
        dirs.push(data.join("work").join(parent));
        dirs.push(data.join("work").join(child));
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// The `elapsed_ms` of the receiving replica's log line `what` for `job`.
fn elapsed_ms(log: &std::path::Path, job: &str, what: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let line = text
        .lines()
        .find(|l| l.contains(what) && l.contains(job))
        .with_context(|| format!("no {what:?} line for {job} in {}", log.display()))?;
    let rest = line.split("elapsed_ms=").nth(1).context("no elapsed_ms")?;
    Ok(rest.split(|c: char| !c.is_ascii_digit()).next().unwrap_or_default().parse()?)
}

async fn measure(
    mesh: &Mesh,
    gateway: &GatewayClient,
    route: Route,
    run: usize,
    args: &TransferArgs,
) -> anyhow::Result<Measured> {
    let (from, to) = plan(route);
    let submitted =
        gateway.submit(&SubmitRequest { spec: spec(route, run, args.size_mib), files: Default::default() }).await?;
    let id = |name: &str| submitted.jobs.iter().find(|j| j.name == name).map(|j| j.id.clone()).expect("job");
    let (parent, child) = (id("parent"), id("child"));
    let max = Duration::from_secs(args.max_s);
    let state = wait_job(gateway, &parent, JobState::is_final, max).await?;
    anyhow::ensure!(state == JobState::Finished, "the parent ended {state}");
    // Who to watch: the sender, the receiver, and the gateway when it relays.
    let mut watched = vec![(format!("{from} (sends)"), mesh.pid(from, 1).context("sender pid")?)];
    if from != to {
        watched.push((format!("{to} (receives)"), mesh.pid(to, 1).context("receiver pid")?));
    }
    if route == Route::Relay {
        watched.push(("gateway (relays)".to_string(), mesh.gateway_pid(0).context("gateway pid")?));
    }
    let before: Vec<u64> = watched.iter().map(|(_, pid)| rss(*pid).unwrap_or(0)).collect();
    let mut peaks = before.clone();
    let done = wait_job(gateway, &child, JobState::is_final, max);
    tokio::pin!(done);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let state = loop {
        tokio::select! {
            state = &mut done => break state?,
            _ = tick.tick() => {
                for (peak, (_, pid)) in peaks.iter_mut().zip(&watched) {
                    *peak = (*peak).max(rss(*pid).unwrap_or(0));
                }
            }
        }
    };
    if state != JobState::Finished {
        let reason = gateway.job(&child).await?.job.reason.unwrap_or_default();
        anyhow::bail!("the child ended {state}: {reason}");
    }
    let log = mesh.dir.log_file(to, 1);
    let ms = match route {
        Route::Local => elapsed_ms(&log, &child, "input in place")?,
        _ => elapsed_ms(&log, &child, "input received")?,
    };
    let size = gateway.job(&parent).await?.job.output.context("the parent's output")?.size;
    let peaks = watched
        .iter()
        .zip(peaks.iter().zip(&before))
        .map(|((name, _), (peak, before))| (name.clone(), peak.saturating_sub(*before) as f64 / 1048576.0))
        .collect();
    forget(mesh, gateway, &parent, &child).await?;
    Ok(Measured { mb_s: size as f64 / 1e6 / (ms.max(1) as f64 / 1000.0), peaks })
}

/// One pull cut mid-transfer: seconds from the cut to the receiving replica falling back to the
/// relay (its log line), and to the child's input complete; the chunk the relay went on from,
/// and bytes fetched twice.
struct Fallback {
    to_relay_s: f64,
    to_done_s: f64,
    from_chunk: usize,
    chunks: usize,
    fetched_twice: u64,
}

/// The `key=value` field of a log line.
fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.split(&format!(" {key}=")).nth(1)?;
    rest.split(' ').next()
}

async fn fallback(
    mesh: &Mesh,
    gateway: &GatewayClient,
    client: &atoll_api::client::NodeClient,
    run: usize,
    args: &TransferArgs,
) -> anyhow::Result<Fallback> {
    const CUT: &str = "atoll.io/refuse-inbound-from";
    let max = Duration::from_secs(args.max_s);
    let submitted = gateway
        .submit(&SubmitRequest { spec: spec(Route::Pull, 100 + run, args.size_mib), files: Default::default() })
        .await?;
    let id = |name: &str| submitted.jobs.iter().find(|j| j.name == name).map(|j| j.id.clone()).expect("job");
    let (parent, child) = (id("parent"), id("child"));
    let state = wait_job(gateway, &parent, JobState::is_final, max).await?;
    anyhow::ensure!(state == JobState::Finished, "the parent ended {state}");
    let output = gateway.job(&parent).await?.job.output.context("the parent's output")?;
    let hex = output.digest.trim_start_matches("sha256:").to_string();
    let chunks = output.size.div_ceil(atoll_store::CHUNK as u64) as usize;
    // Cut when a third of the chunks arrived.
    let received = mesh.dir.data_dir("onprem", 1).join("blobs/sha256").join(&hex);
    let deadline = Instant::now() + max;
    loop {
        let n = std::fs::read_dir(&received).map(|d| d.count()).unwrap_or(0);
        if n >= (chunks / 3).max(1) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the pull did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let aws = mesh.layout.replica("aws", 1).context("aws")?.addr();
    client.annotate(&aws, CUT, "onprem").await?;
    let cut = Instant::now();
    let cut_wall = time::OffsetDateTime::now_utc();
    loop {
        let detail = gateway.job(&child).await?;
        if detail.job.state.is_final() {
            anyhow::ensure!(
                detail.job.state == JobState::Finished,
                "the child ended {}: {}",
                detail.job.state,
                detail.job.reason.unwrap_or_default()
            );
            break;
        }
        anyhow::ensure!(cut.elapsed() < max, "the child did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let to_done = cut.elapsed();
    client.delete_annotation(&aws, CUT).await?;
    let log = std::fs::read_to_string(mesh.dir.log_file("onprem", 1))?;
    let line = log
        .lines()
        .find(|l| l.contains("input received") && l.contains(child.as_str()))
        .context("no 'input received' line")?;
    let from_chunk = log_field(line, "relayed_from_chunk")
        .and_then(|v| v.strip_prefix("Some(")?.strip_suffix(')')?.parse().ok())
        .context("the input was not relayed")?;
    // When the receiver gave up on the direct path, by its own log's clock.
    let fell_back = log
        .lines()
        .find(|l| l.contains("falling back to the relay") && l.contains(child.as_str()))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|ts| time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok())
        .context("no 'falling back to the relay' line")?;
    let to_relay = (fell_back - cut_wall).as_seconds_f64();
    let moved: u64 = log_field(line, "bytes").and_then(|v| v.parse().ok()).unwrap_or_default();
    let refetched: u64 = log_field(line, "refetched").and_then(|v| v.parse().ok()).unwrap_or_default();
    forget(mesh, gateway, &parent, &child).await?;
    // Let the matrix see the heal before the next run.
    tokio::time::sleep(Duration::from_secs(4)).await;
    Ok(Fallback {
        to_relay_s: to_relay,
        to_done_s: to_done.as_secs_f64(),
        from_chunk,
        chunks,
        fetched_twice: (moved + refetched).saturating_sub(output.size),
    })
}

/// This machine's disk as the local store uses it: `mib` MiB written in 8 MiB pieces into fresh
/// files, each fsync'd; MB/s. A store-to-store transfer writes every byte this way once.
fn disk_bound(dir: &std::path::Path, mib: u64) -> anyhow::Result<f64> {
    use std::io::Write;
    let piece = vec![0x5au8; 8 * 1024 * 1024];
    let pieces = mib.div_ceil(8).max(1);
    let started = std::time::Instant::now();
    for i in 0..pieces {
        let path = dir.join(format!("disk-{i}"));
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&piece)?;
        file.sync_all()?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for i in 0..pieces {
        let _ = std::fs::remove_file(dir.join(format!("disk-{i}")));
    }
    Ok((pieces * 8 * 1024 * 1024) as f64 / 1e6 / elapsed)
}

pub async fn run(args: TransferArgs) -> anyhow::Result<()> {
    let routes: Vec<Route> = args
        .routes
        .iter()
        .map(|r| match r.as_str() {
            "local" => Ok(Route::Local),
            "pull" => Ok(Route::Pull),
            "push" => Ok(Route::Push),
            "relay" => Ok(Route::Relay),
            other => Err(anyhow::anyhow!("--routes: unknown route {other:?} (local, pull, push, relay)")),
        })
        .collect::<anyhow::Result<_>>()?;
    println!(
        "# atoll-bench transfer: {} MiB, {} run(s) per route, routes {:?}, local stores {} | load {}",
        args.size_mib,
        args.runs,
        args.routes,
        if args.no_fsync { "without fsync" } else { "fsync'd" },
        loadavg()
    );
    let dir = tempfile::tempdir().context("temp dir")?;
    let mut layout = Layout::new(3, 1, 0)?.with_gateway(0)?.with_default_cuts();
    if args.no_fsync {
        for cluster in &mut layout.clusters {
            cluster.store_fsync = Some(false);
        }
        if let Some(gateway) = layout.gateway.as_mut() {
            gateway.store_fsync = Some(false);
        }
    }
    let (mut mesh, client, gateway) = super::ready_mesh(dir.path(), layout).await?;
    let mut results: Vec<(Route, Vec<Measured>)> = Vec::new();
    let mut fallbacks: Vec<Fallback> = Vec::new();
    let outcome = async {
        for route in routes.iter().filter(|_| args.runs > 0) {
            let mut runs = Vec::new();
            for run in 1..=args.runs {
                let m = measure(&mesh, &gateway, *route, run, &args).await?;
                let peaks: Vec<String> = m.peaks.iter().map(|(n, p)| format!("{n} +{p:.1} MiB")).collect();
                println!(
                    "{} run {run}: {:.0} MB/s; peak memory above idle: {} | load {}",
                    route.as_str(),
                    m.mb_s,
                    peaks.join(", "),
                    loadavg()
                );
                runs.push(m);
            }
            results.push((*route, runs));
        }
        for run in 1..=args.fallback_runs {
            let f = fallback(&mesh, &gateway, &client, run, &args).await?;
            println!(
                "fallback run {run}: cut at chunk ~{} of {}; fell back to the relay after {:.1} s, input complete after {:.1} s; relay went on from chunk {}; bytes fetched twice: {} | load {}",
                f.chunks / 3,
                f.chunks,
                f.to_relay_s,
                f.to_done_s,
                f.from_chunk,
                f.fetched_twice,
                loadavg()
            );
            fallbacks.push(f);
        }
        anyhow::Ok(())
    }
    .await;
    mesh.stop_all(Duration::from_secs(10)).await;
    outcome?;
    let disk_dir = dir.path().to_path_buf();
    let disk_mib = args.size_mib.min(1024);
    let disk = tokio::task::spawn_blocking(move || disk_bound(&disk_dir, disk_mib)).await??;

    let peer = if args.peer_seconds > 0 {
        Some(loopback_streams(&args.peers.join("loopback-bandwidth"), args.peer_seconds, 3).await?)
    } else {
        None
    };
    println!("## summary ({} MiB)", args.size_mib);
    for (route, runs) in &results {
        let speeds: Vec<f64> = runs.iter().map(|m| m.mb_s).collect();
        let min = speeds.iter().copied().fold(f64::INFINITY, f64::min);
        let max = speeds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let ratio = peer
            .map_or(String::new(), |(tls, _)| format!(" = {:.2} x loopback TLS", median(&speeds) / tls.median_mb_s));
        let mut worst: Vec<(String, f64)> = Vec::new();
        for m in runs {
            for (name, peak) in &m.peaks {
                match worst.iter_mut().find(|(n, _)| n == name) {
                    Some((_, w)) => *w = w.max(*peak),
                    None => worst.push((name.clone(), *peak)),
                }
            }
        }
        let worst: Vec<String> = worst.iter().map(|(n, p)| format!("{n} +{p:.1}")).collect();
        println!(
            "SUMMARY transfer {:<5} n={} median={:.0} min={min:.0} max={max:.0} MB/s{ratio}; peak memory above idle (MiB, worst run): {}",
            route.as_str(),
            runs.len(),
            median(&speeds),
            worst.join(", ")
        );
    }
    if !fallbacks.is_empty() {
        let relay: Vec<f64> = fallbacks.iter().map(|f| f.to_relay_s).collect();
        let done: Vec<f64> = fallbacks.iter().map(|f| f.to_done_s).collect();
        let twice: u64 = fallbacks.iter().map(|f| f.fetched_twice).max().unwrap_or(0);
        println!(
            "SUMMARY fallback n={} to-relay median={:.1} min={:.1} max={:.1} s; to-complete median={:.1} s; bytes fetched twice (max) {twice}",
            fallbacks.len(),
            median(&relay),
            relay.iter().copied().fold(f64::INFINITY, f64::min),
            relay.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            median(&done)
        );
    }
    println!(
        "SUMMARY disk {disk_mib} MiB in 8 MiB files, each fsync'd: {disk:.0} MB/s (what a local store's writes cost)"
    );
    if let Some((tls, tcp)) = peer {
        println!(
            "SUMMARY peer loopback TLS 1.3 one connection median={:.0} min={:.0} max={:.0} MB/s; plain TCP median={:.0} MB/s",
            tls.median_mb_s, tls.min_mb_s, tls.max_mb_s, tcp.median_mb_s
        );
    }
    Ok(())
}
