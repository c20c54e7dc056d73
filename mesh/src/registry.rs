//! An image registry for the tests of registry logins: Debian's `docker-registry` (the
//! distribution registry) on 127.0.0.1 over TLS, its certificate signed by a CA of its own, with
//! one user in its `htpasswd`. `scripts/test` installs the package; without it [`ImageRegistry::start`]
//! fails, saying so. The server is stopped when the value is dropped.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use atoll_api::identity::Identity;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::KeyAlgorithm;

/// Debian's registry program.
pub const REGISTRY_PROGRAM: &str = "/usr/bin/docker-registry";
/// The registry's one user.
pub const REGISTRY_USER: &str = "tester";
/// Its password.
pub const REGISTRY_PASSWORD: &str = "atoll-registry-password";
/// bcrypt of [`REGISTRY_PASSWORD`] (the registry reads bcrypt only).
const REGISTRY_PASSWORD_BCRYPT: &str = "$2b$05$YyZavyQkQKmhbnsd5/MZUe58pVv/axTkrC6MUNGec6DCuT246Er.i";

pub struct ImageRegistry {
    child: std::process::Child,
    /// `127.0.0.1:PORT`: the registry part of an image's name.
    pub addr: String,
    /// A directory with the CA's certificate as `ca.crt`, for an engine's `--cert-dir`.
    pub certs: PathBuf,
}

impl ImageRegistry {
    /// Start one with its files and storage in `dir`; ready when it accepts connections.
    pub async fn start(dir: &Path) -> anyhow::Result<ImageRegistry> {
        if !Path::new(REGISTRY_PROGRAM).exists() {
            bail!("{REGISTRY_PROGRAM} is missing: scripts/test installs Debian's docker-registry");
        }
        std::fs::create_dir_all(dir)?;
        let day = Duration::from_secs(86_400);
        let ca = CertificateAuthority::generate("atoll test registry CA", day)?;
        let identity = Identity::node("registry".parse().map_err(anyhow::Error::msg)?, 1);
        let names = ["127.0.0.1".parse().map_err(anyhow::Error::msg)?];
        let issued = ca.issue_named(&identity, &names, day, KeyAlgorithm::EcdsaP256)?;
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs)?;
        std::fs::write(certs.join("ca.crt"), ca.cert_pem())?;
        std::fs::write(dir.join("registry.crt"), &issued.cert_pem)?;
        std::fs::write(dir.join("registry.key"), &issued.key_pem)?;
        std::fs::write(dir.join("htpasswd"), format!("{REGISTRY_USER}:{REGISTRY_PASSWORD_BCRYPT}\n"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        // JSON is YAML: every path quoted whatever it holds.
        let path = |p: PathBuf| serde_json::to_string(&p.display().to_string()).unwrap_or_default();
        let config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\n\
             http: {{addr: \"{addr}\", tls: {{certificate: {}, key: {}}}}}\n\
             auth: {{htpasswd: {{realm: atoll-test, path: {}}}}}\n",
            path(dir.join("data")),
            path(dir.join("registry.crt")),
            path(dir.join("registry.key")),
            path(dir.join("htpasswd")),
        );
        std::fs::write(dir.join("registry.yml"), config)?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = std::process::Command::new(REGISTRY_PROGRAM)
            .arg("serve")
            .arg(dir.join("registry.yml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {REGISTRY_PROGRAM}"))?;
        let registry = ImageRegistry { child, addr, certs };
        // Bounded: 10 s.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&registry.addr).await.is_ok() {
                return Ok(registry);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the registry did not listen on {}: {}",
            registry.addr,
            std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        )
    }
}

impl Drop for ImageRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
