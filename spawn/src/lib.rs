//! Starting a job's first process: cheaply, in its own PID namespace, dying with the replica.
//!
//! A replica starts hundreds of short processes a second. The usual ways cost more than the job:
//! `fork` copies the page tables of the replica's large address space, and wrapping the command
//! in helper programs (one to set the parent-death signal, one to enter a new PID namespace)
//! adds two program loads per run. Here one `clone(2)` does it all: the child shares the
//! replica's memory until it execs (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does), is created
//! directly as the first process of a new PID namespace (`CLONE_NEWPID`, with `CLONE_NEWUSER`
//! where the replica has no privileges), sets its parent-death signal, and execs the command.
//! The kernel hands back a pidfd, so waiting needs no `SIGCHLD` bookkeeping and a pid is never
//! mistaken for a reused one.
//!
//! The parent-death signal follows the *thread* that created the child, so every child is
//! created by one dedicated thread that lives as long as the process: when the replica dies,
//! even by SIGKILL, each run's first process is killed, and with it (being the first process of
//! its namespace) everything the run started.
//!
//! Between `clone` and `exec` the child runs on borrowed memory while the replica's other threads
//! go on: it only makes system calls on data prepared beforehand (no allocation, no locks), the
//! same discipline `posix_spawn` follows.
//!
//! This is the only crate of the workspace that allows `unsafe`; every block says why it holds.

use std::ffi::CString;
use std::ffi::OsStr;
use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::sync::mpsc;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

mod sandbox;
pub use sandbox::Sandbox;

/// Which namespaces the child gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Namespaces {
    /// The replica's own: the child is an ordinary process (its own process group still).
    Shared,
    /// A new PID namespace (needs `CAP_SYS_ADMIN`).
    Pid,
    /// A new user namespace mapping the caller's uid and gid to root, and a PID namespace in it
    /// (for replicas without privileges, where the kernel allows user namespaces).
    UserAndPid,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct Command {
    /// The program; a bare name is looked up in the `PATH` of `env`.
    pub program: OsString,
    /// The arguments after the program name.
    pub args: Vec<OsString>,
    /// The whole environment (nothing is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// The working directory.
    pub cwd: PathBuf,
    pub namespaces: Namespaces,
    /// What the run may see and who it runs as ([`Sandbox`]); `None`: the caller's file system
    /// and user.
    pub sandbox: Option<Sandbox>,
}

/// A started process: its own process group, stdin from `/dev/null`, stdout and stderr piped.
#[derive(Debug)]
pub struct Spawned {
    pub child: Child,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// Where a step of the child failed, for the error message.
const STEPS: [&str; 10] = [
    "",
    "denying setgroups in the new user namespace",
    "writing the uid map",
    "writing the gid map",
    "making its own process group",
    "setting the parent-death signal",
    "redirecting stdin, stdout and stderr",
    "entering the working directory",
    "executing the program",
    "preparing the sandbox",
];
const SANDBOX_STEP: libc::c_int = 9;

/// `program`'s path: as given when it names a path, else the first executable file of that name
/// in `path` (a `PATH` value).
pub fn find_program(program: &OsStr, path: Option<&OsStr>) -> io::Result<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = path.unwrap_or_default();
    std::env::split_paths(path).map(|dir| dir.join(program)).find(|candidate| is_executable(candidate)).ok_or_else(
        || {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found in PATH {}", program.to_string_lossy(), path.to_string_lossy()),
            )
        },
    )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Start `command` (call from within a Tokio runtime).
pub fn spawn(command: &Command) -> io::Result<Spawned> {
    let program = find_program(&command.program, env_path(&command.env))?;
    let prepared = Prepared::new(&program, command)?;
    let started = spawner()?.start(prepared)?;
    // SAFETY: an OwnedFd is valid, stays open while owned, and always returns the same descriptor.
    let pidfd =
        unsafe { AsyncFd::register_with_interest(started.pidfd, Interest::READABLE) }.map_err(io::Error::from)?;
    Ok(Spawned {
        child: Child { pid: started.pid, pidfd: Some(pidfd) },
        stdout: pipe::Receiver::from_owned_fd(started.stdout)?,
        stderr: pipe::Receiver::from_owned_fd(started.stderr)?,
    })
}

