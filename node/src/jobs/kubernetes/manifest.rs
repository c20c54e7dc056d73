//! The Kubernetes objects of an attempt, pure: the Job (and its pod) built from the run
//! request and the executor's settings ([`build_job`]), its name and labels, and what an ended
//! Job and its pod say of the attempt's end ([`outcome`], [`with_helpers`]). The pod's helpers
//! get their environment by the contract in [`atoll_api::pod`]. No call to Kubernetes here; the
//! executor ([`super`]) makes them.

use std::collections::BTreeMap;

use atoll_api::pod;
use atoll_api::spec::Command as JobCommand;
use atoll_api::spec::JobKind;
use atoll_raft_store::jobs::EndState;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::batch::v1::JobSpec;
use k8s_openapi::api::core::v1::Capabilities;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::api::core::v1::ContainerStateTerminated;
use k8s_openapi::api::core::v1::EmptyDirVolumeSource;
use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::api::core::v1::EnvVarSource;
use k8s_openapi::api::core::v1::ExecAction;
use k8s_openapi::api::core::v1::PodSecurityContext;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::core::v1::SeccompProfile;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::SecretKeySelector;
use k8s_openapi::api::core::v1::SecretVolumeSource;
use k8s_openapi::api::core::v1::SecurityContext;
use k8s_openapi::api::core::v1::Volume;
use k8s_openapi::api::core::v1::VolumeMount;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::jobs::run::RunRequest;

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_CLUSTER: &str = "atoll.dev/cluster";
pub const LABEL_PIPELINE: &str = "atoll.dev/pipeline";
pub const LABEL_JOB: &str = "atoll.dev/job";
pub const LABEL_ATTEMPT: &str = "atoll.dev/attempt";
pub const ANNOTATION_JOB_ID: &str = "atoll.dev/job-id";
const OUTPUT_DIR: &str = "/atoll/output";
const INPUTS_DIR: &str = "/atoll/inputs";
const SOURCE_DIR: &str = "/atoll/source";
/// The output helper's own directory: it marks there that it is ready to be stopped.
const HELPER_DIR: &str = "/atoll/helper";
/// The job's own container.
pub const MAIN_CONTAINER: &str = "job";
/// The init container that puts the inputs and the source in place before the job starts.
pub const INPUTS_HELPER: &str = "atoll-inputs";
/// The init container that builds a `docker` job's image before the job's container runs it.
pub const BUILD_CONTAINER: &str = "atoll-build";
/// Where a builder reads registry credentials (kaniko's place).
const BUILDER_DOCKER_CONFIG: &str = "/kaniko/.docker";
/// The sidecar that stores the output once the job's container ended.
pub const OUTPUT_HELPER: &str = "atoll-output";
/// How long the output helper has, once the job's container ended, to store the output.
const OUTPUT_GRACE_S: i64 = 600;
/// Most a name or label value may be.
const MAX_NAME: usize = 63;

/// The Kubernetes Job of an attempt: `atoll-<job id>-<attempt>` in DNS-label form; a long id is
/// shortened and made unique by a hash of the whole id.
pub fn job_name(job: &str, attempt: u32) -> String {
    let suffix = format!("-{attempt}");
    let body = dns_label(job);
    let room = MAX_NAME - "atoll-".len() - suffix.len();
    let body = if body.len() <= room && body == job {
        body
    } else {
        // Not a faithful copy (characters replaced, or too long): add a hash so two ids never
        // share a name.
        let hash = crate::jobs::run::short_hash(job);
        let keep = room.saturating_sub(hash.len() + 1).min(body.len());
        format!("{}-{hash}", body[..keep].trim_end_matches('-'))
    };
    format!("atoll-{body}{suffix}")
}

/// A label value for `value`: itself when it is one, else a shortened and hashed form.
pub fn label_value(value: &str) -> String {
    let valid = value.len() <= MAX_NAME
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && value.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if valid {
        return value.to_string();
    }
    let hash = crate::jobs::run::short_hash(value);
    let body = dns_label(value);
    let keep = (MAX_NAME - hash.len() - 1).min(body.len());
    let body = body[..keep].trim_matches('-');
    if body.is_empty() { hash } else { format!("{body}-{hash}") }
}

/// Lowercase letters, digits and single dashes.
fn dns_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// What a Job's pod needs besides the attempt: images, and how its helpers reach the replicas.
#[derive(Clone, Debug)]
pub struct PodSetup {
    pub command_image: String,
    pub helper_image: String,
    /// The replicas' pod listeners, tried in order.
    pub pod_urls: Vec<String>,
    /// The mesh CA (PEM) the helpers check a replica's certificate against.
    pub ca_pem: String,
    /// Whether job containers may run as root (`jobs.kubernetes.allow_root`); otherwise every
    /// container runs as an unprivileged user under the restricted security context.
    pub allow_root: bool,
    /// Builds `docker` jobs' images in the pod (`jobs.kubernetes.builder`); `None`: they do not
    /// run here.
    pub builder: Option<crate::config::BuilderConfig>,
}

/// The uid and gid job pods run as unless root is allowed (the conventional `nobody`).
const POD_USER: i64 = 65534;

