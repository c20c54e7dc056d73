//! InfraBox's includes end to end: a spec on disk with a `workflow` include (a file beside it,
//! with a nested include and a parent's output read by its child) and a `git` include from a
//! repository served by `git daemon` on 127.0.0.1 (its `environment` overriding the included
//! job's). `atoll validate` expands both and refuses a path leading out of the spec's directory;
//! `atoll submit --wait` runs the expanded pipeline on a real mesh, the gateway reading the
//! workflow files the CLI sent and cloning the repository itself; and a spec submitted through
//! the API with a pushed source reads its workflow files from that source. Needs `git` (with its
//! daemon); without it the test fails, saying so.

mod common;

use atoll_api::jobs::JobState;
use atoll_api::jobs::Submitted;
use common::Engine;
use common::GatewayMesh;
use common::git::git;
use common::git::serve;
use common::phase;
use common::test_gateway_timing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_and_git_includes_expand_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    phase("a repository to include, served by git daemon on 127.0.0.1");
    let repos = tmp.path().join("repos");
    let ext = repos.join("ext");
    std::fs::create_dir_all(&ext).unwrap();
    git(&ext, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(
        ext.join("infrabox.json"),
        r#"{"version": 1, "jobs": [
            {"type": "command", "name": "hello", "command": "echo mode=$MODE id=$INFRABOX_JOB_ID build=$INFRABOX_BUILD_NUMBER commit=$INFRABOX_COMMIT_ID; echo $MODE > $ATOLL_OUTPUT/mode.txt",
             "environment": {"MODE": "inner"}}]}"#,
    )
    .unwrap();
    git(&ext, &["add", "infrabox.json"]);
    git(&ext, &["commit", "--quiet", "-m", "a pipeline to include"]);
    let (_daemon, port) = serve(&repos).await;

    phase("a spec with a workflow include (nested, outputs inside) and the git include");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join("flow/nested")).unwrap();
    let spec = work.join("pipeline.yaml");
    std::fs::write(
        &spec,
        format!(
            "version: 1
jobs:
  - {{name: first, type: command, command: 'true'}}
  - {{name: flow, type: workflow, infrabox_file: flow/infrabox.json, depends_on: [first]}}
  - name: ext
    type: git
    clone_url: git://127.0.0.1:{port}/ext
    commit: main
    environment: {{MODE: outer}}
  - {{name: last, type: command, command: 'true', depends_on: [flow, ext]}}
"
        ),
    )
    .unwrap();
    std::fs::write(
        work.join("flow/infrabox.json"),
        r#"{"version": 1, "jobs": [
            {"type": "command", "name": "make", "command": "echo made > $ATOLL_OUTPUT/made.txt"},
            {"type": "command", "name": "use", "command": "test \"$(cat $ATOLL_INPUTS/flow/make/made.txt)\" = made",
             "depends_on": ["make"]},
            {"type": "workflow", "name": "deeper", "infrabox_file": "nested/infrabox.json", "depends_on": ["use"]}]}"#,
    )
    .unwrap();
    std::fs::write(
        work.join("flow/nested/infrabox.json"),
        r#"{"version": 1, "jobs": [{"type": "command", "name": "leaf", "command": "true"}]}"#,
    )
    .unwrap();

    let mesh = GatewayMesh::start(Engine::Sqlite, 3, 1, test_gateway_timing(), false).await;
    phase("atoll validate expands both includes; --offline clones nothing");
    let out = mesh.cli(&["validate", spec.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("9 job(s), no problems; selectors checked"), "{stdout}");
    let out = mesh.cli(&["validate", "--offline", spec.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("8 job(s), no problems"), "the git include left as it is: {stdout}");

    phase("a workflow file outside the spec's directory is refused");
    let outside = work.join("flow/escape.yaml");
    std::fs::write(&outside, "version: 1\njobs: [{name: x, type: workflow, infrabox_file: ../../secret.json}]\n")
        .unwrap();
    std::fs::write(tmp.path().join("secret.json"), "{}").unwrap();
    let out = mesh.cli(&["validate", "--offline", outside.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(r#"jobs[0].infrabox_file: "../../secret.json" leads outside the pipeline's files"#),
        "{stdout}"
    );

    phase("atoll submit --wait runs the expanded pipeline");
    let out = mesh.cli(&["submit", "--wait", "--json", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let submitted: Submitted = serde_json::from_slice(&out.stdout).expect("submit --json");
    let mut names: Vec<(&str, JobState)> = submitted.jobs.iter().map(|j| (j.name.as_str(), j.state)).collect();
    names.sort_by_key(|(name, _)| *name);
    assert_eq!(
        names,
        [
            ("ext", JobState::Finished),
            ("ext/hello", JobState::Finished),
            ("first", JobState::Finished),
            ("flow", JobState::Finished),
            ("flow/deeper", JobState::Finished),
            ("flow/deeper/leaf", JobState::Finished),
            ("flow/make", JobState::Finished),
            ("flow/use", JobState::Finished),
            ("last", JobState::Finished),
        ]
    );
    let hello = submitted.jobs.iter().find(|j| j.name == "ext/hello").unwrap();
    assert_eq!(hello.id.as_str(), format!("{}.ext.hello", submitted.pipeline));
    let out = mesh.cli(&["logs", hello.id.as_str()]);
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(logs.contains("mode=outer"), "the git include's environment wins: {logs}");
    let pipeline = &submitted.pipeline;
    assert!(
        logs.contains(&format!("id={pipeline}.ext.hello build={pipeline} commit=main")),
        "InfraBox's variables: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_include_is_read_from_the_pipeline_s_pushed_source() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("flow")).unwrap();
    std::fs::write(
        tree.join("flow/infrabox.json"),
        r#"{"version": 1, "jobs": [{"type": "command", "name": "sub", "command": "cat $ATOLL_SOURCE/flow/infrabox.json > /dev/null"}]}"#,
    )
    .unwrap();
    let mesh = GatewayMesh::start(Engine::Sqlite, 3, 1, test_gateway_timing(), false).await;
    let out = mesh.cli(&["push", "--json", tree.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pushed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let source = pushed["digest"].as_str().unwrap();
    let yaml = format!(
        "version: 1\nsource: \"{source}\"\njobs:\n  - {{name: flow, type: workflow, infrabox_file: flow/infrabox.json}}\n"
    );
    let submitted = common::submit(&mesh.gateway, &yaml).await;
    let names: Vec<&str> = submitted.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["flow/sub", "flow"]);
    let detail = common::wait_final(&mesh.gateway, &common::id_of(&submitted, "flow/sub")).await;
    assert_eq!(detail.job.state, JobState::Finished, "{detail:?}");

    // Without a source or the files, the include names what is missing.
    let spec = atoll_api::spec::parse_document(
        "version: 1\njobs: [{name: flow, type: workflow, infrabox_file: flow/infrabox.json}]\n",
    )
    .unwrap();
    let refused = mesh
        .gateway
        .submit(&atoll_api::jobs::SubmitRequest { spec, files: Default::default() })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("jobs[0].infrabox_file: cannot read \"flow/infrabox.json\": the submission carried no files and names no source"),
        "{refused}"
    );
}
