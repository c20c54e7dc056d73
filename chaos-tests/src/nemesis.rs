//! The nemesis: named faults, each held for a duration, composed into a plan that may overlap
//! them in time. Scenarios are plans (and two bespoke drills, see [`crate::scenario`]); a user
//! composes their own with `atoll-chaos run --faults SPEC`:
//!
//! ```text
//! SPEC  = ITEM ("," ITEM)*
//! ITEM  = FAULT [":" ARG] ["@" START] ["+" HOLD]      START defaults to 0s; HOLD is required
//!                                                     except for rolling-restart
//! e.g.    kill-leader:aws@1s+2s, cut-one-way:aws>gcp@0s+6s, loss:20@2s+3s
//! ```
//!
//! Durations are `1.5s` or `500ms`. A cluster left out is chosen by the run's seed. Overlapping
//! faults compose: a link cut by two faults heals when both have healed, a replica killed by two
//! is started again when both have; two loss (or two latency) faults may not overlap.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use atoll_mesh::replica_name;
use nix::sys::signal::Signal;
use rand::Rng;
use rand::rngs::StdRng;
use tokio::time::Instant;

use crate::delay::DelayProxy;
use crate::harness::CLIENT;
use crate::harness::Chaos;
use crate::harness::DELAY;
use crate::harness::GATEWAY;
use crate::harness::POSTGRES;
use crate::history::History;
use crate::history::OpKind;
use crate::history::Outcome;
use crate::postgres::Postgres;
use crate::sandbox::Sandbox;

/// A cluster a fault aims at; `None` until the seed chooses one.
pub type Target = Option<String>;

/// The named faults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the cluster's leader; start it again at the heal.
    KillLeader(Target),
    /// SIGKILL one follower (chosen by the seed); start it again at the heal.
    KillFollower(Target),
    /// SIGKILL every replica of the cluster; start them again at the heal.
    KillCluster(Target),
    /// SIGKILL the gateway; start it again at the heal.
    KillGateway,
    /// SIGSTOP the cluster's leader; SIGCONT at the heal.
    PauseLeader(Target),
    /// Cut the cluster's leader from its peers, both ways.
    PartitionLeader(Target),
    /// Cut the cluster's leader from the gateway (every gateway replica), both ways.
    IsolateLeader(Target),
    /// Cut every replica of the cluster from the gateway (every gateway replica), both ways.
    IsolateCluster(Target),
    /// The first cluster can no longer open connections to the second; the other way still works.
    CutOneWay(Target, Target),
    /// Cut every replica of one cluster from every replica of the other, both ways.
    Cut(Target, Target),
    /// Cut and heal the link between the two clusters' leaders every 300-900 ms (seeded).
    Flap(Target, Target),
    /// Drop this percentage of the packets arriving anywhere in the mesh.
    Loss(u8),
    /// Delay every connection between sites (replica to gateway, replica to another cluster)
    /// by this many milliseconds each way, through the delaying proxy.
    Latency(u64),
    /// Crash the gateway's PostgreSQL (immediate stop); start it at the heal.
    RestartDatabase,
    /// Restart every replica of the cluster in turn (SIGTERM, start, wait until caught up); it
    /// lasts as long as that takes and has no hold.
    RollingRestart(Target),
    /// SIGKILL the gateway replica holding the duties lease; start it again at the heal.
    KillGatewayHolder,
    /// SIGSTOP the gateway replica holding the duties lease. At the heal, once another replica
    /// has taken the lease (waited for), SIGCONT it and submit pipelines through it: a holder
    /// that still believed it held the lease would place them under its old generation.
    PauseGatewayHolder,
    /// Cut the gateway replica holding the duties lease from the database, both ways (agents,
    /// the suite and the other replicas still reach it).
    CutGatewayFromDatabase,
    /// Cut the cluster's leader from the gateway replica it uses, both ways (the other replicas
    /// stay reachable).
    CutLeaderFromItsGateway(Target),
}

/// How the history names a [`Fault::PauseGatewayHolder`] (followed by the generation).
pub const PAUSE_HOLDER_EVENT: &str = "pause the lease holder";

/// How many pipelines [`Fault::PauseGatewayHolder`] submits through the replica it resumes.
pub const SUBMITTED_THROUGH_THE_RESUMED: usize = 3;

