//! A job against its own replica, as a hostile or careless user would try it: reading the
//! replica's key, the CA key, the admin token and another run's work directory; shipping a file
//! from outside its output through a hard link; printing at full speed for a long time (the
//! leader must keep its term, and the log is cut at its limit with a marker saying so).

mod common;

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use atoll_api::jobs::JobState;
use common::Engine;
use common::GatewayMesh;
use common::id_of;
use common::phase;
use common::submit;
use common::test_gateway_timing;
use common::wait_final;
use common::wait_state;

/// Every file under `dir` whose name ends with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else { continue };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                found.push(p);
            }
        }
    }
    found
}

fn log_of(mesh: &GatewayMesh, id: &str) -> (String, String) {
    let out = mesh.cli(&["logs", id]);
    assert!(out.status.success(), "atoll logs: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reaches_none_of_its_replicas_secrets_nor_another_runs_files() {
    let mesh = GatewayMesh::start(Engine::Sqlite, 1, 3, test_gateway_timing(), false).await;
    let gateway = &mesh.gateway;
    let dir = &mesh.t.mesh.dir;

    phase("a run that keeps a file in its work directory, still running");
    let holder = submit(
        gateway,
        "version: 1\njobs:\n  - name: holder\n    type: command\n    command: echo mine > \"$HOME/kept.txt\"; sleep 60\n    timeout: 120\n",
    )
    .await;
    let holder_id = id_of(&holder, "holder");
    wait_state(gateway, &holder_id, Duration::from_secs(60), |s| s == JobState::Running).await;
    let kept = common::eventually(Duration::from_secs(30), "the holder's file", || async {
        (1..=3)
            .map(|id| dir.data_dir("aws", id).join("work").join(&holder_id).join("1").join("kept.txt"))
            .find(|p| p.exists())
    })
    .await;

    phase("a run that tries to read every secret of the mesh: none is readable");
    let mut targets: Vec<PathBuf> = Vec::new();
    for id in 1..=3 {
        targets.extend(files_ending(&dir.replica_dir("aws", id), "-key.pem"));
    }
    let ca_keys = files_ending(&dir.certs(), "ca-key.pem");
    assert!(!ca_keys.is_empty() && targets.len() >= 3, "the test finds the keys it tries: {targets:?} {ca_keys:?}");
    targets.extend(ca_keys);
    targets.push(dir.admin_token());
    targets.push(dir.cli_config());
    targets.push(kept.clone());
    if dir.join_token("aws", 1).exists() {
        targets.push(dir.join_token("aws", 1));
    }
    for t in &targets {
        assert!(std::fs::read(t).is_ok(), "the test itself reads {}", t.display());
    }
    let tries: Vec<String> = targets
        .iter()
        .map(|t| format!("if cat '{}' >/dev/null 2>&1; then echo \"READ {}\"; fi", t.display(), t.display()))
        .collect();
    let command = format!("{}; echo tried {}; id -u", tries.join("; "), targets.len());
    let spec = format!(
        "version: 1\njobs:\n  - name: thief\n    type: command\n    command: {}\n    timeout: 60\n",
        serde_json::to_string(&command).unwrap()
    );
    let thief = submit(gateway, &spec).await;
    let thief_id = id_of(&thief, "thief");
    let done = wait_final(gateway, &thief_id).await;
    assert_eq!(done.job.state, JobState::Finished, "{:?}", done.attempts);
    let (log, _) = log_of(&mesh, &thief_id);
    assert!(log.contains(&format!("tried {}", targets.len())), "the job ran its tries: {log}");
    assert!(!log.contains("READ "), "a job read what it must not:\n{log}");
    assert!(!log.lines().any(|l| l == "0"), "a job ran as root:\n{log}");

    phase("a hard link to a file outside the output is refused, named; nothing of it is stored");
    let linker = submit(
        gateway,
        "version: 1\njobs:\n  - name: linker\n    type: command\n    command: echo private > \"$HOME/f\" && ln \"$HOME/f\" \"$ATOLL_OUTPUT/x\"\n    timeout: 60\n",
    )
    .await;
    let linked = wait_final(gateway, &id_of(&linker, "linker")).await;
    assert_eq!(linked.job.state, JobState::Error, "{:?}", linked.attempts);
    assert_eq!(linked.job.output, None);
    let why = linked.attempts.last().and_then(|a| a.message.clone()).unwrap_or_default();
    assert!(why.contains("x: a hard link to a file outside"), "{why}");
    gateway.cancel(&holder_id).await.expect("cancel the holder");

    phase("resources.limits are enforced: a run holding more memory than its limit is killed");
    let limited = submit(
        gateway,
        "version: 1\njobs:\n  - name: greedy\n    type: command\n    command: head -c 200000000 /dev/zero | tail -c 150000000 > /dev/null\n    resources: {limits: {memory: 32, cpu: 0.5}}\n    timeout: 60\n  - name: modest\n    type: command\n    command: head -c 2000000 /dev/zero | tail -c 1000000 > /dev/null\n    resources: {limits: {memory: 32, cpu: 0.5}}\n    timeout: 60\n",
    )
    .await;
    let greedy = wait_final(gateway, &id_of(&limited, "greedy")).await;
    assert_eq!(greedy.job.state, JobState::Failure, "killed at its memory limit: {:?}", greedy.attempts);
    let modest = wait_final(gateway, &id_of(&limited, "modest")).await;
    assert_eq!(modest.job.state, JobState::Finished, "within its limits: {:?}", modest.attempts);

    phase("what the daemons wrote is their own: no stored blob, key, token or database readable by others");
    use std::os::unix::fs::PermissionsExt;
    let mut checked = 0;
    let mut roots: Vec<PathBuf> = (1..=3).map(|id| dir.replica_dir("aws", id)).collect();
    roots.push(dir.gateway_dir());
    for root in roots {
        for file in files_ending(&root, "") {
            // Work directories belong to jobs (their outputs keep the modes the job gave them);
            // configs and join tokens were written by this test's launcher, not by a daemon
            // (`atoll dev` writes them with the daemons' mask).
            let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if file.components().any(|c| c.as_os_str() == "work") || name.ends_with(".yaml") || name == "join.token" {
                continue;
            }
            let mode = std::fs::symlink_metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} has mode {:o}", file.display(), mode & 0o777);
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} files checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_printing_at_full_speed_keeps_its_leader_and_its_log_is_cut_with_a_marker() {
    let mesh = GatewayMesh::start(Engine::Sqlite, 1, 3, test_gateway_timing(), false).await;
    let gateway = &mesh.gateway;
    let before = mesh.cluster("aws").await.expect("aws registered");
    let term = before.term;

    phase("200 MB of 100-character lines on stdout, then one last line");
    let spec = r#"
version: 1
jobs:
  - name: noisy
    type: command
    command: yes "$(printf '%099d' 0)" | head -c 200000000; echo END-OF-OUTPUT
    timeout: 600
"#;
    let submitted = submit(gateway, spec).await;
    let id = id_of(&submitted, "noisy");
    let done = wait_state(gateway, &id, Duration::from_secs(280), JobState::is_final).await;
    assert_eq!(done.job.state, JobState::Finished, "{:?}", done.attempts);

    phase("the leader kept its term throughout");
    let after = mesh.cluster("aws").await.expect("aws registered");
    assert_eq!(after.term, term, "the cluster's term moved while the job printed: {before:?} -> {after:?}");
    for id in mesh.t.ids("aws") {
        let status = mesh.t.status("aws", id).await.expect("status");
        assert_eq!(status.term, term, "replica {id} is at another term");
    }

    phase("the log: its head, a marker with the dropped bytes, its tail; flagged truncated");
    let (stdout, stderr) = log_of(&mesh, &id);
    assert!(stdout.starts_with("000000"), "{}", &stdout[..stdout.len().min(200)]);
    assert!(stdout.ends_with("END-OF-OUTPUT\n"), "the tail is kept: {}", &stdout[stdout.len().saturating_sub(200)..]);
    assert!(stderr.contains("bytes of output dropped here"), "the marker: {stderr}");
    let limit: usize = 16 * 1024 * 1024;
    assert!(stdout.len() <= limit, "{} bytes shown of a {limit}-byte limit", stdout.len());
    let dropped: u64 =
        stderr.split_whitespace().find_map(|w| w.parse().ok()).expect("the marker says how many bytes were dropped");
    assert_eq!(dropped + stdout.len() as u64, 200_000_000 + "END-OF-OUTPUT\n".len() as u64, "{stderr}");
    let detail = gateway.job(&id).await.expect("job");
    assert!(detail.log_truncated, "the job says its log was cut");
    let page = gateway.logs(&id, (0, 0), 0).await.expect("logs");
    assert!(page.truncated, "the log API says truncated");
    let shown = mesh.cli(&["job", &id]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("log truncated"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );

    phase("the leader's metrics count the run and its cut log");
    let mut scraped = String::new();
    for n in mesh.t.ids("aws") {
        let url = format!("http://{}/metrics", mesh.t.ops_addr("aws", n));
        let text = reqwest::get(&url).await.expect("metrics").text().await.expect("metrics text");
        if text.contains("atoll_job_logs_truncated_total 1") {
            scraped = text;
        }
    }
    assert!(scraped.contains("atoll_job_runs_ended_total{state=\"finished\"} 1"), "{scraped}");
    assert!(scraped.contains("atoll_job_runs_running 0"), "{scraped}");

    phase("the work directory's log is under the same limit");
    let logs: Vec<PathBuf> = (1..=3)
        .map(|n| mesh.t.mesh.dir.data_dir("aws", n).join("work").join(&id).join("1").join("log"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(logs.len(), 1, "the leader's work directory has the log: {logs:?}");
    let size = std::fs::metadata(&logs[0]).unwrap().len();
    assert!(size <= limit as u64 + 512, "{size} bytes on disk");
    assert!(!logs[0].with_file_name("log.tail").exists(), "the ring file is gone");
}
