//! The file system, user and limits a sandboxed run sees, prepared before the clone.
//!
//! A run with a [`Sandbox`] gets its own mount namespace in which a new root is built on an
//! empty tmpfs: the system's paths bound read-only (set-id bits and devices off), a few device
//! nodes, its own `/proc` (of its PID namespace), `/tmp` bound from its work directory, the
//! paths it may write bound read-write, and paths it must never see covered. Then the root is
//! switched (`pivot_root`), the old one detached, and nothing of the replica's file system is
//! reachable but what was bound. The run then joins its cgroups, lowers its CPU and IO priority,
//! drops to the sandbox's user and sets `no_new_privs`, so no set-id program gives anything back.
//!
//! Every step is a plain system call on strings prepared here, in [`Plan`]: the child between
//! `clone` and `exec` may not allocate.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::path::PathBuf;

/// What a sandboxed run may see and who it runs as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// An empty directory on the host where the new root is mounted (a mount point only inside
    /// each run's own mount namespace, so every run may share it).
    pub root: PathBuf,
    /// Bound read-only at the same path inside (system paths); a symbolic link is made again as
    /// the same link; a path that does not exist is left out.
    pub read_only: Vec<PathBuf>,
    /// Covered inside (an empty read-only directory over a directory, `/dev/null` over a file),
    /// should a read-only path hold them (the replica's data directory, keys, tokens, config).
    pub hidden: Vec<PathBuf>,
    /// Bound read-write at the same path inside (the run's work directory).
    pub read_write: Vec<PathBuf>,
    /// Bound read-write at `/tmp` inside.
    pub tmp: Option<PathBuf>,
    /// `(uid, gid)` the run drops to; `None`: it keeps the caller's.
    pub user: Option<(u32, u32)>,
    /// `cgroup.procs` files the run joins before it starts (its limits).
    pub cgroups: Vec<PathBuf>,
    /// Niceness added to the run (0 to 19: lower CPU priority than the replica).
    pub nice: i32,
    /// Whether the run's IO gets the lowest best-effort priority.
    pub low_io_priority: bool,
}

/// The device nodes bound into the sandbox's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// One step of building the sandbox, carried out by the child in order.
pub(crate) enum Step {
    /// `mkdir(path, mode)`; an existing directory is fine.
    Mkdir(CString, libc::mode_t),
    /// Create an empty file to bind a device onto.
    Touch(CString),
    /// `symlink(target, path)`.
    Symlink(CString, CString),
    /// `mount(source, target, fstype, flags, data)`; `None` is a null pointer.
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// `pivot_root(new_root, put_old)`, then `chdir("/")`.
    PivotRoot(CString, CString),
    /// `umount2(target, MNT_DETACH)`, then `rmdir(target)`.
    Detach(CString),
}

/// Everything the child does for the sandbox, prepared.
pub(crate) struct Plan {
    pub(crate) steps: Vec<Step>,
    pub(crate) cgroups: Vec<CString>,
    pub(crate) user: Option<(libc::uid_t, libc::gid_t)>,
    pub(crate) nice: libc::c_int,
    pub(crate) low_io_priority: bool,
}

fn c(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("sandbox path {} contains a NUL byte", path.display()))
    })
}

fn cs(text: &str) -> CString {
    CString::new(text).expect("a constant without NUL")
}

/// `path` (absolute) placed under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

const BIND: libc::c_ulong = libc::MS_BIND | libc::MS_REC;
const READ_ONLY: libc::c_ulong = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
const READ_WRITE: libc::c_ulong = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;

