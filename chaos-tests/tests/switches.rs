//! The product binary cannot carry the chaos suite's switches: only the suite's own gateway
//! binary reads them (`atoll_chaos_tests::broken`). Needs the binaries built (`cargo build
//! --workspace`; a test run of this crate builds them), nothing else.

use std::path::Path;

use atoll_chaos_tests::broken;
use atoll_chaos_tests::harness;

/// How many lines of the file at `path` hold `needle` (as `grep -c -a -F` counts them).
fn lines_holding(path: &Path, needle: &str) -> usize {
    let out = std::process::Command::new("grep").args(["-c", "-a", "-F", needle]).arg(path).output().expect("grep");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a count")
}

#[test]
fn only_the_chaos_gateway_reads_the_switches() {
    let atoll = harness::atoll_exe().unwrap_or_else(|e| panic!("{e:#}"));
    let broken_gateway = harness::broken_gateway_exe().unwrap_or_else(|e| panic!("{e:#}"));
    for switch in [broken::DISABLE_FENCING_ENV, broken::IGNORE_MATRIX_ENV, broken::LEASE_UNFENCED_ENV] {
        assert_eq!(lines_holding(&atoll, switch), 0, "{} names {switch}", atoll.display());
        assert!(lines_holding(&broken_gateway, switch) > 0, "{} does not name {switch}", broken_gateway.display());
    }
}
