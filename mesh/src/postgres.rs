//! A PostgreSQL server a mesh runs itself: `atoll dev --gateways N` keeps its gateway
//! replicas' database in it, the chaos suite crashes and restarts one under a gateway.
//!
//! ```text
//! DIR/data/        the database cluster (initdb'd once; an existing one is reused)
//! DIR/server.log   the server's log
//! DIR/password     the `atoll` role's password (mode 0600), written last by the
//!                  initialisation: a data directory without it never finished initdb
//! DIR/url          postgres://atoll:PASSWORD@IP:PORT/postgres (mode 0600), written at every start
//! ```
//!
//! The server binaries are the newest `/usr/lib/postgresql/*/bin` (Debian's layout); when there
//! are none and this process runs as root, the `postgresql` package is installed with apt-get,
//! as `scripts/lib/postgres.sh` does for the tests. The server listens on `IP:PORT` only (no
//! Unix socket) and takes password logins only: its one role, `atoll`, is a superuser, and any
//! local user could otherwise log in as it.
//!
//! PostgreSQL refuses to run as root, so as root every server command runs as the `postgres`
//! user (`runuser`), which owns `DIR`. That user often cannot reach `DIR` by its path: the
//! daemons create their directories with mode 0700, and a home directory may be one. Then the
//! server runs in a mount namespace of its own where `DIR` is bound at [`MOUNT_POINT`], the
//! way a job's sandbox sees its work directory; no directory's mode changes.
//!
//! `pg_ctl` starts the server as a daemon, not as a child: it outlives a process that is
//! SIGKILLed. [`Postgres::start`] therefore takes over a server an earlier run left running, it
//! is stopped by signal to the pid in `postmaster.pid` (readable here in either case), and
//! dropping a [`Postgres`] stops the server it runs.

use std::fs;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rand::Rng;
use rand::distr::Alphanumeric;

/// The one role; a superuser (the gateway creates its tables).
const ROLE: &str = "atoll";
/// The database the gateways use (always present).
const DATABASE: &str = "postgres";
/// How long a start or a stop may take.
const WAIT: Duration = Duration::from_secs(60);
/// Where the server sees `DIR` when the `postgres` user cannot reach it by its path: an empty
/// directory only root writes, bound over in the server's own mount namespace (so any number of
/// servers share it).
pub const MOUNT_POINT: &str = "/run/atoll-postgres";

/// How to run a server.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// Holds `data/`, `server.log`, `password` and `url`; created when absent.
    pub dir: PathBuf,
    /// The address it listens on (and the URL names).
    pub ip: String,
    pub port: u16,
    /// `fsync` (and a synced initdb): on where the data must survive a crash of the machine.
    pub fsync: bool,
    pub max_connections: u32,
    /// Network namespace the server runs in (`ip netns exec`); the caller's when absent.
    pub netns: Option<String>,
    /// Networks (`198.18.0.0/15`) whose hosts may log in (with the password) besides this
    /// host's loopback: a server on an address other processes reach it at.
    pub allow_from: Vec<String>,
    /// Directory of `initdb`, `pg_ctl` and `postgres`; found (or installed) when absent.
    pub bin: Option<PathBuf>,
}

/// How server commands reach `DIR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// As this process's user, by its path.
    Own,
    /// As the `postgres` user (this process is root), by its path.
    AsPostgres,
    /// As the `postgres` user, in a mount namespace with `DIR` bound at [`MOUNT_POINT`].
    AsPostgresBound,
}

/// A server, started. Dropping it stops the server when it runs (`fast`: clients cut off, a
/// checkpoint, then exit).
#[derive(Debug)]
pub struct Postgres {
    settings: PostgresSettings,
    bin: PathBuf,
    access: Access,
    url: String,
    running: AtomicBool,
}

impl Postgres {
    /// Initialise the database cluster in `settings.dir` unless it holds one, and start the
    /// server (or take over the one an earlier run left running there).
    pub fn start(settings: PostgresSettings) -> anyhow::Result<Self> {
        let bin = match &settings.bin {
            Some(bin) => bin.clone(),
            None => bin_dir()?,
        };
        let dir = &settings.dir;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let access = access(dir)?;
        let mut postgres = Self { settings, bin, access, url: String::new(), running: AtomicBool::new(false) };
        let password_file = postgres.settings.dir.join("password");
        let password = match fs::read_to_string(&password_file) {
            Ok(password) => password.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => postgres.initialise()?,
            Err(e) => return Err(e).with_context(|| format!("reading {}", password_file.display())),
        };
        postgres.url =
            format!("postgres://{ROLE}:{password}@{}:{}/{DATABASE}", postgres.settings.ip, postgres.settings.port);
        write_private(&postgres.url_file(), &format!("{}\n", postgres.url))?;
        if let Some(pid) = postgres.pid() {
            let dir = postgres.settings.dir.display();
            tracing::info!(pid, dir = %dir, "PostgreSQL of an earlier run still runs; using it");
            postgres.running.store(true, Ordering::SeqCst);
        } else {
            postgres.up()?;
        }
        Ok(postgres)
    }

