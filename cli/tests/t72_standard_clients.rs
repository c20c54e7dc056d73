//! Standard HTTP clients against real daemons: curl verifies the gateway and a replica by the
//! address it dialled with nothing but the mesh CA.
//!
//! These run on SQLite only: nothing here depends on the database engine.

mod common;

use std::path::Path;
use std::path::PathBuf;
use std::process::Output;

use common::Engine;
use common::GatewayMesh;
use common::phase;
use common::test_gateway_timing;

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
