//! Container jobs on the `process` executor: InfraBox's `docker` (build the job's Dockerfile,
//! then run the image), `docker-image` (run an image) and `docker-compose` (build and start a
//! compose file's services), through a container engine on the host (`jobs.containers`: podman
//! or docker, with the operator's own options).
//!
//! A run is a few steps, each one engine command followed like a process run (its own process
//! group, its output into the job's log): build, then run; or compose build, then compose up.
//! A container sees InfraBox's paths: `/infrabox/output` (the attempt's output, stored when the
//! run ends), `/infrabox/inputs/<parent>` (each parent's output, read-only), `/infrabox/context`
//! (the build context), `/infrabox/cache` (kept between runs of the job unless `cache.data` is
//! false) and `/infrabox/upload/...` (InfraBox's report directories; not collected).
//!
//! Nothing a run starts outlives it: the container (or the compose project) is removed when the
//! run ends, is cancelled or times out, and when its handle is dropped; containers a killed
//! replica left are removed when the executor starts ([`Engine::sweep`]), found by the label
//! every container carries (`atoll.work=<work root>`).
//!
//! The values of secret variables reach a container by name only (`-e NAME`, the value in the
//! engine's environment), never on a command line.

use std::ffi::OsString;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use atoll_api::spec::Command as JobCommand;
use atoll_api::spec::JobKind;
use serde_yaml_ng::Mapping;
use serde_yaml_ng::Value as Yaml;

use super::run::RunRequest;

/// How long a cleanup or inspect command may take.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

/// The container engine of the process executor (`jobs.containers`, checked); what it does is
/// here.
pub type Engine = crate::config::ContainersConfig;

/// One command of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// What it does, as the log says before it starts.
    pub what: String,
    pub argv: Vec<String>,
}

/// A container run, planned: its steps in order, the environment every step gets (the
/// container's variables, passed on by name), what removes what it made, and for a compose
/// project, how its result is found.
#[derive(Clone, Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub env: Vec<(OsString, OsString)>,
    pub cleanup: Vec<Vec<String>>,
    /// A compose project's name: its result is the exit code of the service that stopped first.
    pub compose_project: Option<String>,
}

/// Whether a job of `kind` runs in a container on the process executor.
pub fn runs_in_container(kind: &JobKind) -> bool {
    matches!(kind, JobKind::Docker | JobKind::DockerImage | JobKind::DockerCompose)
}

/// A name for images, containers and projects: lowercase letters, digits, `_`, `.` and `-`.
fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c.to_ascii_lowercase() } else { '-' })
        .collect();
    out.truncate(100);
    out.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// `rel` below `root`, for a path the job's file wrote: resolved (links followed) and still inside
/// `root`, or why not.
fn inside(root: &Path, rel: &str, what: &str) -> Result<PathBuf, String> {
    let root = root.canonicalize().map_err(|e| format!("{what}: {}: {e}", root.display()))?;
    let joined = root.join(rel);
    let resolved = joined.canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{what} {rel:?} is not in the job's source"),
        _ => format!("{what} {rel:?}: {e}"),
    })?;
    if !resolved.starts_with(&root) {
        return Err(format!("{what} {rel:?} leads out of the job's source"));
    }
    Ok(resolved)
}

impl Engine {
    /// Podman as this machine runs it: `examples/containers-podman.yaml` (runc, ulimits the
    /// machine allows, cgroups without systemd; podman-compose with the same flags).
    pub fn podman_for_tests() -> Self {
        let file: crate::config::ContainersFile =
            serde_yaml_ng::from_str(include_str!("../../../examples/containers-podman.yaml"))
                .expect("examples/containers-podman.yaml is a jobs.containers block");
        Engine {
            program: file.engine,
            engine_args: file.engine_args,
            build_args: file.build_args,
            run_args: file.run_args,
            compose: file.compose,
        }
    }

    fn base(&self) -> Vec<String> {
        let mut argv = vec![self.program.clone()];
        argv.extend(self.engine_args.iter().cloned());
        argv
    }

