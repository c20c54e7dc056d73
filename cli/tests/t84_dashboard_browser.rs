//! The dashboard in a real headless browser: a mesh of aws, gcp and onprem (aws cannot reach
//! onprem; onprem reaches aws) with its gateway's dashboard on, a read-scope token, then
//! `e2e/dashboard.mjs` drives Debian's chromium through playwright-core: sign-in (a wrong token
//! refused with a message), the session cookie's flags, the clusters page and its label filter,
//! the matrix heatmap's colours for aws->onprem and onprem->aws, a cell's details by keyboard,
//! the gateways page, sign-out; then as an admin: enabling a cluster, the example pipeline's DAG
//! turning finished live with its relayed edge marked, a job's log, a running job's log followed
//! live and the job cancelled from its page; and a read-scope user's cancel and a form without
//! its CSRF value refused with a message. Prints how long after the gateway knew each job's new
//! state the pipeline page showed it (a figure, not a bound). Screenshots are kept in
//! `target/dashboard-screenshots/`.
//! Needs node, chromium and `e2e/node_modules` (scripts/test installs them); without them the
//! test fails, saying so. It runs apart from the tests that start containers (nextest group
//! `host-network`): chromium drops its requests in flight when a container engine changes the
//! host's addresses.

mod common;

use std::path::Path;
use std::time::Duration;

