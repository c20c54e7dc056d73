//! Jobs end to end, with a real gateway and real replicas: a pipeline across clusters with every
//! `on` condition, retries, logs and spec errors (on SQLite and PostgreSQL); cancel and timeout
//! killing whole process groups; a leader SIGKILLed mid-job (the run is lost, retried as a new
//! attempt, one result accepted, nothing of the old run left); a cluster lost mid-job (its work
//! moved elsewhere, its late result refused when it returns); a gateway restarted mid-run after
//! an outage longer than the dead-after bound (clusters it has not heard from yet are suspect, not
//! dead: no work moves; the result is delivered when it is back, the run is not repeated).

mod common;

use std::time::Duration;
use std::time::Instant;

use atoll_api::ErrorCode;
use atoll_api::gateway::ClusterState;
use atoll_api::ids::Term;
use atoll_api::jobs::Held;
use atoll_api::jobs::JobState;
use atoll_api::jobs::LeaseRequest;
use atoll_api::jobs::Report;
use atoll_api::jobs::ReportBatch;
use atoll_api::jobs::ReportOutcome;
use atoll_api::jobs::ReportedState;
use atoll_api::jobs::SubmitRequest;
use atoll_api::jobs::Submitted;
use atoll_mesh::GatewayTiming;
use common::Engine;
use common::GatewayMesh;
use common::eventually;
use common::id_of;
use common::no_processes_left;
use common::phase;
use common::processes_of;
use common::submit;
use common::test_gateway_timing;
use common::wait_final;
use common::wait_state;
use nix::sys::signal::Signal;

const PIPELINE: &str = r#"
version: 1
jobs:
  - name: build
    type: command
    command: echo "built $ATOLL_JOB_ID"; echo oops >&2; test -d "$ATOLL_OUTPUT" && test -d "$ATOLL_INPUTS" && mkdir "$ATOLL_OUTPUT/bin" && echo artifact > "$ATOLL_OUTPUT/bin/app"
    cluster: {selector: [aws]}
    timeout: 60
  - name: use-build
    type: command
    command: test "$(cat "$ATOLL_INPUTS/build/bin/app")" = artifact
    cluster: {selector: [aws]}
    depends_on: [build]
    timeout: 60
  - name: flaky
    type: command
    command: echo "attempt $ATOLL_ATTEMPT" > "$ATOLL_OUTPUT/report.txt"; exit 3
    cluster: {selector: [gcp]}
    depends_on: [build]
    retries: 1
    timeout: 60
  - name: on-failure
    type: command
    command: echo "handling the failure"
    cluster: {selector: [onprem]}
    depends_on: [{job: flaky, on: [failure]}]
    timeout: 60
  - name: on-success
    type: command
    command: echo never
    depends_on: [{job: flaky, on: [finished]}]
    timeout: 60
  - name: gate
    type: wait
    depends_on: [{job: on-failure, on: ["*"]}, {job: on-success, on: ["*"]}]
  - name: last
    type: command
    command: echo "env $GREETING"
    environment: {GREETING: hello}
    cluster: {selector: [onprem]}
    depends_on: [gate]
    timeout: 60
"#;