/// The pod's security context: no service-account token, non-root, the runtime's default
/// seccomp profile (the restricted Pod Security Standard), unless root is allowed.
fn pod_security(allow_root: bool) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: (!allow_root).then_some(true),
        run_as_user: (!allow_root).then_some(POD_USER),
        run_as_group: (!allow_root).then_some(POD_USER),
        fs_group: (!allow_root).then_some(POD_USER),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

/// Every container's own context: no privilege escalation, no capabilities.
fn container_security(allow_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: (!allow_root).then(|| Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        ..Default::default()
    }
}

/// The Kubernetes Job for an attempt (pure).
pub fn build_job(request: &RunRequest, cluster: &str, setup: &PodSetup) -> Result<Job, String> {
    let command_image = setup.command_image.as_str();
    let spec = &request.spec;
    let secret = request.secret.as_deref().ok_or("the attempt has no secret recorded for its pod's helpers")?;
    let (image, command) = match (&spec.kind, &spec.command) {
        (JobKind::Wait, _) => return Err("a wait job runs nothing".to_string()),
        (JobKind::Workflow | JobKind::Git, _) => {
            return Err(
                "an include job runs nothing: its jobs take its place when the pipeline is submitted".to_string()
            );
        }
        (JobKind::DockerCompose, _) => {
            return Err(
                "the kubernetes executor does not run docker-compose jobs (a pod has no container engine)".into()
            );
        }
        (JobKind::Docker, _) => {
            let builder = setup.builder.as_ref().ok_or(
                "a docker job needs an image builder in its pod (jobs.kubernetes.builder); this cluster has none",
            )?;
            let image = format!(
                "{}/{}:{}-{}",
                builder.registry,
                dns_label(&spec.name.replace('/', "-")),
                label_value(&request.pipeline),
                request.attempt
            );
            (image, None)
        }
        (JobKind::Command, Some(JobCommand::Shell(line))) => {
            (command_image.to_string(), Some(vec!["sh".to_string(), "-c".to_string(), line.clone()]))
        }
        (JobKind::Command, Some(JobCommand::Argv(argv))) if !argv.is_empty() => {
            (command_image.to_string(), Some(argv.clone()))
        }
        (JobKind::Command, _) => return Err("the job has no command".to_string()),
        (JobKind::DockerImage, command) => {
            let image = spec.image.clone().ok_or("a docker-image job needs an image")?;
            let command = match command {
                Some(JobCommand::Shell(line)) => Some(vec!["sh".to_string(), "-c".to_string(), line.clone()]),
                Some(JobCommand::Argv(argv)) if !argv.is_empty() => Some(argv.clone()),
                _ => None,
            };
            (image, command)
        }
    };
    let mut env = vec![
        env_var("ATOLL_JOB_ID", &request.job),
        env_var("ATOLL_ATTEMPT", &request.attempt.to_string()),
        env_var("ATOLL_PIPELINE", &request.pipeline),
        env_var(pod::OUTPUT, OUTPUT_DIR),
        env_var("ATOLL_INPUTS", INPUTS_DIR),
    ];
    if spec.source.is_some() {
        env.push(env_var("ATOLL_SOURCE", SOURCE_DIR));
    }
    let infrabox = atoll_api::spec::infrabox_env(&request.job, &request.pipeline, request.attempt, spec);
    env.extend(infrabox.iter().filter(|(k, _)| !spec.environment.contains_key(k)).map(|(k, v)| env_var(k, v)));
    env.extend(spec.environment.iter().map(|(k, v)| env_var(k, v)));
    // Secret variables by reference to the attempt's Secret ([`secret_for`]): no value in the
    // Job, which more may read than the Secret.
    env.extend(spec.secret_env.keys().map(|key| EnvVar {
        name: key.clone(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: job_name(&request.job, request.attempt),
                key: key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }));
    let mut limits = BTreeMap::new();
    if let Some(cpu) = spec.resources.cpu_millis {
        limits.insert("cpu".to_string(), Quantity(format!("{cpu}m")));
    }
    if let Some(memory) = spec.resources.memory_mib {
        limits.insert("memory".to_string(), Quantity(format!("{memory}Mi")));
    }
    let labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), "atoll".to_string()),
        (LABEL_CLUSTER.to_string(), label_value(cluster)),
        (LABEL_PIPELINE.to_string(), label_value(&request.pipeline)),
        (LABEL_JOB.to_string(), label_value(&request.job)),
        (LABEL_ATTEMPT.to_string(), request.attempt.to_string()),
    ]);
    let annotations = BTreeMap::from([(ANNOTATION_JOB_ID.to_string(), request.job.clone())]);
    let volume = |name: &str| Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    };
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        ..Default::default()
    };
    let mut mounts = vec![mount("output", OUTPUT_DIR), mount("inputs", INPUTS_DIR)];
    let mut volumes = vec![volume("output"), volume("inputs")];
    if spec.source.is_some() {
        mounts.push(mount("source", SOURCE_DIR));
        volumes.push(volume("source"));
    }
    // The job's build context, in the source: the directory of the file that defines it, then
    // `build_context` (checked to stay inside the source).
    let context = match &spec.source {
        Some(_) => Some(context_dir(spec)?),
        None if spec.kind == JobKind::Docker => {
            return Err(
                "a docker job builds from the pipeline's source: push the files (`atoll push DIR`) and name the source"
                    .into(),
            );
        }
        None => None,
    };
    // InfraBox's paths too, for the images written for InfraBox.
    let mut job_mounts = mounts.clone();
    if matches!(spec.kind, JobKind::Docker | JobKind::DockerImage) {
        job_mounts.push(mount("output", "/infrabox/output"));
        let mut shorts = BTreeMap::new();
        for input in &request.inputs {
            let short = input.from_job.rsplit('/').next().unwrap_or(&input.from_job);
            if let Some(other) = shorts.insert(short, &input.from_job) {
                return Err(format!(
                    "parents {other:?} and {:?} would both be /infrabox/inputs/{short} (InfraBox names a parent's directory by the last part of its name)",
                    input.from_job
                ));
            }
            job_mounts.push(VolumeMount {
                sub_path: Some(input.from_job.clone()),
                read_only: Some(true),
                ..mount("inputs", &format!("/infrabox/inputs/{short}"))
            });
        }
        if let Some(context) = &context {
            let sub = context.strip_prefix(SOURCE_DIR).unwrap_or("").trim_start_matches('/');
            job_mounts.push(VolumeMount {
                sub_path: (!sub.is_empty()).then(|| sub.to_string()),
                ..mount("source", "/infrabox/context")
            });
        }
    }
    // The helpers run the atoll binary of the helper image; what they share with the replicas.
    let helper_env = [
        env_var(pod::CLUSTER, cluster),
        env_var(pod::JOB_ID, &request.job),
        env_var(pod::ATTEMPT, &request.attempt.to_string()),
        env_var(pod::URLS, &pod::encode_urls(&setup.pod_urls)),
        env_var(pod::SECRET, secret),
        env_var(pod::CA, &setup.ca_pem),
    ];
    let helper = |name: &str, command: &str, extra: Vec<EnvVar>, mounts: Vec<VolumeMount>| Container {
        name: name.to_string(),
        image: Some(setup.helper_image.clone()),
        command: Some(vec!["atoll".to_string(), "pod".to_string(), command.to_string()]),
        env: Some(helper_env.iter().cloned().chain(extra).collect()),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        security_context: Some(container_security(setup.allow_root)),
        ..Default::default()
    };
    let mut blobs: Vec<pod::PodBlob> = request
        .inputs
        .iter()
        .map(|i| pod::PodBlob { digest: i.digest.clone(), dir: format!("{INPUTS_DIR}/{}", i.from_job) })
        .collect();
    if let Some(source) = &spec.source {
        blobs.push(pod::PodBlob { digest: source.clone(), dir: SOURCE_DIR.to_string() });
    }
    let mut init_containers = Vec::new();
    if !blobs.is_empty() {
        let blobs = pod::encode_blobs(&blobs);
        // The job's mounts but its output.
        let helper_mounts = mounts.iter().filter(|m| m.name != "output").cloned().collect();
        init_containers.push(helper(INPUTS_HELPER, "inputs", vec![env_var(pod::BLOBS, &blobs)], helper_mounts));
    }
    // A sidecar (an init container that keeps running): Kubernetes stops it once the job's
    // container ended, and it stores the output then, before the pod, and so the Job, ends.
    let started = format!("{HELPER_DIR}/started");
    let mut output_helper = helper(
        OUTPUT_HELPER,
        "output",
        vec![env_var(pod::OUTPUT, OUTPUT_DIR), env_var(pod::STARTED, &started)],
        vec![mount("output", OUTPUT_DIR), mount("helper", HELPER_DIR)],
    );
    output_helper.restart_policy = Some("Always".to_string());
    // The job's container starts only once the helper waits for its stop: a job that ends at
    // once must not stop the helper before it can store the output.
    output_helper.startup_probe = Some(Probe {
        exec: Some(ExecAction { command: Some(vec!["atoll".into(), "pod".into(), "started".into()]) }),
        period_seconds: Some(1),
        failure_threshold: Some(60),
        ..Default::default()
    });
    volumes.push(volume("helper"));
    let mut main = Container {
        name: MAIN_CONTAINER.to_string(),
        image: Some(image),
        command,
        env: Some(env),
        resources: (!limits.is_empty()).then(|| ResourceRequirements { limits: Some(limits), ..Default::default() }),
        volume_mounts: Some(job_mounts),
        security_context: Some(container_security(setup.allow_root)),
        ..Default::default()
    };
    if let (JobKind::Docker, Some(builder), Some(context)) = (&spec.kind, &setup.builder, &context) {
        let build = build_container(request, builder, context, main.image.as_deref().unwrap_or_default(), &main)?;
        if let Some(secret) = &builder.push_secret {
            volumes.push(Volume {
                name: "registry".into(),
                secret: Some(SecretVolumeSource { secret_name: Some(secret.clone()), ..Default::default() }),
                ..Default::default()
            });
        }
        if spec.container.build_only == Some(false) {
            // Built first, then run by the job's container.
            init_containers.push(build);
        } else {
            // InfraBox's default: the build is the job.
            main = Container { name: MAIN_CONTAINER.to_string(), ..build };
        }
    }
    init_containers.push(output_helper);
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(&request.job, request.attempt)),
            labels: Some(labels.clone()),
            annotations: Some(annotations.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(i64::try_from(spec.timeout_s.max(1)).unwrap_or(i64::MAX)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_string()),
                    // A job has no business with the cluster's API: no token in its pod.
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security(setup.allow_root)),
                    termination_grace_period_seconds: Some(OUTPUT_GRACE_S),
                    init_containers: Some(init_containers),
                    containers: vec![main],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The Secret holding the values of an attempt's secret variables, named as its Job and labelled