/// A running (or exited, not yet reaped) child. Dropping it kills its process group and reaps
/// it in the background.
#[derive(Debug)]
pub struct Child {
    pid: i32,
    /// `None` once reaped.
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl Child {
    /// The process id, also its process group id.
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Wait until the child has exited, without reaping it: until it is reaped its pid, and so
    /// its process group id, cannot be reused, so [`Child::kill_group`] can still clean up safely.
    pub async fn exited(&self) -> io::Result<()> {
        let Some(pidfd) = &self.pidfd else { return Ok(()) };
        // A pidfd becomes readable once the process has exited, and stays so.
        pidfd.readable().await?.retain_ready();
        Ok(())
    }

    /// Wait for the child to exit and reap it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let Some(pidfd) = &self.pidfd else {
            return Err(io::Error::other("the child was already reaped"));
        };
        loop {
            let mut ready = pidfd.readable().await?;
            match reap(self.pid)? {
                Some(status) => {
                    self.pidfd = None;
                    return Ok(status);
                }
                None => ready.clear_ready(),
            }
        }
    }

    /// Send `signal` to the child's whole process group; nothing once the child is reaped (its
    /// group id may then belong to someone else).
    pub fn kill_group(&self, signal: i32) -> io::Result<()> {
        if self.pidfd.is_none() {
            return Ok(());
        }
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        if unsafe { libc::kill(-self.pid, signal) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.kill_group(libc::SIGKILL);
        let Some(pidfd) = self.pidfd.take() else { return };
        let pid = self.pid;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = pidfd.readable().await;
                    let _ = reap(pid);
                });
            }
            // No runtime left (the process is ending): nothing will wait for a zombie anyway.
            Err(_) => drop(pidfd),
        }
    }
}

/// Reap `pid` if it exited; `None` while it runs.
fn reap(pid: i32) -> io::Result<Option<ExitStatus>> {
    let mut status = 0;
    // SAFETY: waitpid(2) writes the status into a local integer.
    let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match reaped {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        _ => Ok(Some(ExitStatus::from_raw(status))),
    }
}

/// Everything the child needs, as C strings built before the clone.
struct Prepared {
    program: CString,
    /// Kept alive for the pointers in `argv`.
    _args: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    envp: Vec<*const libc::c_char>,
    cwd: CString,
    namespaces: Namespaces,
    uid_map: CString,
    gid_map: CString,
    sandbox: Option<sandbox::Plan>,
}

// SAFETY: the raw pointers point into the CStrings owned by the same value, which moves whole to
// the spawner thread; nothing else refers to them.
unsafe impl Send for Prepared {}

fn c_string(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} contains a NUL byte")))
}

impl Prepared {
    fn new(program: &Path, command: &Command) -> io::Result<Self> {
        let mut args = vec![c_string(command.program.as_bytes(), "the program name")?];
        for arg in &command.args {
            args.push(c_string(arg.as_bytes(), "an argument")?);
        }
        let mut env = Vec::with_capacity(command.env.len());
        for (key, value) in &command.env {
            let mut pair = key.as_bytes().to_vec();
            if pair.is_empty() || pair.contains(&b'=') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("environment variable name {:?} is empty or contains '='", key.to_string_lossy()),
                ));
            }
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            env.push(c_string(&pair, "an environment variable")?);
        }
        let argv = args.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        let envp = env.iter().map(|e| e.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(Self {
            program: c_string(program.as_os_str().as_bytes(), "the program path")?,
            _args: args,
            argv,
            _env: env,
            envp,
            cwd: c_string(command.cwd.as_os_str().as_bytes(), "the working directory")?,
            namespaces: command.namespaces,
            uid_map: c_string(format!("0 {uid} 1\n").as_bytes(), "the uid map")?,
            gid_map: c_string(format!("0 {gid} 1\n").as_bytes(), "the gid map")?,
            sandbox: command.sandbox.as_ref().map(sandbox::Plan::new).transpose()?,
        })
    }
}

