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
//! The job's variables (secret ones too) reach a container through an owner-only env file of
//! the run, never through the engine's own environment ([`engine_env`]) or a command line; a
//! compose file is taken by an allowlist of keys with every path resolved inside the source.

use std::ffi::OsString;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use atoll_api::spec::Command as JobCommand;
use atoll_api::spec::JobKind;
use serde_yaml_ng::Mapping;
use serde_yaml_ng::Value as Yaml;

use super::run::RunRequest;
use super::run::short_hash;

/// How long a cleanup or inspect command may take.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

/// The run's files that hold secrets, in its work directory: its variables for the containers,
/// and its registry logins. Removed when the run ends ([`remove_run_secrets`]).
const ENV_FILE: &str = ".atoll-env";
const AUTH_DIR: &str = ".atoll-auth";

/// Remove the run's files holding secrets (after its cleanup, which may read them).
pub fn remove_run_secrets(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(ENV_FILE));
    let _ = std::fs::remove_dir_all(dir.join(AUTH_DIR));
}

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
            registry_args: file.registry_args,
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

    /// Whether the engine is podman (by its program's name), not docker: they differ in how a
    /// login file is named to them and in what `push` takes.
    fn is_podman(&self) -> bool {
        Path::new(&self.program).file_name().is_some_and(|n| n.to_string_lossy().starts_with("podman"))
    }

    /// Whether docker-compose jobs run.
    pub fn composes(&self) -> bool {
        !self.compose.is_empty()
    }

    /// The engine answers (`version`), or why not: checked when the executor starts.
    pub async fn check(&self) -> Result<String, String> {
        let argv = self.command("version", ["--format".to_string(), "{{.Client.Version}}".to_string()]);
        let out = output(&argv).await.map_err(|e| format!("jobs.containers.engine: {e}"))?;
        if !self.compose.is_empty() {
            let mut argv = self.compose.clone();
            argv.push("version".into());
            output(&argv).await.map_err(|e| format!("jobs.containers.compose: {e}"))?;
        }
        Ok(out.trim().to_string())
    }

    /// Remove the containers an earlier run of this work root left (a replica killed while they
    /// ran), and the files holding secrets its runs left (`root/<job>/<attempt>/`).
    pub async fn sweep(&self, work_root: &Path) {
        let root = work_root.to_path_buf();
        let _ = tokio::task::spawn_blocking(move || {
            for job in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                for attempt in std::fs::read_dir(job.path()).into_iter().flatten().flatten() {
                    remove_run_secrets(&attempt.path());
                }
            }
        })
        .await;
        let label = format!("label=atoll.work={}", work_root.display());
        let argv = self.command("ps", ["-a".into(), "-q".into(), "--filter".into(), label]);
        match output(&argv).await {
            Ok(ids) => {
                let ids: Vec<String> = ids.split_whitespace().map(str::to_string).collect();
                if !ids.is_empty() {
                    tracing::warn!(containers = ids.len(), "removing containers a stopped replica left");
                    let mut rm = vec!["-f".to_string(), "--".to_string()];
                    rm.extend(ids);
                    if let Err(e) = output(&self.command("rm", rm)).await {
                        tracing::warn!(error = %e, "removing leftover containers failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing leftover containers failed"),
        }
    }

    /// The run of a container job in the work directory `dir` (with `output/`, `inputs/` and,
    /// when the job has one, `source/` in place); `cache` is the job's kept cache directory.
    /// Blocking (it reads the compose file and writes the run's files).
    pub fn plan(&self, request: &RunRequest, dir: &Path, work_root: &Path, cache: &Path) -> Result<Plan, String> {
        let spec = &request.spec;
        // Unique per job id and attempt, whatever the slug keeps of the id.
        let id = format!("{}-{}-{}", slug(&request.job), request.attempt, short_hash(&request.job));
        let name = format!("atoll-{id}");
        // The variables of the container: atoll's at InfraBox's paths, InfraBox's, the job's own.
        let mut vars: Vec<(String, String)> = vec![
            ("ATOLL_JOB_ID".into(), request.job.clone()),
            ("ATOLL_ATTEMPT".into(), request.attempt.to_string()),
            ("ATOLL_PIPELINE".into(), request.pipeline.clone()),
            ("ATOLL_OUTPUT".into(), "/infrabox/output".into()),
            ("ATOLL_INPUTS".into(), "/infrabox/inputs".into()),
        ];
        vars.extend(atoll_api::spec::infrabox_env(&request.job, &request.pipeline, request.attempt, spec));
        for (key, value) in spec.environment.iter().chain(request.secrets.variables()) {
            vars.retain(|(k, _)| k != key);
            vars.push((key.clone(), value.clone()));
        }
        // The variables go to the containers in a file of the run's (never into the engine's
        // own environment, where LD_PRELOAD or CONTAINERS_CONF would be the engine's).
        let env_file = write_env_file(&dir.join(ENV_FILE), &vars)?;
        let source = dir.join("source");
        let needs_source = matches!(spec.kind, JobKind::Docker | JobKind::DockerCompose);
        // InfraBox's context: the directory of the file that defines the job, then
        // `build_context`; anywhere inside the source.
        let context = if source.is_dir() {
            let root = source.canonicalize().map_err(|e| format!("the job's source: {e}"))?;
            let file_dir = spec.defined_in.as_ref().map(|d| d.dir.as_str()).unwrap_or("");
            let base = in_source(&root, &root, file_dir, "the directory of the job's file")?;
            let context = match &spec.container.build_context {
                Some(rel) => in_source(&root, &base, rel, "build_context")?,
                None => base.clone(),
            };
            Some(Context { root, base, context })
        } else if needs_source {
            return Err(format!(
                "a {} job builds from the pipeline's source: push the files (`atoll push DIR`) and name the source",
                spec.kind.as_str()
            ));
        } else {
            None
        };

        // (host, container path, read-only)
        let mut mounts: Vec<(PathBuf, String, bool)> = vec![
            (dir.join("output"), "/infrabox/output".into(), false),
            (dir.join("upload"), "/infrabox/upload".into(), false),
            (cache.to_path_buf(), "/infrabox/cache".into(), false),
        ];
        let mut shorts = std::collections::BTreeMap::new();
        for input in &request.inputs {
            // InfraBox's name for a parent's directory: the last part of its name.
            let short = input.from_job.rsplit('/').next().unwrap_or(&input.from_job).to_string();
            if let Some(other) = shorts.insert(short.clone(), input.from_job.clone()) {
                return Err(format!(
                    "parents {other:?} and {:?} would both be /infrabox/inputs/{short} (InfraBox names a parent's directory by the last part of its name)",
                    input.from_job
                ));
            }
            mounts.push((dir.join("inputs").join(&input.from_job), format!("/infrabox/inputs/{short}"), true));
        }
        for sub in ["upload/testresult", "upload/coverage", "upload/markup", "upload/badge"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("preparing {sub}: {e}"))?;
        }
        std::fs::create_dir_all(cache).map_err(|e| format!("preparing the cache {}: {e}", cache.display()))?;

        let label = format!("atoll.work={}", work_root.display());
        let mut env = engine_env();
        // Registry logins: an owner-only auth file of the run's, named to the engine by its
        // own variable (podman: REGISTRY_AUTH_FILE; docker: DOCKER_CONFIG, a copy of the
        // replica's client configuration with these logins instead of its own): no password on
        // a command line. A job naming no username leaves the replica's own logins in place.
        let logins = registry_logins(request)?;
        if !logins.is_empty() {
            let auth = dir.join(AUTH_DIR);
            if self.is_podman() {
                write_auth_file(&auth, &logins, None)?;
                env.retain(|(k, _)| k != "REGISTRY_AUTH_FILE");
                env.push(("REGISTRY_AUTH_FILE".into(), auth.join("config.json").into()));
            } else {
                write_auth_file(&auth, &logins, Some(&docker_config_dir()))?;
                env.retain(|(k, _)| k != "DOCKER_CONFIG");
                env.push(("DOCKER_CONFIG".into(), auth.into()));
            }
        }
        // What talks to a registry for the job gets the operator's registry options.
        let registry_args = || self.registry_args.iter().cloned();
        let pull = |image: &str| {
            let mut args: Vec<String> = registry_args().collect();
            args.extend(["--".into(), image.to_string()]);
            Step { what: format!("pulling {image}"), argv: self.command("pull", args) }
        };
        // Each deployment: the image (or the deployment's own stage, built under a name of the
        // run's) pushed as `host/repository:tag`. Podman pushes a local image to another name
        // without taking that name locally; docker pushes a local name, so it is taken for the
        // push and given back right after. `always_push` ones go right after the build, before
        // the run can fail.
        let deploy = |image: &str,
                      build: &dyn Fn(&str, &str) -> Option<Vec<String>>,
                      cleanup: &mut Vec<Vec<String>>|
         -> Result<Vec<(bool, Vec<Step>)>, String> {
            let mut out = Vec::new();
            for (i, d) in spec.container.deployments.iter().enumerate() {
                let tag = d.tag.clone().unwrap_or_else(|| format!("build_{}", request.pipeline));
                let reference =
                    format!("{}/{}:{tag}", d.host.trim_end_matches('/'), d.repository.as_deref().unwrap_or(""));
                let mut steps = Vec::new();
                let source = match &d.target {
                    Some(stage) if spec.container.target.as_deref() != Some(stage.as_str()) => {
                        let local = format!("{image}-deploy{i}");
                        let argv = build(stage, &local).ok_or_else(|| {
                            format!("deployments[{i}].target: names a build stage, and this job builds nothing")
                        })?;
                        steps.push(Step { what: format!("building stage {stage} for {reference}"), argv });
                        cleanup.push(self.command("rmi", ["-f".into(), "--".into(), local.clone()]));
                        local
                    }
                    _ => image.to_string(),
                };
                let mut args: Vec<String> = registry_args().collect();
                if self.is_podman() {
                    args.extend(["--".into(), source, reference.clone()]);
                    steps.push(Step { what: format!("pushing {reference}"), argv: self.command("push", args) });
                } else {
                    steps.push(Step {
                        what: format!("tagging {source} as {reference}"),
                        argv: self.command("tag", ["--".into(), source, reference.clone()]),
                    });
                    args.extend(["--".into(), reference.clone()]);
                    steps.push(Step { what: format!("pushing {reference}"), argv: self.command("push", args) });
                    steps.push(Step {
                        what: format!("untagging {reference}"),
                        argv: self.command("rmi", ["--".into(), reference]),
                    });
                }
                out.push((d.always_push, steps));
            }
            Ok(out)
        };
        let mut steps = Vec::new();
        let mut cleanup = Vec::new();
        let flag = |name: &str, value: &dyn std::fmt::Display| format!("--{name}={value}");
        let limits = || {
            let mut args = Vec::new();
            if let Some(mib) = spec.resources.memory_mib {
                args.push(flag("memory", &format!("{mib}m")));
            }
            if let Some(millis) = spec.resources.cpu_millis {
                args.push(flag("cpus", &format!("{}.{:03}", millis / 1000, millis % 1000)));
            }
            args
        };
        let run = |image: &str, command: Vec<String>, context: Option<&Context>| {
            let mut args = vec!["--rm".to_string(), flag("name", &name), flag("label", &label)];
            args.extend(self.run_args.iter().cloned());
            args.extend(limits());
            let context_mount = context.map(|c| (c.context.clone(), "/infrabox/context".to_string(), false));
            for (host, at, ro) in mounts.iter().chain(context_mount.as_ref()) {
                args.push(flag("volume", &format!("{}:{at}{}", host.display(), if *ro { ":ro" } else { "" })));
            }
            args.push(flag("env-file", &env_file.display()));
            // Whatever the image is named, it is not an option.
            args.push("--".into());
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
                // Pulled first where it needs a login, is pushed, or is not run (`run: false`);
                // an image under `localhost/` is the engine's own, never pulled.
                if (!spec.container.registries.is_empty()
                    || !spec.container.deployments.is_empty()
                    || spec.container.run == Some(false))
                    && !image.starts_with("localhost/")
                {
                    steps.push(pull(&image));
                }
                let no_build = |_: &str, _: &str| None;
                let mut pushes = deploy(&image, &no_build, &mut cleanup)?;
                push_steps(&mut steps, &mut pushes, true);
                if spec.container.run != Some(false) {
                    steps.push(Step { what: format!("running {image}"), argv: run(&image, command, context.as_ref()) });
                    cleanup.push(self.command("rm", ["-f".into(), "--".into(), name.clone()]));
                }
                push_steps(&mut steps, &mut pushes, false);
            }
            JobKind::Docker => {
                let context = context.as_ref().ok_or("no build context")?;
                let docker_file = spec.container.docker_file.as_deref().unwrap_or("Dockerfile");
                let docker_file = in_source(&context.root, &context.context, docker_file, "docker_file")?;
                let tag = format!(
                    "localhost/atoll/{}-{}:{}-{}",
                    slug(&spec.name),
                    short_hash(&spec.name),
                    slug(&request.pipeline),
                    request.attempt
                );
                // The build of `target` (the job's own, or a deployment's stage) as `tag`.
                let build = |target: Option<&str>, tag: &str| {
                    let mut args: Vec<String> = self.build_args.clone();
                    if !spec.container.registries.is_empty() {
                        args.extend(registry_args());
                    }
                    if let Some(mib) = spec.resources.memory_mib {
                        args.push(flag("memory", &format!("{mib}m")));
                    }
                    args.extend([flag("file", &docker_file.display()), flag("tag", &tag), flag("label", &label)]);
                    args.push(flag("build-arg", &format!("INFRABOX_BUILD_NUMBER={}", request.pipeline)));
                    for (key, value) in &spec.container.build_arguments {
                        args.push(flag("build-arg", &format!("{key}={value}")));
                    }
                    if let Some(target) = target {
                        args.push(flag("target", &target));
                    }
                    args.push("--".into());
                    args.push(context.context.display().to_string());
                    self.command("build", args)
                };
                steps.push(Step {
                    what: format!("building {tag}"),
                    argv: build(spec.container.target.as_deref(), &tag),
                });
                let stage = |stage: &str, reference: &str| Some(build(Some(stage), reference));
                let mut pushes = deploy(&tag, &stage, &mut cleanup)?;
                push_steps(&mut steps, &mut pushes, true);
                // InfraBox builds only, unless told `build_only: false`.
                if spec.container.build_only == Some(false) {
                    steps.push(Step { what: format!("running {tag}"), argv: run(&tag, Vec::new(), Some(context)) });
                    cleanup.push(self.command("rm", ["-f".into(), "--".into(), name.clone()]));
                    // An image built to be run goes with the run; a built-only one is the product.
                    cleanup.push(self.command("rmi", ["-f".into(), "--".into(), tag.clone()]));
                }
                push_steps(&mut steps, &mut pushes, false);
            }
            JobKind::DockerCompose => {
                if self.compose.is_empty() {
                    return Err("docker-compose jobs need jobs.containers.compose (this cluster has none)".into());
                }
                let context = context.as_ref().ok_or("no source")?;
                let file = spec
                    .container
                    .compose_file
                    .as_deref()
                    .ok_or("a docker-compose job names no docker_compose_file")?;
                let file = in_source(&context.root, &context.base, file, "docker_compose_file")?;
                let project = format!("atoll_{}", id.replace(['.', '-'], "_"));
                let ours = Ours {
                    mounts: &mounts,
                    context: &context.context,
                    env_file: &env_file,
                    label: &label,
                    project: &project,
                    spec,
                };
                let rewritten = rewrite_compose(&file, &context.root, &ours)?;
                let mut profiles = Vec::new();
                for p in &spec.container.compose_profiles {
                    profiles.extend(["--profile".to_string(), p.clone()]);
                }
                let compose = |tail: &[&str], with_profiles: bool| {
                    let mut argv = self.compose.clone();
                    argv.extend(["-p".into(), project.clone(), "-f".into(), rewritten.display().to_string()]);
                    if with_profiles {
                        argv.extend(profiles.iter().cloned());
                    }
                    argv.extend(tail.iter().map(|a| a.to_string()));
                    argv
                };
                steps.push(Step {
                    what: format!(
                        "building the services of {}",
                        file.strip_prefix(&context.root).unwrap_or(&file).display()
                    ),
                    argv: compose(&["build"], true),
                });
                steps.push(Step {
                    what: "starting the services (the first to stop stops the others)".into(),
                    argv: compose(&["up", "--abort-on-container-exit"], true),
                });
                let stop = spec.container.stop_timeout_s.unwrap_or(10).to_string();
                cleanup.push(compose(&["down", "-t", &stop, "-v"], false));
                return Ok(Plan { steps, env, cleanup, compose_project: Some(project) });
            }
            other => return Err(format!("{} jobs do not run in containers", other.as_str())),
        }
        Ok(Plan { steps, env, cleanup, compose_project: None })
    }

    /// The result of a compose project after `up` ended: the exit code of the service container
    /// that stopped first (the one whose end stopped the others), with its name; `None` when no
    /// container of the project was made.
    pub async fn compose_result(&self, project: &str) -> Result<Option<ComposeEnd>, String> {
        let filter = format!("label=com.docker.compose.project={project}");
        let ids = output(&self.command("ps", ["-a".into(), "-q".into(), "--filter".into(), filter])).await?;
        let ids: Vec<String> = ids.split_whitespace().map(str::to_string).collect();
        if ids.is_empty() {
            return Ok(None);
        }
        let mut inspect = vec!["--".to_string()];
        inspect.extend(ids);
        let json = output(&self.command("inspect", inspect)).await?;
        first_stopped(&json).map(Some)
    }

    /// Remove what a compose project leaves after `down`: its networks, and the images it built,
    /// labelled `atoll.project=<project>` where the
    /// compose program passes a build's labels on, else named after the project
    /// (`<project>_<service>`, `<project>-<service>`: podman-compose 1.0 drops build labels).
    pub async fn remove_project_leftovers(&self, project: &str) {
        let mut ids = Vec::new();
        for filter in [
            format!("label=atoll.project={project}"),
            format!("reference=*{project}_*"),
            format!("reference=*{project}-*"),
        ] {
            match output(&self.command("images", ["-q".into(), "--filter".into(), filter])).await {
                Ok(found) => ids.extend(found.split_whitespace().map(str::to_string)),
                Err(e) => tracing::warn!(error = %e, project, "listing a compose project's images failed"),
            }
        }
        ids.sort();
        ids.dedup();
        if !ids.is_empty() {
            let mut rmi = vec!["-f".to_string(), "--".to_string()];
            rmi.extend(ids);
            if let Err(e) = output(&self.command("rmi", rmi)).await {
                tracing::warn!(error = %e, project, "removing a compose project's images failed");
            }
        }
        // Its networks (`<project>_default`, ...): not every compose program's `down` takes them.
        match output(&self.command("network", ["ls".into(), "-q".into(), "--filter".into(), format!("name={project}")]))
            .await
        {
            Ok(found) => {
                let names: Vec<String> = found.split_whitespace().map(str::to_string).collect();
                if !names.is_empty() {
                    let mut rm = vec!["rm".to_string(), "-f".to_string(), "--".to_string()];
                    rm.extend(names);
                    if let Err(e) = output(&self.command("network", rm)).await {
                        tracing::warn!(error = %e, project, "removing a compose project's networks failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, project, "listing a compose project's networks failed"),
        }
    }
}

/// From `inspect`'s JSON: the container that finished first, and its exit code.
fn first_stopped(json: &str) -> Result<ComposeEnd, String> {
    let all: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("reading the engine's inspect: {e}"))?;
    let time = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
            // A container that never ran has the zero time.
            .filter(|t| t.year() >= 2000)
    };
    let mut best: Option<(time::OffsetDateTime, String, i32)> = None;
    let mut never_started = Vec::new();
    for c in all.as_array().into_iter().flatten() {
        let name = c["Name"].as_str().unwrap_or("?").trim_start_matches('/').to_string();
        let code = c["State"]["ExitCode"].as_i64().unwrap_or(-1) as i32;
        if time(&c["State"]["StartedAt"]).is_none() {
            never_started.push(name.clone());
        }
        let Some(finished) = time(&c["State"]["FinishedAt"]) else { continue };
        if best.as_ref().is_none_or(|(at, ..)| finished < *at) {
            best = Some((finished, name, code));
        }
    }
    never_started.sort();
    Ok(ComposeEnd { first: best.map(|(_, name, code)| (name, code)), never_started })
}

/// How a compose project's services ended, as the engine says.
#[derive(Debug, PartialEq, Eq)]
pub struct ComposeEnd {
    /// The container that stopped first, and its exit code.
    pub first: Option<(String, i32)>,
    /// Containers of the project that never started (`up` failed before they could).
    pub never_started: Vec<String>,
}

impl ComposeEnd {
    /// The run's exit code and what to say of it: the first to stop decides, and a service
    /// that never started fails the run.
    pub fn verdict(&self) -> (i32, String) {
        let (code, mut said) = match &self.first {
            Some((name, code)) => (*code, format!("{name} stopped first, with {code}")),
            None => (1, "no service ran".to_string()),
        };
        if self.never_started.is_empty() {
            return (code, said);
        }
        said.push_str(&format!("; {} never started", self.never_started.join(", ")));
        (if code == 0 { 1 } else { code }, said)
    }
}

/// A job's source and where its files are: the source's root, the directory of the file that
/// defines the job, and the build context (all resolved, inside the root).
struct Context {
    root: PathBuf,
    base: PathBuf,
    context: PathBuf,
}

/// What atoll adds to every service of a compose file.
struct Ours<'a> {
    /// (host, container path, read-only)
    mounts: &'a [(PathBuf, String, bool)],
    context: &'a Path,
    env_file: &'a Path,
    label: &'a str,
    project: &'a str,
    spec: &'a atoll_api::spec::JobSpec,
}