    /// `postgres://atoll:PASSWORD@IP:PORT/postgres`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The file holding [`Postgres::url`] (mode 0600): what a gateway's
    /// `database.postgres.url_file` names.
    pub fn url_file(&self) -> PathBuf {
        self.settings.dir.join("url")
    }

    pub fn log_file(&self) -> PathBuf {
        self.settings.dir.join("server.log")
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        server_pid(&self.settings.dir)
    }

    /// `DIR` as the server's commands see it.
    fn server_dir(&self) -> PathBuf {
        match self.access {
            Access::AsPostgresBound => PathBuf::from(MOUNT_POINT),
            Access::Own | Access::AsPostgres => self.settings.dir.clone(),
        }
    }

    /// `program` of the server's binaries, in the namespace, as the server's user, seeing `DIR`
    /// at [`Postgres::server_dir`].
    fn command(&self, program: &str) -> Command {
        let mut words: Vec<std::ffi::OsString> = Vec::new();
        if let Some(netns) = &self.settings.netns {
            words.extend(["ip", "netns", "exec", netns.as_str()].map(Into::into));
        }
        if self.access == Access::AsPostgresBound {
            words.extend(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "sh",
                    "-c",
                    r#"mount --bind -- "$1" "$2" && shift 2 && exec "$@""#,
                    "sh",
                ]
                .map(Into::into),
            );
            words.push(self.settings.dir.clone().into());
            words.push(MOUNT_POINT.into());
        }
        if self.access != Access::Own {
            words.extend(["runuser", "-u", "postgres", "--"].map(Into::into));
        }
        words.push(self.bin.join(program).into());
        let mut command = Command::new(&words[0]);
        command.args(&words[1..]);
        command
    }

    /// Create `DIR/data` with the `atoll` role and a fresh password, then write `DIR/password`;
    /// returns the password. A `data` directory left by an initialisation that never finished
    /// (no `password`) held no data and is removed first.
    fn initialise(&self) -> anyhow::Result<String> {
        let dir = &self.settings.dir;
        let data = dir.join("data");
        if data.exists() {
            tracing::warn!(dir = %data.display(), "removing an unfinished PostgreSQL initialisation");
            fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
        }
        let password: String = rand::rng().sample_iter(Alphanumeric).take(32).map(char::from).collect();
        let password_file = dir.join("initdb.password");
        write_private(&password_file, &password)?;
        if self.access != Access::Own {
            chown_to_postgres(&password_file)?;
        }
        let server_dir = self.server_dir();
        let mut command = self.command("initdb");
        command
            .arg("-D")
            .arg(server_dir.join("data"))
            .args(["-U", ROLE, "-A", "scram-sha-256", "--pwfile"])
            .arg(server_dir.join("initdb.password"));
        if !self.settings.fsync {
            command.arg("--no-sync");
        }
        tracing::info!(dir = %data.display(), "creating a PostgreSQL database cluster");
        let done = run(command).context("initdb");
        let _ = fs::remove_file(&password_file);
        done?;
        write_private(&dir.join("password"), &format!("{password}\n"))?;
        Ok(password)
    }

    /// Let the hosts of `allow_from` log in: a line each in `pg_hba.conf`, once.
    fn allow_hosts(&self) -> anyhow::Result<()> {
        if self.settings.allow_from.is_empty() {
            return Ok(());
        }
        let hba = self.settings.dir.join("data").join("pg_hba.conf");
        let text = fs::read_to_string(&hba).with_context(|| format!("reading {}", hba.display()))?;
        let missing: Vec<String> = self
            .settings
            .allow_from
            .iter()
            .map(|network| format!("host all {ROLE} {network} scram-sha-256"))
            .filter(|line| !text.lines().any(|l| l.trim() == line))
            .collect();
        if !missing.is_empty() {
            use std::io::Write;
            let mut file =
                fs::OpenOptions::new().append(true).open(&hba).with_context(|| format!("opening {}", hba.display()))?;
            writeln!(file, "{}", missing.join("\n")).with_context(|| format!("writing {}", hba.display()))?;
        }
        Ok(())
    }

    /// Start the server (again) and wait until it takes connections.
    pub fn up(&self) -> anyhow::Result<()> {
        self.allow_hosts()?;
        let s = &self.settings;
        let options = format!(
            "-p {} -c listen_addresses={} -c unix_socket_directories='' -c fsync={} -c max_connections={}",
            s.port,
            s.ip,
            if s.fsync { "on" } else { "off" },
            s.max_connections
        );
        let server_dir = self.server_dir();
        let mut command = self.command("pg_ctl");
        command.arg("-D").arg(server_dir.join("data")).arg("-l").arg(server_dir.join("server.log")).args([
            "-w",
            "-t",
            &WAIT.as_secs().to_string(),
            "-o",
            &options,
            "start",
        ]);
        run(command).with_context(|| format!("starting PostgreSQL; see {}", self.log_file().display()))?;
        self.running.store(true, Ordering::SeqCst);
        tracing::info!(addr = %format!("{}:{}", s.ip, s.port), dir = %s.dir.display(), "PostgreSQL started");
        Ok(())
    }

    /// Stop the server in order (SIGINT, PostgreSQL's fast shutdown: clients cut off, a
    /// checkpoint, then exit) and wait until it has. A server already stopped (a terminal's
    /// Ctrl-C reaches it too) is fine.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.stop_with(Signal::SIGINT)
    }

    /// Stop the server as a crash would (SIGQUIT, the immediate shutdown: no checkpoint,
    /// clients cut off).
    pub fn crash(&self) -> anyhow::Result<()> {
        self.stop_with(Signal::SIGQUIT)
    }

    fn stop_with(&self, signal: Signal) -> anyhow::Result<()> {
        self.running.store(false, Ordering::SeqCst);
        stop_server(&self.settings.dir, signal)
    }
}

