//! mTLS for every atoll link: rustls with aws-lc-rs, TLS 1.3 only, identities from SAN URIs.
//!
//! Servers require a client certificate chaining to the mesh CA and hand the peer's
//! [`Identity`] to the application, which authorizes per request. Clients verify the server's
//! chain to the same CA and check its identity against a [`ServerPolicy`] instead of a DNS name:
//! replicas are reached by address, and an address proves nothing.
//!
//! The own certificate sits in a [`CertSlot`] that can be swapped while connections are served
//! (certificate renewal without a restart).

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;

use rustls::ClientConfig;
use rustls::DigitallySignedStruct;
use rustls::ServerConfig;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::danger::ServerCertVerified;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::TrustAnchor;
use rustls::pki_types::UnixTime;
use rustls::pki_types::pem::PemObject;
use rustls::server::ClientHello;
use rustls::server::ResolvesServerCert;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;

use crate::identity::Identity;
use crate::identity::IdentityError;
use crate::ids::ClusterName;

/// Protocols offered in ALPN: HTTP/2 first (multiplexed Raft and API traffic on one connection).
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The one crypto provider of the process.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Paths of a component's TLS material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found ({detail})")]
    Pem { path: PathBuf, what: &'static str, detail: String },
    #[error("{path}: the certificate does not match its private key ({detail})")]
    KeyMismatch { path: PathBuf, detail: String },
    #[error("{path}: the certificate is not valid under the CA {ca}: {detail}")]
    NotTrusted { path: PathBuf, ca: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Identity {
        path: PathBuf,
        #[source]
        source: IdentityError,
    },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Whether a server requires clients to present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    Required,
    /// Clients without a certificate are served too (their requests carry no identity); a
    /// certificate that is presented must still be valid.
    Optional,
    /// No certificate is asked for (a browser's listener: a request for one makes some
    /// browsers ask their user to pick one).
    None,
}

/// Which servers a client accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerPolicy {
    /// Any atoll identity signed by the CA (operator tools talking to whatever `--node` names).
    AnyAtoll,
    /// Any replica of any cluster.
    AnyNode,
    /// A replica of this cluster.
    NodeOf(ClusterName),
    /// Exactly this identity (a Raft peer).
    Exactly(Identity),
    /// A gateway replica.
    Gateway,
}

impl ServerPolicy {
    pub fn allows(&self, identity: &Identity) -> bool {
        match self {
            ServerPolicy::AnyAtoll => true,
            ServerPolicy::AnyNode => matches!(identity, Identity::Node { .. }),
            ServerPolicy::NodeOf(cluster) => identity.is_replica_of(cluster),
            ServerPolicy::Exactly(expected) => expected == identity,
            ServerPolicy::Gateway => matches!(identity, Identity::Gateway { .. }),
        }
    }
}

/// The own certificate and key, swappable while in use.
#[derive(Debug)]
pub struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.read().expect("cert slot lock").clone()
    }

    pub fn replace(&self, key: Arc<CertifiedKey>) {
        *self.0.write().expect("cert slot lock") = key;
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The CA certificates a component trusts; enough to verify a server without an own certificate
/// (a user's CLI, a replica before it has enrolled).
#[derive(Clone)]
pub struct TrustRoots {
    provider: Arc<CryptoProvider>,
    roots: Arc<rustls::RootCertStore>,
    anchors: Arc<Vec<TrustAnchor<'static>>>,
    /// The CA certificates as DER (edge tickets are verified against their keys).
    ca_der: Arc<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustRoots").field("anchors", &self.anchors.len()).finish()
    }
}

