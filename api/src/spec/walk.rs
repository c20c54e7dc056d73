//! The hand walk over a spec document: every value checked, every problem kept with its path.
//!
//! Each function returns what it could make of its value and pushes a problem for everything
//! wrong; a caller keeps going with the rest of the document so one run reports all problems.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;

use serde_json::Value;

use super::ClusterSpec;
use super::Command;
use super::DEFAULT_TIMEOUT_S;
use super::Dependency;
use super::FinalState;
use super::JobKind;
use super::JobSpec;
use super::MAX_JOBS;
use super::MAX_NAME_LEN;
use super::MAX_RETRIES;
use super::OnState;
use super::PipelineSpec;
use super::Resources;
use super::SPEC_VERSION;
use super::SecretRef;
use super::graph;
use super::graph::Graph;
use super::path::join;
use super::value::Problems;
use super::value::duration;
use super::value::integer;
use super::value::kind_of;
use super::value::list;
use super::value::object;
use super::value::push;
use super::value::shown;
use super::value::string;
use super::value::with_unit;
use crate::ClusterName;
use crate::ids::Label;

/// Check a job name: `[a-z0-9_-]`, 1 to 63 characters.
pub fn job_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("a job name cannot be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("a job name has at most 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-') {
        return Err("a job name has only lowercase letters, digits, '_' and '-'");
    }
    Ok(())
}

/// The whole document.
pub(super) fn pipeline(v: &Value, problems: &mut Problems) -> Option<PipelineSpec> {
    let map = object(v, "", &["version", "source", "jobs"], problems)?;
    let source = map.get("source").and_then(|v| source(v, "source", problems));
    match map.get("version") {
        None => push(problems, "version", format!("missing (this build reads version {SPEC_VERSION})")),
        Some(v) if v.as_u64() == Some(SPEC_VERSION) => {}
        Some(v) => {
            push(problems, "version", format!("unsupported version {}; this build reads {SPEC_VERSION}", shown(v)))
        }
    }
    let Some(jobs) = map.get("jobs") else {
        push(problems, "jobs", "missing: a pipeline needs a list of jobs");
        return None;
    };
    let items = list(jobs, "jobs", problems)?;
    // An empty list reads (InfraBox's own examples have one); it is refused where it would run
    // (`super::unsupported`): a pipeline of no jobs runs nothing.
    if items.len() > MAX_JOBS {
        push(problems, "jobs", format!("{} jobs; a pipeline has at most {MAX_JOBS}", items.len()));
        return None;
    }
    let mut parsed = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        parsed.push(job(item, &format!("jobs[{i}]"), problems));
    }
    let names: Vec<Option<&str>> =
        items.iter().map(|item| item.get("name").and_then(Value::as_str).filter(|n| job_name(n).is_ok())).collect();
    // dependencies as far as they parse, also of jobs with other problems (those were reported
    // by the walk above; this second pass only collects)
    let deps: Vec<Vec<(usize, Dependency)>> = items
        .iter()
        .map(|item| item.get("depends_on").map(|v| indexed_depends_on(v, "", &mut Vec::new())).unwrap_or_default())
        .collect();
    cross_check(&names, &deps, problems);
    // the graph as far as it is known: also when some jobs have problems of their own, a
    // cycle is reported in the same run
    let graph = Graph::new(&names, deps.iter().map(|d| d.iter().map(|(at, dep)| (*at, dep.job.as_str()))));
    graph::check(&graph, &names, problems);
    let jobs: Option<Vec<JobSpec>> = parsed.into_iter().collect();
    Some(PipelineSpec { version: SPEC_VERSION, source, jobs: jobs? })
}

/// A pushed source: `sha256:` and 64 lowercase hex digits.
fn source(v: &Value, path: &str, problems: &mut Problems) -> Option<String> {
    let s = string(v, path, problems)?;
    let hex = s.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        push(
            problems,
            path,
            format!("{s:?} is not a source digest (sha256: and 64 lowercase hex digits, as `atoll push` prints)"),
        );
        return None;
    }
    Some(s.to_string())
}