/// `rel` (relative to `dir`) resolved by the kernel, links followed, and inside `root`; or why
/// not. A path that does not exist yet is resolved as far as it exists, and may not climb after.
fn in_source(root: &Path, dir: &Path, rel: &str, what: &str) -> Result<PathBuf, String> {
    if rel.contains('\0') {
        return Err(format!("{what} {rel:?}: not a path"));
    }
    let joined = if rel.starts_with('/') { PathBuf::from(rel) } else { dir.join(rel) };
    let resolved = match joined.canonicalize() {
        Ok(resolved) => resolved,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut existing = joined.clone();
            let mut rest = Vec::new();
            while !existing.exists() {
                rest.push(
                    existing
                        .file_name()
                        .map(|n| n.to_os_string())
                        .ok_or_else(|| format!("{what} {rel:?} is not in the job's source"))?,
                );
                if !existing.pop() {
                    return Err(format!("{what} {rel:?}: not a path"));
                }
            }
            if rest.iter().any(|part| part == ".." || part == ".") {
                return Err(format!("{what} {rel:?} is not in the job's source"));
            }
            let mut resolved = existing.canonicalize().map_err(|e| format!("{what} {rel:?}: {e}"))?;
            resolved.extend(rest.iter().rev());
            resolved
        }
        Err(e) => return Err(format!("{what} {rel:?}: {e}")),
    };
    if !resolved.starts_with(root) {
        return Err(format!("{what} {rel:?} leads out of the job's source"));
    }
    Ok(resolved)
}