impl TrustRoots {
    /// Check a certificate and key against these roots: the key matches, the certificate chains
    /// to the CA and is valid now, and it carries an atoll identity.
    pub fn certified_key(
        &self,
        ca_path: &Path,
        cert_path: &Path,
        cert_pem: &[u8],
        key_path: &Path,
        key_pem: &[u8],
    ) -> Result<(Identity, CertifiedKey), TlsError> {
        let chain = parse_certs(cert_path, cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
            path: key_path.to_path_buf(),
            what: "private key",
            detail: e.to_string(),
        })?;
        let certified = CertifiedKey::from_der(chain.clone(), key, &self.provider)
            .map_err(|e| TlsError::KeyMismatch { path: cert_path.to_path_buf(), detail: e.to_string() })?;
        let identity =
            verify_chain(&self.anchors, &self.provider, &chain, UnixTime::now(), webpki::KeyUsage::client_auth())
                .map_err(|e| TlsError::NotTrusted {
                    path: cert_path.to_path_buf(),
                    ca: ca_path.to_path_buf(),
                    detail: describe(&e),
                })?
                .map_err(|source| TlsError::Identity { path: cert_path.to_path_buf(), source })?;
        Ok((identity, certified))
    }

    /// Parse CA certificates (PEM); `path` names them in errors.
    pub fn from_pem(path: &Path, pem: &[u8]) -> Result<Self, TlsError> {
        let ca_certs = parse_certs(path, pem)?;
        let mut roots = rustls::RootCertStore::empty();
        let mut anchors = Vec::new();
        for ca in &ca_certs {
            roots.add(ca.clone()).map_err(|e| TlsError::Pem {
                path: path.to_path_buf(),
                what: "CA certificate",
                detail: e.to_string(),
            })?;
            anchors.push(
                webpki::anchor_from_trusted_cert(ca)
                    .map_err(|e| TlsError::Pem {
                        path: path.to_path_buf(),
                        what: "CA certificate",
                        detail: e.to_string(),
                    })?
                    .to_owned(),
            );
        }
        let ca_der = ca_certs.iter().map(|c| c.to_vec()).collect();
        Ok(Self { provider: provider(), roots: Arc::new(roots), anchors: Arc::new(anchors), ca_der: Arc::new(ca_der) })
    }

    pub fn load(path: &Path) -> Result<Self, TlsError> {
        Self::from_pem(path, &read(path)?)
    }

    /// The trusted CA certificates, DER encoded.
    pub fn ca_der(&self) -> &[Vec<u8>] {
        &self.ca_der
    }

    /// A client config that presents no certificate and accepts servers per `policy`.
    pub fn anonymous_client_config(&self, policy: ServerPolicy) -> Result<ClientConfig, TlsError> {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(self.verifier(policy)))
            .with_no_client_auth();
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    fn verifier(&self, policy: ServerPolicy) -> IdentityVerifier {
        IdentityVerifier { anchors: self.anchors.clone(), provider: self.provider.clone(), policy }
    }
}

/// A component's loaded TLS material: its identity, key and the CA it trusts.
#[derive(Clone)]
pub struct TlsIdentity {
    identity: Identity,
    trust: TrustRoots,
    slot: Arc<CertSlot>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").field("identity", &self.identity).finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs =
        certs.map_err(|e| TlsError::Pem { path: path.to_path_buf(), what: "certificate", detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "certificate",
            detail: "the file is empty".into(),
        });
    }
    Ok(certs)
}

