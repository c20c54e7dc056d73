//! `atoll-bench scale`: one gateway under a thousand simulated clusters.
//!
//! Per database engine: start an `atoll gateway` process on a fresh database, issue every
//! simulated cluster a real certificate from the gateway's CA (each cluster's "leader" speaks
//! mTLS on its own connection, as a real one would), register them all, then for the measured
//! period each heartbeats every heartbeat interval and reports a row of one cell per other
//! cluster every row interval, at evenly spread phases (open loop: a late answer does not delay
//! the next send). Meanwhile an operator reads the full matrix a few times.
//!
//! Reported: registration rate; heartbeat and row latency (p50, p99, max) measured from the
//! scheduled send, so a gateway that falls behind shows as latency, not as fewer requests;
//! `GET /v1/matrix` latency and size; the dashboard's matrix page and its data (server time, p50 /
//! p99) and, in headless chromium, the time from navigation to the heatmap drawn
//! (`e2e/matrix-render.mjs`); the gateway's CPU (from /proc, over the measured period)
//! and memory; the clusters' states at the end (a gateway that keeps up sees all alive). The
//! peer figure is etcd's write latency at 64 concurrent connections in the same invocation
//! (what heartbeats cost when, as in Kubernetes node leases, each is an etcd write).

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use atoll_api::Identity;
use atoll_api::gateway::ClusterState;
use atoll_api::gateway::Heartbeat;
use atoll_api::gateway::LinkState;
use atoll_api::gateway::ReplicaInfo;
use atoll_api::gateway::RowCell;
use atoll_api::gateway::RowReport;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::ids::Term;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::KeyAlgorithm;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsIdentity;
use atoll_api::tls::TrustRoots;
use futures::StreamExt;
use tokio::time::Instant;

use super::loadavg;
use super::median;
use super::ms;
use super::peers::etcd_throughput;
use super::percentile;
use atoll_mesh::EXIT_WITH_PARENT_ENV;
use atoll_mesh::allocate_ports;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Simulated clusters.
    #[arg(long, default_value_t = 1000)]
    pub clusters: usize,
    /// Measured seconds per engine (after registration).
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// Database engines to run against, one gateway each.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    pub engines: Vec<Engine>,
    /// Heartbeat interval of every simulated leader, in ms.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Row interval of every simulated leader, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub row_ms: u64,
    /// Full-matrix reads during the measured period.
    #[arg(long, default_value_t = 6)]
    pub matrix_reads: usize,
    /// Reads of the dashboard's matrix page and of its data (`/matrix.json`) each, during the
    /// measured period.
    #[arg(long, default_value_t = 10)]
    pub dashboard_reads: usize,
    /// Loads of the matrix page in headless chromium (first render of the heatmap), during the
    /// measured period; 0 skips the browser (it needs chromium and `npm ci` in e2e/).
    #[arg(long, default_value_t = 3)]
    pub browser_renders: usize,
    /// PostgreSQL server to create the database on (default: $ATOLL_TEST_POSTGRES_URL, which
    /// scripts/bench sets after starting one).
    #[arg(long)]
    pub postgres_url: Option<String>,
    /// The peer baseline directory (holds etcd-throughput).
    #[arg(long, default_value = "../shared/peers")]
    pub peers: PathBuf,
    /// Seconds of etcd's 64-connection phase in the same invocation; 0 skips etcd.
    #[arg(long, default_value_t = 10)]
    pub etcd_seconds: u64,
}

/// Latencies (ms) and failures of one kind of request.
#[derive(Default)]
struct Samples {
    latency_ms: Vec<f64>,
    errors: usize,
    last_error: Option<String>,
}

impl Samples {
    fn line(&self) -> String {
        if self.latency_ms.is_empty() {
            return format!("n=0 errors={}", self.errors);
        }
        let max = self.latency_ms.iter().copied().fold(0.0, f64::max);
        format!(
            "n={} errors={} latency p50 {:.2} p99 {:.2} max {:.1} ms{}",
            self.latency_ms.len(),
            self.errors,
            median(&self.latency_ms),
            percentile(&self.latency_ms, 99),
            max,
            self.last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
        )
    }
}

/// CPU time (user + system) of a process in seconds, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> { Ok(fields.get(i).context("short /proc stat")?.parse::<f64>()?) };
    // utime and stime are fields 14 and 15 of the whole line; 12 and 13 after the name.
    let clock = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    Ok((ticks(11)? + ticks(12)?) / clock)
}

