//! `atoll gateway` configuration: the YAML file as written, and the checked runtime form.
//!
//! Every key is documented here and in `docs/configuration.md`. Relative paths are resolved
//! against the config file's directory; secrets can be read from `*_file` paths.

use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use atoll_api::config_file::ConfigError;
use atoll_api::config_file::resolve;
use serde::Deserialize;
use serde::Serialize;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// This gateway replica's id; its certificate names `spiffe://atoll/gateway/<id>`.
    #[serde(default = "default_id")]
    pub id: String,
    /// `ip:port` of the HTTPS listener: agents present certificates, users bearer tokens,
    /// enrolling replicas a join token.
    pub listen: String,
    /// `host:port` clients use to reach this gateway; defaults to `listen`.
    #[serde(default)]
    pub host: Option<String>,
    /// DNS names and IP addresses the gateway's own certificate carries besides the host of
    /// `host` and the IP address of `listen` (other names clients reach it at: a load
    /// balancer, a Service), so that standard HTTPS clients accept it.
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// `ip:port` of the plain-HTTP ops listener (`/healthz`, `/readyz`, `/metrics`).
    #[serde(default)]
    pub ops_listen: Option<String>,
    /// Where the registry, tokens and matrix live.
    #[serde(default)]
    pub database: DatabaseFile,
    /// Directory of the mesh CA (`ca.pem`, `ca-key.pem`); created at first start when empty.
    pub ca_dir: PathBuf,
    /// Where to write a fresh admin token at first start (when the database has no admin
    /// token yet). Written with mode 0600; nothing is written when an admin token exists.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    #[serde(default)]
    pub clusters: ClustersFile,
    #[serde(default)]
    pub matrix: MatrixFile,
    #[serde(default)]
    pub certificates: CertificatesFile,
    #[serde(default)]
    pub tokens: TokensFile,
    #[serde(default)]
    pub retention: RetentionFile,
    /// Budget of an orderly shutdown, in milliseconds.
    #[serde(default = "default_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// The relay store: outputs on their way between clusters that cannot reach each other
    /// (one of `local|s3|gcs|azure`; `local` at `blobs/` beside this file by default).
    #[serde(default)]
    pub storage: atoll_store::StorageFile,
    /// Several gateway replicas over one PostgreSQL database (`docs/ha.md`).
    #[serde(default)]
    pub ha: HaFile,
    /// The dashboard: web pages on an HTTPS listener of their own (`docs/dashboard.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<DashboardFile>,
}

/// The dashboard's listener and sessions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardFile {
    /// `ip:port` of its HTTPS listener (the gateway's certificate; no client certificate).
    pub listen: String,
    /// How long a sign-in lasts, in seconds.
    #[serde(default = "default_session_ttl_s")]
    pub session_ttl_s: u64,
}

pub fn default_session_ttl_s() -> u64 {
    12 * 3_600
}

/// Gateway replicas: every replica serves the whole API; the duties that must run once (the
/// scheduling pass, rerouting a dead cluster's work, retention) belong to the holder of a lease
/// in the database, whose generation grows with each new holder.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HaFile {
    /// This gateway is one of several replicas. Needs `database.postgres` and a relay store
    /// every replica reads (`s3`, `gcs`, `azure`, or `local` with `shared: true`). Off: the
    /// only gateway, which takes the lease at once at start.
    #[serde(default)]
    pub enabled: bool,
    /// The lease lasts this long after its last renewal, in milliseconds (by the database's
    /// clock); another replica takes it once it has run out.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// The holder renews this often; it stops acting as holder once its last renewal is older
    /// than `lease_ttl_ms` less one renew interval (by its own monotonic clock).
    #[serde(default = "default_lease_renew_ms")]
    pub renew_interval_ms: u64,
    /// The other replicas try to take the lease this often.
    #[serde(default = "default_lease_retry_ms")]
    pub retry_interval_ms: u64,
}

impl Default for HaFile {
    fn default() -> Self {
        Self {
            enabled: false,
            lease_ttl_ms: default_lease_ttl_ms(),
            renew_interval_ms: default_lease_renew_ms(),
            retry_interval_ms: default_lease_retry_ms(),
        }
    }
}

