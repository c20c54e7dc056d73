//! A fake Kubernetes API server, in the test's process: no Kubernetes API server can run on this
//! machine, so the kubernetes executor is tested against this one.
//!
//! It serves the part of the API the executor uses, with the answers a real server gives
//! (objects, lists, `Status` errors with their reasons): batch/v1 Jobs (create, get, list by
//! label selector, delete), core/v1 pods (list by label selector, log, followed or not) and
//! core/v1 Secrets (create, list by label selector, delete; a container's variable from a
//! Secret's key gets its value when the pod is made). It
//! also plays the Job controller and the kubelet: creating a Job creates its one pod. Its init
//! containers run first, one after the other (a failed one fails the pod, as with `restartPolicy:
//! Never`); one with `restartPolicy: Always` is a sidecar: started, and stopped with SIGTERM once
//! the main container ended (SIGKILL after `terminationGracePeriodSeconds`), before the pod ends.
//! Each container runs its command as a local process (in its own process group, with its
//! environment); the main container's output is the pod's log, every container's is its own
//! (`?container=`), and a failed container whose `terminationMessagePolicy` is
//! `FallbackToLogsOnError` has the tail of its log (80 lines, 2,048 bytes) as its termination
//! message. `emptyDir` volumes
//! are directories of the pod, as is each container's `TMPDIR`; a container sees its mounts at their host paths: every mount
//! path in its command and environment is replaced by the volume's directory. The pod's end sets
//! the Job's `Complete` or `Failed` condition; `activeDeadlineSeconds` kills it with reason
//! `DeadlineExceeded`; deleting the Job kills its pod. A sidecar's exec `startupProbe` runs every
//! 50 ms until it passes before the next container starts. Images are not pulled: a container without
//! a command just exits 0, and `atoll` is the binary under test.
//!
//! The test reads what happened: how many times each Job was created, which were deleted.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use nix::sys::signal::Signal;
use nix::sys::signal::killpg;
use nix::unistd::Pid;
use serde_json::Value;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

/// What one pod printed, and whether it is done printing.
#[derive(Default)]
struct PodLog {
    data: Mutex<Vec<u8>>,
    done: std::sync::atomic::AtomicBool,
    changed: Notify,
}

