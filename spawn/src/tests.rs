use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::*;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn shell(line: &str, cwd: &Path, namespaces: Namespaces) -> Command {
    Command {
        program: "sh".into(),
        args: vec!["-c".into(), line.into()],
        env: vec![("PATH".into(), PATH.into()), ("GREETING".into(), "hello there".into())],
        cwd: cwd.to_path_buf(),
        namespaces,
        sandbox: None,
    }
}

async fn read_all(mut pipe: pipe::Receiver) -> String {
    let mut text = String::new();
    pipe.read_to_string(&mut text).await.expect("read pipe");
    text
}

async fn run(command: &Command) -> (ExitStatus, String, String) {
    let Spawned { mut child, stdout, stderr } = spawn(command).expect("spawn");
    let (out, err) = tokio::join!(read_all(stdout), read_all(stderr));
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits").expect("wait");
    (status, out, err)
}

/// Namespaces this machine allows, strongest first (the tests need at least the plain one).
async fn available() -> Vec<Namespaces> {
    let dir = tempfile::tempdir().unwrap();
    let mut found = Vec::new();
    for ns in [Namespaces::Pid, Namespaces::UserAndPid, Namespaces::Shared] {
        if spawn(&shell("true", dir.path(), ns)).is_ok() {
            found.push(ns);
        }
    }
    assert!(found.contains(&Namespaces::Shared), "not even a plain process starts");
    found
}

#[tokio::test]
async fn output_exit_code_environment_and_directory_are_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    for ns in available().await {
        let line = "echo \"$GREETING\"; pwd; echo oops >&2; env | grep -c . ; exit 3";
        let (status, out, err) = run(&shell(line, dir.path(), ns)).await;
        assert_eq!(status.code(), Some(3), "{ns:?}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "hello there", "{ns:?}");
        assert_eq!(Path::new(lines[1]), dir.path().canonicalize().unwrap(), "{ns:?}");
        // Nothing inherited: PATH, GREETING, and what sh itself sets (PWD), at most.
        let vars: usize = lines[2].parse().unwrap();
        assert!(vars <= 4, "{ns:?}: {vars} variables: {out}");
        assert_eq!(err, "oops\n", "{ns:?}");
    }
}

#[tokio::test]
async fn in_a_pid_namespace_the_command_is_its_first_process() {
    let dir = tempfile::tempdir().unwrap();
    let namespaces = available().await;
    for ns in namespaces.iter().copied().filter(|ns| *ns != Namespaces::Shared) {
        let (status, out, _) = run(&shell("echo $$; id -u", dir.path(), ns)).await;
        assert!(status.success(), "{ns:?}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "1", "{ns:?}: {out}");
        if ns == Namespaces::UserAndPid {
            assert_eq!(lines[1], "0", "the caller is mapped to root in its user namespace: {out}");
        }
    }
    if !namespaces.contains(&Namespaces::Pid) && !namespaces.contains(&Namespaces::UserAndPid) {
        panic!("no PID namespace available here; the isolation this crate exists for cannot be tested");
    }
}

#[tokio::test]
async fn signals_are_default_in_the_child() {
    // The test process ignores SIGPIPE (as every Rust program does); the command must not.
    let dir = tempfile::tempdir().unwrap();
    let (status, _, _) = run(&shell("kill -PIPE $$; sleep 5", dir.path(), Namespaces::Shared)).await;
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}");
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(marker))
        })
        .collect()
}

