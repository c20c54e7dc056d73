//! The walk over InfraBox's container keys (building, running and publishing images) and its
//! include jobs (`workflow`, `git`): every value checked as InfraBox's own validator checks it,
//! or more loosely where atoll reads more (a timeout with a unit), every problem kept with its
//! path. Which job types take which key is decided in [`super::walk`]; this module reads a
//! key wherever it appears, so a misplaced key is reported once, by the walk.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde_json::Map;
use serde_json::Value;

use super::Cache;
use super::ContainerSpec;
use super::Include;
use super::JobKind;
use super::Registry;
use super::RegistryKind;
use super::Repository;
use super::SecretRef;
use super::path::join;
use super::value::Problems;
use super::value::duration;
use super::value::kind_of;
use super::value::list;
use super::value::object;
use super::value::push;
use super::value::string;

/// A string that must not be empty (InfraBox: `empty string not allowed`).
fn text(v: &Value, path: &str, problems: &mut Problems) -> Option<String> {
    let s = string(v, path, problems)?;
    if s.trim().is_empty() {
        push(problems, path, "cannot be empty");
        return None;
    }
    if s.contains('\0') {
        push(problems, path, "cannot contain a NUL byte");
        return None;
    }
    Some(s.to_string())
}

fn boolean(v: &Value, path: &str, problems: &mut Problems) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        other => {
            push(problems, path, format!("must be true or false, found {}", kind_of(other)));
            None
        }
    }
}

/// A relative path inside the job's files: no absolute paths, no way out of the tree.
fn relative_path(v: &Value, path: &str, problems: &mut Problems) -> Option<String> {
    let p = text(v, path, problems)?;
    if p.starts_with('/') {
        push(problems, path, format!("{p:?} is absolute: paths are relative to the pipeline file's directory"));
        return None;
    }
    Some(p)
}

/// A non-empty list of non-empty strings, each once.
fn words(v: &Value, path: &str, problems: &mut Problems) -> Vec<String> {
    let Some(items) = list(v, path, problems) else { return Vec::new() };
    if items.is_empty() {
        push(problems, path, "empty: leave the key out instead");
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if let Some(word) = text(item, &at, problems) {
            if seen.insert(word.clone()) {
                out.push(word);
            } else {
                push(problems, &at, format!("{word:?} is listed twice"));
            }
        }
    }
    out
}

/// `{"$secret": NAME}`, or `{"$vault": V, "$vault_secret_path": P, "$vault_secret_key": K}`.
/// In an `environment` (`in_environment`), an object without every vault key is read as a
/// `$secret` (as InfraBox does); elsewhere a `$vault` key makes it a vault reference.
pub(super) fn secret_ref(v: &Value, path: &str, in_environment: bool, problems: &mut Problems) -> Option<SecretRef> {
    const VAULT: [&str; 3] = ["$vault", "$vault_secret_path", "$vault_secret_key"];
    let Value::Object(map) = v else {
        push(
            problems,
            path,
            format!("must be a secret ({{\"$secret\": NAME}} or a vault reference), found {}", kind_of(v)),
        );
        return None;
    };
    let vault = if in_environment { VAULT.iter().all(|k| map.contains_key(*k)) } else { map.contains_key("$vault") };
    if vault {
        let map = object(v, path, &VAULT, problems)?;
        let mut parts = Vec::new();
        for key in VAULT {
            match map.get(key) {
                Some(value) => parts.push(text(value, &join(path, key), problems)),
                None => {
                    push(
                        problems,
                        &join(path, key),
                        "missing: a vault reference names the vault, the path and the key",
                    );
                    parts.push(None);
                }
            }
        }
        let [Some(vault), Some(path), Some(key)] = <[Option<String>; 3]>::try_from(parts).ok()? else { return None };
        return Some(SecretRef::Vault { vault, path, key });
    }
    let map = object(v, path, &["$secret"], problems)?;
    let Some(name) = map.get("$secret") else {
        push(problems, path, "missing $secret: name the secret ({\"$secret\": NAME})");
        return None;
    };
    let name = text(name, &join(path, "$secret"), problems)?;
    if let Err(why) = secret_name(&name) {
        push(problems, &join(path, "$secret"), format!("{name:?}: {why}"));
        return None;
    }
    Some(SecretRef::Secret(name))
}

