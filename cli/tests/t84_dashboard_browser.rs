//! The dashboard in a real headless browser: a mesh of aws, gcp and onprem (aws cannot reach
//! onprem; onprem reaches aws) with its gateway's dashboard on, a read-scope token, then
//! `e2e/dashboard.mjs` drives Debian's chromium through playwright-core: sign-in (a wrong token
//! refused with a message), the session cookie's flags, the clusters page and its label filter,
//! the matrix heatmap's colours for aws->onprem and onprem->aws, a cell's details by keyboard,
//! the gateways page, sign-out. Screenshots are kept in `target/dashboard-screenshots/`.
//! Needs node, chromium and `e2e/node_modules` (scripts/test installs them); without them the
//! test fails, saying so.

mod common;

use std::path::Path;
use std::time::Duration;

use atoll_api::gateway::LinkState;
use atoll_api::gateway::Scope;
use atoll_api::gateway::UserTokenRequest;
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
    let replica = m.t.mesh.layout.gateway.as_ref().unwrap().first().clone();
    let url = format!("https://{}", replica.dashboard_addr().expect("the dashboard's address"));
    let shots = root.join("target/dashboard-screenshots");

    phase(&format!("chromium against {url}"));
    let mut node = std::process::Command::new("node")
        .arg(e2e.join("dashboard.mjs"))
        .env("ATOLL_DASHBOARD", &url)
        .env("ATOLL_TOKEN_FILE", &token_file)
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
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
                "cut gcp->aws" => {
                    let aws = m.t.addr("aws", 1);
                    m.t.client.annotate(&aws, "atoll.io/refuse-inbound-from", "gcp").await.expect("cutting gcp->aws");
                }
                other => panic!("the browser test asked for {other:?}"),
            }
            use std::io::Write;
            writeln!(to_node, "DONE {action}").unwrap();
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
