//! `/metrics` of both daemons in a running mesh, on SQLite and PostgreSQL: `promtool check
//! metrics` finds nothing to complain about in the Prometheus text (0.0.4) they serve by default
//! and when asked for it; OpenMetrics is served when asked for; the gateway counts the requests,
//! jobs and matrix of the mesh.

mod common;

use std::process::Stdio;
use std::time::Duration;

use atoll_api::gateway::LinkState;
use common::Engine;
use common::GatewayMesh;
use common::eventually;
use common::id_of;
use common::phase;
use common::submit;
use common::test_gateway_timing;
use common::wait_final;
use tokio::io::AsyncWriteExt;

const PIPELINE: &str = r#"
version: 1
jobs:
  - name: hello
    type: command
    command: echo hello
    cluster: {selector: [aws]}
    timeout: 60
"#;

/// `GET http://OPS/metrics` with `accept` (none: no Accept header): content type and body.
async fn scrape(ops: &str, accept: Option<&str>) -> (String, String) {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().expect("client");
    let mut request = client.get(format!("http://{ops}/metrics"));
    if let Some(accept) = accept {
        request = request.header(reqwest::header::ACCEPT, accept);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("scraping {ops}: {e}"));
    assert!(response.status().is_success(), "scraping {ops}: {}", response.status());
    let content_type =
        response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (content_type, response.text().await.expect("the metrics"))
}

/// `promtool check metrics` over `text`, which must pass without a remark. A missing promtool
/// fails the test: it is never skipped.
async fn promtool_check(what: &str, text: &str) {
    let spawned = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => panic!(
            "promtool is needed by this test and could not run ({e}): apt-get install -y prometheus (it provides /usr/bin/promtool)"
        ),
    };
    let mut stdin = child.stdin.take().expect("promtool's stdin");
    stdin.write_all(text.as_bytes()).await.expect("writing to promtool");
    drop(stdin);
    let out = child.wait_with_output().await.expect("promtool");
    let remarks = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && remarks.trim().is_empty(), "promtool check metrics on {what}: {remarks}");
}

/// The value of the sample `series` (name and labels exactly as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn metrics_are_clean_and_counted(engine: Engine) {
    let mesh = GatewayMesh::start(engine, 2, 1, test_gateway_timing(), false).await;
    mesh.wait_cell("aws", "gcp", LinkState::Reachable, Duration::from_secs(30)).await;
    mesh.wait_cell("gcp", "aws", LinkState::Reachable, Duration::from_secs(30)).await;
    let gateway_ops = mesh.t.mesh.layout.gateway.as_ref().expect("gateway").ops_addr();
    let replica_ops = mesh.t.ops_addr("aws", 1);

    phase("run a job, so that the gateway has requests, a job end and a matrix to count");
    let submitted = submit(&mesh.gateway, PIPELINE).await;
    let done = wait_final(&mesh.gateway, &id_of(&submitted, "hello")).await;
    assert_eq!(done.job.state, atoll_api::jobs::JobState::Finished, "{done:?}");

    phase("both daemons: promtool finds nothing in the 0.0.4 text, asked for or by default");
    for (what, ops) in [("the gateway", &gateway_ops), ("a replica", &replica_ops)] {
        for accept in [None, Some("text/plain;version=0.0.4"), Some("*/*")] {
            let (content_type, text) = scrape(ops, accept).await;
            promtool_check(&format!("{what}, Accept {accept:?}"), &text).await;
            assert!(content_type.starts_with("text/plain; version=0.0.4"), "{what}, Accept {accept:?}: {content_type}");
        }
        let (content_type, text) = scrape(ops, Some("application/openmetrics-text;version=1.0.0")).await;
        assert!(content_type.starts_with("application/openmetrics-text"), "{what}: {content_type}");
        assert!(text.ends_with("# EOF\n"), "{what}: OpenMetrics ends with # EOF");
    }

    phase("the gateway counts requests by route template, the job's end, the matrix and unfinished jobs");
    let text = eventually(Duration::from_secs(10), "the job's end counted", || async {
        let (_, text) = scrape(&gateway_ops, None).await;
        sample(&text, "atoll_gateway_job_ends_total{state=\"finished\"}").filter(|n| *n >= 1.0).map(|_| text)
    })
    .await;
    assert!(sample(&text, "atoll_gateway_matrix_rtt_seconds_count").is_some_and(|n| n >= 1.0), "{text}");
    let requests = "atoll_gateway_http_requests_total{method=\"POST\",route=\"/v1/pipelines\",status=\"200\"}";
    assert_eq!(sample(&text, requests), Some(1.0), "{text}");
    let polls = "atoll_gateway_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/jobs/{id}\"}";
    assert!(sample(&text, polls).is_some_and(|n| n >= 1.0), "{text}");
    assert!(sample(&text, "atoll_gateway_job_duration_seconds_count{state=\"finished\"}") == Some(1.0), "{text}");
    assert_eq!(sample(&text, "atoll_gateway_jobs{state=\"running\"}"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "atoll_gateway_jobs{state=\"queued\"}"), Some(0.0), "{text}");
    // Two clusters: two directed cells, each in some state (every state listed, zeros too).
    let cells: Vec<f64> = ["reachable", "suspect", "unreachable", "unknown"]
        .iter()
        .map(|state| sample(&text, &format!("atoll_gateway_matrix_cells{{state=\"{state}\"}}")).expect("every state"))
        .collect();
    assert_eq!(cells.iter().sum::<f64>(), 2.0, "{text}");
    assert!(text.contains("# TYPE atoll_gateway_relay_bytes_total counter"), "{text}");
    assert!(text.contains("# TYPE atoll_gateway_transfer_routes_total counter"), "{text}");

    phase("a replica counts the input it pulled from another cluster and the run that used it");
    let edge = "version: 1\njobs:\n  - name: make\n    type: command\n    command: echo made > \"$ATOLL_OUTPUT/f\"\n    cluster: {selector: [aws]}\n    timeout: 60\n  - name: use\n    type: command\n    command: cat \"$ATOLL_INPUTS/make/f\"\n    cluster: {selector: [gcp]}\n    depends_on: [make]\n    timeout: 60\n";
    let submitted = submit(&mesh.gateway, edge).await;
    let used = wait_final(&mesh.gateway, &id_of(&submitted, "use")).await;
    assert_eq!(used.job.state, atoll_api::jobs::JobState::Finished, "{used:?}");
    let (_, text) = scrape(&mesh.t.ops_addr("gcp", 1), None).await;
    promtool_check("a replica that received an input", &text).await;
    assert_eq!(sample(&text, "atoll_transfer_inputs_total{route=\"pull\"}"), Some(1.0), "{text}");
    assert!(sample(&text, "atoll_transfer_received_bytes_total{route=\"pull\"}").is_some_and(|n| n > 0.0), "{text}");
    assert_eq!(sample(&text, "atoll_transfer_duration_seconds_count{route=\"pull\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "atoll_job_runs_ended_total{state=\"finished\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "atoll_job_runs_running"), Some(0.0), "{text}");
}

on_both_engines!(
    metrics_are_clean_and_counted,
    metrics_are_clean_and_counted_sqlite,
    metrics_are_clean_and_counted_postgres
);
