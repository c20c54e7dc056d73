//! Git repositories for the include tests: `git` with a fixed identity, and `git daemon` serving
//! a directory on 127.0.0.1. Without git (and its daemon) the tests fail, saying so.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `git ARGS` in `dir`, which must succeed.
pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "atoll test")
        .env("GIT_AUTHOR_EMAIL", "test@atoll.invalid")
        .env("GIT_COMMITTER_NAME", "atoll test")
        .env("GIT_COMMITTER_EMAIL", "test@atoll.invalid")
        .output()
        .expect("git (the test needs it)");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `git daemon` serving `base` on 127.0.0.1, stopped (by its pid) when dropped.
pub struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn serve(base: &Path) -> (Daemon, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    // git-daemon itself (`git daemon` would run it as a child of its own, left behind when the
    // parent is killed).
    let exec_path = Command::new("git").arg("--exec-path").output().expect("git (the test needs it)");
    let daemon = Path::new(String::from_utf8_lossy(&exec_path.stdout).trim()).join("git-daemon");
    assert!(daemon.exists(), "{} is missing: the test needs git's daemon", daemon.display());
    let child = Command::new(daemon)
        .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("git daemon (the test needs git's daemon)");
    let daemon = Daemon(child);
    // Bounded: until it accepts connections, at most 10 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "git daemon did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (daemon, port)
}