/// A secret's name: letters, digits, `_`, `-` and `.`, 1 to 253 characters.
pub fn secret_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("a secret's name has 1 to 253 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        return Err("a secret's name has only letters, digits, '_', '-' and '.'");
    }
    Ok(())
}

/// The container keys of a job, wherever they appear (the walk reports keys a type does not take).
pub(super) fn container(map: &Map<String, Value>, path: &str, problems: &mut Problems) -> ContainerSpec {
    let at = |key: &str| join(path, key);
    let mut spec = ContainerSpec::default();
    let get = |key: &str| map.get(key);
    spec.docker_file = get("docker_file").and_then(|v| relative_path(v, &at("docker_file"), problems));
    spec.build_context = get("build_context").and_then(|v| text(v, &at("build_context"), problems));
    if let Some(v) = get("build_arguments") {
        spec.build_arguments = build_arguments(v, &at("build_arguments"), problems);
    }
    spec.build_only = get("build_only").and_then(|v| boolean(v, &at("build_only"), problems));
    spec.target = get("target").and_then(|v| text(v, &at("target"), problems));
    spec.build_kit = get("enable_docker_build_kit")
        .and_then(|v| boolean(v, &at("enable_docker_build_kit"), problems))
        .unwrap_or(false);
    spec.run = get("run").and_then(|v| boolean(v, &at("run"), problems));
    spec.compose_file = get("docker_compose_file").and_then(|v| relative_path(v, &at("docker_compose_file"), problems));
    if let Some(v) = get("compose_profiles") {
        spec.compose_profiles = words(v, &at("compose_profiles"), problems);
    }
    spec.stop_timeout_s = get("stop_timeout").and_then(|v| match v {
        // InfraBox passes it on as text: "10" and 10 both mean seconds.
        Value::String(_) | Value::Number(_) => duration(v, &at("stop_timeout"), problems),
        other => {
            push(problems, &at("stop_timeout"), format!("must be seconds, found {}", kind_of(other)));
            None
        }
    });
    spec.parallel_build =
        get("parallel_build").and_then(|v| boolean(v, &at("parallel_build"), problems)).unwrap_or(false);
    if let Some(v) = get("cache") {
        spec.cache = cache(v, &at("cache"), problems);
    }
    if let Some(v) = get("security_context") {
        let at = at("security_context");
        if let Some(sc) = object(v, &at, &["privileged"], problems) {
            spec.privileged =
                sc.get("privileged").and_then(|v| boolean(v, &join(&at, "privileged"), problems)).unwrap_or(false);
        }
    }
    if let Some(v) = get("repository") {
        spec.repository = repository(v, &at("repository"), problems);
    }
    if let Some(v) = get("services") {
        spec.services = services(v, &at("services"), problems);
    }
    if let Some(v) = get("deployments") {
        spec.deployments = registries(v, &at("deployments"), true, problems);
    }
    if let Some(v) = get("registries") {
        spec.registries = registries(v, &at("registries"), false, problems);
    }
    spec
}

