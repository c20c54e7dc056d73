//! `atoll dev` end to end, as the README runs it: a gateway and three clusters of three replicas
//! come up, enroll and register; the matrix shows the one-way cut aws->onprem and the relayed
//! pair gcp<->onprem; the CLI works against it through the written config; SIGTERM stops every
//! child; a second run on the same directory finds its data and certificates again. With
//! `--gateways 3`: three gateway replicas over dev's own PostgreSQL, `gateways.json` kept current,
//! the lease holder printed, and SIGINT stopping every child and the database.

// A synchronous test driving processes: no async runtime here, so plain sleeps are right.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::BufRead;
use std::io::BufReader;
use std::path::Path;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

use atoll_mesh::GatewayReplicaRecord;
use atoll_mesh::NodeRecord;
use common::atoll_exe;
use common::phase;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// A running `atoll dev` and the lines it printed.
struct Dev {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// Its standard error (the log lines), shown when a wait fails.
    stderr: tempfile::NamedTempFile,
}

impl Dev {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_in(Path::new("."), dir, extra)
    }

    /// Start in the working directory `cwd` (`dir` may then be relative to it).
    fn start_in(cwd: &Path, dir: &Path, extra: &[&str]) -> Self {
        let stderr = tempfile::NamedTempFile::new().expect("a file for atoll dev's stderr");
        let mut child = Command::new(atoll_exe())
            .current_dir(cwd)
            .arg("dev")
            .args(extra)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("reopen the stderr file"))
            .spawn()
            .expect("start atoll dev");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, seen: Vec::new(), stderr }
    }

    /// Wait for a line containing `text` (bounded).
    fn wait_for(&mut self, text: &str, timeout: Duration) {
        self.wait_for_line(text, timeout, |line| line.contains(text));
    }

    /// Wait for a new line that `wanted` accepts (bounded), described as `what`; returns it.
    fn wait_for_line(&mut self, what: &str, timeout: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                eprintln!("dev| {line}");
                self.seen.push(line.clone());
                if wanted(&line) {
                    return line;
                }
            }
        }
        let stderr = std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
        let stderr: Vec<&str> = stderr.lines().collect();
        panic!(
            "atoll dev did not print {what:?} within {timeout:?}; printed: {:?}\nend of its stderr:\n{}",
            self.seen,
            stderr[stderr.len().saturating_sub(30)..].join("\n")
        );
    }

    /// SIGTERM and wait for a clean exit (bounded).
    fn stop(&mut self) {
        self.stop_with(Signal::SIGTERM);
    }

    /// Send `signal` and wait for a clean exit (bounded).
    fn stop_with(&mut self, signal: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
        self.wait_for("atoll dev: stopped", Duration::from_secs(30));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "atoll dev exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "atoll dev did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(atoll_exe()).arg("--config").arg(config).args(args).output().expect("run atoll")
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), None).is_ok()
}

fn nodes(dir: &Path) -> Vec<NodeRecord> {
    serde_json::from_slice(&std::fs::read(dir.join("nodes.json")).expect("nodes.json")).expect("parse nodes.json")
}

