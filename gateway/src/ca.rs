//! The gateway as the mesh's certificate authority, and the gateway's own server certificate.
//!
//! The CA key comes from `ca_dir` (`ca.pem`, `ca-key.pem`), created at first start when the
//! directory holds neither. Several gateway replicas share it by sharing the directory (a
//! mounted secret). The gateway issues its own server certificate
//! (`spiffe://atoll/gateway/<id>`) at start and renews it in place at two thirds of its life.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use atoll_api::Identity;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::KeyAlgorithm;
use atoll_api::tls::TlsIdentity;

/// How long the CA of a new mesh is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

pub struct GatewayCa {
    ca: CertificateAuthority,
    fingerprint: String,
    identity: Identity,
    tls: TlsIdentity,
    lifetime: Duration,
}

impl std::fmt::Debug for GatewayCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayCa").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

impl GatewayCa {
    /// Load the CA from `dir` (or create it there) and issue this gateway's certificate.
    pub fn load_or_create(dir: &Path, id: &str, lifetime: Duration) -> anyhow::Result<(Self, bool)> {
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
        let tls = Self::issue_own(&ca, &identity, lifetime)?;
        Ok((Self { ca, fingerprint, identity, tls, lifetime }, created))
    }

    fn issue_own(ca: &CertificateAuthority, identity: &Identity, lifetime: Duration) -> anyhow::Result<TlsIdentity> {
        let issued = ca.issue(identity, lifetime, KeyAlgorithm::EcdsaP256)?;
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

    /// Issue a fresh own certificate and swap it in (open connections keep theirs).
    pub fn renew_own(&self) -> anyhow::Result<()> {
        let fresh = Self::issue_own(&self.ca, &self.identity, self.lifetime)?;
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