/// The names in a spec, in the order `--help` lists them.
pub const NAMES: [&str; 19] = [
    "kill-leader",
    "kill-follower",
    "kill-cluster",
    "kill-gateway",
    "pause-leader",
    "partition-leader",
    "isolate-leader",
    "isolate-cluster",
    "cut-one-way",
    "cut",
    "flap",
    "loss",
    "latency",
    "restart-database",
    "rolling-restart",
    "kill-gateway-holder",
    "pause-gateway-holder",
    "cut-gateway-from-database",
    "cut-leader-from-its-gateway",
];

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::KillLeader(_) => "kill-leader",
            Fault::KillFollower(_) => "kill-follower",
            Fault::KillCluster(_) => "kill-cluster",
            Fault::KillGateway => "kill-gateway",
            Fault::PauseLeader(_) => "pause-leader",
            Fault::PartitionLeader(_) => "partition-leader",
            Fault::IsolateLeader(_) => "isolate-leader",
            Fault::IsolateCluster(_) => "isolate-cluster",
            Fault::CutOneWay(..) => "cut-one-way",
            Fault::Cut(..) => "cut",
            Fault::Flap(..) => "flap",
            Fault::Loss(_) => "loss",
            Fault::Latency(_) => "latency",
            Fault::RestartDatabase => "restart-database",
            Fault::RollingRestart(_) => "rolling-restart",
            Fault::KillGatewayHolder => "kill-gateway-holder",
            Fault::PauseGatewayHolder => "pause-gateway-holder",
            Fault::CutGatewayFromDatabase => "cut-gateway-from-database",
            Fault::CutLeaderFromItsGateway(_) => "cut-leader-from-its-gateway",
        }
    }

    /// Whether the fault is aimed at gateway replicas (a mesh of them only).
    pub fn needs_gateway_replicas(&self) -> bool {
        matches!(
            self,
            Fault::KillGatewayHolder
                | Fault::PauseGatewayHolder
                | Fault::CutGatewayFromDatabase
                | Fault::CutLeaderFromItsGateway(_)
        )
    }

    /// Whether the gateway may rightly lose a cluster during this fault (and move its work):
    /// a cluster dead or cut from the gateway, or heartbeats dropped or delayed.
    pub fn may_lose_a_cluster(&self) -> bool {
        matches!(
            self,
            Fault::KillCluster(_)
                | Fault::IsolateLeader(_)
                | Fault::IsolateCluster(_)
                | Fault::Loss(_)
                | Fault::Latency(_)
        )
    }

    fn targets(&mut self) -> Vec<&mut Target> {
        match self {
            Fault::KillLeader(t)
            | Fault::KillFollower(t)
            | Fault::KillCluster(t)
            | Fault::PauseLeader(t)
            | Fault::PartitionLeader(t)
            | Fault::IsolateLeader(t)
            | Fault::IsolateCluster(t)
            | Fault::RollingRestart(t)
            | Fault::CutLeaderFromItsGateway(t) => vec![t],
            Fault::CutOneWay(a, b) | Fault::Cut(a, b) | Fault::Flap(a, b) => vec![a, b],
            Fault::KillGateway
            | Fault::Loss(_)
            | Fault::Latency(_)
            | Fault::RestartDatabase
            | Fault::KillGatewayHolder
            | Fault::PauseGatewayHolder
            | Fault::CutGatewayFromDatabase => Vec::new(),
        }
    }

    fn describe(&self) -> String {
        let t = |t: &Target| t.clone().unwrap_or_else(|| "?".into());
        match self {
            Fault::KillLeader(c)
            | Fault::KillFollower(c)
            | Fault::KillCluster(c)
            | Fault::PauseLeader(c)
            | Fault::PartitionLeader(c)
            | Fault::IsolateLeader(c)
            | Fault::IsolateCluster(c)
            | Fault::RollingRestart(c)
            | Fault::CutLeaderFromItsGateway(c) => format!("{}:{}", self.name(), t(c)),
            Fault::CutOneWay(a, b) => format!("cut-one-way:{}>{}", t(a), t(b)),
            Fault::Cut(a, b) | Fault::Flap(a, b) => format!("{}:{}<>{}", self.name(), t(a), t(b)),
            Fault::Loss(p) => format!("loss:{p}"),
            Fault::Latency(ms) => format!("latency:{ms}"),
            Fault::KillGateway
            | Fault::RestartDatabase
            | Fault::KillGatewayHolder
            | Fault::PauseGatewayHolder
            | Fault::CutGatewayFromDatabase => self.name().to_string(),
        }
    }
}

/// A fault at a time after the plan starts, held for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub fault: Fault,
    pub at: Duration,
    /// How long it lasts; zero for a rolling restart (it lasts as long as it takes).
    pub hold: Duration,
}

impl std::fmt::Display for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}ms", self.fault.describe(), self.at.as_millis())?;
        if !self.hold.is_zero() {
            write!(f, "+{}ms", self.hold.as_millis())?;
        }
        Ok(())
    }
}