impl PodLog {
    fn push(&self, bytes: &[u8]) {
        self.data.lock().unwrap().extend_from_slice(bytes);
        self.changed.notify_waiters();
    }
    fn finish(&self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

struct FakeJob {
    /// The Job as created, with metadata and status filled in as a server would.
    object: Value,
    pod: String,
    pod_labels: Value,
    phase: &'static str,
    /// The main container's log (the pod's log).
    log: Arc<PodLog>,
    /// Every container's log, by name.
    logs: HashMap<String, Arc<PodLog>>,
    /// Process groups of the containers running now.
    pgids: Vec<i32>,
    /// Container statuses as the pod reports them: init containers, then the main one.
    init_statuses: Vec<Value>,
    main_status: Value,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<String, FakeJob>,
    /// Job name -> how many times a create made it.
    creates: HashMap<String, u32>,
    deletes: Vec<String>,
    /// Job name -> the pod spec it was last created with (kept after the Job is deleted).
    specs: HashMap<String, Value>,
    /// Secrets by name, as created (`stringData` kept as given).
    secrets: BTreeMap<String, Value>,
    /// Secrets ever created, by name, and the ones deleted.
    secrets_created: Vec<String>,
    secrets_deleted: Vec<String>,
    next_uid: u64,
    /// Environment values every container of a pod created from now on runs with instead.
    tampered: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Inner>>;

pub struct FakeKube {
    pub url: String,
    inner: Shared,
    server: tokio::task::JoinHandle<()>,
    _root: tempfile::TempDir,
}

impl FakeKube {
    pub async fn start() -> Self {
        let inner: Shared = Arc::default();
        let root = tempfile::tempdir().expect("fake kubelet dir");
        let state = (inner.clone(), root.path().to_path_buf());
        let app = Router::new()
            .route("/apis/batch/v1/namespaces/{ns}/jobs", get(list_jobs).post(create_job))
            .route("/apis/batch/v1/namespaces/{ns}/jobs/{name}", get(get_job).delete(delete_job))
            .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
            .route("/api/v1/namespaces/{ns}/secrets", get(list_secrets).post(create_secret))
            .route("/api/v1/namespaces/{ns}/secrets/{name}", axum::routing::delete(delete_secret))
            .route("/api/v1/namespaces/{ns}/pods/{pod}/log", get(pod_log))
            .fallback(|| async { status(StatusCode::NOT_FOUND, "NotFound", "no such path in the fake API") })
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake API");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, inner, server, _root: root }
    }

    /// Create a running Job as another party would: labelled as atoll's, for `cluster`.
    pub async fn create_stray(&self, name: &str, cluster: &str) {
        let job = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "atoll", "atoll.dev/cluster": cluster}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "job", "image": "busybox", "command": ["sleep", "300"]}]}}},
        });
        let response = reqwest::Client::new()
            .post(format!("{}/apis/batch/v1/namespaces/atoll/jobs", self.url))
            .json(&job)
            .send()
            .await
            .expect("create a stray Job");
        assert_eq!(response.status(), 201, "creating a stray Job");
    }

    /// From now on, run every container that has `var` with `value` instead (a misconfigured or
    /// meddled-with pod).
    pub fn tamper(&self, var: &str, value: &str) {
        self.inner.lock().unwrap().tampered.push((var.to_string(), value.to_string()));
    }

    /// The files left in the `/tmp` (`TMPDIR`) of every container of the Job `name`'s pods.
    pub fn tmp_files(&self, name: &str) -> Vec<std::path::PathBuf> {
        let mut left = Vec::new();
        for pod in std::fs::read_dir(self._root.path()).into_iter().flatten().flatten() {
            if !pod.file_name().to_string_lossy().starts_with(&format!("{name}-")) {
                continue;
            }
            for container in std::fs::read_dir(pod.path().join("tmp")).into_iter().flatten().flatten() {
                left.extend(std::fs::read_dir(container.path()).into_iter().flatten().flatten().map(|f| f.path()));
            }
        }
        left
    }

    /// How many times the Job `name` was created.
    pub fn creates(&self, name: &str) -> u32 {
        self.inner.lock().unwrap().creates.get(name).copied().unwrap_or(0)
    }

    pub fn deleted(&self, name: &str) -> bool {
        self.inner.lock().unwrap().deletes.iter().any(|n| n == name)
    }

    /// The value of `var` in the environment of `container` of the Job `name`.
    pub fn env_of(&self, name: &str, container: &str, var: &str) -> Option<String> {
        let guard = self.inner.lock().unwrap();
        let spec = guard.jobs.get(name)?.object.pointer("/spec/template/spec")?.clone();
        let all = containers(&spec, "initContainers").into_iter().chain(containers(&spec, "containers"));
        let c = all.into_iter().find(|c| c["name"] == container)?;
        let env = c.get("env")?.as_array()?.iter().find(|e| e["name"] == var)?.get("value")?.as_str()?.to_string();
        Some(env)
    }

    /// The pod spec the Job `name` was last created with, deleted since or not.
    pub fn pod_spec(&self, name: &str) -> Option<Value> {
        self.inner.lock().unwrap().specs.get(name).cloned()
    }

    /// The Secrets that exist now, by name, as created.
    pub fn secrets(&self) -> BTreeMap<String, Value> {
        self.inner.lock().unwrap().secrets.clone()
    }

    /// The Secrets ever created, and those deleted since.
    pub fn secret_history(&self) -> (Vec<String>, Vec<String>) {
        let guard = self.inner.lock().unwrap();
        (guard.secrets_created.clone(), guard.secrets_deleted.clone())
    }

    /// Names of the Jobs that exist now.
    pub fn jobs(&self) -> Vec<String> {
        self.inner.lock().unwrap().jobs.keys().cloned().collect()
    }

    /// Names of every Job ever created.
    pub fn ever_created(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.lock().unwrap().creates.keys().cloned().collect();
        names.sort();
        names
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.server.abort();
        for job in self.inner.lock().unwrap().jobs.values() {
            for pgid in &job.pgids {
                let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
            }
        }
    }
}

