//! Scenarios: a mesh in its sandbox, the workload running throughout, one fault injected and
//! healed, then every checker over what happened. Every random choice (which cluster, how long,
//! which replica a write goes through) comes from the seed the run prints, so a failing run is
//! replayed with `ATOLL_CHAOS_SEED=<seed>` (or `atoll-chaos run --seed`).

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use atoll_api::gateway::LinkState;
use atoll_api::gateway::TransferMode;
use atoll_mesh::GatewayTiming;
use atoll_mesh::replica_name;
use nix::sys::signal::Signal;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use tokio::sync::watch;

use crate::checkers;
use crate::checkers::Applied;
use crate::checkers::PipelineEnd;
use crate::checkers::Verdict;
use crate::delay::DelayProxy;
use crate::harness::CLIENT;
use crate::harness::Chaos;
use crate::harness::DELAY;
use crate::harness::GATEWAY;
use crate::harness::POSTGRES;
use crate::harness::addresses;
use crate::harness::chaos_gateway_timing;
use crate::history::OpKind;
use crate::history::Outcome;
use crate::nemesis;
use crate::nemesis::Fault;
use crate::nemesis::Net;
use crate::nemesis::Planned;
use crate::postgres::Postgres;
use crate::sandbox;
use crate::sandbox::Sandbox;
use crate::workload;

/// How long and how hard a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Every scenario, short: the test command runs it.
    Ci,
    /// Longer faults and more traffic, on demand.
    Soak,
}

impl Profile {
    /// Stretch a CI duration for the profile.
    fn scale(self, d: Duration) -> Duration {
        match self {
            Profile::Ci => d,
            Profile::Soak => d * 4,
        }
    }
}

/// The scenarios, each named after the fault it injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// SIGKILL a cluster's leader; restart it a moment later.
    LeaderCrash,
    /// SIGKILL a follower; restart it a moment later. The leader must stay.
    FollowerCrash,
    /// SIGSTOP a cluster's leader until its peers elect another, then SIGCONT it while it is
    /// cut from them: the zombie still believes it leads, and the gateway must fence it.
    LeaderPause,
    /// Cut a cluster's leader from both its peers (it is the minority); heal.
    MinorityPartition,
    /// Cut a cluster's leader from the gateway only; its peers still reach both.
    LeaderIsolatedFromGateway,
    /// Cut every replica of a cluster from the gateway (they still reach each other and the
    /// other clusters), past the dead-after bound; heal.
    ClusterIsolatedFromGateway,
    /// One cluster stops reaching another (one direction), then the other direction too: edges
    /// between them go from direct to relayed mid-pipeline; heal.
    AsymmetricCut,
    /// SIGKILL every replica of a cluster past the dead-after bound: its work moves; it comes
    /// back and its late results are refused.
    ClusterDeath,
    /// SIGKILL the gateway mid-pipeline; restart it.
    GatewayCrash,
    /// Drop 20% of the packets everywhere and delay every connection between sites (replica to
    /// gateway, replica to another cluster) by 100 ms each way, for a while.
    LossAndLatency,
    /// Cut and heal the link between two leaders, again and again.
    FlappingLink,
    /// Restart every replica of a cluster in turn, as an upgrade would (SIGTERM, start, wait
    /// until it has caught up).
    RollingRestart,
    /// The gateway on PostgreSQL: crash the database (immediate stop) mid-pipeline and start it
    /// again.
    DatabaseRestart,
    /// A job on every cluster printing at full speed (100 MB each) beside the workload: no
    /// cluster may change leader meanwhile.
    NoisyJobs,
    /// Three gateway replicas: SIGKILL the one holding the duties lease mid-pipeline; restart it
    /// after a hold. Another replica takes the lease and schedules; agents move on at once.
    GatewayHolderCrash,
    /// Three gateway replicas: SIGSTOP the lease holder past its lease (until another replica
    /// took it), the workload submitting meanwhile; then SIGCONT it and submit through it. A
    /// zombie scheduler: nothing it writes under its old generation may apply.
    GatewayHolderPause,
    /// Three gateway replicas: cut the lease holder from the database alone (agents and the
    /// other replicas still reach it); heal. It steps down and refuses heartbeats it cannot
    /// record; another replica takes the lease.
    GatewayCutFromDatabase,
    /// Three gateway replicas: cut a cluster's leader from the gateway replica it uses while
    /// the other replicas stay reachable; heal. The leader moves to another replica before the
    /// cluster could be judged dead.
    LeaderCutFromItsGateway,
}

