//! The kubernetes executor against a fake Kubernetes API server in the test's process (no real
//! API server can run here; see `common::fake_kube` for what the fake does and does not do):
//! each attempt becomes one Kubernetes Job labelled with its job and attempt; logs, exit codes,
//! the timeout (`activeDeadlineSeconds`) and cancel (the Job deleted) work; and a leader killed
//! while Jobs run is followed by one that adopts them: no Job is created twice, the attempt is
//! not repeated, and its result is accepted once. A leader deletes its cluster's Jobs that no
//! held attempt names. A Job's pod brings its inputs and source in and its output out through
//! its helpers (the `atoll` binary under test) and the replicas' pod listeners. A `docker` job is
//! built in its pod by the configured builder (a stand-in script taking kaniko's flags) and run
//! from the cluster's registry; a job's secrets reach its pod through a Secret of the attempt,
//! never in the Job.

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

/// A mesh of `clusters` whose first, aws, runs its jobs on the fake.
async fn kube_mesh_of(fake: &FakeKube, clusters: usize) -> GatewayMesh {
    let api = fake.url.clone();
    GatewayMesh::start_with(Engine::Sqlite, clusters, 3, test_gateway_timing(), false, move |layout| {
        layout.clusters[0].kubernetes_api = Some(api);
        layout.clusters[0].pod_ports = atoll_mesh::allocate_ports(3, 0).expect("pod ports");
    })
    .await
}