/// alike (so a sweep finds it): the pod's environment refers to it.
pub fn secret_for(request: &RunRequest, cluster: &str, values: &BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(job_name(&request.job, request.attempt)),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_string(), "atoll".to_string()),
                (LABEL_CLUSTER.to_string(), label_value(cluster)),
                (LABEL_PIPELINE.to_string(), label_value(&request.pipeline)),
                (LABEL_JOB.to_string(), label_value(&request.job)),
                (LABEL_ATTEMPT.to_string(), request.attempt.to_string()),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        string_data: Some(values.clone()),
        immutable: Some(true),
        ..Default::default()
    }
}

/// The build context of a job in the pod: under [`SOURCE_DIR`], the directory of the file that
/// defines it, then `build_context`.
fn context_dir(spec: &atoll_api::spec::JobSpec) -> Result<String, String> {
    let file_dir = spec.defined_in.as_ref().map(|d| d.dir.as_str()).unwrap_or("");
    let base = in_pod_source(SOURCE_DIR, file_dir).ok_or("the job's file lies outside its source")?;
    match &spec.container.build_context {
        Some(rel) => {
            in_pod_source(&base, rel).ok_or_else(|| format!("build_context {rel:?} leads out of the job's source"))
        }
        None => Ok(base),
    }
}