/// Exactly one of `sqlite` and `postgres`; SQLite at `gateway.db` when the section is absent.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseFile {
    /// The embedded default: one SQLite file (WAL, busy timeout, one writer).
    #[serde(default)]
    pub sqlite: Option<SqliteFile>,
    /// PostgreSQL, for production (and several gateway replicas).
    #[serde(default)]
    pub postgres: Option<PostgresFile>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteFile {
    /// The database file; created when absent.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresFile {
    /// `postgres://user:password@host:port/database`.
    #[serde(default)]
    pub url: Option<String>,
    /// A file holding the URL (a mounted secret); takes the place of `url`.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Connection pool size.
    #[serde(default = "default_pg_pool")]
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClustersFile {
    /// How often cluster leaders heartbeat (told to them at each heartbeat), in milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// A cluster not heard from for this long is `suspect`.
    #[serde(default = "default_suspect_ms")]
    pub suspect_after_ms: u64,
    /// A cluster not heard from for this long is `dead`.
    #[serde(default = "default_dead_ms")]
    pub dead_after_ms: u64,
}

impl Default for ClustersFile {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: default_heartbeat_ms(),
            suspect_after_ms: default_suspect_ms(),
            dead_after_ms: default_dead_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixFile {
    /// How often each leader probes every other cluster, in milliseconds.
    #[serde(default = "default_probe_ms")]
    pub probe_interval_ms: u64,
    /// Deadline of one probe.
    #[serde(default = "default_probe_timeout_ms")]
    pub probe_timeout_ms: u64,
    /// Leaders report their whole row at least this often (and at once on any change).
    #[serde(default = "default_row_ms")]
    pub row_interval_ms: u64,
    /// Cells of a reporter not heard from (no row, no heartbeat) for this long are `unknown`.
    #[serde(default = "default_stale_ms")]
    pub stale_after_ms: u64,
}

impl Default for MatrixFile {
    fn default() -> Self {
        Self {
            probe_interval_ms: default_probe_ms(),
            probe_timeout_ms: default_probe_timeout_ms(),
            row_interval_ms: default_row_ms(),
            stale_after_ms: default_stale_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatesFile {
    /// Lifetime of certificates issued to replicas, in seconds (they renew at two thirds).
    #[serde(default = "default_cert_lifetime_s")]
    pub lifetime_s: u64,
}

impl Default for CertificatesFile {
    fn default() -> Self {
        Self { lifetime_s: default_cert_lifetime_s() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// Default lifetime of a join token, in seconds.
    #[serde(default = "default_join_ttl_s")]
    pub join_ttl_s: u64,
}

impl Default for TokensFile {
    fn default() -> Self {
        Self { join_ttl_s: default_join_ttl_s() }
    }
}

/// How long outputs, sources and work directories are kept once nothing needs them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// Seconds a blob is kept after the last job that uses it (its producer, every child that
    /// reads it, every job built from it as a source) ended, and a pushed source after its last
    /// push; also how long a finished attempt's work directory stays on its replica.
    #[serde(default = "default_keep_s")]
    pub keep_s: u64,
    /// Milliseconds between two passes over a store (the relay store here; each replica's own
    /// store and work directories there).
    #[serde(default = "default_gc_interval_ms")]
    pub interval_ms: u64,
}

impl Default for RetentionFile {
    fn default() -> Self {
        Self { keep_s: default_keep_s(), interval_ms: default_gc_interval_ms() }
    }
}

fn default_lease_ttl_ms() -> u64 {
    5_000
}
fn default_lease_renew_ms() -> u64 {
    1_000
}
fn default_lease_retry_ms() -> u64 {
    500
}
fn default_keep_s() -> u64 {
    86_400
}
fn default_gc_interval_ms() -> u64 {
    60_000
}
fn default_id() -> String {
    "main".to_string()
}
fn default_grace_ms() -> u64 {
    5_000
}
fn default_pg_pool() -> u32 {
    16
}
fn default_heartbeat_ms() -> u64 {
    1_000
}
fn default_suspect_ms() -> u64 {
    3_000
}
fn default_dead_ms() -> u64 {
    10_000
}
fn default_probe_ms() -> u64 {
    1_000
}
fn default_probe_timeout_ms() -> u64 {
    500
}
fn default_row_ms() -> u64 {
    10_000
}
fn default_stale_ms() -> u64 {
    5_000
}
fn default_cert_lifetime_s() -> u64 {
    86_400
}
fn default_join_ttl_s() -> u64 {
    3_600
}

/// Where the gateway's data lives, checked.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite {
        path: PathBuf,
    },
    /// `idle_in_transaction`: the server ends a transaction left idle this long (the lease TTL).
    Postgres {
        url: String,
        max_connections: u32,
        idle_in_transaction: Duration,
    },
}

/// The checked runtime configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub id: String,
    pub listen: SocketAddr,
    pub advertise: String,
    /// The DNS names and IP addresses of the own certificate: the host of `host`, the IP of
    /// `listen` (unless unspecified), then `tls_names`.
    pub tls_names: Vec<atoll_api::pki::HostName>,
    pub ops_listen: Option<SocketAddr>,
    pub database: Database,
    pub ca_dir: PathBuf,
    pub admin_token_file: Option<PathBuf>,
    pub heartbeat_interval: Duration,
    pub suspect_after: Duration,
    pub dead_after: Duration,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub row_interval: Duration,
    pub stale_after: Duration,
    pub cert_lifetime: Duration,
    pub join_ttl: Duration,
    pub shutdown_grace: Duration,
    pub storage: atoll_store::StorageConfig,
    /// How long what nothing needs any more is kept (`retention.keep_s`).
    pub keep: Duration,
    /// Between two retention passes (`retention.interval_ms`).
    pub gc_interval: Duration,
    /// The duties lease (`ha`).
    pub ha: Ha,
    /// The dashboard, when it is on (`dashboard`).
    pub dashboard: Option<Dashboard>,
}

/// The dashboard, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dashboard {
    pub listen: SocketAddr,
    pub session_ttl: Duration,
}

/// The duties lease, checked (`ha`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ha {
    /// One of several replicas (`ha.enabled`).
    pub enabled: bool,
    pub lease_ttl: Duration,
    pub renew_interval: Duration,
    pub retry_interval: Duration,
}

impl Ha {
    /// How long after a renewal was sent the holder still acts on it: the lease's TTL less one
    /// renew interval, so that it stops before anyone else can take the lease.
    pub fn acts_for(&self) -> Duration {
        self.lease_ttl.saturating_sub(self.renew_interval)
    }
}

impl GatewayConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file: GatewayFile = atoll_api::config_file::load(path, &atoll_api::config_file::env_overrides())?;
        Self::check(file, &path.display().to_string(), &atoll_api::config_file::base_dir(path))
    }

    /// [`Self::load`], and the effective config as YAML (`--check-config`): the file with
    /// overrides and defaults, secrets redacted.
    pub fn load_effective(path: &Path) -> Result<(Self, String), ConfigError> {
        let file: GatewayFile = atoll_api::config_file::load(path, &atoll_api::config_file::env_overrides())?;
        let origin = path.display().to_string();
        let config = Self::check(file.clone(), &origin, &atoll_api::config_file::base_dir(path))?;
        let effective = atoll_api::config_file::effective_yaml(&file, &[])
            .map_err(|e| ConfigError::invalid(&origin, "(effective config)", e))?;
        Ok((config, effective))
    }

    pub fn check(file: GatewayFile, origin: &str, base: &Path) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::invalid(origin, key, message);
        if (atoll_api::Identity::Gateway { id: file.id.clone() }).uri().parse::<atoll_api::Identity>().is_err() {
            return Err(invalid("id", format!("{:?} must be 1 to 63 of [a-z0-9._-]", file.id)));
        }
        let listen: SocketAddr = file
            .listen
            .parse()
            .map_err(|e| invalid("listen", format!("{:?} is not an ip:port address: {e}", file.listen)))?;
        let advertise = file.host.clone().unwrap_or_else(|| file.listen.clone());
        if listen.ip().is_unspecified() && file.host.is_none() {
            return Err(invalid("host", format!("required when listen is {listen}")));
        }
        let tls_names = atoll_api::pki::configured_server_names(&advertise, listen, &file.tls_names, "tls_names")
            .map_err(|(key, message)| invalid(&key, message))?;
        let dashboard = match &file.dashboard {
            None => None,
            Some(d) => {
                let listen: SocketAddr = d.listen.parse().map_err(|e| {
                    invalid("dashboard.listen", format!("{:?} is not an ip:port address: {e}", d.listen))
                })?;
                if listen == file.listen.parse().unwrap_or(listen) && listen.port() != 0 {
                    return Err(invalid("dashboard.listen", "must differ from listen".into()));
                }
                if d.session_ttl_s < 60 || d.session_ttl_s > 30 * 86_400 {
                    return Err(invalid("dashboard.session_ttl_s", "must be within 60..=2592000 (30 days)".into()));
                }
                Some(Dashboard { listen, session_ttl: Duration::from_secs(d.session_ttl_s) })
            }
        };
        let ops_listen = match &file.ops_listen {
            Some(addr) => Some(
                addr.parse().map_err(|e| invalid("ops_listen", format!("{addr:?} is not an ip:port address: {e}")))?,
            ),
            None => None,
        };
        let database = match (file.database.sqlite.clone(), file.database.postgres.clone()) {
            (Some(_), Some(_)) => {
                return Err(invalid("database", "give one of database.sqlite and database.postgres".into()));
            }
            (Some(SqliteFile { path }), None) => Database::Sqlite { path: resolve(base, &path) },
            (None, None) => Database::Sqlite { path: resolve(base, Path::new("gateway.db")) },
            (None, Some(PostgresFile { url, url_file, max_connections })) => {
                let url = match (url, url_file) {
                    (Some(url), None) => url,
                    (None, Some(file)) => {
                        let file = resolve(base, &file);
                        atoll_api::config_file::read_secret(&file)
                            .map_err(|e| invalid("database.postgres.url_file", format!("{}: {e}", file.display())))?
                    }
                    _ => return Err(invalid("database.postgres", "give exactly one of url and url_file".into())),
                };
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(invalid("database.postgres.url", "must start with postgres://".into()));
                }
                if max_connections == 0 {
                    return Err(invalid("database.postgres.max_connections", "must be 1 or more".into()));
                }
                Database::Postgres {
                    url,
                    max_connections,
                    idle_in_transaction: Duration::from_millis(file.ha.lease_ttl_ms),
                }
            }
        };
        let ms = Duration::from_millis;
        let c = &file.clusters;
        if c.heartbeat_interval_ms == 0 {
            return Err(invalid("clusters.heartbeat_interval_ms", "must be 1 or more".into()));
        }
        if c.suspect_after_ms <= c.heartbeat_interval_ms {
            return Err(invalid("clusters.suspect_after_ms", "must exceed clusters.heartbeat_interval_ms".into()));
        }
        if c.dead_after_ms <= c.suspect_after_ms {
            return Err(invalid("clusters.dead_after_ms", "must exceed clusters.suspect_after_ms".into()));
        }
        let m = &file.matrix;
        if m.probe_interval_ms == 0 || m.probe_timeout_ms == 0 {
            return Err(invalid("matrix.probe_interval_ms", "probe interval and timeout must be 1 or more".into()));
        }
        if m.probe_timeout_ms >= m.probe_interval_ms {
            return Err(invalid("matrix.probe_timeout_ms", "must be shorter than matrix.probe_interval_ms".into()));
        }
        if m.stale_after_ms <= c.heartbeat_interval_ms {
            return Err(invalid("matrix.stale_after_ms", "must exceed clusters.heartbeat_interval_ms".into()));
        }
        if m.row_interval_ms < m.probe_interval_ms {
            return Err(invalid("matrix.row_interval_ms", "must be at least matrix.probe_interval_ms".into()));
        }
        if file.certificates.lifetime_s < 60 {
            return Err(invalid("certificates.lifetime_s", "must be at least 60".into()));
        }
        if file.tokens.join_ttl_s == 0 {
            return Err(invalid("tokens.join_ttl_s", "must be 1 or more".into()));
        }
        if file.retention.keep_s == 0 {
            return Err(invalid("retention.keep_s", "must be 1 or more".into()));
        }
        if file.retention.interval_ms < 100 {
            return Err(invalid("retention.interval_ms", "must be at least 100".into()));
        }
        let ha = check_ha(&file, &database, &invalid)?;
        Ok(Self {
            id: file.id,
            listen,
            advertise,
            tls_names,
            ops_listen,
            dashboard,
            database,
            ca_dir: resolve(base, &file.ca_dir),
            admin_token_file: file.admin_token_file.map(|p| resolve(base, &p)),
            heartbeat_interval: ms(c.heartbeat_interval_ms),
            suspect_after: ms(c.suspect_after_ms),
            dead_after: ms(c.dead_after_ms),
            probe_interval: ms(m.probe_interval_ms),
            probe_timeout: ms(m.probe_timeout_ms),
            row_interval: ms(m.row_interval_ms),
            stale_after: ms(m.stale_after_ms),
            cert_lifetime: Duration::from_secs(file.certificates.lifetime_s),
            join_ttl: Duration::from_secs(file.tokens.join_ttl_s),
            shutdown_grace: ms(file.shutdown_grace_ms),
            storage: file.storage.check(origin, "storage", base, resolve(base, Path::new("blobs")))?,
            keep: Duration::from_secs(file.retention.keep_s),
            gc_interval: ms(file.retention.interval_ms),
            ha,
        })
    }
}