/// What the spawner thread hands back.
struct Started {
    pid: i32,
    pidfd: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

type Request = (Prepared, mpsc::SyncSender<io::Result<Started>>);

/// The thread that creates every child (their parent-death signal is tied to it).
struct Spawner {
    requests: mpsc::Sender<Request>,
}

fn spawner() -> io::Result<&'static Spawner> {
    static SPAWNER: OnceLock<Result<Spawner, String>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("atoll-spawner".to_string())
            .spawn(move || serve(rx))
            .map(|_| Spawner { requests: tx })
            .map_err(|e| format!("starting the spawner thread: {e}"))
    });
    spawner.as_ref().map_err(|e| io::Error::other(e.clone()))
}

impl Spawner {
    fn start(&self, prepared: Prepared) -> io::Result<Started> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.requests.send((prepared, reply_tx)).map_err(|_| io::Error::other("the spawner thread is gone"))?;
        reply_rx.recv().map_err(|_| io::Error::other("the spawner thread is gone"))?
    }
}

/// The spawner thread: forever, as children die with it.
fn serve(requests: mpsc::Receiver<Request>) {
    // Every signal stays blocked on this thread, so a child never runs one of the replica's
    // handlers on the shared memory before it has reset them.
    // SAFETY: the set is a local, initialized by sigfillset before use.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
    // The stack the child runs on until it execs; reused, as one child runs on it at a time.
    let mut stack = vec![0u8; CHILD_STACK];
    while let Ok((prepared, reply)) = requests.recv() {
        let _ = reply.send(start(&prepared, &mut stack));
    }
    // Every sender is gone: the process is exiting. Children die with this thread; stay until
    // the process ends rather than kill them early.
    loop {
        std::thread::park();
    }
}

const CHILD_STACK: usize = 64 * 1024;

/// What the child reads, and writes back on failure. Lives on the spawner's stack during the
/// clone; the child shares that memory.
#[repr(C)]
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    user_namespace: bool,
    uid_map: *const libc::c_char,
    gid_map: *const libc::c_char,
    stdin: libc::c_int,
    stdout: libc::c_int,
    stderr: libc::c_int,
    /// The sandbox to build, or null.
    sandbox: *const sandbox::Plan,
    /// Set by the child when a step fails: which (index into `STEPS`) and the errno.
    failed_step: libc::c_int,
    /// Which step of the sandbox failed (see [`sandbox::apply`]).
    failed_sandbox_step: usize,
    errno: libc::c_int,
}

fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) writes two descriptors into the local array; they are owned right after.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and belong to nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn open_dev_null() -> io::Result<OwnedFd> {
    // SAFETY: open(2) with a static NUL-terminated path; the descriptor is owned right after.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn start(prepared: &Prepared, stack: &mut [u8]) -> io::Result<Started> {
    let (stdout_r, stdout_w) = pipe_pair()?;
    let (stderr_r, stderr_w) = pipe_pair()?;
    let null = open_dev_null()?;
    let mut args = ChildArgs {
        program: prepared.program.as_ptr(),
        argv: prepared.argv.as_ptr(),
        envp: prepared.envp.as_ptr(),
        cwd: prepared.cwd.as_ptr(),
        user_namespace: prepared.namespaces == Namespaces::UserAndPid,
        uid_map: prepared.uid_map.as_ptr(),
        gid_map: prepared.gid_map.as_ptr(),
        stdin: null.as_raw_fd(),
        stdout: stdout_w.as_raw_fd(),
        stderr: stderr_w.as_raw_fd(),
        sandbox: prepared.sandbox.as_ref().map_or(std::ptr::null(), |plan| plan as *const sandbox::Plan),
        failed_step: 0,
        failed_sandbox_step: 0,
        errno: 0,
    };
    let namespaces = match prepared.namespaces {
        Namespaces::Shared => 0,
        Namespaces::Pid => libc::CLONE_NEWPID,
        Namespaces::UserAndPid => libc::CLONE_NEWUSER | libc::CLONE_NEWPID,
    } | if prepared.sandbox.is_some() { libc::CLONE_NEWNS } else { 0 };
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | namespaces | libc::SIGCHLD;
    let mut pidfd: libc::c_int = -1;
    // The stack grows down: hand over its 16-byte aligned top.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: `child_main` only reads `args` (alive on this frame, which is suspended until the
    // child execs or exits, CLONE_VFORK) and makes async-signal-safe system calls; it runs on
    // `stack`, which nothing else uses meanwhile. CLONE_PIDFD stores the pidfd in `pidfd`.
    let pid = unsafe {
        libc::clone(child_main, top as *mut libc::c_void, flags, (&raw mut args).cast::<libc::c_void>(), &raw mut pidfd)
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CLONE_PIDFD returned a new descriptor for the child; it is owned from here on.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((stdout_w, stderr_w, null));
    // SAFETY: the child has exec'd or exited (CLONE_VFORK); its writes to `args` are complete.
    let (failed_step, failed_sandbox_step, errno) = unsafe {
        (
            std::ptr::read_volatile(&raw const args.failed_step),
            std::ptr::read_volatile(&raw const args.failed_sandbox_step),
            std::ptr::read_volatile(&raw const args.errno),
        )
    };
    if failed_step != 0 {
        let mut status = 0;
        // SAFETY: reaping our own child, which has exited; the status goes to a local.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let step = match (&prepared.sandbox, failed_step) {
            (Some(plan), SANDBOX_STEP) => plan.describe(failed_sandbox_step),
            _ => STEPS.get(failed_step as usize).copied().unwrap_or("starting").to_string(),
        };
        let cause = io::Error::from_raw_os_error(errno);
        return Err(io::Error::new(cause.kind(), format!("{step} failed: {cause}")));
    }
    Ok(Started { pid, pidfd, stdout: stdout_r, stderr: stderr_r })
}