impl Scenario {
    pub const ALL: [Scenario; 18] = [
        Scenario::LeaderCrash,
        Scenario::FollowerCrash,
        Scenario::LeaderPause,
        Scenario::MinorityPartition,
        Scenario::LeaderIsolatedFromGateway,
        Scenario::ClusterIsolatedFromGateway,
        Scenario::AsymmetricCut,
        Scenario::ClusterDeath,
        Scenario::GatewayCrash,
        Scenario::LossAndLatency,
        Scenario::FlappingLink,
        Scenario::RollingRestart,
        Scenario::DatabaseRestart,
        Scenario::NoisyJobs,
        Scenario::GatewayHolderCrash,
        Scenario::GatewayHolderPause,
        Scenario::GatewayCutFromDatabase,
        Scenario::LeaderCutFromItsGateway,
    ];

    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    }

    fn clusters(self) -> usize {
        match self {
            Scenario::ClusterDeath => 3,
            _ => 2,
        }
    }

    /// The gateway's timing: the suite's short bounds, but for a leader cut from its gateway
    /// replica, whose cluster must not be judged dead while its agent waits on that
    /// replica (its request timeout, 5 s): dead after 8 s there (the default is 10 s).
    fn gateway_timing(self) -> GatewayTiming {
        match self {
            Scenario::LeaderCutFromItsGateway => GatewayTiming { dead_after_ms: 8_000, ..chaos_gateway_timing() },
            _ => chaos_gateway_timing(),
        }
    }

    /// How many gateway replicas the scenario's mesh has (1: the only gateway, on SQLite).
    fn gateways(self) -> usize {
        match self {
            Scenario::GatewayHolderCrash
            | Scenario::GatewayHolderPause
            | Scenario::GatewayCutFromDatabase
            | Scenario::LeaderCutFromItsGateway => 3,
            _ => 1,
        }
    }

    /// The scenario as a plan of named faults (clusters left to the seed, holds drawn from it
    /// and stretched by the profile); `None` for the two bespoke drills.
    fn plan(self, profile: Profile, rng: &mut StdRng) -> Option<Vec<Planned>> {
        let mut hold = |lo_ms: u64, hi_ms: u64| profile.scale(Duration::from_millis(rng.random_range(lo_ms..=hi_ms)));
        let one = |fault: Fault, hold: Duration| Some(vec![Planned { fault, at: Duration::ZERO, hold }]);
        match self {
            Scenario::LeaderCrash => one(Fault::KillLeader(None), hold(1_500, 3_000)),
            Scenario::FollowerCrash => one(Fault::KillFollower(None), hold(1_500, 3_000)),
            Scenario::MinorityPartition => one(Fault::PartitionLeader(None), hold(3_000, 5_000)),
            Scenario::LeaderIsolatedFromGateway => one(Fault::IsolateLeader(None), hold(4_000, 6_000)),
            Scenario::ClusterIsolatedFromGateway => one(Fault::IsolateCluster(None), hold(4_000, 6_000)),
            Scenario::ClusterDeath => one(Fault::KillCluster(None), hold(5_000, 7_000)),
            Scenario::GatewayCrash => one(Fault::KillGateway, hold(2_000, 4_000)),
            Scenario::FlappingLink => one(Fault::Flap(None, None), hold(3_000, 5_000)),
            Scenario::RollingRestart => one(Fault::RollingRestart(None), Duration::ZERO),
            Scenario::DatabaseRestart => one(Fault::RestartDatabase, hold(2_000, 4_000)),
            Scenario::GatewayHolderCrash => one(Fault::KillGatewayHolder, hold(2_000, 4_000)),
            // Past the lease (1.5 s) and a retry (the heal also waits for the new holder), but
            // not past what agents wait on the paused replica before the new holder could judge
            // their clusters dead (its 2.5 s from its take): not stretched by the profile.
            Scenario::GatewayHolderPause => {
                one(Fault::PauseGatewayHolder, Duration::from_millis(rng.random_range(2_000..=2_800)))
            }
            Scenario::GatewayCutFromDatabase => one(Fault::CutGatewayFromDatabase, hold(3_000, 5_000)),
            // Past the agent's request timeout (5 s), so the leader moves while cut.
            Scenario::LeaderCutFromItsGateway => one(Fault::CutLeaderFromItsGateway(None), hold(6_000, 8_000)),
            Scenario::LossAndLatency => {
                let held = hold(6_000, 8_000);
                Some(vec![
                    Planned { fault: Fault::Loss(20), at: Duration::ZERO, hold: held },
                    Planned { fault: Fault::Latency(100), at: Duration::ZERO, hold: held },
                ])
            }
            Scenario::LeaderPause | Scenario::AsymmetricCut | Scenario::NoisyJobs => None,
        }
    }
}

/// What a run injects: a scenario, or a plan of named faults composed by hand
/// (`atoll-chaos run --faults SPEC`, see [`nemesis`]).
#[derive(Debug, Clone)]
pub enum Drill {
    Scenario(Scenario),
    /// `gateways`: 1 for the only gateway (on SQLite), more for replicas over PostgreSQL.
    Faults {
        plan: Vec<Planned>,
        clusters: usize,
        gateways: usize,
    },
}

impl Drill {
    pub fn name(&self) -> String {
        match self {
            Drill::Scenario(scenario) => scenario.name(),
            Drill::Faults { .. } => "faults".to_string(),
        }
    }

    fn clusters(&self) -> usize {
        match self {
            Drill::Scenario(scenario) => scenario.clusters(),
            Drill::Faults { clusters, .. } => *clusters,
        }
    }

    fn gateways(&self) -> usize {
        match self {
            Drill::Scenario(scenario) => scenario.gateways(),
            Drill::Faults { gateways, .. } => *gateways,
        }
    }

    fn gateway_timing(&self) -> GatewayTiming {
        match self {
            Drill::Scenario(scenario) => scenario.gateway_timing(),
            Drill::Faults { .. } => chaos_gateway_timing(),
        }
    }

    /// The plan with every cluster chosen, or the bespoke scenario.
    fn resolve(&self, clusters: &[String], profile: Profile, rng: &mut StdRng) -> anyhow::Result<Resolved> {
        let plan = match self {
            Drill::Scenario(scenario) => match scenario.plan(profile, rng) {
                Some(plan) => plan,
                None => return Ok(Resolved::Bespoke(*scenario)),
            },
            Drill::Faults { plan, .. } => plan.clone(),
        };
        Ok(Resolved::Plan(nemesis::resolve(plan, clusters, self.gateways(), rng)?))
    }
}

/// A drill ready to run.
enum Resolved {
    Plan(Vec<Planned>),
    Bespoke(Scenario),
}

impl Resolved {
    fn has(&self, wanted: impl Fn(&Fault) -> bool) -> bool {
        match self {
            Resolved::Plan(plan) => plan.iter().any(|p| wanted(&p.fault)),
            Resolved::Bespoke(_) => false,
        }
    }
}

/// Failover measured in one run: from the fault to the first replica leading a later term.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    pub fault: String,
    pub cluster: String,
    pub ms: Option<u64>,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub profile: Profile,
    /// The faults as run, every cluster chosen (`--faults` replays it); none for a bespoke drill.
    pub plan: Option<String>,
    pub verdicts: Vec<Verdict>,
    pub failovers: Vec<Failover>,
    /// For each job moved off a cluster: from the fault to its next attempt running elsewhere.
    pub reroutes_ms: Vec<u64>,
    pub matrix_settled_ms: Option<u64>,
    pub ops_ok: usize,
    pub ops_failed: usize,
    pub ops_unknown: usize,
    pub pipelines: usize,
    /// The routes the gateway gave inputs during the run (a fallback counts again), and the
    /// edges inside one cluster (`local`, never asked for).
    pub routes: BTreeMap<String, usize>,
    pub seconds: f64,
    pub dir: PathBuf,
    /// Whether `dir` was kept (a broken invariant, or asked for).
    pub kept: bool,
    /// The deliberate breakages the gateway said it runs with (its start warnings).
    pub gateway_broken: Vec<String>,
    /// With gateway replicas: the lease's figures.
    pub lease: Option<LeaseFigures>,
}