/// The `ha` section, against the database and relay store it would run on.
fn check_ha(
    file: &GatewayFile,
    database: &Database,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Ha, ConfigError> {
    let h = &file.ha;
    if h.renew_interval_ms == 0 || h.retry_interval_ms == 0 {
        return Err(invalid("ha.renew_interval_ms", "renew and retry intervals must be 1 or more".into()));
    }
    if h.lease_ttl_ms < 2 * h.renew_interval_ms {
        return Err(invalid(
            "ha.lease_ttl_ms",
            format!(
                "{} must be at least twice ha.renew_interval_ms ({}): the holder needs a renewal to spare",
                h.lease_ttl_ms, h.renew_interval_ms
            ),
        ));
    }
    if h.enabled {
        if let Database::Sqlite { .. } = database {
            return Err(invalid(
                "ha.enabled",
                "several gateway replicas need database.postgres: a SQLite file belongs to one gateway".into(),
            ));
        }
        let local = &file.storage.local;
        let other = file.storage.s3.is_some() || file.storage.gcs.is_some() || file.storage.azure.is_some();
        if !other && !local.as_ref().is_some_and(|l| l.shared) {
            return Err(invalid(
                "storage.local.shared",
                "several gateway replicas need a relay store every replica reads: s3, gcs, azure, or a local directory they all mount, marked shared: true".into(),
            ));
        }
    }
    let ms = Duration::from_millis;
    Ok(Ha {
        enabled: h.enabled,
        lease_ttl: ms(h.lease_ttl_ms),
        renew_interval: ms(h.renew_interval_ms),
        retry_interval: ms(h.retry_interval_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<GatewayConfig, ConfigError> {
        let file: GatewayFile = atoll_api::config_file::parse(text, "gateway.yaml", &[])?;
        GatewayConfig::check(file, "gateway.yaml", Path::new("/etc/atoll"))
    }

    #[test]
    fn defaults_and_paths() {
        let config = check("listen: 127.0.0.1:7000\nca_dir: ca\n").unwrap();
        assert!(matches!(config.database, Database::Sqlite { ref path } if path == Path::new("/etc/atoll/gateway.db")));
        assert_eq!(config.ca_dir, Path::new("/etc/atoll/ca"));
        assert_eq!(config.heartbeat_interval, Duration::from_secs(1));
        assert_eq!((config.keep, config.gc_interval), (Duration::from_secs(86_400), Duration::from_secs(60)));
        assert_eq!(config.tls_names, vec![atoll_api::pki::HostName::Ip([127, 0, 0, 1].into())]);
        let config =
            check("listen: 127.0.0.1:7000\nca_dir: ca\ndatabase: {postgres: {url: \"postgres://a@b/c\"}}\n").unwrap();
        assert!(matches!(config.database, Database::Postgres { .. }));
        assert!(!config.ha.enabled);
        let pg = "database: {postgres: {url: \"postgres://a@b/c\"}}\n";
        for storage in ["storage: {local: {path: /shared, shared: true}}\n", "storage: {s3: {bucket: b, region: r}}\n"]
        {
            let config =
                check(&format!("listen: 127.0.0.1:7000\nca_dir: ca\nha: {{enabled: true}}\n{pg}{storage}")).unwrap();
            assert!(config.ha.enabled);
            assert_eq!(config.ha.acts_for(), Duration::from_secs(4));
        }
    }

    #[test]
    fn the_certificate_names_the_advertised_host_the_listen_address_and_the_extra_names() {
        use atoll_api::pki::HostName;
        let config = check(
            "listen: 0.0.0.0:7000\nhost: Gateway.Example:7000\nca_dir: ca\ntls_names: [10.0.0.5, gw.internal, gateway.example]\n",
        )
        .unwrap();
        assert_eq!(
            config.tls_names,
            vec![
                HostName::Dns("gateway.example".into()),
                HostName::Ip([10, 0, 0, 5].into()),
                HostName::Dns("gw.internal".into())
            ]
        );
        let config = check("listen: 10.1.2.3:7000\nhost: \"[::1]:7000\"\nca_dir: ca\n").unwrap();
        assert_eq!(config.tls_names, vec![HostName::Ip("::1".parse().unwrap()), HostName::Ip([10, 1, 2, 3].into())]);
    }

    #[test]
    fn errors_name_the_key() {
        let base = "listen: 127.0.0.1:7000\nca_dir: ca\n";
        let cases = [
            (format!("{base}clusters: {{suspect_after_ms: 500}}\n"), "clusters.suspect_after_ms"),
            (format!("{base}clusters: {{dead_after_ms: 2000}}\n"), "clusters.dead_after_ms"),
            (format!("{base}matrix: {{probe_timeout_ms: 2000}}\n"), "matrix.probe_timeout_ms"),
            (format!("{base}database: {{postgres: {{url: \"mysql://x\"}}}}\n"), "database.postgres.url"),
            (format!("{base}database: {{postgres: {{}}}}\n"), "database.postgres"),
            (format!("{base}database: {{oracle: {{}}}}\n"), "database.oracle"),
            (format!("{base}database: {{sqlite: {{path: x}}, postgres: {{url: \"postgres://a\"}}}}\n"), "database"),
            (format!("{base}id: \"Bad Id\"\n"), "id"),
            (format!("{base}tls_names: [gateway.example, \"*.example\"]\n"), "tls_names[1]"),
            (format!("{base}host: \"bad name:7000\"\n"), "host"),
            (format!("{base}retention: {{keep_s: 0}}\n"), "retention.keep_s"),
            (format!("{base}retention: {{interval_ms: 5}}\n"), "retention.interval_ms"),
            (format!("{base}retention: {{keep: 5}}\n"), "retention.keep"),
            (format!("{base}ha: {{enabled: true}}\n"), "ha.enabled"),
            (
                format!("{base}ha: {{enabled: true}}\ndatabase: {{postgres: {{url: \"postgres://a\"}}}}\n"),
                "storage.local.shared",
            ),
            (format!("{base}ha: {{lease_ttl_ms: 1000, renew_interval_ms: 800}}\n"), "ha.lease_ttl_ms"),
            (format!("{base}ha: {{renew_interval_ms: 0}}\n"), "ha.renew_interval_ms"),
            (format!("{base}ha: {{replicas: 3}}\n"), "ha.replicas"),
            ("listen: nowhere\nca_dir: ca\n".to_string(), "listen"),
            (format!("{base}dashboard: {{listen: nowhere}}\n"), "dashboard.listen"),
            (format!("{base}dashboard: {{listen: \"127.0.0.1:7000\"}}\n"), "dashboard.listen"),
            (format!("{base}dashboard: {{listen: \"127.0.0.1:7443\", session_ttl_s: 5}}\n"), "dashboard.session_ttl_s"),
            (format!("{base}dashboard: {{port: 7443}}\n"), "dashboard.port"),
        ];
        for (text, key) in cases {
            let err = check(&text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("gateway.yaml: {key}")), "expected {key}, got {err}");
        }
    }
}