type AppState = (Shared, std::path::PathBuf);

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

/// An object's `metadata.name`; [`unnamed`] is the server's refusal of one without it.
fn name_of(object: &Value) -> Option<String> {
    object.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string)
}

fn unnamed() -> Response {
    status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name is required")
}

fn already_exists(kind: &str, name: &str) -> Response {
    status(StatusCode::CONFLICT, "AlreadyExists", &format!("{kind} \"{name}\" already exists"))
}

/// `a=b,c=d` matches labels that have every pair.
fn matches(selector: Option<&String>, labels: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else { return true };
    selector.split(',').all(|pair| match pair.split_once('=') {
        Some((k, v)) => labels.get(k).and_then(Value::as_str) == Some(v.trim_start_matches('=')),
        None => false,
    })
}

async fn create_job(
    State((inner, root)): State<AppState>,
    Path(ns): Path<String>,
    Json(mut job): Json<Value>,
) -> Response {
    let Some(name) = name_of(&job) else { return unnamed() };
    let mut guard = inner.lock().unwrap();
    if guard.jobs.contains_key(&name) {
        return already_exists("jobs.batch", &name);
    }
    guard.next_uid += 1;
    let uid = format!("uid-{}", guard.next_uid);
    let pod = format!("{name}-{:05x}", guard.next_uid);
    *guard.creates.entry(name.clone()).or_default() += 1;
    job["metadata"]["namespace"] = json!(ns);
    job["metadata"]["uid"] = json!(uid);
    job["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    job["status"] = json!({"active": 1, "startTime": "2026-01-01T00:00:00Z"});
    let mut pod_labels = job.pointer("/spec/template/metadata/labels").cloned().unwrap_or(json!({}));
    pod_labels["job-name"] = json!(name);
    pod_labels["batch.kubernetes.io/job-name"] = json!(name);
    let mut pod_spec = job.pointer("/spec/template/spec").cloned().unwrap_or(json!({}));
    for key in ["initContainers", "containers"] {
        for container in pod_spec.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten() {
            for var in container.get_mut("env").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some((_, value)) = guard.tampered.iter().find(|(name, _)| var["name"] == name.as_str()) {
                    var["value"] = json!(value);
                }
            }
        }
    }
    guard.specs.insert(name.clone(), pod_spec.clone());
    // As a kubelet does when it starts a container: a variable from a Secret's key gets its
    // value (the Job keeps the reference).
    for key in ["initContainers", "containers"] {
        for container in pod_spec.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten() {
            for var in container.get_mut("env").and_then(Value::as_array_mut).into_iter().flatten() {
                let Some(reference) = var.pointer("/valueFrom/secretKeyRef").cloned() else { continue };
                let (Some(secret), Some(key)) = (reference["name"].as_str(), reference["key"].as_str()) else {
                    continue;
                };
                if let Some(value) = guard.secrets.get(secret).and_then(|s| s["stringData"][key].as_str()) {
                    var["value"] = json!(value);
                }
            }
        }
    }
    let deadline = job.pointer("/spec/activeDeadlineSeconds").and_then(Value::as_u64);
    let dir = root.join(&pod);
    std::fs::create_dir_all(&dir).expect("pod dir");
    let mut logs = HashMap::new();
    for c in containers(&pod_spec, "initContainers").iter().chain(&containers(&pod_spec, "containers")) {
        logs.insert(c["name"].as_str().unwrap_or("?").to_string(), Arc::new(PodLog::default()));
    }
    let log = containers(&pod_spec, "containers")
        .first()
        .and_then(|c| logs.get(c["name"].as_str().unwrap_or("?")).cloned())
        .unwrap_or_default();
    guard.jobs.insert(
        name.clone(),
        FakeJob {
            object: job.clone(),
            pod: pod.clone(),
            pod_labels,
            phase: "Pending",
            log,
            logs,
            pgids: Vec::new(),
            init_statuses: Vec::new(),
            main_status: json!({"waiting": {"reason": "PodInitializing"}}),
        },
    );
    drop(guard);
    tokio::spawn(kubelet(inner.clone(), name, pod_spec, dir, deadline));
    (StatusCode::CREATED, Json(job)).into_response()
}