/// Every key a job may have, with the job types that take it (`None`: every type).
const JOB_KEYS: &[(&str, Option<&[JobKind]>)] = {
    use JobKind::*;
    const RUNS: &[JobKind] = &[Command, DockerImage, Docker, DockerCompose];
    &[
        ("name", None),
        ("type", None),
        ("depends_on", None),
        ("command", Some(&[Command, DockerImage, Docker])),
        ("image", Some(&[DockerImage])),
        ("environment", Some(&[Command, DockerImage, Docker, DockerCompose, Git])),
        ("timeout", Some(RUNS)),
        ("resources", Some(RUNS)),
        ("cluster", Some(RUNS)),
        ("retries", Some(RUNS)),
        ("source", Some(&[Command, DockerImage, Docker, DockerCompose, Workflow])),
        ("repository", Some(&[Command, DockerImage, Docker, DockerCompose, Workflow])),
        ("docker_file", Some(&[Docker])),
        ("build_context", Some(&[DockerImage, Docker])),
        ("build_arguments", Some(&[Docker])),
        ("build_only", Some(&[Docker])),
        ("target", Some(&[Docker])),
        ("enable_docker_build_kit", Some(&[Docker, DockerCompose])),
        ("run", Some(&[DockerImage])),
        ("docker_compose_file", Some(&[DockerCompose])),
        ("compose_profiles", Some(&[DockerCompose])),
        ("stop_timeout", Some(&[DockerCompose])),
        ("parallel_build", Some(&[DockerCompose])),
        ("cache", Some(&[DockerImage, Docker, DockerCompose])),
        ("security_context", Some(&[DockerImage, Docker])),
        ("services", Some(&[DockerImage, Docker])),
        ("deployments", Some(&[DockerImage, Docker])),
        ("registries", Some(&[DockerImage, Docker, DockerCompose])),
        ("infrabox_file", Some(&[Workflow, Git])),
        ("clone_url", Some(&[Git])),
        ("commit", Some(&[Git])),
        ("branch", Some(&[Git])),
    ]
};

/// The key each job type cannot do without (beyond `name` and `type`), and why.
fn required(kind: JobKind) -> &'static [(&'static str, &'static str)] {
    match kind {
        JobKind::Command => &[("command", "a command job needs a command")],
        JobKind::DockerImage => &[("image", "a docker-image job needs an image")],
        JobKind::Docker => &[("docker_file", "a docker job needs a docker_file to build")],
        JobKind::DockerCompose => &[("docker_compose_file", "a docker-compose job needs a docker_compose_file")],
        JobKind::Workflow => &[("infrabox_file", "a workflow job names the pipeline file it includes")],
        JobKind::Git => &[
            ("clone_url", "a git job names the repository it includes"),
            ("commit", "a git job names the commit (or branch) to include"),
        ],
        JobKind::Wait => &[],
    }
}

fn kind_names() -> String {
    JobKind::ALL.iter().map(|(word, _)| *word).collect::<Vec<_>>().join(", ")
}