/// The top-level keys of a compose file a job may use.
const TOP_KEYS: [&str; 6] = ["version", "services", "volumes", "networks", "secrets", "configs"];
/// The service keys a job may use: what stays inside the containers. Anything else (privileged,
/// host namespaces, devices, capabilities, other projects' containers or volumes, ...) would
/// reach the host the engine runs on as root.
const SERVICE_KEYS: [&str; 38] = [
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "volumes",
    "working_dir",
    "user",
    "ports",
    "expose",
    "depends_on",
    "healthcheck",
    "labels",
    "networks",
    "restart",
    "stop_signal",
    "stop_grace_period",
    "tmpfs",
    "shm_size",
    "hostname",
    "domainname",
    "extra_hosts",
    "init",
    "tty",
    "stdin_open",
    "profiles",
    "mem_limit",
    "memswap_limit",
    "mem_reservation",
    "cpus",
    "cpu_shares",
    "read_only",
    "dns",
    "dns_search",
    "secrets",
    "configs",
    "ulimits",
];
/// The keys of a service's `build` a job may use.
const BUILD_KEYS: [&str; 6] = ["context", "dockerfile", "args", "target", "labels", "shm_size"];

fn key_name(key: &Yaml) -> String {
    key.as_str().map_or_else(|| format!("{key:?}"), str::to_string)
}