fn containers(pod_spec: &Value, key: &str) -> Vec<Value> {
    pod_spec.get(key).and_then(Value::as_array).cloned().unwrap_or_default()
}

/// The container's mount paths and the host directories of their volumes, longest path first.
fn mounts(container: &Value, dir: &std::path::Path) -> Vec<(String, String)> {
    let mut mounts: Vec<(String, String)> = container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let (name, path) = (m.get("name")?.as_str()?, m.get("mountPath")?.as_str()?);
            let host = dir.join("volumes").join(name);
            std::fs::create_dir_all(&host).ok()?;
            Some((path.to_string(), host.to_string_lossy().into_owned()))
        })
        .collect();
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    mounts
}

fn spawn_container(container: &Value, dir: &std::path::Path) -> std::io::Result<tokio::process::Child> {
    let mounts = mounts(container, dir);
    let at_host = |value: &str| mounts.iter().fold(value.to_string(), |v, (path, host)| v.replace(path.as_str(), host));
    let strings = |key: &str| -> Vec<String> {
        container
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(at_host))
            .collect()
    };
    let mut argv = strings("command");
    argv.extend(strings("args"));
    if argv.is_empty() {
        let image = container.get("image").and_then(Value::as_str).unwrap_or("?");
        argv = vec!["sh".into(), "-c".into(), format!("echo 'fake kubelet: {image} runs its own entrypoint'")];
    }
    // `atoll` is the binary under test.
    let bin =
        std::path::Path::new(env!("CARGO_BIN_EXE_atoll")).parent().expect("bin dir").to_string_lossy().into_owned();
    let mut command = tokio::process::Command::new(&argv[0]);
    // Each container has a /tmp of its own.
    let tmp = dir.join("tmp").join(container.get("name").and_then(Value::as_str).unwrap_or("?"));
    std::fs::create_dir_all(&tmp)?;
    command
        .args(&argv[1..])
        .current_dir(dir)
        .env_clear()
        .env("PATH", format!("{bin}:/usr/local/bin:/usr/bin:/bin"))
        .env("TMPDIR", &tmp);
    for var in container.get("env").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(k), Some(v)) = (var.get("name").and_then(Value::as_str), var.get("value").and_then(Value::as_str))
        {
            command.env(k, at_host(v));
        }
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    command.spawn()
}

/// A container started: its process, and its output going to its log.
struct Running {
    name: String,
    child: tokio::process::Child,
    pump: tokio::task::JoinHandle<()>,
    log: Arc<PodLog>,
    fallback_to_logs: bool,
}

fn start(inner: &Shared, job: &str, container: &Value, dir: &std::path::Path) -> Result<Running, String> {
    let name = container["name"].as_str().unwrap_or("?").to_string();
    let log = inner.lock().unwrap().jobs.get(job).and_then(|j| j.logs.get(&name).cloned()).unwrap_or_default();
    let mut child = spawn_container(container, dir).map_err(|e| format!("cannot start container {name}: {e}"))?;
    if let (Some(pid), Some(j)) = (child.id(), inner.lock().unwrap().jobs.get_mut(job)) {
        j.pgids.push(pid as i32);
    }
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let pump = {
        let log = log.clone();
        tokio::spawn(async move {
            let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                tokio::select! {
                    n = out.read(&mut a), if out_open => match n { Ok(n) if n > 0 => log.push(&a[..n]), _ => out_open = false },
                    n = err.read(&mut b), if err_open => match n { Ok(n) if n > 0 => log.push(&b[..n]), _ => err_open = false },
                }
            }
        })
    };
    let fallback_to_logs =
        container.get("terminationMessagePolicy").and_then(Value::as_str) == Some("FallbackToLogsOnError");
    Ok(Running { name, child, pump, log, fallback_to_logs })
}

