//! A PostgreSQL server for the gateway, inside the gateway's namespace (so only the gateway
//! reaches it, on 127.0.0.1 there), that the nemesis can crash and start again.

use std::path::Path;
use std::path::PathBuf;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use anyhow::Context;

use crate::sandbox::run;

const PORT: u16 = 5432;

/// The server binaries: `$PG_TEST_BIN` (scripts/test exports it), else the newest
/// `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_TEST_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (no /usr/lib/postgresql); scripts/test installs it")?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

/// A running server. Dropping it stops the server (immediately).
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    netns: String,
    running: AtomicBool,
}

impl Postgres {
    /// Create a cluster in a fresh directory (owned by the `postgres` user, since the suite runs
    /// as root) and start it in `netns`.
    pub fn start(netns: &str) -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("atoll-chaos-pg-").tempdir()?;
        let user = nix::unistd::User::from_name("postgres")?.context("no postgres user (install postgresql)")?;
        std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
        let data = dir.path().join("data");
        run(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                &path(&bin.join("initdb")),
                "-D",
                &path(&data),
                "-A",
                "trust",
                "-U",
                "atoll",
                "--no-sync",
            ],
        )
        .context("initdb")?;
        let postgres = Self { bin, dir, netns: netns.to_string(), running: AtomicBool::new(false) };
        postgres.up()?;
        Ok(postgres)
    }

    /// The URL the gateway (in the same namespace) connects to.
    pub fn url(&self) -> String {
        format!("postgres://atoll@127.0.0.1:{PORT}/postgres")
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let pg_ctl = path(&self.bin.join("pg_ctl"));
        let data = path(&self.dir.path().join("data"));
        let mut all = vec!["netns", "exec", &self.netns, "runuser", "-u", "postgres", "--", &pg_ctl, "-D", &data];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Start the server (again).
    pub fn up(&self) -> anyhow::Result<()> {
        let log = path(&self.dir.path().join("server.log"));
        let options = format!(
            "-p {PORT} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.dir.path().display()
        );
        self.pg_ctl(&["-l", &log, "-w", "-t", "60", "-o", &options, "start"]).context("starting PostgreSQL")?;
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Stop the server as a crash would (`immediate`: no checkpoint, clients cut off).
    pub fn crash(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]).context("stopping PostgreSQL")?;
        self.running.store(false, Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running.load(Ordering::SeqCst) {
            let _ = self.crash();
        }
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