/// Keys of `map` not in `allowed` (extension fields, `x-...`, are anchors' homes: allowed).
fn refuse_keys(map: &Mapping, allowed: &[&str], at: &str, why: &str) -> Result<(), String> {
    for (key, _) in map {
        let name = key_name(key);
        if !name.starts_with("x-") && !allowed.contains(&name.as_str()) {
            return Err(format!("{at}{name}: {why}"));
        }
    }
    Ok(())
}

/// A path-like value: no interpolation (`$`), which would be filled in after the check.
fn plain<'a>(value: &'a str, at: &str) -> Result<&'a str, String> {
    if value.contains('$') {
        return Err(format!(
            "{at}: {value:?}: no variables in paths and images (they would be filled in after the check)"
        ));
    }
    Ok(value)
}

/// The compose file the job's run uses, written beside the original (`.<name>.atoll.yml`): the
/// file as written, checked to stay inside its containers (only [`TOP_KEYS`], [`SERVICE_KEYS`]
/// and [`BUILD_KEYS`]; every path resolved inside the job's source and written resolved; a bind
/// mount from the source read-only; no variables in paths or images), with atoll's directories
/// mounted into every service, the job's variables from its env file, the job's limits where
/// the file set none, and atoll's label on every container and image.
fn rewrite_compose(file: &Path, root: &Path, ours: &Ours<'_>) -> Result<PathBuf, String> {
    let shown = file.strip_prefix(root).unwrap_or(file).display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| format!("reading {shown}: {e}"))?;
    let mut doc: Yaml = serde_yaml_ng::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
    // Merge keys (`<<`) applied first, so what they bring is checked like the rest.
    doc.apply_merge().map_err(|e| format!("{shown}: {e}"))?;
    let dir = file.parent().unwrap_or(root).to_path_buf();
    check_and_rewrite(&mut doc, &dir, root, ours).map_err(|e| format!("{shown}: {e}"))?;
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let out = file.with_file_name(format!(".{name}.atoll.yml"));
    let body = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
    std::fs::write(&out, body).map_err(|e| format!("writing {}: {e}", out.display()))?;
    Ok(out)
}