fn build_arguments(v: &Value, path: &str, problems: &mut Problems) -> BTreeMap<String, String> {
    let Value::Object(map) = v else {
        push(problems, path, format!("must be a map of build argument names to values, found {}", kind_of(v)));
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for (name, value) in map {
        let at = join(path, name);
        if name.is_empty() || name.contains(['=', '\0']) || name.chars().any(char::is_whitespace) {
            push(problems, &at, format!("{name:?} is not a build argument name"));
            continue;
        }
        if let Some(value) = text(value, &at, problems) {
            out.insert(name.clone(), value);
        }
    }
    out
}

fn cache(v: &Value, path: &str, problems: &mut Problems) -> Cache {
    let Some(map) = object(v, path, &["data", "image"], problems) else { return Cache::default() };
    let mut cache = Cache::default();
    if let Some(data) = map.get("data").and_then(|v| boolean(v, &join(path, "data"), problems)) {
        cache.data = data;
    }
    if let Some(image) = map.get("image").and_then(|v| boolean(v, &join(path, "image"), problems)) {
        cache.image = image;
    }
    cache
}

fn repository(v: &Value, path: &str, problems: &mut Problems) -> Repository {
    let Some(map) = object(v, path, &["clone", "submodules", "full_history"], problems) else {
        return Repository::default();
    };
    let mut repository = Repository::default();
    if let Some(clone) = map.get("clone").and_then(|v| boolean(v, &join(path, "clone"), problems)) {
        repository.clone = clone;
    }
    if let Some(submodules) = map.get("submodules").and_then(|v| boolean(v, &join(path, "submodules"), problems)) {
        repository.submodules = submodules;
    }
    repository.full_history = map.get("full_history").and_then(|v| boolean(v, &join(path, "full_history"), problems));
    repository
}

/// `services`: custom resources with `apiVersion`, `kind`, `metadata.name` (unique), `spec`.
fn services(v: &Value, path: &str, problems: &mut Problems) -> Vec<Value> {
    let Some(items) = list(v, path, problems) else { return Vec::new() };
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let before = problems.len();
        let Some(map) = object(item, &at, &["apiVersion", "kind", "metadata", "spec"], problems) else { continue };
        for key in ["apiVersion", "kind"] {
            match map.get(key) {
                Some(v) => {
                    text(v, &join(&at, key), problems);
                }
                None => {
                    push(problems, &join(&at, key), "missing: a service is a resource with an apiVersion and a kind")
                }
            }
        }
        match map.get("metadata") {
            Some(Value::Object(meta)) => match meta.get("name") {
                Some(name) => {
                    if let Some(name) = text(name, &join(&join(&at, "metadata"), "name"), problems)
                        && !names.insert(name.clone())
                    {
                        push(
                            problems,
                            &join(&join(&at, "metadata"), "name"),
                            format!("duplicate service name {name:?}"),
                        );
                    }
                }
                None => push(problems, &join(&join(&at, "metadata"), "name"), "missing: every service has a name"),
            },
            Some(other) => push(problems, &join(&at, "metadata"), format!("must be a map, found {}", kind_of(other))),
            None => push(problems, &join(&at, "metadata"), "missing: every service has metadata with a name"),
        }
        if let Some(spec) = map.get("spec")
            && !spec.is_object()
        {
            push(problems, &join(&at, "spec"), format!("must be a map, found {}", kind_of(spec)));
        }
        if problems.len() == before {
            out.push(item.clone());
        }
    }
    out
}

/// `deployments` (where an image is pushed) or `registries` (where images are pulled from).
fn registries(v: &Value, path: &str, deployments: bool, problems: &mut Problems) -> Vec<Registry> {
    let Some(items) = list(v, path, problems) else { return Vec::new() };
    if items.is_empty() {
        push(problems, path, "empty: leave the key out instead");
    }
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| registry(item, &format!("{path}[{i}]"), deployments, problems))
        .collect()
}