impl Plan {
    pub(crate) fn new(sandbox: &Sandbox) -> io::Result<Self> {
        let root = &sandbox.root;
        if !root.is_absolute() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the sandbox root {} is not an absolute path", root.display()),
            ));
        }
        let mut plan = PlanBuilder { steps: Vec::new(), made: std::collections::BTreeSet::new(), root: root.clone() };
        // Nothing done in this namespace reaches the host's.
        plan.steps.push(Step::Mount {
            source: None,
            target: cs("/"),
            fstype: None,
            flags: libc::MS_REC | libc::MS_PRIVATE,
            data: None,
        });
        plan.steps.push(Step::Mount {
            source: Some(cs("tmpfs")),
            target: c(root)?,
            fstype: Some(cs("tmpfs")),
            flags: libc::MS_NOSUID | libc::MS_NODEV,
            data: Some(cs("mode=0755,size=1m")),
        });
        plan.made.insert(root.clone());
        for path in &sandbox.read_only {
            let Ok(meta) = std::fs::symlink_metadata(path) else { continue };
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(path)?;
                plan.parents(path)?;
                plan.steps.push(Step::Symlink(c(&target)?, c(&under(root, path))?));
            } else if meta.is_dir() {
                plan.bind(path, READ_ONLY)?;
            } else {
                plan.bind_file(path, path, READ_ONLY)?;
            }
        }
        for path in &sandbox.hidden {
            // Only what a read-only bind made visible needs covering.
            if !sandbox.read_only.iter().any(|shown| path.starts_with(shown)) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(path) else { continue };
            if meta.is_dir() {
                plan.steps.push(Step::Mount {
                    source: Some(cs("tmpfs")),
                    target: c(&under(root, path))?,
                    fstype: Some(cs("tmpfs")),
                    // Writable only to make the mount points of binds under it (the work
                    // directory is inside the data directory); nobody but root may write to it.
                    flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    data: Some(cs("mode=0555,size=4k")),
                });
            } else if meta.is_file() {
                plan.steps.push(Step::Mount {
                    source: Some(cs("/dev/null")),
                    target: c(&under(root, path))?,
                    fstype: None,
                    flags: libc::MS_BIND,
                    data: None,
                });
            }
        }
        // /dev: a few device nodes of the host, and links into /proc.
        let dev = Path::new("/dev");
        plan.mkdirs(dev, 0o755)?;
        plan.steps.push(Step::Mount {
            source: Some(cs("tmpfs")),
            target: c(&under(root, dev))?,
            fstype: Some(cs("tmpfs")),
            flags: libc::MS_NOSUID | libc::MS_NOEXEC,
            data: Some(cs("mode=0755,size=64k")),
        });
        for device in DEVICES {
            let host = dev.join(device);
            if host.exists() {
                plan.bind_file(&host, &host, libc::MS_BIND)?;
            }
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            plan.steps.push(Step::Symlink(cs(target), c(&under(root, &dev.join(link)))?));
        }
        let shm = dev.join("shm");
        plan.mkdirs(&shm, 0o1777)?;
        plan.steps.push(Step::Mount {
            source: Some(cs("tmpfs")),
            target: c(&under(root, &shm))?,
            fstype: Some(cs("tmpfs")),
            flags: libc::MS_NOSUID | libc::MS_NODEV,
            data: Some(cs("mode=1777,size=64m")),
        });
        // Its own /proc: the processes of its PID namespace only.
        let proc = Path::new("/proc");
        plan.mkdirs(proc, 0o555)?;
        plan.steps.push(Step::Mount {
            source: Some(cs("proc")),
            target: c(&under(root, proc))?,
            fstype: Some(cs("proc")),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data: None,
        });
        if let Some(tmp) = &sandbox.tmp {
            plan.bind_as(tmp, Path::new("/tmp"), READ_WRITE)?;
        }
        for path in &sandbox.read_write {
            plan.bind(path, READ_WRITE)?;
        }
        // Switch roots and let go of the old one.
        let old = root.join(".old-root");
        plan.steps.push(Step::Mkdir(c(&old)?, 0o700));
        plan.steps.push(Step::PivotRoot(c(root)?, c(&old)?));
        plan.steps.push(Step::Detach(cs("/.old-root")));
        // The root itself read-only: only the read-write binds and /tmp take writes.
        plan.steps.push(Step::Mount {
            source: None,
            target: cs("/"),
            fstype: None,
            flags: libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            data: None,
        });
        let cgroups = sandbox.cgroups.iter().map(|p| c(p)).collect::<io::Result<Vec<_>>>()?;
        Ok(Plan {
            steps: plan.steps,
            cgroups,
            user: sandbox.user,
            nice: sandbox.nice.clamp(0, 19),
            low_io_priority: sandbox.low_io_priority,
        })
    }
}

struct PlanBuilder {
    steps: Vec<Step>,
    /// Directories under the root already made (or mounted).
    made: std::collections::BTreeSet<PathBuf>,
    root: PathBuf,
}

impl PlanBuilder {
    /// Make `path` (absolute, inside) and every missing parent, in the new root.
    fn mkdirs(&mut self, path: &Path, mode: libc::mode_t) -> io::Result<()> {
        let mut at = PathBuf::from("/");
        for part in path.components().skip(1) {
            at.push(part);
            let inside = under(&self.root, &at);
            if self.made.insert(inside.clone()) {
                let mode = if at == path { mode } else { 0o755 };
                self.steps.push(Step::Mkdir(c(&inside)?, mode));
            }
        }
        Ok(())
    }