fn check_and_rewrite(doc: &mut Yaml, dir: &Path, root: &Path, ours: &Ours<'_>) -> Result<(), String> {
    let top = doc.as_mapping_mut().ok_or("not a mapping")?;
    refuse_keys(top, &TOP_KEYS, "", "not for a job (only services, volumes, networks, secrets and configs)")?;
    for kind in ["volumes", "networks"] {
        for (name, def) in top.get(kind).and_then(Yaml::as_mapping).into_iter().flatten() {
            if let Some(def) = def.as_mapping() {
                let allowed: &[&str] = if kind == "volumes" { &["labels"] } else { &["labels", "internal"] };
                refuse_keys(
                    def,
                    allowed,
                    &format!("{kind}.{}.", key_name(name)),
                    "not for a job (drivers, their options and outside names reach the host)",
                )?;
            }
        }
    }
    for kind in ["secrets", "configs"] {
        for (name, def) in top.get_mut(kind).and_then(Yaml::as_mapping_mut).into_iter().flatten() {
            let at = format!("{kind}.{}", key_name(name));
            let def = def.as_mapping_mut().ok_or_else(|| format!("{at}: not a mapping"))?;
            refuse_keys(def, &["file"], &format!("{at}."), "not for a job (only a file of the source)")?;
            let file = def.get("file").and_then(Yaml::as_str).ok_or_else(|| format!("{at}.file: missing"))?;
            let resolved = in_source(root, dir, plain(file, &format!("{at}.file"))?, &format!("{at}.file"))?;
            def.insert("file".into(), Yaml::String(resolved.display().to_string()));
        }
    }
    let services = top.get_mut("services").and_then(Yaml::as_mapping_mut).ok_or("no services")?;
    for (name, service) in services.iter_mut() {
        let at = format!("services.{}", key_name(name));
        let service = service.as_mapping_mut().ok_or_else(|| format!("{at}: not a mapping"))?;
        refuse_keys(
            service,
            &SERVICE_KEYS,
            &format!("{at}."),
            "not for a job (it reaches past the containers, or atoll does not allow it)",
        )?;
        if let Some(image) = service.get("image") {
            let image = image.as_str().ok_or_else(|| format!("{at}.image: not a string"))?;
            if plain(image, &format!("{at}.image"))?.starts_with('-') || image.trim().is_empty() {
                return Err(format!("{at}.image: {image:?} is not an image"));
            }
        }
        // Volumes: a bind mount (a path) resolved inside the source and made read-only.
        let mut volumes = Vec::new();
        for (i, volume) in
            service.get("volumes").and_then(Yaml::as_sequence).cloned().unwrap_or_default().into_iter().enumerate()
        {
            let vat = format!("{at}.volumes[{i}]");
            let bind = |host: &str| -> Result<PathBuf, String> {
                let host = plain(host, &vat)?;
                // InfraBox's name for the build context.
                let host = match host.strip_prefix("/infrabox/context") {
                    Some(rest) => format!("{}{rest}", ours.context.display()),
                    None => host.to_string(),
                };
                if host.starts_with('~') {
                    return Err(format!("{vat}: {host:?} is outside the job's source"));
                }
                in_source(root, dir, &host, &vat)
            };
            match volume {
                Yaml::String(short) => {
                    let parts: Vec<&str> = short.split(':').collect();
                    let host = parts[0];
                    let named = !host.starts_with(['/', '.', '~']) && parts.len() > 1;
                    let anonymous = parts.len() == 1;
                    if named || anonymous {
                        plain(short.as_str(), &vat)?;
                        volumes.push(Yaml::String(short));
                        continue;
                    }
                    if parts.len() > 3 {
                        return Err(format!("{vat}: {short:?} is not source:target[:mode]"));
                    }
                    let resolved = bind(host)?;
                    let target = plain(parts[1], &vat)?;
                    volumes.push(Yaml::String(format!("{}:{target}:ro", resolved.display())));
                }
                Yaml::Mapping(mut long) => {
                    refuse_keys(
                        &long,
                        &["type", "source", "target", "read_only"],
                        &format!("{vat}."),
                        "not for a job",
                    )?;
                    match long.get("type").and_then(Yaml::as_str) {
                        Some("bind") => {
                            let source = long
                                .get("source")
                                .and_then(Yaml::as_str)
                                .ok_or_else(|| format!("{vat}.source: missing"))?;
                            let resolved = bind(source)?;
                            long.insert("source".into(), Yaml::String(resolved.display().to_string()));
                            long.insert("read_only".into(), Yaml::Bool(true));
                        }
                        Some("volume") | Some("tmpfs") => {
                            if let Some(source) = long.get("source").and_then(Yaml::as_str) {
                                plain(source, &vat)?;
                            }
                        }
                        other => return Err(format!("{vat}.type: {other:?} is not bind, volume or tmpfs")),
                    }
                    volumes.push(Yaml::Mapping(long));
                }
                other => return Err(format!("{vat}: not a string or a mapping: {other:?}")),
            }
        }
        for (host, at, ro) in ours.mounts {
            volumes.push(Yaml::String(format!("{}:{at}{}", host.display(), if *ro { ":ro" } else { "" })));
        }
        // The build context, read-only: a service must not change what another one mounts.
        volumes.push(Yaml::String(format!("{}:/infrabox/context:ro", ours.context.display())));
        service.insert("volumes".into(), Yaml::Sequence(volumes));
        // env_file: resolved inside the source, then the job's own variables.
        let mut env_files = Vec::new();
        let listed = match service.get("env_file") {
            None => Vec::new(),
            Some(Yaml::String(one)) => vec![Yaml::String(one.clone())],
            Some(Yaml::Sequence(many)) => many.clone(),
            Some(_) => return Err(format!("{at}.env_file: not a path or a list")),
        };
        for (i, entry) in listed.iter().enumerate() {
            let eat = format!("{at}.env_file[{i}]");
            let path = entry.as_str().ok_or_else(|| format!("{eat}: not a path"))?;
            env_files.push(Yaml::String(in_source(root, dir, plain(path, &eat)?, &eat)?.display().to_string()));
        }
        env_files.push(Yaml::String(ours.env_file.display().to_string()));
        service.insert("env_file".into(), Yaml::Sequence(env_files));
        if let Some(build) = service.get_mut("build") {
            let bat = format!("{at}.build");
            let mut map = match build {
                Yaml::String(context) => {
                    let mut map = Mapping::new();
                    map.insert("context".into(), Yaml::String(context.clone()));
                    map
                }
                Yaml::Mapping(map) => map.clone(),
                _ => return Err(format!("{bat}: not a path or a mapping")),
            };
            refuse_keys(&map, &BUILD_KEYS, &format!("{bat}."), "not for a job (it reaches past the build)")?;
            let context = map.get("context").and_then(Yaml::as_str).unwrap_or(".").to_string();
            let context = in_source(root, dir, plain(&context, &format!("{bat}.context"))?, &format!("{bat}.context"))?;
            if let Some(file) = map.get("dockerfile").and_then(Yaml::as_str) {
                let file = in_source(
                    root,
                    &context,
                    plain(file, &format!("{bat}.dockerfile"))?,
                    &format!("{bat}.dockerfile"),
                )?;
                map.insert("dockerfile".into(), Yaml::String(file.display().to_string()));
            }
            map.insert("context".into(), Yaml::String(context.display().to_string()));
            let labels = map.entry("labels".into()).or_insert_with(|| Yaml::Mapping(Mapping::new()));
            if let Yaml::Mapping(labels) = labels {
                labels.insert("atoll.project".into(), ours.project.into());
            }
            *build = Yaml::Mapping(map);
        }
        let labels = service.entry("labels".into()).or_insert_with(|| Yaml::Mapping(Mapping::new()));
        let (label_key, label_value) = ours.label.split_once('=').unwrap_or((ours.label, ""));
        match labels {
            Yaml::Mapping(m) => {
                m.insert(label_key.into(), label_value.into());
            }
            Yaml::Sequence(items) => items.push(Yaml::String(ours.label.to_string())),
            _ => return Err(format!("{at}.labels: not a mapping or a list")),
        }
        // The job's limits, where the file set none.
        if let (Some(mib), false) = (ours.spec.resources.memory_mib, service.contains_key("mem_limit")) {
            service.insert("mem_limit".into(), Yaml::String(format!("{mib}m")));
        }
        if let (Some(millis), false) = (ours.spec.resources.cpu_millis, service.contains_key("cpus")) {
            service.insert("cpus".into(), Yaml::String(format!("{}.{:03}", millis / 1000, millis % 1000)));
        }
    }
    Ok(())
}

