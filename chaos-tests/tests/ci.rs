//! The CI profile of the chaos suite: every scenario once, short, with a fresh seed (printed;
//! replay with `ATOLL_CHAOS_SEED`). Needs root, iproute2 and nftables; without them each test
//! fails saying so.

use atoll_chaos_tests::nemesis;
use atoll_chaos_tests::scenario;
use atoll_chaos_tests::scenario::Breakage;
use atoll_chaos_tests::scenario::Drill;
use atoll_chaos_tests::scenario::Profile;
use atoll_chaos_tests::scenario::Scenario;

fn check(scenario: Scenario) {
    check_drill(Drill::Scenario(scenario));
}

fn check_drill(drill: Drill) {
    let seed = scenario::seed_from_env().expect("seed");
    let report = scenario::run(&drill, Profile::Ci, seed, None).unwrap_or_else(|e| panic!("{e:#}"));
    let broken: Vec<String> =
        report.verdicts.iter().filter(|v| !v.holds).map(|v| format!("{}: {}", v.invariant, v.detail)).collect();
    assert!(broken.is_empty(), "{} seed={seed}: {broken:#?} (files in {})", report.scenario, report.dir.display());
}

macro_rules! scenarios {
    ($($test:ident => $scenario:ident),* $(,)?) => {
        $(#[test] fn $test() { check(Scenario::$scenario) })*
    };
}

scenarios! {
    leader_crash => LeaderCrash,
    follower_crash => FollowerCrash,
    leader_pause => LeaderPause,
    minority_partition => MinorityPartition,
    leader_isolated_from_gateway => LeaderIsolatedFromGateway,
    cluster_isolated_from_gateway => ClusterIsolatedFromGateway,
    asymmetric_cut => AsymmetricCut,
    cluster_death => ClusterDeath,
    gateway_crash => GatewayCrash,
    loss_and_latency => LossAndLatency,
    flapping_link => FlappingLink,
    rolling_restart => RollingRestart,
    database_restart => DatabaseRestart,
    noisy_jobs => NoisyJobs,
    gateway_holder_crash => GatewayHolderCrash,
    gateway_holder_pause => GatewayHolderPause,
    gateway_cut_from_database => GatewayCutFromDatabase,
    leader_cut_from_its_gateway => LeaderCutFromItsGateway,
}

/// Named faults composed and overlapping in time, on three clusters chosen by the seed: one
/// direction between two clusters cut for 5 s; meanwhile a leader killed, 10 % of packets
/// dropped, a leader partitioned from its peers, the gateway killed and, while it is down, a
/// follower killed. Also a fault loss may excuse moved work (`loss`), so every other invariant
/// carries the test.
#[test]
fn composed_faults() {
    let plan = nemesis::parse(
        "cut-one-way@0s+5s, kill-leader@1s+2s, loss:10@1.5s+2s, partition-leader@2.5s+2s, \
         kill-gateway@4s+2s, kill-follower@4.5s+2s",
    )
    .expect("the plan parses");
    check_drill(Drill::Faults { plan, clusters: 3, gateways: 1 });
}

/// Run `scenario` against a gateway broken by `breakage`: it must announce the switch
/// (`warning`), and `invariant` must break saying `needle`.
fn caught(scenario: Scenario, breakage: Breakage, warning: &str, invariant: &str, needle: &str) {
    let seed = scenario::seed_from_env().expect("seed");
    let report = scenario::run_with(&Drill::Scenario(scenario), Profile::Ci, seed, None, breakage)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        report.gateway_broken,
        [warning],
        "the gateway must run with the switch (the suite's atoll-chaos-gateway binary, built by \
         `cargo build --workspace`)"
    );
    let verdict = report.verdicts.iter().find(|v| v.invariant == invariant).expect("verdict");
    assert!(!verdict.holds, "{breakage:?} went unnoticed (seed={seed}): {:#?}", report.verdicts);
    assert!(verdict.detail.contains(needle), "{}", verdict.detail);
    std::fs::remove_dir_all(&report.dir).expect("remove the broken run's files");
}

/// The checkers are shown to catch what they claim to: with the gateway's term fencing turned
/// off (a test-only switch), the zombie leader of the pause scenario is acted on again, and the
/// fencing checker says so.
#[test]
fn a_gateway_without_fencing_is_caught() {
    caught(
        Scenario::LeaderPause,
        Breakage::GatewayUnfenced,
        "TERM FENCING IS OFF",
        "gateway acts on current terms only",
        "after term",
    );
}

/// And with forwarding that ignores the matrix (every edge pulled, a test-only switch), the
/// asymmetric cut's edges are given pulls the matrix rules out, and the forwarding checker says
/// which.
#[test]
fn a_gateway_ignoring_the_matrix_is_caught() {
    caught(
        Scenario::AsymmetricCut,
        Breakage::MatrixIgnored,
        "FORWARDING IGNORES THE MATRIX",
        "forwarding follows the matrix",
        "the gateway gave pull",
    );
}

/// And with gateway replicas whose duties lease is unfenced (a holder that lost its lease goes
/// on scheduling, its writes unchecked; a test-only switch), the paused holder of the
/// holder-pause scenario places work under its old generation once resumed, and the
/// old-generation checker says so.
#[test]
fn a_zombie_scheduler_is_caught() {
    caught(
        Scenario::GatewayHolderPause,
        Breakage::LeaseUnfenced,
        "THE DUTIES LEASE IS UNFENCED",
        "no write of an old generation applied",
        "was taken by",
    );
}