use atoll_api::gateway::LinkState;
use atoll_api::gateway::Scope;
use atoll_api::gateway::UserTokenRequest;
use atoll_api::jobs::SubmitRequest;
use common::Engine;
use common::GatewayMesh;
use common::eventually;
use common::phase;
use common::test_gateway_timing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let e2e = root.join("e2e");
    let chromium = std::env::var("ATOLL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing: scripts/test installs Debian's chromium");
    assert!(
        e2e.join("node_modules/playwright-core").exists(),
        "e2e/node_modules/playwright-core is missing: scripts/test runs `npm ci` in e2e/"
    );

    phase("a mesh of aws, gcp, onprem with the dev cuts and the dashboard on");
    let mut m = GatewayMesh::start_with(Engine::Sqlite, 3, 1, test_gateway_timing(), true, |layout| {
        *layout = layout.clone().with_dashboard().expect("a dashboard port");
    })
    .await;
    let matrix_ready =
        eventually(Duration::from_secs(30), "the matrix shows aws->onprem cut, onprem->aws open", || async {
            let matrix = m.gateway.matrix().await.ok()?;
            let state = |from: &str, to: &str| {
                matrix.cells.iter().find(|c| c.from.as_str() == from && c.to.as_str() == to).map(|c| c.state)
            };
            (state("aws", "onprem") == Some(LinkState::Unreachable)
                && state("onprem", "aws") == Some(LinkState::Reachable))
            .then_some(())
        });
    matrix_ready.await;
    let token = m
        .gateway
        .user_token(&UserTokenRequest { name: "browser".into(), scopes: vec![Scope::Read], ttl_s: None })
        .await
        .expect("a read-scope token")
        .token;
    let token_file = m.t.dir.path().join("dashboard-token");
    std::fs::write(&token_file, &token).unwrap();
    let admin = m
        .gateway
        .user_token(&UserTokenRequest { name: "root".into(), scopes: vec![Scope::Admin], ttl_s: None })
        .await
        .expect("an admin token")
        .token;
    let admin_file = m.t.dir.path().join("admin-token");
    std::fs::write(&admin_file, &admin).unwrap();
    let replica = m.t.mesh.layout.gateway.as_ref().unwrap().first().clone();
    let url = format!("https://{}", replica.dashboard_addr().expect("the dashboard's address"));
    let shots = root.join("target/dashboard-screenshots");

    phase(&format!("chromium against {url}"));
    let mut node = std::process::Command::new("node")
        .arg(e2e.join("dashboard.mjs"))
        .env("ATOLL_DASHBOARD", &url)
        .env("ATOLL_TOKEN_FILE", &token_file)
        .env("ATOLL_ADMIN_TOKEN_FILE", &admin_file)
        .env("ATOLL_SCREENSHOTS", &shots)
        .env("ATOLL_CHROMIUM", &chromium)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node (scripts/test installs Node.js)");
    let mut to_node = node.stdin.take().unwrap();
    let from_node = node.stdout.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(from_node).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let epoch_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let mut stdout = String::new();
    let mut known = std::collections::BTreeMap::new();
    // When the gateway first answered each (job, state) of the example pipeline.
    let mut knew: Option<tokio::task::JoinHandle<std::collections::BTreeMap<String, i64>>> = None;
    let mut shown_jobs: Vec<(String, i64)> = Vec::new();
    // When the pipeline page was up: states the gateway knew before are not counted.
    let mut watching = i64::MAX;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, lines.recv()).await {
        eprintln!("{line}");
        stdout.push_str(&line);
        stdout.push('\n');
        if let Some(action) = line.strip_prefix("ACTION ") {
            match action {
                "disable gcp" => {
                    m.gateway.cluster_action("gcp", "disable").await.expect("disabling gcp");
                    known.insert("disable", epoch_ms());
                }
                "submit example" | "submit ticker" => {}
                "cut gcp->aws" => {
                    let aws = m.t.addr("aws", 1);
                    m.t.client.annotate(&aws, "atoll.io/refuse-inbound-from", "gcp").await.expect("cutting gcp->aws");
                }
                other => panic!("the browser test asked for {other:?}"),
            }
            let mut answer = String::new();
            match action {
                "submit example" => {
                    let spec = atoll_api::spec::parse_document(atoll::dev::EXAMPLE_PIPELINE).expect("the example");
                    let submitted = m
                        .gateway
                        .submit(&SubmitRequest { spec, files: Default::default() })
                        .await
                        .expect("submitting the example");
                    answer = submitted.pipeline.clone();
                    knew = Some(tokio::spawn(watch_states(m.gateway.clone(), submitted.pipeline, epoch_ms)));
                }
                "submit ticker" => {
                    let yaml = "version: 1\njobs:\n  - name: ticker\n    type: command\n    command: for i in $(seq 1 240); do echo tick $i; sleep 0.25; done\n    cluster:\n      selector: [aws]\n    timeout: 300\n";
                    let spec = atoll_api::spec::parse_document(yaml).expect("the ticker");
                    let submitted = m
                        .gateway
                        .submit(&SubmitRequest { spec, files: Default::default() })
                        .await
                        .expect("submitting the ticker");
                    answer = submitted.jobs[0].id.to_string();
                }
                _ => {}
            }
            use std::io::Write;
            writeln!(to_node, "DONE {action} {answer}").unwrap();
            to_node.flush().unwrap();
            if action == "cut gcp->aws" {
                // When the gateway knew it: its matrix says so.
                eventually(Duration::from_secs(20), "the gateway sees gcp->aws unreachable", || async {
                    let matrix = m.gateway.matrix().await.ok()?;
                    matrix
                        .cells
                        .iter()
                        .any(|c| {
                            c.from.as_str() == "gcp" && c.to.as_str() == "aws" && c.state == LinkState::Unreachable
                        })
                        .then_some(())
                })
                .await;
                known.insert("cut", epoch_ms());
            }
        }
        if let Some(at) = line.strip_prefix("SHOWN watching ") {
            watching = at.parse().unwrap();
            continue;
        }
        if let Some(rest) = line.strip_prefix("SHOWN job ") {
            let mut words = rest.split(' ');
            let (job, state, at) = (words.next().unwrap(), words.next().unwrap(), words.next().unwrap());
            shown_jobs.push((format!("{job} {state}"), at.parse().unwrap()));
            continue;
        }
        if let Some(rest) = line.strip_prefix("SHOWN ") {
            let (what, at) = rest.split_once(' ').unwrap();
            let shown: i64 = at.parse().unwrap();
            if let Some(knew) = known.get(what) {
                eprintln!(
                    "    {what}: in the browser {} ms after the gateway knew it (a figure, not a bound)",
                    shown - knew
                );
            }
        }
    }
    drop(to_node);
    if let Some(knew) = knew {
        let knew = knew.await.expect("the state watcher");
        // Each state the page showed that the gateway answered after the page was up: how long
        // after the gateway knew it the page showed it.
        let mut delays: Vec<i64> = shown_jobs
            .iter()
            .filter_map(|(key, shown)| knew.get(key).filter(|k| **k >= watching).map(|k| (shown - k).max(0)))
            .collect();
        delays.sort_unstable();
        if let (Some(first), Some(last)) = (delays.first(), delays.last()) {
            eprintln!(
                "    a job's new state on its pipeline page after the gateway knew it: median {} ms, min {first} ms, max {last} ms over {} states (a figure, not a bound)",
                delays[delays.len() / 2],
                delays.len()
            );
        } else {
            eprintln!("    no job changed state while the pipeline page was open: no figure this run");
        }
    }
    let output = node.wait_with_output().expect("node's end");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}\n(screenshots in {})",
        shots.display()
    );
    assert!(stdout.contains("dashboard in the browser: every check held"), "{stdout}");
    let _ = &mut m;
}

/// Poll the pipeline every 20 ms (at most 120 s, until every job ended): when the gateway first
/// answered each job in each state ("name state" -> ms since the epoch).
async fn watch_states(
    gateway: atoll_api::gateway_client::GatewayClient,
    pipeline: String,
    epoch_ms: impl Fn() -> i64,
) -> std::collections::BTreeMap<String, i64> {
    let mut seen = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < deadline {
        if let Ok(now) = gateway.pipeline(&pipeline).await {
            let at = epoch_ms();
            for job in &now.jobs {
                seen.entry(format!("{} {}", job.name, job.state.as_str())).or_insert(at);
            }
            if now.jobs.iter().all(|j| j.state.is_final()) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}