    /// The command of the engine's subcommand `sub` with `args`.
    pub fn command(&self, sub: &str, args: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut argv = self.base();
        argv.push(sub.to_string());
        argv.extend(args);
        argv
    }

    /// Whether docker-compose jobs run.
    pub fn composes(&self) -> bool {
        !self.compose.is_empty()
    }

    /// The engine answers (`version`), or why not: checked when the executor starts.
    pub async fn check(&self) -> Result<String, String> {
        let argv = self.command("version", ["--format".to_string(), "{{.Client.Version}}".to_string()]);
        let out = output(&argv, &[]).await.map_err(|e| format!("jobs.containers.engine: {e}"))?;
        if !self.compose.is_empty() {
            let mut argv = self.compose.clone();
            argv.push("version".into());
            output(&argv, &[]).await.map_err(|e| format!("jobs.containers.compose: {e}"))?;
        }
        Ok(out.trim().to_string())
    }

    /// Remove the containers an earlier run of this work root left (a replica killed while they
    /// ran).
    pub async fn sweep(&self, work_root: &Path) {
        let label = format!("label=atoll.work={}", work_root.display());
        let argv = self.command("ps", ["-a".into(), "-q".into(), "--filter".into(), label]);
        match output(&argv, &[]).await {
            Ok(ids) => {
                let ids: Vec<String> = ids.split_whitespace().map(str::to_string).collect();
                if !ids.is_empty() {
                    tracing::warn!(containers = ids.len(), "removing containers a stopped replica left");
                    let mut rm = vec!["-f".to_string()];
                    rm.extend(ids);
                    if let Err(e) = output(&self.command("rm", rm), &[]).await {
                        tracing::warn!(error = %e, "removing leftover containers failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing leftover containers failed"),
        }
    }

    /// The run of a container job in the work directory `dir` (with `output/`, `inputs/` and,
    /// when the job has one, `source/` in place); `cache` is the job's kept cache directory.
    pub fn plan(&self, request: &RunRequest, dir: &Path, work_root: &Path, cache: &Path) -> Result<Plan, String> {
        let spec = &request.spec;
        let name = format!("atoll-{}-{}", slug(&request.job), request.attempt);
        // The variables of the container: atoll's at InfraBox's paths, InfraBox's, the job's own.
        let mut vars: Vec<(String, String)> = vec![
            ("ATOLL_JOB_ID".into(), request.job.clone()),
            ("ATOLL_ATTEMPT".into(), request.attempt.to_string()),
            ("ATOLL_PIPELINE".into(), request.pipeline.clone()),
            ("ATOLL_OUTPUT".into(), "/infrabox/output".into()),
            ("ATOLL_INPUTS".into(), "/infrabox/inputs".into()),
        ];
        vars.extend(atoll_api::spec::infrabox_env(&request.job, &request.pipeline, request.attempt, spec));
        for (key, value) in spec.environment.iter().chain(&request.secrets.0) {
            vars.retain(|(k, _)| k != key);
            vars.push((key.clone(), value.clone()));
        }
        let source = dir.join("source");
        // InfraBox's context: the directory of the file that defines the job, in the source.
        let file_dir = spec.defined_in.as_ref().map(|d| d.dir.as_str()).unwrap_or("");
        let needs_source = matches!(spec.kind, JobKind::Docker | JobKind::DockerCompose);
        let context = if source.is_dir() {
            let base = if file_dir.is_empty() {
                source.canonicalize().map_err(|e| e.to_string())?
            } else {
                inside(&source, file_dir, "the directory of the job's file")?
            };
            match &spec.container.build_context {
                Some(rel) => Some(inside(&base, rel, "build_context").map(|p| (p, base.clone()))?),
                None => Some((base.clone(), base)),
            }
        } else if needs_source {
            return Err(format!(
                "a {} job builds from the pipeline's source: push the files (`atoll push DIR`) and name the source",
                spec.kind.as_str()
            ));
        } else {
            None
        };

        let mut volumes: Vec<String> = vec![
            format!("{}:/infrabox/output", dir.join("output").display()),
            format!("{}:/infrabox/upload", dir.join("upload").display()),
            format!("{}:/infrabox/cache", cache.display()),
        ];
        if let Some((context, _)) = &context {
            volumes.push(format!("{}:/infrabox/context", context.display()));
        }
        for input in &request.inputs {
            // InfraBox's name for a parent's directory: the last part of its name.
            let short = input.from_job.rsplit('/').next().unwrap_or(&input.from_job);
            volumes.push(format!("{}:/infrabox/inputs/{short}:ro", dir.join("inputs").join(&input.from_job).display()));
        }
        for sub in ["upload/testresult", "upload/coverage", "upload/markup", "upload/badge"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("preparing {sub}: {e}"))?;
        }
        std::fs::create_dir_all(cache).map_err(|e| format!("preparing the cache {}: {e}", cache.display()))?;

        let label = format!("atoll.work={}", work_root.display());
        let env: Vec<(OsString, OsString)> = vars.iter().map(|(k, v)| (k.into(), v.into())).collect();
        let mut steps = Vec::new();
        let mut cleanup = Vec::new();
        let limits = || {
            let mut args = Vec::new();
            if let Some(mib) = spec.resources.memory_mib {
                args.extend(["--memory".to_string(), format!("{mib}m")]);
            }
            if let Some(millis) = spec.resources.cpu_millis {
                args.extend(["--cpus".to_string(), format!("{}.{:03}", millis / 1000, millis % 1000)]);
            }
            args
        };
        let run = |image: &str, command: Vec<String>| {
            let mut args = vec!["--rm".to_string(), "--name".into(), name.clone(), "--label".into(), label.clone()];
            args.extend(self.run_args.iter().cloned());
            args.extend(limits());
            for v in &volumes {
                args.extend(["-v".to_string(), v.clone()]);
            }
            for (key, _) in &vars {
                // By name: the value is in the engine's environment, never on a command line.
                args.extend(["-e".to_string(), key.clone()]);
            }
            args.push(image.to_string());
            args.extend(command);
            self.command("run", args)
        };
        match spec.kind {
            JobKind::DockerImage => {
                let image = spec.image.as_deref().ok_or("a docker-image job names no image")?;
                let image = image.replace("$INFRABOX_BUILD_NUMBER", &request.pipeline);
                let command = match &spec.command {
                    Some(JobCommand::Argv(argv)) => argv.clone(),
                    Some(JobCommand::Shell(line)) => vec!["sh".into(), "-c".into(), line.clone()],
                    None => Vec::new(),
                };
                steps.push(Step { what: format!("running {image}"), argv: run(&image, command) });
                cleanup.push(self.command("rm", ["-f".into(), name.clone()]));
            }
            JobKind::Docker => {
                let (context, _) = context.as_ref().ok_or("no build context")?;
                let docker_file = spec.container.docker_file.as_deref().unwrap_or("Dockerfile");
                let docker_file = inside(context, docker_file, "docker_file")?;
                let tag =
                    format!("localhost/atoll/{}:{}-{}", slug(&spec.name), slug(&request.pipeline), request.attempt);
                let mut args: Vec<String> = self.build_args.clone();
                if let Some(mib) = spec.resources.memory_mib {
                    args.extend(["--memory".to_string(), format!("{mib}m")]);
                }
                args.extend(["-f".into(), docker_file.display().to_string(), "-t".into(), tag.clone()]);
                args.extend(["--label".into(), label.clone()]);
                args.extend(["--build-arg".into(), format!("INFRABOX_BUILD_NUMBER={}", request.pipeline)]);
                for (key, value) in &spec.container.build_arguments {
                    args.extend(["--build-arg".into(), format!("{key}={value}")]);
                }
                if let Some(target) = &spec.container.target {
                    args.extend(["--target".into(), target.clone()]);
                }
                args.push(context.display().to_string());
                steps.push(Step { what: format!("building {tag}"), argv: self.command("build", args) });
                // InfraBox builds only, unless told `build_only: false`.
                if spec.container.build_only == Some(false) {
                    steps.push(Step { what: format!("running {tag}"), argv: run(&tag, Vec::new()) });
                    cleanup.push(self.command("rm", ["-f".into(), name.clone()]));
                    // An image built to be run goes with the run; a built-only one is the product.
                    cleanup.push(self.command("rmi", ["-f".into(), tag]));
                }
            }
            JobKind::DockerCompose => {
                if self.compose.is_empty() {
                    return Err("docker-compose jobs need jobs.containers.compose (this cluster has none)".into());
                }
                let (context, file_dir) = context.as_ref().ok_or("no source")?;
                let file = spec
                    .container
                    .compose_file
                    .as_deref()
                    .ok_or("a docker-compose job names no docker_compose_file")?;
                let file = inside(file_dir, file, "docker_compose_file")?;
                let project = format!("atoll_{}_{}", slug(&request.job).replace(['.', '-'], "_"), request.attempt);
                let source = source.canonicalize().map_err(|e| format!("the job's source: {e}"))?;
                let rewritten = rewrite_compose(&file, &volumes, &label, &vars, context, &source)?;
                let compose = |args: &[&str]| {
                    let mut argv = self.compose.clone();
                    argv.extend(["-p".into(), project.clone(), "-f".into(), rewritten.display().to_string()]);
                    argv.extend(args.iter().map(|a| a.to_string()));
                    argv
                };
                let mut profiles = Vec::new();
                for p in &spec.container.compose_profiles {
                    profiles.extend(["--profile".to_string(), p.clone()]);
                }
                let with_profiles = |tail: &[&str]| {
                    let mut argv = self.compose.clone();
                    argv.extend(["-p".into(), project.clone(), "-f".into(), rewritten.display().to_string()]);
                    argv.extend(profiles.iter().cloned());
                    argv.extend(tail.iter().map(|a| a.to_string()));
                    argv
                };
                steps.push(Step {
                    what: format!("building the services of {}", file.display()),
                    argv: with_profiles(&["build"]),
                });
                steps.push(Step {
                    what: "starting the services (the first to stop stops the others)".into(),
                    argv: with_profiles(&["up", "--abort-on-container-exit"]),
                });
                let stop = spec.container.stop_timeout_s.unwrap_or(10).to_string();
                cleanup.push(compose(&["down", "-t", &stop]));
                return Ok(Plan { steps, env, cleanup, compose_project: Some(project) });
            }
            other => return Err(format!("{} jobs do not run in containers", other.as_str())),
        }
        Ok(Plan { steps, env, cleanup, compose_project: None })
    }

    /// The result of a compose project after `up` ended: the exit code of the service container
    /// that stopped first (the one whose end stopped the others), with its name; `None` when no
    /// container of the project was made.
    pub async fn compose_result(
        &self,
        project: &str,
        env: &[(OsString, OsString)],
    ) -> Result<Option<(String, i32)>, String> {
        let filter = format!("label=com.docker.compose.project={project}");
        let ids = output(&self.command("ps", ["-a".into(), "-q".into(), "--filter".into(), filter]), env).await?;
        let ids: Vec<String> = ids.split_whitespace().map(str::to_string).collect();
        if ids.is_empty() {
            return Ok(None);
        }
        let json = output(&self.command("inspect", ids), env).await?;
        first_stopped(&json).map(Some)
    }
}

/// From `inspect`'s JSON: the container that finished first, and its exit code.
fn first_stopped(json: &str) -> Result<(String, i32), String> {
    let all: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("reading the engine's inspect: {e}"))?;
    let mut best: Option<(time::OffsetDateTime, String, i32)> = None;
    for c in all.as_array().into_iter().flatten() {
        let name = c["Name"].as_str().unwrap_or("?").trim_start_matches('/').to_string();
        let code = c["State"]["ExitCode"].as_i64().unwrap_or(-1) as i32;
        let Some(finished) = c["State"]["FinishedAt"]
            .as_str()
            .and_then(|s| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
        else {
            continue;
        };
        // A container that never ran has the zero time: not a candidate.
        if finished.year() < 2000 {
            continue;
        }
        if best.as_ref().is_none_or(|(at, ..)| finished < *at) {
            best = Some((finished, name, code));
        }
    }
    best.map(|(_, name, code)| (name, code)).ok_or_else(|| "no service of the project ran".to_string())
}

/// The compose file with InfraBox's directories mounted into every service, the job's variables
/// in every service's environment and atoll's label on it, written beside the original (so its
/// relative paths mean the same); `/infrabox/context` in a service's own volumes is the build
/// context, as InfraBox reads it.
fn rewrite_compose(
    file: &Path,
    volumes: &[String],
    label: &str,
    vars: &[(String, String)],
    context: &Path,
    source: &Path,
) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let mut doc: Yaml = serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let shown = file.strip_prefix(source).unwrap_or(file).display().to_string();
    check_compose(&doc, file.parent().unwrap_or(source), source).map_err(|e| format!("{shown}: {e}"))?;
    let services = doc
        .get_mut("services")
        .and_then(Yaml::as_mapping_mut)
        .ok_or_else(|| format!("{}: no services", file.display()))?;
    let (label_key, label_value) = label.split_once('=').unwrap_or((label, ""));
    for (name, service) in services.iter_mut() {
        let where_ = format!("{}: services.{}", file.display(), name.as_str().unwrap_or("?"));
        let service = service.as_mapping_mut().ok_or_else(|| format!("{where_}: not a mapping"))?;
        let mut list: Vec<Yaml> = match service.get("volumes") {
            Some(Yaml::Sequence(items)) => items
                .iter()
                .map(|v| match v.as_str() {
                    Some(s) => Yaml::String(s.replace("/infrabox/context", &context.display().to_string())),
                    None => v.clone(),
                })
                .collect(),
            Some(_) => return Err(format!("{where_}.volumes: not a list")),
            None => Vec::new(),
        };
        list.extend(volumes.iter().map(|v| Yaml::String(v.clone())));
        service.insert("volumes".into(), Yaml::Sequence(list));
        let labels = service.entry("labels".into()).or_insert_with(|| Yaml::Mapping(Mapping::new()));
        match labels {
            Yaml::Mapping(m) => {
                m.insert(label_key.into(), label_value.into());
            }
            Yaml::Sequence(items) => items.push(Yaml::String(label.to_string())),
            _ => return Err(format!("{where_}.labels: not a mapping or a list")),
        }
        // The job's variables by name (their values are in compose's own environment).
        let env = service.entry("environment".into()).or_insert_with(|| Yaml::Mapping(Mapping::new()));
        match env {
            Yaml::Mapping(m) => {
                for (key, _) in vars {
                    let k = Yaml::String(key.clone());
                    if !m.contains_key(&k) {
                        m.insert(k, Yaml::Null);
                    }
                }
            }
            Yaml::Sequence(items) => {
                for (key, _) in vars {
                    let present = items.iter().any(|i| i.as_str().is_some_and(|s| s.split('=').next() == Some(key)));
                    if !present {
                        items.push(Yaml::String(key.clone()));
                    }
                }
            }
            _ => return Err(format!("{where_}.environment: not a mapping or a list")),
        }
    }
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let out = file.with_file_name(format!(".{name}.atoll.yml"));
    let body = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
    std::fs::write(&out, body).map_err(|e| format!("writing {}: {e}", out.display()))?;
    Ok(out)
}

/// Service keys that reach past the container into the host the engine runs on (as root): a
/// compose job is refused with any of them.
const HOST_KEYS: [&str; 15] = [
    "privileged",
    "cap_add",
    "devices",
    "device_cgroup_rules",
    "network_mode",
    "pid",
    "ipc",
    "uts",
    "userns_mode",
    "cgroup",
    "cgroup_parent",
    "security_opt",
    "volumes_from",
    "runtime",
    "sysctls",
];

/// What of a compose file would reach the engine's host, refused by its path: the service keys of
/// [`HOST_KEYS`]; a bind mount, `env_file`, build context or Dockerfile, `extends` or top-level
/// `include`, `secrets` or `configs` file outside the job's source; volume and network driver
/// options (a `local` volume can bind any host directory).
fn check_compose(doc: &Yaml, dir: &Path, source: &Path) -> Result<(), String> {
    let inside_source = |rel: &str, at: &str| -> Result<(), String> {
        let resolved = lexical(dir, rel);
        let resolved = resolved.canonicalize().unwrap_or(resolved);
        if resolved.starts_with(source) {
            Ok(())
        } else {
            Err(format!("{at}: {rel:?} is outside the job's source (the host is not the job's)"))
        }
    };
    let strings = |v: &Yaml| -> Vec<String> {
        match v {
            Yaml::String(s) => vec![s.clone()],
            Yaml::Sequence(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string).or_else(|| i.get("path")?.as_str().map(str::to_string)))
                .collect(),
            _ => Vec::new(),
        }
    };
    for (key, _) in doc.as_mapping().into_iter().flatten() {
        if key.as_str() == Some("include") {
            for (i, path) in strings(&doc["include"]).iter().enumerate() {
                inside_source(path, &format!("include[{i}]"))?;
            }
        }
    }
    for kind in ["secrets", "configs"] {
        for (name, def) in doc.get(kind).and_then(Yaml::as_mapping).into_iter().flatten() {
            if let Some(file) = def.get("file").and_then(Yaml::as_str) {
                inside_source(file, &format!("{kind}.{}.file", name.as_str().unwrap_or("?")))?;
            }
        }
    }
    for kind in ["volumes", "networks"] {
        for (name, def) in doc.get(kind).and_then(Yaml::as_mapping).into_iter().flatten() {
            if def.get("driver_opts").is_some() {
                return Err(format!(
                    "{kind}.{}.driver_opts: driver options can reach the host; not for a job",
                    name.as_str().unwrap_or("?")
                ));
            }
        }
    }
    let services = doc.get("services").and_then(Yaml::as_mapping).ok_or("no services")?;
    for (name, service) in services {
        let at = format!("services.{}", name.as_str().unwrap_or("?"));
        let Some(service) = service.as_mapping() else { continue };
        for key in HOST_KEYS {
            if service.contains_key(key) {
                return Err(format!("{at}.{key}: reaches the host the engine runs on; not for a job"));
            }
        }
        for (i, volume) in service.get("volumes").and_then(Yaml::as_sequence).into_iter().flatten().enumerate() {
            let host = match volume {
                Yaml::String(short) => short.split(':').next().filter(|_| short.contains(':')).map(str::to_string),
                long => match long.get("type").and_then(Yaml::as_str) {
                    Some("bind") => long.get("source").and_then(Yaml::as_str).map(str::to_string),
                    _ => None,
                },
            };
            // A bind mount (a path, not a volume's name); InfraBox's own context path is the job's.
            if let Some(host) = host.filter(|h| h.starts_with(['/', '.', '~']) && !h.starts_with("/infrabox/context")) {
                if host.starts_with('~') {
                    return Err(format!("{at}.volumes[{i}]: {host:?} is outside the job's source"));
                }
                inside_source(&host, &format!("{at}.volumes[{i}]"))?;
            }
        }
        for (i, file) in service.get("env_file").map(strings).unwrap_or_default().iter().enumerate() {
            inside_source(file, &format!("{at}.env_file[{i}]"))?;
        }
        if let Some(build) = service.get("build") {
            let context = match build {
                Yaml::String(context) => context.clone(),
                other => other.get("context").and_then(Yaml::as_str).unwrap_or(".").to_string(),
            };
            inside_source(&context, &format!("{at}.build.context"))?;
            if let Some(file) = build.get("dockerfile").and_then(Yaml::as_str) {
                let in_context = lexical(dir, &context);
                let resolved = lexical(&in_context, file);
                let resolved = resolved.canonicalize().unwrap_or(resolved);
                if !resolved.starts_with(source) {
                    return Err(format!("{at}.build.dockerfile: {file:?} is outside the job's source"));
                }
            }
            if build.get("additional_contexts").is_some() {
                return Err(format!("{at}.build.additional_contexts: not for a job (a context may be any host path)"));
            }
        }
        if let Some(file) = service.get("extends").and_then(|e| e.get("file")).and_then(Yaml::as_str) {
            inside_source(file, &format!("{at}.extends.file"))?;
        }
    }
    Ok(())
}