/// The duties lease in a run with gateway replicas.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseFigures {
    /// Generations taken during the run (the first one included).
    pub generations: usize,
    /// For each fault, from its injection to the next generation taken (none: no replica took
    /// the lease after it).
    pub taken_after_ms: Vec<Option<u64>>,
    /// Each cluster's longest silence as the database showed it (ms).
    pub longest_silence_ms: BTreeMap<String, u64>,
}

impl Report {
    pub fn holds(&self) -> bool {
        self.verdicts.iter().all(|v| v.holds)
    }

    pub fn print(&self) {
        eprintln!(
            "chaos: {} seed={} profile={:?}: {} ({:.0} s, ops ok/failed/unknown {}/{}/{}, {} pipelines)",
            self.scenario,
            self.seed,
            self.profile,
            if self.holds() { "every invariant holds" } else { "INVARIANT BROKEN" },
            self.seconds,
            self.ops_ok,
            self.ops_failed,
            self.ops_unknown,
            self.pipelines
        );
        if let Some(plan) = &self.plan {
            eprintln!("chaos:   faults: {plan}");
        }
        for f in &self.failovers {
            eprintln!("chaos:   failover after {} in {}: {:?} ms", f.fault, f.cluster, f.ms);
        }
        eprintln!("chaos:   routes given: {:?}", self.routes);
        if !self.reroutes_ms.is_empty() {
            eprintln!("chaos:   moved jobs running elsewhere after (ms from the fault): {:?}", self.reroutes_ms);
        }
        if let Some(ms) = self.matrix_settled_ms {
            eprintln!("chaos:   matrix settled {ms} ms after the heal");
        }
        if let Some(lease) = &self.lease {
            eprintln!(
                "chaos:   lease: {} generations; taken after each fault (ms): {:?}; longest silence (ms): {:?}",
                lease.generations, lease.taken_after_ms, lease.longest_silence_ms
            );
        }
        for v in &self.verdicts {
            eprintln!("chaos:   [{}] {}: {}", if v.holds { "ok" } else { "BROKEN" }, v.invariant, v.detail);
        }
        if self.kept {
            eprintln!("chaos:   files (history.jsonl, report.json, logs/) kept in {}", self.dir.display());
        }
    }
}

/// The seed for a run: `ATOLL_CHAOS_SEED` when set (a replay), else a fresh one.
pub fn seed_from_env() -> anyhow::Result<u64> {
    match std::env::var("ATOLL_CHAOS_SEED") {
        Ok(text) => parse_seed(&text),
        Err(_) => Ok(rand::rng().random()),
    }
}

