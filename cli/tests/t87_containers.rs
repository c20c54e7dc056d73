//! InfraBox's container jobs end to end, on a mesh whose clusters advertise what they run: aws
//! and onprem run containers through podman (`jobs.containers`), gcp has no engine. A pushed tree
//! holds Dockerfiles, a compose file and InfraBox's own `transfer_data` pipeline file, unchanged;
//! one pipeline runs:
//!
//! - a `docker` job built and run on aws, writing `/infrabox/output` with a secret in its
//!   environment (masked in its log), read by its child's `/infrabox/inputs/producer` on onprem;
//! - a `docker-image` job;
//! - a `workflow` include of a `docker-compose` job (two services, the first to stop decides);
//! - a `workflow` include of InfraBox's `transfer_data/infrabox.json` as its authors wrote it;
//! - a `git` include from a repository served by `git daemon` on 127.0.0.1, whose `docker` job
//!   builds the Dockerfile of that repository (the gateway packs it as the job's source);
//!
//! then a `docker` job on aws pushes its image to a real registry (Debian's `docker-registry`
//! on 127.0.0.1, TLS and a login) with a password stored as a secret, and a `docker-image` job on
//! onprem pulls it from there with its `registries` login and runs it; and InfraBox's
//! `transfer_data` file runs unchanged by `atoll submit --push` (its directory pushed as the
//! pipeline's source, as InfraBox clones the repository its file is in).
//!
//! A `docker` job selecting gcp is refused at submit, naming what gcp lacks; the clusters list
//! shows what each runs. Needs podman, podman-compose and the base image `scripts/test` makes
//! (`localhost/atoll-base:bookworm`); without them the jobs fail, saying so.

mod common;

use std::time::Duration;

use atoll_api::jobs::JobState;
use atoll_api::spec::JobKind;
use common::Engine;
use common::GatewayMesh;
use common::phase;
use common::test_gateway_timing;

const BASE: &str = "localhost/atoll-base:bookworm";

