//! The `storage` section of the agent and gateway configs: exactly one of `local`, `s3`, `gcs`,
//! `azure` (as in InfraBox); `local` in the data directory when the section is absent.
//!
//! ```yaml
//! storage:
//!   s3:
//!     bucket: atoll-outputs
//!     region: eu-central-1
//!     endpoint: https://s3.example.internal   # optional: an S3-compatible server
//!     access_key_id: AKIA...
//!     secret_access_key_file: /run/secrets/s3 # or secret_access_key
//!     prefix: aws                             # optional: keys go under it
//! ```

use std::path::Path as FsPath;
use std::path::PathBuf;
use std::sync::Arc;

use atoll_api::config_file::ConfigError;
use atoll_api::config_file::read_secret;
use atoll_api::config_file::resolve;
use object_store::path::Path;
use serde::Deserialize;
use serde::Serialize;

use crate::StoreError;
use crate::backend::Backend;
use crate::backend::GcsJson;

/// The section as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFile {
    #[serde(default)]
    pub local: Option<LocalFile>,
    #[serde(default)]
    pub s3: Option<S3File>,
    #[serde(default)]
    pub gcs: Option<GcsFile>,
    #[serde(default)]
    pub azure: Option<AzureFile>,
}

/// Files under a directory on this machine.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalFile {
    /// The directory (relative paths are against the config file's directory); default
    /// `<data_dir>/blobs`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// fsync every written blob and its directory before the write counts as done.
    #[serde(default = "yes")]
    pub fsync: bool,
    /// The directory is the same for every gateway replica (one machine, or a volume every
    /// replica mounts read-write). Several gateway replicas refuse a local relay store without
    /// it: an output one replica stored must be readable through every other. Agents ignore it.
    #[serde(default)]
    pub shared: bool,
}

/// Amazon S3 or an S3-compatible server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3File {
    pub bucket: String,
    #[serde(default)]
    pub region: Option<String>,
    /// An S3-compatible server's URL instead of AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// Allow `http://` endpoints (test servers).
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub prefix: Option<String>,
}

/// Google Cloud Storage or a compatible server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GcsFile {
    pub bucket: String,
    /// Another base URL than Google's (a compatible server).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A service account key file; without one, the machine's default credentials.
    #[serde(default)]
    pub service_account_file: Option<PathBuf>,
    /// Send requests unsigned (a server that checks no credentials).
    #[serde(default)]
    pub anonymous: bool,
    #[serde(default)]
    pub prefix: Option<String>,
}

/// Azure Blob Storage or a compatible server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AzureFile {
    pub account: String,
    pub container: String,
    #[serde(default)]
    pub access_key: Option<String>,
    #[serde(default)]
    pub access_key_file: Option<PathBuf>,
    /// The account URL, when not `https://<account>.blob.core.windows.net`.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub prefix: Option<String>,
}

fn yes() -> bool {
    true
}

/// The checked section: secrets read, paths resolved.
#[derive(Clone, PartialEq, Eq)]
pub enum StorageConfig {
    Local {
        path: PathBuf,
        fsync: bool,
    },
    S3 {
        bucket: String,
        region: Option<String>,
        endpoint: Option<String>,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        allow_http: bool,
        prefix: String,
    },
    Gcs {
        bucket: String,
        endpoint: Option<String>,
        service_account_file: Option<PathBuf>,
        anonymous: bool,
        prefix: String,
    },
    Azure {
        account: String,
        container: String,
        access_key: Option<String>,
        endpoint: Option<String>,
        allow_http: bool,
        prefix: String,
    },
}