/// A whole plan, as one line (what a run prints and replays from).
pub fn describe(plan: &[Planned]) -> String {
    plan.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// Parse a spec (see the module docs); every problem names the item it is in.
pub fn parse(spec: &str) -> anyhow::Result<Vec<Planned>> {
    let mut plan = Vec::new();
    for (index, item) in spec.split(',').map(str::trim).enumerate() {
        let planned = parse_item(item).with_context(|| format!("fault {} ({item:?}) of --faults", index + 1))?;
        plan.push(planned);
    }
    Ok(plan)
}

fn parse_item(item: &str) -> anyhow::Result<Planned> {
    anyhow::ensure!(!item.is_empty(), "is empty");
    let (rest, hold) = match item.split_once('+') {
        Some((rest, hold)) => (rest, Some(parse_duration(hold).context("its hold (after +)")?)),
        None => (item, None),
    };
    let (rest, at) = match rest.split_once('@') {
        Some((rest, at)) => (rest, parse_duration(at).context("its start (after @)")?),
        None => (rest, Duration::ZERO),
    };
    let (name, arg) = match rest.split_once(':') {
        Some((name, arg)) => (name.trim(), Some(arg.trim())),
        None => (rest.trim(), None),
    };
    let cluster = |arg: Option<&str>| -> anyhow::Result<Target> {
        match arg {
            None => Ok(None),
            Some(c) if valid_cluster(c) => Ok(Some(c.to_string())),
            Some(c) => anyhow::bail!("{c:?} is not a cluster name"),
        }
    };
    let pair = |arg: Option<&str>, sep: &str| -> anyhow::Result<(Target, Target)> {
        let Some(arg) = arg else { return Ok((None, None)) };
        let (a, b) = arg.split_once(sep).with_context(|| format!("{arg:?} is not two clusters as A{sep}B"))?;
        let (a, b) = (cluster(Some(a.trim()))?, cluster(Some(b.trim()))?);
        anyhow::ensure!(a != b, "{arg:?} names one cluster twice");
        Ok((a, b))
    };
    let none = |arg: Option<&str>| match arg {
        None => Ok(()),
        Some(arg) => Err(anyhow::anyhow!("{name} takes no argument, got {arg:?}")),
    };
    let number = |arg: Option<&str>, what: &str, range: std::ops::RangeInclusive<u64>| -> anyhow::Result<u64> {
        let text = arg.with_context(|| format!("{name} needs {what}, e.g. {name}:{}", range.end() / 5))?;
        let n: u64 = text.parse().with_context(|| format!("{text:?} is not a number ({what})"))?;
        anyhow::ensure!(range.contains(&n), "{what} must be {}..={}, got {n}", range.start(), range.end());
        Ok(n)
    };
    let fault = match name {
        "kill-leader" => Fault::KillLeader(cluster(arg)?),
        "kill-follower" => Fault::KillFollower(cluster(arg)?),
        "kill-cluster" => Fault::KillCluster(cluster(arg)?),
        "kill-gateway" => none(arg).map(|_| Fault::KillGateway)?,
        "pause-leader" => Fault::PauseLeader(cluster(arg)?),
        "partition-leader" => Fault::PartitionLeader(cluster(arg)?),
        "isolate-leader" => Fault::IsolateLeader(cluster(arg)?),
        "isolate-cluster" => Fault::IsolateCluster(cluster(arg)?),
        "cut-one-way" => pair(arg, ">").map(|(a, b)| Fault::CutOneWay(a, b))?,
        "cut" => pair(arg, "<>").map(|(a, b)| Fault::Cut(a, b))?,
        "flap" => pair(arg, "<>").map(|(a, b)| Fault::Flap(a, b))?,
        "loss" => Fault::Loss(number(arg, "a percentage", 1..=100)? as u8),
        "latency" => Fault::Latency(number(arg, "milliseconds each way", 1..=10_000)?),
        "restart-database" => none(arg).map(|_| Fault::RestartDatabase)?,
        "rolling-restart" => Fault::RollingRestart(cluster(arg)?),
        "kill-gateway-holder" => none(arg).map(|_| Fault::KillGatewayHolder)?,
        "pause-gateway-holder" => none(arg).map(|_| Fault::PauseGatewayHolder)?,
        "cut-gateway-from-database" => none(arg).map(|_| Fault::CutGatewayFromDatabase)?,
        "cut-leader-from-its-gateway" => Fault::CutLeaderFromItsGateway(cluster(arg)?),
        other => anyhow::bail!("{other:?} is not a fault; the faults are {}", NAMES.join(", ")),
    };
    let hold = match (&fault, hold) {
        (Fault::RollingRestart(_), None) => Duration::ZERO,
        (Fault::RollingRestart(_), Some(_)) => {
            anyhow::bail!("rolling-restart takes no hold: it lasts until every replica has caught up")
        }
        (_, Some(hold)) if !hold.is_zero() => hold,
        (_, _) => anyhow::bail!("needs +HOLD (how long the fault lasts, more than 0), e.g. {name}@1s+2s"),
    };
    Ok(Planned { fault, at, hold })
}

fn valid_cluster(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1.0)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1_000.0)
    } else {
        anyhow::bail!("{text:?} has no unit: write 1.5s or 500ms");
    };
    let value: f64 = number.parse().with_context(|| format!("{text:?} is not a duration"))?;
    anyhow::ensure!(value.is_finite() && value >= 0.0, "{text:?} is not a duration");
    let ms = value * scale;
    anyhow::ensure!(ms <= 3_600_000.0, "{text:?} is longer than an hour");
    Ok(Duration::from_millis(ms.round() as u64))
}

/// Fill in the clusters the plan left to the seed and check every named one exists; refuse
/// overlapping loss or latency faults (one packet filter setting, one proxy delay), and faults
/// the mesh's gateway (`gateways` replicas, 1: the only gateway) has no target for.
pub fn resolve(
    mut plan: Vec<Planned>,
    clusters: &[String],
    gateways: usize,
    rng: &mut StdRng,
) -> anyhow::Result<Vec<Planned>> {
    anyhow::ensure!(!clusters.is_empty(), "no clusters");
    for (index, planned) in plan.iter_mut().enumerate() {
        let mut chosen: Vec<String> = Vec::new();
        let fault = planned.fault.name();
        anyhow::ensure!(
            !planned.fault.needs_gateway_replicas() || gateways > 1,
            "fault {} ({fault}) needs gateway replicas (--gateways 3); this run has one gateway",
            index + 1
        );
        anyhow::ensure!(
            planned.fault != Fault::KillGateway || gateways == 1,
            "fault {} (kill-gateway) kills the only gateway; this run has {gateways} replicas (kill-gateway-holder)",
            index + 1
        );
        let targets = planned.fault.targets();
        let named: Vec<String> = targets.iter().filter_map(|t| (**t).clone()).collect();
        for name in &named {
            anyhow::ensure!(
                clusters.contains(name),
                "fault {} ({fault}) names cluster {name:?}; this run has {}",
                index + 1,
                clusters.join(", ")
            );
        }
        anyhow::ensure!(
            targets.len() <= clusters.len(),
            "fault {} ({fault}) needs {} clusters; this run has {}",
            index + 1,
            targets.len(),
            clusters.len()
        );
        for target in targets {
            if target.is_none() {
                let free: Vec<&String> =
                    clusters.iter().filter(|c| !named.contains(c) && !chosen.contains(c)).collect();
                let pick = free[rng.random_range(0..free.len())].clone();
                chosen.push(pick.clone());
                *target = Some(pick);
            }
        }
    }
    for kind in ["loss", "latency"] {
        let spans: Vec<&Planned> = plan.iter().filter(|p| p.fault.name() == kind).collect();
        for (i, a) in spans.iter().enumerate() {
            for b in &spans[i + 1..] {
                let overlap = a.at < b.at + b.hold && b.at < a.at + a.hold;
                anyhow::ensure!(!overlap, "{a} and {b} overlap: one {kind} fault at a time");
            }
        }
    }
    Ok(plan)
}