fn job(v: &Value, path: &str, problems: &mut Problems) -> Option<JobSpec> {
    let keys: Vec<&str> = JOB_KEYS.iter().map(|(k, _)| *k).collect();
    let map = object(v, path, &keys, problems)?;
    let at = |key: &str| format!("{path}.{key}");
    let before = problems.len();

    let name = match map.get("name") {
        None => {
            push(problems, &at("name"), "missing: every job needs a name");
            None
        }
        Some(v) => string(v, &at("name"), problems).and_then(|n| match job_name(n) {
            Ok(()) => Some(n.to_string()),
            Err(why) => {
                push(problems, &at("name"), format!("{n:?}: {why}"));
                None
            }
        }),
    };
    let kind = match map.get("type") {
        None => {
            push(problems, &at("type"), format!("missing (one of: {})", kind_names()));
            None
        }
        Some(v) => string(v, &at("type"), problems).and_then(|t| {
            let kind = JobKind::ALL.iter().find(|(word, _)| *word == t).map(|(_, k)| *k);
            if kind.is_none() {
                push(problems, &at("type"), format!("unknown job type {t:?} (one of: {})", kind_names()));
            }
            kind
        }),
    };
    if let Some(kind) = kind {
        for (key, why) in required(kind) {
            if !map.contains_key(*key) {
                push(problems, &at(key), format!("missing: {why}"));
            }
        }
        for (key, kinds) in JOB_KEYS {
            let Some(kinds) = kinds else { continue };
            if !map.contains_key(*key) || kinds.contains(&kind) {
                continue;
            }
            let message = match kind {
                JobKind::Wait if *key == "cluster" => {
                    "a wait job runs on no cluster, so it takes no cluster".to_string()
                }
                JobKind::Wait => "a wait job runs nothing, so it takes no such key".to_string(),
                JobKind::Workflow | JobKind::Git if kinds.contains(&JobKind::Command) => {
                    format!("a {} job includes other jobs and runs nothing itself, so it takes no {key}", kind.as_str())
                }
                _ => {
                    let takers: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                    format!("a {} job takes no {key} (only: {})", kind.as_str(), takers.join(", "))
                }
            };
            push(problems, &at(key), message);
        }
    }
    let command = map.get("command").and_then(|v| command(v, &at("command"), problems));
    let image = map.get("image").and_then(|v| string(v, &at("image"), problems)).map(str::to_string);
    if image.as_deref().is_some_and(|i| i.trim().is_empty() || i.chars().any(char::is_whitespace)) {
        push(problems, &at("image"), "an image reference cannot be empty or contain whitespace");
    } else if image.as_deref().is_some_and(|i| i.starts_with('-') || i.contains('\0')) {
        push(problems, &at("image"), "an image reference cannot start with '-'");
    }
    let (environment, secret_env) =
        map.get("environment").map(|v| environment(v, &at("environment"), problems)).unwrap_or_default();
    let timeout_s = map.get("timeout").map_or(Some(DEFAULT_TIMEOUT_S), |v| duration(v, &at("timeout"), problems));
    let (resources, kubernetes_limits) =
        map.get("resources").map(|v| resources(v, &at("resources"), problems)).unwrap_or_default();
    let cluster = map.get("cluster").map(|v| cluster(v, &at("cluster"), problems)).unwrap_or_default();
    let depends_on = map.get("depends_on").map(|v| depends_on(v, &at("depends_on"), problems)).unwrap_or_default();
    let retries = map.get("retries").and_then(|v| integer(v, &at("retries"), 0, MAX_RETRIES.into(), problems));
    let source = map.get("source").and_then(|v| source(v, &at("source"), problems));
    let mut container = super::container::container(map, path, problems);
    container.kubernetes_limits = kubernetes_limits;
    let include = kind.and_then(|kind| super::container::include(kind, map, path, problems));

    if problems.len() > before {
        return None;
    }
    Some(JobSpec {
        name: name?,
        kind: kind?,
        command,
        image,
        environment,
        timeout_s: timeout_s?,
        resources,
        cluster,
        depends_on,
        retries: retries.map_or(0, |r| u32::try_from(r).unwrap_or(MAX_RETRIES)),
        source,
        secret_env,
        container,
        include,
        defined_in: None,
    })
}

fn command(v: &Value, path: &str, problems: &mut Problems) -> Option<Command> {
    match v {
        Value::String(s) if s.trim().is_empty() => {
            push(problems, path, "an empty command");
            None
        }
        Value::String(s) => Some(Command::Shell(s.clone())),
        Value::Array(items) if items.is_empty() => {
            push(problems, path, "an empty command list");
            None
        }
        Value::Array(items) => {
            let before = problems.len();
            let argv: Vec<String> = items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| string(item, &format!("{path}[{i}]"), problems).map(str::to_string))
                .collect();
            if argv.iter().any(|a| a.contains('\0')) {
                push(problems, path, "an argument cannot contain a NUL byte");
            }
            (problems.len() == before).then_some(Command::Argv(argv))
        }
        other => {
            push(problems, path, format!("must be a string or a list of strings, found {}", kind_of(other)));
            None
        }
    }
}

/// Environment variable names a job may set (`ATOLL_*` is the executor's).
fn env_name(name: &str) -> Result<(), &'static str> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("a variable name is a letter or '_' followed by letters, digits or '_'");
    }
    if name.starts_with("ATOLL_") {
        return Err("ATOLL_* variables are set by the executor");
    }
    Ok(())
}