impl Running {
    /// Kill what is left of its group, let its output drain, and say how it ended.
    async fn finish(mut self, inner: &Shared, job: &str, code: Option<i32>) -> (i32, Value) {
        let pid = self.child.id().map(|id| id as i32);
        if let Some(pgid) = pid {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        let code = match code {
            Some(code) => code,
            None => self.child.wait().await.ok().and_then(|s| s.code()).unwrap_or(137),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), self.pump).await;
        self.log.finish();
        if let (Some(pgid), Some(j)) = (pid, inner.lock().unwrap().jobs.get_mut(job)) {
            j.pgids.retain(|g| *g != pgid);
        }
        let mut terminated = json!({"exitCode": code});
        if code != 0 && self.fallback_to_logs {
            // As a kubelet does: the tail of the log, at most 80 lines and 2,048 bytes.
            let text = String::from_utf8_lossy(&self.log.data.lock().unwrap()).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            let mut tail = lines[lines.len().saturating_sub(80)..].join("\n");
            if tail.len() > 2048 {
                let mut cut = tail.len() - 2048;
                while !tail.is_char_boundary(cut) {
                    cut += 1;
                }
                tail = tail[cut..].to_string();
            }
            terminated["message"] = json!(tail);
        }
        (code, json!({"name": self.name, "state": {"terminated": terminated}}))
    }
}

