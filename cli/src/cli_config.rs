//! The CLI config file (`atoll.yaml`): which replicas to talk to and the operator credentials.
//!
//! ```yaml
//! gateway:                     # every gateway replica (host:port): a command uses the
//!   - "127.0.0.1:7000"         #   first and moves to the next when one fails
//!   - "127.0.0.1:7010"
//! token_file: admin.token      # bearer token for the gateway (or `token: atoll-user....`)
//! nodes:                       # replicas commands use when --node is not given
//!   - {cluster: aws, id: 1, addr: "127.0.0.1:7101"}
//! tls:
//!   ca: certs/ca.pem           # the mesh CA (verifies the gateway and replicas)
//!   cert: certs/admin.pem      # operator certificate (spiffe://atoll/operator/<name>),
//!   key: certs/admin-key.pem   #   needed only to talk to replicas directly
//! ```
//! Relative paths are resolved against the file's directory.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use atoll_api::client::NodeClient;
use atoll_api::gateway_addrs::GatewayAddrs;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsFiles;
use atoll_api::tls::TlsIdentity;
use serde::Deserialize;
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// Gateway replicas (`host:port`): a command uses the first and moves to the next when one
    /// fails (no connection, reset, timed out, a 5xx); a submission or a token only when the
    /// request surely was not sent.
    #[serde(default)]
    pub gateway: Vec<String>,
    /// Bearer token for the gateway.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the bearer token; takes the place of `token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Replicas, for commands given no --node.
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
    /// Operator credentials for the replicas' mTLS API.
    #[serde(default)]
    pub tls: Option<TlsEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub cluster: String,
    pub id: u64,
    pub addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsEntry {
    pub ca: PathBuf,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// How long one CLI request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl CliConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut config: CliConfig = atoll_api::config_file::load(path, &[])?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(tls) = &mut config.tls {
            resolve(&mut tls.ca);
            tls.cert.iter_mut().for_each(resolve);
            tls.key.iter_mut().for_each(resolve);
        }
        config.token_file.iter_mut().for_each(resolve);
        Ok(config)
    }

    /// Load `path`, or `./atoll.yaml` when none is given and it exists.
    pub fn find(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            Some(path) => Self::load(path),
            None if Path::new("atoll.yaml").exists() => Self::load(Path::new("atoll.yaml")),
            None => Ok(Self::default()),
        }
    }

    /// A client for replicas' APIs with the operator credentials (accepts replicas only).
    pub fn node_client(&self) -> anyhow::Result<NodeClient> {
        Ok(NodeClient::new(&self.operator_identity()?, ServerPolicy::AnyNode, REQUEST_TIMEOUT)?)
    }

    /// The operator's TLS identity (`tls.ca`, `tls.cert`, `tls.key`).
    pub fn operator_identity(&self) -> anyhow::Result<TlsIdentity> {
        let missing = "no operator credentials (tls.cert and tls.key): pass --config DIR/atoll.yaml (atoll dev writes one) or set ATOLL_CONFIG";
        let tls = self.tls.as_ref().context(missing)?;
        let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else { anyhow::bail!(missing) };
        Ok(TlsIdentity::load(&TlsFiles { ca: tls.ca.clone(), cert: cert.clone(), key: key.clone() })?)
    }

    /// The bearer token, from `token` or `token_file`.
    fn token(&self) -> anyhow::Result<Option<String>> {
        Ok(match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading token_file {}", file.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        })
    }

    /// The gateway replicas listed (`gateway`), tried in that order.
    pub fn gateway_addrs(&self) -> anyhow::Result<GatewayAddrs> {
        anyhow::ensure!(
            self.gateway.iter().any(|a| !a.trim().is_empty()),
            "no gateway in the CLI config (gateway: [host:port, ...])"
        );
        Ok(GatewayAddrs::new(&self.gateway))
    }

    fn gateway_tls(&self) -> anyhow::Result<rustls::ClientConfig> {
        let tls = self.tls.as_ref().context("no CA in the CLI config (tls.ca) to verify the gateway with")?;
        let trust = atoll_api::tls::TrustRoots::load(&tls.ca)?;
        Ok(trust.anonymous_client_config(ServerPolicy::Gateway)?)
    }

    /// A client of every gateway replica listed, with the bearer token when configured: each
    /// command goes to the first and moves to the next when one fails.
    pub fn gateway_client(&self) -> anyhow::Result<GatewayClient> {
        self.gateway_client_over(self.gateway_addrs()?)
    }

    /// A client of the gateway replicas of `addrs` (shared with the caller, who may have learned
    /// which one answers).
    pub fn gateway_client_over(&self, addrs: GatewayAddrs) -> anyhow::Result<GatewayClient> {
        Ok(GatewayClient::with_addrs(self.gateway_tls()?, addrs, self.token()?, REQUEST_TIMEOUT)?)
    }

    /// A plain HTTP client of the gateway sending the bearer token (for its blob routes), and
    /// the gateway replicas to try it on, in order.
    pub fn gateway_http(&self, timeout: Duration) -> anyhow::Result<(reqwest::Client, GatewayAddrs)> {
        let addrs = self.gateway_addrs()?;
        let tls = self.gateway_tls()?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = self.token()? {
            let mut value: reqwest::header::HeaderValue =
                format!("Bearer {token}").parse().context("the token is not a valid header value")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .build()?;
        Ok((http, addrs))
    }

    /// `--node`, else the first replica listed here.
    pub fn node_addr(&self, node: Option<&str>) -> anyhow::Result<String> {
        match node {
            Some(addr) => Ok(addr.to_string()),
            None => self
                .nodes
                .first()
                .map(|n| n.addr.clone())
                .context("no --node given and the CLI config lists no replicas"),
        }
    }
}

/// Parse a duration like `90s`, `30m`, `24h`, `30d`, `10y`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().with_context(|| format!("{text:?} is not a duration like 24h or 30d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "y" => 365 * 86_400,
        _ => anyhow::bail!("{text:?}: unknown unit {unit:?} (use s, m, h, d or y)"),
    };
    Ok(Duration::from_secs(n.checked_mul(secs).context("duration too large")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gateway_replica_listed_is_tried_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("atoll.yaml");
        let text =
            "gateway:\n  - \"10.0.0.1:7000\"\n  - \"10.0.0.2:7000\"\n  - \"gw-3.example:7000\"\ntls: {ca: ca.pem}\n";
        std::fs::write(&path, text).unwrap();
        let config = CliConfig::load(&path).unwrap();
        assert_eq!(config.gateway, ["10.0.0.1:7000", "10.0.0.2:7000", "gw-3.example:7000"]);
        let addrs = config.gateway_addrs().unwrap();
        assert_eq!(addrs.plan(), config.gateway, "the first listed first, then the others in order");
        assert_eq!(addrs.current(), "10.0.0.1:7000");

        let none = CliConfig { gateway: Vec::new(), ..CliConfig::default() };
        let err = none.gateway_addrs().unwrap_err().to_string();
        assert!(err.contains("no gateway in the CLI config"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("10y").unwrap(), Duration::from_secs(10 * 365 * 86_400));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("3w").is_err());
    }
}
