//! The mesh certificate authority: create it, load it, issue identity certificates.
//!
//! Every certificate carries exactly one atoll identity as a SAN URI (see [`crate::identity`]) and
//! both the server and client EKUs (replicas are both). Keys are ECDSA P-256 by default, or
//! Ed25519. The CA certificate is limited to issuing end-entity certificates (path length 0).
//!
//! A server's certificate also names the DNS names and IP addresses it is reached at
//! ([`HostName`]), so that standard clients (curl, browsers, HTTP libraries), which check the
//! name they dialled, accept it. atoll's own clients never look at those names: they check the
//! identity.

use std::net::IpAddr;
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

/// Most DNS names and IP addresses one certificate may carry.
pub const MAX_HOST_NAMES: usize = 32;

/// A DNS name or IP address a certificate is valid for, besides its identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostName {
    /// A DNS name, lowercase, without a wildcard.
    Dns(String),
    Ip(IpAddr),
}

impl std::str::FromStr for HostName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bare = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        if s.contains('*') {
            return Err(format!("{s:?}: wildcard names are not issued"));
        }
        let name = s.to_ascii_lowercase();
        rustls::pki_types::DnsName::try_from(name.as_str())
            .map_err(|_| format!("{s:?} is neither an IP address nor a DNS name"))?;
        Ok(Self::Dns(name.trim_end_matches('.').to_string()))
    }
}

impl std::fmt::Display for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostName::Dns(name) => f.write_str(name),
            HostName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl HostName {
    /// The host of a `host:port` (or `[v6]:port`) address.
    pub fn of_address(addr: &str) -> Result<Self, String> {
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("{addr:?} is not host:port"))?;
        port.parse::<u16>().map_err(|_| format!("{addr:?}: {port:?} is not a port"))?;
        host.parse().map_err(|e: String| format!("{addr:?}: {e}"))
    }

    fn san(&self) -> Result<SanType, PkiError> {
        Ok(match self {
            HostName::Dns(name) => SanType::DnsName(name.clone().try_into().map_err(PkiError::Generate)?),
            HostName::Ip(ip) => SanType::IpAddress(*ip),
        })
    }
}

/// The names a server is reached at: the host of its advertised address, the IP address it
/// listens on (unless it listens on every address), then `extra`; each once, in that order.
pub fn server_names(
    advertised: &str,
    listen: std::net::SocketAddr,
    extra: &[HostName],
) -> Result<Vec<HostName>, String> {
    let mut names = vec![HostName::of_address(advertised)?];
    if !listen.ip().is_unspecified() {
        names.push(HostName::Ip(listen.ip()));
    }
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    names.retain(|name| seen.insert(name.clone()));
    if names.len() > MAX_HOST_NAMES {
        return Err(format!("{} names; a certificate carries at most {MAX_HOST_NAMES}", names.len()));
    }
    Ok(names)
}