    fn parents(&mut self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(parent) if parent != Path::new("/") => self.mkdirs(parent, 0o755),
            _ => Ok(()),
        }
    }

    fn bind(&mut self, path: &Path, remount: libc::c_ulong) -> io::Result<()> {
        self.bind_as(path, path, remount)
    }

    /// Bind the host directory `host` at `inside`, then remount it with `remount`'s flags.
    fn bind_as(&mut self, host: &Path, inside: &Path, remount: libc::c_ulong) -> io::Result<()> {
        self.mkdirs(inside, 0o755)?;
        let target = c(&under(&self.root, inside))?;
        self.steps.push(Step::Mount {
            source: Some(c(host)?),
            target: target.clone(),
            fstype: None,
            flags: BIND,
            data: None,
        });
        self.steps.push(Step::Mount { source: None, target, fstype: None, flags: remount, data: None });
        Ok(())
    }

    /// Bind the host file `host` at `inside` (an empty file made for it).
    fn bind_file(&mut self, host: &Path, inside: &Path, remount: libc::c_ulong) -> io::Result<()> {
        self.parents(inside)?;
        let target = c(&under(&self.root, inside))?;
        self.steps.push(Step::Touch(target.clone()));
        self.steps.push(Step::Mount {
            source: Some(c(host)?),
            target: target.clone(),
            fstype: None,
            flags: libc::MS_BIND,
            data: None,
        });
        if remount != libc::MS_BIND {
            self.steps.push(Step::Mount { source: None, target, fstype: None, flags: remount, data: None });
        }
        Ok(())
    }
}

/// Carry out `plan` in the child. On failure: the index of the failed step (1-based: the cgroups,
/// the file system steps, then priorities, user and `no_new_privs`), with errno left set.
///
/// # Safety
/// Called only in the child between clone and exec: system calls on the prepared strings, no
/// allocation.
pub(crate) unsafe fn apply(plan: &Plan) -> Result<(), usize> {
    // SAFETY: every pointer is from a CString of `plan`, alive while the parent waits.
    unsafe {
        let mut index = 0;
        // The cgroups first: their files are gone once the root is switched.
        for procs in &plan.cgroups {
            index += 1;
            if !super::write_proc(procs, c"0") {
                return Err(index);
            }
        }
        for step in &plan.steps {
            index += 1;
            let ok = match step {
                Step::Mkdir(path, mode) => {
                    libc::mkdir(path.as_ptr(), *mode) == 0 || *libc::__errno_location() == libc::EEXIST
                }
                Step::Touch(path) => {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC, 0o644);
                    fd >= 0 && libc::close(fd) == 0
                }
                Step::Symlink(target, path) => libc::symlink(target.as_ptr(), path.as_ptr()) == 0,
                Step::Mount { source, target, fstype, flags, data } => {
                    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
                    libc::mount(ptr(source), target.as_ptr(), ptr(fstype), *flags, ptr(data).cast()) == 0
                }
                Step::PivotRoot(new_root, put_old) => {
                    libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) == 0
                        && libc::chdir(c"/".as_ptr()) == 0
                }
                Step::Detach(path) => {
                    libc::umount2(path.as_ptr(), libc::MNT_DETACH) == 0 && libc::rmdir(path.as_ptr()) == 0
                }
            };
            if !ok {
                return Err(index);
            }
        }
        // Mounts done (they need the caller's privileges); now the priorities and the user.
        index += 1;
        if plan.nice > 0 && libc::setpriority(libc::PRIO_PROCESS, 0, plan.nice) != 0 {
            return Err(index);
        }
        index += 1;
        if plan.low_io_priority {
            // ioprio_set(IOPRIO_WHO_PROCESS, self, best-effort class, lowest level 7).
            const IOPRIO_CLASS_BE: libc::c_long = 2;
            const IOPRIO_WHO_PROCESS: libc::c_long = 1;
            let priority = (IOPRIO_CLASS_BE << 13) | 7;
            if libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0 as libc::c_long, priority) != 0 {
                return Err(index);
            }
        }
        index += 1;
        if let Some((uid, gid)) = plan.user
            && (libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0)
        {
            return Err(index);
        }
        index += 1;
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(index);
        }
        Ok(())
    }
}

impl Plan {
    /// What step `index` (as [`apply`] numbers them) was, for the error message.
    pub(crate) fn describe(&self, index: usize) -> String {
        let files = self.steps.len();
        let describe_step = |step: &Step| match step {
            Step::Mkdir(path, _) => format!("making the directory {}", path.to_string_lossy()),
            Step::Touch(path) => format!("making the file {}", path.to_string_lossy()),
            Step::Symlink(_, path) => format!("making the link {}", path.to_string_lossy()),
            Step::Mount { source, target, .. } => format!(
                "mounting {} on {}",
                source.as_ref().map_or("(remount)".into(), |s| s.to_string_lossy()),
                target.to_string_lossy()
            ),
            Step::PivotRoot(root, _) => format!("switching the root to {}", root.to_string_lossy()),
            Step::Detach(path) => format!("detaching the old root {}", path.to_string_lossy()),
        };
        let cgroups = self.cgroups.len();
        if index >= 1 && index <= cgroups {
            return format!("joining the cgroup {}", self.cgroups[index - 1].to_string_lossy());
        }
        if index > cgroups && index <= cgroups + files {
            return format!("setting up the sandbox: {}", describe_step(&self.steps[index - cgroups - 1]));
        }
        match index - cgroups - files {
            1 => "lowering the CPU priority".into(),
            2 => "lowering the IO priority".into(),
            3 => "dropping to the sandbox's user".into(),
            _ => "setting no_new_privs".into(),
        }
    }
}