fn parse_seed(text: &str) -> anyhow::Result<u64> {
    text.trim().parse().with_context(|| format!("ATOLL_CHAOS_SEED={text:?} is not a number (a seed a run printed)"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_seed_is_a_number_and_anything_else_is_named() {
        assert_eq!(super::parse_seed(" 42\n").unwrap(), 42);
        let e = super::parse_seed("abc").unwrap_err().to_string();
        assert!(e.contains("ATOLL_CHAOS_SEED=\"abc\" is not a number"), "{e}");
    }
}

/// Run one scenario on this thread: build the sandbox, move this thread into its client
/// namespace, run, check, remove everything. Ctrl-C or SIGTERM stops the run and still cleans up.
pub fn run(drill: &Drill, profile: Profile, seed: u64, keep: Option<&Path>) -> anyhow::Result<Report> {
    run_with(drill, profile, seed, keep, Breakage::None)
}

/// A deliberately broken mesh, to show the checkers catch what they claim to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breakage {
    None,
    /// The gateway acts on stale leaders (its term fencing off).
    GatewayUnfenced,
    /// The gateway has every edge between clusters pulled, whatever the matrix says.
    MatrixIgnored,
    /// A gateway replica that held the duties lease goes on scheduling after losing it, its
    /// writes unfenced (a mesh with gateway replicas).
    LeaseUnfenced,
}

/// What a gateway broken so warns at start (`Breakage::warnings` of the gateway).
const BROKEN_WARNINGS: [&str; 3] =
    ["TERM FENCING IS OFF", "FORWARDING IGNORES THE MATRIX", "THE DUTIES LEASE IS UNFENCED"];

/// [`run`] on a mesh broken as `breakage` says.
pub fn run_with(
    drill: &Drill,
    profile: Profile,
    seed: u64,
    keep: Option<&Path>,
    breakage: Breakage,
) -> anyhow::Result<Report> {
    let name = drill.name();
    eprintln!("chaos: {name} seed={seed} (replay: ATOLL_CHAOS_SEED={seed}) breakage={breakage:?}");
    sandbox::preflight()?;
    crate::harness::atoll_exe()?;
    let swept = sandbox::sweep_stale()?;
    if !swept.is_empty() {
        eprintln!("chaos: removed namespaces of earlier runs that did not clean up: {swept:?}");
    }
    let dir = match keep {
        Some(root) => {
            let dir = root.join(format!("{name}-{seed}"));
            std::fs::create_dir_all(&dir)?;
            tempfile::Builder::new().prefix("run-").tempdir_in(dir)?
        }
        None => tempfile::Builder::new().prefix("atoll-chaos-").tempdir()?,
    };
    let mut layout = Chaos::layout(drill.clusters(), drill.gateways(), sandbox::netns_name)?;
    let timing = drill.gateway_timing();
    if let Some(gateway) = &mut layout.gateway {
        gateway.timing = Some(timing);
    }
    for cluster in &mut layout.clusters {
        cluster.job_writable_paths = vec![dir.path().join(crate::harness::SHARED)];
    }
    let cluster_names: Vec<String> = layout.clusters.iter().map(|c| c.name.clone()).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let resolved = drill.resolve(&cluster_names, profile, &mut rng)?;
    let plan = match &resolved {
        Resolved::Plan(plan) => Some(nemesis::describe(plan)),
        Resolved::Bespoke(_) => None,
    };
    if let Some(plan) = &plan {
        eprintln!("chaos: faults {plan}");
    }
    let switch = match breakage {
        Breakage::None => None,
        Breakage::GatewayUnfenced => Some(crate::broken::DISABLE_FENCING_ENV),
        Breakage::MatrixIgnored => Some(crate::broken::IGNORE_MATRIX_ENV),
        Breakage::LeaseUnfenced => Some(crate::broken::LEASE_UNFENCED_ENV),
    };
    if let (Some(switch), Some(gateway)) = (switch, &mut layout.gateway) {
        // The product gateway cannot be broken: the suite's own gateway binary runs instead.
        gateway.exe = Some(crate::harness::broken_gateway_exe()?);
        gateway.env.push((switch.to_string(), "1".to_string()));
    }
    let mut sandbox = Sandbox::create(&addresses(&layout))?;
    let proxy = match resolved.has(|f| matches!(f, Fault::Latency(_))) {
        true => Some(delay_between_sites(&sandbox, &layout)?),
        false => None,
    };
    let replicated = layout.gateway.as_ref().is_some_and(|g| g.ha);
    let postgres = if replicated {
        // The replicas' database, in a namespace of its own: a replica can be cut from it alone.
        Some(Postgres::start(&sandbox.endpoint(POSTGRES)?.netns, &sandbox.ip(POSTGRES)?.to_string())?)
    } else if resolved.has(|f| *f == Fault::RestartDatabase) {
        Some(Postgres::start(&sandbox.endpoint(GATEWAY)?.netns, "127.0.0.1")?)
    } else {
        None
    };
    if let (Some(postgres), Some(gateway)) = (&postgres, &mut layout.gateway) {
        gateway.postgres_url = Some(postgres.url());
    }
    let database_url = postgres.as_ref().filter(|_| replicated).map(Postgres::url);
    sandbox.enter(CLIENT)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let started = Instant::now();
    let outcome = runtime.block_on(async {
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut chaos = Chaos::start(dir.path(), layout, seed).await?;
        chaos.database = database_url.as_deref().map(crate::database::Database::connect).transpose()?;
        let result = tokio::select! {
            result = drive(&mut chaos, Net { sandbox: &sandbox, proxy: proxy.as_ref(), postgres: postgres.as_ref() }, &resolved, profile, &mut rng) => result,
            _ = interrupt.recv() => Err(anyhow::anyhow!("interrupted")),
            _ = terminate.recv() => Err(anyhow::anyhow!("terminated")),
        };
        chaos.mesh.stop_all(Duration::from_secs(5)).await;
        let mut evidence = result?;
        // What the replicas wrote is read once they all stopped (one stopping takes the lease
        // another released, for a moment): the evidence is then as complete as their logs.
        if let (Some(replicated), Some(database)) = (&mut evidence.replicated, &chaos.database) {
            replicated.history = database.lease_history().await?;
            replicated.attempts = database.attempts().await?;
        }
        anyhow::Ok((chaos, evidence))
    });
    drop(runtime);
    drop(proxy);
    drop(postgres);
    let leftovers = sandbox.remove();
    let (chaos, evidence) = match outcome {
        Ok(done) => done,
        Err(e) => {
            let kept = dir.keep();
            anyhow::bail!("{name} seed={seed}: {e:#} (files kept in {})", kept.display());
        }
    };
    let logs = Logs::read(&chaos);
    let mut verdicts = evidence.verdicts(&chaos, &logs);
    if let Some(replicated) = &evidence.replicated
        && !resolved.has(Fault::may_lose_a_cluster)
    {
        let moved: Vec<String> =
            logs.gateways.iter().flat_map(|(role, log)| checkers::work_moved_lines(role, log)).collect();
        verdicts.push(checkers::clusters_heard_throughout(
            &chaos.clusters(),
            &moved,
            &replicated.attempts,
            &replicated.samples,
            &replicated.history,
            heard_bound(&resolved, &chaos.history.faults(), &timing).as_millis() as u64,
            timing.dead_after_ms,
        ));
    }
    verdicts
        .push(checkers::work_moves_only_off_lost_clusters(&evidence.jobs(), resolved.has(Fault::may_lose_a_cluster)));
    verdicts.push(checkers::nothing_left_running(&leftovers?));
    let (ops_ok, ops_failed, ops_unknown) = chaos.history.counts();
    let report = Report {
        scenario: name,
        seed,
        profile,
        plan,
        failovers: evidence.failovers(&chaos, &logs),
        reroutes_ms: evidence.reroutes(&chaos),
        matrix_settled_ms: evidence.matrix_settled_ms,
        verdicts,
        ops_ok,
        ops_failed,
        ops_unknown,
        pipelines: evidence.ends.len(),
        routes: evidence.routes(),
        seconds: started.elapsed().as_secs_f64(),
        dir: dir.path().to_path_buf(),
        kept: false,
        gateway_broken: BROKEN_WARNINGS
            .into_iter()
            .filter(|warning| logs.gateways.iter().any(|(_, log)| log.contains(warning)))
            .map(str::to_string)
            .collect(),
        lease: evidence.lease_figures(&chaos),
    };
    std::fs::write(dir.path().join("history.jsonl"), chaos.history.to_jsonl())?;
    if let Some(replicated) = &evidence.replicated {
        std::fs::write(dir.path().join("database.json"), serde_json::to_vec_pretty(replicated)?)?;
    }
    std::fs::write(dir.path().join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    let report = if report.holds() && keep.is_none() {
        report
    } else {
        let kept = dir.keep();
        Report { dir: kept, kept: true, ..report }
    };
    report.print();
    Ok(report)
}

/// What a bespoke drill saw while it injected.
#[derive(Default)]
struct Observed {
    /// Every matrix state waited for.
    matrix_waits: Vec<checkers::MatrixWait>,
    /// When jobs printed at full speed (`noisy-jobs`).
    noisy: Option<checkers::Window>,
}

/// What a run leaves for the checkers besides the history and the logs.
struct Evidence {
    applied: BTreeMap<String, Applied>,
    ends: Vec<PipelineEnd>,
    matrix_settled_ms: Option<u64>,
    /// Every matrix state waited for, the final settling included.
    matrix_waits: Vec<checkers::MatrixWait>,
    /// The bound a change must show within.
    matrix_bound_ms: u64,
    /// The gateway's matrix, polled throughout.
    matrices: Vec<workload::MatrixSnapshot>,
    /// When jobs printed at full speed (`noisy-jobs`): no leader may change then.
    noisy: Option<checkers::Window>,
    /// With gateway replicas: what their database showed.
    replicated: Option<Replicated>,
}

/// What the gateway replicas' database showed: the clusters' heartbeat times sampled during the
/// run and, once every process stopped, the lease's history and every attempt (a run's
/// `database.json`).
#[derive(Serialize)]
struct Replicated {
    samples: Vec<checkers::HeardSample>,
    history: Vec<checkers::Generation>,
    attempts: Vec<checkers::AttemptRecord>,
}

/// What the checkers and the figures read from the processes' logs, read once.
struct Logs {
    claims: Vec<checkers::LeadClaim>,
    /// The gateway's log, or each gateway replica's, by role.
    gateways: Vec<(String, String)>,
}

impl Logs {
    fn read(chaos: &Chaos) -> Self {
        let mut claims = Vec::new();
        let mut gateways = Vec::new();
        let gateway_roles = chaos.gateway_roles();
        for (role, log) in chaos.logs() {
            if gateway_roles.contains(&role) {
                gateways.push((role, log));
            } else if let Some((cluster, id)) = crate::harness::split_role(&role) {
                claims.extend(checkers::lead_claims(cluster, id, &log));
            }
        }
        Self { claims, gateways }
    }
}

impl Evidence {
    fn jobs(&self) -> Vec<atoll_api::jobs::JobDetail> {
        self.ends.iter().flat_map(|e| e.jobs.iter().cloned()).collect()
    }

    fn verdicts(&self, chaos: &Chaos, logs: &Logs) -> Vec<Verdict> {
        let claims = &logs.claims;
        let registrations: Vec<Vec<checkers::Registration>> =
            logs.gateways.iter().map(|(_, log)| checkers::registrations(log)).collect();
        let jobs = self.jobs();
        let ops = chaos.history.ops();
        let ledger = checkers::parse_ledger(&std::fs::read_to_string(&chaos.ledger).unwrap_or_default());
        let mut verdicts = vec![
            checkers::one_leader_per_term(claims),
            checkers::gateway_follows_terms(&registrations, &jobs),
            checkers::annotations_durable(&ops, &self.applied),
            checkers::exactly_one_result(&ops, &self.ends, &ledger),
            checkers::outputs_match(&self.ends, &ledger),
            checkers::matrix_follows(&self.matrix_waits, self.matrix_bound_ms),
            checkers::routes_follow_the_matrix(
                &jobs,
                &self.matrices,
                if self.replicated.is_some() { REPLICATION_LAG.as_millis() as i64 } else { 0 },
            ),
        ];
        if let Some(window) = &self.noisy {
            verdicts.push(checkers::leaders_kept(claims, window));
        }
        if let Some(replicated) = &self.replicated {
            let takes: Vec<checkers::LeaseTake> =
                logs.gateways.iter().flat_map(|(role, log)| checkers::lease_takes(role, log)).collect();
            verdicts.extend([
                checkers::one_holder_per_generation(&takes, &replicated.history),
                checkers::no_job_placed_twice(&replicated.attempts),
                checkers::no_old_generation_writes(&replicated.attempts, &replicated.history),
            ]);
        }
        verdicts
    }

    /// The lease's figures (a run with gateway replicas).
    fn lease_figures(&self, chaos: &Chaos) -> Option<LeaseFigures> {
        let replicated = self.replicated.as_ref()?;
        let taken_after_ms = chaos
            .history
            .faults()
            .iter()
            .map(|f| {
                let injected = (f.injected_at.unix_timestamp_nanos() / 1_000_000) as i64;
                let next = replicated.history.iter().filter(|g| g.acquired_ms >= injected).map(|g| g.acquired_ms).min();
                next.map(|at| (at - injected) as u64)
            })
            .collect();
        let mut longest_silence_ms: BTreeMap<String, u64> = BTreeMap::new();
        for sample in &replicated.samples {
            if let Some(seen) = sample.last_seen_ms {
                let ms = u64::try_from(sample.at_ms - seen).unwrap_or(0);
                let longest = longest_silence_ms.entry(sample.cluster.clone()).or_default();
                *longest = (*longest).max(ms);
            }
        }
        Some(LeaseFigures { generations: replicated.history.len(), taken_after_ms, longest_silence_ms })
    }

    fn routes(&self) -> BTreeMap<String, usize> {
        let mut routes = BTreeMap::new();
        for detail in self.ends.iter().flat_map(|e| e.jobs.iter()) {
            for taken in detail.attempts.iter().flat_map(|a| a.routes.iter()) {
                *routes.entry(taken.route.as_str().to_string()).or_default() += 1;
            }
            let local = detail.job.inputs.iter().filter(|i| i.route == Some(atoll_api::jobs::Route::Local)).count();
            if local > 0 {
                *routes.entry("local".to_string()).or_default() += local;
            }
        }
        routes
    }

    fn reroutes(&self, chaos: &Chaos) -> Vec<u64> {
        let Some(fault) = chaos.history.faults().into_iter().next() else { return Vec::new() };
        let injected_ms = (fault.injected_at.unix_timestamp_nanos() / 1_000_000) as i64;
        let mut out = Vec::new();
        for detail in self.ends.iter().flat_map(|e| e.jobs.iter()) {
            for moved in detail.attempts.iter().filter(|a| a.state == "moved") {
                let next = detail.attempts.iter().find(|a| a.attempt == moved.attempt + 1);
                if let Some(started) = next.and_then(|a| a.started_ms) {
                    out.push(u64::try_from(started - injected_ms).unwrap_or(0));
                }
            }
        }
        out.sort_unstable();
        out
    }

    fn failovers(&self, chaos: &Chaos, logs: &Logs) -> Vec<Failover> {
        let claims = &logs.claims;
        chaos
            .history
            .faults()
            .into_iter()
            .filter_map(|f| {
                let (cluster, term) = (f.cluster.clone()?, f.term_before?);
                let first = claims
                    .iter()
                    .filter(|c| c.cluster == cluster && c.term > term && c.at >= f.injected_at)
                    .map(|c| c.at)
                    .min();
                let ms = first.map(|at| (at - f.injected_at).whole_milliseconds().max(0) as u64);
                Some(Failover { fault: f.fault, cluster, ms })
            })
            .collect()
    }
}

/// The run itself: workload on, fault in and out, workload off, then gather the evidence.
async fn drive(
    chaos: &mut Chaos,
    net: Net<'_>,
    drill: &Resolved,
    profile: Profile,
    rng: &mut StdRng,
) -> anyhow::Result<Evidence> {
    let seed = chaos.seed;
    let history = Arc::new(std::mem::take(&mut chaos.history));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    for (i, cluster) in chaos.clusters().into_iter().enumerate() {
        let addrs = chaos.replica_ids(&cluster).iter().map(|id| chaos.addr(&cluster, *id)).collect();
        tasks.push(tokio::spawn(workload::annotation_writer(
            chaos.node.clone(),
            cluster,
            addrs,
            history.clone(),
            seed.wrapping_add(i as u64),
            stopped.clone(),
        )));
    }
    tasks.push(tokio::spawn(workload::submitter(
        chaos.gateway.clone(),
        chaos.clusters(),
        chaos.ledger.clone(),
        history.clone(),
        profile.scale(Duration::from_millis(1_500)) / 2,
        600,
        seed,
        stopped.clone(),
    )));
    // The matrix as the suite sees it, until every pipeline has ended (routes are given until then).
    let (stop_watching, watching) = watch::channel(false);
    let watcher = tokio::spawn(workload::matrix_watcher(chaos.gateway.clone(), Duration::from_millis(200), watching));
    // With gateway replicas: the clusters' heartbeat times in their database, sampled likewise.
    let sampler = chaos
        .database
        .clone()
        .map(|database| tokio::spawn(crate::database::heard_sampler(database, HEARD_SAMPLE_EVERY, stopped.clone())));
    // The tasks share the run's history; it is moved back into `chaos` once they are done.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut observed = Observed::default();
    let healed_at = inject(chaos, net, &history, drill, profile, rng, &mut observed).await?;
    let Observed { mut matrix_waits, noisy } = observed;

    // Every process runs again and every cluster leads: the workload keeps going meanwhile.
    for cluster in chaos.clusters() {
        chaos.wait_leader(&cluster, Duration::from_secs(60)).await?;
    }
    let bound = matrix_bound(&chaos.timing());
    let matrix_settled_ms =
        wait_matrix(chaos, healed_at, bound + Duration::from_secs(10), |_| Some(LinkState::Reachable)).await;
    matrix_waits
        .push(checkers::MatrixWait { what: "every pair reachable after the heal".into(), after_ms: matrix_settled_ms });
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send_replace(true);
    for task in tasks {
        task.await.context("a workload task panicked")?;
    }
    chaos.history = Arc::try_unwrap(history).map_err(|_| anyhow::anyhow!("the history is still shared"))?;

    let samples = match sampler {
        Some(sampler) => Some(sampler.await.context("the heartbeat sampler panicked")?),
        None => None,
    };
    let ends = pipeline_ends(chaos, Duration::from_secs(120)).await?;
    stop_watching.send_replace(true);
    let matrices = watcher.await.context("the matrix watcher panicked")?;
    let applied = applied_annotations(chaos, Duration::from_secs(30)).await;
    // The lease's history and the attempts are read once the mesh stopped (`run_with`).
    let replicated = samples.map(|samples| Replicated { samples, history: Vec::new(), attempts: Vec::new() });
    Ok(Evidence {
        applied,
        ends,
        matrix_settled_ms,
        matrix_waits,
        matrix_bound_ms: bound.as_millis() as u64,
        matrices,
        noisy,
        replicated,
    })
}

/// How far one gateway replica's matrix may lag another's: rows are written every 250 ms and
/// read by the other replicas every second, with the read's own time to spare.
const REPLICATION_LAG: Duration = Duration::from_millis(1_500);

/// How often the clusters' heartbeat times are read from the gateway replicas' database.
const HEARD_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The agent's timeout for a request to a gateway replica (`REQUEST_TIMEOUT` of the agent's
/// link): how long a replica that went silent (paused, cut off) holds a leader's heartbeat.
const AGENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a cluster may go unheard, by the gateway replicas' database, across the faults of a
/// run: the longest an agent waits on a failing replica ([`agent_wait`]), then what moving on
/// and being recorded takes: the heartbeats the failing replica heard but had not written yet
/// (it writes every 250 ms), a heartbeat interval, a pause of at most 400 ms before each of the
/// two other replicas, the next replica's write (250 ms) and the suite's sampling.
fn heard_bound(plan: &Resolved, faults: &[crate::history::FaultEvent], timing: &GatewayTiming) -> Duration {
    let Resolved::Plan(plan) = plan else { return AGENT_REQUEST_TIMEOUT };
    let paused = faults
        .iter()
        .filter(|f| f.fault.starts_with(nemesis::PAUSE_HOLDER_EVENT))
        .filter_map(|f| Some(Duration::from_millis(f.healed_ms? - f.injected_ms)))
        .max();
    let lease = crate::harness::chaos_lease_timing();
    let wait = plan
        .iter()
        .map(|p| match &p.fault {
            Fault::PauseGatewayHolder => agent_wait(&p.fault, paused.unwrap_or(p.hold), &lease),
            fault => agent_wait(fault, p.hold, &lease),
        })
        .max()
        .unwrap_or_default();
    let written = Duration::from_millis(250);
    wait + written
        + Duration::from_millis(timing.heartbeat_interval_ms)
        + 2 * Duration::from_millis(400)
        + written
        + HEARD_SAMPLE_EVERY
}

/// How long an agent may wait on a gateway replica `fault` makes fail before it moves on to
/// another (`held`: how long the fault lasted).
fn agent_wait(fault: &Fault, held: Duration, lease: &atoll_mesh::LeaseTiming) -> Duration {
    match fault {
        // Its connections are reset: the agent moves on at once.
        Fault::KillGatewayHolder => Duration::ZERO,
        // Its requests wait until it wakes (the agent's timeout at most).
        Fault::PauseGatewayHolder => held.min(AGENT_REQUEST_TIMEOUT),
        // It refuses heartbeats once its database writes have failed for three renew intervals.
        Fault::CutGatewayFromDatabase => 3 * Duration::from_millis(lease.renew_interval_ms),
        // The agent's request to it times out.
        Fault::CutLeaderFromItsGateway(_) => AGENT_REQUEST_TIMEOUT,
        // Any other fault: as long as it lasts.
        _ => held,
    }
}

/// How long the matrix may take to show a healed link: a probe round (interval + timeout) to
/// see it, a row report to carry it, with one of each to spare, plus the dead-after bound for a
/// cluster that has just come back to register again.
fn matrix_bound(t: &GatewayTiming) -> Duration {
    Duration::from_millis(2 * (t.probe_interval_ms + t.probe_timeout_ms + t.row_interval_ms) + t.dead_after_ms)
}

/// How long after `since` every cell of the matrix was in the state `want` gives it (`None`:
/// any state), with the mode that follows (direct when either direction is reachable);
/// `None` if not within `timeout`. Polled every 100 ms.
async fn wait_matrix(
    chaos: &Chaos,
    since: Instant,
    timeout: Duration,
    want: impl Fn(&atoll_api::gateway::MatrixCell) -> Option<LinkState>,
) -> Option<u64> {
    let deadline = since + timeout;
    let n = chaos.clusters().len();
    while Instant::now() < deadline {
        if let Ok(matrix) = chaos.gateway.matrix().await
            && matrix.cells.len() == n * (n - 1)
            && matrix.cells.iter().all(|c| want(c).is_none_or(|state| c.state == state))
            && matrix.cells.iter().all(|c| {
                let back = matrix.cells.iter().find(|b| b.from == c.to && b.to == c.from);
                let either = c.state == LinkState::Reachable || back.is_some_and(|b| b.state == LinkState::Reachable);
                c.mode == if either { TransferMode::Direct } else { TransferMode::Relay }
            })
        {
            return Some(Instant::now().saturating_duration_since(since).as_millis() as u64);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Every acknowledged pipeline's jobs once they all ended (or as they are at the deadline).
async fn pipeline_ends(chaos: &Chaos, timeout: Duration) -> anyhow::Result<Vec<PipelineEnd>> {
    let ids: Vec<String> = chaos
        .history
        .ops()
        .into_iter()
        .filter_map(|op| match op.kind {
            OpKind::Submit { pipeline: Some(id), .. } if op.outcome == Outcome::Ok => Some(id),
            _ => None,
        })
        .collect();
    let deadline = Instant::now() + timeout;
    loop {
        let mut ends = Vec::new();
        let mut pending = 0;
        for id in &ids {
            let Ok(submitted) = chaos.gateway.pipeline(id).await else {
                pending += 1;
                continue;
            };
            pending += submitted.jobs.iter().filter(|j| !j.state.is_final()).count();
            let mut jobs = Vec::new();
            for job in &submitted.jobs {
                if let Ok(detail) = chaos.gateway.job(&job.id).await {
                    jobs.push(detail);
                }
            }
            ends.push(PipelineEnd { pipeline: id.clone(), jobs });
        }
        if pending == 0 || Instant::now() >= deadline {
            return Ok(ends);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The annotations every replica holds, once each holds every acknowledged one (or at the
/// deadline, as they are).
async fn applied_annotations(chaos: &Chaos, timeout: Duration) -> BTreeMap<String, Applied> {
    let acked: Vec<(String, String)> = chaos
        .history
        .ops()
        .into_iter()
        .filter_map(|op| match op.kind {
            OpKind::Annotate { cluster, key, .. } if op.outcome == Outcome::Ok => Some((cluster, key)),
            _ => None,
        })
        .collect();
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = BTreeMap::new();
        let mut complete = true;
        for cluster in chaos.clusters() {
            let mut replicas = Applied::new();
            for id in chaos.replica_ids(&cluster) {
                let applied = chaos.node.annotations(&chaos.addr(&cluster, id)).await.unwrap_or_default();
                complete &= acked.iter().filter(|(c, _)| *c == cluster).all(|(_, key)| applied.contains_key(key));
                replicas.insert(replica_name(&cluster, id), applied);
            }
            all.insert(cluster, replicas);
        }
        if complete || Instant::now() >= deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Inject the drill's faults and heal them; returns when the last heal happened. Scenarios are
/// plans of named faults ([`nemesis`]), but for two drills that react to what they see: the
/// zombie leader (paused until its peers elected another) and the asymmetric cut (each step
/// waited for in the matrix).
async fn inject(
    chaos: &mut Chaos,
    net: Net<'_>,
    history: &crate::history::History,
    drill: &Resolved,
    profile: Profile,
    rng: &mut StdRng,
    observed: &mut Observed,
) -> anyhow::Result<Instant> {
    let waits = &mut observed.matrix_waits;
    let Net { sandbox, .. } = net;
    let scenario = match drill {
        Resolved::Plan(plan) => {
            nemesis::perform(chaos, net, history, plan, rng).await?;
            return Ok(Instant::now());
        }
        Resolved::Bespoke(scenario) => *scenario,
    };
    let clusters = chaos.clusters();
    let target = clusters[rng.random_range(0..clusters.len())].clone();
    let other = clusters.iter().find(|c| **c != target).cloned().unwrap_or_default();
    let mut hold = |lo_ms: u64, hi_ms: u64| profile.scale(Duration::from_millis(rng.random_range(lo_ms..=hi_ms)));
    match scenario {
        Scenario::LeaderPause => {
            // A zombie: paused and cut from its peers until they elect another leader, then
            // resumed still cut, so nothing tells it its term is over but the gateway.
            let (leader, term) = chaos.wait_leader(&target, Duration::from_secs(30)).await?;
            let role = replica_name(&target, leader);
            let peers: Vec<u64> = chaos.replica_ids(&target).into_iter().filter(|id| *id != leader).collect();
            let fault = history.injected("pause leader", &role, Some(&target), Some(term));
            chaos.signal(&role, Signal::SIGSTOP)?;
            // Cut at once, before the peers' election: nothing of the new term may wait in the
            // zombie's socket buffers for when it resumes.
            for peer in &peers {
                sandbox.cut(&role, &replica_name(&target, *peer))?;
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            'elected: loop {
                for peer in &peers {
                    if let Ok(status) = chaos.node.status(&chaos.addr(&target, *peer)).await
                        && status.role == atoll_api::node::Role::Leader
                    {
                        break 'elected;
                    }
                }
                anyhow::ensure!(Instant::now() < deadline, "no new leader in {target} while {role} was paused");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(hold(500, 1_500)).await;
            chaos.signal(&role, Signal::SIGCONT)?;
            tokio::time::sleep(hold(1_500, 3_000)).await;
            for peer in &peers {
                sandbox.heal(&role, &replica_name(&target, *peer))?;
            }
            history.healed(fault);
        }
        Scenario::AsymmetricCut => {
            let roles = |c: &str| chaos.replica_ids(c).into_iter().map(|id| replica_name(c, id)).collect::<Vec<_>>();
            let (from, to) = (roles(&target), roles(&other));
            let (one, back) = (hold(2_000, 3_000), hold(3_000, 5_000));
            let bound = matrix_bound(&chaos.timing());
            let one_way = history.injected("cut one direction", &format!("{target}->{other}"), None, None);
            let cut_at = Instant::now();
            set_refusal(sandbox, &to, &from, true)?;
            let shown = wait_matrix(chaos, cut_at, bound, |c| {
                (c.from == target && c.to == other).then_some(LinkState::Unreachable)
            })
            .await;
            waits.push(checkers::MatrixWait {
                what: format!("{target}->{other} unreachable, still direct"),
                after_ms: shown,
            });
            tokio::time::sleep(one.saturating_sub(cut_at.elapsed())).await;
            let both = history.injected("cut the other direction", &format!("{other}->{target}"), None, None);
            let cut_at = Instant::now();
            set_refusal(sandbox, &from, &to, true)?;
            let shown = wait_matrix(chaos, cut_at, bound, |c| {
                let pair = (c.from == target && c.to == other) || (c.from == other && c.to == target);
                pair.then_some(LinkState::Unreachable)
            })
            .await;
            waits.push(checkers::MatrixWait {
                what: format!("{target}<->{other} unreachable, relayed"),
                after_ms: shown,
            });
            tokio::time::sleep(back.saturating_sub(cut_at.elapsed())).await;
            set_refusal(sandbox, &to, &from, false)?;
            set_refusal(sandbox, &from, &to, false)?;
            history.healed(one_way);
            history.healed(both);
        }
        Scenario::NoisyJobs => {
            let jobs: Vec<String> = clusters
                .iter()
                .map(|c| {
                    format!(
                        "  - name: noisy-{c}\n    type: command\n    command: yes \"$(printf '%099d' 0)\" | head -c 100000000\n    cluster: {{selector: [{c}]}}\n    timeout: 300\n"
                    )
                })
                .collect();
            let spec = atoll_api::spec::parse_document(&format!("version: 1\njobs:\n{}", jobs.join("")))
                .map_err(|e| anyhow::anyhow!("the noisy pipeline: {e}"))?;
            let fault = history.injected("jobs printing at full speed", "every cluster", None, None);
            let from = time::OffsetDateTime::now_utc();
            let submitted = chaos
                .gateway
                .submit(&atoll_api::jobs::SubmitRequest { spec, files: Default::default() })
                .await
                .context("submitting the noisy pipeline")?;
            let deadline = Instant::now() + Duration::from_secs(240);
            for job in &submitted.jobs {
                loop {
                    let state = chaos.gateway.job(&job.id).await.map(|d| d.job.state);
                    if matches!(state, Ok(s) if s.is_final()) {
                        break;
                    }
                    anyhow::ensure!(Instant::now() < deadline, "the noisy job {} did not end in 240 s", job.name);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            observed.noisy = Some(checkers::Window { from, to: time::OffsetDateTime::now_utc() });
            history.healed(fault);
        }
        other => anyhow::bail!("{} is a plan of named faults, not a bespoke drill", other.name()),
    }
    Ok(Instant::now())
}

/// Put the delaying proxy between sites: every connection a replica opens to the gateway or to
/// a replica of another cluster goes through it (the suite's own client stays direct).
fn delay_between_sites(sandbox: &Sandbox, layout: &atoll_mesh::Layout) -> anyhow::Result<DelayProxy> {
    let gateway = layout.gateway.as_ref().context("no gateway")?;
    let mut destinations: Vec<(Option<String>, String, u16)> = (0..gateway.replicas.len())
        .filter_map(|i| Some((None, crate::harness::gateway_role(layout, i)?, gateway.replicas[i].port)))
        .collect();
    for (cluster, replica) in layout.all() {
        destinations.push((Some(cluster.name.clone()), replica_name(&cluster.name, replica.id), replica.port));
    }
    let proxy_ip = sandbox.ip(DELAY)?;
    let mut routes = Vec::new();
    for (index, (site, role, port)) in destinations.iter().enumerate() {
        let proxy_port = 20_000 + index as u16;
        routes.push(((proxy_ip, proxy_port).into(), (sandbox.ip(role)?, *port).into()));
        for (cluster, replica) in layout.all() {
            if site.as_deref() != Some(cluster.name.as_str()) {
                sandbox.redirect(&replica_name(&cluster.name, replica.id), role, *port, DELAY, proxy_port)?;
            }
        }
    }
    DelayProxy::start(&sandbox.netns_path(DELAY)?, routes)
}

/// Make every replica in `at` refuse (or accept again) connections from every one in `from`.
fn set_refusal(sandbox: &Sandbox, at: &[String], from: &[String], refused: bool) -> anyhow::Result<()> {
    for to in at {
        for source in from {
            sandbox.refuse(to, source, refused)?;
        }
    }
    Ok(())
}
