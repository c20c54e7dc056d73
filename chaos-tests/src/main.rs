//! `atoll-chaos`: run the chaos scenarios on demand, for longer (the soak profile) and over many
//! seeds, and print the figures `docs/reliability.md` reports.
//!
//!   atoll-chaos run [--scenario NAME]... [--profile ci|soak] [--seeds N | --seed S] [--keep DIR]
//!   atoll-chaos run --faults SPEC [--clusters N] [--gateways N] [--seeds N | --seed S]
//!
//! SPEC composes named faults in time, e.g. `kill-leader:aws@1s+2s,cut-one-way:aws>gcp@0s+6s`
//! (see the `nemesis` module).

use std::path::PathBuf;

use atoll_chaos_tests::nemesis;
use atoll_chaos_tests::scenario;
use atoll_chaos_tests::scenario::Drill;
use atoll_chaos_tests::scenario::Profile;
use atoll_chaos_tests::scenario::Report;
use atoll_chaos_tests::scenario::Scenario;
use clap::Parser;

#[derive(Parser)]
#[command(name = "atoll-chaos", about = "Run atoll's chaos scenarios and print their figures")]
enum Command {
    /// Run scenarios (all by default), each over one or more seeds.
    Run {
        /// A scenario to run (repeatable); all when absent.
        #[arg(long = "scenario", value_enum, conflicts_with = "faults")]
        scenarios: Vec<Scenario>,
        /// Run these faults instead of a scenario: FAULT[:ARG][@START]+HOLD, comma-separated
        /// (faults: kill-leader, kill-follower, kill-cluster, kill-gateway, pause-leader,
        /// partition-leader, isolate-leader, isolate-cluster, cut-one-way:A>B, cut:A<>B,
        /// flap:A<>B, loss:PERCENT, latency:MS, restart-database, rolling-restart; with
        /// --gateways 3: kill-gateway-holder, pause-gateway-holder, cut-gateway-from-database,
        /// cut-leader-from-its-gateway). A cluster left out is chosen by the seed. Holds are
        /// taken as written, whatever the profile.
        #[arg(long, value_parser = parse_faults)]
        faults: Option<Plan>,
        /// How many clusters a --faults run has (aws, gcp, onprem, c4, ...).
        #[arg(long, default_value_t = 3, requires = "faults", value_parser = clap::value_parser!(u8).range(2..=6))]
        clusters: u8,
        /// How many gateway replicas a --faults run has: 1, the only gateway (on SQLite), or
        /// more, over a PostgreSQL server in a namespace of its own.
        #[arg(long, default_value_t = 1, requires = "faults", value_parser = clap::value_parser!(u8).range(1..=5))]
        gateways: u8,
        #[arg(long, value_enum, default_value = "soak")]
        profile: Profile,
        /// How many seeds per scenario (fresh random ones).
        #[arg(long, default_value_t = 1)]
        seeds: u32,
        /// Replay one seed (overrides --seeds).
        #[arg(long)]
        seed: Option<u64>,
        /// Keep every run's files under this directory (failed runs are always kept).
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Write every run's report, one JSON object per line, to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let Command::Run { scenarios, faults, clusters, gateways, profile, seeds, seed, keep, json } = Command::parse();
    let drills: Vec<Drill> = match faults {
        Some(Plan(plan)) => {
            vec![Drill::Faults { plan, clusters: usize::from(clusters), gateways: usize::from(gateways) }]
        }
        None if scenarios.is_empty() => Scenario::ALL.into_iter().map(Drill::Scenario).collect(),
        None => scenarios.into_iter().map(Drill::Scenario).collect(),
    };
    let seeds: Vec<u64> = match seed {
        Some(seed) => vec![seed],
        None => (0..seeds).map(|_| rand::random()).collect(),
    };
    let mut reports: Vec<Report> = Vec::new();
    let mut errors = Vec::new();
    for drill in &drills {
        for seed in &seeds {
            match scenario::run(drill, profile, *seed, keep.as_deref()) {
                Ok(report) => {
                    if let Some(path) = &json {
                        use std::io::Write;
                        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                        writeln!(file, "{}", serde_json::to_string(&report)?)?;
                    }
                    reports.push(report);
                }
                Err(e) => {
                    eprintln!("chaos: {e:#}");
                    errors.push(format!("{} seed={seed}", drill.name()));
                }
            }
        }
    }
    summarize(&reports);
    let broken: Vec<String> =
        reports.iter().filter(|r| !r.holds()).map(|r| format!("{} seed={}", r.scenario, r.seed)).collect();
    anyhow::ensure!(broken.is_empty() && errors.is_empty(), "broken: {broken:?}; did not finish: {errors:?}");
    Ok(())
}

/// A parsed `--faults` spec.
#[derive(Clone, Debug)]
struct Plan(Vec<nemesis::Planned>);

fn parse_faults(spec: &str) -> Result<Plan, String> {
    nemesis::parse(spec).map(Plan).map_err(|e| format!("{e:#}"))
}

/// Median, p90 and max of the failover figures per fault, and the totals.
fn summarize(reports: &[Report]) {
    let mut by_fault: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let mut missing = 0;
    for f in reports.iter().flat_map(|r| r.failovers.iter()) {
        match f.ms {
            Some(ms) => by_fault.entry(f.fault.clone()).or_default().push(ms),
            None => missing += 1,
        }
    }
    println!("runs: {} ({} with every invariant holding)", reports.len(), reports.iter().filter(|r| r.holds()).count());
    let mut by_scenario: std::collections::BTreeMap<&str, (usize, usize, f64)> = Default::default();
    for r in reports {
        let entry = by_scenario.entry(r.scenario.as_str()).or_default();
        entry.0 += 1;
        entry.1 += usize::from(r.holds());
        entry.2 += r.seconds;
    }
    for (scenario, (runs, held, seconds)) in by_scenario {
        println!("  {scenario}: {held}/{runs} runs held every invariant ({:.0} s a run)", seconds / runs as f64);
    }
    for (fault, mut ms) in by_fault {
        ms.sort_unstable();
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        println!("failover after {fault}: n={} median={} ms p90={} ms max={} ms", ms.len(), at(0.5), at(0.9), at(1.0));
    }
    if missing > 0 {
        println!("faults after which no new leader was seen: {missing}");
    }
    let mut reroutes: Vec<u64> = reports.iter().flat_map(|r| r.reroutes_ms.iter().copied()).collect();
    reroutes.sort_unstable();
    if !reroutes.is_empty() {
        let at = |q: f64| reroutes[((reroutes.len() - 1) as f64 * q).round() as usize];
        println!(
            "moved jobs running elsewhere: n={} median={} ms p90={} ms max={} ms",
            reroutes.len(),
            at(0.5),
            at(0.9),
            at(1.0)
        );
    }
    let mut settled: Vec<u64> = reports.iter().filter_map(|r| r.matrix_settled_ms).collect();
    settled.sort_unstable();
    if !settled.is_empty() {
        println!(
            "matrix settled after the heal: median={} ms max={} ms",
            settled[settled.len() / 2],
            settled[settled.len() - 1]
        );
    }
    let (ok, failed, unknown) =
        reports.iter().fold((0, 0, 0), |(a, b, c), r| (a + r.ops_ok, b + r.ops_failed, c + r.ops_unknown));
    println!("operations: ok={ok} failed={failed} unknown={unknown}");
}
