//! A fake Kubernetes API server, in the test's process: no Kubernetes API server can run on this
//! machine, so the kubernetes executor is tested against this one.
//!
//! It serves the part of the API the executor uses, with the answers a real server gives
//! (objects, lists, `Status` errors with their reasons): batch/v1 Jobs (create, get, list by
//! label selector, delete) and core/v1 pods (list by label selector, log, followed or not). It
//! also plays the Job controller and the kubelet: creating a Job creates its one pod, which runs
//! the container's command as a local process (in its own process group, with the container's
//! environment), its output as the pod's log; the pod's exit sets the Job's `Complete` or `Failed`
//! condition; `activeDeadlineSeconds` kills it with reason `DeadlineExceeded`; deleting the Job
//! kills its pod. Images are not pulled: a container without a command just exits 0.
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
    exit_code: Option<i32>,
    log: Arc<PodLog>,
    pgid: Option<i32>,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<String, FakeJob>,
    /// Job name -> how many times a create made it.
    creates: HashMap<String, u32>,
    deletes: Vec<String>,
    next_uid: u64,
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

    /// How many times the Job `name` was created.
    pub fn creates(&self, name: &str) -> u32 {
        self.inner.lock().unwrap().creates.get(name).copied().unwrap_or(0)
    }

    pub fn deleted(&self, name: &str) -> bool {
        self.inner.lock().unwrap().deletes.iter().any(|n| n == name)
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
            if let Some(pgid) = job.pgid {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
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
    let Some(name) = job.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string) else {
        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name is required");
    };
    let mut guard = inner.lock().unwrap();
    if guard.jobs.contains_key(&name) {
        return status(StatusCode::CONFLICT, "AlreadyExists", &format!("jobs.batch \"{name}\" already exists"));
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
    let container = job.pointer("/spec/template/spec/containers/0").cloned().unwrap_or(json!({}));
    let deadline = job.pointer("/spec/activeDeadlineSeconds").and_then(Value::as_u64);
    let log = Arc::new(PodLog::default());
    let dir = root.join(&pod);
    std::fs::create_dir_all(&dir).expect("pod dir");
    let child = spawn_container(&container, &dir);
    let pgid = child.as_ref().ok().and_then(|c| c.id()).map(|id| id as i32);
    guard.jobs.insert(
        name.clone(),
        FakeJob {
            object: job.clone(),
            pod: pod.clone(),
            pod_labels,
            phase: "Running",
            exit_code: None,
            log: log.clone(),
            pgid,
        },
    );
    drop(guard);
    tokio::spawn(kubelet(inner.clone(), name, child, log, deadline));
    (StatusCode::CREATED, Json(job)).into_response()
}

fn spawn_container(container: &Value, dir: &std::path::Path) -> std::io::Result<tokio::process::Child> {
    let strings = |key: &str| -> Vec<String> {
        container
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let mut argv = strings("command");
    argv.extend(strings("args"));
    if argv.is_empty() {
        let image = container.get("image").and_then(Value::as_str).unwrap_or("?");
        argv = vec!["sh".into(), "-c".into(), format!("echo 'fake kubelet: {image} runs its own entrypoint'")];
    }
    let mut command = tokio::process::Command::new(&argv[0]);
    command.args(&argv[1..]).current_dir(dir).env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin");
    for var in container.get("env").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(k), Some(v)) = (var.get("name").and_then(Value::as_str), var.get("value").and_then(Value::as_str))
        {
            command.env(k, v);
        }
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    command.spawn()
}

/// Run the pod to its end and set the Job's status as the Job controller would.
async fn kubelet(
    inner: Shared,
    name: String,
    child: std::io::Result<tokio::process::Child>,
    log: Arc<PodLog>,
    deadline: Option<u64>,
) {
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            log.push(format!("fake kubelet: cannot start the container: {e}\n").as_bytes());
            log.finish();
            set_end(&inner, &name, Some(128), "BackoffLimitExceeded");
            return;
        }
    };
    let pgid = child.id().map(|id| id as i32);
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let pump = {
        let log = log.clone();
        async move {
            let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                tokio::select! {
                    n = out.read(&mut a), if out_open => match n { Ok(n) if n > 0 => log.push(&a[..n]), _ => out_open = false },
                    n = err.read(&mut b), if err_open => match n { Ok(n) if n > 0 => log.push(&b[..n]), _ => err_open = false },
                }
            }
        }
    };
    let limit = Duration::from_secs(deadline.unwrap_or(86_400));
    let (exit, reason) = tokio::select! {
        status = child.wait() => {
            let code = status.ok().and_then(|s| s.code()).unwrap_or(137);
            (Some(code), if code == 0 { "" } else { "BackoffLimitExceeded" })
        }
        () = tokio::time::sleep(limit) => (None, "DeadlineExceeded"),
    };
    if let Some(pgid) = pgid {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
    log.finish();
    set_end(&inner, &name, exit, reason);
}

fn set_end(inner: &Shared, name: &str, exit: Option<i32>, reason: &str) {
    let mut guard = inner.lock().unwrap();
    let Some(job) = guard.jobs.get_mut(name) else { return };
    job.exit_code = exit;
    job.pgid = None;
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
    if let Some(pgid) = job.pgid {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    job.log.finish();
    Json(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "group": "batch", "kind": "jobs"},
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
            let state = match j.exit_code {
                Some(code) => json!({"terminated": {"exitCode": code}}),
                None if j.phase == "Running" => json!({"running": {}}),
                None => json!({"terminated": {"exitCode": 137, "reason": "DeadlineExceeded"}}),
            };
            json!({
                "metadata": {"name": j.pod, "namespace": ns, "labels": j.pod_labels},
                "status": {"phase": j.phase, "containerStatuses": [{
                    "name": "job", "ready": j.phase == "Running", "restartCount": 0, "image": "", "imageID": "",
                    "state": state,
                }]},
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
    let log = inner.lock().unwrap().jobs.values().find(|j| j.pod == pod).map(|j| j.log.clone());
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