// Secrets never reach logs.
impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl StorageFile {
    /// Check the section found at `key` (`storage`) of the file `origin`; relative paths are
    /// against `base`; `default_local` is where blobs go without a section.
    pub fn check(
        self,
        origin: &str,
        key: &str,
        base: &FsPath,
        default_local: PathBuf,
    ) -> Result<StorageConfig, ConfigError> {
        let invalid = |sub: &str, message: String| {
            let at = if sub.is_empty() { key.to_string() } else { format!("{key}.{sub}") };
            ConfigError::invalid(origin, at, message)
        };
        let given: Vec<&str> = [
            self.local.as_ref().map(|_| "local"),
            self.s3.as_ref().map(|_| "s3"),
            self.gcs.as_ref().map(|_| "gcs"),
            self.azure.as_ref().map(|_| "azure"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() > 1 {
            return Err(invalid("", format!("give one of local, s3, gcs, azure (found {})", given.join(", "))));
        }
        let secret =
            |sub: &str, inline: Option<String>, file: Option<PathBuf>| -> Result<Option<String>, ConfigError> {
                match (inline, file) {
                    (Some(_), Some(_)) => Err(invalid(sub, format!("give one of {sub} and {sub}_file"))),
                    (Some(s), None) => Ok(Some(s)),
                    (None, Some(path)) => {
                        let path = resolve(base, &path);
                        let text = read_secret(&path)
                            .map_err(|e| invalid(&format!("{sub}_file"), format!("reading {}: {e}", path.display())))?;
                        Ok(Some(text))
                    }
                    (None, None) => Ok(None),
                }
            };
        let prefix = |sub: &str, p: Option<String>| -> Result<String, ConfigError> {
            let p = p.unwrap_or_default();
            let trimmed = p.trim_matches('/');
            if trimmed.split('/').any(|part| part == "." || part == "..") || trimmed.contains("//") {
                return Err(invalid(&format!("{sub}.prefix"), format!("{p:?} is not a plain key prefix")));
            }
            Ok(trimmed.to_string())
        };
        let not_empty = |sub: &str, value: &str| {
            if value.trim().is_empty() { Err(invalid(sub, "must not be empty".into())) } else { Ok(()) }
        };
        let url = |sub: &str, value: &Option<String>| match value {
            Some(v) if !(v.starts_with("http://") || v.starts_with("https://")) => {
                Err(invalid(sub, format!("{v:?} is not an http:// or https:// URL")))
            }
            _ => Ok(()),
        };
        if let Some(s3) = self.s3 {
            not_empty("s3.bucket", &s3.bucket)?;
            url("s3.endpoint", &s3.endpoint)?;
            let secret_access_key = secret("s3.secret_access_key", s3.secret_access_key, s3.secret_access_key_file)?;
            if s3.access_key_id.is_some() != secret_access_key.is_some() {
                return Err(invalid("s3", "give both access_key_id and secret_access_key, or neither".into()));
            }
            return Ok(StorageConfig::S3 {
                bucket: s3.bucket,
                region: s3.region,
                endpoint: s3.endpoint,
                access_key_id: s3.access_key_id,
                secret_access_key,
                allow_http: s3.allow_http,
                prefix: prefix("s3", s3.prefix)?,
            });
        }
        if let Some(gcs) = self.gcs {
            not_empty("gcs.bucket", &gcs.bucket)?;
            url("gcs.endpoint", &gcs.endpoint)?;
            if gcs.anonymous && gcs.service_account_file.is_some() {
                return Err(invalid("gcs", "anonymous and service_account_file exclude each other".into()));
            }
            return Ok(StorageConfig::Gcs {
                bucket: gcs.bucket,
                endpoint: gcs.endpoint,
                service_account_file: gcs.service_account_file.map(|p| resolve(base, &p)),
                anonymous: gcs.anonymous,
                prefix: prefix("gcs", gcs.prefix)?,
            });
        }
        if let Some(az) = self.azure {
            not_empty("azure.account", &az.account)?;
            not_empty("azure.container", &az.container)?;
            url("azure.endpoint", &az.endpoint)?;
            return Ok(StorageConfig::Azure {
                access_key: secret("azure.access_key", az.access_key, az.access_key_file)?,
                account: az.account,
                container: az.container,
                endpoint: az.endpoint,
                allow_http: az.allow_http,
                prefix: prefix("azure", az.prefix)?,
            });
        }
        let local = self.local.unwrap_or(LocalFile { path: None, fsync: true, shared: false });
        Ok(StorageConfig::Local {
            path: local.path.map(|p| resolve(base, &p)).unwrap_or(default_local),
            fsync: local.fsync,
        })
    }
}

impl StorageConfig {
    /// Local files under `path`, fsync'd.
    pub fn local(path: impl Into<PathBuf>) -> Self {
        StorageConfig::Local { path: path.into(), fsync: true }
    }

    /// For messages; never shows a secret.
    pub fn describe(&self) -> String {
        match self {
            StorageConfig::Local { path, fsync } => {
                format!("local {}{}", path.display(), if *fsync { "" } else { " (no fsync)" })
            }
            StorageConfig::S3 { bucket, endpoint, .. } => match endpoint {
                Some(e) => format!("s3 bucket {bucket:?} at {e}"),
                None => format!("s3 bucket {bucket:?}"),
            },
            StorageConfig::Gcs { bucket, endpoint, .. } => match endpoint {
                Some(e) => format!("gcs bucket {bucket:?} at {e}"),
                None => format!("gcs bucket {bucket:?}"),
            },
            StorageConfig::Azure { account, container, endpoint, .. } => match endpoint {
                Some(e) => format!("azure container {container:?} of {account:?} at {e}"),
                None => format!("azure container {container:?} of {account:?}"),
            },
        }
    }

    /// Transient failures (5xx, resets) are retried a few times within a bound; a store that
    /// stays away fails the call with its error well before a lease or a transfer times out.
    fn retry() -> object_store::RetryConfig {
        object_store::RetryConfig {
            backoff: object_store::BackoffConfig::default(),
            max_retries: 4,
            retry_timeout: std::time::Duration::from_secs(30),
        }
    }

    pub(crate) fn build(&self) -> Result<(Backend, Path, String), StoreError> {
        let name = self.describe();
        let fail = |e: object_store::Error| StoreError::Config(format!("{name}: {e}"));
        let key_prefix = |p: &str| Path::parse(p).map_err(|e| StoreError::Config(format!("{name}: prefix {p:?}: {e}")));
        match self {
            StorageConfig::Local { path, fsync } => {
                std::fs::create_dir_all(path).map_err(|e| StoreError::io(path, e))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(path)
                    .map_err(fail)?
                    .with_fsync(*fsync)
                    .with_automatic_cleanup(true);
                Ok((Backend::Store(Arc::new(store)), Path::default(), name))
            }
            StorageConfig::S3 { bucket, region, endpoint, access_key_id, secret_access_key, allow_http, prefix } => {
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region.clone().unwrap_or_else(|| "us-east-1".into()))
                    .with_allow_http(*allow_http)
                    .with_retry(Self::retry());
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e);
                }
                if let (Some(id), Some(key)) = (access_key_id, secret_access_key) {
                    b = b.with_access_key_id(id).with_secret_access_key(key);
                }
                Ok((Backend::Store(Arc::new(b.build().map_err(fail)?)), key_prefix(prefix)?, name))
            }
            StorageConfig::Gcs { bucket, endpoint, service_account_file, anonymous, prefix } => {
                // Only object_store's credential resolution is used (see `backend`).
                let credentials = if *anonymous {
                    None
                } else {
                    let mut b = object_store::gcp::GoogleCloudStorageBuilder::new().with_bucket_name(bucket);
                    if let Some(f) = service_account_file {
                        b = b.with_service_account_path(f.display().to_string());
                    }
                    Some(b.build().map_err(fail)?.credentials().clone())
                };
                let http = reqwest::Client::builder()
                    .connect_timeout(std::time::Duration::from_secs(10))
                    .timeout(std::time::Duration::from_secs(120))
                    .build()
                    .map_err(|e| StoreError::Config(format!("{name}: {e}")))?;
                let gcs = GcsJson {
                    http,
                    base: endpoint
                        .clone()
                        .unwrap_or_else(|| "https://storage.googleapis.com".into())
                        .trim_end_matches('/')
                        .to_string(),
                    bucket: bucket.clone(),
                    credentials,
                };
                Ok((Backend::Gcs(gcs), key_prefix(prefix)?, name))
            }
            StorageConfig::Azure { account, container, access_key, endpoint, allow_http, prefix } => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::new()
                    .with_account(account)
                    .with_container_name(container)
                    .with_allow_http(*allow_http)
                    .with_retry(Self::retry());
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e.clone());
                }
                if let Some(k) = access_key {
                    b = b.with_access_key(k);
                }
                Ok((Backend::Store(Arc::new(b.build().map_err(fail)?)), key_prefix(prefix)?, name))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<StorageConfig, String> {
        let file: StorageFile = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        file.check("agent.yaml", "storage", FsPath::new("/etc/atoll"), PathBuf::from("/data/blobs"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn absent_means_local_in_the_data_dir_with_fsync() {
        assert_eq!(check("{}").unwrap(), StorageConfig::Local { path: "/data/blobs".into(), fsync: true });
        assert_eq!(
            check("local: {path: blobs, fsync: false}").unwrap(),
            StorageConfig::Local { path: "/etc/atoll/blobs".into(), fsync: false }
        );
    }

    #[test]
    fn each_error_names_its_key() {
        let cases = [
            ("local: {}\ns3: {bucket: b}", "agent.yaml: storage: give one of local, s3, gcs, azure (found local, s3)"),
            ("s3: {bucket: ''}", "storage.s3.bucket: must not be empty"),
            ("s3: {bucket: b, endpoint: 'minio:9000'}", "storage.s3.endpoint: \"minio:9000\" is not an http"),
            ("s3: {bucket: b, access_key_id: a}", "storage.s3: give both access_key_id and secret_access_key"),
            (
                "s3: {bucket: b, access_key_id: a, secret_access_key: s, secret_access_key_file: f}",
                "storage.s3.secret_access_key: give one of",
            ),
            (
                "s3: {bucket: b, access_key_id: a, secret_access_key_file: /nonexistent/x}",
                "storage.s3.secret_access_key_file: reading /nonexistent/x",
            ),
            ("s3: {bucket: b, prefix: 'a/../b'}", "storage.s3.prefix: \"a/../b\" is not a plain key prefix"),
            (
                "gcs: {bucket: b, anonymous: true, service_account_file: k.json}",
                "storage.gcs: anonymous and service_account_file",
            ),
            ("azure: {account: a, container: ''}", "storage.azure.container: must not be empty"),
        ];
        for (yaml, want) in cases {
            let err = check(yaml).unwrap_err();
            assert!(err.contains(want), "{yaml}: {err}");
        }
        assert!(check("s4: {bucket: b}").unwrap_err().contains("unknown field `s4`"));
        assert!(check("s3: {bucket: b, region: r, colour: red}").unwrap_err().contains("unknown field `colour`"));
    }

    #[test]
    fn secrets_come_from_files_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "s3cr3t\n").unwrap();
        let file: StorageFile =
            serde_yaml_ng::from_str("s3: {bucket: b, access_key_id: id, secret_access_key_file: key}").unwrap();
        let config = file.check("agent.yaml", "storage", dir.path(), PathBuf::from("/x")).unwrap();
        match &config {
            StorageConfig::S3 { secret_access_key, .. } => assert_eq!(secret_access_key.as_deref(), Some("s3cr3t")),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{config:?}").contains("s3cr3t"));
        assert_eq!(config.describe(), "s3 bucket \"b\"");
    }
}
