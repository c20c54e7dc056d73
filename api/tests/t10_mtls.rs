//! mTLS between atoll components: identities from certificates, refusals with clear reasons.

use std::path::Path;
use std::time::Duration;

use atoll_api::Identity;
use atoll_api::client::error_chain;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::IssuedCert;
use atoll_api::pki::KeyAlgorithm;
use atoll_api::serve::Peer;
use atoll_api::serve::serve_mtls;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsError;
use atoll_api::tls::TlsIdentity;
use axum::Extension;
use axum::Router;
use axum::routing::get;

const DAY: Duration = Duration::from_secs(86_400);

fn tls(ca: &CertificateAuthority, cert: &IssuedCert) -> Result<TlsIdentity, TlsError> {
    TlsIdentity::from_pem(
        Path::new("ca.pem"),
        ca.cert_pem().as_bytes(),
        Path::new("cert.pem"),
        cert.cert_pem.as_bytes(),
        Path::new("key.pem"),
        cert.key_pem.as_bytes(),
    )
}

fn node(cluster: &str, id: u64) -> Identity {
    Identity::node(cluster.parse().unwrap(), id)
}

/// Start a server that answers `GET /whoami` with the client's identity and HTTP version.
async fn start_server(server: &TlsIdentity) -> (String, tokio::sync::oneshot::Sender<()>) {
    let router = Router::new().route(
        "/whoami",
        get(|Extension(Peer(peer)): Extension<Peer>, request: axum::extract::Request| async move {
            format!("{} {:?}", peer.uri(), request.version())
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = server.server_config().unwrap();
    tokio::spawn(async move {
        serve_mtls(
            listener,
            config,
            router,
            Default::default(),
            async { stopped.await.ok().unwrap_or(()) },
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    });
    (addr, stop)
}

async fn get_whoami(client: &TlsIdentity, policy: ServerPolicy, addr: &str) -> Result<String, String> {
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(client.client_config(policy).unwrap())
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    match http.get(format!("https://{addr}/whoami")).send().await {
        Ok(response) => Ok(response.text().await.unwrap()),
        Err(e) => Err(error_chain(&e)),
    }
}

#[tokio::test]
async fn peers_are_identified_by_their_certificate_over_http2() {
    let ca = CertificateAuthority::generate("test CA", DAY).unwrap();
    let server = tls(&ca, &ca.issue(&node("aws", 1), DAY, KeyAlgorithm::EcdsaP256).unwrap()).unwrap();
    let client = tls(&ca, &ca.issue(&node("aws", 2), DAY, KeyAlgorithm::Ed25519).unwrap()).unwrap();
    let (addr, _stop) = start_server(&server).await;

    let answer = get_whoami(&client, ServerPolicy::Exactly(node("aws", 1)), &addr).await.unwrap();
    assert_eq!(answer, "spiffe://atoll/cluster/aws/node/2 HTTP/2.0");
    let answer = get_whoami(&client, ServerPolicy::NodeOf("aws".parse().unwrap()), &addr).await.unwrap();
    assert!(answer.starts_with("spiffe://atoll/cluster/aws/node/2"), "{answer}");
}

#[tokio::test]
async fn a_client_refuses_a_server_with_the_wrong_identity() {
    let ca = CertificateAuthority::generate("test CA", DAY).unwrap();
    let server = tls(&ca, &ca.issue(&node("gcp", 1), DAY, KeyAlgorithm::EcdsaP256).unwrap()).unwrap();
    let client = tls(&ca, &ca.issue(&node("aws", 2), DAY, KeyAlgorithm::EcdsaP256).unwrap()).unwrap();
    let (addr, _stop) = start_server(&server).await;

    let err = get_whoami(&client, ServerPolicy::Exactly(node("aws", 1)), &addr).await.unwrap_err();
    assert!(err.contains("server identity spiffe://atoll/cluster/gcp/node/1 is not the expected"), "{err}");
    let err = get_whoami(&client, ServerPolicy::Gateway, &addr).await.unwrap_err();
    assert!(err.contains("is not the expected"), "{err}");
}

#[tokio::test]
async fn a_server_refuses_clients_of_another_ca_or_expired() {
    let ca = CertificateAuthority::generate("test CA", DAY).unwrap();
    let server = tls(&ca, &ca.issue(&node("aws", 1), DAY, KeyAlgorithm::EcdsaP256).unwrap()).unwrap();
    let (addr, _stop) = start_server(&server).await;

    // A client whose certificate comes from another CA (it trusts ours, so only the server refuses).
    let other = CertificateAuthority::generate("other CA", DAY).unwrap();
    let foreign_cert = other.issue(&node("aws", 2), DAY, KeyAlgorithm::EcdsaP256).unwrap();
    let foreign = TlsIdentity::from_pem(
        Path::new("ca.pem"),
        format!("{}{}", ca.cert_pem(), other.cert_pem()).as_bytes(),
        Path::new("cert.pem"),
        foreign_cert.cert_pem.as_bytes(),
        Path::new("key.pem"),
        foreign_cert.key_pem.as_bytes(),
    )
    .unwrap();
    let err = get_whoami(&foreign, ServerPolicy::AnyNode, &addr).await.unwrap_err();
    assert!(err.contains("BadCertificate") || err.contains("UnknownCA") || err.contains("alert"), "{err}");

    // An expired client certificate cannot even be loaded ...
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue_between(
            &node("aws", 3),
            now - time::Duration::days(2),
            now - time::Duration::days(1),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
    let err = tls(&ca, &expired).unwrap_err();
    assert!(err.to_string().contains("the certificate expired at"), "{err}");
}

#[test]
fn loading_checks_the_chain_and_the_key() {
    let ca = CertificateAuthority::generate("test CA", DAY).unwrap();
    let other = CertificateAuthority::generate("other CA", DAY).unwrap();
    let cert = other.issue(&node("aws", 1), DAY, KeyAlgorithm::EcdsaP256).unwrap();
    let err = tls(&ca, &cert).unwrap_err();
    assert!(err.to_string().contains("not issued by this CA"), "{err}");

    let a = ca.issue(&node("aws", 1), DAY, KeyAlgorithm::EcdsaP256).unwrap();
    let b = ca.issue(&node("aws", 2), DAY, KeyAlgorithm::EcdsaP256).unwrap();
    let mixed = IssuedCert { cert_pem: a.cert_pem, key_pem: b.key_pem };
    let err = tls(&ca, &mixed).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");

    let garbage = IssuedCert { cert_pem: "not pem".into(), key_pem: "x".into() };
    assert!(matches!(tls(&ca, &garbage).unwrap_err(), TlsError::Pem { .. }));
}
