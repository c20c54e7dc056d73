//! `atoll-bench failover`: the write-unavailability window after the leader is killed or paused,
//! measured exactly as the peer baseline measures etcd, and compared in the same run.
//!
//! Per run: wait for a stable leader, settle, then a probe writes every `interval` to the two
//! survivors in turn (open loop, each write with `timeout`); after a warm-up it SIGKILLs (crash)
//! or SIGSTOPs (pause) the leader's pid, stamping the moment on the probe's monotonic clock.
//! The window is the ack time of the first successful write *issued after* the fault; the
//! probe also records when a survivor first names a new leader. A crashed replica is restarted;
//! a paused one gets SIGCONT after `pause`, and must step down.
//!
//! Every write uses its own key, so at the end each acknowledged write must be present on
//! every replica (none lost) with version 1 (none applied twice).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use atoll_api::client::NodeClient;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsFiles;
use atoll_api::tls::TlsIdentity;
use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::loadavg;
use super::median;
use super::ms;
use super::peers::etcd_failover;
use super::percentile;
use atoll_mesh::Layout;
use atoll_mesh::Mesh;
use atoll_mesh::MeshDir;
use atoll_mesh::RaftKnobs;
use atoll_mesh::Timing;

const CLUSTER: &str = "aws";

#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// Runs per fault and configuration.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Faults to inject: crash (SIGKILL), pause (SIGSTOP, then SIGCONT).
    #[arg(long, value_delimiter = ',', default_value = "crash,pause")]
    pub faults: Vec<Fault>,
    /// Configurations, NAME:HEARTBEAT/MIN/MAX[:nofast] (ms); `nofast` turns the fast
    /// failover off. Default: the agents' defaults.
    #[arg(long, value_delimiter = ',', default_value = "atoll:20/60/120")]
    pub configs: Vec<String>,
    /// The probe issues a write this often, in ms.
    #[arg(long, default_value_t = 2)]
    pub interval_ms: u64,
    /// Per-write timeout of the probe, in ms.
    #[arg(long, default_value_t = 300)]
    pub timeout_ms: u64,
    /// Writes before the fault, in ms.
    #[arg(long, default_value_t = 700)]
    pub warmup_ms: u64,
    /// Quiet time after the group is healthy, before each run, in ms.
    #[arg(long, default_value_t = 2000)]
    pub settle_ms: u64,
    /// How long a paused leader stays stopped, in ms.
    #[arg(long, default_value_t = 3000)]
    pub pause_ms: u64,
    /// Give up on a run this long after the fault, in s.
    #[arg(long, default_value_t = 20)]
    pub max_s: u64,
    /// The peer baseline directory (holds etcd-failover and lib/rawbench.py).
    #[arg(long, default_value = "../shared/peers")]
    pub peers: PathBuf,
    /// etcd runs in the same invocation (default: --runs); 0 skips etcd.
    #[arg(long)]
    pub etcd_runs: Option<usize>,
    /// Keep the mesh directory here instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write every run as a JSON line to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Busy-loop threads to run throughout, to see how timing holds up on a loaded machine.
    #[arg(long, default_value_t = 0)]
    pub cpu_burners: usize,
}

/// Threads that spin until dropped.
struct Burners(Arc<std::sync::atomic::AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl Burners {
    fn start(n: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                })
            })
            .collect();
        Self(stop, threads)
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    Crash,
    Pause,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::Crash => "crash",
            Fault::Pause => "pause",
        })
    }
}

#[derive(Debug, Clone)]
struct Config {
    name: String,
    timing: Option<Timing>,
    fast_failover: bool,
}

fn parse_config(text: &str) -> anyhow::Result<Config> {
    let parts: Vec<&str> = text.split(':').collect();
    let (name, timing, fast) = match parts.as_slice() {
        [name] => (*name, None, true),
        [name, timing] => (*name, Some(timing.parse()?), true),
        [name, timing, "nofast"] => (*name, Some(timing.parse()?), false),
        _ => anyhow::bail!("config {text:?}: expected NAME:HEARTBEAT/MIN/MAX[:nofast]"),
    };
    anyhow::ensure!(!name.is_empty(), "config {text:?} has no name");
    Ok(Config { name: name.to_string(), timing, fast_failover: fast })
}