async fn pipeline_across_clusters(engine: Engine) {
    let mesh = GatewayMesh::start(engine, 3, 1, test_gateway_timing(), true).await;
    let gateway = &mesh.gateway;

    phase("bad specs are refused with every problem and its path; nothing is stored");
    let bad = r#"{"version": 1, "jobs": [
        {"name": "a", "type": "command", "command": "true", "depends_on": ["nope"]},
        {"name": "b", "type": "command", "command": "true", "cluster": {"selector": ["mars"]}}]}"#;
    let err = gateway
        .submit(&SubmitRequest { spec: serde_json::from_str(bad).unwrap(), files: Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    assert!(err.to_string().contains("jobs[0].depends_on[0]"), "{err}");
    let unsatisfiable = r#"{"version": 1, "jobs": [{"name": "b", "type": "command", "command": "true", "cluster": {"selector": ["mars"]}}]}"#;
    let err = gateway
        .submit(&SubmitRequest { spec: serde_json::from_str(unsatisfiable).unwrap(), files: Default::default() })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("jobs[0].cluster.selector"), "{err}");
    assert!(gateway.jobs(100).await.unwrap().is_empty(), "nothing invalid is stored");

    phase("a pipeline across three clusters: selectors, retries, on conditions, wait, environment");
    let submitted = submit(gateway, PIPELINE).await;
    assert_eq!(submitted.jobs[0].cluster.as_deref(), Some("aws"), "placed at submit: {:?}", submitted.jobs[0]);
    let last = wait_final(gateway, &id_of(&submitted, "last")).await;
    let state = |name: &str| {
        let id = id_of(&submitted, name);
        async move { gateway.job(&id).await.unwrap() }
    };
    let build = state("build").await;
    assert_eq!((build.job.state, build.job.cluster.as_deref()), (JobState::Finished, Some("aws")));
    let flaky = state("flaky").await;
    assert_eq!(flaky.job.state, JobState::Failure);
    assert_eq!(flaky.job.exit_code, Some(3));
    assert_eq!(flaky.attempts.len(), 2, "one retry: {:?}", flaky.attempts);
    assert!(flaky.attempts.iter().all(|a| a.cluster == "gcp"), "the selector holds on retry: {:?}", flaky.attempts);
    assert_eq!(state("on-failure").await.job.state, JobState::Finished);
    assert_eq!(state("on-success").await.job.state, JobState::Skipped);
    assert_eq!(state("gate").await.job.state, JobState::Finished);
    assert_eq!((last.job.state, last.job.cluster.as_deref()), (JobState::Finished, Some("onprem")));
    // gcp and onprem cannot reach each other at all: flaky's output would be relayed to on-failure.
    let on_failure = state("on-failure").await;
    let relayed = on_failure.job.inputs.iter().find(|i| i.from_job == "flaky").expect("input");
    assert_eq!(relayed.mode, Some(atoll_api::jobs::InputMode::Relay), "{:?}", on_failure.job.inputs);

    phase("outputs: archived, stored by digest in the cluster's store, reported, shown to children");
    let output = build.job.output.clone().expect("build wrote an output");
    assert!(output.digest.starts_with("sha256:") && output.size > 0, "{output:?}");
    let failed_output = flaky.job.output.clone().expect("a failed job's output is kept too");
    assert_ne!(failed_output.digest, output.digest);
    assert_eq!(last.job.output, None, "a job that writes nothing has no output");
    let parent = state("on-failure").await.job.inputs.into_iter().find(|i| i.from_job == "flaky").unwrap();
    assert_eq!(parent.digest.as_deref(), Some(failed_output.digest.as_str()), "the child sees its parent's digest");
    // The blob is in aws's store (one replica: its data dir), complete, and unpacks to the files.
    let digest: atoll_store::Digest = output.digest.parse().unwrap();
    let store =
        atoll_store::Blobs::open(&atoll_store::StorageConfig::local(mesh.t.mesh.dir.data_dir("aws", 1).join("blobs")))
            .unwrap();
    let manifest = store.manifest(&digest).await.unwrap().expect("the output's manifest is stored");
    assert_eq!(manifest.size, output.size);
    let archive = mesh.t.dir.path().join("build-output.tar");
    store.fetch_to_file(&digest, &archive).await.unwrap();
    let unpacked = mesh.t.dir.path().join("build-output");
    atoll_store::archive::unpack(&archive, &unpacked).unwrap();
    assert_eq!(std::fs::read_to_string(unpacked.join("bin/app")).unwrap(), "artifact\n");
    let use_build = wait_final(gateway, &id_of(&submitted, "use-build")).await;
    assert_eq!(use_build.job.state, JobState::Finished, "the child found its parent's files: {:?}", use_build.job);
    assert_eq!(use_build.job.inputs[0].mode, Some(atoll_api::jobs::InputMode::Local));

    phase("logs: stdout and stderr of the attempt, through the CLI");
    let out = mesh.cli(&["logs", &build.job.id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("built {}", build.job.id)), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));
    let out = mesh.cli(&["logs", &last.job.id]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("env hello"));

    phase("a report for another cluster's job, and a lease from a stale term, are refused");
    let gcp = mesh.as_replica("gcp", 1);
    let term = mesh.cluster("gcp").await.unwrap().term;
    let batch = ReportBatch {
        term,
        reports: vec![Report {
            job: build.job.id.clone(),
            attempt: 1,
            state: ReportedState::Failure,
            exit_code: Some(1),
            message: None,
            output: None,
        }],
    };
    let results = gcp.report("gcp", &batch).await.expect("report batch");
    assert_eq!(results.results[0].outcome, ReportOutcome::Refused);
    assert_eq!(gateway.job(&build.job.id).await.unwrap().job.state, JobState::Finished, "the one result stands");
    let stale = LeaseRequest {
        term: Term(term.0.saturating_sub(1)),
        held: vec![Held { job: build.job.id.clone(), attempt: 1 }],
        wait_ms: 0,
    };
    if term > Term(0) {
        let err = gcp.lease("gcp", &stale).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::StaleLeader), "{err}");
    }

    phase("atoll submit --wait --json from the CLI");
    let file = mesh.t.dir.path().join("small.yaml");
    std::fs::write(&file, "version: 1\njobs:\n  - {name: hi, type: command, command: 'echo hi', timeout: 30}\n")
        .unwrap();
    let out = mesh.cli(&["submit", file.to_str().unwrap(), "--wait", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done: Submitted = serde_json::from_slice(&out.stdout).expect("submit --json");
    assert_eq!(done.jobs[0].state, JobState::Finished);
}

on_both_engines!(pipeline_across_clusters, pipeline_across_clusters_sqlite, pipeline_across_clusters_postgres);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_timeout_kill_the_whole_process_group() {
    let mesh = GatewayMesh::start(Engine::Sqlite, 1, 1, test_gateway_timing(), false).await;
    let gateway = &mesh.gateway;
    // Each job leaves a background child and a detached grandchild behind its shell.
    let submitted = submit(
        gateway,
        r#"
version: 1
jobs:
  - {name: long, type: command, command: "sleep 300 & setsid sleep 301 & echo started; wait", timeout: 600}
  - {name: slow, type: command, command: "sleep 302 & setsid sleep 303 & wait", timeout: 2}
  - {name: queued, type: command, command: "true", depends_on: [long], timeout: 60}
"#,
    )
    .await;
    let (long, slow, queued) = (id_of(&submitted, "long"), id_of(&submitted, "slow"), id_of(&submitted, "queued"));
    wait_state(gateway, &long, Duration::from_secs(30), |s| s == JobState::Running).await;
    eventually(Duration::from_secs(10), "the job's processes run", || async {
        (processes_of(&long, None).len() >= 3).then_some(())
    })
    .await;

    phase("cancel a job that waits: killed at once");
    let info = gateway.cancel(&queued).await.expect("cancel");
    assert_eq!(info.state, JobState::Killed);

    phase("cancel a running job: its cluster kills the group and reports killed");
    let out = mesh.cli(&["cancel", &long]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let detail = wait_final(gateway, &long).await;
    assert_eq!(detail.job.state, JobState::Killed, "{:?}", detail);
    no_processes_left(&long, None).await;

    phase("a job past its timeout fails, and nothing of it is left");
    let detail = wait_final(gateway, &slow).await;
    assert_eq!(detail.job.state, JobState::Failure);
    assert!(detail.job.reason.as_deref().unwrap_or_default().contains("timed out"), "{:?}", detail.job.reason);
    no_processes_left(&slow, None).await;

    phase("cancelling a final job changes nothing");
    assert_eq!(gateway.cancel(&slow).await.unwrap().state, JobState::Failure);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_job_loses_the_run_and_the_job_runs_again() {
    let mut mesh = GatewayMesh::start(Engine::Sqlite, 1, 3, test_gateway_timing(), false).await;
    let submitted = submit(
        &mesh.gateway,
        r#"
version: 1
jobs:
  - {name: work, type: command, command: "setsid sleep 310 & sleep 3; echo done", timeout: 120}
"#,
    )
    .await;
    let id = id_of(&submitted, "work");
    common::wait_running_attempt_1(&mesh.gateway, &id).await;
    let leader = mesh.cluster("aws").await.unwrap().leader.expect("leader");

    phase("SIGKILL the leader while the job runs");
    mesh.t.mesh.kill("aws", leader).expect("kill leader");
    no_processes_left(&id, Some(1)).await;

    phase("the new leader reports the run lost; attempt 2 runs and finishes");
    let detail = wait_final(&mesh.gateway, &id).await;
    assert_eq!(detail.job.state, JobState::Finished, "{detail:?}");
    assert_eq!(detail.attempts.len(), 2, "{:?}", detail.attempts);
    assert_eq!(detail.attempts[0].state, "lost");
    assert_eq!(detail.attempts[1].state, "finished");
    let accepted = detail.attempts.iter().filter(|a| a.state == "finished").count();
    assert_eq!(accepted, 1, "exactly one accepted result");
    no_processes_left(&id, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_of_a_lost_cluster_moves_and_its_late_result_is_refused() {
    let mut mesh = GatewayMesh::start(Engine::Sqlite, 3, 1, test_gateway_timing(), false).await;

    phase("pause aws (SIGSTOP) while its job runs: after the dead-after bound the job moves");
    let submitted = submit(
        &mesh.gateway,
        r#"
version: 1
jobs:
  - {name: work, type: command, command: "sleep 4; echo done", cluster: {prefer: aws}, timeout: 120}
"#,
    )
    .await;
    let id = id_of(&submitted, "work");
    wait_state(&mesh.gateway, &id, Duration::from_secs(30), |s| s == JobState::Running).await;
    mesh.t.mesh.signal("aws", 1, Signal::SIGSTOP).expect("stop aws");
    let paused = Instant::now();
    let moved = eventually(Duration::from_secs(30), "the job runs elsewhere", || async {
        mesh.gateway.job(&id).await.ok().filter(|d| d.job.attempts == 2 && d.job.cluster.as_deref() != Some("aws"))
    })
    .await;
    eprintln!("moved {} ms after the pause to {:?}", paused.elapsed().as_millis(), moved.job.cluster);
    let detail = wait_final(&mesh.gateway, &id).await;
    assert_eq!(detail.job.state, JobState::Finished);
    assert_eq!(detail.attempts[0].state, "moved");

    phase("aws comes back: its run ended meanwhile; the late result is refused, the recorded one stands");
    mesh.t.mesh.signal("aws", 1, Signal::SIGCONT).expect("continue aws");
    eventually(Duration::from_secs(30), "aws told its result is refused or dropped", || async {
        let text = mesh.t.log("aws", 1);
        (text.contains("refused a report") || text.contains("moved away")).then_some(())
    })
    .await;
    let after = mesh.gateway.job(&id).await.unwrap();
    assert_eq!((after.job.state, after.job.attempts), (JobState::Finished, 2), "{after:?}");

    phase("kill aws outright with a job running: it moves; aws restarts and does not run it again");
    let submitted = submit(
        &mesh.gateway,
        r#"
version: 1
jobs:
  - {name: again, type: command, command: "sleep 2", cluster: {prefer: aws}, timeout: 120}
"#,
    )
    .await;
    let id = id_of(&submitted, "again");
    wait_state(&mesh.gateway, &id, Duration::from_secs(30), |s| s == JobState::Running).await;
    let killed = Instant::now();
    mesh.t.mesh.kill("aws", 1).expect("kill aws");
    let detail = wait_final(&mesh.gateway, &id).await;
    eprintln!("finished elsewhere {} ms after the kill", killed.elapsed().as_millis());
    assert_eq!(detail.job.state, JobState::Finished);
    assert_ne!(detail.job.cluster.as_deref(), Some("aws"));
    mesh.t.mesh.spawn("aws", 1).expect("restart aws");
    eventually(Duration::from_secs(30), "aws registered again", || async {
        mesh.cluster("aws").await.filter(|c| c.state == atoll_api::gateway::ClusterState::Alive)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = mesh.gateway.job(&id).await.unwrap();
    assert_eq!((after.job.state, after.attempts.len()), (JobState::Finished, 2), "{after:?}");
    no_processes_left(&id, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_mid_run_loses_nothing_and_repeats_nothing() {
    // Dead after 6 s, so the checks below have seconds of slack on a loaded machine.
    let timing = GatewayTiming { dead_after_ms: 6_000, ..test_gateway_timing() };
    let mut mesh = GatewayMesh::start(Engine::Sqlite, 1, 1, timing, false).await;
    let submitted = submit(
        &mesh.gateway,
        r#"
version: 1
jobs:
  - {name: work, type: command, command: "sleep 3; echo done", timeout: 120}
  - {name: child, type: command, command: "echo child", depends_on: [work], timeout: 120}
"#,
    )
    .await;
    let id = id_of(&submitted, "work");
    wait_state(&mesh.gateway, &id, Duration::from_secs(30), |s| s == JobState::Running).await;

    phase("SIGKILL the gateway while the job runs; down longer than the dead-after bound");
    mesh.t.mesh.kill_gateway(0);
    tokio::time::sleep(Duration::from_secs(7)).await;

    phase("start it again while the cluster is paused: not heard from yet is suspect, not dead");
    mesh.t.mesh.signal("aws", 1, Signal::SIGSTOP).expect("stop aws");
    mesh.t.mesh.spawn_gateway(0).expect("restart gateway");
    mesh.t.mesh.wait_for_gateway(0, Duration::from_secs(30)).await.expect("gateway back");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let aws = mesh.cluster("aws").await.expect("aws listed");
    let detail = mesh.gateway.job(&id).await.expect("job");
    mesh.t.mesh.signal("aws", 1, Signal::SIGCONT).expect("continue aws");
    assert_eq!(aws.state, ClusterState::Suspect, "{aws:?}");
    assert!(aws.last_seen_ms.is_some_and(|age| age > 6_000), "silent for longer than dead-after: {aws:?}");
    assert_eq!((detail.job.attempts, detail.job.cluster.as_deref()), (1, Some("aws")), "no work moved: {detail:?}");

    phase("the result is delivered when the cluster reports again; the pipeline goes on");
    let detail = wait_final(&mesh.gateway, &id).await;
    assert_eq!((detail.job.state, detail.attempts.len()), (JobState::Finished, 1), "{detail:?}");
    let child = wait_final(&mesh.gateway, &id_of(&submitted, "child")).await;
    assert_eq!(child.job.state, JobState::Finished);
    let out = mesh.cli(&["logs", &id]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"), "the log survived the outage");
}