/// What a nemesis acts on besides the processes: the sandbox, and the delaying proxy and the
/// database when the run has them.
#[derive(Clone, Copy)]
pub struct Net<'a> {
    pub sandbox: &'a Sandbox,
    pub proxy: Option<&'a DelayProxy>,
    pub postgres: Option<&'a Postgres>,
}

/// What an injected fault holds until its heal.
enum Held {
    /// Processes (roles) it took down.
    Down(Vec<String>),
    Paused(String),
    /// The lease holder paused (its role), with the generation it held.
    PausedHolder {
        role: String,
        generation: u64,
    },
    /// Links (both ways) it cut.
    Cut(Vec<(String, String)>),
    /// A leader cut from the gateway replica it used: the cut, and where its log stood then
    /// (the heal checks the leader moved to another replica meanwhile).
    CutFromItsGateway {
        pairs: Vec<(String, String)>,
        leader: String,
        gateway: String,
        log: std::path::PathBuf,
        seen: u64,
    },
    /// Refusals (at, from) it set.
    Refused(Vec<(String, String)>),
    /// A flapping link and whether it is cut now.
    Flapping {
        a: String,
        b: String,
        cut: bool,
    },
    Loss,
    Latency,
    Database,
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    // At one instant: heals first, then flaps, then injections, so back-to-back faults on one
    // link do not cancel out.
    Heal,
    Toggle,
    Inject,
}

/// Run a resolved plan; returns when its last fault healed. Every fault is recorded in the
/// history as it is injected and healed.
pub async fn perform(
    chaos: &mut Chaos,
    net: Net<'_>,
    history: &History,
    plan: &[Planned],
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    let mut steps: Vec<(Duration, Step, usize)> = Vec::new();
    for (index, planned) in plan.iter().enumerate() {
        steps.push((planned.at, Step::Inject, index));
        if let Fault::Flap(..) = planned.fault {
            let mut t = planned.at + Duration::from_millis(rng.random_range(300..=900));
            while t < planned.at + planned.hold {
                steps.push((t, Step::Toggle, index));
                t += Duration::from_millis(rng.random_range(300..=900));
            }
        }
        if !planned.hold.is_zero() {
            steps.push((planned.at + planned.hold, Step::Heal, index));
        }
    }
    steps.sort();
    let mut nemesis = Nemesis { chaos, net, history, down: BTreeMap::new(), paused: BTreeMap::new() };
    let mut held: BTreeMap<usize, (usize, Held)> = BTreeMap::new();
    let start = Instant::now();
    for (at, step, index) in steps {
        tokio::time::sleep_until(start + at).await;
        let fault = &plan[index].fault;
        match step {
            Step::Inject => {
                let (event, what) = nemesis.inject(fault, rng).await.with_context(|| {
                    format!("injecting {} at {} ms of the plan", plan[index], start.elapsed().as_millis())
                })?;
                if plan[index].hold.is_zero() {
                    history.healed(event);
                } else {
                    held.insert(index, (event, what));
                }
            }
            Step::Toggle => {
                if let Some((_, Held::Flapping { a, b, cut })) = held.get_mut(&index) {
                    if *cut {
                        nemesis.net.sandbox.heal(a, b)?;
                    } else {
                        nemesis.net.sandbox.cut(a, b)?;
                    }
                    *cut = !*cut;
                }
            }
            Step::Heal => {
                let (event, what) = held.remove(&index).context("healing a fault that was not injected")?;
                let resumed = nemesis.heal(what).await.with_context(|| format!("healing {}", plan[index]))?;
                history.healed(event);
                if let Some(role) = resumed {
                    nemesis.submit_through(&role).await?;
                }
            }
        }
    }
    Ok(())
}

/// The nemesis mid-plan: the processes it holds down or paused, counted across faults.
struct Nemesis<'a, 'n> {
    chaos: &'a mut Chaos,
    net: Net<'n>,
    history: &'a History,
    down: BTreeMap<String, usize>,
    paused: BTreeMap<String, usize>,
}

impl Nemesis<'_, '_> {
    fn roles(&self, cluster: &str) -> Vec<String> {
        self.chaos.replica_ids(cluster).into_iter().map(|id| replica_name(cluster, id)).collect()
    }

    /// Every (replica of `a`, replica of `b`).
    fn pairs(&self, a: &str, b: &str) -> Vec<(String, String)> {
        let bs = self.roles(b);
        self.roles(a).into_iter().flat_map(|x| bs.iter().map(move |y| (x.clone(), y.clone()))).collect()
    }