/// The job's variables as an env file of the run (owner-only), for `--env-file` and compose's
/// `env_file`; a value with a line break cannot be written there, and is refused by name.
fn write_env_file(path: &Path, vars: &[(String, String)]) -> Result<PathBuf, String> {
    let mut text = String::new();
    for (key, value) in vars {
        if value.contains(['\n', '\r', '\0']) {
            return Err(format!(
                "{key}: a value with a line break cannot be given to a container (an env file holds one line per variable)"
            ));
        }
        text.push_str(&format!("{key}={value}\n"));
    }
    let _ = std::fs::remove_file(path);
    write_owner_only(path, text.as_bytes())
        .map_err(|e| format!("writing the run's variables to {}: {e}", path.display()))?;
    Ok(path.to_path_buf())
}

/// Write `bytes` to a new file at `path` only its owner can read, never through a link.
fn write_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?
        .write_all(bytes)
}

/// Move the deployments' steps with `always_push == always` to the end of `steps`.
fn push_steps(steps: &mut Vec<Step>, pushes: &mut Vec<(bool, Vec<Step>)>, always: bool) {
    let (now, later): (Vec<_>, Vec<_>) = std::mem::take(pushes).into_iter().partition(|(a, _)| *a == always);
    *pushes = later;
    steps.extend(now.into_iter().flat_map(|(_, s)| s));
}

/// One registry login of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Login {
    /// `host[:port][/path]`.
    registry: String,
    repository: Option<String>,
    user: String,
    password: String,
}

/// The registry logins of a run: each of its `registries` and `deployments` that names a
/// username, with the password the gateway gave for it.
fn registry_logins(request: &RunRequest) -> Result<Vec<Login>, String> {
    let mut logins = Vec::new();
    for (list, registries) in request.spec.container.registry_lists() {
        for (i, r) in registries.iter().enumerate() {
            let Some(user) = &r.username else { continue };
            let password = match (request.secrets.registry_password(list, i), &r.password) {
                (Some(given), _) => given,
                (None, Some(_)) => return Err(format!("{list}[{i}].password: the gateway gave no value")),
                (None, None) => "",
            };
            logins.push(Login {
                registry: r.host.trim_end_matches('/').to_string(),
                repository: r.repository.clone(),
                user: user.clone(),
                password: password.to_string(),
            });
        }
    }
    Ok(logins)
}

/// The replica's docker client configuration directory (`DOCKER_CONFIG`, else `~/.docker`).
fn docker_config_dir() -> PathBuf {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".docker"),
    }
}

/// Write the run's registry logins to `dir/config.json`, in an owner-only directory: the auth
/// file format both engines read. Each login is written under `registry/repository` (podman
/// takes the most specific match, so a pull login and a push login for two repositories of one
/// host both work) and, first come, under `registry` and its host alone (docker matches by host
/// only). With `docker_base` (the replica's docker configuration directory) the file is a copy
/// of its `config.json` with these logins instead of its own (and no credential helpers), and
/// its `contexts` are linked, so the docker client works as the replica's does.
fn write_auth_file(dir: &Path, logins: &[Login], docker_base: Option<&Path>) -> Result<(), String> {
    use base64::Engine as _;
    use std::os::unix::fs::DirBuilderExt;
    let failed = |e: std::io::Error| format!("writing the run's registry logins to {}: {e}", dir.display());
    let _ = std::fs::remove_dir_all(dir);
    std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(failed)?;
    let mut auths = serde_json::Map::new();
    for login in logins {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", login.user, login.password));
        let entry = serde_json::json!({ "auth": auth });
        let mut keys = Vec::new();
        if let Some(repository) = &login.repository {
            keys.push(format!("{}/{}", login.registry, repository.trim_matches('/')));
        }
        keys.push(login.registry.clone());
        if let Some((host, _)) = login.registry.split_once('/') {
            keys.push(host.to_string());
        }
        for key in keys {
            auths.entry(key).or_insert_with(|| entry.clone());
        }
    }
    let mut config = serde_json::Map::new();
    if let Some(base) = docker_base {
        if let Ok(text) = std::fs::read(base.join("config.json"))
            && let Ok(serde_json::Value::Object(own)) = serde_json::from_slice(&text)
        {
            config = own;
        }
        for key in ["auths", "credsStore", "credHelpers"] {
            config.remove(key);
        }
        if base.join("contexts").is_dir() {
            std::os::unix::fs::symlink(base.join("contexts"), dir.join("contexts")).map_err(failed)?;
        }
    }
    config.insert("auths".into(), serde_json::Value::Object(auths));
    let text = serde_json::to_vec_pretty(&serde_json::Value::Object(config)).map_err(|e| e.to_string())?;
    write_owner_only(&dir.join("config.json"), &text).map_err(failed)
}

/// The engine's own environment, the same for every engine command: the replica's settings an
/// engine reads (where it is, its configuration, its storage), never a job's variables.
pub fn engine_env() -> Vec<(OsString, OsString)> {
    const KEPT: [&str; 16] = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "TMPDIR",
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "DOCKER_HOST",
        "DOCKER_CONFIG",
        "DOCKER_CONTEXT",
        "CONTAINER_HOST",
        "CONTAINERS_CONF",
        "CONTAINERS_STORAGE_CONF",
        "REGISTRY_AUTH_FILE",
    ];
    let mut env: Vec<(OsString, OsString)> =
        KEPT.iter().filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v))).collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), super::run::DEFAULT_PATH.into()));
    }
    env
}