async fn kube_mesh(fake: &FakeKube) -> GatewayMesh {
    kube_mesh_of(fake, 1).await
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
    // The fake kubelet shows a mount at its volume's directory.
    assert!(text.contains("output in /") && text.contains("/volumes/output"), "{text}");
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
    let mut mesh = kube_mesh_of(&fake, 2).await;
    let submitted = submit(
        &mesh.gateway,
        r#"
version: 1
jobs:
  - {name: work, type: command, command: "echo started; sleep 4; echo adopted-and-done; echo made > $ATOLL_OUTPUT/made", cluster: {selector: [aws]}, timeout: 120}
  - {name: child, type: command, command: 'test "$(cat $ATOLL_INPUTS/work/made)" = made', cluster: {selector: [gcp]}, depends_on: [work], timeout: 120}
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
    let output = detail.job.output.clone().expect("the pod stored its output with a replica still up");
    assert!(output.size > 0, "{output:?}");
    // Whichever replica took it, gcp gets it from aws's new leader.
    let child = wait_final(&mesh.gateway, &id_of(&submitted, "child")).await;
    assert_eq!(child.job.state, JobState::Finished, "{child:?}");
    assert_eq!(fake.ever_created(), vec![name.clone()]);
    let out = mesh.cli(&["logs", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("started").count(), 1, "a log followed again is stored once:\n{text}");
    assert_eq!(text.matches("adopted-and-done").count(), 1, "{text}");
    eventually(Duration::from_secs(10), "the finished Job is deleted", || async { fake.deleted(&name).then_some(()) })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_helpers_bring_inputs_and_sources_in_and_the_output_out() {
    let fake = FakeKube::start().await;
    let mesh = kube_mesh_of(&fake, 2).await;
    let gateway = &mesh.gateway;
    let dir = mesh.t.dir.path().join("project");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "hello from the source\n").unwrap();
    let source = mesh.push(&dir)["digest"].as_str().expect("digest").to_string();

    phase(
        "build (a pod on aws) reads the source, writes an output; test (a process on gcp) reads it; back (a pod on aws) reads both",
    );
    let yaml = format!(
        r#"
version: 1
source: {source}
jobs:
  - name: build
    type: command
    command: cp "$ATOLL_SOURCE/hello.txt" "$ATOLL_OUTPUT/" && mkdir "$ATOLL_OUTPUT/sub" && echo deep > "$ATOLL_OUTPUT/sub/file"
    cluster: {{selector: [aws]}}
    timeout: 60
  - name: test
    type: command
    command: test "$(cat "$ATOLL_INPUTS/build/sub/file")" = deep && echo from-gcp > "$ATOLL_OUTPUT/verdict"
    cluster: {{selector: [gcp]}}
    depends_on: [build]
    timeout: 120
  - name: back
    type: command
    command: test "$(cat "$ATOLL_INPUTS/test/verdict")" = from-gcp && test "$(cat "$ATOLL_INPUTS/build/hello.txt")" = "hello from the source" && echo ok
    cluster: {{selector: [aws]}}
    depends_on: [build, test]
    timeout: 120
  - {{name: quiet, type: command, command: "true", cluster: {{selector: [aws]}}, timeout: 60}}
  - {{name: broken, type: command, command: "echo partial > $ATOLL_OUTPUT/log.txt; exit 3", cluster: {{selector: [aws]}}, timeout: 60}}
  - {{name: unarchivable, type: command, command: "python3 -c 'import os, socket; socket.socket(socket.AF_UNIX).bind(os.environ[\"ATOLL_OUTPUT\"] + \"/sock\")'", cluster: {{selector: [aws]}}, timeout: 60}}
  - {{name: waits, type: command, command: "sleep 60", cluster: {{selector: [aws]}}, depends_on: [build], timeout: 120}}
"#
    );
    let submitted = submit(gateway, &yaml).await;
    let build = wait_final(gateway, &id_of(&submitted, "build")).await;
    assert_eq!(build.job.state, JobState::Finished, "{build:?}");
    let output = build.job.output.clone().expect("build's output, stored by its pod");
    assert_eq!(build.job.cluster.as_deref(), Some("aws"));
    for job in ["test", "back"] {
        let done = wait_final(gateway, &id_of(&submitted, job)).await;
        assert_eq!(done.job.state, JobState::Finished, "{job}: {done:?}");
    }
    let back = id_of(&submitted, "back");
    let logs = mesh.cli(&["logs", &back]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("ok"), "{}", String::from_utf8_lossy(&logs.stdout));

    phase("nothing written: no output; a failed job's output is kept");
    let quiet = wait_final(gateway, &id_of(&submitted, "quiet")).await;
    assert_eq!(quiet.job.state, JobState::Finished, "{quiet:?}");
    assert!(quiet.job.output.is_none(), "{quiet:?}");
    let broken = wait_final(gateway, &id_of(&submitted, "broken")).await;
    assert_eq!(broken.job.state, JobState::Failure, "{broken:?}");
    assert_eq!(broken.attempts[0].exit_code, Some(3));
    assert!(broken.job.output.is_some(), "the output of a failed job counts: {broken:?}");

    phase("an output the helper cannot store: error, saying why");
    let unarchivable = wait_final(gateway, &id_of(&submitted, "unarchivable")).await;
    assert_eq!(unarchivable.job.state, JobState::Error, "{unarchivable:?}");
    let message = unarchivable.attempts[0].message.clone().unwrap_or_default();
    assert!(message.starts_with("storing its output failed: ") && message.contains("sock"), "{message}");
    let left = fake.tmp_files(&job_name(&id_of(&submitted, "unarchivable"), 1));
    assert!(left.is_empty(), "the half-written archive is removed: {left:?}");
    let left = fake.tmp_files(&job_name(&id_of(&submitted, "build"), 1));
    assert!(left.is_empty(), "the sent archive is removed: {left:?}");

    phase("the pod listener refuses a wrong secret, a blob the attempt may not read, and an unknown attempt");
    let waits = id_of(&submitted, "waits");
    wait_state(gateway, &waits, Duration::from_secs(60), |s| s == JobState::Running).await;
    let ca = std::fs::read_to_string(mesh.t.mesh.dir.certs().join("ca.pem")).expect("CA");
    let ports = mesh.t.mesh.layout.clusters[0].pod_ports.clone();
    let urls = ports.iter().map(|p| format!("https://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let helper = |job: &str, secret: &str, digest: &str| {
        let blobs =
            format!("[{{\"digest\": \"{digest}\", \"dir\": \"{}\"}}]", mesh.t.dir.path().join("in/x").display());
        std::process::Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(["pod", "inputs"])
            .env("ATOLL_CLUSTER", "aws")
            .env("ATOLL_JOB_ID", job)
            .env("ATOLL_ATTEMPT", "1")
            .env("ATOLL_POD_URLS", &urls)
            .env("ATOLL_POD_SECRET", secret)
            .env("ATOLL_POD_CA", &ca)
            .env("ATOLL_POD_BLOBS", blobs)
            .output()
            .expect("run atoll pod inputs")
    };
    let out = helper(&waits, "not-the-secret", &output.digest);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("403") && stderr.contains("not the secret"), "{stderr}");
    // Whoever may read the Job sees its helpers' secret.
    let secret = fake.env_of(&job_name(&waits, 1), "atoll-output", "ATOLL_POD_SECRET").expect("the pod's secret");
    let out = helper(&waits, &secret, &format!("sha256:{}", "0".repeat(64)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("neither an input nor the source"), "{stderr}");
    let out = helper(&waits, &secret, &output.digest);
    assert!(out.status.success(), "its own input, with its secret: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(mesh.t.dir.path().join("in/x/sub/file")).unwrap(),
        "deep\n",
        "verified and unpacked"
    );
    gateway.cancel(&waits).await.expect("cancel");
    let done = wait_final(gateway, &waits).await;
    assert_eq!(done.job.state, JobState::Killed, "{done:?}");
    let out = helper(&waits, &secret, &output.digest);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an ended attempt's secret opens nothing: {stderr}");

    phase("a pod whose helpers show the wrong secret: its inputs never arrive, error, saying why");
    fake.tamper("ATOLL_POD_SECRET", "meddled");
    let yaml = format!(
        "version: 1\nsource: {source}\njobs:\n  - {{name: late, type: command, command: 'true', cluster: {{selector: [aws]}}, timeout: 60}}\n"
    );
    let late = id_of(&submit(gateway, &yaml).await, "late");
    let done = wait_final(gateway, &late).await;
    assert_eq!(done.job.state, JobState::Error, "{done:?}");
    let message = done.attempts[0].message.clone().unwrap_or_default();
    assert!(message.starts_with("delivering its inputs failed: ") && message.contains("not the secret"), "{message}");
}

/// A builder for the fake kubelet: prints its arguments, checks the Dockerfile came in with the
/// source (the fake shows mounts at their volumes' directories), and fails when it names `FAIL`.
const FAKE_BUILDER: &str = r#"for a; do echo "builder arg $a"; case $a in --dockerfile=*) f=${a#--dockerfile=}; test -f "$f" || { echo "no Dockerfile at $f"; exit 9; }; grep -q FAIL "$f" && { echo "the build failed"; exit 7; } ;; esac; done; echo built"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_job_is_built_in_its_pod_by_the_builder_and_secrets_reach_pods_through_a_secret() {
    let fake = FakeKube::start().await;
    let api = fake.url.clone();
    let mesh = GatewayMesh::start_with(Engine::Sqlite, 1, 3, test_gateway_timing(), false, move |layout| {
        layout.clusters[0].kubernetes_api = Some(api);
        layout.clusters[0].pod_ports = atoll_mesh::allocate_ports(3, 0).expect("pod ports");
        layout.clusters[0].kubernetes_builder = Some(atoll_mesh::KubernetesBuilder {
            image: "kaniko:test".into(),
            registry: "registry.local:5000/atoll".into(),
            command: vec!["sh".into(), "-c".into(), FAKE_BUILDER.into(), "builder".into()],
            args: vec!["--insecure".into()],
        });
    })
    .await;
    let gateway = &mesh.gateway;

    phase("the cluster says it builds images, and gives jobs secrets");
    let caps = eventually(Duration::from_secs(30), "aws's capabilities", || async {
        mesh.cluster("aws").await.and_then(|c| c.capabilities)
    })
    .await;
    assert_eq!(caps.executor, "kubernetes");
    assert!(caps.runs.contains(&atoll_api::spec::JobKind::Docker) && caps.secrets, "{caps:?}");

    phase("a docker job: built by the builder in its pod from the pushed source, then run");
    let dir = mesh.t.dir.path().join("project");
    std::fs::create_dir_all(dir.join("app/infrabox")).unwrap();
    std::fs::write(dir.join("app/infrabox/Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::write(dir.join("app/infrabox/Broken"), "FROM scratch\nRUN FAIL\n").unwrap();
    let source = mesh.push(&dir)["digest"].as_str().expect("digest").to_string();
    let yaml = format!(
        r#"
version: 1
source: {source}
jobs:
  - {{name: built, type: docker, docker_file: app/infrabox/Dockerfile, build_only: false, build_arguments: {{V: "1"}}, timeout: 60}}
  - {{name: only, type: docker, docker_file: app/infrabox/Dockerfile, timeout: 60}}
  - {{name: broken, type: docker, docker_file: app/infrabox/Broken, build_only: false, timeout: 60}}
"#
    );
    let submitted = submit(gateway, &yaml).await;
    let built = id_of(&submitted, "built");
    let detail = wait_final(gateway, &built).await;
    assert_eq!(detail.job.state, JobState::Finished, "{detail:?}");
    let log = String::from_utf8_lossy(&mesh.cli(&["logs", &built]).stdout).into_owned();
    assert!(
        log.contains("fake kubelet: registry.local:5000/atoll/built:"),
        "the job's container runs the built image: {log}"
    );
    let pod = fake.pod_spec(&job_name(&built, 1)).expect("the Job's pod");
    let build = &pod["initContainers"][1];
    assert_eq!(build["name"], "atoll-build");
    let args: Vec<&str> = build["args"].as_array().unwrap().iter().filter_map(|a| a.as_str()).collect();
    assert!(args.contains(&"--build-arg=V=1") && args.contains(&"--insecure"), "{args:?}");

    phase("build_only (InfraBox's default): the build is the job, its log the builder's");
    let only = id_of(&submitted, "only");
    let detail = wait_final(gateway, &only).await;
    assert_eq!(detail.job.state, JobState::Finished, "{detail:?}");
    let log = String::from_utf8_lossy(&mesh.cli(&["logs", &only]).stdout).into_owned();
    assert!(
        log.contains("builder arg --destination=registry.local:5000/atoll/only:") && log.contains("built"),
        "{log}"
    );

    phase("a Dockerfile that does not build: failure, with the builder's last line");
    let detail = wait_final(gateway, &id_of(&submitted, "broken")).await;
    assert_eq!(detail.job.state, JobState::Failure, "{detail:?}");
    let message = detail.attempts[0].message.clone().unwrap_or_default();
    assert_eq!(message, "building its image failed (exit 7): the build failed", "{detail:?}");

    phase("a secret: in a Secret of the attempt, referred to by the pod, deleted with the Job");
    let value = "k8s-s3cr3t-value";
    let file = mesh.t.dir.path().join("token");
    std::fs::write(&file, value).unwrap();
    let out = mesh.cli(&["secret", "set", "token", "--from-file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let submitted = submit(
        gateway,
        "version: 1\njobs: [{name: uses, type: command, command: 'printf %s \"$TOKEN\" | sha256sum; echo \"token=$TOKEN\"', environment: {TOKEN: {$secret: token}}, timeout: 60}]\n",
    )
    .await;
    let uses = id_of(&submitted, "uses");
    let detail = wait_final(gateway, &uses).await;
    assert_eq!(detail.job.state, JobState::Finished, "{detail:?}");
    let log = String::from_utf8_lossy(&mesh.cli(&["logs", &uses]).stdout).into_owned();
    let expected = std::process::Command::new("sh")
        .args(["-c", &format!("printf %s '{value}' | sha256sum")])
        .output()
        .expect("sha256sum");
    assert!(log.contains(String::from_utf8_lossy(&expected.stdout).trim()), "the job saw the value: {log}");
    assert!(log.contains("token=***") && !log.contains(value), "masked in the log: {log}");
    let name = job_name(&uses, 1);
    let pod = fake.pod_spec(&name).expect("the Job's pod");
    assert!(!pod.to_string().contains(value), "no value in the Job: {pod}");
    let token = pod["containers"][0]["env"].as_array().unwrap().iter().find(|e| e["name"] == "TOKEN").unwrap().clone();
    assert_eq!(token["valueFrom"]["secretKeyRef"]["name"], name.as_str(), "{token}");
    eventually(Duration::from_secs(10), "the attempt's Secret is deleted with its Job", || async {
        let (created, deleted) = fake.secret_history();
        (created == [name.clone()] && deleted == [name.clone()]).then_some(())
    })
    .await;
    assert!(fake.secrets().is_empty());
}