/// The child, from clone to exec. Only system calls on prepared data: no allocation, no locks,
/// no panics (the replica's other threads may hold any lock).
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` of `start`, alive while the parent is suspended.
    let args = unsafe { &mut *arg.cast::<ChildArgs>() };
    let fail = |args: &mut ChildArgs, step: libc::c_int| -> ! {
        args.errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        args.failed_step = step;
        // SAFETY: _exit(2) ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: system calls on the prepared NUL-terminated strings and descriptors; the signal
    // structures are locals.
    unsafe {
        // Directories the sandbox makes get exactly their modes (the replica may keep a strict
        // mask for its own files); the command gets the usual mask before it execs.
        libc::umask(0);
        if args.user_namespace {
            if !write_proc(c"/proc/self/setgroups", c"deny") {
                fail(args, 1);
            }
            if !write_proc(c"/proc/self/uid_map", std::ffi::CStr::from_ptr(args.uid_map)) {
                fail(args, 2);
            }
            if !write_proc(c"/proc/self/gid_map", std::ffi::CStr::from_ptr(args.gid_map)) {
                fail(args, 3);
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail(args, 4);
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            fail(args, 5);
        }
        if libc::dup2(args.stdin, 0) < 0 || libc::dup2(args.stdout, 1) < 0 || libc::dup2(args.stderr, 2) < 0 {
            fail(args, 6);
        }
        if !args.sandbox.is_null() {
            if let Err(step) = sandbox::apply(&*args.sandbox) {
                args.failed_sandbox_step = step;
                fail(args, SANDBOX_STEP);
            }
            // A change of user clears the parent-death signal: set it again.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                fail(args, 5);
            }
        }
        if libc::chdir(args.cwd) != 0 {
            fail(args, 7);
        }
        // The usual mask for the command, whatever the replica keeps for its own files.
        libc::umask(0o022);
        // Default dispositions (the replica ignores SIGPIPE and handles others), then unblock.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..libc::SIGRTMAX() {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(args.program, args.argv, args.envp);
        fail(args, 8)
    }
}

/// Write `text` to a file of `/proc/self`; true when all of it was written.
///
/// # Safety
/// Async-signal-safe: open, write and close on the given strings only.
unsafe fn write_proc(path: &std::ffi::CStr, text: &std::ffi::CStr) -> bool {
    // SAFETY: the caller passes NUL-terminated strings; the descriptor is closed before return.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let bytes = text.to_bytes();
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        written == bytes.len() as isize
    }
}

/// The last `PATH` of an environment.
fn env_path(env: &[(OsString, OsString)]) -> Option<&OsStr> {
    env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_os_str())
}

#[cfg(test)]
mod tests;