/// A job's `environment`: plain values, and the variables whose values are secrets.
pub(super) fn environment(
    v: &Value,
    path: &str,
    problems: &mut Problems,
) -> (BTreeMap<String, String>, BTreeMap<String, SecretRef>) {
    let Value::Object(map) = v else {
        push(problems, path, format!("must be a map of names to values, found {}", kind_of(v)));
        return Default::default();
    };
    let mut out = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for (name, value) in map {
        let at = join(path, name);
        if let Err(why) = env_name(name) {
            push(problems, &at, format!("{name:?}: {why}"));
            continue;
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Object(_) => {
                if let Some(secret) = super::container::secret_ref(value, &at, true, problems) {
                    secrets.insert(name.clone(), secret);
                }
                continue;
            }
            other => {
                push(
                    problems,
                    &at,
                    format!(
                        "must be a string, number, boolean or a secret ({{\"$secret\": NAME}}), found {}",
                        kind_of(other)
                    ),
                );
                continue;
            }
        };
        if text.contains('\0') {
            push(problems, &at, "a value cannot contain a NUL byte");
            continue;
        }
        out.insert(name.clone(), text);
    }
    (out, secrets)
}

/// `resources`: `limits` and, as older InfraBox files have it, `kubernetes.limits` (a
/// namespace for the job with those limits).
fn resources(v: &Value, path: &str, problems: &mut Problems) -> (Resources, Option<Resources>) {
    let Some(map) = object(v, path, &["limits", "kubernetes"], problems) else {
        return Default::default();
    };
    let own = map.get("limits").map(|v| limits(v, &join(path, "limits"), problems)).unwrap_or_default();
    let kubernetes = map.get("kubernetes").map(|v| {
        let at = join(path, "kubernetes");
        object(v, &at, &["limits"], problems)
            .and_then(|k| k.get("limits"))
            .map(|l| limits(l, &join(&at, "limits"), problems))
            .unwrap_or_default()
    });
    (own, kubernetes)
}

fn limits(v: &Value, at: &str, problems: &mut Problems) -> Resources {
    let Some(limits) = object(v, at, &["cpu", "memory"], problems) else {
        return Resources::default();
    };
    Resources {
        cpu_millis: limits.get("cpu").and_then(|v| cpu(v, &join(at, "cpu"), problems)),
        memory_mib: limits.get("memory").and_then(|v| memory(v, &join(at, "memory"), problems)),
    }
}

/// Cores as a number (`1`, `0.5`) or a Kubernetes quantity (`"500m"`, `"2"`), in millicores.
fn cpu(v: &Value, path: &str, problems: &mut Problems) -> Option<u64> {
    const MAX: f64 = 1024.0;
    let cores = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.trim().strip_suffix('m') {
            Some(m) => m.parse::<u64>().ok().map(|m| m as f64 / 1000.0),
            None => s.trim().parse::<f64>().ok(),
        },
        _ => None,
    };
    match cores {
        Some(c) if c.is_finite() && c > 0.0 && c <= MAX => {
            let millis = (c * 1000.0).round() as u64;
            if millis == 0 {
                push(problems, path, "less than one millicore");
                return None;
            }
            Some(millis)
        }
        Some(c) if c.is_finite() => {
            push(problems, path, format!("{c} cores is out of range (more than 0, at most 1024)"));
            None
        }
        _ => {
            push(problems, path, format!("must be cores (1, 0.5) or millicores (\"500m\"), found {}", shown(v)));
            None
        }
    }
}

/// MiB as a number (InfraBox) or a Kubernetes quantity (`"512Mi"`, `"2Gi"`).
fn memory(v: &Value, path: &str, problems: &mut Problems) -> Option<u64> {
    const MAX_MIB: u64 = 16 * 1024 * 1024;
    let mib = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => with_unit(s, &[("", 1), ("Mi", 1), ("Gi", 1024), ("Ti", 1024 * 1024)]),
        _ => None,
    };
    match mib {
        Some(m) if (1..=MAX_MIB).contains(&m) => Some(m),
        Some(m) => {
            push(problems, path, format!("{m} MiB is out of range (1 MiB to 16 TiB)"));
            None
        }
        None => {
            push(problems, path, format!("must be MiB (1024) or a quantity (\"512Mi\", \"2Gi\"), found {}", shown(v)));
            None
        }
    }
}