/// Run `argv` to its end within [`HOUSEKEEPING`]: its standard output, or why it failed.
/// The engine's environment is [`engine_env`], whatever the replica's is.
pub async fn output(argv: &[String]) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("no command")?;
    let mut command = tokio::process::Command::new(program);
    command.args(args).env_clear().envs(engine_env()).kill_on_drop(true).stdin(std::process::Stdio::null());
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
    pub commands: std::collections::VecDeque<Vec<String>>,
    /// The run's work directory, whose files holding secrets go after the commands (which may
    /// read them: a compose file names its env file).
    pub secrets_in: Option<PathBuf>,
}

impl Cleanup {
    /// The run removes them itself, one command after the other: what an abort leaves undone
    /// is done when this is dropped.
    pub async fn now(mut self) {
        while let Some(argv) = self.commands.front().cloned() {
            if let Err(e) = output(&argv).await {
                tracing::warn!(error = %e, "removing what a run made failed");
            }
            self.commands.pop_front();
        }
        if let Some(dir) = self.secrets_in.take() {
            remove_run_secrets(&dir);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let commands = std::mem::take(&mut self.commands);
        let secrets_in = self.secrets_in.take();
        if commands.is_empty() {
            if let Some(dir) = secrets_in {
                remove_run_secrets(&dir);
            }
            return;
        }
        std::thread::spawn(move || {
            for argv in commands {
                let Some((program, args)) = argv.split_first() else { continue };
                let child = std::process::Command::new(program)
                    .args(args)
                    .env_clear()
                    .envs(engine_env())
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
            if let Some(dir) = secrets_in {
                remove_run_secrets(&dir);
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
          {"Name": "/p_db_1", "State": {"ExitCode": 137, "StartedAt": "2026-12-07T09:00:10Z", "FinishedAt": "2026-12-07T09:00:16.5Z"}},
          {"Name": "p_test_1", "State": {"ExitCode": 3, "StartedAt": "2026-12-07T09:00:11Z", "FinishedAt": "2026-12-07T09:00:15.123456789Z"}}
        ]"#;
        let end = first_stopped(json).unwrap();
        assert_eq!(end.first, Some(("p_test_1".to_string(), 3)));
        assert_eq!(end.verdict(), (3, "p_test_1 stopped first, with 3".to_string()));
        // One ended well, another never started (`up` failed on it): a failure.
        let json = r#"[
          {"Name": "p_ok_1", "State": {"ExitCode": 0, "StartedAt": "2026-12-07T09:00:14Z", "FinishedAt": "2026-12-07T09:00:15Z"}},
          {"Name": "p_late_1", "State": {"ExitCode": 0, "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"}}
        ]"#;
        let (code, said) = first_stopped(json).unwrap().verdict();
        assert_eq!((code, said.as_str()), (1, "p_ok_1 stopped first, with 0; p_late_1 never started"));
        assert_eq!(first_stopped("[]").unwrap().verdict().0, 1);
    }

    #[test]
    fn names_made_from_jobs_are_what_engines_accept() {
        assert_eq!(slug("0123abc.flow.Build_1"), "0123abc.flow.build_1");
        assert_eq!(slug("-a b/c-"), "a-b-c");
    }

    /// The compose file `text` at `ci/docker-compose.yml` of a source, rewritten: the new text,
    /// or why it was refused.
    fn rewritten(text: &str) -> Result<Yaml, String> {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("ci/svc")).unwrap();
        std::fs::write(root.join("ci/svc/Dockerfile"), "FROM x\n").unwrap();
        std::fs::write(root.join("ci/svc/env"), "A=1\n").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("ci/etc")).unwrap();
        let file = root.join("ci/docker-compose.yml");
        std::fs::write(&file, text).unwrap();
        let spec = atoll_api::spec::parse(
            "version: 1\njobs: [{name: t, type: docker-compose, docker_compose_file: c.yml, resources: {limits: {memory: 256, cpu: 0.5}}}]",
        )
        .unwrap()
        .jobs
        .remove(0);
        let mounts = vec![(PathBuf::from("/w/output"), "/infrabox/output".to_string(), false)];
        let ours = Ours {
            mounts: &mounts,
            context: &root.join("ci"),
            env_file: Path::new("/w/.atoll-env"),
            label: "atoll.work=/w",
            project: "p",
            spec: &spec,
        };
        let out = rewrite_compose(&file, &root, &ours)?;
        let text = std::fs::read_to_string(out).unwrap().replace(&root.display().to_string(), "/SRC");
        Ok(serde_yaml_ng::from_str(&text).unwrap())
    }

    #[test]
    fn a_compose_file_gets_infraboxs_directories_its_paths_resolved_and_the_variables_from_a_file() {
        let doc = rewritten(
            "services:\n  test:\n    build: ./svc\n    volumes: [\"/infrabox/context/svc:/data\", cache:/cache]\n    env_file: svc/env\n  db:\n    image: x\n    labels: {keep: 'yes'}\n    mem_limit: 1g\nvolumes: {cache: {}}\n",
        )
        .unwrap();
        let test = &doc["services"]["test"];
        let volumes: Vec<&str> = test["volumes"].as_sequence().unwrap().iter().filter_map(Yaml::as_str).collect();
        assert_eq!(
            volumes,
            ["/SRC/ci/svc:/data:ro", "cache:/cache", "/w/output:/infrabox/output", "/SRC/ci:/infrabox/context:ro"],
            "a bind from the source read-only, resolved; atoll's after"
        );
        let env: Vec<&str> = test["env_file"].as_sequence().unwrap().iter().filter_map(Yaml::as_str).collect();
        assert_eq!(env, ["/SRC/ci/svc/env", "/w/.atoll-env"]);
        assert_eq!(test["build"]["context"], Yaml::from("/SRC/ci/svc"));
        assert_eq!(test["build"]["labels"]["atoll.project"], Yaml::from("p"));
        assert_eq!((test["mem_limit"].as_str(), test["cpus"].as_str()), (Some("256m"), Some("0.500")));
        let db = &doc["services"]["db"];
        assert_eq!(db["labels"]["keep"], Yaml::from("yes"));
        assert_eq!(db["labels"]["atoll.work"], Yaml::from("/w"));
        assert_eq!(db["mem_limit"], Yaml::from("1g"), "the file's own limit stays");
    }

    #[test]
    fn a_compose_file_reaching_the_host_is_refused_by_its_path() {
        let cases = [
            ("services: {t: {image: x, privileged: true}}", "services.t.privileged: not for a job"),
            ("services: {t: {image: x, network_mode: host}}", "services.t.network_mode"),
            ("services: {t: {image: x, pid: host}}", "services.t.pid"),
            ("services: {t: {image: x, deploy: {}}}", "services.t.deploy"),
            ("services: {t: {image: '--privileged'}}", "services.t.image: \"--privileged\" is not an image"),
            ("services: {t: {image: '${X}'}}", "services.t.image: \"${X}\": no variables"),
            ("services: {t: {image: x, volumes: ['/etc:/host-etc']}}", "services.t.volumes[0] \"/etc\" leads out"),
            ("services: {t: {image: x, volumes: ['../../..:/up']}}", "services.t.volumes[0] \"../../..\" leads out"),
            ("services: {t: {image: x, volumes: ['./etc/..:/up']}}", "leads out"),
            ("services: {t: {image: x, volumes: ['/infrabox/context/../../..:/h']}}", "leads out"),
            ("services: {t: {image: x, volumes: ['${HOME}:/h']}}", "no variables"),
            ("services: {t: {image: x, volumes: [{type: bind, source: /, target: /h}]}}", "services.t.volumes[0]"),
            ("services: {t: {image: x, volumes: ['~/.ssh:/k']}}", "services.t.volumes[0]"),
            ("services: {t: {image: x, env_file: /etc/atoll/env}}", "services.t.env_file[0]"),
            ("services: {t: {image: x, env_file: etc/shadow}}", "leads out"),
            ("services: {t: {build: {context: /etc}}}", "services.t.build.context"),
            ("services: {t: {build: {context: ., dockerfile: ../../x}}}", "services.t.build.dockerfile"),
            ("services: {t: {build: {context: ., network: host}}}", "services.t.build.network"),
            ("services: {t: {image: x}}\nsecrets: {k: {file: /etc/shadow}}", "secrets.k.file"),
            ("services: {t: {image: x}}\nvolumes: {v: {driver_opts: {o: bind, device: /}}}", "volumes.v.driver_opts"),
            ("services: {t: {image: x}}\nvolumes: {v: {external: true, name: other}}", "volumes.v.external"),
            ("services: {t: {image: x}}\nnetworks: {n: {external: true, name: host}}", "networks.n.external"),
            ("include: [c.yml]\nservices: {t: {image: x}}", "include: not for a job"),
            ("name: other\nservices: {t: {image: x}}", "name: not for a job"),
            ("services: {t: {image: x, extends: {file: c.yml, service: s}}}", "services.t.extends"),
            ("x-p: &p {privileged: true}\nservices: {t: {<<: *p, image: x}}", "services.t.privileged"),
        ];
        for (text, wanted) in cases {
            let err = rewritten(text).expect_err(text);
            assert!(err.contains(wanted), "{text}: {err}");
            assert!(err.starts_with("ci/docker-compose.yml: "), "the file is named: {err}");
        }
    }

    #[test]
    fn paths_of_the_job_stay_inside_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("source");
        std::fs::create_dir_all(root.join("app")).unwrap();
        let root = root.canonicalize().unwrap();
        std::fs::write(root.join("app/Dockerfile"), "FROM x\n").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("app/escape")).unwrap();
        let app = root.join("app");
        assert!(in_source(&root, &app, "Dockerfile", "docker_file").is_ok());
        assert!(in_source(&root, &app, "../app/Dockerfile", "docker_file").is_ok(), "up and down, inside");
        assert_eq!(in_source(&root, &app, "..", "build_context").unwrap(), root, "up to the source's root");
        let out = in_source(&root, &app, "../../../../../../../../etc/hostname", "docker_file").unwrap_err();
        assert!(out.contains("leads out"), "{out}");
        assert!(in_source(&root, &app, "escape", "docker_file").unwrap_err().contains("leads out"));
        assert!(in_source(&root, &app, "new/dir", "bind").is_ok(), "not there yet, inside");
        let err = in_source(&root, &app, "new/../../..", "bind").unwrap_err();
        assert!(err.contains("not in the job's source"), "{err}");
    }

    #[test]
    fn variables_go_to_an_owner_only_file_and_a_line_break_is_refused_by_name() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".env");
        write_env_file(&file, &[("A".into(), "1 2".into()), ("B".into(), "x=y".into())]).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "A=1 2\nB=x=y\n");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let err = write_env_file(&file, &[("KEY".into(), "-----BEGIN\nx".into())]).unwrap_err();
        assert!(err.starts_with("KEY: a value with a line break"), "{err}");
    }

    #[test]
    fn the_engine_gets_the_replicas_settings_and_never_a_jobs_variables() {
        let env = engine_env();
        assert!(env.iter().any(|(k, _)| k == "PATH"));
        assert!(env.iter().all(|(k, _)| k != "LD_PRELOAD" && k != "PYTHONPATH"));
    }

    #[test]
    fn logins_are_written_owner_only_by_repository_then_host_and_docker_keeps_its_own_settings() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let login = |registry: &str, repository: &str, user: &str| Login {
            registry: registry.into(),
            repository: Some(repository.into()),
            user: user.into(),
            password: format!("{user}-pw"),
        };
        let logins = [
            login("r.example:5000", "team/pull", "puller"),
            login("r.example:5000", "team/push", "pusher"),
            login("quay.io/infrabox", "test", "quay"),
        ];
        let auth = dir.path().join("auth");
        write_auth_file(&auth, &logins, None).unwrap();
        let file = auth.join("config.json");
        assert_eq!(std::fs::metadata(&auth).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let user_of = |key: &str| {
            use base64::Engine as _;
            let auth = written["auths"][key]["auth"].as_str().unwrap_or_else(|| panic!("{key} in {written}"));
            let decoded = base64::engine::general_purpose::STANDARD.decode(auth).unwrap();
            String::from_utf8(decoded).unwrap()
        };
        assert_eq!(user_of("r.example:5000/team/pull"), "puller:puller-pw");
        assert_eq!(user_of("r.example:5000/team/push"), "pusher:pusher-pw", "each repository its own login");
        assert_eq!(user_of("r.example:5000"), "puller:puller-pw", "the host: the first");
        assert_eq!(user_of("quay.io/infrabox/test"), "quay:quay-pw");
        assert_eq!(user_of("quay.io/infrabox"), "quay:quay-pw");
        assert_eq!(user_of("quay.io"), "quay:quay-pw", "docker matches the host alone");

        // docker: the replica's own configuration, its logins and helpers replaced, its contexts
        // linked.
        let base = dir.path().join("docker");
        std::fs::create_dir_all(base.join("contexts/meta")).unwrap();
        std::fs::write(
            base.join("config.json"),
            r#"{"auths": {"own.example": {"auth": "b3du"}}, "credsStore": "desktop", "currentContext": "remote"}"#,
        )
        .unwrap();
        write_auth_file(&auth, &logins[..1], Some(&base)).unwrap();
        let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(written["currentContext"], "remote");
        assert!(written.get("credsStore").is_none() && written["auths"].get("own.example").is_none(), "{written}");
        assert!(written["auths"].get("r.example:5000").is_some(), "{written}");
        assert!(auth.join("contexts/meta").is_dir(), "the contexts are the replica's");
    }
}
