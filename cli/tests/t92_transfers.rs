//! Outputs between clusters, with real replicas and a real gateway on 127.0.0.1 and the dev
//! cuts (onprem refuses aws and gcp; gcp refuses onprem): each route chosen where the matrix
//! demands it and delivering identical bytes (each child checks its parent's SHA-256 sums);
//! tickets refused when forged, expired, for another edge, or missing; a pull cut mid-transfer
//! that resumes when the cut heals, and one that falls back to the relay and goes on there from
//! the chunk it had reached; a relay download that resumes after the gateway was killed and
//! started again; a finished parent that stays finished while its child's cluster is dead.
//!
//! Cuts are made the way `atoll dev` makes them: the serving replica drops the requests of the
//! refused cluster (`atoll.io/refuse-inbound-from`, checked per request), so a transfer in
//! flight loses its path. Network-namespace cuts are the chaos suite's.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use atoll_api::Identity;
use atoll_api::jobs::JobState;
use atoll_api::jobs::Route;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::KeyAlgorithm;
use atoll_api::ticket::Ticket;
use atoll_api::ticket::TicketOp;
use atoll_api::tls::ServerPolicy;
use common::Engine;
use common::GatewayMesh;
use common::annotate_retrying;
use common::eventually;
use common::https_client;
use common::id_of;
use common::issued_identity;
use common::phase;
use common::submit;
use common::test_gateway_timing;
use common::wait_final;
use common::wait_state;

const MIB: u64 = 1024 * 1024;
const CUT: &str = "atoll.io/refuse-inbound-from";

/// A job on `cluster` writing `mib` MiB of random bytes and their SHA-256 sum.
fn producer(name: &str, cluster: &str, mib: u64, extra: &str) -> String {
    format!(
        "  - name: {name}\n    type: command\n    command: cd \"$ATOLL_OUTPUT\" && head -c {} /dev/urandom > data.bin && sha256sum data.bin > data.sha256\n    cluster: {{selector: [{cluster}]}}\n    timeout: 120\n{extra}",
        mib * MIB
    )
}

/// A job on `cluster` that succeeds only if `parent`'s files arrived intact.
fn consumer(name: &str, cluster: &str, parent: &str) -> String {
    format!(
        "  - name: {name}\n    type: command\n    command: cd \"$ATOLL_INPUTS/{parent}\" && sha256sum -c data.sha256\n    cluster: {{selector: [{cluster}]}}\n    depends_on: [{parent}]\n    timeout: 300\n"
    )
}

/// A consumer of `parent` that also waits for `gate`.
fn gated_consumer(name: &str, cluster: &str) -> String {
    consumer(name, cluster, "parent").replace("depends_on: [parent]", "depends_on: [parent, gate]")
}

fn spec(jobs: &[String]) -> String {
    format!("version: 1\njobs:\n{}", jobs.concat())
}

fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos().div_euclid(1_000_000) as i64
}

/// Where a replica's local store keeps the chunks of `digest`.
fn chunk_dir(mesh: &GatewayMesh, cluster: &str, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("digest");
    mesh.t.mesh.dir.data_dir(cluster, 1).join("blobs").join("sha256").join(hex)
}

/// The route of `child`'s input from `parent` as the gateway shows it.
async fn route(mesh: &GatewayMesh, child: &str, parent: &str) -> Option<Route> {
    let detail = mesh.gateway.job(child).await.expect("job");
    detail.job.inputs.iter().find(|i| i.from_job == parent).and_then(|i| i.route)
}

/// The routes the gateway recorded for `child`'s input from `parent` (attempt 1), in order.
async fn routes_taken(mesh: &GatewayMesh, child: &str, parent: &str) -> Vec<atoll_api::jobs::RouteTaken> {
    let detail = mesh.gateway.job(child).await.expect("job");
    let attempt = detail.attempts.into_iter().find(|a| a.attempt == 1).expect("attempt 1");
    attempt.routes.into_iter().filter(|r| r.from_job == parent).collect()
}

/// The one log line of `cluster`'s replica that says `input received` for `job`.
fn received_line(mesh: &GatewayMesh, cluster: &str, job: &str) -> String {
    let log = mesh.t.log(cluster, 1);
    log.lines()
        .find(|l| l.contains("input received") && l.contains(job))
        .unwrap_or_else(|| panic!("no 'input received' for {job} in {cluster}'s log"))
        .to_string()
}

