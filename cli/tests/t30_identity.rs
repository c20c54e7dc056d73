//! Identity on every link: Raft RPCs only from replicas of the same cluster, membership changes
//! only from operators, and certificates from another CA or expired refused at the handshake,
//! each with a log line that says why.

mod common;

use std::sync::Arc;
use std::time::Duration;

use atoll_api::Identity;
use atoll_api::client::NodeClient;
use atoll_api::client::error_chain;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::IssuedCert;
use atoll_api::pki::KeyAlgorithm;
use atoll_api::tls::ServerPolicy;
use atoll_mesh::RaftKnobs;
use common::TestMesh;
use common::eventually;
use common::https_client;
use common::issued_identity;
use common::phase;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

const DAY: Duration = Duration::from_secs(86_400);

/// Accepts any server certificate: lets a test present a client certificate the server must
/// judge (an expired one) without the client refusing first.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn raw_client(cert: &IssuedCert) -> reqwest::Client {
    let provider = atoll_api::tls::provider();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    https_client(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_right_identities_get_in() {
    let mut t = TestMesh::start(1, 3, RaftKnobs::default()).await;
    t.leader("aws").await;
    let ca = CertificateAuthority::load(&t.mesh.dir.certs()).expect("mesh CA");
    let target = t.addr("aws", 1);

    phase("a replica of another cluster, with a valid certificate from the same CA, may not send raft rpcs");
    let gcp = issued_identity(
        &ca,
        &ca.issue(&Identity::node("gcp".parse().unwrap(), 1), DAY, KeyAlgorithm::EcdsaP256).unwrap(),
    );
    let client = https_client(gcp.client_config(ServerPolicy::AnyNode).unwrap());
    let response = client
        .post(format!("https://{target}/raft/v1/vote"))
        .header("x-atoll-raft-protocol", "1")
        .body("{}")
        .send()
        .await
        .expect("the TLS handshake itself succeeds");
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    eventually(Duration::from_secs(5), "a log line naming the refused peer", || async {
        let log = t.log("aws", 1);
        (log.contains("refused raft rpc: not a replica of this cluster")
            && log.contains("spiffe://atoll/cluster/gcp/node/1"))
        .then_some(())
    })
    .await;

    phase("a replica of this cluster speaking another raft protocol version is refused");
    let aws2 = issued_identity(
        &ca,
        &ca.issue(&Identity::node("aws".parse().unwrap(), 2), DAY, KeyAlgorithm::EcdsaP256).unwrap(),
    );
    let client = https_client(aws2.client_config(ServerPolicy::AnyNode).unwrap());
    let response = client
        .post(format!("https://{target}/raft/v1/vote"))
        .header("x-atoll-raft-protocol", "9")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("raft protocol version 9 is not supported"), "{body}");

    phase("a replica may not change the membership: that takes an operator certificate");
    let replica_as_client = NodeClient::new(&aws2, ServerPolicy::AnyNode, Duration::from_secs(5)).unwrap();
    let err = replica_as_client.add_learner(&target, 9, "127.0.0.1:1").await.unwrap_err();
    assert_eq!(err.code(), Some(atoll_api::ErrorCode::Forbidden), "{err}");

    phase("a certificate from another CA is refused at the handshake");
    let other = CertificateAuthority::generate("other CA", DAY).unwrap();
    let foreign = other.issue(&Identity::Operator { name: "admin".into() }, DAY, KeyAlgorithm::EcdsaP256).unwrap();
    let err = raw_client(&foreign).get(format!("https://{target}/v1/status")).send().await.unwrap_err();
    eprintln!("client saw: {}", error_chain(&err));
    eventually(Duration::from_secs(5), "a log line refusing the foreign certificate", || async {
        let log = t.log("aws", 1);
        log.lines().any(|l| l.contains("refused mTLS connection") && l.contains("UnknownIssuer")).then_some(())
    })
    .await;

    phase("an expired certificate of the right CA is refused at the handshake");
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue_between(
            &Identity::Operator { name: "admin".into() },
            now - time::Duration::days(3),
            now - time::Duration::days(1),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
    assert!(raw_client(&expired).get(format!("https://{target}/v1/status")).send().await.is_err());
    eventually(Duration::from_secs(5), "a log line refusing the expired certificate", || async {
        let log = t.log("aws", 1);
        log.lines().any(|l| l.contains("refused mTLS connection") && l.to_lowercase().contains("expired")).then_some(())
    })
    .await;

    phase("the group is unharmed");
    assert!(t.client.annotate(&target, "still", "fine").await.is_ok());
}