/// Resident and peak resident memory of a process in MiB, from /proc.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// A gateway process on a fresh database, and what is needed to talk to it.
struct Gateway {
    child: std::process::Child,
    addr: String,
    dashboard_addr: String,
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
    _database: Option<atoll_gateway::testing::TestDatabase>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    async fn start(args: &ScaleArgs, engine: Engine) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let ca = CertificateAuthority::generate("atoll bench CA", Duration::from_secs(86_400))?;
        ca.save(&dir.path().join("ca"))?;
        let ports = allocate_ports(3, 0)?;
        let addr = format!("127.0.0.1:{}", ports[0]);
        let dashboard_addr = format!("127.0.0.1:{}", ports[2]);
        let (database_yaml, database) = match engine {
            Engine::Sqlite => ("database:\n  sqlite:\n    path: gateway.db\n".to_string(), None),
            Engine::Postgres => {
                let server = match &args.postgres_url {
                    Some(url) => url.clone(),
                    None => std::env::var(atoll_gateway::testing::POSTGRES_ENV).map_err(|_| {
                        anyhow::anyhow!(
                            "PostgreSQL: pass --postgres-url or set {} (scripts/bench starts a server and sets it)",
                            atoll_gateway::testing::POSTGRES_ENV
                        )
                    })?,
                };
                let database = atoll_gateway::testing::TestDatabase::postgres_on(&server).await;
                let url = match &database.database {
                    atoll_gateway::config::Database::Postgres { url, .. } => url.clone(),
                    atoll_gateway::config::Database::Sqlite { .. } => anyhow::bail!("expected a PostgreSQL database"),
                };
                (format!("database:\n  postgres:\n    url: \"{url}\"\n    max_connections: 16\n"), Some(database))
            }
        };
        let config = format!(
            "listen: \"{addr}\"\nops_listen: \"127.0.0.1:{}\"\nca_dir: ca\nadmin_token_file: admin.token\ndashboard:\n  listen: \"{dashboard_addr}\"\n{database_yaml}clusters:\n  heartbeat_interval_ms: {}\n  suspect_after_ms: {}\n  dead_after_ms: {}\nmatrix:\n  row_interval_ms: {}\n  stale_after_ms: {}\n",
            ports[1],
            args.heartbeat_ms,
            args.heartbeat_ms * 3,
            args.heartbeat_ms * 10,
            args.row_ms,
            (args.heartbeat_ms * 5).max(args.row_ms / 2),
        );
        std::fs::write(dir.path().join("gateway.yaml"), config)?;
        let log = std::fs::File::create(dir.path().join("gateway.log"))?;
        let child = std::process::Command::new(crate::atoll_exe()?)
            .args(["gateway", "--config"])
            .arg(dir.path().join("gateway.yaml"))
            .env(EXIT_WITH_PARENT_ENV, "1")
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the gateway")?;
        let gateway = Self { child, addr, dashboard_addr, dir, ca, _database: database };
        gateway.wait_ready().await?;
        Ok(gateway)
    }

    fn client(&self, identity: &Identity) -> anyhow::Result<GatewayClient> {
        let issued = self.ca.issue(identity, Duration::from_secs(86_400), KeyAlgorithm::EcdsaP256)?;
        let tls = TlsIdentity::from_pem(
            Path::new("bench CA"),
            self.ca.cert_pem().as_bytes(),
            Path::new("bench cert"),
            issued.cert_pem.as_bytes(),
            Path::new("bench key"),
            issued.key_pem.as_bytes(),
        )?;
        Ok(GatewayClient::new(tls.client_config(ServerPolicy::Gateway)?, &self.addr, None, Duration::from_secs(30))?)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let trust = TrustRoots::from_pem(Path::new("bench CA"), self.ca.cert_pem().as_bytes())?;
        let client = GatewayClient::new(
            trust.anonymous_client_config(ServerPolicy::Gateway)?,
            &self.addr,
            None,
            Duration::from_secs(2),
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.ca().await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the gateway did not serve within 30 s; see {}",
                self.dir.path().join("gateway.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

fn cluster_name(i: usize) -> String {
    format!("sim{i:04}")
}

fn heartbeat(i: usize, view_revision: Option<u64>) -> Heartbeat {
    let endpoint = format!("10.{}.{}.1:7101", i / 250, i % 250);
    Heartbeat {
        term: Term(1),
        leader_id: 1,
        endpoint: endpoint.clone(),
        labels: vec!["sim".to_string()],
        replicas: vec![ReplicaInfo { id: 1, addr: endpoint, voter: true }],
        view_revision,
        capabilities: None,
    }
}

/// One simulated leader for the measured period: heartbeats and rows on its own schedule.
#[allow(clippy::too_many_arguments)]
async fn simulate(
    i: usize,
    client: GatewayClient,
    mut revision: Option<u64>,
    cells: Arc<Vec<RowCell>>,
    start: Instant,
    end: Instant,
    args: Arc<ScaleArgs>,
    results: Arc<Mutex<(Samples, Samples)>>,
) {
    let n = args.clusters as u64;
    let name = cluster_name(i);
    let hb = Duration::from_millis(args.heartbeat_ms);
    let row = Duration::from_millis(args.row_ms);
    let mut next_hb = start + hb.mul_f64((i as u64 % n) as f64 / n as f64);
    let mut next_row = start + row.mul_f64((i as u64 % n) as f64 / n as f64);
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        let due = next_hb.min(next_row);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        if due == next_hb {
            next_hb += hb;
            let (client, name, results) = (client.clone(), name.clone(), results.clone());
            let beat = heartbeat(i, revision);
            // Open loop: the answer is awaited aside, the schedule goes on.
            inflight.spawn(async move {
                let outcome = client.heartbeat(&name, &beat).await;
                let latency = ms(Instant::now() - due);
                let mut r = results.lock().expect("results");
                match outcome {
                    Ok(ack) => {
                        r.0.latency_ms.push(latency);
                        Some(ack.view_revision)
                    }
                    Err(e) => {
                        r.0.errors += 1;
                        r.0.last_error = Some(e.to_string());
                        None
                    }
                }
            });
        } else {
            next_row += row;
            let (client, name, results) = (client.clone(), name.clone(), results.clone());
            let report = RowReport { term: Term(1), cells: cells.iter().filter(|c| c.to != name).cloned().collect() };
            inflight.spawn(async move {
                let outcome = client.report_row(&name, &report).await;
                let latency = ms(Instant::now() - due);
                let mut r = results.lock().expect("results");
                match outcome {
                    Ok(()) => r.1.latency_ms.push(latency),
                    Err(e) => {
                        r.1.errors += 1;
                        r.1.last_error = Some(e.to_string());
                    }
                }
                None
            });
        }
        while let Some(done) = inflight.try_join_next() {
            if let Ok(Some(seen)) = done {
                revision = Some(seen);
            }
        }
    }
    while inflight.join_next().await.is_some() {}
}

/// What one engine's run measured, for the comparison with the peer.
struct EngineResult {
    heartbeats: Samples,
    /// Gateway CPU over the measured period, % of one core.
    cpu_pct: f64,
    /// Requests per second the gateway served (heartbeats and rows).
    requests_per_s: f64,
}

async fn one_engine(args: &ScaleArgs, engine: Engine) -> anyhow::Result<EngineResult> {
    let n = args.clusters;
    println!(
        "## {engine:?}: {n} clusters, heartbeat every {} ms, {}-cell rows every {} ms, {} s measured",
        args.heartbeat_ms,
        n - 1,
        args.row_ms,
        args.duration_s
    );
    let gateway = Gateway::start(args, engine).await?;
    let pid = gateway.child.id();

    let issued_at = Instant::now();
    let clients: Vec<GatewayClient> =
        (1..=n).map(|i| gateway.client(&Identity::node(cluster_name(i).parse()?, 1))).collect::<anyhow::Result<_>>()?;
    let admin = gateway.client(&Identity::Operator { name: "bench".into() })?;
    println!("identities: {n} certificates issued and loaded in {:.1} s", issued_at.elapsed().as_secs_f64());

    let registering = Instant::now();
    let revisions: Vec<Option<u64>> = futures::stream::iter(clients.iter().enumerate())
        .map(|(k, client)| async move {
            let i = k + 1;
            client.heartbeat(&cluster_name(i), &heartbeat(i, None)).await.map(|ack| Some(ack.view_revision))
        })
        .buffered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .context("registering the simulated clusters")?;
    let took = registering.elapsed().as_secs_f64();
    println!("registration: {n} clusters in {took:.1} s ({:.0}/s, 32 at a time)", n as f64 / took);

    let names: Vec<String> = (1..=n).map(cluster_name).collect();
    let cells: Arc<Vec<RowCell>> = Arc::new(
        names
            .iter()
            .enumerate()
            .map(|(k, to)| RowCell {
                to: to.clone(),
                state: LinkState::Reachable,
                rtt_ms: Some(0.2 + (k % 50) as f64 / 10.0),
                loss: 0.0,
            })
            .collect(),
    );
    let shared = Arc::new(args.clone());
    let results = Arc::new(Mutex::new((Samples::default(), Samples::default())));
    let start = Instant::now() + Duration::from_millis(500);
    let end = start + Duration::from_secs(args.duration_s);
    let cpu_before = cpu_seconds(pid)?;
    let own_before = cpu_seconds(std::process::id())?;
    let mut sims = tokio::task::JoinSet::new();
    for (k, (client, revision)) in clients.into_iter().zip(revisions).enumerate() {
        sims.spawn(simulate(k + 1, client, revision, cells.clone(), start, end, shared.clone(), results.clone()));
    }

    // Reads alternate: checked but not kept (the gateway's share), then parsed into cells (what
    // a client holding the matrix pays in addition).
    let (mut matrix, mut parsed) = (Samples::default(), Samples::default());
    let mut matrix_cells = 0;
    for read in 1..=args.matrix_reads {
        let at = start + Duration::from_secs(args.duration_s).mul_f64(read as f64 / (args.matrix_reads + 1) as f64);
        tokio::time::sleep_until(at).await;
        let began = Instant::now();
        let outcome = if read % 2 == 1 {
            admin.get::<serde::de::IgnoredAny>("/v1/matrix").await.map(|_| (&mut matrix, None))
        } else {
            admin.matrix().await.map(|m| (&mut parsed, Some(m.cells.len())))
        };
        match outcome {
            Ok((samples, cells)) => {
                samples.latency_ms.push(ms(began.elapsed()));
                matrix_cells = cells.unwrap_or(matrix_cells);
            }
            Err(e) => {
                matrix.errors += 1;
                matrix.last_error = Some(e.to_string());
            }
        }
    }
    let dashboard = measure_dashboard(args, &gateway).await;
    tokio::time::sleep_until(end).await;
    let cpu = (cpu_seconds(pid)? - cpu_before) / args.duration_s as f64 * 100.0;
    let own = (cpu_seconds(std::process::id())? - own_before) / args.duration_s as f64 * 100.0;
    let (rss, peak) = memory_mib(pid);
    while sims.join_next().await.is_some() {}
    let listed = admin.clusters().await.context("listing clusters at the end")?;
    let count = |s: ClusterState| listed.iter().filter(|c| c.state == s).count();

    let (heartbeats, rows) = std::mem::take(&mut *results.lock().expect("results"));
    println!("heartbeats: {}", heartbeats.line());
    println!("rows:       {}", rows.line());
    println!("matrix GET, JSON checked, not kept: {}", matrix.line());
    println!("matrix GET, parsed into {matrix_cells} cells: {}", parsed.line());
    match dashboard {
        Ok(lines) => lines.iter().for_each(|line| println!("{line}")),
        Err(e) => println!("dashboard: not measured: {e:#}"),
    }
    println!(
        "gateway: CPU {cpu:.0}% of one core over the measured period; memory {rss:.0} MiB resident, {peak:.0} MiB peak"
    );
    println!("load generator (this process): CPU {own:.0}% of one core; load average {}", loadavg());
    println!(
        "at the end the gateway lists {} alive, {} suspect, {} dead",
        count(ClusterState::Alive),
        count(ClusterState::Suspect),
        count(ClusterState::Dead)
    );
    let requests_per_s = (heartbeats.latency_ms.len() + rows.latency_ms.len()) as f64 / args.duration_s as f64;
    Ok(EngineResult { heartbeats, cpu_pct: cpu, requests_per_s })
}

/// The dashboard under the load: server time of the matrix page and of its data, and the
/// browser's first render of the heatmap (headless chromium through `e2e/matrix-render.mjs`).
async fn measure_dashboard(args: &ScaleArgs, gateway: &Gateway) -> anyhow::Result<Vec<String>> {
    let token_file = gateway.dir.path().join("admin.token");
    let token = std::fs::read_to_string(&token_file).context("the gateway's admin token")?.trim().to_string();
    let trust = TrustRoots::from_pem(Path::new("bench CA"), gateway.ca.cert_pem().as_bytes())?;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(trust.anonymous_client_config(ServerPolicy::Gateway)?)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = format!("https://{}", gateway.dashboard_addr);
    let signed = http
        .post(format!("{base}/login"))
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .context("signing in to the dashboard")?;
    let cookie = signed
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no session cookie from the dashboard")?
        .to_string();
    let mut lines = Vec::new();
    for path in ["/matrix", "/matrix.json"] {
        let mut samples = Samples::default();
        let mut bytes = 0;
        for _ in 0..args.dashboard_reads {
            let began = Instant::now();
            match http.get(format!("{base}{path}")).header(reqwest::header::COOKIE, &cookie).send().await {
                Ok(response) if response.status().is_success() => match response.bytes().await {
                    Ok(body) => {
                        samples.latency_ms.push(ms(began.elapsed()));
                        bytes = body.len();
                    }
                    Err(e) => {
                        samples.errors += 1;
                        samples.last_error = Some(e.to_string());
                    }
                },
                Ok(response) => {
                    samples.errors += 1;
                    samples.last_error = Some(format!("status {}", response.status()));
                }
                Err(e) => {
                    samples.errors += 1;
                    samples.last_error = Some(e.to_string());
                }
            }
        }
        lines.push(format!("dashboard GET {path} ({bytes} bytes): {}", samples.line()));
    }
    if args.browser_renders == 0 {
        lines.push("dashboard in the browser: skipped (--browser-renders 0)".to_string());
        return Ok(lines);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = tokio::process::Command::new("node")
        .arg(root.join("e2e/matrix-render.mjs"))
        .env("ATOLL_DASHBOARD", &base)
        .env("ATOLL_TOKEN_FILE", &token_file)
        .env("ATOLL_RUNS", args.browser_renders.to_string())
        .output()
        .await
        .context("node (the browser measurement needs Node.js, chromium and `npm ci` in e2e/)")?;
    anyhow::ensure!(
        output.status.success(),
        "the browser measurement failed: {}",
        String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or_default()
    );
    let renders: Vec<f64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("render_ms ")?.split_whitespace().next()?.parse().ok())
        .collect();
    anyhow::ensure!(!renders.is_empty(), "the browser measurement printed no render time");
    let max = renders.iter().copied().fold(0.0, f64::max);
    lines.push(format!(
        "dashboard in headless chromium, navigation to heatmap drawn: n={} median {:.0} ms, max {:.0} ms",
        renders.len(),
        median(&renders),
        max
    ));
    Ok(lines)
}

pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.clusters >= 2, "--clusters must be 2 or more");
    anyhow::ensure!(args.duration_s >= 1, "--duration-s must be 1 or more");
    anyhow::ensure!(
        args.heartbeat_ms >= 10 && args.row_ms >= args.heartbeat_ms,
        "--heartbeat-ms must be 10 or more and --row-ms at least that"
    );
    let etcd_script = args.peers.join("etcd-throughput");
    anyhow::ensure!(
        args.etcd_seconds == 0 || etcd_script.exists(),
        "{} not found: pass --peers DIR, or --etcd-seconds 0 to skip the peer",
        etcd_script.display()
    );
    println!("# atoll-bench scale: load {}", loadavg());
    let mut ours = Vec::new();
    for &engine in &args.engines {
        ours.push((engine, one_engine(&args, engine).await?));
    }
    if args.etcd_seconds > 0 {
        println!("## peer: etcd writes at 64 concurrent connections (3 members, default timing), same invocation");
        let etcd = etcd_throughput(&etcd_script, 64, args.etcd_seconds).await?;
        let etcd_cpu_ms = etcd.etcd_cpu_pct * 10.0 / etcd.puts_per_s;
        println!(
            "etcd: {:.0} puts/s, p50 {:.2} ms, p99 {:.2} ms, CPU {:.0}% of one core (3 members): {etcd_cpu_ms:.3} ms of CPU per write",
            etcd.puts_per_s, etcd.p50_ms, etcd.p99_ms, etcd.etcd_cpu_pct
        );
        for (engine, result) in &ours {
            if result.heartbeats.latency_ms.is_empty() || result.requests_per_s == 0.0 {
                continue;
            }
            let cpu_ms = result.cpu_pct * 10.0 / result.requests_per_s;
            println!(
                "ratio ours/etcd ({engine:?}): CPU per request {:.2} ({cpu_ms:.3} vs {etcd_cpu_ms:.3} ms; ours at {:.0} req/s, a tenth of them 999-cell rows); \
                 latency (ours open loop at that rate, etcd closed loop at 64 conns) p50 {:.2} p99 {:.2}",
                cpu_ms / etcd_cpu_ms,
                result.requests_per_s,
                median(&result.heartbeats.latency_ms) / etcd.p50_ms,
                percentile(&result.heartbeats.latency_ms, 99) / etcd.p99_ms
            );
        }
    }
    Ok(())
}