/// [`server_names`] from a config: `extra` as written under the key `extra_key`. An error names
/// the key it is about (`host`, `extra_key[i]` or `extra_key`) and what is wrong.
pub fn configured_server_names(
    advertised: &str,
    listen: std::net::SocketAddr,
    extra: &[String],
    extra_key: &str,
) -> Result<Vec<HostName>, (String, String)> {
    let extra = extra
        .iter()
        .enumerate()
        .map(|(i, name)| name.parse::<HostName>().map_err(|e| (format!("{extra_key}[{i}]"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    HostName::of_address(advertised).map_err(|e| ("host".to_string(), e))?;
    server_names(advertised, listen, &extra).map_err(|e| (extra_key.to_string(), e))
}

fn sans(identity: &Identity, names: &[HostName]) -> Result<Vec<SanType>, PkiError> {
    let uri = identity.uri().try_into().map_err(PkiError::Generate)?;
    let mut sans = vec![SanType::URI(uri)];
    for name in names {
        sans.push(name.san()?);
    }
    Ok(sans)
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

    /// A 256-bit key for `purpose`, derived from the CA's private key (HKDF-SHA256): every
    /// gateway replica holds the CA key, so each derives the same key without another secret
    /// to distribute, and whoever lacks the CA key cannot.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        use aws_lc_rs::hkdf;
        struct Len;
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                32
            }
        }
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"atoll key derivation");
        let prk = salt.extract(self.key.serialized_der());
        let info = [purpose.as_bytes()];
        let okm = prk.expand(&info, Len).expect("32 bytes is a valid HKDF-SHA256 length");
        let mut out = [0u8; 32];
        okm.fill(&mut out).expect("the length asked for");
        out
    }

    /// Issue a certificate for `identity`, valid from now for `validity`.
    pub fn issue(&self, identity: &Identity, validity: Duration, alg: KeyAlgorithm) -> Result<IssuedCert, PkiError> {
        self.issue_named(identity, &[], validity, alg)
    }

    /// Issue a certificate for `identity` that also names `names` (a server's DNS names and IP
    /// addresses), valid from now for `validity`.
    pub fn issue_named(
        &self,
        identity: &Identity,
        names: &[HostName],
        validity: Duration,
        alg: KeyAlgorithm,
    ) -> Result<IssuedCert, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.issue_between_named(identity, names, now - backdate(validity), now + validity, alg)
    }

    /// Issue a certificate valid between two instants (tests use this for expired certificates).
    pub fn issue_between(
        &self,
        identity: &Identity,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        alg: KeyAlgorithm,
    ) -> Result<IssuedCert, PkiError> {
        self.issue_between_named(identity, &[], not_before, not_after, alg)
    }

    fn issue_between_named(
        &self,
        identity: &Identity,
        names: &[HostName],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        alg: KeyAlgorithm,
    ) -> Result<IssuedCert, PkiError> {
        let key = alg.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, identity.uri());
        params.subject_alt_names = sans(identity, names)?;
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
    #[error(
        "the CSR must name exactly one atoll identity as a subject alternative name URI, and besides it only DNS names and IP addresses; it names {0}"
    )]
    Names(String),
    #[error("the CSR names {0} DNS names and IP addresses; at most {MAX_HOST_NAMES} are issued")]
    TooManyNames(usize),
    #[error("the CSR asks for {name}, which is not issued here: {reason}")]
    NameRefused { name: HostName, reason: String },
    #[error("the CSR asks for {found}, but only {allowed} may be issued here")]
    WrongIdentity { found: String, allowed: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The identity a CSR asks for (its one SAN URI, an atoll identity) and the DNS names and IP
/// addresses it asks for besides; any other kind of name is refused.
pub fn csr_names(csr: &CertificateSigningRequestParams) -> Result<(Identity, Vec<HostName>), CsrError> {
    let listed = || {
        let names: Vec<String> = csr.params.subject_alt_names.iter().map(|san| format!("{san:?}")).collect();
        if names.is_empty() { "nothing".to_string() } else { names.join(", ") }
    };
    let mut identity = None;
    let mut names = Vec::new();
    for san in &csr.params.subject_alt_names {
        match san {
            SanType::URI(uri) if identity.is_none() => {
                identity = Some(uri.as_str().parse::<Identity>().map_err(|e| CsrError::Names(e.to_string()))?);
            }
            SanType::DnsName(name) => names.push(name.as_str().parse::<HostName>().map_err(CsrError::Names)?),
            SanType::IpAddress(ip) => names.push(HostName::Ip(*ip)),
            _ => return Err(CsrError::Names(listed())),
        }
    }
    let identity = identity.ok_or_else(|| CsrError::Names(listed()))?;
    if names.len() > MAX_HOST_NAMES {
        return Err(CsrError::TooManyNames(names.len()));
    }
    Ok((identity, names))
}

/// The identity a CSR asks for (see [`csr_names`]).
pub fn csr_identity(csr: &CertificateSigningRequestParams) -> Result<Identity, CsrError> {
    csr_names(csr).map(|(identity, _)| identity)
}

impl CertificateAuthority {
    /// Sign `csr_pem` if the identity it asks for passes `allowed` (which returns why not) and
    /// each DNS name or IP address it asks for besides passes `name_allowed`; the certificate is
    /// valid from now for `validity`, with this CA's usages and EKUs whatever the CSR asked for.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        validity: Duration,
        allowed: impl FnOnce(&Identity) -> Result<(), String>,
        name_allowed: impl Fn(&HostName) -> Result<(), String>,
    ) -> Result<(Identity, String, OffsetDateTime), CsrError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CsrError::Unreadable)?;
        let (identity, names) = csr_names(&csr)?;
        allowed(&identity).map_err(|allowed| CsrError::WrongIdentity { found: identity.uri(), allowed })?;
        for name in &names {
            name_allowed(name).map_err(|reason| CsrError::NameRefused { name: name.clone(), reason })?;
        }
        let now = OffsetDateTime::now_utc();
        let not_after = now + validity;
        let params = &mut csr.params;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, identity.uri());
        params.subject_alt_names = sans(&identity, &names)?;
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

