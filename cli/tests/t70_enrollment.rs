//! Enrollment, tokens and revocation against a real gateway and real replicas, on SQLite and on
//! PostgreSQL: replicas enroll with join tokens; reused, expired, unknown and foreign tokens and
//! CSRs for another identity are refused with clear errors; user tokens carry scopes; a revoked
//! cluster is refused by the gateway and, within a heartbeat or so, by its peers.

mod common;

use std::time::Duration;
use std::time::Instant;

use atoll_api::ErrorCode;
use atoll_api::Identity;
use atoll_api::client::ClientError;
use atoll_api::client::NodeClient;
use atoll_api::gateway::EnrollRequest;
use atoll_api::gateway::Heartbeat;
use atoll_api::gateway::JoinTokenRequest;
use atoll_api::gateway::LinkState;
use atoll_api::gateway::Scope;
use atoll_api::gateway::UserTokenRequest;
use atoll_api::pki::KeyAlgorithm;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsIdentity;
use atoll_api::token::JoinToken;
use common::Engine;
use common::GatewayMesh;
use common::eventually;
use common::phase;
use common::test_gateway_timing;

/// The error of a refused call, with its code and message.
fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (ErrorCode, String) {
    match result {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(e) => (e.code().unwrap_or_else(|| panic!("expected an API error, got {e}")), e.to_string()),
    }
}

fn csr_for(identity: &Identity) -> String {
    atoll_api::pki::new_csr(identity, &[], KeyAlgorithm::EcdsaP256).expect("csr").0
}

fn node(cluster: &str, id: u64) -> Identity {
    Identity::node(cluster.parse().expect("cluster name"), id)
}

async fn join_token(mesh: &GatewayMesh, cluster: &str, ttl_s: Option<u64>) -> String {
    mesh.gateway
        .join_token(&JoinTokenRequest { cluster: cluster.to_string(), labels: vec![], ttl_s, replicas: None })
        .await
        .expect("join token")
        .token
}

