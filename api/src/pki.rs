//! The mesh certificate authority: create it, load it, issue identity certificates.
//!
//! Every certificate carries exactly one atoll identity as a SAN URI (see [`crate::identity`]) and
//! both the server and client EKUs (replicas are both). Keys are ECDSA P-256 by default, or
//! Ed25519. The CA certificate is limited to issuing end-entity certificates (path length 0).

use std::path::Path;
use std::time::Duration;

use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::CertificateSigningRequestParams;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use rcgen::SanType;
use rcgen::SerialNumber;
use time::OffsetDateTime;

use crate::identity::Identity;

/// How far back a new certificate's validity starts, to tolerate clock skew between machines:
/// five minutes, or a tenth of a short lifetime (so that renewal at two thirds of the validity
/// still falls well after issuance).
fn backdate(lifetime: Duration) -> Duration {
    Duration::from_secs(300).min(lifetime / 10)
}

/// Key algorithm of an issued certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    Ed25519,
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ecdsa-p256" | "p256" => Ok(Self::EcdsaP256),
            "ed25519" => Ok(Self::Ed25519),
            other => Err(format!("unknown key algorithm {other:?} (expected ecdsa-p256 or ed25519)")),
        }
    }
}

impl KeyAlgorithm {
    fn generate(self) -> Result<KeyPair, PkiError> {
        let alg = match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        };
        KeyPair::generate_for(alg).map_err(PkiError::Generate)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a key or certificate failed: {0}")]
    Generate(rcgen::Error),
    #[error("the CA certificate or key is unusable: {0}")]
    BadCa(rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite it")]
    Exists { path: String },
}

/// A freshly issued certificate and its private key, PEM encoded.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The mesh CA.
pub struct CertificateAuthority {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand_bytes();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The TLS crypto provider's RNG; no second source of randomness in the graph.
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut out)
        .expect("the system random number generator failed");
    out
}

impl CertificateAuthority {
    /// Create a new CA, valid for `validity` from now.
    pub fn generate(common_name: &str, validity: Duration) -> Result<Self, PkiError> {
        let key = KeyAlgorithm::EcdsaP256.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.distinguished_name.push(DnType::OrganizationName, "atoll");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - backdate(validity);
        params.not_after = now + validity;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(PkiError::Generate)?;
        Ok(Self { cert_pem: cert.pem(), key })
    }