async fn start(limits: &[(&str, u64)]) -> GatewayMesh {
    let limits: Vec<(String, u64)> = limits.iter().map(|(c, l)| (c.to_string(), *l)).collect();
    GatewayMesh::start_with(Engine::Sqlite, 3, 1, test_gateway_timing(), true, move |layout| {
        for cluster in &mut layout.clusters {
            cluster.transfer_limit = limits.iter().find(|(c, _)| *c == cluster.name).map(|(_, l)| *l);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_delivers_identical_bytes_and_tickets_guard_every_edge() {
    let mut mesh = start(&[]).await;
    mesh.wait_cell("onprem", "aws", atoll_api::gateway::LinkState::Reachable, Duration::from_secs(30)).await;

    phase(
        "one pipeline, four routes: local, pull (onprem fetches from aws), push (onprem sends to aws), relay (onprem -> gateway -> gcp)",
    );
    let yaml = spec(&[
        producer("on-aws", "aws", 20, ""),
        producer("on-onprem", "onprem", 12, ""),
        consumer("local", "aws", "on-aws"),
        consumer("pulled", "onprem", "on-aws"),
        consumer("pushed", "aws", "on-onprem"),
        consumer("relayed", "gcp", "on-onprem"),
    ]);
    let submitted = submit(&mesh.gateway, &yaml).await;
    for (child, parent, expected) in [
        ("local", "on-aws", Route::Local),
        ("pulled", "on-aws", Route::Pull),
        ("pushed", "on-onprem", Route::Push),
        ("relayed", "on-onprem", Route::Relay),
    ] {
        let id = id_of(&submitted, child);
        let done = wait_state(&mesh.gateway, &id, Duration::from_secs(120), JobState::is_final).await;
        assert_eq!(done.job.state, JobState::Finished, "{child}: {:?}", done.job);
        assert_eq!(route(&mesh, &id, parent).await, Some(expected), "{child}");
        let input = done.job.inputs.iter().find(|i| i.from_job == parent).unwrap();
        assert_eq!(input.mode, Some(expected.mode()));
        // The route as the gateway gave it when the child's cluster asked, recorded with the
        // attempt (a local input is never asked for).
        let taken: Vec<Route> = routes_taken(&mesh, &id, parent).await.iter().map(|r| r.route).collect();
        let asked = if expected == Route::Local { vec![] } else { vec![expected] };
        assert_eq!(taken, asked, "{child}");
    }
    let aws_output = mesh.gateway.job(&id_of(&submitted, "on-aws")).await.unwrap().job.output.unwrap();
    let onprem_output = mesh.gateway.job(&id_of(&submitted, "on-onprem")).await.unwrap().job.output.unwrap();
    assert!(aws_output.size > 20 * MIB, "several chunks: {aws_output:?}");
    // Each blob is now where its route put it, once: onprem's copy of aws's output, aws's copy
    // of onprem's (pushed), the gateway's relay copy and gcp's.
    assert!(chunk_dir(&mesh, "onprem", &aws_output.digest).join("manifest").exists());
    assert!(chunk_dir(&mesh, "aws", &onprem_output.digest).join("manifest").exists());
    assert!(chunk_dir(&mesh, "gcp", &onprem_output.digest).join("manifest").exists());
    let hex = onprem_output.digest.strip_prefix("sha256:").unwrap();
    assert!(mesh.t.mesh.dir.gateway_dir().join("blobs/sha256").join(hex).join("manifest").exists());

    phase("tickets: a replica serves a blob only to the edge a valid ticket names");
    let ca = CertificateAuthority::load(&mesh.t.mesh.dir.certs()).expect("the mesh CA");
    let as_cluster = |cluster: &str| {
        let identity = Identity::node(cluster.parse().unwrap(), 9);
        let cert = ca.issue(&identity, Duration::from_secs(3600), KeyAlgorithm::EcdsaP256).unwrap();
        let tls = issued_identity(&ca, &cert);
        https_client(tls.client_config(ServerPolicy::NodeOf("aws".parse().unwrap())).unwrap())
    };
    let aws = mesh.t.mesh.layout.replica("aws", 1).unwrap().addr();
    let url = format!("https://{aws}/v1/blobs/{}", aws_output.digest);
    let ticket = |op: TicketOp, to: &str, expires_ms: i64, signer: &CertificateAuthority| {
        signer
            .sign_ticket(&Ticket {
                op,
                digest: aws_output.digest.clone(),
                from: "aws".parse().unwrap(),
                to: to.parse().unwrap(),
                job: "x.y".into(),
                expires_ms,
            })
            .unwrap()
    };
    let forger = CertificateAuthority::generate("forger", Duration::from_secs(3600)).unwrap();
    let later = now_ms() + 60_000;
    let onprem_client = as_cluster("onprem");
    let get = |client: reqwest::Client, ticket: Option<String>| {
        let url = url.clone();
        async move {
            let mut request = client.get(&url);
            if let Some(t) = ticket {
                request = request.header(atoll_api::ticket::HEADER, t);
            }
            let response = request.send().await.expect("answer");
            (response.status().as_u16(), response.text().await.unwrap_or_default())
        }
    };
    let (status, body) = get(onprem_client.clone(), Some(ticket(TicketOp::Pull, "onprem", later, &ca))).await;
    assert_eq!(status, 200, "a valid ticket: {body}");
    for (what, client, token, says) in [
        ("no ticket", onprem_client.clone(), None, "no ticket"),
        ("forged", onprem_client.clone(), Some(ticket(TicketOp::Pull, "onprem", later, &forger)), "signature"),
        ("expired", onprem_client.clone(), Some(ticket(TicketOp::Pull, "onprem", now_ms() - 60_000, &ca)), "expired"),
        (
            "another cluster's",
            as_cluster("gcp"),
            Some(ticket(TicketOp::Pull, "onprem", later, &ca)),
            "not spiffe://atoll/cluster/gcp/node/9",
        ),
        (
            "a push ticket to read",
            onprem_client.clone(),
            Some(ticket(TicketOp::Push, "onprem", later, &ca)),
            "push ticket",
        ),
        ("garbage", onprem_client.clone(), Some("not-a-ticket".into()), "malformed"),
    ] {
        let (status, body) = get(client, token).await;
        assert_eq!(status, 403, "{what}: {body}");
        assert!(body.contains(says), "{what}: {body}");
    }
    // The relay store answers relay tickets only.
    let relay_url = format!("https://{}/v1/blobs/{}", mesh.addr(), onprem_output.digest);
    let gcp_tls = mesh.replica_tls("gcp", 1);
    let to_gateway = https_client(gcp_tls.client_config(ServerPolicy::Gateway).unwrap());
    let relay_ticket = |op: TicketOp, signer: &CertificateAuthority| {
        signer
            .sign_ticket(&Ticket {
                op,
                digest: onprem_output.digest.clone(),
                from: "onprem".parse().unwrap(),
                to: "gcp".parse().unwrap(),
                job: "x.y".into(),
                expires_ms: later,
            })
            .unwrap()
    };
    for (token, expected) in [
        (relay_ticket(TicketOp::RelayGet, &ca), 200),
        (relay_ticket(TicketOp::RelayGet, &forger), 403),
        (relay_ticket(TicketOp::RelayPut, &ca), 403),
    ] {
        let response =
            to_gateway.get(&relay_url).header(atoll_api::ticket::HEADER, token).send().await.expect("answer");
        assert_eq!(response.status().as_u16(), expected);
    }

    phase("a report whose output digest is malformed is refused, naming it; the job is unchanged");
    let yaml = "version: 1\njobs:\n  - {name: slow, type: command, command: 'sleep 30', cluster: {selector: [gcp]}, timeout: 60}\n";
    let submitted = submit(&mesh.gateway, yaml).await;
    let slow = id_of(&submitted, "slow");
    wait_state(&mesh.gateway, &slow, Duration::from_secs(30), |s| s == JobState::Running).await;
    let term = mesh.cluster("gcp").await.unwrap().term;
    let forged = atoll_api::jobs::ReportBatch {
        term,
        reports: vec![atoll_api::jobs::Report {
            job: slow.clone().into(),
            attempt: 1,
            state: atoll_api::jobs::ReportedState::Finished,
            exit_code: Some(0),
            message: None,
            output: Some(atoll_api::jobs::OutputInfo { digest: "sha256:not-hex".into(), size: 1 }),
        }],
    };
    let results = mesh.as_replica("gcp", 1).report("gcp", &forged).await.expect("report batch");
    assert_eq!(results.results[0].outcome, atoll_api::jobs::ReportOutcome::Refused);
    let reason = results.results[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("output") && reason.contains("sha256:not-hex"), "{reason}");
    assert_eq!(mesh.gateway.job(&slow).await.unwrap().job.state, JobState::Running);
    mesh.gateway.cancel(&slow).await.expect("cancel");

    phase("a parent that finishes while its child's cluster is dead stays finished");
    let yaml = spec(&[producer("parent", "aws", 1, ""), consumer("child", "onprem", "parent")]);
    mesh.t.mesh.kill("onprem", 1).expect("kill onprem");
    let submitted = submit(&mesh.gateway, &yaml).await;
    let parent = wait_final(&mesh.gateway, &id_of(&submitted, "parent")).await;
    assert_eq!(parent.job.state, JobState::Finished);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let parent = mesh.gateway.job(&id_of(&submitted, "parent")).await.unwrap();
    assert_eq!(parent.job.state, JobState::Finished, "{:?}", parent.job);
    let child = mesh.gateway.job(&id_of(&submitted, "child")).await.unwrap();
    assert!(!child.job.state.is_final(), "the child waits for its cluster: {:?}", child.job);
}

/// Wait until `cluster`'s store holds at least `n` chunks of `digest` (a transfer under way).
async fn wait_chunks(mesh: &GatewayMesh, cluster: &str, digest: &str, n: usize) {
    let dir = chunk_dir(mesh, cluster, digest);
    eventually(Duration::from_secs(60), &format!("{n} chunks of {digest} in {cluster}"), || async {
        let count = std::fs::read_dir(&dir).map(|d| d.flatten().filter(|e| e.file_name() != "manifest").count());
        (count.unwrap_or(0) >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_cut_mid_transfer_resumes_when_the_cut_heals_and_falls_back_to_the_relay_when_it_does_not_for_good() {
    // onprem fetches at 8 MiB/s: a 48 MiB output takes about 6 s, time to cut it.
    let mut mesh = start(&[("onprem", 8 * MIB)]).await;
    mesh.wait_cell("onprem", "aws", atoll_api::gateway::LinkState::Reachable, Duration::from_secs(30)).await;
    let aws = vec![mesh.t.mesh.layout.replica("aws", 1).unwrap().addr()];

    phase("a short cut (aws drops onprem's requests for 1 s) mid-pull: the pull resumes on the same path");
    let yaml = spec(&[producer("first", "aws", 48, ""), consumer("first-child", "onprem", "first")]);
    let submitted = submit(&mesh.gateway, &yaml).await;
    let parent = wait_final(&mesh.gateway, &id_of(&submitted, "first")).await;
    let digest = parent.job.output.clone().expect("output").digest;
    wait_chunks(&mesh, "onprem", &digest, 2).await;
    annotate_retrying(&mesh.t.client, &aws, CUT, "onprem").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    mesh.t.client.delete_annotation(&aws[0], CUT).await.expect("heal the cut");
    let child_id = id_of(&submitted, "first-child");
    let child = wait_state(&mesh.gateway, &child_id, Duration::from_secs(120), JobState::is_final).await;
    assert_eq!(child.job.state, JobState::Finished, "{:?}", child.job);
    assert_eq!(route(&mesh, &child_id, "first").await, Some(Route::Pull), "no fallback for a short cut");
    let taken = routes_taken(&mesh, &child_id, "first").await;
    assert_eq!(taken.iter().map(|r| r.route).collect::<Vec<_>>(), [Route::Pull], "{taken:?}");
    let line = received_line(&mesh, "onprem", &child_id);
    let size = parent.job.output.unwrap().size;
    assert!(line.contains(&format!("bytes={size}")) && line.contains("relayed_from_chunk=None"), "{line}");
    mesh.wait_cell("onprem", "aws", atoll_api::gateway::LinkState::Reachable, Duration::from_secs(30)).await;

    phase("a lasting cut mid-pull: the edge falls back to the relay and the fetch goes on from its chunk");
    let yaml = spec(&[producer("second", "aws", 48, ""), consumer("second-child", "onprem", "second")]);
    let submitted = submit(&mesh.gateway, &yaml).await;
    let parent = wait_final(&mesh.gateway, &id_of(&submitted, "second")).await;
    let output = parent.job.output.clone().expect("output");
    wait_chunks(&mesh, "onprem", &output.digest, 2).await;
    annotate_retrying(&mesh.t.client, &aws, CUT, "onprem").await;
    let child_id = id_of(&submitted, "second-child");
    let child = wait_state(&mesh.gateway, &child_id, Duration::from_secs(120), JobState::is_final).await;
    assert_eq!(child.job.state, JobState::Finished, "{:?}", child.job);
    assert_eq!(route(&mesh, &child_id, "second").await, Some(Route::Relay), "the edge fell back");
    let taken = routes_taken(&mesh, &child_id, "second").await;
    assert_eq!(taken.iter().map(|r| r.route).collect::<Vec<_>>(), [Route::Pull, Route::Relay], "{taken:?}");
    assert!(taken[0].reason.is_none() && taken[1].reason.as_deref().is_some_and(|r| r.contains("pulling from aws")));
    assert!(taken[0].at_ms <= taken[1].at_ms && taken.iter().all(|r| r.from_cluster == "aws"), "{taken:?}");
    let shown = String::from_utf8_lossy(&mesh.cli(&["job", &child_id]).stdout).to_string();
    let lines: Vec<&str> = shown.lines().filter(|l| l.trim_start().starts_with("input from second on aws:")).collect();
    assert!(
        lines.len() == 2
            && lines[0].contains(": pull at ")
            && lines[1].contains(": relay at ")
            && lines[1].contains("(pulling from aws"),
        "atoll job shows the routes in order: {shown}"
    );
    let line = received_line(&mesh, "onprem", &child_id);
    // Every byte crossed once: what came directly was not fetched again from the relay.
    assert!(line.contains(&format!("bytes={}", output.size)), "{line}");
    let from: usize = line
        .split("relayed_from_chunk=Some(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not relayed: {line}"));
    assert!(from >= 2, "the relay went on from chunk {from}: {line}");
    assert!(mesh.t.log("onprem", 1).contains("falling back to the relay"));
    // The failure fed the matrix (and the cut keeps the probes failing too).
    mesh.wait_cell("onprem", "aws", atoll_api::gateway::LinkState::Unreachable, Duration::from_secs(30)).await;
    mesh.t.client.delete_annotation(&aws[0], CUT).await.expect("heal the cut");

    phase("healed and the gateway restarted: the edge that fell back stays relayed (its fallback is recorded)");
    mesh.wait_cell("onprem", "aws", atoll_api::gateway::LinkState::Reachable, Duration::from_secs(30)).await;
    mesh.t.mesh.kill_gateway(0);
    mesh.t.mesh.spawn_gateway(0).expect("restart the gateway");
    mesh.t.mesh.wait_for_gateway(0, Duration::from_secs(30)).await.expect("gateway back");
    mesh.wait_cell("onprem", "aws", atoll_api::gateway::LinkState::Reachable, Duration::from_secs(30)).await;
    assert_eq!(route(&mesh, &child_id, "second").await, Some(Route::Relay), "the fallback survived the restart");
}

/// A 48 MiB output made on onprem and relayed to a child on gcp, `paced` moving it at 8 MiB/s:
/// the mesh, the child's id and the output, once the parent finished.
async fn relayed_output(paced: &str) -> (GatewayMesh, String, atoll_api::jobs::OutputInfo) {
    let mesh = start(&[(paced, 8 * MIB)]).await;
    let yaml = spec(&[producer("parent", "onprem", 48, ""), consumer("child", "gcp", "parent")]);
    let submitted = submit(&mesh.gateway, &yaml).await;
    let parent = wait_final(&mesh.gateway, &id_of(&submitted, "parent")).await;
    (mesh, id_of(&submitted, "child"), parent.job.output.clone().expect("output"))
}

/// SIGKILL the gateway in the middle of `what`, start it again a second later, and wait for the
/// child to finish (it checks every byte it got).
async fn kill_the_gateway_during(mesh: &mut GatewayMesh, what: &str, child: &str) {
    phase(&format!("SIGKILL the gateway mid-{what}, start it again a second later"));
    mesh.t.mesh.kill_gateway(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    mesh.t.mesh.spawn_gateway(0).expect("restart the gateway");
    mesh.t.mesh.wait_for_gateway(0, Duration::from_secs(30)).await.expect("gateway back");
    let done = wait_state(&mesh.gateway, child, Duration::from_secs(120), JobState::is_final).await;
    assert_eq!(done.job.state, JobState::Finished, "the child checked every byte: {:?}", done.job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_download_resumes_after_the_gateway_was_killed_mid_transfer() {
    // gcp fetches at 8 MiB/s; the relay upload from onprem is not slowed.
    let (mut mesh, child, output) = relayed_output("gcp").await;
    wait_chunks(&mesh, "gcp", &output.digest, 2).await;
    kill_the_gateway_during(&mut mesh, "download", &child).await;
    let line = received_line(&mesh, "gcp", &child);
    assert!(line.contains(&format!("bytes={}", output.size)), "no chunk fetched twice: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_upload_goes_on_after_the_gateway_was_killed_mid_transfer() {
    // onprem sends at 8 MiB/s: its upload to the relay takes about 6 s.
    let (mut mesh, child, output) = relayed_output("onprem").await;
    let hex = output.digest.strip_prefix("sha256:").expect("digest").to_string();
    let relay = mesh.t.mesh.dir.gateway_dir().join("blobs").join("sha256").join(&hex);
    // Whole chunks only (`00000001`), not one still being written (a temporary name).
    let whole =
        |name: &std::ffi::OsStr| name.to_str().is_some_and(|n| n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()));
    eventually(Duration::from_secs(60), "2 whole chunks of the output in the relay store", || async {
        let count = std::fs::read_dir(&relay).map(|d| d.flatten().filter(|e| whole(&e.file_name())).count());
        (count.unwrap_or(0) >= 2).then_some(())
    })
    .await;
    kill_the_gateway_during(&mut mesh, "upload", &child).await;
    // The restarted gateway found the upload's place in the chunks it had stored.
    let log = std::fs::read_to_string(mesh.t.mesh.gateway_log(0).expect("gateway log")).unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.contains("an upload goes on after the chunks stored before") && l.contains(&hex))
        .unwrap_or_else(|| panic!("the restarted gateway did not go on with the upload of {hex}"));
    let chunks: usize = line
        .split("chunks=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no chunk count in {line}"));
    assert!(chunks >= 2, "it went on after at least the 2 chunks seen before the kill: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_survives_the_loss_of_the_leader_that_stored_it() {
    // Two clusters of three replicas, local stores: an output is recorded only once a majority
    // of its cluster's replicas hold it.
    // Retention of 2 s: every surviving replica's copy goes once the children are done.
    let mut mesh = GatewayMesh::start_with(Engine::Sqlite, 2, 3, test_gateway_timing(), false, |layout| {
        layout.gateway.as_mut().expect("gateway").retention = Some((2, 500));
    })
    .await;
    let leader = mesh.t.leader("aws").await;
    let yaml = spec(&[
        producer("parent", "aws", 12, ""),
        "  - {name: gate, type: command, command: 'sleep 8', cluster: {selector: [gcp]}, timeout: 60}\n".to_string(),
        gated_consumer("local-child", "aws"),
        gated_consumer("remote-child", "gcp"),
    ]);
    let submitted = submit(&mesh.gateway, &yaml).await;
    let parent = wait_final(&mesh.gateway, &id_of(&submitted, "parent")).await;
    assert_eq!(parent.job.state, JobState::Finished);

    phase("SIGKILL aws's leader, which ran the parent and stored its output, before the children start");
    mesh.t.mesh.kill("aws", leader.leader).expect("kill the leader");
    let digest = parent.job.output.clone().expect("output").digest;
    let hex = digest.strip_prefix("sha256:").unwrap();
    let holders: Vec<u64> = mesh
        .t
        .ids("aws")
        .into_iter()
        .filter(|id| *id != leader.leader)
        .filter(|id| mesh.t.mesh.dir.data_dir("aws", *id).join("blobs/sha256").join(hex).join("manifest").exists())
        .collect();
    assert!(!holders.is_empty(), "at least one surviving replica held a copy when the parent was reported");

    for child in ["local-child", "remote-child"] {
        let id = id_of(&submitted, child);
        let done = wait_state(&mesh.gateway, &id, Duration::from_secs(120), JobState::is_final).await;
        assert_eq!(done.job.state, JobState::Finished, "{child} got its input from the new leader: {:?}", done.job);
    }
    assert_eq!(route(&mesh, &id_of(&submitted, "local-child"), "parent").await, Some(Route::Local));

    phase("the children are done: retention removes the copy of every replica still up, followers too");
    let copies: Vec<PathBuf> = mesh
        .t
        .ids("aws")
        .into_iter()
        .filter(|id| *id != leader.leader)
        .map(|id| mesh.t.mesh.dir.data_dir("aws", id).join("blobs/sha256").join(hex))
        .chain(
            mesh.t.ids("gcp").into_iter().map(|id| mesh.t.mesh.dir.data_dir("gcp", id).join("blobs/sha256").join(hex)),
        )
        .collect();
    wait_gone(copies.iter().map(|p| (p.display().to_string(), p.clone())).collect()).await;
}

/// Wait (at most 30 s) until none of `paths` exists; fail naming those left.
async fn wait_gone(paths: Vec<(String, PathBuf)>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<&str> = paths.iter().filter(|(_, path)| path.exists()).map(|(what, _)| what.as_str()).collect();
        if left.is_empty() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "still there after 30 s: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_source_is_fetched_by_every_cluster_that_runs_a_job_of_it() {
    let mesh = start(&[]).await;
    let dir = mesh.t.dir.path().join("project");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("target")).unwrap();
    std::fs::write(dir.join(".gitignore"), "target/\n*.secret\n").unwrap();
    std::fs::write(dir.join("src/app.txt"), "hello from the source\n").unwrap();
    std::fs::write(dir.join("token.secret"), "hush").unwrap();
    std::fs::write(dir.join("target/big.bin"), vec![0u8; 1 << 20]).unwrap();

    phase("atoll push DIR: archived without what .gitignore excludes, uploaded once, registered");
    let pushed = mesh.push(&dir);
    let digest = pushed["digest"].as_str().expect("digest").to_string();
    assert!(pushed["uploaded"].as_u64() > Some(0), "{pushed}");
    assert!(pushed["size"].as_u64() < Some(1 << 20), "target/ was left out: {pushed}");
    let again = mesh.push(&dir);
    assert_eq!((again["digest"].as_str(), again["uploaded"].as_u64()), (Some(digest.as_str()), Some(0)), "nothing new");

    phase("a pipeline naming the source: jobs on aws and onprem (which reaches no one but aws) find its files");
    let check = "test \"$(cat \"$ATOLL_SOURCE/src/app.txt\")\" = \"hello from the source\" && test ! -e \"$ATOLL_SOURCE/token.secret\" && test ! -e \"$ATOLL_SOURCE/target\"";
    let yaml = format!(
        "version: 1\nsource: {digest}\njobs:\n  - {{name: on-aws, type: command, command: '{check}', cluster: {{selector: [aws]}}, timeout: 60}}\n  - {{name: on-onprem, type: command, command: '{check}', cluster: {{selector: [onprem]}}, timeout: 60}}\n"
    );
    let submitted = submit(&mesh.gateway, &yaml).await;
    for job in ["on-aws", "on-onprem"] {
        let done = wait_final(&mesh.gateway, &id_of(&submitted, job)).await;
        assert_eq!(done.job.state, JobState::Finished, "{job}: {:?}", done.job);
    }
    let hex = digest.strip_prefix("sha256:").unwrap();
    for cluster in ["aws", "onprem"] {
        assert!(chunk_dir(&mesh, cluster, &digest).join("manifest").exists(), "{cluster} cached the source {hex}");
    }

    phase("a source nobody pushed is refused at submit, naming where");
    let unknown = format!("sha256:{}", "0".repeat(64));
    let yaml = format!("version: 1\njobs:\n  - {{name: j, type: command, command: 'true', source: {unknown}}}\n");
    let spec = atoll_api::spec::parse_document(&yaml).expect("spec");
    let err =
        mesh.gateway.submit(&atoll_api::jobs::SubmitRequest { spec, files: Default::default() }).await.unwrap_err();
    assert!(err.to_string().contains("jobs[0].source") && err.to_string().contains("not a pushed source"), "{err}");

    phase("the store serves a source only to replicas and readers, and nothing else without a ticket");
    let anonymous = mesh.anonymous(None);
    assert!(anonymous.get::<serde_json::Value>(&format!("/v1/sources/{digest}")).await.is_err());
    let replica = mesh.as_replica("gcp", 1);
    let info: serde_json::Value = replica.get(&format!("/v1/sources/{digest}")).await.expect("a replica reads it");
    assert_eq!(info["digest"], digest.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_and_work_directories_are_kept_while_a_child_needs_them_and_go_after_the_retention() {
    // Retention of 2 s, passes every 500 ms.
    let mesh = GatewayMesh::start_with(Engine::Sqlite, 3, 1, test_gateway_timing(), true, |layout| {
        layout.gateway.as_mut().expect("gateway").retention = Some((2, 500));
    })
    .await;
    let dir = mesh.t.dir.path().join("project");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.txt"), "a source\n").unwrap();
    let source = mesh.push(&dir)["digest"].as_str().expect("digest").to_string();
    let yaml = spec(&[
        producer("parent", "onprem", 1, ""),
        "  - {name: gate, type: command, command: 'sleep 7', cluster: {selector: [aws]}, timeout: 60}\n".to_string(),
        gated_consumer("child", "gcp"),
    ])
    .replace("version: 1\n", &format!("version: 1\nsource: {source}\n"));
    let submitted = submit(&mesh.gateway, &yaml).await;
    let parent = wait_final(&mesh.gateway, &id_of(&submitted, "parent")).await;
    assert_eq!(parent.job.state, JobState::Finished);
    let digest = parent.job.output.expect("output").digest;
    let hex = digest.strip_prefix("sha256:").unwrap().to_string();
    let parent_store = chunk_dir(&mesh, "onprem", &digest);
    let child_store = chunk_dir(&mesh, "gcp", &digest);
    let relay_store = mesh.t.mesh.dir.gateway_dir().join("blobs/sha256").join(&hex);
    let work = |cluster: &str, job: &str| {
        mesh.t.mesh.dir.data_dir(cluster, 1).join("work").join(id_of(&submitted, job)).join("1")
    };
    assert!(parent_store.join("manifest").exists() && work("onprem", "parent").exists());

    phase("the child waits for its other parent longer than the retention: the output stays");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(mesh.gateway.job(&id_of(&submitted, "child")).await.unwrap().job.state, JobState::Waiting);
    assert!(parent_store.join("manifest").exists(), "removed while a child still needed it");

    phase("the child read it (relayed) and ended: every copy and the work directories go");
    let child = wait_final(&mesh.gateway, &id_of(&submitted, "child")).await;
    assert_eq!(child.job.state, JobState::Finished, "{:?}", child.job.reason);
    let source_hex = source.strip_prefix("sha256:").unwrap();
    let gone = [
        ("the source in the gateway's store", mesh.t.mesh.dir.gateway_dir().join("blobs/sha256").join(source_hex)),
        ("the source in onprem's store", chunk_dir(&mesh, "onprem", &source)),
        ("the source in aws's store", chunk_dir(&mesh, "aws", &source)),
        ("the source in gcp's store", chunk_dir(&mesh, "gcp", &source)),
        ("onprem's store", parent_store),
        ("gcp's store", child_store),
        ("the relay store", relay_store),
        ("the parent's work directory", work("onprem", "parent")),
        ("the gate's work directory", work("aws", "gate")),
        ("the child's work directory", work("gcp", "child")),
    ];
    wait_gone(gone.into_iter().map(|(what, path)| (what.to_string(), path)).collect()).await;
    let log = std::fs::read_to_string(mesh.t.mesh.gateway_log(0).expect("gateway log")).unwrap_or_default();
    assert!(log.contains("removed from the relay store"), "the gateway logged no removal");

    phase("asking about something that is not a digest, about too many, or for another cluster is refused, saying so");
    let replica = mesh.as_replica("gcp", 1);
    let bad = atoll_api::jobs::ReleaseRequest { digests: vec![digest.clone(), "sha256:nope".into()] };
    let err = replica.released("gcp", &bad).await.unwrap_err().to_string();
    assert!(err.contains("digests[1]"), "{err}");
    let many = atoll_api::jobs::ReleaseRequest { digests: vec![digest.clone(); 1_001] };
    let err = replica.released("gcp", &many).await.unwrap_err().to_string();
    assert!(err.contains("1001 given, at most 1000"), "{err}");
    let err = replica.released("aws", &atoll_api::jobs::ReleaseRequest { digests: vec![] }).await.unwrap_err();
    assert!(err.to_string().contains("may not act for cluster aws"), "{err}");

    phase("the source went with its blob: pipelines may no longer name it");
    let yaml = format!("version: 1\nsource: {source}\njobs:\n  - {{name: j, type: command, command: 'true'}}\n");
    let spec = atoll_api::spec::parse_document(&yaml).expect("spec");
    let err =
        mesh.gateway.submit(&atoll_api::jobs::SubmitRequest { spec, files: Default::default() }).await.unwrap_err();
    assert!(err.to_string().contains("not a pushed source"), "{err}");
}