    async fn leader(&self, cluster: &str) -> anyhow::Result<(u64, u64)> {
        self.chaos
            .wait_leader(cluster, Duration::from_secs(10))
            .await
            .with_context(|| format!("{cluster} has no leader to aim at (did another fault of the plan take it down?)"))
    }

    /// Take `roles` down (SIGKILL the running ones); each stays down until every fault holding
    /// it has healed.
    fn take_down(&mut self, roles: &[String]) -> anyhow::Result<()> {
        for role in roles {
            *self.down.entry(role.clone()).or_default() += 1;
            if self.chaos.pid(role).is_none() {
                continue;
            }
            if let Some(index) = self.chaos.gateway_index(role) {
                self.chaos.mesh.kill_gateway(index);
            } else {
                let (cluster, id) = crate::harness::split_role(role).context("a replica's name")?;
                self.chaos.mesh.kill(cluster, id)?;
            }
        }
        Ok(())
    }

    async fn inject(&mut self, fault: &Fault, rng: &mut StdRng) -> anyhow::Result<(usize, Held)> {
        let history = self.history;
        let sandbox = self.net.sandbox;
        let target = match fault {
            Fault::KillLeader(Some(c))
            | Fault::KillFollower(Some(c))
            | Fault::KillCluster(Some(c))
            | Fault::PauseLeader(Some(c))
            | Fault::PartitionLeader(Some(c))
            | Fault::IsolateLeader(Some(c))
            | Fault::IsolateCluster(Some(c))
            | Fault::RollingRestart(Some(c))
            | Fault::CutLeaderFromItsGateway(Some(c)) => c.clone(),
            _ => String::new(),
        };
        Ok(match fault {
            Fault::KillLeader(_) => {
                let (leader, term) = self.leader(&target).await?;
                let role = replica_name(&target, leader);
                let event = history.injected("kill -9 leader", &role, Some(&target), Some(term));
                self.take_down(std::slice::from_ref(&role))?;
                (event, Held::Down(vec![role]))
            }
            Fault::KillFollower(_) => {
                let (leader, term) = self.leader(&target).await?;
                let followers: Vec<u64> = self
                    .chaos
                    .replica_ids(&target)
                    .into_iter()
                    .filter(|id| *id != leader && self.chaos.mesh.pid(&target, *id).is_some())
                    .collect();
                anyhow::ensure!(!followers.is_empty(), "{target} has no running follower to kill");
                let role = replica_name(&target, followers[rng.random_range(0..followers.len())]);
                let event = history.injected("kill -9 follower", &role, None, Some(term));
                self.take_down(std::slice::from_ref(&role))?;
                (event, Held::Down(vec![role]))
            }
            Fault::KillCluster(_) => {
                let term = self.chaos.leader(&target).await.map(|(_, term)| term);
                let event = history.injected("kill -9 every replica", &target, None, term);
                let roles = self.roles(&target);
                self.take_down(&roles)?;
                (event, Held::Down(roles))
            }
            Fault::KillGateway => {
                let event = history.injected("kill -9 gateway", GATEWAY, None, None);
                self.take_down(&[GATEWAY.to_string()])?;
                (event, Held::Down(vec![GATEWAY.to_string()]))
            }
            Fault::PauseLeader(_) => {
                let (leader, term) = self.leader(&target).await?;
                let role = replica_name(&target, leader);
                let event = history.injected("pause leader", &role, Some(&target), Some(term));
                let paused = self.paused.entry(role.clone()).or_default();
                *paused += 1;
                if *paused == 1 {
                    self.chaos.signal(&role, Signal::SIGSTOP)?;
                }
                (event, Held::Paused(role))
            }
            Fault::PartitionLeader(_) => {
                let (leader, term) = self.leader(&target).await?;
                let role = replica_name(&target, leader);
                let event = history.injected("partition leader from its peers", &role, Some(&target), Some(term));
                let pairs: Vec<(String, String)> =
                    self.roles(&target).into_iter().filter(|p| *p != role).map(|p| (role.clone(), p)).collect();
                cut(sandbox, &pairs)?;
                (event, Held::Cut(pairs))
            }
            Fault::IsolateLeader(_) => {
                let (leader, _) = self.leader(&target).await?;
                let role = replica_name(&target, leader);
                let event = history.injected("isolate leader from the gateway", &role, None, None);
                let pairs: Vec<(String, String)> =
                    self.chaos.gateway_roles().into_iter().map(|g| (role.clone(), g)).collect();
                cut(sandbox, &pairs)?;
                (event, Held::Cut(pairs))
            }
            Fault::IsolateCluster(_) => {
                let event = history.injected("isolate the cluster from the gateway", &target, None, None);
                let gateways = self.chaos.gateway_roles();
                let pairs: Vec<(String, String)> = self
                    .roles(&target)
                    .into_iter()
                    .flat_map(|r| gateways.iter().map(move |g| (r.clone(), g.clone())))
                    .collect();
                cut(sandbox, &pairs)?;
                (event, Held::Cut(pairs))
            }
            Fault::CutOneWay(Some(from), Some(to)) => {
                let event = history.injected("cut one direction", &format!("{from}->{to}"), None, None);
                let refusals = self.pairs(to, from);
                for (at, source) in &refusals {
                    sandbox.refuse(at, source, true)?;
                }
                (event, Held::Refused(refusals))
            }
            Fault::Cut(Some(a), Some(b)) => {
                let event = history.injected("cut both directions", &format!("{a}<->{b}"), None, None);
                let pairs = self.pairs(a, b);
                cut(sandbox, &pairs)?;
                (event, Held::Cut(pairs))
            }
            Fault::Flap(Some(a), Some(b)) => {
                let (la, _) = self.leader(a).await?;
                let (lb, _) = self.leader(b).await?;
                let (a, b) = (replica_name(a, la), replica_name(b, lb));
                let event = history.injected("flap the link", &format!("{a}<->{b}"), None, None);
                sandbox.cut(&a, &b)?;
                (event, Held::Flapping { a, b, cut: true })
            }
            Fault::Loss(percent) => {
                let event = history.injected(
                    &format!("drop {percent}% of packets"),
                    "every endpoint but the suite's",
                    None,
                    None,
                );
                sandbox.set_loss(*percent, &[CLIENT, DELAY])?;
                (event, Held::Loss)
            }
            Fault::Latency(ms) => {
                let proxy =
                    self.net.proxy.context("latency needs the delaying proxy (set up for plans with latency)")?;
                let event =
                    history.injected(&format!("delay {ms} ms each way"), "every link between sites", None, None);
                proxy.set_delay(Duration::from_millis(*ms));
                (event, Held::Latency)
            }
            Fault::RestartDatabase => {
                let postgres = self
                    .net
                    .postgres
                    .context("restart-database needs the gateway on PostgreSQL (set up for such plans)")?;
                let event = history.injected("crash the database", "postgresql", None, None);
                postgres.crash()?;
                (event, Held::Database)
            }
            Fault::RollingRestart(_) => {
                let event = history.injected("rolling restart", &target, None, None);
                for id in self.chaos.replica_ids(&target) {
                    self.chaos.signal(&replica_name(&target, id), Signal::SIGTERM)?;
                    wait_exit(self.chaos, &target, id, Duration::from_secs(20)).await?;
                    self.chaos.restart(&target, id)?;
                    wait_caught_up(self.chaos, &target, id, Duration::from_secs(30)).await?;
                }
                (event, Held::Nothing)
            }
            Fault::KillGatewayHolder => {
                let (holder, generation) = self.chaos.lease_holder(Duration::from_secs(10)).await?;
                let event = history.injected(
                    &format!("kill -9 the lease holder (generation {generation})"),
                    &holder,
                    None,
                    None,
                );
                self.take_down(std::slice::from_ref(&holder))?;
                (event, Held::Down(vec![holder]))
            }
            Fault::PauseGatewayHolder => {
                let (holder, generation) = self.chaos.lease_holder(Duration::from_secs(10)).await?;
                let event =
                    history.injected(&format!("{PAUSE_HOLDER_EVENT} (generation {generation})"), &holder, None, None);
                let paused = self.paused.entry(holder.clone()).or_default();
                *paused += 1;
                if *paused == 1 {
                    self.chaos.signal(&holder, Signal::SIGSTOP)?;
                }
                (event, Held::PausedHolder { role: holder, generation })
            }
            Fault::CutGatewayFromDatabase => {
                let (holder, generation) = self.chaos.lease_holder(Duration::from_secs(10)).await?;
                let event = history.injected(
                    &format!("cut the lease holder (generation {generation}) from the database"),
                    &holder,
                    None,
                    None,
                );
                let pairs = vec![(holder, POSTGRES.to_string())];
                cut(sandbox, &pairs)?;
                (event, Held::Cut(pairs))
            }
            Fault::CutLeaderFromItsGateway(_) => {
                let (leader, _) = self.leader(&target).await?;
                let role = replica_name(&target, leader);
                let gateway = self.chaos.gateway_in_use(&target, leader)?;
                let event = history.injected(
                    "cut the leader from the gateway replica it uses",
                    &format!("{role}<->{gateway}"),
                    None,
                    None,
                );
                let log = self.chaos.mesh.dir.log_file(&target, leader);
                let seen = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
                let pairs = vec![(role.clone(), gateway.clone())];
                cut(sandbox, &pairs)?;
                (event, Held::CutFromItsGateway { pairs, leader: role, gateway, log, seen })
            }
            Fault::CutOneWay(..) | Fault::Cut(..) | Fault::Flap(..) => {
                anyhow::bail!("{} has a cluster left to choose: resolve the plan first", fault.describe())
            }
        })
    }

