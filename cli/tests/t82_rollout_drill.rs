//! The rollout drill, without Kubernetes: three agents started exactly as the worker overlay
//! (`deploy/overlays/worker`, rendered with `kubectl kustomize`) configures its StatefulSet's pods,
//! then restarted one by one in reverse ordinal order, as a StatefulSet's rolling update does,
//! while writes go on. Nothing acknowledged may be lost, and the cluster stays registered (never
//! judged dead) at the gateway throughout.
//!
//! What a pod gets and how the drill gives it:
//! - its host name (`atoll-agent-2`: the node id comes from the ordinal): a UTS namespace of its
//!   own, with `hostname` set;
//! - its volumes at their mount paths (the ConfigMap's files, the join token Secret, the data
//!   claim, the emptyDirs): a mount namespace of its own, with a directory of the test bind-mounted
//!   at each mount path;
//! - the cluster DNS names of its peers (`atoll-agent-0.atoll-agent`) and of the gateway's
//!   Service: an `/etc/hosts` bind-mounted in that namespace, mapping each pod to its own loopback
//!   address (`127.0.1.<ordinal + 1>`) and the gateway to `127.0.2.1`;
//! - the container's arguments and environment, downward-API values filled in (`POD_NAME`,
//!   `POD_NAMESPACE`, `POD_IP`) and `$(VAR)` references expanded as the kubelet does;
//! - its user (`runAsUser`, `runAsGroup`): `setpriv`, once the mounts are made.
//!
//! Where the drill must differ from a pod, it says so: pods have a network namespace each, the
//! drill's share one, so each listener binds its pod's loopback address instead of `0.0.0.0`; and
//! the Kubernetes API the executor would use is this test's fake one (no API server runs here).
//! Needs root (namespaces, mounts) and `kubectl`; without either the test fails, saying so.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use atoll::cli_config::CliConfig;
use atoll_api::gateway::ClusterState;
use atoll_api::gateway::JoinTokenRequest;
use common::atoll_exe;
use common::eventually;
use common::fake_kube::FakeKube;
use common::phase;
use common::pods;
use common::pods::PodIdentity;
use common::pods::Workload;
use common::pods::at;
use common::pods::port_of;
use common::pods::str_at;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_yaml_ng::Value;

/// The gateway's address inside the drill (its Service's name maps here).
const GATEWAY_IP: &str = "127.0.2.1";

/// One pod of the StatefulSet as the drill runs it.
struct Pod {
    id: PodIdentity,
    process: Option<Child>,
}

struct Drill {
    dir: tempfile::TempDir,
    workload: Workload,
    pods: Vec<Pod>,
    /// Environment every pod gets besides its container's: the drill's differences from a pod.
    drill_env: Vec<Vec<(String, String)>>,
    /// Mount points the drill created on this machine (removed at the end).
    created: Vec<PathBuf>,
    gateway: Child,
    _exclusive: std::fs::File,
}

impl Drill {
    /// Start pod `index` as the StatefulSet controller would (same volumes as before on a restart).
    fn start(&mut self, index: usize) {
        let pod = &self.pods[index].id;
        let hosts = self.dir.path().join("hosts");
        let script = self.workload.pod_script(self.dir.path(), pod, Some(&hosts), &self.drill_env[index], None);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", pod.name)))
            .unwrap();
        // unshare execs the shell, which execs setpriv, env and atoll: the child's pid is the agent's.
        let child =
            pods::unshare(&script).stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("unshare (util-linux)");
        self.pods[index].process = Some(child);
    }

    fn log(&self, pod: &Pod) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", pod.id.name))).unwrap_or_default()
    }
}