    /// Load a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::BadCa)?;
        // Check they belong together and parse now, not at the first issue.
        Issuer::from_ca_cert_pem(cert_pem, &key).map_err(PkiError::BadCa)?;
        Ok(Self { cert_pem: cert_pem.to_string(), key })
    }

    /// Load from `DIR/ca.pem` and `DIR/ca-key.pem`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert = read(&dir.join("ca.pem"))?;
        let key = read(&dir.join("ca-key.pem"))?;
        Self::from_pem(&cert, &key)
    }

    /// Write `DIR/ca.pem` and `DIR/ca-key.pem` (mode 0600), refusing to overwrite.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        write_new(&dir.join("ca.pem"), &self.cert_pem, 0o644)?;
        write_new(&dir.join("ca-key.pem"), &self.key.serialize_pem(), 0o600)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issue a certificate for `identity`, valid from now for `validity`.
    pub fn issue(&self, identity: &Identity, validity: Duration, alg: KeyAlgorithm) -> Result<IssuedCert, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.issue_between(identity, now - backdate(validity), now + validity, alg)
    }

    /// Issue a certificate valid between two instants (tests use this for expired certificates).
    pub fn issue_between(
        &self,
        identity: &Identity,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        alg: KeyAlgorithm,
    ) -> Result<IssuedCert, PkiError> {
        let key = alg.generate()?;
        let mut params = CertificateParams::default();
        let uri = identity.uri();
        params.distinguished_name.push(DnType::CommonName, uri.clone());
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(|e: rcgen::Error| PkiError::Generate(e))?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(PkiError::BadCa)?;
        let cert = params.signed_by(&key, &issuer).map_err(PkiError::Generate)?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Why a CSR was refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is unreadable or its signature is invalid: {0}")]
    Unreadable(rcgen::Error),
    #[error("the CSR must name exactly one atoll identity as its only subject alternative name; it names {0}")]
    Names(String),
    #[error("the CSR asks for {found}, but only {allowed} may be issued here")]
    WrongIdentity { found: String, allowed: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The identity a CSR asks for (its only SAN must be an atoll URI).
pub fn csr_identity(csr: &CertificateSigningRequestParams) -> Result<Identity, CsrError> {
    let names: Vec<String> = csr.params.subject_alt_names.iter().map(|san| format!("{san:?}")).collect();
    match csr.params.subject_alt_names.as_slice() {
        [SanType::URI(uri)] => uri.as_str().parse::<Identity>().map_err(|e| CsrError::Names(e.to_string())),
        _ => Err(CsrError::Names(if names.is_empty() { "nothing".to_string() } else { names.join(", ") })),
    }
}

impl CertificateAuthority {
    /// Sign `csr_pem` if the identity it asks for passes `allowed` (which returns why not);
    /// the certificate is valid from now for `validity`, with this CA's usages and EKUs whatever
    /// the CSR asked for.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        validity: Duration,
        allowed: impl FnOnce(&Identity) -> Result<(), String>,
    ) -> Result<(Identity, String, OffsetDateTime), CsrError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CsrError::Unreadable)?;
        let identity = csr_identity(&csr)?;
        allowed(&identity).map_err(|allowed| CsrError::WrongIdentity { found: identity.uri(), allowed })?;
        let now = OffsetDateTime::now_utc();
        let not_after = now + validity;
        let params = &mut csr.params;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, identity.uri());
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - backdate(validity);
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params.name_constraints = None;
        params.crl_distribution_points = Vec::new();
        params.custom_extensions = Vec::new();
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(PkiError::BadCa)?;
        let cert = csr.signed_by(&issuer).map_err(PkiError::Generate)?;
        Ok((identity, cert.pem(), not_after))
    }

    /// Sign an edge ticket with the CA key ([`crate::ticket`]).
    pub fn sign_ticket(&self, ticket: &crate::ticket::Ticket) -> Result<String, PkiError> {
        ticket.sign(&self.key).map_err(PkiError::Generate)
    }

    /// The CA certificate's DER bytes (for fingerprints).
    pub fn cert_der(&self) -> Result<Vec<u8>, PkiError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map(|der| der.to_vec())
            .map_err(|e| PkiError::BadCa(rcgen::Error::PemError(e.to_string())))
    }
}

/// A new key (kept by the caller) and a CSR for `identity`, both PEM.
pub fn new_csr(identity: &Identity, alg: KeyAlgorithm) -> Result<(String, String), PkiError> {
    let key = alg.generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, identity.uri());
    params.subject_alt_names =
        vec![SanType::URI(identity.uri().try_into().map_err(|e: rcgen::Error| PkiError::Generate(e))?)];
    let csr = params.serialize_request(&key).map_err(PkiError::Generate)?;
    Ok((csr.pem().map_err(PkiError::Generate)?, key.serialize_pem()))
}

/// Validity bounds of a PEM certificate.
pub fn validity(cert_pem: &str) -> Result<(OffsetDateTime, OffsetDateTime), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    validity_der(&der)
}

/// Validity bounds of a DER certificate.
pub fn validity_der(der: &[u8]) -> Result<(OffsetDateTime, OffsetDateTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let validity = cert.validity();
    Ok((validity.not_before.to_datetime(), validity.not_after.to_datetime()))
}

impl IssuedCert {
    /// Write `DIR/NAME.pem` and `DIR/NAME-key.pem` (mode 0600), refusing to overwrite.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        write_new(&dir.join(format!("{name}.pem")), &self.cert_pem, 0o644)?;
        write_new(&dir.join(format!("{name}-key.pem")), &self.key_pem, 0o600)
    }
}

fn io_err(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io { path: path.display().to_string(), source }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| io_err(path, e))
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists { path: path.display().to_string() }
        } else {
            io_err(path, e)
        }
    })?;
    file.write_all(contents.as_bytes()).map_err(|e| io_err(path, e))?;
    file.sync_all().map_err(|e| io_err(path, e))
}