async fn gone(marker: &str) -> bool {
    for _ in 0..100 {
        if processes_with(marker).is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_process_that_left_the_group_dies_with_the_namespace() {
    let dir = tempfile::tempdir().unwrap();
    if !available().await.contains(&Namespaces::Pid) {
        panic!("PID namespaces need CAP_SYS_ADMIN; run the tests as root");
    }
    let marker = "31.4159";
    let line = format!("setsid sleep {marker} & sleep 0.2; echo started");
    let (status, out, _) = run(&shell(&line, dir.path(), Namespaces::Pid)).await;
    assert!(status.success());
    assert_eq!(out, "started\n");
    assert!(gone(marker).await, "the detached sleep outlived its namespace: {:?}", processes_with(marker));
}

#[tokio::test]
async fn dropping_the_child_kills_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let marker = "27.1828";
    let spawned = spawn(&shell(&format!("sleep {marker}; true"), dir.path(), Namespaces::Shared)).unwrap();
    for _ in 0..100 {
        if !processes_with(marker).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!processes_with(marker).is_empty(), "the sleep never started");
    drop(spawned);
    assert!(gone(marker).await, "the group survived the drop");
}

#[tokio::test]
async fn a_missing_program_or_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = shell("true", dir.path(), Namespaces::Shared);
    command.program = "no-such-program-here".into();
    let error = spawn(&command).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::NotFound);
    assert!(error.to_string().contains("no-such-program-here not found in PATH"), "{error}");

    let mut command = shell("true", dir.path(), Namespaces::Shared);
    command.cwd = dir.path().join("missing");
    let error = spawn(&command).unwrap_err();
    assert!(error.to_string().starts_with("entering the working directory failed"), "{error}");

    let mut command = shell("true", dir.path(), Namespaces::Shared);
    command.env.push(("BAD=NAME".into(), "x".into()));
    let error = spawn(&command).unwrap_err();
    assert!(error.to_string().contains("BAD=NAME"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_starts_each_get_their_own_output() {
    let dir = tempfile::tempdir().unwrap();
    let runs = (0..64).map(|i| {
        let command = shell(&format!("echo {i}"), dir.path(), Namespaces::Shared);
        tokio::spawn(async move { (i, run(&command).await) })
    });
    for run in futures_join(runs).await {
        let (i, (status, out, _)) = run;
        assert!(status.success());
        assert_eq!(out, format!("{i}\n"));
    }
}

async fn futures_join<T: Send + 'static>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// A sandbox over `work` (read-write, its `tmp/` at /tmp) with the system's paths read-only.
fn sandbox_over(root: &Path, work: &Path, hidden: Vec<PathBuf>) -> Sandbox {
    Sandbox {
        root: root.to_path_buf(),
        read_only: ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc"].into_iter().map(PathBuf::from).collect(),
        hidden,
        read_write: vec![work.to_path_buf()],
        tmp: Some(work.join("tmp")),
        user: Some((65534, 65534)),
        cgroups: Vec::new(),
        nice: 10,
        low_io_priority: true,
    }
}

#[tokio::test]
async fn a_sandboxed_run_sees_only_its_work_directory_and_the_systems_paths_as_another_user() {
    assert!(
        unsafe_free_is_root(),
        "the sandbox test needs root (the test command runs as root); it cannot be checked here"
    );
    let dir = tempfile::tempdir().unwrap();
    let (root, work, other) = (dir.path().join("root"), dir.path().join("work"), dir.path().join("other"));
    for d in [&root, &work.join("tmp"), &other] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(other.join("secret"), "the replica's key").unwrap();
    std::os::unix::fs::chown(&work, Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(work.join("tmp"), Some(65534), Some(65534)).unwrap();
    // A directory under a system path the run must not see (as a data directory under /etc).
    let etc_secret = tempfile::Builder::new().prefix("atoll-hidden-").tempdir_in("/etc").unwrap();
    std::fs::write(etc_secret.path().join("token"), "admin token").unwrap();
    let ns = if available().await.contains(&Namespaces::Pid) { Namespaces::Pid } else { Namespaces::UserAndPid };
    let line = format!(
        "id -u; id -g; cat {secret} 2>&1 || echo no-secret; ls {hidden} | wc -l; test -e {hidden}/token || echo no-token; \
         echo out > $PWD/made && echo wrote-work; echo t > /tmp/t && ls {work}/tmp; touch /usr/x 2>/dev/null || echo ro-usr; \
         touch /newfile 2>/dev/null || echo ro-root; ls /proc | grep -c '^[0-9]'; grep NoNewPrivs /proc/self/status; \
         cut -d' ' -f19 /proc/self/stat",
        secret = other.join("secret").display(),
        hidden = etc_secret.path().display(),
        work = work.display(),
    );
    let mut command = shell(&line, &work, ns);
    command.sandbox = Some(sandbox_over(&root, &work, vec![etc_secret.path().to_path_buf()]));
    let (status, out, err) = run(&command).await;
    assert!(status.success(), "{status:?}: {out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "65534", "runs as the sandbox's user: {out}");
    assert_eq!(lines[1], "65534", "{out}");
    assert!(lines[2].contains("No such file"), "a file outside the system paths is not there: {out}");
    assert_eq!(lines[3], "no-secret", "{out}");
    assert_eq!(lines[4], "0", "a hidden directory is empty: {out}");
    assert_eq!(lines[5], "no-token", "{out}");
    assert_eq!(lines[6], "wrote-work", "{out}");
    assert_eq!(lines[7], "t", "/tmp is the work directory's tmp/: {out}");
    assert_eq!(lines[8], "ro-usr", "{out}");
    assert_eq!(lines[9], "ro-root", "{out}");
    assert!(lines[10].parse::<u32>().unwrap() <= 6, "only its own processes in /proc: {out}");
    assert_eq!(lines[11], "NoNewPrivs:\t1", "{out}");
    assert_eq!(lines[12], "10", "a lower CPU priority (nice 10): {out}");
    assert_eq!(std::fs::read_to_string(work.join("made")).unwrap(), "out\n");
}

#[tokio::test]
async fn a_sandbox_step_that_fails_is_named() {
    assert!(unsafe_free_is_root(), "the sandbox test needs root (the test command runs as root)");
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("tmp")).unwrap();
    let mut command = shell("true", &work, Namespaces::Pid);
    let mut sandbox = sandbox_over(&dir.path().join("no-such-root"), &work, Vec::new());
    sandbox.cgroups = Vec::new();
    command.sandbox = Some(sandbox);
    let err = spawn(&command).expect_err("the root is missing");
    let message = err.to_string();
    assert!(
        message.contains("setting up the sandbox: mounting tmpfs on") && message.contains("no-such-root"),
        "{message}"
    );
}

fn unsafe_free_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

#[tokio::test]
async fn a_work_directory_inside_a_hidden_directory_under_a_system_path_is_still_reachable() {
    assert!(unsafe_free_is_root(), "the sandbox test needs root (the test command runs as root)");
    // A data directory under /etc (a system path): covered, yet the run's work directory in it
    // is bound on top, and nothing else of the data directory shows.
    let data = tempfile::Builder::new().prefix("atoll-data-").tempdir_in("/etc").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let work = data.path().join("work/job/1");
    std::fs::create_dir_all(work.join("tmp")).unwrap();
    std::fs::write(data.path().join("node-key.pem"), "key").unwrap();
    for d in [&work, &work.join("tmp")] {
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
    }
    let line = format!("ls -A {} | tr '\\n' ' '; echo; echo hi > $PWD/f && cat f", data.path().display());
    let mut command = shell(&line, &work, Namespaces::Pid);
    command.sandbox = Some(sandbox_over(&dir.path().join("root"), &work, vec![data.path().to_path_buf()]));
    std::fs::create_dir_all(dir.path().join("root")).unwrap();
    let (status, out, err) = run(&command).await;
    assert!(status.success(), "{status:?}: {out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].trim(), "work", "only the way to the work directory: {out}");
    assert_eq!(lines[1], "hi", "{out}");
}