impl TlsIdentity {
    /// Load and check the files: the key matches the certificate, the certificate chains to the
    /// CA and is valid now, and it carries an atoll identity.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Self::from_pem(&files.ca, &read(&files.ca)?, &files.cert, &read(&files.cert)?, &files.key, &read(&files.key)?)
    }

    /// Like [`Self::load`], from PEM contents; the paths only name things in errors.
    pub fn from_pem(
        ca_path: &Path,
        ca_pem: &[u8],
        cert_path: &Path,
        cert_pem: &[u8],
        key_path: &Path,
        key_pem: &[u8],
    ) -> Result<Self, TlsError> {
        let trust = TrustRoots::from_pem(ca_path, ca_pem)?;
        let (identity, certified) = trust.certified_key(ca_path, cert_path, cert_pem, key_path, key_pem)?;
        Ok(Self { identity, trust, slot: Arc::new(CertSlot(RwLock::new(Arc::new(certified)))) })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Where the own certificate lives; replace it to renew without a restart.
    pub fn slot(&self) -> &Arc<CertSlot> {
        &self.slot
    }

    pub fn trust(&self) -> &TrustRoots {
        &self.trust
    }

    /// A server config requiring client certificates from the CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_with(ClientCerts::Required)
    }

    /// A server config that verifies client certificates from the CA and, with
    /// [`ClientCerts::Optional`], also serves clients that present none.
    pub fn server_config_with(&self, client_certs: ClientCerts) -> Result<Arc<ServerConfig>, TlsError> {
        let trust = &self.trust;
        let builder = ServerConfig::builder_with_provider(trust.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match client_certs {
            ClientCerts::None => builder.with_no_client_auth(),
            ClientCerts::Required | ClientCerts::Optional => {
                let verifier = WebPkiClientVerifier::builder_with_provider(trust.roots.clone(), trust.provider.clone());
                let verifier = match client_certs {
                    ClientCerts::Optional => verifier.allow_unauthenticated(),
                    _ => verifier,
                };
                let verifier = verifier.build().map_err(|e| rustls::Error::General(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(self.slot.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A client config presenting the own certificate and accepting servers per `policy`.
    pub fn client_config(&self, policy: ServerPolicy) -> Result<ClientConfig, TlsError> {
        let verifier = self.trust.verifier(policy);
        let mut config = ClientConfig::builder_with_provider(self.trust.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(self.slot.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// Verify `chain` to the anchors for `usage` and read its identity. The outer error is the
/// chain's, the inner one the identity's.
fn verify_chain(
    anchors: &[TrustAnchor<'static>],
    provider: &CryptoProvider,
    chain: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<Result<Identity, IdentityError>, webpki::Error> {
    let (end_entity, intermediates) = chain.split_first().ok_or(webpki::Error::BadDer)?;
    let cert = webpki::EndEntityCert::try_from(end_entity)?;
    cert.verify_for_usage(
        provider.signature_verification_algorithms.all,
        anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )?;
    Ok(Identity::from_uris(cert.valid_uri_names()))
}

/// The identity of a peer whose chain rustls has already verified.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Result<Identity, IdentityError> {
    let Some(end_entity) = certs.first() else {
        return Err(IdentityError::NoIdentity { uris: Vec::new() });
    };
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| IdentityError::Malformed { uri: String::new(), reason: e.to_string() })?;
    Identity::from_uris(cert.valid_uri_names())
}

fn rfc3339(t: UnixTime) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.as_secs() as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{}s since the epoch", t.as_secs()))
}

/// A readable account of a certificate verification error.
fn describe(e: &webpki::Error) -> String {
    match e {
        webpki::Error::CertExpired { time, not_after } => {
            format!("the certificate expired at {} (now {})", rfc3339(*not_after), rfc3339(*time))
        }
        webpki::Error::CertNotValidYet { time, not_before } => {
            format!("the certificate is valid only from {} (now {})", rfc3339(*not_before), rfc3339(*time))
        }
        webpki::Error::UnknownIssuer => "the certificate was not issued by this CA".to_string(),
        other => other.to_string(),
    }
}

fn to_rustls(e: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    let error = match e {
        webpki::Error::CertExpired { time, not_after } => C::ExpiredContext { time, not_after },
        webpki::Error::CertNotValidYet { time, not_before } => C::NotValidYetContext { time, not_before },
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        webpki::Error::RequiredEkuNotFoundContext(_) => C::InvalidPurpose,
        other => return refused(describe(&other)),
    };
    rustls::Error::InvalidCertificate(error)
}

/// An error whose `Debug` is its message: rustls prints the errors it wraps with `Debug`.
#[derive(thiserror::Error)]
#[error("{0}")]
struct Readable(String);

impl std::fmt::Debug for Readable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn refused(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(Readable(message)))))
}

impl std::fmt::Display for ServerPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerPolicy::AnyAtoll => f.write_str("any atoll identity"),
            ServerPolicy::AnyNode => f.write_str("a cluster replica"),
            ServerPolicy::NodeOf(cluster) => write!(f, "a replica of cluster {cluster}"),
            ServerPolicy::Exactly(identity) => write!(f, "{identity}"),
            ServerPolicy::Gateway => f.write_str("a gateway"),
        }
    }
}

/// Verifies a server by its chain to the mesh CA and its SAN URI identity.
#[derive(Debug)]
struct IdentityVerifier {
    anchors: Arc<Vec<TrustAnchor<'static>>>,
    provider: Arc<CryptoProvider>,
    policy: ServerPolicy,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let identity = verify_chain(&self.anchors, &self.provider, &chain, now, webpki::KeyUsage::server_auth())
            .map_err(to_rustls)?
            .map_err(|e| refused(e.to_string()))?;
        if !self.policy.allows(&identity) {
            return Err(refused(format!("server identity {identity} is not the expected {}", self.policy)));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config that accepts any server certificate. Only for fetching the gateway's
/// public CA certificate before a replica trusts anything: the caller must check the fetched
/// certificate against the fingerprint pinned in its join token, send nothing secret on this
/// connection, and talk to the gateway only over a connection verified against that CA.
pub fn ca_bootstrap_client_config() -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyForCaFetch(provider)))
        .with_no_client_auth();
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[derive(Debug)]
struct AcceptAnyForCaFetch(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyForCaFetch {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The DER bytes of the first certificate in `pem`.
pub fn first_cert_der(pem: &[u8]) -> Option<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem).next().and_then(Result::ok).map(|der| der.to_vec())
}

/// The certificate a TLS server at `addr` presents, fetched with `config` (which verifies it).
pub async fn peer_certificate(
    config: ClientConfig,
    addr: &str,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host).trim_matches(['[', ']']);
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| format!("{addr}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("{addr}: {e}"))?;
        let tls = connector.connect(name, tcp).await.map_err(|e| format!("{addr}: {e}"))?;
        let (_, session) = tls.get_ref();
        session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.to_vec())
            .ok_or_else(|| format!("{addr}: no certificate presented"))
    };
    tokio::time::timeout(timeout, handshake).await.map_err(|_| format!("{addr}: no answer within {timeout:?}"))?
}