/// One probe write.
#[derive(Debug, Clone)]
struct Write {
    sent: Instant,
    ended: Instant,
    outcome: String,
    key: String,
}

/// The result of one run.
#[derive(Debug, Clone, serde::Serialize)]
struct RunResult {
    config: String,
    fault: Fault,
    run: usize,
    killed: u64,
    ok: bool,
    error: Option<String>,
    write_ms: Option<f64>,
    leader_ms: Option<f64>,
    new_leader: Option<u64>,
    elections: Option<u64>,
    pre_fault_write_p50_ms: Option<f64>,
    attempts_before_first_ok: BTreeMap<String, usize>,
    /// Pause only: time from SIGCONT until the resumed replica reported follower.
    stepped_down_ms: Option<f64>,
    /// Elections during the quiet settle period before the fault (should be 0).
    quiet_elections: u64,
}

pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 1, "--runs must be 1 or more");
    let configs: Vec<Config> = args.configs.iter().map(|c| parse_config(c)).collect::<anyhow::Result<_>>()?;
    let etcd_runs = args.etcd_runs.unwrap_or(args.runs);
    let etcd_script = args.peers.join("etcd-failover");
    if etcd_runs > 0 {
        anyhow::ensure!(
            etcd_script.exists(),
            "{} not found: pass --peers DIR (the peer baseline), or --etcd-runs 0 to skip etcd",
            etcd_script.display()
        );
    }
    let exe = crate::atoll_exe()?;
    if cfg!(debug_assertions) {
        println!("# warning: this is a debug build; figures are only meaningful from a release build");
    }
    let temp = tempfile::tempdir()?;
    let base = args.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    println!(
        "# atoll-bench failover: runs={} faults={:?} probe: a write every {} ms, per-write timeout {} ms; cpus={}",
        args.runs,
        args.faults,
        args.interval_ms,
        args.timeout_ms,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    print_fsync_context(&args.peers, &base).await;
    if args.cpu_burners > 0 {
        println!("# {} busy-loop threads run throughout (--cpu-burners)", args.cpu_burners);
    }
    let burners = Burners::start(args.cpu_burners);

    let mut json_out = match &args.json {
        Some(path) => Some(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?),
        None => None,
    };
    let mut results: Vec<RunResult> = Vec::new();
    for config in &configs {
        let dir = base.join(&config.name);
        let _ = atoll_mesh::wipe(&dir);
        let mut layout = Layout::new(1, 3, 0)?;
        layout.raft = RaftKnobs { timing: config.timing, fast_failover: config.fast_failover, ..RaftKnobs::default() };
        let timing_text = config.timing.map_or("agent defaults".to_string(), |t| t.to_string());
        println!(
            "## config {}: timing {timing_text} ms, fast failover {} | load {}",
            config.name,
            if config.fast_failover { "on" } else { "off" },
            loadavg()
        );
        let mut mesh = Mesh::start(MeshDir::new(&dir), layout, exe.clone()).await?;
        let tls = TlsIdentity::load(&TlsFiles {
            ca: mesh.dir.certs().join("ca.pem"),
            cert: mesh.dir.certs().join("admin.pem"),
            key: mesh.dir.certs().join("admin-key.pem"),
        })?;
        let admin = NodeClient::new(&tls, ServerPolicy::AnyNode, Duration::from_secs(5))?;
        let probe_client = NodeClient::new(&tls, ServerPolicy::AnyNode, Duration::from_millis(args.timeout_ms))?;
        let status_client = NodeClient::new(&tls, ServerPolicy::AnyNode, Duration::from_millis(200))?;
        let mut acked_keys: Vec<String> = Vec::new();
        for fault in &args.faults {
            for run in 1..=args.runs {
                let result = one_run(
                    &args,
                    config,
                    *fault,
                    run,
                    &mut mesh,
                    &admin,
                    &probe_client,
                    &status_client,
                    &mut acked_keys,
                )
                .await;
                let result = match result {
                    Ok(r) => r,
                    Err(e) => {
                        mesh.stop_all(Duration::from_secs(10)).await;
                        return Err(e.context(format!("{} {fault} run {run}", config.name)));
                    }
                };
                print_run(&result, args.runs);
                if let Some(out) = json_out.as_mut() {
                    use std::io::Write as _;
                    writeln!(out, "{}", serde_json::to_string(&result)?)?;
                }
                results.push(result);
            }
        }
        let verdict = verify_writes(&mesh, &admin, &acked_keys).await;
        mesh.stop_all(Duration::from_secs(15)).await;
        verdict?;
    }

    println!("## summary (nearest-rank percentiles over successful runs; ms from the fault)");
    let mut ours: BTreeMap<Fault, (f64, f64)> = BTreeMap::new();
    for config in &configs {
        for fault in &args.faults {
            let rs: Vec<&RunResult> = results.iter().filter(|r| r.config == config.name && r.fault == *fault).collect();
            let ok: Vec<&&RunResult> = rs.iter().filter(|r| r.ok).collect();
            for (label, pick) in [("write-unavailability", 0), ("new-leader", 1)] {
                let v: Vec<f64> = ok.iter().filter_map(|r| if pick == 0 { r.write_ms } else { r.leader_ms }).collect();
                if v.is_empty() {
                    println!("SUMMARY {} {fault} {label}: no successful runs ({} failed)", config.name, rs.len());
                    continue;
                }
                let (med, p90) = (median(&v), percentile(&v, 90));
                let max = v.iter().copied().fold(f64::MIN, f64::max);
                let min = v.iter().copied().fold(f64::MAX, f64::min);
                println!(
                    "SUMMARY {:<8} {fault:<5} {label:<20} n={}/{} median={med:.0} p90={p90:.0} max={max:.0} min={min:.0} ms",
                    config.name,
                    v.len(),
                    rs.len()
                );
                if pick == 0 && config.name == configs[0].name {
                    ours.insert(*fault, (med, p90));
                }
            }
            let quiet: u64 = rs.iter().map(|r| r.quiet_elections).sum();
            println!(
                "SUMMARY {:<8} {fault:<5} elections while quiet (spurious): {quiet} over {:.0} s of settle time",
                config.name,
                rs.len() as f64 * args.settle_ms as f64 / 1000.0
            );
            let extra: Vec<u64> = ok.iter().filter_map(|r| r.elections).collect();
            if !extra.is_empty() {
                println!(
                    "SUMMARY {:<8} {fault:<5} runs needing >1 election round: {}/{}",
                    config.name,
                    extra.iter().filter(|e| **e > 1).count(),
                    extra.len()
                );
            }
        }
    }

    drop(burners);
    if etcd_runs == 0 {
        println!("# etcd skipped (--etcd-runs 0): no ratios");
        return Ok(());
    }
    println!("## etcd, same run: {} -n {etcd_runs} -c fast-prevote:50:250:--pre-vote=true", etcd_script.display());
    let etcd = etcd_failover(&etcd_script, etcd_runs).await?;
    let (etcd_median, etcd_p90) = (etcd.write.median, etcd.write.p90);
    for fault in [Fault::Crash, Fault::Pause] {
        match ours.get(&fault) {
            Some((med, p90)) => {
                println!("ratio ours/etcd {fault}: median {:.2} p90 {:.2}", med / etcd_median, p90 / etcd_p90)
            }
            None => println!("ratio ours/etcd {fault}: not measured (fault not in --faults)"),
        }
    }
    Ok(())
}