/// Stop the server a run left running in `dir` (`Postgres::stop`'s way), if any: before the
/// directory is removed, which would leave it running on deleted files and holding its port.
pub fn stop_left_running(dir: &Path) -> anyhow::Result<()> {
    stop_server(dir, Signal::SIGINT)
}

/// The pid of the server running in `dir`: the first line of `postmaster.pid`, a live
/// `postgres`.
fn server_pid(dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(dir.join("data").join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "postgres" && !exited(pid)).then_some(pid)
}

/// Send `signal` to the server running in `dir`, if any, and wait until it has exited.
// Blocking, like the pg_ctl runs beside it: callers are Drop, spawn_blocking, `atoll dev
// --fresh` before anything runs, and the chaos suite's nemesis, which waits for the database to
// be down before it goes on.
#[allow(clippy::disallowed_methods)]
fn stop_server(dir: &Path, signal: Signal) -> anyhow::Result<()> {
    let Some(pid) = server_pid(dir) else { return Ok(()) };
    match nix::sys::signal::kill(Pid::from_raw(pid as i32), signal) {
        Ok(()) => {}
        Err(nix::errno::Errno::ESRCH) => return Ok(()),
        Err(e) => return Err(e).context("signalling PostgreSQL"),
    }
    let deadline = std::time::Instant::now() + WAIT;
    while !exited(pid) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "PostgreSQL (pid {pid}) did not stop within {WAIT:?}; see {}",
            dir.join("server.log").display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running.load(Ordering::SeqCst)
            && let Err(e) = self.stop()
        {
            tracing::warn!(error = %format!("{e:#}"), "stopping PostgreSQL");
        }
    }
}