async fn enrollment(engine: Engine) {
    let mesh = GatewayMesh::start(engine, 2, 1, test_gateway_timing(), false).await;
    let anonymous = mesh.anonymous(None);

    phase("every replica enrolled: its certificate names it and chains to the gateway's CA");
    let ca = anonymous.ca().await.expect("GET /v1/ca");
    for cluster in ["aws", "gcp"] {
        let tls = mesh.replica_tls(cluster, 1);
        assert_eq!(tls.identity(), &node(cluster, 1));
        let pinned = std::fs::read_to_string(mesh.t.mesh.dir.join_token(cluster, 1)).expect("join token file");
        assert_eq!(JoinToken::parse(pinned.trim()).expect("token").ca_fingerprint, ca.fingerprint);
    }

    phase("atoll clusters --json lists both with the contract fields");
    let out = mesh.cli(&["clusters", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let clusters: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let aws = clusters.as_array().expect("array").iter().find(|c| c["name"] == "aws").expect("aws listed").clone();
    for field in ["name", "labels", "enabled", "state", "leader", "term", "endpoint", "last_seen_ms"] {
        assert!(aws.get(field).is_some(), "clusters entry lacks {field}: {aws}");
    }
    assert_eq!(aws["labels"], serde_json::json!(["aws", "default"]));
    assert_eq!(aws["state"], "alive");
    assert_eq!(aws["enabled"], true);
    assert_eq!(aws["leader"], 1);

    phase("a token already used by a replica is refused");
    let used = std::fs::read_to_string(mesh.t.mesh.dir.join_token("aws", 1)).expect("token file");
    let (code, message) = refusal(
        anonymous.enroll(&EnrollRequest { token: used.trim().to_string(), csr: csr_for(&node("aws", 7)) }).await,
    );
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("already used") && message.contains("spiffe://atoll/cluster/aws/node/1"), "{message}");

    phase("a fresh token enrolls one replica, once");
    let token = join_token(&mesh, "aws", None).await;
    let issued =
        anonymous.enroll(&EnrollRequest { token: token.clone(), csr: csr_for(&node("aws", 7)) }).await.expect("enroll");
    assert_eq!((issued.cluster.as_str(), issued.node_id), ("aws", 7));
    assert_eq!(issued.labels, Vec::<String>::new());
    let (_, message) = refusal(anonymous.enroll(&EnrollRequest { token, csr: csr_for(&node("aws", 8)) }).await);
    assert!(message.contains("already used"), "{message}");

    phase("a CSR for another cluster's identity is refused, and the token stays usable");
    let token = join_token(&mesh, "aws", None).await;
    let (code, message) =
        refusal(anonymous.enroll(&EnrollRequest { token: token.clone(), csr: csr_for(&node("gcp", 5)) }).await);
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("enrolls replicas of cluster aws") && message.contains("cluster/gcp/node/5"), "{message}");
    anonymous
        .enroll(&EnrollRequest { token, csr: csr_for(&node("aws", 9)) })
        .await
        .expect("the token still enrolls aws");

    phase("a CSR for an operator identity is refused");
    let token = join_token(&mesh, "aws", None).await;
    let (_, message) = refusal(
        anonymous.enroll(&EnrollRequest { token, csr: csr_for(&Identity::Operator { name: "eve".into() }) }).await,
    );
    assert!(message.contains("enrolls a replica"), "{message}");

    phase("an expired token is refused");
    let token = join_token(&mesh, "aws", Some(1)).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (_, message) = refusal(anonymous.enroll(&EnrollRequest { token, csr: csr_for(&node("aws", 10)) }).await);
    assert!(message.contains("expired"), "{message}");

    phase("an unknown token, a token of another CA, and garbage are refused");
    let fake = JoinToken { secret: atoll_api::token::new_secret(), ca_fingerprint: ca.fingerprint.clone() }.encode();
    let (_, message) = refusal(anonymous.enroll(&EnrollRequest { token: fake, csr: csr_for(&node("aws", 11)) }).await);
    assert!(message.contains("unknown join token"), "{message}");
    let real = JoinToken::parse(&join_token(&mesh, "aws", None).await).expect("token");
    let foreign = JoinToken { secret: real.secret, ca_fingerprint: "ab".repeat(32) }.encode();
    let (_, message) =
        refusal(anonymous.enroll(&EnrollRequest { token: foreign, csr: csr_for(&node("aws", 11)) }).await);
    assert!(message.contains("another CA"), "{message}");
    let (code, message) =
        refusal(anonymous.enroll(&EnrollRequest { token: "hello".into(), csr: csr_for(&node("aws", 11)) }).await);
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("not an atoll join token"), "{message}");

    phase("a replica given a token pinning another CA refuses to enroll, before sending the secret");
    let rogue = mesh.t.dir.path().join("rogue");
    std::fs::create_dir_all(&rogue).expect("dir");
    let foreign = JoinToken { secret: atoll_api::token::new_secret(), ca_fingerprint: "cd".repeat(32) }.encode();
    let port = atoll_mesh::allocate_ports(1, 0).expect("port")[0];
    std::fs::write(
        rogue.join("agent.yaml"),
        format!(
            "cluster: {{name: aws}}\nnode: {{id: 12, data_dir: data}}\nlisten: \"127.0.0.1:{port}\"\npeers: [{{id: 12, addr: \"127.0.0.1:{port}\"}}]\n\
             tls: {{ca: tls/ca.pem, cert: tls/node.pem, key: tls/node-key.pem}}\ngateway: {{addr: \"{}\", join_token: \"{foreign}\"}}\n",
            mesh.addr()
        ),
    )
    .expect("write config");
    let out = std::process::Command::new(common::atoll_exe())
        .args(["agent", "--config"])
        .arg(rogue.join("agent.yaml"))
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an agent with a foreign token started: {stderr}");
    assert!(stderr.contains("join token pins") && stderr.contains("refusing to enroll"), "{stderr}");
    assert!(!rogue.join("tls/node.pem").exists());

    phase("user tokens: none is 401, a read token reads but may not administer, admin may");
    let (code, _) = refusal(mesh.anonymous(None).clusters().await);
    assert_eq!(code, ErrorCode::Unauthenticated);
    let (code, message) = refusal(mesh.anonymous(Some("atoll-user.nonsense".into())).clusters().await);
    assert_eq!(code, ErrorCode::Unauthenticated, "{message}");
    let out = mesh.cli(&["token", "create", "--user", "viewer", "--scopes", "read"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read_token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("atoll-user."))
        .expect("token printed")
        .to_string();
    let reader = mesh.anonymous(Some(read_token));
    assert_eq!(reader.matrix().await.expect("read scope reads the matrix").clusters, vec!["aws", "gcp"]);
    let (code, message) = refusal(
        reader
            .join_token(&JoinTokenRequest { cluster: "aws".into(), labels: vec![], ttl_s: None, replicas: None })
            .await,
    );
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("user viewer lacks the admin scope"), "{message}");
    let (code, _) = refusal(reader.cluster_action("aws", "disable").await);
    assert_eq!(code, ErrorCode::Forbidden);
    let expiring = mesh
        .gateway
        .user_token(&UserTokenRequest { name: "brief".into(), scopes: vec![Scope::Admin], ttl_s: Some(1) })
        .await
        .expect("user token");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (code, message) = refusal(mesh.anonymous(Some(expiring.token)).clusters().await);
    assert_eq!(code, ErrorCode::Unauthenticated, "{message}");

    phase("bad requests name what is wrong");
    let (code, message) = refusal(
        mesh.gateway
            .join_token(&JoinTokenRequest { cluster: "Not A Name".into(), labels: vec![], ttl_s: None, replicas: None })
            .await,
    );
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("cluster:"), "{message}");
    let (_, message) = refusal(
        mesh.gateway
            .join_token(&JoinTokenRequest {
                cluster: "aws".into(),
                labels: vec!["ok".into(), "BAD LABEL".into()],
                ttl_s: None,
                replicas: None,
            })
            .await,
    );
    assert!(message.contains("labels[1]"), "{message}");
    let (_, message) = refusal(
        mesh.gateway
            .join_token(&JoinTokenRequest { cluster: "aws".into(), labels: vec![], ttl_s: Some(0), replicas: None })
            .await,
    );
    assert!(message.contains("ttl_s"), "{message}");
    let replica = mesh.as_replica("aws", 1);
    let term = mesh.cluster("aws").await.expect("aws").term;
    let heartbeat = Heartbeat {
        term,
        leader_id: 1,
        endpoint: "127.0.0.1:1".into(),
        labels: vec!["Bad Label".into()],
        replicas: vec![],
        view_revision: None,
        capabilities: None,
    };
    let (code, message) = refusal(replica.heartbeat("aws", &heartbeat).await);
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("labels[0]"), "{message}");
    let (code, message) = refusal(replica.heartbeat("gcp", &Heartbeat { labels: vec![], ..heartbeat }).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("may not act for cluster gcp"), "{message}");

    phase("disable and enable are admin intent: the state stays observed");
    let out = mesh.cli(&["cluster", "disable", "gcp"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gcp = mesh.cluster("gcp").await.expect("gcp");
    assert!(!gcp.enabled);
    assert_eq!(gcp.state.to_string(), "alive");
    let out = mesh.cli(&["cluster", "enable", "gcp"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(mesh.cluster("gcp").await.expect("gcp").enabled);
    let out = mesh.cli(&["cluster", "disable", "nosuch"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no cluster nosuch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

on_both_engines!(enrollment, enrollment_sqlite, enrollment_postgres);

async fn revocation(engine: Engine) {
    let mesh = GatewayMesh::start(engine, 3, 1, test_gateway_timing(), false).await;
    for (from, to) in [("aws", "gcp"), ("gcp", "aws"), ("onprem", "gcp")] {
        mesh.wait_cell(from, to, LinkState::Reachable, Duration::from_secs(30)).await;
    }
    let gcp =
        NodeClient::new(&mesh.replica_tls("gcp", 1), ServerPolicy::AnyNode, Duration::from_secs(2)).expect("client");
    let aws_addr = mesh.t.addr("aws", 1);
    gcp.status(&aws_addr).await.expect("before revocation, aws answers gcp");

    phase("atoll cluster revoke gcp");
    let out = mesh.cli(&["cluster", "revoke", "gcp"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let revoked_at = Instant::now();

    phase("the gateway refuses gcp's replicas whatever they ask");
    let as_gcp = mesh.as_replica("gcp", 1);
    let term = mesh.cluster("gcp").await.expect("gcp listed").term;
    let heartbeat = Heartbeat {
        term,
        leader_id: 1,
        endpoint: mesh.t.addr("gcp", 1),
        labels: vec![],
        replicas: vec![],
        view_revision: None,
        capabilities: None,
    };
    let (code, message) = refusal(as_gcp.heartbeat("gcp", &heartbeat).await);
    assert_eq!(code, ErrorCode::Revoked);
    assert!(message.contains("cluster gcp is revoked"), "{message}");
    assert_eq!(refusal(as_gcp.matrix().await).0, ErrorCode::Revoked);
    let csr = csr_for(&node("gcp", 1));
    assert_eq!(refusal(as_gcp.renew(&csr).await).0, ErrorCode::Revoked);

    phase("no new token for gcp, and a token made before cannot enroll");
    let (code, message) = refusal(
        mesh.gateway
            .join_token(&JoinTokenRequest { cluster: "gcp".into(), labels: vec![], ttl_s: None, replicas: None })
            .await,
    );
    assert_eq!(code, ErrorCode::Conflict);
    assert!(message.contains("revoked"), "{message}");

    phase("peers learn it with the mesh view and drop gcp's connections");
    eventually(Duration::from_secs(15), "aws refuses gcp's replicas", || async {
        gcp.status(&aws_addr).await.is_err().then_some(())
    })
    .await;
    eprintln!("aws refused gcp {} ms after the revocation", revoked_at.elapsed().as_millis());
    let admin_view = mesh.t.client.status(&aws_addr).await.expect("aws still answers the operator");
    assert_eq!(admin_view.cluster, "aws");

    phase("gcp's leader stops its gateway duties; the listing shows the revocation");
    eventually(Duration::from_secs(15), "gcp's log records the revocation", || async {
        mesh.t.log("gcp", 1).contains("this cluster was revoked").then_some(())
    })
    .await;
    let listed = mesh.cluster("gcp").await.expect("gcp still listed");
    assert!(listed.revoked);
    let matrix = mesh.gateway.matrix().await.expect("matrix");
    assert_eq!(matrix.clusters, vec!["aws", "onprem"], "a revoked cluster leaves the matrix");
    let ops = mesh.t.mesh.layout.gateway.as_ref().expect("gateway").ops_addr();
    let metrics = reqwest::get(format!("http://{ops}/metrics")).await.expect("metrics").text().await.expect("text");
    for line in ["atoll_gateway_clusters{state=\"revoked\"} 1", "atoll_gateway_clusters{state=\"alive\"} 2"] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in:\n{metrics}");
    }

    phase("revoking an unknown cluster names it");
    let out = mesh.cli(&["cluster", "revoke", "nosuch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cluster nosuch"));
}

on_both_engines!(revocation, revocation_sqlite, revocation_postgres);

/// The certificate a replica presents to a new connection right now.
fn served_certificate(addr: String, client: TlsIdentity) -> Vec<u8> {
    let config = std::sync::Arc::new(client.client_config(ServerPolicy::AnyAtoll).expect("client config"));
    let ip: std::net::IpAddr = addr.rsplit_once(':').expect("host:port").0.parse().expect("ip");
    let mut connection =
        rustls::ClientConnection::new(config, rustls::pki_types::ServerName::IpAddress(ip.into())).expect("tls");
    let mut socket = std::net::TcpStream::connect(&addr).expect("connect");
    socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    while connection.is_handshaking() {
        connection.complete_io(&mut socket).expect("handshake");
    }
    connection.peer_certificates().expect("server certificate")[0].to_vec()
}

/// Renewal touches no SQL, so one engine is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_at_two_thirds_without_a_restart() {
    let mut timing = test_gateway_timing();
    timing.cert_lifetime_s = 60;
    let mut mesh = GatewayMesh::start(Engine::Sqlite, 2, 1, timing, false).await;
    let cert_path = mesh.t.mesh.dir.enrolled_cert("aws", 1);
    let first = std::fs::read_to_string(&cert_path).expect("cert");
    let (_, first_expiry) = atoll_api::pki::validity(&first).expect("validity");
    let pid = mesh.t.mesh.pid("aws", 1).expect("pid");

    phase("wait for the renewal (two thirds of 60 s after issuance)");
    let renewed = eventually(Duration::from_secs(90), "aws-1 renewed its certificate", || async {
        std::fs::read_to_string(&cert_path).ok().filter(|now| *now != first)
    })
    .await;
    let (_, renewed_expiry) = atoll_api::pki::validity(&renewed).expect("validity");
    assert!(renewed_expiry > first_expiry, "{renewed_expiry} after {first_expiry}");
    assert!(mesh.t.mesh.reap().is_empty(), "a replica exited");
    assert_eq!(mesh.t.mesh.pid("aws", 1), Some(pid), "renewal restarted the replica");
    eventually(Duration::from_secs(5), "aws-1 logged the swap", || async {
        mesh.t.log("aws", 1).contains("certificate renewed and swapped in").then_some(())
    })
    .await;

    phase("new connections get the renewed certificate, and the mesh keeps working");
    let admin = TlsIdentity::load(&atoll_api::tls::TlsFiles {
        ca: mesh.t.mesh.dir.certs().join("ca.pem"),
        cert: mesh.t.mesh.dir.certs().join("admin.pem"),
        key: mesh.t.mesh.dir.certs().join("admin-key.pem"),
    })
    .expect("operator TLS");
    let addr = mesh.t.addr("aws", 1);
    eventually(Duration::from_secs(10), "aws-1 serves the certificate on disk", || {
        let (addr, admin, path) = (addr.clone(), admin.clone(), cert_path.clone());
        async move {
            let on_disk = std::fs::read(&path).ok()?;
            let served = tokio::task::spawn_blocking(move || served_certificate(addr, admin)).await.ok()?;
            (atoll_api::tls::first_cert_der(&on_disk)? == served).then_some(())
        }
    })
    .await;
    eventually(Duration::from_secs(10), "aws heartbeats with the renewed certificate", || async {
        mesh.cluster("aws").await.filter(|c| c.last_seen_ms.is_some_and(|ms| ms < 1_000))
    })
    .await;
    let since = Instant::now();
    mesh.wait_cell("gcp", "aws", LinkState::Reachable, Duration::from_secs(10)).await;
    mesh.wait_cell("aws", "gcp", LinkState::Reachable, Duration::from_secs(10)).await;
    eprintln!("matrix reachable both ways {} ms after checking", since.elapsed().as_millis());
}

#[test]
fn gateway_config_errors_name_the_key_and_file() {
    let dir = tempfile::tempdir().expect("dir");
    let cases = [
        ("listen: \"127.0.0.1:0\"\nca_dir: ca\ndatabse: {}\n", "databse: unknown field"),
        (
            "listen: \"127.0.0.1:0\"\nca_dir: ca\nmatrix: {probe_interval_ms: 100, probe_timeout_ms: 100}\n",
            "matrix.probe_timeout_ms",
        ),
        (
            "listen: \"127.0.0.1:0\"\nca_dir: ca\nclusters: {suspect_after_ms: 5000, dead_after_ms: 4000}\n",
            "clusters.dead_after_ms",
        ),
        ("listen: \"127.0.0.1:0\"\nca_dir: ca\ndatabase: {postgres: {url: \"mysql://x\"}}\n", "database.postgres.url"),
        ("listen: \"127.0.0.1:0\"\nca_dir: ca\ncertificates: {lifetime_s: 5}\n", "certificates.lifetime_s"),
    ];
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("gateway-{i}.yaml"));
        std::fs::write(&path, yaml).expect("write");
        let out = std::process::Command::new(common::atoll_exe())
            .args(["gateway", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} started: {stderr}");
        assert!(stderr.contains(expected) && stderr.contains(&format!("gateway-{i}.yaml")), "case {i}: {stderr}");
    }
    assert!(!dir.path().join("ca").exists(), "a refused config created files");
}
