//! Standard HTTP clients against real daemons: curl verifies the gateway and a replica by the
//! address it dialled with nothing but the mesh CA; every refusal of either API, the framework's
//! own included (a query or path that does not parse, a body over the limit or not JSON, a
//! method a route lacks), is the JSON envelope with its status; an HTTP/2 request refused before
//! its body was read still gets its answer, every time.
//!
//! These run on SQLite only: nothing here depends on the database engine.

mod common;

use std::path::Path;
use std::path::PathBuf;
use std::process::Output;

use atoll_api::ErrorCode;
use atoll_api::error::ErrorBody;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsFiles;
use atoll_api::tls::TlsIdentity;
use atoll_api::tls::TrustRoots;
use common::Engine;
use common::GatewayMesh;
use common::https_client;
use common::phase;
use common::test_gateway_timing;

/// A body over the 2 MiB limit of the JSON routes.
const OVER_LIMIT: usize = 3 * 1024 * 1024;

/// Run `curl ARGS`; a missing curl fails the test, it is never skipped.
async fn curl(args: &[&str]) -> Output {
    match tokio::process::Command::new("curl").args(args).output().await {
        Ok(out) => out,
        Err(e) => panic!("curl is needed by this test and could not run ({e}): apt-get install -y curl"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Paths {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn paths(mesh: &GatewayMesh) -> Paths {
    let certs = mesh.t.mesh.dir.certs();
    Paths { ca: certs.join("ca.pem"), cert: certs.join("admin.pem"), key: certs.join("admin-key.pem") }
}

fn s(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

async fn start() -> GatewayMesh {
    GatewayMesh::start(Engine::Sqlite, 1, 1, test_gateway_timing(), false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_verifies_the_gateway_and_a_replica_by_the_address_it_dialled() {
    let mesh = start().await;
    let p = paths(&mesh);

    phase("curl --cacert ca.pem reaches the gateway at its IP address: the certificate names it");
    let url = format!("https://{}/v1/ca", mesh.addr());
    let out = curl(&["--silent", "--show-error", "--fail", "--cacert", s(&p.ca), &url]).await;
    assert!(out.status.success(), "curl {url} failed ({}): {}", out.status, text(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the CA answer is JSON");
    assert!(answer["fingerprint"].as_str().is_some_and(|f| f.len() == 64), "{answer}");

    phase("and a replica (enrolled through the gateway) at its IP address, with an operator certificate");
    let url = format!("https://{}/v1/status", mesh.t.addr("aws", 1));
    let out = curl(&[
        "--silent",
        "--show-error",
        "--fail",
        "--cacert",
        s(&p.ca),
        "--cert",
        s(&p.cert),
        "--key",
        s(&p.key),
        &url,
    ])
    .await;
    assert!(out.status.success(), "curl {url} failed ({}): {}", out.status, text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the status is JSON");
    assert_eq!(status["cluster"], "aws", "{status}");

    phase("a name the certificate does not carry is still refused (curl checks names)");
    let url = format!("https://localhost.invalid:{}/v1/ca", mesh.addr().rsplit_once(':').expect("port").1);
    let resolve = format!("localhost.invalid:{}:127.0.0.1", mesh.addr().rsplit_once(':').expect("port").1);
    let out = curl(&["--silent", "--cacert", s(&p.ca), "--resolve", &resolve, &url]).await;
    assert_eq!(out.status.code(), Some(60), "curl accepted a name the certificate lacks: {}", text(&out.stderr));
}

/// A client of `mesh`'s gateway with the admin token, or of its replica with the operator
/// certificate.
struct Clients {
    gateway: reqwest::Client,
    token: String,
    replica: reqwest::Client,
}

fn clients(mesh: &GatewayMesh) -> Clients {
    let p = paths(mesh);
    let trust = TrustRoots::load(&p.ca).expect("CA");
    let gateway = https_client(trust.anonymous_client_config(ServerPolicy::Gateway).expect("client config"));
    let operator = TlsIdentity::load(&TlsFiles { ca: p.ca.clone(), cert: p.cert.clone(), key: p.key.clone() })
        .expect("operator certificate");
    let replica = https_client(operator.client_config(ServerPolicy::AnyAtoll).expect("client config"));
    let token = std::fs::read_to_string(mesh.t.mesh.dir.admin_token()).expect("admin token").trim().to_string();
    Clients { gateway, token, replica }
}

/// Send `request`; the answer must be the envelope with `code` and its status.
async fn expect_envelope(what: &str, request: reqwest::RequestBuilder, code: ErrorCode) -> String {
    let response = request.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = response.status();
    let content_type =
        response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = response.bytes().await.unwrap_or_else(|e| panic!("{what}: reading the answer: {e}"));
    let envelope: ErrorBody = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{what}: {status} {content_type} is not the error envelope ({e}): {}", text(&body)));
    assert!(content_type.starts_with("application/json"), "{what}: content type {content_type:?}");
    assert_eq!(envelope.error.code, code, "{what}: {}", envelope.error.message);
    assert_eq!(status.as_u16(), code.status().as_u16(), "{what}: {}", envelope.error.message);
    eprintln!("{what}: {status} {}", envelope.error.message);
    envelope.error.message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_of_either_api_is_the_json_envelope() {
    let mesh = start().await;
    let c = clients(&mesh);
    let gateway = format!("https://{}", mesh.addr());
    let replica = format!("https://{}", mesh.t.addr("aws", 1));
    let digest = format!("sha256:{}", "0".repeat(64));
    let big = format!("{{\"spec\": \"{}\"}}", "x".repeat(OVER_LIMIT));
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth(&c.token);

    phase("the gateway: queries, paths, bodies and methods the framework refuses");
    let g = &c.gateway;
    let message =
        expect_envelope("limit=null", auth(g.get(format!("{gateway}/v1/jobs?limit=null"))), ErrorCode::BadRequest)
            .await;
    assert!(message.contains("limit"), "{message}");
    expect_envelope("limit=-1", auth(g.get(format!("{gateway}/v1/jobs?limit=-1"))), ErrorCode::BadRequest).await;
    let message = expect_envelope(
        "a negative chunk index",
        auth(g.get(format!("{gateway}/v1/blobs/{digest}/chunks/-1"))),
        ErrorCode::BadRequest,
    )
    .await;
    assert!(message.contains("-1"), "{message}");
    let submit = || auth(g.post(format!("{gateway}/v1/pipelines")));
    expect_envelope(
        "a body over the limit",
        submit().header("content-type", "application/json").body(big.clone()),
        ErrorCode::TooLarge,
    )
    .await;
    expect_envelope(
        "a body that is not JSON by its type",
        submit().header("content-type", "text/plain").body("{}"),
        ErrorCode::UnsupportedMediaType,
    )
    .await;
    let message = expect_envelope(
        "bad JSON",
        submit().header("content-type", "application/json").body("{\"spec\": "),
        ErrorCode::BadRequest,
    )
    .await;
    assert!(message.starts_with("request body"), "{message}");
    expect_envelope(
        "a field of the wrong type",
        submit().header("content-type", "application/json").body("{\"spec\": {\"version\": 1, \"jobs\": 5}}"),
        ErrorCode::BadRequest,
    )
    .await;
    expect_envelope(
        "a method the route lacks",
        auth(g.delete(format!("{gateway}/v1/jobs"))),
        ErrorCode::MethodNotAllowed,
    )
    .await;
    expect_envelope("no such route", auth(g.get(format!("{gateway}/v1/nowhere"))), ErrorCode::NotFound).await;
    expect_envelope(
        "no token, a body over the limit",
        g.post(format!("{gateway}/v1/pipelines")).body(big.clone()),
        ErrorCode::TooLarge,
    )
    .await;
    expect_envelope(
        "a bad token",
        g.post(format!("{gateway}/v1/pipelines")).bearer_auth("atoll-user.nope").body("{}"),
        ErrorCode::Unauthenticated,
    )
    .await;

    phase("a replica: the same for its API");
    let r = &c.replica;
    expect_envelope("detail=maybe", r.get(format!("{replica}/v1/annotations?detail=maybe")), ErrorCode::BadRequest)
        .await;
    expect_envelope("a negative node id", r.post(format!("{replica}/v1/raft/voters/-1")), ErrorCode::BadRequest).await;
    expect_envelope(
        "a negative chunk index",
        r.get(format!("{replica}/v1/blobs/{digest}/chunks/-1")),
        ErrorCode::BadRequest,
    )
    .await;
    let annotate = || r.put(format!("{replica}/v1/annotations/team"));
    expect_envelope(
        "a body over the limit",
        annotate().header("content-type", "application/json").body(big.clone()),
        ErrorCode::TooLarge,
    )
    .await;
    expect_envelope(
        "a body that is not JSON by its type",
        annotate().header("content-type", "application/x-www-form-urlencoded").body("value=a"),
        ErrorCode::UnsupportedMediaType,
    )
    .await;
    let message = expect_envelope(
        "a field of the wrong type",
        annotate().header("content-type", "application/json").body("{\"value\": 1}"),
        ErrorCode::BadRequest,
    )
    .await;
    assert!(message.contains("value"), "{message}");
    expect_envelope("a method the route lacks", r.delete(format!("{replica}/v1/status")), ErrorCode::MethodNotAllowed)
        .await;
    expect_envelope("no such route", r.get(format!("{replica}/v1/nowhere")), ErrorCode::NotFound).await;

    phase("what worked before still works: a JSON body without a content type is read as JSON");
    let ack = annotate().body("{\"value\": \"a\"}").send().await.expect("annotate");
    assert!(ack.status().is_success(), "{}", ack.status());
}

/// POST `body_file` over HTTP/2 with curl `tries` times; every try must get `status`.
async fn posts_get_their_answer(what: &str, url: &str, extra: &[&str], body_file: &Path, status: u16, tries: usize) {
    let data = format!("@{}", s(body_file));
    let mut failures = Vec::new();
    for _ in 0..tries {
        let mut args = vec![
            "--silent",
            "--show-error",
            "--http2",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_version} %{http_code}",
            "--header",
            "content-type: application/json",
            "--data-binary",
            &data,
        ];
        args.extend_from_slice(extra);
        args.push(url);
        let out = curl(&args).await;
        let written = text(&out.stdout);
        if !out.status.success() || written != format!("2 {status}") {
            failures.push(format!("{} {written:?} {}", out.status, text(&out.stderr).trim()));
        }
    }
    assert!(failures.is_empty(), "{what}: {} of {tries} answers were lost or wrong: {failures:?}", failures.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_before_their_body_was_read_get_their_answer_over_http2() {
    let mesh = start().await;
    let p = paths(&mesh);
    let dir = tempfile::tempdir().expect("temp dir");
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, format!("{{\"spec\": \"{}\"}}", "x".repeat(OVER_LIMIT))).expect("write the body");
    let pipelines = format!("https://{}/v1/pipelines", mesh.addr());
    const TRIES: usize = 25;

    phase("a bad token: the gateway refuses (401) before it reads the body");
    let ca = ["--cacert", s(&p.ca)];
    let bad_token = [&ca[..], &["--header", "authorization: Bearer atoll-user.nope"]].concat();
    posts_get_their_answer("401 at the gateway", &pipelines, &bad_token, &body_file, 401, TRIES).await;

    phase("a body over the limit: refused (413) after 2 MiB of it");
    posts_get_their_answer("413 at the gateway", &pipelines, &ca, &body_file, 413, TRIES).await;

    phase("the same at a replica (413), with an operator certificate");
    let operator = [&ca[..], &["--cert", s(&p.cert), "--key", s(&p.key), "--request", "PUT"]].concat();
    let annotate = format!("https://{}/v1/annotations/team", mesh.t.addr("aws", 1));
    posts_get_their_answer("413 at a replica", &annotate, &operator, &body_file, 413, TRIES).await;
}