/// `rel` joined to `dir` without `.` and `..` (`rel` absolute: itself, normalized).
fn lexical(dir: &Path, rel: &str) -> PathBuf {
    let mut out = if rel.starts_with('/') { PathBuf::from("/") } else { dir.to_path_buf() };
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out
}

/// Run `argv` to its end within [`HOUSEKEEPING`]: its standard output, or why it failed.
pub async fn output(argv: &[String], env: &[(OsString, OsString)]) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("no command")?;
    let mut command = tokio::process::Command::new(program);
    command.args(args).envs(env.iter().cloned()).kill_on_drop(true).stdin(std::process::Stdio::null());
    let run = tokio::time::timeout(HOUSEKEEPING, command.output()).await;
    let shown = || shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "));
    match run {
        Err(_) => Err(format!("`{}` did not end within {} s", shown(), HOUSEKEEPING.as_secs())),
        Ok(Err(e)) => Err(format!("`{}`: {e}", shown())),
        Ok(Ok(out)) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err.trim();
            Err(format!(
                "`{}` ended with {}{}",
                shown(),
                out.status,
                if err.is_empty() { String::new() } else { format!(": {}", err.lines().last().unwrap_or(err)) }
            ))
        }
    }
}

/// Removes what a run made when dropped before the run could (its task aborted: the replica
/// stopped leading): on a thread of its own, so no async code waits for it.
pub struct Cleanup {
    pub commands: Vec<Vec<String>>,
    pub env: Vec<(OsString, OsString)>,
}