fn gateway_pid(dir: &Path) -> u32 {
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("gateway.json")).expect("gateway.json"))
            .expect("parse gateway.json");
    record["pid"].as_u64().expect("gateway pid") as u32
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[test]
fn atoll_dev_runs_the_mesh_with_gateway_and_cuts_and_stops_every_child() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("mesh");
    let config = dir.join("atoll.yaml");

    phase("start atoll dev with its defaults, its directory relative as in the README, and wait until it is ready");
    let mut dev = Dev::start_in(temp.path(), Path::new("mesh"), &[]);
    dev.wait_for("atoll dev: ready", Duration::from_secs(180));
    for cluster in ["aws", "gcp", "onprem"] {
        assert!(dev.seen.iter().any(|l| l.starts_with(&format!("cluster {cluster}: leader node"))), "{:?}", dev.seen);
    }
    assert!(dev.seen.iter().any(|l| l.contains("every cluster registered")), "{:?}", dev.seen);
    assert!(
        dev.seen.iter().any(|l| l.starts_with("onprem") && l.contains("[relay]")),
        "matrix table printed: {:?}",
        dev.seen
    );
    let records = nodes(&dir);
    assert_eq!(records.len(), 9);
    let mut pids: Vec<u32> = records.iter().map(|r| r.pid.expect("pid")).collect();
    pids.push(gateway_pid(&dir));
    assert!(pids.iter().all(|p| alive(*p)));
    // Every daemon runs with the malloc setting it starts itself again with (this test's
    // environment sets none of its own).
    let tuned = format!("GLIBC_TUNABLES={}", atoll::malloc::TUNABLE);
    for pid in &pids {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("a daemon's environment");
        let environ = String::from_utf8_lossy(&environ);
        assert!(environ.split('\0').any(|v| v == tuned), "pid {pid} runs without {tuned}");
    }

    phase("atoll clusters --json: three alive clusters with leaders");
    let clusters = json(&cli(&config, &["clusters", "--json"]));
    let names: Vec<&str> =
        clusters.as_array().expect("array").iter().map(|c| c["name"].as_str().unwrap_or("")).collect();
    assert_eq!(names, ["aws", "gcp", "onprem"]);
    for cluster in clusters.as_array().unwrap() {
        assert_eq!(cluster["state"], "alive", "{cluster}");
        assert!(cluster["leader"].is_u64() && cluster["term"].as_u64() >= Some(1), "{cluster}");
    }

    phase("atoll matrix --json: aws->onprem cut one way, gcp<->onprem relayed, the rest direct");
    let matrix = json(&cli(&config, &["matrix", "--json"]));
    let cell = |from: &str, to: &str| -> (String, String) {
        let cells = matrix["cells"].as_array().expect("cells");
        let c = cells
            .iter()
            .find(|c| c["from"] == from && c["to"] == to)
            .unwrap_or_else(|| panic!("no cell {from}->{to}: {matrix}"));
        (c["state"].as_str().unwrap().to_string(), c["mode"].as_str().unwrap().to_string())
    };
    let pair = |s: &str, m: &str| (s.to_string(), m.to_string());
    assert_eq!(cell("aws", "onprem"), pair("unreachable", "direct"), "{matrix}");
    assert_eq!(cell("onprem", "aws"), pair("reachable", "direct"), "{matrix}");
    assert_eq!(cell("gcp", "onprem"), pair("unreachable", "relay"), "{matrix}");
    assert_eq!(cell("onprem", "gcp"), pair("unreachable", "relay"), "{matrix}");
    assert_eq!(cell("aws", "gcp"), pair("reachable", "direct"), "{matrix}");
    assert_eq!(cell("gcp", "aws"), pair("reachable", "direct"), "{matrix}");

    phase("the example pipeline ran, its jobs on different clusters by selector, its outputs by every route");
    dev.wait_for(" jobs; atoll --config", Duration::from_secs(120));
    let job_line = |name: &str| -> String {
        dev.seen
            .iter()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for job {name}: {:?}", dev.seen))
            .clone()
    };
    // Each child reads its parent's files (its command fails without them), so "finished" says
    // the output arrived by the route shown.
    for (name, cluster, route) in [
        ("build", "aws", ""),
        ("package", "aws", "build (local)"),
        ("test-gcp", "gcp", "build (pull)"),
        ("test-onprem", "onprem", "build (pull)"),
        ("collect", "aws", "test-onprem (push)"),
        ("mirror", "gcp", "test-onprem (relay)"),
        ("cleanup", "aws", ""),
    ] {
        let line = job_line(name);
        assert!(line.contains("finished") && line.contains(&format!("on {cluster}")), "{line}");
        assert!(line.contains(route), "{name} should show {route:?}: {line}");
    }
    let jobs = json(&cli(&config, &["jobs", "--json"]));
    assert_eq!(jobs.as_array().map(|a| a.len()), Some(9), "{jobs}");
    let routes: Vec<(String, String)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|j| {
            let name = j["name"].as_str().unwrap_or_default().to_string();
            j["inputs"].as_array().cloned().unwrap_or_default().into_iter().map(move |i| {
                (
                    format!("{}->{name}", i["from_job"].as_str().unwrap_or_default()),
                    format!("{}/{}", i["mode"], i["route"]),
                )
            })
        })
        .collect();
    for (edge, expected) in [
        ("build->package", r#""local"/"local""#),
        ("build->test-onprem", r#""direct"/"pull""#),
        ("test-onprem->collect", r#""direct"/"push""#),
        ("test-onprem->mirror", r#""relay"/"relay""#),
    ] {
        assert!(routes.contains(&(edge.to_string(), expected.to_string())), "{edge} {expected}: {routes:?}");
    }

    phase("the CLI reads the written config: status --json has the contract fields");
    let status = json(&cli(&config, &["status", "--node", &records[0].addr, "--json"]));
    for field in ["cluster", "node_id", "role", "term", "leader", "last_applied", "members"] {
        assert!(status.get(field).is_some(), "status lacks {field}: {status}");
    }
    assert_eq!(status["cluster"], "aws");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));

    phase("annotate through one replica, read it on another");
    let out = cli(&config, &["annotate", "--node", &records[1].addr, "team=platform", "tier=gold"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = cli(&config, &["annotations", "--node", &records[2].addr, "--json"]);
        let annotations: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if annotations["team"] == "platform" && annotations["tier"] == "gold" {
            break;
        }
        assert!(Instant::now() < deadline, "annotation not applied on node 3: {annotations}");
        std::thread::sleep(Duration::from_millis(100));
    }

    phase("bad input is refused with a clear error");
    let out = cli(&config, &["annotate", "--node", &records[0].addr, "no-equals-sign"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected KEY=VALUE"));

    phase("SIGTERM stops atoll dev and every process it started, the gateway included");
    let cert = dir.join("aws-1").join("tls").join("node.pem");
    let enrolled = std::fs::read(&cert).expect("aws-1 enrolled");
    dev.stop();
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} still running after atoll dev stopped");
    }

    phase("a second run on the same directory reuses it: annotations and certificates kept");
    let mut dev = Dev::start(&dir, &[]);
    dev.wait_for("atoll dev: ready", Duration::from_secs(180));
    let records = nodes(&dir);
    let out = cli(&config, &["annotations", "--node", &records[0].addr, "--json"]);
    let annotations: serde_json::Value = serde_json::from_slice(&out.stdout).expect("annotations");
    assert_eq!(annotations["team"], "platform", "{annotations}");
    assert_eq!(std::fs::read(&cert).expect("cert"), enrolled, "a restarted replica enrolled again");
    dev.stop();
}

#[test]
fn atoll_dev_standalone_runs_clusters_without_a_gateway() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("mesh");
    let mut dev = Dev::start(&dir, &["--standalone", "--clusters", "1"]);
    dev.wait_for("atoll dev: ready", Duration::from_secs(90));
    assert!(!dir.join("gateway.json").exists());
    assert_eq!(nodes(&dir).len(), 3);
    dev.stop();

    phase("the directory now holds a mesh without a gateway: a run with one is refused");
    let out = Command::new(atoll_exe()).args(["dev", "--clusters", "1", "--dir"]).arg(&dir).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without a gateway"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn atoll_dev_refuses_a_directory_that_is_not_a_mesh() {
    let temp = tempfile::tempdir().unwrap();
    std::fs::write(temp.path().join("precious.txt"), b"keep me").unwrap();
    let out = Command::new(atoll_exe()).args(["dev", "--clusters", "1", "--dir"]).arg(temp.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no atoll mesh"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(atoll_exe())
        .args(["dev", "--fresh", "--clusters", "1", "--dir"])
        .arg(temp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(temp.path().join("precious.txt").exists(), "--fresh deleted a directory that was not a mesh");
}

fn gateway_replicas(dir: &Path) -> Vec<GatewayReplicaRecord> {
    serde_json::from_slice(&std::fs::read(dir.join("gateways.json")).expect("gateways.json"))
        .expect("parse gateways.json")
}

/// The pid of the PostgreSQL server running in `DIR/postgres`, from its `postmaster.pid`.
fn postgres_pid(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("postgres").join("data").join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Whether `pid` runs: alive and not a zombie (dev's PostgreSQL is not its child, so whoever
/// reaps it may take a while).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// `atoll dev: gateway g2 holds the lease (generation 3)` -> (`g2`, 3).
fn lease_line(line: &str) -> (String, u64) {
    let rest = line.strip_prefix("atoll dev: gateway ").unwrap_or_else(|| panic!("not a lease line: {line}"));
    let (id, rest) = rest.split_once(' ').unwrap_or_else(|| panic!("not a lease line: {line}"));
    let generation = rest
        .strip_prefix("holds the lease (generation ")
        .and_then(|g| g.strip_suffix(')'))
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("not a lease line: {line}"));
    (id.to_string(), generation)
}

/// Wait until `check` holds (bounded), polling.
fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what} not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Needs PostgreSQL installed, or root to install it (dev installs it then); fails otherwise.
#[test]
fn atoll_dev_with_three_gateway_replicas_runs_them_over_its_own_postgres_and_stops_everything() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("mesh");
    let config = dir.join("atoll.yaml");

    phase("start atoll dev with three gateway replicas and wait until it is ready");
    let mut dev = Dev::start(&dir, &["--gateways", "3"]);
    dev.wait_for("atoll dev: ready", Duration::from_secs(240));
    assert!(dev.seen.iter().any(|l| l.contains("every cluster registered")), "{:?}", dev.seen);
    assert!(!dir.join("gateway.json").exists(), "gateways.json replaces gateway.json");

    phase("gateways.json lists three running replicas, g1 to g3, on distinct addresses");
    let replicas = gateway_replicas(&dir);
    let ids: Vec<&str> = replicas.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["g1", "g2", "g3"]);
    let mut addrs: Vec<&str> = replicas.iter().flat_map(|r| [r.addr.as_str(), r.ops_addr.as_str()]).collect();
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), 6, "{replicas:?}");
    let gateway_pids: Vec<u32> = replicas.iter().map(|r| r.pid.expect("a replica's pid")).collect();
    assert!(gateway_pids.iter().all(|p| alive(*p)), "{replicas:?}");
    for replica in &replicas {
        assert!(
            dev.seen.iter().any(|l| l.contains(&format!("gateway {} at {}", replica.id, replica.addr))),
            "{} not printed: {:?}",
            replica.id,
            dev.seen
        );
    }
    let postgres = postgres_pid(&dir).expect("dev's PostgreSQL runs");
    assert!(running(postgres));
    let cli_config = std::fs::read_to_string(&config).unwrap();
    for replica in &replicas {
        assert!(cli_config.contains(&replica.addr), "the CLI config lists {}: {cli_config}", replica.addr);
    }

    phase("the example pipeline runs to its end through the replicas");
    dev.wait_for(" jobs; atoll --config", Duration::from_secs(180));
    for name in ["build", "package", "test-gcp", "test-onprem", "collect", "mirror", "cleanup"] {
        let line = dev
            .seen
            .iter()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for job {name}: {:?}", dev.seen));
        assert!(line.contains("finished"), "{line}");
    }

    phase("dev says which replica holds the duties lease (GET /v1/gateways)");
    let is_lease_line =
        |line: &str| line.starts_with("atoll dev: gateway ") && line.contains(" holds the lease (generation ");
    let line = match dev.seen.iter().find(|l| is_lease_line(l)).cloned() {
        Some(line) => line,
        None => dev.wait_for_line("the lease holder", Duration::from_secs(30), is_lease_line),
    };
    let (holder, generation) = lease_line(&line);
    let index = replicas.iter().position(|r| r.id == holder).unwrap_or_else(|| panic!("no replica {holder}"));

    phase("SIGKILL the holder: dev restarts it, gateways.json follows, and the new holder is printed");
    nix::sys::signal::kill(Pid::from_raw(gateway_pids[index] as i32), Signal::SIGKILL).unwrap();
    dev.wait_for(&format!("atoll dev: gateway {holder} exited"), Duration::from_secs(10));
    eventually(&format!("{holder} restarted under a new pid in gateways.json"), Duration::from_secs(10), || {
        gateway_replicas(&dir)[index].pid.is_some_and(|p| p != gateway_pids[index] && alive(p))
    });
    let line = dev.wait_for_line("a lease holder of a newer generation", Duration::from_secs(30), |line| {
        is_lease_line(line) && lease_line(line).1 > generation
    });
    eprintln!("--- {line}");
    let mut all_pids: Vec<u32> = gateway_replicas(&dir).iter().map(|r| r.pid.expect("pid")).collect();
    all_pids.extend(nodes(&dir).iter().map(|r| r.pid.expect("pid")));

    phase("SIGINT stops atoll dev, every process it started and its PostgreSQL");
    dev.stop_with(Signal::SIGINT);
    for pid in &all_pids {
        assert!(!alive(*pid), "pid {pid} still running after atoll dev stopped");
    }
    assert!(!running(postgres), "PostgreSQL (pid {postgres}) still running after atoll dev stopped");
    assert_eq!(postgres_pid(&dir), None, "postmaster.pid left behind: PostgreSQL did not shut down in order");

    phase("the directory holds three replicas: a run without --gateways is refused");
    let out = Command::new(atoll_exe()).args(["dev", "--dir"]).arg(&dir).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --gateways 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