/// Run the pod to its end and set the Job's status as the Job controller would.
async fn kubelet(inner: Shared, name: String, pod_spec: Value, dir: std::path::PathBuf, deadline: Option<u64>) {
    let limit = tokio::time::Instant::now() + Duration::from_secs(deadline.unwrap_or(86_400));
    let grace = Duration::from_secs(
        pod_spec.get("terminationGracePeriodSeconds").and_then(Value::as_u64).unwrap_or(30).min(60),
    );
    let set_status = |init: Option<Value>, main: Option<Value>, phase: Option<&'static str>| {
        if let Some(j) = inner.lock().unwrap().jobs.get_mut(&name) {
            if let Some(status) = init {
                let key = status["name"].clone();
                j.init_statuses.retain(|s| s["name"] != key);
                j.init_statuses.push(status);
            }
            if let Some(main) = main {
                j.main_status = main;
            }
            if let Some(phase) = phase {
                j.phase = phase;
            }
        }
    };
    // Init containers in order; sidecars keep running.
    let mut sidecars = Vec::new();
    let mut failed: Option<(Option<i32>, &'static str)> = None;
    for container in containers(&pod_spec, "initContainers") {
        let running = match start(&inner, &name, &container, &dir) {
            Ok(running) => running,
            Err(e) => {
                failed = Some((Some(128), "BackoffLimitExceeded"));
                eprintln!("fake kubelet: {e}");
                break;
            }
        };
        if container.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            set_status(Some(json!({"name": running.name, "state": {"running": {}}})), None, None);
            sidecars.push(running);
            // The next container starts once its startup probe passes (checked every 50 ms here).
            if let Some(probe) = container.pointer("/startupProbe/exec/command") {
                let mut probe_container = container.clone();
                probe_container["command"] = probe.clone();
                probe_container.as_object_mut().map(|c| c.remove("args"));
                let mut passed = false;
                for _ in 0..200 {
                    let ran = spawn_container(&probe_container, &dir).map(|c| c.wait_with_output());
                    if let Ok(ran) = ran
                        && ran.await.is_ok_and(|o| o.status.success())
                    {
                        passed = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if !passed {
                    eprintln!("fake kubelet: the startup probe of {} never passed", container["name"]);
                    failed = Some((Some(1), "BackoffLimitExceeded"));
                    break;
                }
            }
            continue;
        }
        let mut running = running;
        let exited = tokio::select! {
            status = running.child.wait() => Some(status.ok().and_then(|s| s.code()).unwrap_or(137)),
            () = tokio::time::sleep_until(limit) => None,
        };
        let (code, status) = running.finish(&inner, &name, exited).await;
        set_status(Some(status), None, None);
        if exited.is_none() {
            failed = Some((None, "DeadlineExceeded"));
            break;
        }
        if code != 0 {
            failed = Some((Some(code), "BackoffLimitExceeded"));
            break;
        }
    }
    let (exit, reason) = match failed {
        Some(end) => end,
        None => match containers(&pod_spec, "containers").first() {
            None => (Some(0), ""),
            Some(main) => match start(&inner, &name, main, &dir) {
                Err(e) => {
                    if let Some(j) = inner.lock().unwrap().jobs.get(&name) {
                        j.log.push(format!("fake kubelet: {e}\n").as_bytes());
                    }
                    (Some(128), "BackoffLimitExceeded")
                }
                Ok(mut running) => {
                    set_status(None, Some(json!({"running": {}})), Some("Running"));
                    let exited = tokio::select! {
                        status = running.child.wait() => Some(status.ok().and_then(|s| s.code()).unwrap_or(137)),
                        () = tokio::time::sleep_until(limit) => None,
                    };
                    let (code, status) = running.finish(&inner, &name, exited).await;
                    set_status(None, Some(status["state"].clone()), None);
                    match exited {
                        None => (None, "DeadlineExceeded"),
                        Some(_) => (Some(code), if code == 0 { "" } else { "BackoffLimitExceeded" }),
                    }
                }
            },
        },
    };
    // The main container ended: sidecars are stopped, last started first, before the pod ends.
    for mut sidecar in sidecars.into_iter().rev() {
        if let Some(pid) = sidecar.child.id() {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let exited = tokio::time::timeout(grace, sidecar.child.wait())
            .await
            .ok()
            .and_then(|s| s.ok())
            .map(|s| s.code().unwrap_or(143));
        let (_, status) = sidecar.finish(&inner, &name, exited).await;
        set_status(Some(status), None, None);
    }
    if let Some(j) = inner.lock().unwrap().jobs.get(&name) {
        j.log.finish();
    }
    set_end(&inner, &name, exit, reason);
}

fn set_end(inner: &Shared, name: &str, exit: Option<i32>, reason: &str) {
    let mut guard = inner.lock().unwrap();
    let Some(job) = guard.jobs.get_mut(name) else { return };
    let done = exit == Some(0);
    job.phase = if done { "Succeeded" } else { "Failed" };
    let condition = if done {
        json!({"type": "Complete", "status": "True"})
    } else {
        json!({"type": "Failed", "status": "True", "reason": reason, "message": format!("fake: {reason}")})
    };
    job.object["status"] = json!({
        "active": 0, "succeeded": i32::from(done), "failed": i32::from(!done),
        "conditions": [condition],
    });
}

async fn get_job(State((inner, _)): State<AppState>, Path((_ns, name)): Path<(String, String)>) -> Response {
    match inner.lock().unwrap().jobs.get(&name) {
        Some(job) => Json(job.object.clone()).into_response(),
        None => status(StatusCode::NOT_FOUND, "NotFound", &format!("jobs.batch \"{name}\" not found")),
    }
}

async fn list_jobs(
    State((inner, _)): State<AppState>,
    Path(_ns): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let guard = inner.lock().unwrap();
    let items: Vec<Value> = guard
        .jobs
        .values()
        .filter(|j| matches(query.get("labelSelector"), &j.object["metadata"]["labels"]))
        .map(|j| j.object.clone())
        .collect();
    Json(json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {"resourceVersion": "1"}, "items": items}))
        .into_response()
}

async fn delete_job(State((inner, _)): State<AppState>, Path((_ns, name)): Path<(String, String)>) -> Response {
    let mut guard = inner.lock().unwrap();
    let Some(job) = guard.jobs.remove(&name) else {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("jobs.batch \"{name}\" not found"));
    };
    guard.deletes.push(name.clone());
    for pgid in &job.pgids {
        let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
    }
    for log in job.logs.values() {
        log.finish();
    }
    Json(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "group": "batch", "kind": "jobs"},
    }))
    .into_response()
}