impl Cleanup {
    /// The run removes them itself: nothing left to do when dropped.
    pub async fn now(mut self) {
        for argv in std::mem::take(&mut self.commands) {
            if let Err(e) = output(&argv, &self.env).await {
                tracing::warn!(error = %e, "removing a run's containers failed");
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let commands = std::mem::take(&mut self.commands);
        if commands.is_empty() {
            return;
        }
        let env = std::mem::take(&mut self.env);
        std::thread::spawn(move || {
            for argv in commands {
                let Some((program, args)) = argv.split_first() else { continue };
                let child = std::process::Command::new(program)
                    .args(args)
                    .envs(env.iter().cloned())
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn();
                let Ok(mut child) = child else { continue };
                let started = std::time::Instant::now();
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if started.elapsed() > HOUSEKEEPING => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                        Ok(None) => {
                            #[allow(clippy::disallowed_methods, reason = "a thread of its own, waiting for a child")]
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_container_to_stop_decides_a_compose_run() {
        let json = r#"[
          {"Name": "/p_db_1", "State": {"ExitCode": 137, "FinishedAt": "2026-12-07T09:00:16.5Z"}},
          {"Name": "p_test_1", "State": {"ExitCode": 3, "FinishedAt": "2026-12-07T09:00:15.123456789Z"}},
          {"Name": "p_never_1", "State": {"ExitCode": 0, "FinishedAt": "0001-01-01T00:00:00Z"}}
        ]"#;
        assert_eq!(first_stopped(json).unwrap(), ("p_test_1".to_string(), 3));
        assert!(first_stopped("[]").unwrap_err().contains("no service"));
    }

    #[test]
    fn names_made_from_jobs_are_what_engines_accept() {
        assert_eq!(slug("0123abc.flow.Build_1"), "0123abc.flow.build_1");
        assert_eq!(slug("-a b/c-"), "a-b-c");
    }

    #[test]
    fn a_compose_file_gets_infraboxs_directories_the_label_and_the_variables_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("docker-compose.yml");
        std::fs::write(
            &file,
            "services:\n  test:\n    build: .\n    volumes: [\"/infrabox/context/data:/data\"]\n    environment: [A=1]\n  db:\n    image: x\n    labels: {keep: 'yes'}\n",
        )
        .unwrap();
        let vars = vec![("A".to_string(), "2".to_string()), ("SECRET".to_string(), "hunter2".to_string())];
        let out = rewrite_compose(
            &file,
            &["/w/output:/infrabox/output".into()],
            "atoll.work=/w",
            &vars,
            Path::new("/ctx"),
            dir.path(),
        )
        .unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(!text.contains("hunter2"), "values stay out of the file: {text}");
        let doc: Yaml = serde_yaml_ng::from_str(&text).unwrap();
        let test = &doc["services"]["test"];
        let volumes: Vec<&str> = test["volumes"].as_sequence().unwrap().iter().filter_map(Yaml::as_str).collect();
        assert_eq!(volumes, ["/ctx/data:/data", "/w/output:/infrabox/output"]);
        let env: Vec<&str> = test["environment"].as_sequence().unwrap().iter().filter_map(Yaml::as_str).collect();
        assert_eq!(env, ["A=1", "SECRET"], "the file's own value stays; the others by name");
        assert_eq!(doc["services"]["db"]["labels"]["keep"], Yaml::from("yes"));
        assert_eq!(doc["services"]["db"]["labels"]["atoll.work"], Yaml::from("/w"));
        assert!(doc["services"]["db"]["environment"].as_mapping().unwrap().contains_key("SECRET"));
    }

    #[test]
    fn a_compose_file_reaching_the_host_is_refused_by_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(source.join("ci/svc")).unwrap();
        let check = |text: &str| {
            let doc: Yaml = serde_yaml_ng::from_str(text).unwrap();
            check_compose(&doc, &source.join("ci"), &source)
        };
        let fine = "services:\n  t:\n    build: ./svc\n    volumes: [./data:/data, cache:/cache, /infrabox/context:/src]\n    env_file: svc/env\n    ports: ['8080']\nvolumes: {cache: {}}\n";
        check(fine).expect("inside the source");
        let cases = [
            ("services: {t: {image: x, privileged: true}}", "services.t.privileged: reaches the host"),
            ("services: {t: {image: x, network_mode: host}}", "services.t.network_mode"),
            ("services: {t: {image: x, pid: host}}", "services.t.pid"),
            ("services: {t: {image: x, volumes: ['/etc:/host-etc']}}", "services.t.volumes[0]: \"/etc\" is outside"),
            ("services: {t: {image: x, volumes: ['../../..:/up']}}", "services.t.volumes[0]: \"../../..\" is outside"),
            ("services: {t: {image: x, volumes: [{type: bind, source: /, target: /h}]}}", "services.t.volumes[0]"),
            ("services: {t: {image: x, volumes: ['~/.ssh:/k']}}", "services.t.volumes[0]"),
            ("services: {t: {image: x, env_file: /etc/atoll/env}}", "services.t.env_file[0]"),
            ("services: {t: {build: {context: /etc}}}", "services.t.build.context"),
            ("services: {t: {build: {context: ., dockerfile: ../../x}}}", "services.t.build.dockerfile"),
            ("services: {t: {image: x}}\nsecrets: {k: {file: /etc/shadow}}", "secrets.k.file"),
            ("services: {t: {image: x}}\nvolumes: {v: {driver_opts: {o: bind, device: /}}}", "volumes.v.driver_opts"),
            ("include: [/etc/compose.yml]\nservices: {t: {image: x}}", "include[0]"),
        ];
        for (text, wanted) in cases {
            let err = check(text).expect_err(text);
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }

    #[test]
    fn paths_of_the_job_stay_inside_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::create_dir_all(source.join("app")).unwrap();
        std::fs::write(source.join("app/Dockerfile"), "FROM x\n").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", source.join("app/escape")).unwrap();
        assert!(inside(&source, "app/Dockerfile", "docker_file").is_ok());
        assert!(inside(&source, "../source/app/Dockerfile", "docker_file").is_ok());
        assert!(
            inside(&source, "../../../../../../../../etc/hostname", "docker_file").unwrap_err().contains("leads out")
        );
        assert!(inside(&source, "app/escape", "docker_file").unwrap_err().contains("leads out"));
        assert!(inside(&source, "app/Missing", "docker_file").unwrap_err().contains("is not in the job's source"));
    }
}