fn write(path: &std::path::Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_and_compose_jobs_run_where_a_container_engine_is_and_are_refused_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    write(
        &tree.join("infrabox/producer/Dockerfile"),
        &format!(
            "FROM {BASE}\nARG GREETING\nRUN echo \"$GREETING, made in the build\" > /made\n\
             CMD [\"sh\", \"-c\", \"cp /made /infrabox/output/data.txt; echo token=$TOKEN build=$INFRABOX_BUILD_NUMBER\"]\n"
        ),
    );
    write(
        &tree.join("infrabox/consumer/Dockerfile"),
        &format!("FROM {BASE}\nCMD [\"sh\", \"-c\", \"echo consumed: $(cat /infrabox/inputs/producer/data.txt)\"]\n"),
    );
    write(
        &tree.join("compose/infrabox.json"),
        r#"{"version": 1, "jobs": [{"type": "docker-compose", "name": "test",
            "resources": {"limits": {"cpu": 1, "memory": 1024}},
            "docker_compose_file": "infrabox/test/docker-compose.yml", "stop_timeout": 2}]}"#,
    );
    write(&tree.join("compose/infrabox/test/svc/Dockerfile"), &format!("FROM {BASE}\nRUN echo built > /built\n"));
    write(
        &tree.join("compose/infrabox/test/docker-compose.yml"),
        &format!(
            "services:\n  db:\n    image: {BASE}\n    command: [\"sleep\", \"600\"]\n  test:\n    build: ./svc\n    \
             command: [\"sh\", \"-c\", \"cat /built; echo compose job $$INFRABOX_JOB_ID; echo ok > /infrabox/output/t\"]\n"
        ),
    );
    // InfraBox's own pipeline file, unchanged, with Dockerfiles where it names them.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/src/spec/testdata/infrabox/examples");
    let original = std::fs::read_to_string(examples.join("transfer_data/infrabox.json")).unwrap();
    write(&tree.join("transfer_data/infrabox.json"), &original);
    write(
        &tree.join("transfer_data/infrabox/producer/Dockerfile"),
        &format!("FROM {BASE}\nCMD [\"sh\", \"-c\", \"echo from the example > /infrabox/output/file.txt\"]\n"),
    );
    write(
        &tree.join("transfer_data/infrabox/consumer/Dockerfile"),
        &format!("FROM {BASE}\nCMD [\"sh\", \"-c\", \"cat /infrabox/inputs/producer/file.txt\"]\n"),
    );

    // A repository with a docker job of its own, served on 127.0.0.1.
    let repos = tmp.path().join("repos");
    let ext = repos.join("ext");
    std::fs::create_dir_all(&ext).unwrap();
    common::git::git(&ext, &["init", "--quiet", "--initial-branch=main"]);
    write(
        &ext.join("infrabox.json"),
        r#"{"version": 1, "jobs": [{"type": "docker", "name": "built", "build_only": false,
            "resources": {"limits": {"cpu": 1, "memory": 1024}}, "docker_file": "ci/Dockerfile"}]}"#,
    );
    write(
        &ext.join("ci/Dockerfile"),
        &format!(
            "FROM {BASE}\nCOPY ci/message /message\nCMD [\"sh\", \"-c\", \"cat /message; echo at $INFRABOX_COMMIT_ID\"]\n"
        ),
    );
    write(&ext.join("ci/message"), "built from the included repository\n");
    common::git::git(&ext, &["add", "."]);
    common::git::git(&ext, &["commit", "--quiet", "-m", "a docker job"]);
    let (_daemon, port) = common::git::serve(&repos).await;

    // An image registry with a login, whose CA the engines are given.
    let registry = atoll_mesh::registry::ImageRegistry::start(&tmp.path().join("registry")).await.unwrap();
    let certs = registry.certs.display().to_string();
    let mesh = GatewayMesh::start_with(Engine::Sqlite, 3, 1, test_gateway_timing(), true, |layout| {
        for cluster in &mut layout.clusters {
            if cluster.name != "gcp" {
                let mut podman = atoll_mesh::JobContainers::podman();
                podman.registry_args = vec!["--cert-dir".into(), certs.clone()];
                cluster.job_containers = Some(podman);
            }
        }
    })
    .await;

    phase("each cluster says what it runs");
    let aws = common::eventually(Duration::from_secs(30), "aws's capabilities", || async {
        mesh.cluster("aws").await.and_then(|c| c.capabilities)
    })
    .await;
    assert_eq!(aws.executor, "process");
    assert_eq!(aws.runs, [JobKind::Command, JobKind::DockerImage, JobKind::Docker, JobKind::DockerCompose]);
    let gcp = mesh.cluster("gcp").await.and_then(|c| c.capabilities).expect("gcp's capabilities");
    assert_eq!(gcp.runs, [JobKind::Command]);
    let out = mesh.cli(&["clusters", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("clusters --json");
    assert!(listed.to_string().contains(r#""missing":["no container engine (jobs.containers)"]"#), "{listed}");
    let table = String::from_utf8_lossy(&mesh.cli(&["clusters"]).stdout).into_owned();
    let line = |name: &str| table.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_string();
    assert!(table.lines().next().is_some_and(|h| h.contains(" runs ")), "{table}");
    assert!(line("aws ").contains(" docker-image,docker,docker-compose "), "{table}");
    assert!(line("gcp ").contains(" command "), "{table}");

    phase("a docker job selecting gcp is refused at submit, naming what gcp lacks");
    let refused = mesh
        .gateway
        .submit(&atoll_api::jobs::SubmitRequest {
            spec: atoll_api::spec::parse_document(
                "version: 1\njobs: [{name: b, type: docker, docker_file: D, cluster: {selector: [gcp]}}]\n",
            )
            .unwrap(),
            files: Default::default(),
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(
            "jobs[0].type: job \"b\": no cluster with its labels can run it: gcp runs no docker jobs (process executor: \
             no container engine (jobs.containers))"
        ),
        "{refused}"
    );

    phase("a secret, the tree pushed, the pipeline submitted");
    let value = tmp.path().join("token");
    std::fs::write(&value, "tok-3f9a1c").unwrap();
    let out = mesh.cli(&["secret", "set", "token", "--from-file", value.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let source = mesh.push(&tree)["digest"].as_str().unwrap().to_string();
    let yaml = format!(
        r#"version: 1
source: "{source}"
jobs:
  - name: producer
    type: docker
    docker_file: infrabox/producer/Dockerfile
    build_only: false
    build_arguments: {{GREETING: hello}}
    environment: {{TOKEN: {{$secret: token}}}}
    cluster: {{selector: [aws]}}
    timeout: 300
  - name: consumer
    type: docker
    docker_file: infrabox/consumer/Dockerfile
    build_only: false
    depends_on: [producer]
    cluster: {{selector: [onprem]}}
    timeout: 300
  - name: image
    type: docker-image
    image: {BASE}
    command: ["sh", "-c", "echo image ran"]
  - {{name: flow, type: workflow, infrabox_file: compose/infrabox.json}}
  - {{name: example, type: workflow, infrabox_file: transfer_data/infrabox.json}}
  - {{name: ext, type: git, clone_url: "git://127.0.0.1:{port}/ext", commit: main}}
"#
    );
    let submitted = common::submit(&mesh.gateway, &yaml).await;
    let names = ["producer", "consumer", "image", "flow/test", "example/producer", "example/consumer", "ext/built"];
    for name in names {
        let id = common::id_of(&submitted, name);
        let detail = common::wait_state(&mesh.gateway, &id, Duration::from_secs(300), JobState::is_final).await;
        let log = String::from_utf8_lossy(&mesh.cli(&["logs", &id]).stdout).into_owned();
        assert_eq!(detail.job.state, JobState::Finished, "{name}: {:?}\n{log}", detail.job.reason);
        match name {
            "producer" => {
                assert_eq!(detail.job.cluster.as_ref().map(|c| c.as_str()), Some("aws"));
                assert!(log.contains("token=*** build="), "the secret is masked: {log}");
                assert!(!log.contains("tok-3f9a1c"), "{log}");
            }
            "consumer" => {
                assert_eq!(
                    detail.job.cluster.as_ref().map(|c| c.as_str()),
                    Some("onprem"),
                    "the child runs on another cluster"
                );
                assert!(log.contains("consumed: hello, made in the build"), "{log}");
            }
            "image" => assert!(log.contains("image ran"), "{log}"),
            "flow/test" => assert!(log.contains("built") && log.contains("compose job"), "{log}"),
            "example/consumer" => assert!(log.contains("from the example"), "{log}"),
            "ext/built" => {
                assert!(log.contains("built from the included repository") && log.contains("at main"), "{log}")
            }
            _ => {}
        }
        // Only clusters with an engine ran container jobs.
        assert_ne!(detail.job.cluster.as_ref().map(|c| c.as_str()), Some("gcp"), "{name}");
    }

    phase("a docker job pushes to a registry with its login; a docker-image job on another cluster pulls it back");
    let password = tmp.path().join("registry-password");
    std::fs::write(&password, atoll_mesh::registry::REGISTRY_PASSWORD).unwrap();
    let out = mesh.cli(&["secret", "set", "registry", "--from-file", password.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let host = &registry.addr;
    let login = format!(r#"username: {}, password: {{$secret: registry}}"#, atoll_mesh::registry::REGISTRY_USER);
    let yaml = format!(
        r#"version: 1
source: "{source}"
jobs:
  - name: publish
    type: docker
    docker_file: infrabox/producer/Dockerfile
    build_arguments: {{GREETING: published}}
    deployments: [{{type: docker-registry, host: "{host}", repository: atoll/producer, tag: t87, {login}}}]
    cluster: {{selector: [aws]}}
  - name: pulled
    type: docker-image
    image: "{host}/atoll/producer:t87"
    command: ["cat", "/made"]
    registries: [{{type: docker-registry, host: "{host}", repository: atoll/producer, {login}}}]
    depends_on: [publish]
    cluster: {{selector: [onprem]}}
"#
    );
    let submitted = common::submit(&mesh.gateway, &yaml).await;
    for name in ["publish", "pulled"] {
        let id = common::id_of(&submitted, name);
        let detail = common::wait_state(&mesh.gateway, &id, Duration::from_secs(300), JobState::is_final).await;
        let log = String::from_utf8_lossy(&mesh.cli(&["logs", &id]).stdout).into_owned();
        assert_eq!(detail.job.state, JobState::Finished, "{name}: {:?}\n{log}", detail.job.reason);
        assert!(!log.contains(atoll_mesh::registry::REGISTRY_PASSWORD), "{log}");
        match name {
            "publish" => assert!(log.contains(&format!("[atoll] pushing {host}/atoll/producer:t87")), "{log}"),
            _ => assert!(
                log.contains(&format!("[atoll] pulling {host}/atoll/producer:t87"))
                    && log.contains("published, made in the build"),
                "{log}"
            ),
        }
    }
    // What was pulled from this run's registry, and the publishing job's built image (the
    // product, which the engine keeps): not kept by the test.
    let podman = atoll_mesh::JobContainers::podman();
    let mut images = std::process::Command::new(&podman.engine);
    images.args(&podman.engine_args).args(["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let listed = String::from_utf8_lossy(&images.output().unwrap().stdout).into_owned();
    let pulled: Vec<&str> =
        listed.lines().filter(|l| l.starts_with(host.as_str()) || l.starts_with("localhost/atoll/publish-")).collect();
    if !pulled.is_empty() {
        let status = std::process::Command::new(&podman.engine)
            .args(&podman.engine_args)
            .args(["rmi", "-f", "--"])
            .args(&pulled)
            .status()
            .unwrap();
        assert!(status.success(), "removing {pulled:?}");
    }

    phase("InfraBox's file, unchanged, by atoll submit --push: its directory is the pipeline's source");
    let file = tree.join("transfer_data/infrabox.json");
    let out = mesh.cli(&["submit", "--push", "--wait", "--json", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let done: atoll_api::jobs::Submitted = serde_json::from_slice(&out.stdout).expect("submit --json");
    let states: Vec<(&str, JobState)> = done.jobs.iter().map(|j| (j.name.as_str(), j.state)).collect();
    assert_eq!(states, [("producer", JobState::Finished), ("consumer", JobState::Finished)]);
    let log = String::from_utf8_lossy(&mesh.cli(&["logs", &common::id_of(&done, "consumer")]).stdout).into_owned();
    assert!(log.contains("from the example"), "{log}");
    let named = tmp.path().join("named.yaml");
    std::fs::write(
        &named,
        format!("version: 1\nsource: \"{source}\"\njobs: [{{name: a, type: command, command: 'true'}}]\n"),
    )
    .unwrap();
    let out = mesh.cli(&["submit", "--push", named.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("the spec names a source; leave out --push"), "{stderr}");
}