async fn create_secret(
    State((inner, _)): State<AppState>,
    Path(ns): Path<String>,
    Json(mut secret): Json<Value>,
) -> Response {
    let Some(name) = name_of(&secret) else { return unnamed() };
    let mut guard = inner.lock().unwrap();
    if guard.secrets.contains_key(&name) {
        return already_exists("secrets", &name);
    }
    secret["metadata"]["namespace"] = json!(ns);
    guard.secrets.insert(name.clone(), secret.clone());
    guard.secrets_created.push(name);
    (StatusCode::CREATED, Json(secret)).into_response()
}

async fn list_secrets(
    State((inner, _)): State<AppState>,
    Path(_ns): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let guard = inner.lock().unwrap();
    let items: Vec<Value> = guard
        .secrets
        .values()
        .filter(|s| matches(query.get("labelSelector"), &s["metadata"]["labels"]))
        .cloned()
        .collect();
    Json(json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {"resourceVersion": "1"}, "items": items}))
        .into_response()
}

async fn delete_secret(State((inner, _)): State<AppState>, Path((_ns, name)): Path<(String, String)>) -> Response {
    let mut guard = inner.lock().unwrap();
    if guard.secrets.remove(&name).is_none() {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("secrets \"{name}\" not found"));
    }
    guard.secrets_deleted.push(name.clone());
    Json(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "kind": "secrets"},
    }))
    .into_response()
}

async fn list_pods(
    State((inner, _)): State<AppState>,
    Path(ns): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let guard = inner.lock().unwrap();
    let items: Vec<Value> = guard
        .jobs
        .values()
        .filter(|j| matches(query.get("labelSelector"), &j.pod_labels))
        .map(|j| {
            let full = |mut status: Value| {
                for (key, value) in
                    [("ready", json!(false)), ("restartCount", json!(0)), ("image", json!("")), ("imageID", json!(""))]
                {
                    status[key] = value;
                }
                status
            };
            let main_name = j.object.pointer("/spec/template/spec/containers/0/name").cloned().unwrap_or(json!("job"));
            json!({
                "metadata": {"name": j.pod, "namespace": ns, "labels": j.pod_labels},
                "status": {
                    "phase": j.phase,
                    "initContainerStatuses": j.init_statuses.iter().cloned().map(full).collect::<Vec<_>>(),
                    "containerStatuses": [full(json!({"name": main_name, "state": j.main_status}))],
                },
            })
        })
        .collect();
    Json(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items}))
        .into_response()
}

async fn pod_log(
    State((inner, _)): State<AppState>,
    Path((_ns, pod)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let log = inner.lock().unwrap().jobs.values().find(|j| j.pod == pod).map(|j| match query.get("container") {
        Some(container) => j.logs.get(container).cloned().unwrap_or_default(),
        None => j.log.clone(),
    });
    let Some(log) = log else {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("pods \"{pod}\" not found"));
    };
    if query.get("follow").map(String::as_str) != Some("true") {
        return log.data.lock().unwrap().clone().into_response();
    }
    // Followed: what is there, then each addition, until the pod is done.
    let stream = futures::stream::unfold((log, 0usize), |(log, sent)| async move {
        loop {
            let (chunk, done) = {
                let data = log.data.lock().unwrap();
                (data[sent..].to_vec(), log.done.load(std::sync::atomic::Ordering::SeqCst))
            };
            if !chunk.is_empty() {
                let next = sent + chunk.len();
                return Some((Ok::<_, std::io::Error>(chunk), (log, next)));
            }
            if done {
                return None;
            }
            // Bounded wait: a notification between the check and here is caught by the timeout.
            let _ = tokio::time::timeout(Duration::from_millis(50), log.changed.notified()).await;
        }
    });
    Body::from_stream(stream).into_response()
}
