//! The kubernetes executor against a fake Kubernetes API server in the test's process (no real
//! API server can run here; see `common::fake_kube` for what the fake does and does not do):
//! each attempt becomes one Kubernetes Job labelled with its job and attempt; logs, exit codes,
//! the timeout (`activeDeadlineSeconds`) and cancel (the Job deleted) work; and a leader killed
//! while Jobs run is followed by one that adopts them: no Job is created twice, the attempt is
//! not repeated, and its result is accepted once. A leader deletes its cluster's Jobs that no
//! held attempt names.

mod common;

use std::time::Duration;

use atoll_api::jobs::JobState;
use atoll_node::jobs::kubernetes::job_name;
use common::Engine;
use common::GatewayMesh;
use common::eventually;
use common::fake_kube::FakeKube;
use common::id_of;
use common::no_processes_left;
use common::phase;
use common::processes_of;
use common::submit;
use common::test_gateway_timing;
use common::wait_final;
use common::wait_state;

async fn kube_mesh(fake: &FakeKube) -> GatewayMesh {
    let api = fake.url.clone();
    GatewayMesh::start_with(Engine::Sqlite, 1, 3, test_gateway_timing(), false, move |layout| {
        layout.clusters[0].kubernetes_api = Some(api);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_run_as_kubernetes_jobs() {
    let fake = FakeKube::start().await;
    // Left from work that moved away while the cluster was cut off; and another cluster's.
    fake.create_stray("atoll-moved-away-1", "aws").await;
    fake.create_stray("atoll-not-ours-1", "gcp").await;
    let mesh = kube_mesh(&fake).await;
    let gateway = &mesh.gateway;

    phase("the leader deletes its cluster's Jobs that no held attempt names, and no other");
    eventually(Duration::from_secs(20), "the stray Job is swept", || async {
        fake.deleted("atoll-moved-away-1").then_some(())
    })
    .await;
    assert!(!fake.deleted("atoll-not-ours-1"), "another cluster's Job is left alone");
    let submitted = submit(
        gateway,
        r#"
version: 1
jobs:
  - name: hello
    type: command
    command: echo "hello from $ATOLL_JOB_ID attempt $ATOLL_ATTEMPT"; echo "output in $ATOLL_OUTPUT"; echo "$GREETING"
    environment: {GREETING: bonjour}
    timeout: 60
  - {name: image, type: docker-image, image: "debian:12", command: echo image ran, timeout: 60}
  - {name: fails, type: command, command: "echo failing; exit 4", timeout: 60}
  - {name: slow, type: command, command: sleep 60, timeout: 2}
  - {name: long, type: command, command: sleep 300, timeout: 600}
"#,
    )
    .await;

    phase("a command job: one Kubernetes Job, its log, finished, then the Job is deleted");
    let hello = id_of(&submitted, "hello");
    let detail = wait_final(gateway, &hello).await;
    assert_eq!(detail.job.state, JobState::Finished, "{detail:?}");
    assert_eq!(detail.attempts[0].exit_code, Some(0));
    let name = job_name(&hello, 1);
    assert_eq!(fake.creates(&name), 1);
    eventually(Duration::from_secs(10), "the finished Job is deleted", || async { fake.deleted(&name).then_some(()) })
        .await;
    let out = mesh.cli(&["logs", &hello]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("hello from {hello} attempt 1")), "{text}");
    assert!(text.contains("output in /atoll/output"), "{text}");
    assert!(text.contains("bonjour"), "{text}");

    phase("an image job runs its image's command");
    let detail = wait_final(gateway, &id_of(&submitted, "image")).await;
    assert_eq!(detail.job.state, JobState::Finished, "{detail:?}");
    let out = mesh.cli(&["logs", &id_of(&submitted, "image")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("image ran"));

    phase("a failing container: failure with its exit code");
    let detail = wait_final(gateway, &id_of(&submitted, "fails")).await;
    assert_eq!(detail.job.state, JobState::Failure, "{detail:?}");
    assert_eq!(detail.attempts[0].exit_code, Some(4), "{detail:?}");
    assert_eq!(detail.attempts[0].message.as_deref(), Some("exited with 4"));

    phase("the timeout is the Job's deadline: failure, timed out, nothing left running");
    let slow = id_of(&submitted, "slow");
    let detail = wait_final(gateway, &slow).await;
    assert_eq!(detail.job.state, JobState::Failure, "{detail:?}");
    let message = detail.attempts[0].message.clone().unwrap_or_default();
    assert!(message.contains("timed out after 2 s"), "{message}");
    no_processes_left(&slow, None).await;

    phase("cancel deletes the running Job: killed, its pod's processes gone");
    let long = id_of(&submitted, "long");
    wait_state(gateway, &long, Duration::from_secs(30), |s| s == JobState::Running).await;
    eventually(Duration::from_secs(10), "the long job's pod runs", || async {
        (!processes_of(&long, Some(1)).is_empty()).then_some(())
    })
    .await;
    gateway.cancel(&long).await.expect("cancel");
    let detail = wait_final(gateway, &long).await;
    assert_eq!(detail.job.state, JobState::Killed, "{detail:?}");
    assert!(fake.deleted(&job_name(&long, 1)));
    no_processes_left(&long, None).await;
    assert_eq!(fake.jobs(), vec!["atoll-not-ours-1".to_string()], "every Job of this cluster is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_adopts_running_kubernetes_jobs() {
    let fake = FakeKube::start().await;
    let mut mesh = kube_mesh(&fake).await;
    let submitted = submit(
        &mesh.gateway,
        r#"
version: 1
jobs:
  - {name: work, type: command, command: "echo started; sleep 4; echo adopted-and-done", timeout: 120}
"#,
    )
    .await;
    let id = id_of(&submitted, "work");
    let name = job_name(&id, 1);
    common::wait_running_attempt_1(&mesh.gateway, &id).await;
    let leader = mesh.cluster("aws").await.unwrap().leader.expect("leader");

    phase("SIGKILL the leader while its Kubernetes Job runs: the Job keeps running");
    mesh.t.mesh.kill("aws", leader).expect("kill leader");
    assert!(!processes_of(&id, Some(1)).is_empty(), "a Kubernetes Job does not die with the leader");

    phase("the new leader adopts it: same attempt, finished, one Job created, one result");
    let detail = wait_final(&mesh.gateway, &id).await;
    assert_eq!(detail.job.state, JobState::Finished, "{detail:?}");
    assert_eq!(detail.attempts.len(), 1, "not run again: {:?}", detail.attempts);
    assert_eq!(detail.attempts[0].state, "finished");
    assert_eq!(fake.creates(&name), 1, "adopted, not created again");
    assert_eq!(fake.ever_created(), vec![name.clone()]);
    let out = mesh.cli(&["logs", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("started").count(), 1, "a log followed again is stored once:\n{text}");
    assert_eq!(text.matches("adopted-and-done").count(), 1, "{text}");
    eventually(Duration::from_secs(10), "the finished Job is deleted", || async { fake.deleted(&name).then_some(()) })
        .await;
}