/// `rel` from `dir` (a directory under [`SOURCE_DIR`]), anywhere inside the source; `None` when
/// it leads out. Lexical: the pod's files are not here to look at.
fn in_pod_source(dir: &str, rel: &str) -> Option<String> {
    let below = dir.strip_prefix(SOURCE_DIR)?.trim_start_matches('/');
    let joined = atoll_api::spec::include::normalize_inside(below, rel)?;
    Some(if joined.is_empty() { SOURCE_DIR.to_string() } else { format!("{SOURCE_DIR}/{joined}") })
}

/// The container that builds the image `image` from `context` with the builder's command line
/// (kaniko's flags), with the job's limits. The builder runs as root: building an image's file
/// system needs it (kaniko refuses otherwise), in this container only.
fn build_container(
    request: &RunRequest,
    builder: &crate::config::BuilderConfig,
    context: &str,
    image: &str,
    job: &Container,
) -> Result<Container, String> {
    let spec = &request.spec;
    let docker_file = spec.container.docker_file.as_deref().unwrap_or("Dockerfile");
    let docker_file = in_pod_source(context, docker_file)
        .ok_or_else(|| format!("docker_file {docker_file:?} leads out of the job's source"))?;
    let (program, first) = builder.command.split_first().ok_or("the builder has no command")?;
    let mut args: Vec<String> = first.to_vec();
    args.extend([
        format!("--dockerfile={docker_file}"),
        format!("--context=dir://{context}"),
        format!("--destination={image}"),
        format!("--build-arg=INFRABOX_BUILD_NUMBER={}", request.pipeline),
    ]);
    args.extend(spec.container.build_arguments.iter().map(|(k, v)| format!("--build-arg={k}={v}")));
    if let Some(target) = &spec.container.target {
        args.push(format!("--target={target}"));
    }
    args.extend(builder.args.iter().cloned());
    let mut mounts = vec![VolumeMount {
        name: "source".into(),
        mount_path: SOURCE_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }];
    if builder.push_secret.is_some() {
        mounts.push(VolumeMount {
            name: "registry".into(),
            mount_path: BUILDER_DOCKER_CONFIG.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    Ok(Container {
        name: BUILD_CONTAINER.to_string(),
        image: Some(builder.image.clone()),
        command: Some(vec![program.clone()]),
        args: Some(args),
        resources: job.resources.clone(),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value.to_string()), ..Default::default() }
}

/// How an attempt ended, from its Job's status (pure); `None` while it runs.
pub fn outcome(job: &Job, exit_code: Option<i32>) -> Option<(EndState, Option<i32>, Option<String>)> {
    let status = job.status.as_ref()?;
    let condition = |kind: &str| status.conditions.iter().flatten().find(|c| c.type_ == kind && c.status == "True");
    if condition("Complete").is_some() {
        return Some((EndState::Finished, Some(0), None));
    }
    if let Some(failed) = condition("Failed") {
        let reason = failed.reason.clone().unwrap_or_default();
        if reason == "DeadlineExceeded" {
            let limit = job.spec.as_ref().and_then(|s| s.active_deadline_seconds).unwrap_or_default();
            return Some((
                EndState::Failure,
                exit_code,
                Some(format!("timed out after {limit} s; Kubernetes stopped its Job")),
            ));
        }
        let message = match (exit_code, failed.message.as_deref()) {
            (Some(code), _) => format!("exited with {code}"),
            (None, Some(message)) if !message.is_empty() => format!("{reason}: {message}"),
            (None, _) => format!("its Kubernetes Job failed ({reason})"),
        };
        return Some((EndState::Failure, exit_code, Some(message)));
    }
    if status.succeeded.unwrap_or(0) > 0 {
        return Some((EndState::Finished, Some(0), None));
    }
    if status.failed.unwrap_or(0) > 0 {
        let message = exit_code.map_or("its pod failed".to_string(), |code| format!("exited with {code}"));
        return Some((EndState::Failure, exit_code, Some(message)));
    }
    None
}

/// What the pod of an ended Job says: the job container's exit code, and why a helper failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodEnd {
    pub exit_code: Option<i32>,
    /// The inputs helper ended without putting every input in place.
    pub inputs_failed: Option<String>,
    /// The output helper ended without storing the output.
    pub output_failed: Option<String>,
    /// The image build (before the job's container) failed: its exit code and last line.
    pub build_failed: Option<(i32, String)>,
}

/// The end of an attempt from its Job's outcome and its pod's helpers (pure): inputs that never
/// arrived make it `error` (the job did not run), as does an output that could not be stored.
pub fn with_helpers(
    (state, exit_code, message): (EndState, Option<i32>, Option<String>),
    pod: &PodEnd,
) -> (EndState, Option<i32>, Option<String>) {
    if let Some(why) = &pod.inputs_failed {
        return (EndState::Error, None, Some(format!("delivering its inputs failed: {why}")));
    }
    if let Some((code, why)) = &pod.build_failed {
        // The job's own failure: its Dockerfile did not build.
        return (EndState::Failure, Some(*code), Some(format!("building its image failed (exit {code}): {why}")));
    }
    match &pod.output_failed {
        None => (state, exit_code, message),
        Some(why) => {
            let why = format!("storing its output failed: {why}");
            (EndState::Error, exit_code, Some(message.map_or(why.clone(), |m| format!("{m}; {why}"))))
        }
    }
}

/// Why a helper container failed, from how it terminated (pure); `None` when it did not fail.
/// Its termination message is the tail of its log (`FallbackToLogsOnError`): the helper's last
/// line says why.
pub fn helper_failure(name: &str, terminated: &ContainerStateTerminated) -> Option<String> {
    if terminated.exit_code == 0 {
        return None;
    }
    let message = terminated.message.as_deref().unwrap_or_default();
    Some(match message.lines().map(str::trim).rfind(|line| !line.is_empty()) {
        Some(line) => line.to_string(),
        None => format!("its {name} container exited with {}", terminated.exit_code),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::JobCondition;
    use k8s_openapi::api::batch::v1::JobStatus;

    use super::*;

    fn request(kind: &str, extra: &str) -> RunRequest {
        let doc = format!("version: 1\njobs:\n  - name: build\n    type: {kind}\n{extra}");
        let spec = atoll_api::spec::parse(&doc).expect("spec").jobs.remove(0);
        RunRequest {
            job: "0123456789ab.build".to_string(),
            pipeline: "0123456789ab".to_string(),
            attempt: 2,
            spec,
            inputs: Vec::new(),
            secret: Some("s3cret".to_string()),
            secrets: Default::default(),
        }
    }

    fn setup(command_image: &str) -> PodSetup {
        PodSetup {
            command_image: command_image.to_string(),
            helper_image: "atoll:test".to_string(),
            pod_urls: vec!["https://aws-1:7201".to_string(), "https://aws-2:7201".to_string()],
            ca_pem: "-----BEGIN CERTIFICATE-----".to_string(),
            allow_root: false,
            builder: None,
        }
    }

    #[test]
    fn job_pods_get_no_token_and_run_restricted_unless_root_is_allowed() {
        let job = build_job(&request("command", "    command: \"true\"\n"), "aws", &setup("busybox")).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let context = pod.security_context.unwrap();
        assert_eq!((context.run_as_non_root, context.run_as_user), (Some(true), Some(POD_USER)));
        assert_eq!(context.seccomp_profile.unwrap().type_, "RuntimeDefault");
        for container in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
            let own = container.security_context.clone().expect("every container has a context");
            assert_eq!(own.allow_privilege_escalation, Some(false), "{}", container.name);
            assert_eq!(own.capabilities.and_then(|c| c.drop), Some(vec!["ALL".to_string()]), "{}", container.name);
        }
        let mut root = setup("busybox");
        root.allow_root = true;
        let job = build_job(&request("command", "    command: \"true\"\n"), "aws", &root).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false), "no token even then");
        assert_eq!(pod.security_context.unwrap().run_as_non_root, None);
    }

    #[test]
    fn names_are_dns_labels_stable_and_distinct() {
        let name = job_name("0123456789ab.build", 2);
        assert!(name.starts_with("atoll-0123456789ab-build-") && name.ends_with("-2"), "{name}");
        assert_eq!(job_name("a.b", 1), job_name("a.b", 1));
        // `.` and `_` both become `-`: the hash keeps them apart.
        assert_ne!(job_name("p.a_b", 1), job_name("p.a-b", 1));
        let long = format!("0123456789ab.{}", "x".repeat(200));
        for name in [job_name(&long, 123), job_name("P.UPPER__x", 7), job_name("0123456789ab.plain-name", 1)] {
            assert!(name.len() <= 63, "{name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{name}");
            assert!(!name.contains("--"), "{name}");
            assert!(name.starts_with("atoll-") && name.chars().last().unwrap().is_ascii_digit(), "{name}");
        }
        assert_ne!(job_name(&long, 1), job_name(&format!("{long}y"), 1));
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("0123456789ab.build"), "0123456789ab.build");
        for value in ["p.ends_", "_starts", &"x".repeat(100), "", "a b"] {
            let label = label_value(value);
            assert!(label.len() <= 63 && !label.is_empty(), "{value:?} -> {label:?}");
            assert!(label.chars().next().unwrap().is_ascii_alphanumeric(), "{label}");
            assert!(label.chars().last().unwrap().is_ascii_alphanumeric(), "{label}");
        }
    }

    #[test]
    fn a_command_job_runs_its_shell_line_in_the_command_image() {
        let extra = "    command: echo hi\n    environment: {GREETING: hello}\n    timeout: 90\n    resources: {limits: {cpu: 500m, memory: 256Mi}}\n";
        let job = build_job(&request("command", extra), "aws", &setup("busybox:1.36")).unwrap();
        let meta = &job.metadata;
        assert_eq!(meta.name.as_deref(), Some(job_name("0123456789ab.build", 2).as_str()));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_MANAGED_BY], "atoll");
        assert_eq!(labels[LABEL_CLUSTER], "aws");
        assert_eq!(labels[LABEL_JOB], "0123456789ab.build");
        assert_eq!(labels[LABEL_ATTEMPT], "2");
        assert_eq!(meta.annotations.as_ref().unwrap()[ANNOTATION_JOB_ID], "0123456789ab.build");
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0), "atoll retries, not Kubernetes");
        assert_eq!(spec.active_deadline_seconds, Some(90));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("busybox:1.36"));
        assert_eq!(c.command.as_ref().unwrap(), &vec!["sh".to_string(), "-c".to_string(), "echo hi".to_string()]);
        let env: BTreeMap<&str, &str> =
            c.env.as_ref().unwrap().iter().map(|e| (e.name.as_str(), e.value.as_deref().unwrap())).collect();
        assert_eq!(env["ATOLL_JOB_ID"], "0123456789ab.build");
        assert_eq!(env["ATOLL_ATTEMPT"], "2");
        assert_eq!(env["ATOLL_OUTPUT"], "/atoll/output");
        assert_eq!(env["ATOLL_INPUTS"], "/atoll/inputs");
        assert_eq!(env["GREETING"], "hello");
        assert_eq!(env["INFRABOX_JOB_ID"], "0123456789ab.build", "InfraBox's variables too");
        assert_eq!(env["INFRABOX_BUILD_RESTART_COUNTER"], "2");
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["cpu"], Quantity("500m".into()));
        assert_eq!(limits["memory"], Quantity("256Mi".into()));
        let mounts: Vec<&str> = c.volume_mounts.as_ref().unwrap().iter().map(|m| m.mount_path.as_str()).collect();
        assert_eq!(mounts, ["/atoll/output", "/atoll/inputs"]);
    }

    #[test]
    fn an_image_job_runs_its_image_with_or_without_a_command() {
        let job = build_job(&request("docker-image", "    image: debian:12\n"), "aws", &setup("busybox")).unwrap();
        let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("debian:12"));
        assert_eq!(c.command, None, "the image's own entrypoint");
        assert!(c.resources.is_none());
        let job = build_job(
            &request("docker-image", "    image: debian:12\n    command: [make, test]\n"),
            "aws",
            &setup("busybox"),
        )
        .unwrap();
        let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(c.command.as_ref().unwrap(), &vec!["make".to_string(), "test".to_string()]);
    }

    fn env_of(c: &Container) -> BTreeMap<String, String> {
        c.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect()
    }

    fn with_builder() -> PodSetup {
        PodSetup {
            builder: Some(crate::config::BuilderConfig {
                image: "kaniko:test".into(),
                registry: "registry.local:5000/atoll".into(),
                command: vec!["/kaniko/executor".into()],
                args: vec!["--insecure".into()],
                push_secret: Some("registry-push".into()),
            }),
            ..setup("busybox")
        }
    }

    #[test]
    fn a_docker_job_is_built_in_its_pod_by_the_builder_then_run_with_infraboxs_paths() {
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let extra = format!(
            "    docker_file: infrabox/Dockerfile\n    build_only: false\n    build_arguments: {{V: '1'}}\n    target: test\n    source: {}\n",
            digest('f')
        );
        let mut req = request("docker", &extra);
        req.spec.defined_in = Some(atoll_api::spec::DefinedIn { dir: "app".into(), at: String::new(), git: None });
        req.inputs = vec![atoll_api::jobs::AssignedInput {
            from_job: "flow/make".into(),
            job: "0123456789ab.flow.make".into(),
            cluster: "gcp".parse().unwrap(),
            mode: atoll_api::jobs::InputMode::Direct,
            digest: digest('a'),
            size: 10,
        }];
        let job = build_job(&req, "aws", &with_builder()).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        let init = pod.init_containers.unwrap();
        let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [INPUTS_HELPER, BUILD_CONTAINER, OUTPUT_HELPER], "the source in, built, then run");
        let build = &init[1];
        assert_eq!(build.image.as_deref(), Some("kaniko:test"));
        assert_eq!(build.command.as_deref(), Some(&["/kaniko/executor".to_string()][..]));
        assert_eq!(
            build.args.as_deref().unwrap(),
            [
                "--dockerfile=/atoll/source/app/infrabox/Dockerfile",
                "--context=dir:///atoll/source/app",
                "--destination=registry.local:5000/atoll/build:0123456789ab-2",
                "--build-arg=INFRABOX_BUILD_NUMBER=0123456789ab",
                "--build-arg=V=1",
                "--target=test",
                "--insecure",
            ]
        );
        let mounts: Vec<&str> = build.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
        assert_eq!(mounts, ["/atoll/source", "/kaniko/.docker"]);
        assert_eq!(build.security_context.as_ref().unwrap().run_as_user, Some(0), "building needs root");
        let main = &pod.containers[0];
        assert_eq!(main.image.as_deref(), Some("registry.local:5000/atoll/build:0123456789ab-2"));
        assert_eq!(main.command, None, "the image's own entrypoint");
        let mounts: Vec<(&str, Option<&str>)> =
            main.volume_mounts.iter().flatten().map(|m| (m.mount_path.as_str(), m.sub_path.as_deref())).collect();
        assert_eq!(
            mounts,
            [
                ("/atoll/output", None),
                ("/atoll/inputs", None),
                ("/atoll/source", None),
                ("/infrabox/output", None),
                ("/infrabox/inputs/make", Some("flow/make")),
                ("/infrabox/context", Some("app")),
            ]
        );
        let volumes: Vec<&str> = pod.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
        assert!(volumes.contains(&"registry"), "{volumes:?}");

        // InfraBox's default, build_only: the build is the job.
        let only = request("docker", &format!("    docker_file: Dockerfile\n    source: {}\n", digest('f')));
        let job = build_job(&only, "aws", &with_builder()).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.containers[0].name, MAIN_CONTAINER);
        assert_eq!(pod.containers[0].image.as_deref(), Some("kaniko:test"));
        let names: Vec<String> = pod.init_containers.unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names, [INPUTS_HELPER, OUTPUT_HELPER]);

        // Refused, saying why: no builder, no source, a path out of the source, compose.
        let err = build_job(&only, "aws", &setup("busybox")).unwrap_err();
        assert!(err.contains("needs an image builder in its pod (jobs.kubernetes.builder)"), "{err}");
        let err = build_job(&request("docker", "    docker_file: D\n"), "aws", &with_builder()).unwrap_err();
        assert!(err.contains("builds from the pipeline's source"), "{err}");
        let mut up = request(
            "docker",
            &format!("    docker_file: ../Dockerfile\n    build_context: ..\n    source: {}\n", digest('f')),
        );
        up.spec.defined_in = Some(atoll_api::spec::DefinedIn { dir: "a/b".into(), at: String::new(), git: None });
        let job = build_job(&up, "aws", &with_builder()).unwrap();
        let args = job.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
        assert_eq!(
            &args[..2],
            ["--dockerfile=/atoll/source/Dockerfile", "--context=dir:///atoll/source/a"],
            "up, inside"
        );
        let out = request("docker", &format!("    docker_file: ../../../etc/x\n    source: {}\n", digest('f')));
        let err = build_job(&out, "aws", &with_builder()).unwrap_err();
        assert!(err.contains("docker_file \"../../../etc/x\" leads out of the job's source"), "{err}");
        let compose = request("docker-compose", "    docker_compose_file: c.yml\n");
        let err = build_job(&compose, "aws", &with_builder()).unwrap_err();
        assert!(err.contains("does not run docker-compose jobs"), "{err}");
    }

    #[test]
    fn helpers_bring_the_inputs_and_source_in_and_store_the_output_after_the_job() {
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let mut req = request("command", &format!("    command: make\n    source: {}\n", digest('f')));
        req.inputs = vec![atoll_api::jobs::AssignedInput {
            from_job: "build".into(),
            job: "0123456789ab.build".into(),
            cluster: "gcp".parse().unwrap(),
            mode: atoll_api::jobs::InputMode::Direct,
            digest: digest('a'),
            size: 10,
        }];
        let job = build_job(&req, "aws", &setup("busybox")).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(OUTPUT_GRACE_S), "time to store the output");
        let init = pod.init_containers.unwrap();
        let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [INPUTS_HELPER, OUTPUT_HELPER], "inputs first, then the output sidecar");
        let (inputs, output) = (&init[0], &init[1]);
        assert_eq!(inputs.restart_policy, None, "runs to its end before the job starts");
        assert_eq!(output.restart_policy.as_deref(), Some("Always"), "a sidecar, stopped after the job");
        for helper in [inputs, output] {
            assert_eq!(helper.image.as_deref(), Some("atoll:test"));
            assert_eq!(helper.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
            let env = env_of(helper);
            assert_eq!(env["ATOLL_POD_URLS"], "https://aws-1:7201,https://aws-2:7201");
            assert_eq!(env["ATOLL_POD_SECRET"], "s3cret");
            assert_eq!(env["ATOLL_CLUSTER"], "aws");
            assert_eq!(env["ATOLL_JOB_ID"], "0123456789ab.build");
            assert_eq!(env["ATOLL_ATTEMPT"], "2");
            assert!(env["ATOLL_POD_CA"].starts_with("-----BEGIN"));
        }
        assert_eq!(inputs.command.as_ref().unwrap(), &["atoll", "pod", "inputs"]);
        let blobs: serde_json::Value = serde_json::from_str(&env_of(inputs)["ATOLL_POD_BLOBS"]).unwrap();
        assert_eq!(
            blobs,
            serde_json::json!([
                {"digest": digest('a'), "dir": "/atoll/inputs/build"},
                {"digest": digest('f'), "dir": "/atoll/source"},
            ])
        );
        assert_eq!(output.command.as_ref().unwrap(), &["atoll", "pod", "output"]);
        assert_eq!(env_of(output)["ATOLL_OUTPUT"], "/atoll/output");
        let probe = output.startup_probe.as_ref().and_then(|p| p.exec.as_ref()).and_then(|e| e.command.clone());
        assert_eq!(probe.unwrap(), ["atoll", "pod", "started"], "the job waits until the helper can be stopped");
        let main = &pod.containers[0];
        assert_eq!(main.name, MAIN_CONTAINER);
        assert_eq!(env_of(main)["ATOLL_SOURCE"], "/atoll/source");
        assert!(!env_of(main).contains_key("ATOLL_POD_SECRET"), "the job itself never sees the secret");
        let mounts: Vec<&str> = main.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
        assert_eq!(mounts, ["/atoll/output", "/atoll/inputs", "/atoll/source"]);
        // Nothing to bring in: only the output sidecar.
        let job = build_job(&request("command", "    command: make\n"), "aws", &setup("busybox")).unwrap();
        let init = job.spec.unwrap().template.spec.unwrap().init_containers.unwrap();
        assert_eq!(init.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), [OUTPUT_HELPER]);
        // No secret recorded (an attempt started before secrets were): refused, clearly.
        let mut req = request("command", "    command: make\n");
        req.secret = None;
        assert!(build_job(&req, "aws", &setup("busybox")).unwrap_err().contains("no secret"));
    }

    #[test]
    fn a_helpers_failure_is_the_last_line_of_its_log() {
        let ended = |exit_code: i32, message: Option<&str>| ContainerStateTerminated {
            exit_code,
            message: message.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(helper_failure(OUTPUT_HELPER, &ended(0, Some("fine"))), None);
        let log = "fetching sha256:aa: trying again (a: 503)\nerror: fetching sha256:aa: every replica refused\n\n";
        assert_eq!(
            helper_failure(INPUTS_HELPER, &ended(1, Some(log))).as_deref(),
            Some("error: fetching sha256:aa: every replica refused")
        );
        assert_eq!(
            helper_failure(OUTPUT_HELPER, &ended(137, None)).as_deref(),
            Some("its atoll-output container exited with 137")
        );
    }

    #[test]
    fn a_helper_that_failed_makes_the_end_an_error() {
        let finished = (EndState::Finished, Some(0), None);
        assert_eq!(with_helpers(finished.clone(), &PodEnd::default()), finished);
        let pod = PodEnd { inputs_failed: Some("no replica answered".into()), ..Default::default() };
        let (state, code, message) =
            with_helpers((EndState::Failure, None, Some("its Kubernetes Job failed".into())), &pod);
        assert_eq!((state, code), (EndState::Error, None));
        assert_eq!(message.unwrap(), "delivering its inputs failed: no replica answered");
        let pod = PodEnd { output_failed: Some("disk full".into()), ..Default::default() };
        let (state, code, message) = with_helpers((EndState::Failure, Some(3), Some("exited with 3".into())), &pod);
        assert_eq!((state, code), (EndState::Error, Some(3)));
        assert_eq!(message.unwrap(), "exited with 3; storing its output failed: disk full");
    }

    fn status(conditions: &[(&str, &str)], succeeded: i32, failed: i32) -> Job {
        Job {
            spec: Some(JobSpec { active_deadline_seconds: Some(30), ..Default::default() }),
            status: Some(JobStatus {
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(kind, reason)| JobCondition {
                            type_: kind.to_string(),
                            status: "True".to_string(),
                            reason: Some(reason.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                succeeded: Some(succeeded),
                failed: Some(failed),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_end_is_read_from_the_job_status() {
        assert_eq!(outcome(&Job::default(), None), None, "no status yet");
        assert_eq!(outcome(&status(&[], 0, 0), None), None, "running");
        assert_eq!(outcome(&status(&[("Complete", "")], 1, 0), None), Some((EndState::Finished, Some(0), None)));
        assert_eq!(
            outcome(&status(&[("Failed", "BackoffLimitExceeded")], 0, 1), Some(3)),
            Some((EndState::Failure, Some(3), Some("exited with 3".to_string())))
        );
        let (state, _, message) = outcome(&status(&[("Failed", "DeadlineExceeded")], 0, 1), None).unwrap();
        assert_eq!(state, EndState::Failure);
        assert!(message.unwrap().contains("timed out after 30 s"));
        assert_eq!(outcome(&status(&[], 1, 0), None), Some((EndState::Finished, Some(0), None)));
    }
}
