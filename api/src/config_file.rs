//! Loading YAML config files: unknown keys rejected, every error naming the file and the key,
//! environment overrides for containers.
//!
//! An override is an environment variable `ATOLL__<KEY>__<KEY>=<YAML value>`: the double
//! underscores separate path segments, segments are lowercased
//! (`ATOLL__CLUSTER__NAME=aws`, `ATOLL__CLUSTER__LABELS='[aws, default]'`). Overrides are applied
//! to the parsed document before it is checked, so they are checked like the file itself.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml_ng::Mapping;
use serde_yaml_ng::Value;

/// A YAML value, for [`effective_yaml`]'s derived values.
pub use serde_yaml_ng::Value as YamlValue;

/// Prefix of override variables.
pub const ENV_PREFIX: &str = "ATOLL__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {key}: {message}")]
    Invalid { origin: String, key: String, message: String },
}

impl ConfigError {
    /// A semantic error found after parsing (a value out of range, inconsistent settings).
    pub fn invalid(origin: &str, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { origin: origin.to_string(), key: key.into(), message: message.into() }
    }
}

/// The override variables present in the process environment.
pub fn env_overrides() -> Vec<(String, String)> {
    std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect()
}

/// `path` as written in a config file whose directory is `base` (relative paths are against it).
pub fn resolve(base: &Path, path: &Path) -> std::path::PathBuf {
    if path.is_absolute() { path.to_path_buf() } else { base.join(path) }
}

/// A secret kept in a file (a mounted secret): its text without surrounding whitespace.
pub fn read_secret(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

/// The directory relative paths in the config file at `path` are resolved against: its own,
/// made absolute (a process may run with another working directory, as a job does).
pub fn base_dir(path: &Path) -> std::path::PathBuf {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
}

/// Keys whose values are secrets: shown as `<redacted>` in an effective config. A key ending in
/// `_file` names a file and is shown as it is.
const SECRET_KEYS: &[&str] = &["join_token", "secret_access_key", "access_key", "token", "password"];

/// The effective config as YAML, for `--check-config`: `file` as parsed (overrides applied,
/// defaults filled in), with `set` (`a.b` paths and values the check derived, such as a node id
/// from the host name) written in, secrets redacted, and a PostgreSQL URL's password hidden.
pub fn effective_yaml<T: serde::Serialize>(file: &T, set: &[(&str, Value)]) -> Result<String, String> {
    let mut doc = serde_yaml_ng::to_value(file).map_err(|e| e.to_string())?;
    for (path, value) in set {
        let mut at = &mut doc;
        let segments: Vec<&str> = path.split('.').collect();
        for (i, segment) in segments.iter().enumerate() {
            let Value::Mapping(map) = at else { return Err(format!("{path}: not a mapping at {segment}")) };
            let key = Value::String(segment.to_string());
            if i + 1 == segments.len() {
                map.insert(key, value.clone());
                break;
            }
            at = map.entry(key).or_insert_with(|| Value::Mapping(Mapping::new()));
        }
    }
    redact(&mut doc);
    serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())
}

/// Hide secrets in place: values of [`SECRET_KEYS`], and the password of any `url` holding one.
fn redact(value: &mut Value) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map.iter_mut() {
                let key = key.as_str().unwrap_or_default();
                if SECRET_KEYS.contains(&key) && !child.is_null() {
                    *child = Value::String("<redacted>".into());
                } else if key == "url" {
                    if let Some(url) = child.as_str() {
                        *child = Value::String(hide_password(url));
                    }
                } else {
                    redact(child);
                }
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `scheme://user:password@host/...` with the password replaced; other text as it is.
fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Read and parse `path`, applying `overrides` (see [`env_overrides`]).
pub fn load<T: DeserializeOwned>(path: &Path, overrides: &[(String, String)]) -> Result<T, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { origin: origin.clone(), source })?;
    parse(&text, &origin, overrides)
}

/// Parse YAML `text`; `origin` names it in errors.
pub fn parse<T: DeserializeOwned>(text: &str, origin: &str, overrides: &[(String, String)]) -> Result<T, ConfigError> {
    let mut doc: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ConfigError::Syntax { origin: origin.to_string(), message: e.to_string() })?;
    if doc.is_null() {
        doc = Value::Mapping(Mapping::new());
    }
    for (var, raw) in overrides {
        apply_override(&mut doc, var, raw).map_err(|message| ConfigError::Invalid {
            origin: origin.to_string(),
            key: var.clone(),
            message,
        })?;
    }
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let key = e.path().to_string();
        let mut message = e.into_inner().to_string();
        if let Some(var) = overrides.iter().map(|(var, _)| var).find(|var| override_sets(var, &key)) {
            message.push_str(&format!(" (set by the environment variable {var})"));
        }
        ConfigError::Invalid {
            origin: origin.to_string(),
            key: if key == "." { "(top level)".to_string() } else { key },
            message,
        }
    })
}