/// Whether process `pid` is gone or a zombie (the server is not this process's child: whoever
/// reaps it may take a while).
fn exited(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) state ...`; comm may hold spaces and parentheses, state follows the last.
        Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn postgres_user() -> anyhow::Result<nix::unistd::User> {
    nix::unistd::User::from_name("postgres")?
        .context("no postgres user: install the postgresql package (apt-get install -y postgresql)")
}

fn chown_to_postgres(path: &Path) -> anyhow::Result<()> {
    let user = postgres_user()?;
    std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .with_context(|| format!("handing {} to the postgres user", path.display()))
}

/// How server commands reach `dir` (which exists): as root, `dir` is handed to the `postgres`
/// user, which reaches it by its path when every directory above lets it, else through a mount
/// namespace.
fn access(dir: &Path) -> anyhow::Result<Access> {
    if !is_root() {
        return Ok(Access::Own);
    }
    chown_to_postgres(dir)?;
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let reachable = Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-w"])
        .arg(dir)
        .stdin(Stdio::null())
        .status()
        .context("running runuser (util-linux)")?
        .success();
    if reachable {
        return Ok(Access::AsPostgres);
    }
    fs::create_dir_all(MOUNT_POINT).with_context(|| format!("creating {MOUNT_POINT}"))?;
    fs::set_permissions(MOUNT_POINT, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(Access::AsPostgresBound)
}

/// Run to completion; fail with its error output.
fn run(mut command: Command) -> anyhow::Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out =
        command.stdin(Stdio::null()).output().with_context(|| format!("starting {program} (is it installed?)"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Write a secret readable only by its owner.
pub(crate) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// The server binaries: the newest `/usr/lib/postgresql/*/bin`, installed first when there is
/// none and this process is root.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(bin) = newest_bin() {
        return Ok(bin);
    }
    anyhow::ensure!(
        is_root(),
        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): install the postgresql package, \
         or run as root to have it installed"
    );
    tracing::info!("PostgreSQL is not installed; installing it (apt-get install -y postgresql)");
    let apt_get = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::io::stderr()))
            .status()
            .map(|s| s.success())
            .context("running apt-get (is this Debian or Ubuntu?)")
    };
    let installed = apt_get(&["install", "-y", "postgresql"])?
        || (apt_get(&["update"])? && apt_get(&["install", "-y", "postgresql"])?);
    anyhow::ensure!(installed, "apt-get install -y postgresql failed");
    newest_bin().context("apt-get installed postgresql, but no /usr/lib/postgresql/*/bin/initdb appeared")
}

fn newest_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn settings(dir: &Path) -> PostgresSettings {
        PostgresSettings {
            dir: dir.to_path_buf(),
            ip: "127.0.0.1".to_string(),
            port: crate::ports::reserve_free_ports(1).unwrap()[0],
            fsync: false,
            max_connections: 20,
            netns: None,
            allow_from: Vec::new(),
            bin: None,
        }
    }

    fn listening(port: u16) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }

    /// Needs PostgreSQL installed, or root to install it; fails otherwise. As root, the temp
    /// directory (mode 0700) keeps the postgres user out, so the server runs with it bound.
    #[test]
    fn a_server_is_initialised_once_taken_over_while_it_runs_reused_and_stopped() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("postgres");
        let settings = settings(&dir);
        let port = settings.port;

        let first = Postgres::start(settings.clone()).expect("start PostgreSQL");
        let pid = first.pid().expect("a running server");
        assert!(listening(port));
        let url = fs::read_to_string(first.url_file()).unwrap();
        assert_eq!(url.trim(), first.url());
        assert!(
            first.url().starts_with("postgres://atoll:")
                && first.url().ends_with(&format!("@127.0.0.1:{port}/postgres"))
        );
        for secret in [first.url_file(), dir.join("password")] {
            assert_eq!(fs::metadata(&secret).unwrap().mode() & 0o077, 0, "{} is readable by others", secret.display());
        }
        assert!(!dir.join("initdb.password").exists());
        let cluster = fs::metadata(dir.join("data").join("PG_VERSION")).unwrap().ino();

        // A second start while it runs (an earlier run SIGKILLed) takes the server over.
        let second = Postgres::start(settings.clone()).expect("take over");
        assert_eq!(second.pid(), Some(pid));
        assert_eq!(second.url(), first.url());
        drop(second);
        assert!(first.pid().is_none(), "dropping a server stops it");
        assert!(!listening(port));
        drop(first);

        // A server left running (as by a SIGKILLed run) is stopped before its directory goes.
        let left = Postgres::start(settings.clone()).expect("start again");
        let left_pid = left.pid().expect("a running server");
        std::mem::forget(left);
        stop_left_running(&dir).unwrap();
        assert!(exited(left_pid) && !listening(port));

        // Started again on the same directory: the same cluster and password, no new initdb.
        let again = Postgres::start(settings).expect("start again");
        assert!(listening(port));
        assert_eq!(fs::metadata(dir.join("data").join("PG_VERSION")).unwrap().ino(), cluster);
        assert_eq!(fs::read_to_string(again.url_file()).unwrap(), url);
        again.crash().unwrap();
        assert!(again.pid().is_none() && !listening(port));
        again.up().unwrap();
        assert!(listening(port));
        again.stop().unwrap();
        assert!(again.pid().is_none());
    }
}
