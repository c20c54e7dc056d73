//! The gateway as the mesh's certificate authority, and the gateway's own server certificate.
//!
//! The CA key comes from `ca_dir` (`ca.pem`, `ca-key.pem`), created at first start when the
//! directory holds neither. Several gateway replicas share it by sharing the directory (a
//! mounted secret). The gateway issues its own server certificate
//! (`spiffe://atoll/gateway/<id>`, and the DNS names and IP addresses it is reached at, for
//! standard HTTPS clients) at start and renews it in place at two thirds of its life.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use atoll_api::Identity;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::HostName;
use atoll_api::pki::KeyAlgorithm;
use atoll_api::tls::TlsIdentity;

/// How long the CA of a new mesh is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

pub struct GatewayCa {
    ca: CertificateAuthority,
    fingerprint: String,
    identity: Identity,
    names: Vec<HostName>,
    tls: TlsIdentity,
    lifetime: Duration,
}

impl std::fmt::Debug for GatewayCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayCa").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

impl GatewayCa {
    /// Load the CA from `dir` (or create it there) and issue this gateway's certificate, naming
    /// `names` besides its identity.
    pub fn load_or_create(
        dir: &Path,
        id: &str,
        names: &[HostName],
        lifetime: Duration,
    ) -> anyhow::Result<(Self, bool)> {
        let cert = dir.join("ca.pem");
        let key = dir.join("ca-key.pem");
        let created = match (cert.exists(), key.exists()) {
            (true, true) => false,
            (false, false) => {
                let ca = CertificateAuthority::generate("atoll mesh CA", CA_VALIDITY)?;
                ca.save(dir).with_context(|| format!("writing the new CA to {}", dir.display()))?;
                true
            }
            (true, false) => {
                anyhow::bail!("{} exists but {} does not: the CA key is missing", cert.display(), key.display())
            }
            (false, true) => anyhow::bail!("{} exists but {} does not", key.display(), cert.display()),
        };
        let ca = CertificateAuthority::load(dir).with_context(|| format!("loading the CA from {}", dir.display()))?;
        let fingerprint = atoll_api::token::fingerprint(&ca.cert_der()?);
        let identity = Identity::Gateway { id: id.to_string() };
        let tls = Self::issue_own(&ca, &identity, names, lifetime)?;
        Ok((Self { ca, fingerprint, identity, names: names.to_vec(), tls, lifetime }, created))
    }

    fn issue_own(
        ca: &CertificateAuthority,
        identity: &Identity,
        names: &[HostName],
        lifetime: Duration,
    ) -> anyhow::Result<TlsIdentity> {
        let issued = ca.issue_named(identity, names, lifetime, KeyAlgorithm::EcdsaP256)?;
        let memory = Path::new("(issued in memory)");
        Ok(TlsIdentity::from_pem(
            Path::new("ca.pem"),
            ca.cert_pem().as_bytes(),
            memory,
            issued.cert_pem.as_bytes(),
            memory,
            issued.key_pem.as_bytes(),
        )?)
    }

    pub fn authority(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// SHA-256 of the CA certificate; join tokens pin it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn tls(&self) -> &TlsIdentity {
        &self.tls
    }

    /// Whether a replica's certificate may carry `name`: not a DNS name of this gateway's own
    /// certificate (a replica holding one could pose as the gateway to standard clients, which
    /// check names, not identities). IP addresses are shared by processes on one machine.
    pub fn replica_may_carry(&self, name: &HostName) -> Result<(), String> {
        match name {
            HostName::Dns(_) if self.names.contains(name) => Err("the gateway's own name".to_string()),
            _ => Ok(()),
        }
    }

    /// Issue a fresh own certificate and swap it in (open connections keep theirs).
    pub fn renew_own(&self) -> anyhow::Result<()> {
        let fresh = Self::issue_own(&self.ca, &self.identity, &self.names, self.lifetime)?;
        self.tls.slot().replace(fresh.slot().current());
        Ok(())
    }

    /// Renew the own certificate every third of its lifetime, until dropped.
    pub async fn renew_forever(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.lifetime / 3).await;
            match self.renew_own() {
                Ok(()) => tracing::info!("gateway certificate renewed"),
                Err(e) => tracing::error!(error = %e, "renewing the gateway certificate failed; will retry"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_certificate_names_the_gateway_and_replicas_may_not_carry_its_dns_names() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<HostName> = vec!["gateway.example".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let (ca, created) = GatewayCa::load_or_create(dir.path(), "g1", &names, Duration::from_secs(3600)).unwrap();
        assert!(created);
        let der = ca.tls().slot().current().cert[0].to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names);
        for expected in ["spiffe://atoll/gateway/g1", "gateway.example", "[127, 0, 0, 1]"] {
            assert!(sans.contains(expected), "{expected} missing from {sans}");
        }
        assert!(ca.replica_may_carry(&"gateway.example".parse().unwrap()).is_err());
        assert!(ca.replica_may_carry(&"aws-1.example".parse().unwrap()).is_ok());
        // Processes on one machine share its addresses.
        assert!(ca.replica_may_carry(&"127.0.0.1".parse().unwrap()).is_ok());
    }
}