    /// Submit [`SUBMITTED_THROUGH_THE_RESUMED`] pipelines through gateway replica `role` alone,
    /// recorded in the history like the workload's.
    async fn submit_through(&self, role: &str) -> anyhow::Result<()> {
        let index = self.chaos.gateway_index(role).with_context(|| format!("{role} is no gateway replica"))?;
        let client = self.chaos.gateway_client_at(index)?;
        let clusters = self.chaos.clusters();
        for n in 0..SUBMITTED_THROUGH_THE_RESUMED {
            let (make_on, check_on) = (&clusters[n % clusters.len()], &clusters[(n + 1) % clusters.len()]);
            let spec = crate::workload::pipeline_spec(&self.chaos.ledger, make_on, check_on, 600);
            let invoked = self.history.now_ms();
            let (pipeline, outcome) =
                match client.submit(&atoll_api::jobs::SubmitRequest { spec, files: Default::default() }).await {
                    Ok(submitted) => (Some(submitted.pipeline), Outcome::Ok),
                    Err(e) => (None, crate::workload::classify(&e)),
                };
            let name = format!("through {role} {} {make_on}->{check_on}", n + 1);
            self.history.record(OpKind::Submit { name, pipeline }, invoked, outcome);
        }
        Ok(())
    }

    /// Undo what a fault holds; returns the gateway replica it resumed from a pause as the lease
    /// holder (pipelines are then submitted through it, once the heal is recorded).
    async fn heal(&mut self, held: Held) -> anyhow::Result<Option<String>> {
        let sandbox = self.net.sandbox;
        match held {
            Held::Down(roles) => {
                for role in roles {
                    let count = self.down.entry(role.clone()).or_default();
                    *count = count.saturating_sub(1);
                    if *count > 0 || self.chaos.pid(&role).is_some() {
                        continue;
                    }
                    if let Some(index) = self.chaos.gateway_index(&role) {
                        self.chaos.restart_gateway(index).await?;
                    } else {
                        let (cluster, id) = crate::harness::split_role(&role).context("a replica's name")?;
                        self.chaos.restart(cluster, id)?;
                    }
                }
            }
            Held::Paused(role) => {
                let count = self.paused.entry(role.clone()).or_default();
                *count = count.saturating_sub(1);
                if *count == 0 && self.chaos.pid(&role).is_some() {
                    self.chaos.signal(&role, Signal::SIGCONT)?;
                }
            }
            Held::PausedHolder { role, generation } => {
                // Resumed only once another replica holds the lease: a zombie, were it not fenced.
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    match self.chaos.lease_holder(Duration::from_secs(5)).await {
                        Ok((holder, now)) if now > generation && holder != role => break,
                        _ => {}
                    }
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "no other gateway replica took the lease while {role} (generation {generation}) was paused"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let count = self.paused.entry(role.clone()).or_default();
                *count = count.saturating_sub(1);
                if *count == 0 && self.chaos.pid(&role).is_some() {
                    self.chaos.signal(&role, Signal::SIGCONT)?;
                    return Ok(Some(role));
                }
            }
            Held::Cut(pairs) => {
                for (a, b) in pairs {
                    sandbox.heal(&a, &b)?;
                }
            }
            Held::CutFromItsGateway { pairs, leader, gateway, log, seen } => {
                for (a, b) in pairs {
                    sandbox.heal(&a, &b)?;
                }
                // A cut the leader never noticed proves nothing: it must have moved on.
                let text = std::fs::read(&log).with_context(|| format!("reading {}", log.display()))?;
                let since = String::from_utf8_lossy(text.get(seen as usize..).unwrap_or_default());
                let addr = self.chaos.gateway_addr(&gateway).context("the cut replica's address")?;
                anyhow::ensure!(
                    since.lines().any(|line| line.contains("now using another gateway replica")
                        && line.contains(&format!("from={addr} "))),
                    "{leader} did not move off {gateway} ({addr}) while cut from it (see {})",
                    log.display()
                );
            }
            Held::Refused(refusals) => {
                for (at, from) in refusals {
                    sandbox.refuse(&at, &from, false)?;
                }
            }
            Held::Flapping { a, b, cut } => {
                if cut {
                    sandbox.heal(&a, &b)?;
                }
            }
            Held::Loss => sandbox.set_loss(0, &[CLIENT, DELAY])?,
            Held::Latency => {
                let proxy = self.net.proxy.context("the delaying proxy")?;
                proxy.set_delay(Duration::ZERO);
                eprintln!("chaos: {} connections went through the delaying proxy", proxy.relayed());
            }
            Held::Database => self.net.postgres.context("the database")?.up()?,
            Held::Nothing => {}
        }
        Ok(None)
    }
}