fn registry(v: &Value, path: &str, deployment: bool, problems: &mut Problems) -> Option<Registry> {
    let kinds = RegistryKind::ALL.iter().map(|(w, _)| *w).collect::<Vec<_>>().join(", ");
    let Value::Object(map) = v else {
        push(problems, path, format!("must be a map with a type ({kinds}), found {}", kind_of(v)));
        return None;
    };
    let at = |key: &str| join(path, key);
    let kind = match map.get("type") {
        None => {
            push(problems, &at("type"), format!("missing (one of: {kinds})"));
            return None;
        }
        Some(t) => {
            let t = string(t, &at("type"), problems)?;
            match RegistryKind::ALL.iter().find(|(w, _)| *w == t) {
                Some((_, k)) => *k,
                None => {
                    push(problems, &at("type"), format!("unknown registry type {t:?} (one of: {kinds})"));
                    return None;
                }
            }
        }
    };
    // (keys, required) per type, as InfraBox's validator has them.
    let (allowed, required): (&[&str], &[&str]) = match (kind, deployment) {
        (RegistryKind::DockerRegistry, true) => (
            &["type", "host", "repository", "username", "password", "tag", "target", "always_push"],
            &["host", "repository"],
        ),
        (RegistryKind::DockerRegistry, false) => {
            (&["type", "host", "repository", "username", "password"], &["host", "repository", "username", "password"])
        }
        (RegistryKind::Ecr, true) => (
            &["type", "access_key_id", "secret_access_key", "region", "repository", "host", "tag", "target"],
            &["access_key_id", "secret_access_key", "region", "repository", "host"],
        ),
        (RegistryKind::Ecr, false) => (
            &["type", "access_key_id", "secret_access_key", "region", "repository", "host"],
            &["access_key_id", "secret_access_key", "region", "host"],
        ),
        (RegistryKind::Gcr, true) => (
            &["type", "service_account", "repository", "host", "tag", "target"],
            &["service_account", "repository", "host"],
        ),
        (RegistryKind::Gcr, false) => {
            (&["type", "service_account", "repository", "host"], &["service_account", "repository", "host"])
        }
    };
    let before = problems.len();
    object(v, path, allowed, problems);
    for key in required {
        if !map.contains_key(*key) {
            push(
                problems,
                &at(key),
                format!("missing: a {} {} needs it", kind.as_str(), if deployment { "deployment" } else { "registry" }),
            );
        }
    }
    let word = |key: &str, problems: &mut Problems| map.get(key).and_then(|v| text(v, &at(key), problems));
    let secret =
        |key: &str, problems: &mut Problems| map.get(key).and_then(|v| secret_ref(v, &at(key), false, problems));
    let registry = Registry {
        kind,
        host: word("host", problems).unwrap_or_default(),
        repository: word("repository", problems),
        username: word("username", problems),
        password: secret("password", problems),
        tag: word("tag", problems),
        target: word("target", problems),
        always_push: map.get("always_push").and_then(|v| boolean(v, &at("always_push"), problems)).unwrap_or(false),
        region: word("region", problems),
        access_key_id: secret("access_key_id", problems),
        secret_access_key: secret("secret_access_key", problems),
        service_account: secret("service_account", problems),
    };
    // Parts of an image's name: what an engine takes, and nothing a log line could be made of.
    let name_part = |key: &str, value: Option<&str>, ok: &dyn Fn(char) -> bool, what: &str, problems: &mut Problems| {
        if let Some(v) = value
            && (v.is_empty() || v.starts_with(['-', '/', '.']) || v.ends_with('/') || !v.chars().all(ok))
        {
            push(problems, &at(key), format!("{v:?} is not {what}"));
        }
    };
    name_part(
        "host",
        Some(registry.host.as_str()),
        &|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/'),
        "a registry (host[:port][/path]: letters, digits, . - _ : /)",
        problems,
    );
    name_part(
        "repository",
        registry.repository.as_deref(),
        &|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_' | '/'),
        "a repository (lowercase letters, digits, . - _ /)",
        problems,
    );
    if let Some(tag) = &registry.tag
        && (tag.is_empty()
            || tag.len() > 128
            || tag.starts_with(['.', '-'])
            || !tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        push(problems, &at("tag"), format!("{tag:?} is not a tag (letters, digits, . - _; at most 128)"));
    }
    (problems.len() == before).then_some(registry)
}

/// The include of a `workflow` or `git` job (`None` for other types).
pub(super) fn include(kind: JobKind, map: &Map<String, Value>, path: &str, problems: &mut Problems) -> Option<Include> {
    let at = |key: &str| join(path, key);
    let file = |problems: &mut Problems| {
        map.get("infrabox_file").and_then(|v| relative_path(v, &at("infrabox_file"), problems))
    };
    match kind {
        JobKind::Workflow => Some(Include::Workflow { infrabox_file: file(problems)? }),
        JobKind::Git => {
            let clone_url = map.get("clone_url").and_then(|v| text(v, &at("clone_url"), problems));
            // A password in the URL would be stored with the pipeline and shown in its details.
            if let Some(url) = &clone_url
                && let Some((_, rest)) = url.split_once("://")
                && rest.split('/').next().is_some_and(|authority| {
                    authority.contains('@') && authority.split('@').next().is_some_and(|user| user.contains(':'))
                })
            {
                push(
                    problems,
                    &at("clone_url"),
                    "a clone URL carries no password (user:password@): the repository must be readable without one",
                );
                return None;
            }
            let commit = map.get("commit").and_then(|v| text(v, &at("commit"), problems));
            let branch = map.get("branch").and_then(|v| text(v, &at("branch"), problems));
            let infrabox_file = file(problems);
            if let Some(c) = &commit
                && (c.starts_with('-') || c.chars().any(char::is_whitespace))
            {
                push(problems, &at("commit"), format!("{c:?} is not a commit or branch name"));
                return None;
            }
            Some(Include::Git { clone_url: clone_url?, commit: commit?, branch, infrabox_file })
        }
        _ => None,
    }
}