fn cluster(v: &Value, path: &str, problems: &mut Problems) -> ClusterSpec {
    let Some(map) = object(v, path, &["selector", "prefer"], problems) else {
        return ClusterSpec::default();
    };
    let mut spec = ClusterSpec::default();
    if let Some(selector) = map.get("selector") {
        let at = join(path, "selector");
        let mut seen = BTreeSet::new();
        for (i, item) in list(selector, &at, problems).unwrap_or_default().iter().enumerate() {
            let at = format!("{at}[{i}]");
            let Some(word) = string(item, &at, problems) else { continue };
            match word.parse::<Label>() {
                Ok(label) if seen.insert(label.clone()) => spec.selector.push(label),
                Ok(_) => push(problems, &at, format!("label {word:?} is listed twice")),
                Err(e) => push(problems, &at, e.to_string()),
            }
        }
    }
    if let Some(prefer) = map.get("prefer") {
        let at = join(path, "prefer");
        if let Some(name) = string(prefer, &at, problems) {
            match name.parse::<ClusterName>() {
                Ok(name) => spec.prefer = Some(name),
                Err(e) => push(problems, &at, e.to_string()),
            }
        }
    }
    spec
}

fn depends_on(v: &Value, path: &str, problems: &mut Problems) -> Vec<Dependency> {
    indexed_depends_on(v, path, problems).into_iter().map(|(_, d)| d).collect()
}

/// The dependencies that parse, each with its index in the list.
fn indexed_depends_on(v: &Value, path: &str, problems: &mut Problems) -> Vec<(usize, Dependency)> {
    let mut out = Vec::new();
    for (i, item) in list(v, path, problems).unwrap_or_default().iter().enumerate() {
        let at = format!("{path}[{i}]");
        match item {
            Value::String(job) => out
                .push((i, Dependency { job: job.clone(), on: BTreeSet::from([OnState::State(FinalState::Finished)]) })),
            Value::Object(_) => {
                let Some(map) = object(item, &at, &["job", "on"], problems) else { continue };
                let job = match map.get("job") {
                    Some(v) => string(v, &join(&at, "job"), problems).map(str::to_string),
                    None => {
                        push(problems, &join(&at, "job"), "missing: name the parent job");
                        None
                    }
                };
                let on = match map.get("on") {
                    None => Some(BTreeSet::from([OnState::State(FinalState::Finished)])),
                    Some(v) => on_list(v, &join(&at, "on"), problems),
                };
                if let (Some(job), Some(on)) = (job, on) {
                    out.push((i, Dependency { job, on }));
                }
            }
            other => push(problems, &at, format!("must be a job name or {{job, on}}, found {}", kind_of(other))),
        }
    }
    out
}

fn on_list(v: &Value, path: &str, problems: &mut Problems) -> Option<BTreeSet<OnState>> {
    let items = list(v, path, problems)?;
    if items.is_empty() {
        push(problems, path, "empty: name at least one state (or \"*\")");
        return None;
    }
    let mut on = BTreeSet::new();
    let before = problems.len();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let Some(word) = string(item, &at, problems) else { continue };
        match OnState::parse(word) {
            Some(state) if on.insert(state) => {}
            Some(_) => push(problems, &at, format!("{word:?} is listed twice")),
            None => push(problems, &at, format!("unknown state {word:?} (one of: {})", OnState::WORDS.join(", "))),
        }
    }
    (problems.len() == before).then_some(on)
}

/// Checks across jobs: duplicate names, unknown or repeated parents, self-dependencies.
/// `names` holds every well-formed name, also of jobs that did not parse, so their children are
/// not told of unknown parents on top of the parent's own problem.
fn cross_check(names: &[Option<&str>], deps: &[Vec<(usize, Dependency)>], problems: &mut Problems) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let Some(name) = name else { continue };
        if let Some(&at) = first.get(name) {
            push(problems, &format!("jobs[{i}].name"), format!("duplicate job name {name:?} (first at jobs[{at}])"));
        } else {
            first.insert(name, i);
        }
    }
    for (i, deps) in deps.iter().enumerate() {
        let mut parents = BTreeSet::new();
        for (d, dep) in deps {
            let at = format!("jobs[{i}].depends_on[{d}]");
            if Some(dep.job.as_str()) == names[i] {
                push(problems, &at, format!("job {:?} depends on itself", dep.job));
            } else if !parents.insert(dep.job.as_str()) {
                push(problems, &at, format!("depends on {:?} twice", dep.job));
            } else if !first.contains_key(dep.job.as_str()) {
                match job_name(&dep.job) {
                    Ok(()) => push(problems, &at, format!("unknown job {:?}", dep.job)),
                    Err(why) => push(problems, &at, format!("unknown job {:?} ({why})", dep.job)),
                }
            }
        }
    }
}