/// fsync latency of the mesh's filesystem, measured with the peer baseline's own tool.
async fn print_fsync_context(peers: &std::path::Path, dir: &std::path::Path) {
    let tool = peers.join("lib/rawbench.py");
    if !tool.exists() {
        println!("# fsync context: {} not found; skipped", tool.display());
        return;
    }
    let _ = std::fs::create_dir_all(dir);
    let output = tokio::process::Command::new("python3")
        .arg(&tool)
        .args(["fsync", "--dir"])
        .arg(dir)
        .args(["--count", "200"])
        .output()
        .await;
    match output {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text.lines().last().unwrap_or_default();
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) => println!(
                    "# fsync context (200 x 4 KiB, peer tool): prealloc+fdatasync p50 {} ms p90 {} ms; append+fsync p50 {} ms",
                    v["prealloc+fdatasync"]["p50_ms"], v["prealloc+fdatasync"]["p90_ms"], v["append+fsync"]["p50_ms"]
                ),
                Err(_) => println!("# fsync context: {line}"),
            }
        }
        Ok(out) => println!("# fsync context: the tool failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => println!("# fsync context: python3 not runnable: {e}"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn one_run(
    args: &FailoverArgs,
    config: &Config,
    fault: Fault,
    run: usize,
    mesh: &mut Mesh,
    admin: &NodeClient,
    probe: &NodeClient,
    status_client: &NodeClient,
    acked_keys: &mut Vec<String>,
) -> anyhow::Result<RunResult> {
    let settled_from = mesh.wait_for_leaders(admin, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    // The leader may have changed while settling; take it now.
    let leaders = mesh.wait_for_leaders(admin, Duration::from_secs(30)).await?;
    let leader = leaders.first().context("no leader")?.clone();
    // Any election while nobody was faulted is a spurious one.
    let quiet_elections = leader.term.saturating_sub(settled_from.first().map_or(leader.term, |l| l.term));
    let victim_pid = mesh.pid(CLUSTER, leader.leader).context("leader not running")?;
    let survivors: Vec<String> = mesh
        .layout
        .cluster(CLUSTER)
        .context("cluster")?
        .replicas
        .iter()
        .filter(|r| r.id != leader.leader)
        .map(|r| r.addr())
        .collect();
    let mut term_before = 0;
    for addr in &survivors {
        if let Ok(s) = admin.status(addr).await {
            term_before = term_before.max(s.term.0);
        }
    }

    let writes: Arc<Mutex<Vec<Write>>> = Arc::new(Mutex::new(Vec::new()));
    let kill_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let new_leader: Arc<Mutex<Option<(Instant, u64)>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Leader watch: poll both survivors every 5 ms.
    let watchers: Vec<_> = survivors
        .iter()
        .map(|addr| {
            let (client, addr, kill_at, new_leader, stop) =
                (status_client.clone(), addr.clone(), kill_at.clone(), new_leader.clone(), stop.clone());
            let old = leader.leader;
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let status = client.status(&addr).await;
                    let t1 = Instant::now();
                    let killed = kill_at.lock().expect("lock").is_some();
                    if killed
                        && let Ok(s) = status
                        && let Some(l) = s.leader
                        && l.id != old
                    {
                        let mut slot = new_leader.lock().expect("lock");
                        if slot.is_none() {
                            *slot = Some((t0 + (t1 - t0) / 2, l.id));
                        }
                    }
                    let elapsed = t1 - t0;
                    tokio::time::sleep(Duration::from_millis(5).saturating_sub(elapsed)).await;
                }
            })
        })
        .collect();

    let interval = Duration::from_millis(args.interval_ms);
    let start = Instant::now();
    let fault_at = start + Duration::from_millis(args.warmup_ms);
    let hard_end = fault_at + Duration::from_secs(args.max_s);
    let mut next = start;
    let mut seq = 0u64;
    let mut tail_until: Option<Instant> = None;
    let mut error: Option<String> = None;
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        let now = Instant::now();
        let killed = *kill_at.lock().expect("lock");
        if killed.is_none() && now >= fault_at {
            let ok_before = writes
                .lock()
                .expect("lock")
                .iter()
                .any(|w| w.outcome == "ok" && w.sent >= start + Duration::from_millis(200));
            if !ok_before {
                error = Some("no successful write during warm-up".into());
                break;
            }
            let stamp = Instant::now();
            *kill_at.lock().expect("lock") = Some(stamp);
            let signal = if fault == Fault::Crash { Signal::SIGKILL } else { Signal::SIGSTOP };
            mesh.signal(CLUSTER, leader.leader, signal)?;
            tracing::info!(node = leader.leader, %fault, "fault applied");
        }
        if let Some(k) = killed
            && tail_until.is_none()
        {
            let acked_after = writes.lock().expect("lock").iter().any(|w| w.sent >= k && w.outcome == "ok");
            if acked_after && new_leader.lock().expect("lock").is_some() {
                tail_until = Some(now + Duration::from_millis(100));
            }
        }
        if tail_until.is_some_and(|t| now >= t) {
            break;
        }
        if now >= hard_end {
            error = Some(format!("no acknowledged write and new leader within {} s of the fault", args.max_s));
            break;
        }
        if inflight.len() < 2000 {
            let addr = survivors[(seq as usize) % survivors.len()].clone();
            let key = format!("bench/{}/{fault}/{run}/{seq}", config.name);
            seq += 1;
            let (client, writes) = (probe.clone(), writes.clone());
            inflight.spawn(async move {
                let sent = Instant::now();
                let result = client.annotate_once(&addr, &key, "x").await;
                let ended = Instant::now();
                let outcome = match result {
                    Ok(_) => "ok".to_string(),
                    Err(e) if e.is_timeout() => "timeout".to_string(),
                    Err(e) => match e.code() {
                        Some(code) => format!("{code:?}").to_lowercase(),
                        None => "conn".to_string(),
                    },
                };
                writes.lock().expect("lock").push(Write { sent, ended, outcome, key });
            });
        }
        while inflight.try_join_next().is_some() {}
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now; // fell behind (CPU contention): do not burst
        }
        tokio::time::sleep_until(next).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in watchers {
        let _ = w.await;
    }
    // Let in-flight writes finish (their timeout bounds this), so acknowledged keys are known.
    while inflight.join_next().await.is_some() {}

    let kill = kill_at.lock().expect("lock").context("the fault was never applied")?;
    let mut stepped_down_ms = None;
    match fault {
        Fault::Crash => {
            // Reap the killed process and start it again on its data.
            let _ = mesh.kill(CLUSTER, leader.leader);
            mesh.spawn(CLUSTER, leader.leader)?;
        }
        Fault::Pause => {
            let resume_at = kill + Duration::from_millis(args.pause_ms);
            tokio::time::sleep_until(resume_at).await;
            mesh.signal(CLUSTER, leader.leader, Signal::SIGCONT)?;
            let resumed = Instant::now();
            let addr = mesh.layout.replica(CLUSTER, leader.leader).context("replica")?.addr();
            let deadline = resumed + Duration::from_secs(10);
            loop {
                if let Ok(s) = admin.status(&addr).await
                    && s.role != atoll_api::node::Role::Leader
                    && s.term.0 > term_before
                {
                    stepped_down_ms = Some(ms(resumed.elapsed()));
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the resumed leader (node {}) did not step down within 10 s",
                    leader.leader
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let _ = victim_pid;

    let writes = writes.lock().expect("lock").clone();
    acked_keys.extend(writes.iter().filter(|w| w.outcome == "ok").map(|w| w.key.clone()));
    let mut term_after = 0;
    for addr in &survivors {
        if let Ok(s) = admin.status(addr).await {
            term_after = term_after.max(s.term.0);
        }
    }
    let first_ok = writes.iter().filter(|w| w.sent >= kill && w.outcome == "ok").map(|w| w.ended).min();
    let mut attempts: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(first) = first_ok {
        for w in writes.iter().filter(|w| w.sent >= kill && w.ended <= first) {
            *attempts.entry(w.outcome.clone()).or_default() += 1;
        }
    }
    let before: Vec<f64> = writes
        .iter()
        .filter(|w| w.outcome == "ok" && w.sent >= start + Duration::from_millis(200) && w.ended < kill)
        .map(|w| ms(w.ended - w.sent))
        .collect();
    let leader_seen = *new_leader.lock().expect("lock");
    Ok(RunResult {
        config: config.name.clone(),
        fault,
        run,
        killed: leader.leader,
        ok: error.is_none() && first_ok.is_some(),
        error,
        write_ms: first_ok.map(|t| ms(t - kill)),
        leader_ms: leader_seen.map(|(t, _)| ms(t.saturating_duration_since(kill))),
        new_leader: leader_seen.map(|(_, id)| id),
        elections: (term_after > 0 && term_before > 0).then(|| term_after - term_before),
        pre_fault_write_p50_ms: (!before.is_empty()).then(|| median(&before)),
        attempts_before_first_ok: attempts,
        stepped_down_ms,
        quiet_elections,
    })
}

fn print_run(r: &RunResult, runs: usize) {
    if !r.ok {
        println!(
            "{} {} run {}/{runs}: node {}: FAILED: {}",
            r.config,
            r.fault,
            r.run,
            r.killed,
            r.error.as_deref().unwrap_or("no acknowledged write")
        );
        return;
    }
    let attempts = r.attempts_before_first_ok.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
    let stepped = r
        .stepped_down_ms
        .map(|m| format!(" | resumed leader stepped down {m:.0} ms after SIGCONT"))
        .unwrap_or_default();
    println!(
        "{} {} run {}/{runs}: {} leader node {}; first write ack {:.1} ms, new leader node {} seen {:.0} ms (terms +{}) | pre-fault write p50 {:.2} ms | attempts ended before first ok: {}{stepped} | load {}",
        r.config,
        r.fault,
        r.run,
        if r.fault == Fault::Crash { "killed" } else { "paused" },
        r.killed,
        r.write_ms.unwrap_or(f64::NAN),
        r.new_leader.map_or("?".to_string(), |n| n.to_string()),
        r.leader_ms.unwrap_or(f64::NAN),
        r.elections.map_or("?".to_string(), |e| e.to_string()),
        r.pre_fault_write_p50_ms.unwrap_or(f64::NAN),
        if attempts.is_empty() { "none".to_string() } else { attempts },
        loadavg()
    );
}

/// Every acknowledged write is on every replica (none lost), and no key was written twice.
async fn verify_writes(mesh: &Mesh, admin: &NodeClient, acked: &[String]) -> anyhow::Result<()> {
    let cluster = mesh.layout.cluster(CLUSTER).context("cluster")?;
    let wanted = acked.len();
    for replica in &cluster.replicas {
        let deadline = Instant::now() + Duration::from_secs(30);
        let detail = loop {
            let detail = admin.annotations_detail(&replica.addr()).await;
            if let Ok(d) = &detail
                && acked.iter().all(|k| d.contains_key(k))
            {
                break detail?;
            }
            if Instant::now() >= deadline {
                let d = detail?;
                let missing: Vec<&String> = acked.iter().filter(|k| !d.contains_key(*k)).take(5).collect();
                anyhow::bail!("node {}: acknowledged writes lost, e.g. {missing:?}", replica.id);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let twice: Vec<&String> =
            detail.iter().filter(|(k, a)| k.starts_with("bench/") && a.version != 1).map(|(k, _)| k).take(5).collect();
        anyhow::ensure!(twice.is_empty(), "node {}: writes applied more than once: {twice:?}", replica.id);
    }
    println!("# verified: all {wanted} acknowledged writes present on all 3 replicas, none applied twice");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse() {
        let c = parse_config("fast:20/60/120").unwrap();
        assert!(c.fast_failover);
        assert_eq!(c.timing.unwrap().heartbeat_ms, 20);
        let c = parse_config("lease:50/150/300:nofast").unwrap();
        assert!(!c.fast_failover);
        assert!(parse_config("x:1/2").is_err());
        assert!(parse_config("x:20/60/120:maybe").is_err());
    }
}