/// A new key (kept by the caller) and a CSR for `identity` and the DNS names and IP addresses
/// `names`, both PEM.
pub fn new_csr(identity: &Identity, names: &[HostName], alg: KeyAlgorithm) -> Result<(String, String), PkiError> {
    let key = alg.generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, identity.uri());
    params.subject_alt_names = sans(identity, names)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(cert_pem: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        use x509_parser::extensions::GeneralName;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let (mut uris, mut dns, mut ips) = (Vec::new(), Vec::new(), Vec::new());
        for name in &cert.subject_alternative_name().unwrap().unwrap().value.general_names {
            match name {
                GeneralName::URI(uri) => uris.push(uri.to_string()),
                GeneralName::DNSName(name) => dns.push(name.to_string()),
                GeneralName::IPAddress(bytes) => ips.push(format!("{bytes:?}")),
                other => panic!("unexpected name {other:?}"),
            }
        }
        (uris, dns, ips)
    }

    fn node() -> Identity {
        Identity::node("aws".parse().unwrap(), 1)
    }

    #[test]
    fn host_names_parse_from_names_addresses_and_host_ports() {
        assert_eq!("Gateway.Example.".parse(), Ok(HostName::Dns("gateway.example".into())));
        assert_eq!("10.0.0.5".parse(), Ok(HostName::Ip([10, 0, 0, 5].into())));
        assert_eq!("[::1]".parse(), Ok(HostName::Ip("::1".parse().unwrap())));
        assert!("*.example".parse::<HostName>().unwrap_err().contains("wildcard"));
        assert!("a b".parse::<HostName>().is_err());
        assert_eq!(HostName::of_address("[::1]:7000"), Ok(HostName::Ip("::1".parse().unwrap())));
        assert_eq!(HostName::of_address("aws-1.ci.svc:7101"), Ok(HostName::Dns("aws-1.ci.svc".into())));
        assert!(HostName::of_address("aws-1").is_err());
        assert!(HostName::of_address("aws-1:http").is_err());
        let listen = "0.0.0.0:7000".parse().unwrap();
        let extra = ["gw.internal".parse().unwrap(), "gateway.example".parse().unwrap()];
        assert_eq!(
            server_names("gateway.example:7000", listen, &extra).unwrap(),
            vec![HostName::Dns("gateway.example".into()), HostName::Dns("gw.internal".into())]
        );
        let many: Vec<HostName> = (0..40).map(|i| HostName::Dns(format!("n{i}.example"))).collect();
        assert!(server_names("gateway.example:7000", listen, &many).unwrap_err().contains("at most"));
    }

    #[test]
    fn certificates_carry_the_identity_and_the_names() {
        let ca = CertificateAuthority::generate("test", Duration::from_secs(3600)).unwrap();
        let names = ["gateway.example".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let issued = ca.issue_named(&node(), &names, Duration::from_secs(3600), KeyAlgorithm::EcdsaP256).unwrap();
        let (uris, dns, ips) = names_in(&issued.cert_pem);
        assert_eq!(uris, vec!["spiffe://atoll/cluster/aws/node/1".to_string()]);
        assert_eq!(dns, vec!["gateway.example".to_string()]);
        assert_eq!(ips, vec!["[127, 0, 0, 1]".to_string()]);
    }

    #[test]
    fn a_csr_may_ask_for_names_that_the_signer_allows() {
        let ca = CertificateAuthority::generate("test", Duration::from_secs(3600)).unwrap();
        let names = ["aws-1.example".parse().unwrap(), "10.0.0.7".parse().unwrap()];
        let (csr, _) = new_csr(&node(), &names, KeyAlgorithm::EcdsaP256).unwrap();
        let day = Duration::from_secs(86_400);
        let (identity, cert, _) = ca.sign_csr(&csr, day, |_| Ok(()), |_| Ok(())).unwrap();
        assert_eq!(identity, node());
        let (uris, dns, ips) = names_in(&cert);
        assert_eq!((uris.len(), dns, ips.len()), (1, vec!["aws-1.example".to_string()], 1));

        let refused = ca
            .sign_csr(
                &csr,
                day,
                |_| Ok(()),
                |name| match name {
                    HostName::Dns(_) => Err("the gateway's own name".into()),
                    HostName::Ip(_) => Ok(()),
                },
            )
            .unwrap_err()
            .to_string();
        assert!(refused.contains("aws-1.example") && refused.contains("the gateway's own name"), "{refused}");

        // Another kind of name (an e-mail address), or no identity at all, is refused.
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::URI(node().uri().try_into().unwrap()),
            SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
        ];
        let odd = params.serialize_request(&key).unwrap().pem().unwrap();
        assert!(matches!(ca.sign_csr(&odd, day, |_| Ok(()), |_| Ok(())), Err(CsrError::Names(_))));
        params.subject_alt_names = vec![SanType::DnsName("aws-1.example".try_into().unwrap())];
        let nameless = params.serialize_request(&key).unwrap().pem().unwrap();
        assert!(matches!(ca.sign_csr(&nameless, day, |_| Ok(()), |_| Ok(())), Err(CsrError::Names(_))));
    }
}