impl Drop for Drill {
    fn drop(&mut self) {
        for pod in &mut self.pods {
            if let Some(mut child) = pod.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = self.gateway.kill();
        let _ = self.gateway.wait();
        pods::remove_mount_points(&self.created);
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("--- the drill failed; its files are kept in {}", self.dir.path().display());
            for pod in &self.pods {
                let log = self.log(pod);
                let lines: Vec<&str> = log.lines().collect();
                eprintln!("--- last lines of {}:", pod.id.name);
                for line in &lines[lines.len().saturating_sub(30)..] {
                    eprintln!("    {line}");
                }
            }
        }
    }
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("run");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn ready(ip: &str, ops_port: u16) -> bool {
    let url = format!("http://{ip}:{ops_port}/readyz");
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(1)).build().unwrap();
    client.get(url).send().await.is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_worker_statefulset_loses_nothing() {
    assert!(nix::unistd::geteuid().is_root(), "the rollout drill needs root (mount and UTS namespaces)");
    let exclusive = pods::exclusive();
    let mut found = pods::workloads(&pods::render(&pods::deploy_dir("overlays/worker")));
    assert_eq!(found.len(), 1, "the worker overlay runs one workload: {found:?}");
    let workload = found.remove(0);
    assert_eq!(workload.kind, "StatefulSet");
    let service = workload.service.clone().expect("a StatefulSet's serviceName");
    phase(&format!(
        "the worker overlay: StatefulSet {} of {} behind headless Service {}, args {:?}, grace {:?}",
        workload.name, workload.replicas, service, workload.args, workload.grace
    ));
    let agent: Value = workload.config();
    assert_eq!(at(&agent, &["node", "id_from_hostname"]).and_then(Value::as_bool), Some(true), "ids from ordinals");
    let listen_port = port_of(str_at(&agent, &["listen"]).expect("listen"));
    let ops_port = port_of(str_at(&agent, &["ops_listen"]).expect("ops_listen: the probes need it"));
    let pod_listen_port = str_at(&agent, &["jobs", "kubernetes", "pod_listen"]).map(port_of);
    let gateway_addr = at(&agent, &["gateway", "addrs"])
        .and_then(|a| a.get(0))
        .or_else(|| at(&agent, &["gateway", "addr"]))
        .and_then(Value::as_str)
        .expect("gateway.addrs")
        .to_string();
    let (gateway_host, gateway_port) = gateway_addr.rsplit_once(':').unwrap();
    let token_path =
        str_at(&agent, &["gateway", "join_token_file"]).expect("the join token comes from a file").to_string();
    let cluster = str_at(&agent, &["cluster", "name"]).unwrap().to_string();

    let dir = tempfile::tempdir().unwrap();
    let fake = FakeKube::start().await;
    let pods: Vec<Pod> = (0..workload.replicas)
        .map(|ordinal| Pod { id: workload.pod(ordinal, &format!("127.0.1.{}", ordinal + 1)), process: None })
        .collect();

    phase("the pods' names: each pod at its own loopback address, the gateway's Service at the gateway");
    let mut hosts = String::from("127.0.0.1 localhost\n");
    for Pod { id: pod, .. } in &pods {
        let ns = &workload.namespace;
        hosts.push_str(&format!(
            "{} {name}.{service} {name}.{service}.{ns}.svc {name}.{service}.{ns}.svc.cluster.local {name}\n",
            pod.ip,
            name = pod.name
        ));
    }
    hosts.push_str(&format!("{GATEWAY_IP} {gateway_host}\n"));
    std::fs::write(dir.path().join("hosts"), hosts).unwrap();

    phase("a gateway (SQLite) at the Service's port, a join token for all the replicas");
    let ca = dir.path().join("ca");
    run(Command::new(atoll_exe()).args(["ca", "init", "--dir"]).arg(&ca));
    run(Command::new(atoll_exe())
        .args(["ca", "issue", "--operator", "drill", "--dir"])
        .arg(&ca)
        .arg("--out")
        .arg(dir.path())
        .args(["--name", "operator"]));
    std::fs::write(
        dir.path().join("gateway.yaml"),
        format!(
            "id: drill\nlisten: \"{GATEWAY_IP}:{gateway_port}\"\nhost: \"{gateway_addr}\"\nca_dir: ca\n\
             admin_token_file: admin.token\nclusters: {{heartbeat_interval_ms: 250, suspect_after_ms: 1000, dead_after_ms: 3000}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("atoll.yaml"),
        format!(
            "gateway: [\"{GATEWAY_IP}:{gateway_port}\"]\ntoken_file: admin.token\n\
             tls: {{ca: ca/ca.pem, cert: operator.pem, key: operator-key.pem}}\n"
        ),
    )
    .unwrap();
    let gateway_log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let gateway = Command::new(atoll_exe())
        .args(["gateway", "--config"])
        .arg(dir.path().join("gateway.yaml"))
        .stdout(gateway_log.try_clone().unwrap())
        .stderr(gateway_log)
        .spawn()
        .unwrap();
    let admin = dir.path().join("admin.token");
    eventually(Duration::from_secs(20), "the gateway writes its admin token", || async {
        admin.exists().then_some(())
    })
    .await;
    let cli = CliConfig::load(&dir.path().join("atoll.yaml")).unwrap();
    let gw = cli.gateway_client().unwrap();
    let token = eventually(Duration::from_secs(20), "a join token for every replica", || async {
        gw.join_token(&JoinTokenRequest {
            cluster: cluster.clone(),
            labels: vec![],
            ttl_s: None,
            replicas: Some(workload.replicas as u32),
        })
        .await
        .ok()
    })
    .await
    .token;

    phase("each pod's volumes: the ConfigMap's files, the token Secret, its own data claim, its emptyDirs");
    let mut drill =
        Drill { dir, workload, pods, drill_env: Vec::new(), created: Vec::new(), gateway, _exclusive: exclusive };
    let secrets = BTreeMap::from([(token_path.clone(), token.clone())]);
    for index in 0..drill.pods.len() {
        let pod = &drill.pods[index].id;
        drill.workload.make_volumes(drill.dir.path(), pod, &secrets);
        let mut env = vec![
            ("ATOLL__LISTEN".to_string(), format!("{}:{listen_port}", pod.ip)),
            ("ATOLL__OPS_LISTEN".to_string(), format!("{}:{ops_port}", pod.ip)),
            ("ATOLL__JOBS__KUBERNETES__API".to_string(), fake.url.clone()),
        ];
        if let Some(port) = pod_listen_port {
            env.push(("ATOLL__JOBS__KUBERNETES__POD_LISTEN".to_string(), format!("{}:{port}", pod.ip)));
        }
        drill.drill_env.push(env);
    }
    drill.created = drill.workload.make_mount_points();

    phase("all pods at once (podManagementPolicy: Parallel); each takes its id from its ordinal and enrolls");
    for index in 0..drill.pods.len() {
        drill.start(index);
    }
    for pod in &drill.pods {
        let id = &pod.id;
        eventually(Duration::from_secs(60), &format!("{} is ready", id.name), || async {
            ready(&id.ip, ops_port).await.then_some(())
        })
        .await;
        let log = drill.log(pod);
        let node_id = id.ordinal + 1;
        assert!(log.contains(&format!("node={node_id}")), "{} runs as node {node_id}:\n{log}", id.name);
    }
    eventually(Duration::from_secs(30), "the cluster registered and alive at the gateway", || async {
        gw.clusters().await.ok()?.into_iter().find(|c| c.name.as_str() == cluster && c.state == ClusterState::Alive)
    })
    .await;

    phase("writes go on through the pods while the gateway's view of the cluster is watched");
    let node = cli.node_client().unwrap();
    let addrs: Vec<String> = drill.pods.iter().map(|p| format!("{}:{listen_port}", p.id.ip)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let writer = tokio::spawn({
        let (stop, acked, node, addrs) = (stop.clone(), acked.clone(), node.clone(), addrs.clone());
        async move {
            let mut i = 0usize;
            let mut failures = 0usize;
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let key = format!("drill-{i}");
                let value = format!("v{i}");
                // One request to a pod, which forwards to its leader (the names are the pods').
                match node.annotate_once(&addrs[i % addrs.len()], &key, &value).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(key, value);
                    }
                    Err(_) => failures += 1,
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        }
    });
    let views: Arc<Mutex<Vec<String>>> = Arc::default();
    let watcher = tokio::spawn({
        let (stop, views, gw, cluster) = (stop.clone(), views.clone(), gw.clone(), cluster.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Ok(clusters) = gw.clusters().await {
                    let view = match clusters.iter().find(|c| c.name.as_str() == cluster) {
                        Some(c) if c.revoked => "revoked".to_string(),
                        Some(c) if c.last_seen_ms.is_none() => "unregistered".to_string(),
                        Some(c) => c.state.to_string(),
                        None => "absent".to_string(),
                    };
                    views.lock().unwrap().push(view);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    phase("the rolling update: highest ordinal first, each pod ready before the next is stopped");
    for index in (0..drill.pods.len()).rev() {
        let name = drill.pods[index].id.name.clone();
        let pid = drill.pods[index].process.as_ref().unwrap().id();
        let before = acked.lock().unwrap().len();
        phase(&format!("SIGTERM {name} (pid {pid}), {before} writes acknowledged so far"));
        nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
        let grace = drill.workload.grace;
        let mut child = drill.pods[index].process.take().unwrap();
        let status = eventually(grace, &format!("{name} exits within its grace period"), || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await;
        assert!(status.success(), "{name} exited with {status}:\n{}", drill.log(&drill.pods[index]));
        drill.start(index);
        let ip = drill.pods[index].id.ip.clone();
        eventually(Duration::from_secs(60), &format!("{name} is ready again"), || async {
            ready(&ip, ops_port).await.then_some(())
        })
        .await;
        // Writes go on against the whole group before the next pod goes.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let failures = writer.await.unwrap();
    watcher.await.unwrap();

    phase("nothing acknowledged is lost, on any pod");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20, "too few writes were acknowledged to mean anything: {}", acked.len());
    for addr in &addrs {
        let seen =
            eventually(Duration::from_secs(10), &format!("{addr} has applied every acknowledged write"), || async {
                let annotations = node.annotations(addr).await.ok()?;
                acked.iter().all(|(k, v)| annotations.get(k) == Some(v)).then_some(annotations.len())
            })
            .await;
        eprintln!("{addr}: {seen} annotations, all {} acknowledged writes among them", acked.len());
    }
    eprintln!("{} writes acknowledged, {failures} refused or failed during the restarts", acked.len());

    phase("the cluster stayed registered and was never judged dead");
    let views = views.lock().unwrap().clone();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for view in &views {
        *counts.entry(view.as_str()).or_default() += 1;
    }
    eprintln!("the gateway's view over {} reads: {counts:?}", views.len());
    assert!(views.len() > 10, "the gateway was hardly read");
    assert!(views.iter().all(|v| v == "alive" || v == "suspect"), "the cluster left the registry or died: {counts:?}");

    phase("every pod kept its id and certificate: it enrolled once, and the token is used up");
    for pod in &drill.pods {
        let log = drill.log(pod);
        let enrolled = log.lines().filter(|line| line.contains("enrolled identity=")).count();
        assert_eq!(enrolled, 1, "{} enrolled once, and restarted on its certificate:\n{log}", pod.id.name);
    }
    let fourth = gw
        .join_token(&JoinTokenRequest { cluster: cluster.clone(), labels: vec![], ttl_s: None, replicas: Some(0) })
        .await;
    assert!(fourth.is_err_and(|e| e.to_string().contains("replicas must be within")), "replicas: 0 is refused");
}
