//! `atoll validate`: every problem of a spec with its path, offline and against the gateway's
//! clusters; exit status 1 when there is any.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::GatewayMesh;
use common::atoll_exe;
use common::test_gateway_timing;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../api/src/spec/testdata").join(name)
}

fn validate(args: &[&str]) -> (i32, String) {
    let out = Command::new(atoll_exe()).arg("validate").args(args).output().expect("run atoll");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_good_spec_passes_and_a_bad_one_lists_every_problem() {
    let good = testdata("infrabox-all-on.json");
    let (code, out) = validate(&["--offline", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("7 job(s), no problems; selectors not checked"), "{out}");

    let bad = testdata("malformed.json");
    let (code, out) = validate(&["--offline", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    for line in [
        "version: unsupported version 2",
        "jobs[1].type: unknown job type \"dockerfile\"",
        "jobs[4].depends_on[0]: unknown job \"nope\"",
        "jobs[5].name: duplicate job name \"c\" (first at jobs[3])",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }

    let cycles = testdata("cycles.yaml");
    let (code, out) = validate(&["--offline", "--json", cycles.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(report["ok"], false);
    assert_eq!(report["problems"][0]["path"], "jobs[0].depends_on[0]");
    assert_eq!(report["problems"][0]["message"], "dependency cycle: a -> c -> b -> a");
    assert_eq!(report["problems"].as_array().unwrap().len(), 2);
}

#[test]
fn duplicate_keys_a_cycle_and_control_characters_are_reported_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("pipeline.yaml");
    std::fs::write(
        &spec,
        "version: 1
jobs:
  - name: a
    type: command
    name: b
    command: x
    depends_on: [c]
    environment: {\"A\\0B\": y}
  - {name: c, type: command, command: x, depends_on: [a]}
",
    )
    .unwrap();
    let (code, out) = validate(&["--offline", spec.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    for line in [
        "jobs[0].name: duplicate key \"name\"",
        "jobs[0].environment.\"A\\0B\": \"A\\0B\": a variable name",
        "jobs[0].depends_on[0]: dependency cycle: a -> c -> a",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains('\0'), "a raw NUL in:\n{out}");
}

#[test]
fn every_pipeline_of_infrabox_s_examples_validates_offline() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/src/spec/testdata/infrabox");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n == "infrabox.json" || n == "infrabox.yaml") {
                files.push(path);
            }
        }
    }
    assert_eq!(files.len(), 32);
    for file in files {
        let (code, out) = validate(&["--offline", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {out}", file.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_are_checked_against_the_gateways_clusters() {
    let mesh = GatewayMesh::start(common::Engine::Sqlite, 3, 1, test_gateway_timing(), false).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("pipeline.yaml");
    std::fs::write(
        &spec,
        "version: 1
jobs:
  - {name: a, type: command, command: 'true', cluster: {selector: [aws]}}
  - {name: b, type: command, command: 'true', cluster: {selector: [gpu]}, depends_on: [a]}
  - {name: c, type: command, command: 'true', cluster: {prefer: azure}}
",
    )
    .unwrap();
    let out = mesh.cli(&["validate", spec.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("jobs[1].cluster.selector: no enabled cluster has all of [gpu] (clusters: aws [aws, default]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("jobs[2].cluster.prefer: prefers cluster \"azure\", but no such cluster is registered"),
        "{stdout}"
    );

    // An InfraBox docker job reads offline, and is refused by name where it would run.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/src/spec/testdata/infrabox/examples");
    let deploy = examples.join("deploy/infrabox.json");
    let (code, out) = validate(&["--offline", deploy.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let out = mesh.cli(&["validate", deploy.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "jobs[0].type: job \"test\": no cluster with its labels can run it: aws runs no docker jobs (process \
             executor: no container engine (jobs.containers))"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("jobs[0].deployments"), "a cluster that runs no docker jobs says only that: {stdout}");
    let submitted = mesh.cli(&["submit", deploy.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&submitted.stderr);
    assert!(!submitted.status.success() && stderr.contains("no cluster with its labels can run it"), "{stderr}");

    let out = mesh.cli(&["cluster", "disable", "aws"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = mesh.cli(&["validate", "--json", spec.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["clusters_checked"], true);
    assert_eq!(report["problems"][0]["path"], "jobs[0].cluster.selector", "{report}");
    assert!(report["problems"][0]["message"].as_str().unwrap().contains("aws [aws, default] (disabled)"), "{report}");
}