/// Whether the override `var` set the key `key` (a dotted path) or a key inside it or around it.
fn override_sets(var: &str, key: &str) -> bool {
    let Some(path) = var.strip_prefix(ENV_PREFIX) else { return false };
    let path = path.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join(".");
    path == key || path.starts_with(&format!("{key}.")) || key.starts_with(&format!("{path}."))
}

fn apply_override(doc: &mut Value, var: &str, raw: &str) -> Result<(), String> {
    let Some(path) = var.strip_prefix(ENV_PREFIX) else { return Ok(()) };
    let segments: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if segments.iter().any(String::is_empty) {
        return Err("empty key segment in the variable name".to_string());
    }
    let value: Value = serde_yaml_ng::from_str(raw).map_err(|e| format!("value is not valid YAML: {e}"))?;
    let mut node = doc;
    for (i, segment) in segments.iter().enumerate() {
        let Value::Mapping(map) = node else {
            return Err(format!("{} is not a mapping", segments[..i].join(".")));
        };
        let key = Value::String(segment.clone());
        if i + 1 == segments.len() {
            map.insert(key, value);
            return Ok(());
        }
        node = map.entry(key).or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        name: String,
        #[serde(default)]
        labels: Vec<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        cluster: Inner,
        #[serde(default)]
        port: u16,
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let err = parse::<Doc>("cluster:\n  name: a\n  lables: [x]\n", "agent.yaml", &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("agent.yaml: cluster.lables: unknown field `lables`"), "{text}");
    }

    #[test]
    fn bad_values_are_named_with_their_path() {
        let err = parse::<Doc>("cluster: {name: a}\nport: 70000\n", "f.yaml", &[]).unwrap_err();
        assert!(err.to_string().starts_with("f.yaml: port:"), "{err}");
        let err = parse::<Doc>("cluster: [1\n", "f.yaml", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    #[test]
    fn environment_overrides_apply_before_checking() {
        let overrides = vec![
            ("ATOLL__CLUSTER__NAME".to_string(), "gcp".to_string()),
            ("ATOLL__CLUSTER__LABELS".to_string(), "[gcp, eu]".to_string()),
            ("ATOLL__PORT".to_string(), "7101".to_string()),
        ];
        let doc: Doc = parse("cluster: {name: aws}\n", "f", &overrides).unwrap();
        assert_eq!(
            doc,
            Doc { cluster: Inner { name: "gcp".into(), labels: vec!["gcp".into(), "eu".into()] }, port: 7101 }
        );
        let bad = vec![("ATOLL__CLUSTR__NAME".to_string(), "x".to_string())];
        let err = parse::<Doc>("cluster: {name: aws}\n", "f", &bad).unwrap_err();
        assert!(err.to_string().contains("unknown field `clustr`"), "{err}");
    }

    #[test]
    fn the_effective_config_shows_derived_values_and_hides_secrets() {
        #[derive(serde::Serialize)]
        struct Db {
            url: String,
        }
        #[derive(serde::Serialize)]
        struct File {
            node: std::collections::BTreeMap<String, u64>,
            join_token: Option<String>,
            join_token_file: Option<String>,
            database: Db,
            secret_access_key: Option<String>,
        }
        let file = File {
            node: Default::default(),
            join_token: Some("atoll-join.s3cret".into()),
            join_token_file: Some("/run/secrets/token".into()),
            database: Db { url: "postgres://atoll:pw@db:5432/atoll?sslmode=require".into() },
            secret_access_key: None,
        };
        let text = effective_yaml(&file, &[("node.id", Value::from(3))]).unwrap();
        assert!(text.contains("id: 3"), "{text}");
        assert!(!text.contains("s3cret") && !text.contains(":pw@"), "{text}");
        assert!(text.contains("join_token: <redacted>"), "{text}");
        assert!(text.contains("join_token_file: /run/secrets/token"), "{text}");
        assert!(text.contains("postgres://atoll:<redacted>@db:5432/atoll?sslmode=require"), "{text}");
        assert!(text.contains("secret_access_key: null"), "an absent secret stays visibly absent: {text}");
    }
}