fn cut(sandbox: &Sandbox, pairs: &[(String, String)]) -> anyhow::Result<()> {
    for (a, b) in pairs {
        sandbox.cut(a, b)?;
    }
    Ok(())
}

async fn wait_exit(chaos: &mut Chaos, cluster: &str, id: u64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if chaos.mesh.reap().iter().any(|((c, i), _)| c == cluster && *i == id) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{} did not stop within {timeout:?} of SIGTERM", replica_name(cluster, id))
}

/// Wait until a restarted replica knows the leader and has applied what the leader had when
/// it came back.
async fn wait_caught_up(chaos: &Chaos, cluster: &str, id: u64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let addr = chaos.addr(cluster, id);
    while Instant::now() < deadline {
        if let (Ok(me), Some((leader, _))) = (chaos.node.status(&addr).await, chaos.leader(cluster).await)
            && let Ok(lead) = chaos.node.status(&chaos.addr(cluster, leader)).await
            && me.leader.is_some()
            && me.last_applied.unwrap_or(0) + 50 >= lead.last_applied.unwrap_or(0)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{} did not catch up within {timeout:?}", replica_name(cluster, id))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn clusters() -> Vec<String> {
        ["aws", "gcp", "onprem"].map(String::from).to_vec()
    }

    #[test]
    fn a_spec_parses_into_timed_faults() {
        let plan = parse("kill-leader:aws@1s+2s, cut-one-way:aws>gcp+6s, loss:20@2.5s+500ms, rolling-restart@3s")
            .expect("parses");
        assert_eq!(
            plan,
            vec![
                Planned {
                    fault: Fault::KillLeader(Some("aws".into())),
                    at: Duration::from_secs(1),
                    hold: Duration::from_secs(2)
                },
                Planned {
                    fault: Fault::CutOneWay(Some("aws".into()), Some("gcp".into())),
                    at: Duration::ZERO,
                    hold: Duration::from_secs(6)
                },
                Planned { fault: Fault::Loss(20), at: Duration::from_millis(2_500), hold: Duration::from_millis(500) },
                Planned { fault: Fault::RollingRestart(None), at: Duration::from_secs(3), hold: Duration::ZERO },
            ]
        );
        let round = parse(&describe(&resolve(plan, &clusters(), 1, &mut StdRng::seed_from_u64(1)).unwrap())).unwrap();
        assert!(round.iter().all(|p| p.fault.clone().targets().iter().all(|t| t.is_some())), "{round:?}");
    }

    #[test]
    fn every_named_fault_parses_and_prints_back() {
        for name in NAMES {
            let spec = match name {
                "loss" => "loss:10+1s".to_string(),
                "latency" => "latency:100+1s".to_string(),
                "rolling-restart" => "rolling-restart:aws".to_string(),
                "cut-one-way" => "cut-one-way:aws>gcp+1s".to_string(),
                "cut" | "flap" => format!("{name}:aws<>gcp+1s"),
                "kill-gateway"
                | "restart-database"
                | "kill-gateway-holder"
                | "pause-gateway-holder"
                | "cut-gateway-from-database" => format!("{name}+1s"),
                _ => format!("{name}:gcp+1s"),
            };
            let plan = parse(&spec).unwrap_or_else(|e| panic!("{spec}: {e:#}"));
            assert_eq!(plan[0].fault.name(), name);
            assert_eq!(parse(&describe(&plan)).unwrap(), plan, "{spec} prints back as {}", describe(&plan));
        }
    }

    #[test]
    fn bad_specs_are_refused_by_item_and_reason() {
        for (spec, expected) in [
            ("kill-leader@1s+2s, explode:aws+1s", "fault 2 (\"explode:aws+1s\") of --faults"),
            ("explode+1s", "\"explode\" is not a fault; the faults are kill-leader,"),
            ("kill-leader:aws@1s", "needs +HOLD"),
            ("kill-leader:aws+0s", "needs +HOLD"),
            ("kill-leader@1+2s", "\"1\" has no unit"),
            ("kill-leader@1s+2hours", "\"2hours\" is not a duration"),
            ("kill-leader@1s+2h", "\"2h\" has no unit"),
            ("kill-leader@-1s+2s", "is not a duration"),
            ("cut-one-way:aws+1s", "\"aws\" is not two clusters as A>B"),
            ("cut:aws<>aws+1s", "names one cluster twice"),
            ("loss+1s", "loss needs a percentage"),
            ("loss:250+1s", "a percentage must be 1..=100, got 250"),
            ("latency:x+1s", "\"x\" is not a number"),
            ("kill-gateway:aws+1s", "kill-gateway takes no argument"),
            ("rolling-restart+1s", "rolling-restart takes no hold"),
            ("kill-leader:a/b+1s", "\"a/b\" is not a cluster name"),
            ("", "is empty"),
        ] {
            let e = format!("{:#}", parse(spec).expect_err(spec));
            assert!(e.contains(expected), "{spec:?}: {e}");
        }
    }

    #[test]
    fn resolving_checks_clusters_and_overlaps() {
        let mut rng = StdRng::seed_from_u64(7);
        let e = resolve(parse("kill-leader:mars+1s").unwrap(), &clusters(), 1, &mut rng).unwrap_err().to_string();
        assert!(e.contains("names cluster \"mars\"; this run has aws, gcp, onprem"), "{e}");
        let e =
            resolve(parse("loss:10@0s+3s,loss:20@2s+1s").unwrap(), &clusters(), 1, &mut rng).unwrap_err().to_string();
        assert!(e.contains("overlap: one loss fault at a time"), "{e}");
        resolve(parse("loss:10@0s+2s,loss:20@2s+1s").unwrap(), &clusters(), 1, &mut rng).expect("back to back is fine");
        let two = ["aws", "gcp"].map(String::from);
        let e = resolve(parse("cut:aws<>gcp+1s").unwrap(), &two[..1], 1, &mut rng).unwrap_err().to_string();
        assert!(e.contains("names cluster \"gcp\""), "{e}");
        let plan = resolve(parse("cut-one-way+1s").unwrap(), &two, 1, &mut rng).unwrap();
        let Fault::CutOneWay(Some(a), Some(b)) = &plan[0].fault else { panic!("{plan:?}") };
        assert_ne!(a, b, "the seed picks two different clusters");
        let replicas = parse("kill-gateway-holder+1s,cut-leader-from-its-gateway+1s").unwrap();
        let e = resolve(replicas.clone(), &two, 1, &mut rng).unwrap_err().to_string();
        assert!(e.contains("fault 1 (kill-gateway-holder) needs gateway replicas (--gateways 3)"), "{e}");
        let plan = resolve(replicas, &two, 3, &mut rng).unwrap();
        assert!(matches!(&plan[1].fault, Fault::CutLeaderFromItsGateway(Some(_))), "{plan:?}");
        let e = resolve(parse("kill-gateway+1s").unwrap(), &two, 3, &mut rng).unwrap_err().to_string();
        assert!(e.contains("kills the only gateway; this run has 3 replicas"), "{e}");
    }

    #[test]
    fn the_seed_chooses_the_same_clusters_again() {
        let spec = parse("kill-leader+1s,cut+1s,flap+1s").unwrap();
        let a = resolve(spec.clone(), &clusters(), 1, &mut StdRng::seed_from_u64(42)).unwrap();
        let b = resolve(spec, &clusters(), 1, &mut StdRng::seed_from_u64(42)).unwrap();
        assert_eq!(a, b);
    }
}
