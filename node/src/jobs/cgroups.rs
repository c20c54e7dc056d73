//! A run's cgroups: its `resources.limits` enforced by the kernel, and a smaller CPU share than
//! the replica's.
//!
//! Each run gets a cgroup of its own below the replica's (`atoll-jobs/<job>.<attempt>`), made
//! before the run starts and joined by its first process before it execs (so everything it
//! starts is inside), removed after the run ended. cgroup v1 (a hierarchy per controller:
//! `cpu`, `memory`, `pids`) and v2 (one hierarchy, where the replica's cgroup delegates the
//! controllers) are both read from `/proc/self/cgroup`. What the machine does not allow is left
//! out with one warning at start; the sandbox (user, namespaces) does not depend on it.

use std::path::Path;
use std::path::PathBuf;

/// CPU weight of a run against the replica's (v1 `cpu.shares`; 1024 is the default of every
/// other process, the replica included).
const RUN_CPU_SHARES: u64 = 256;
/// The same as a v2 `cpu.weight` (100 is the default).
const RUN_CPU_WEIGHT: u64 = 25;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cgroups {
    /// v1: the parent directory of runs per controller.
    V1 {
        cpu: Option<PathBuf>,
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    /// v2: the parent directory of runs.
    V2(PathBuf),
    None,
}

/// The limits of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_millis: Option<u64>,
    pub memory_mib: Option<u64>,
}

/// A run's cgroup directories, removed on drop (the run's processes are gone by then).
#[derive(Debug)]
pub struct RunCgroup {
    dirs: Vec<PathBuf>,
}

impl RunCgroup {
    /// The `cgroup.procs` files the run's first process writes itself into.
    pub fn procs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        // Empty once the kernel has finished killing the run's processes, a moment after its
        // first process was reaped: tried again for a second.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            for dir in &dirs {
                let _ = std::fs::remove_dir(dir);
            }
            return;
        };
        runtime.spawn(async move {
            for dir in &dirs {
                for round in 0..20 {
                    match std::fs::remove_dir(dir) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                        Err(e) if round == 19 => {
                            tracing::debug!(dir = %dir.display(), error = %e, "removing a run's cgroup failed");
                        }
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                        Ok(()) => break,
                    }
                }
            }
        });
    }
}

/// The path of `controller`'s cgroup of this process in `/proc/self/cgroup` text; v2 is the
/// line `0::PATH`.
fn own_path<'a>(proc_cgroup: &'a str, controller: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == controller).then_some(path)
    })
}

fn writable_dir(dir: &Path) -> bool {
    std::fs::create_dir_all(dir).is_ok() && nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

impl Cgroups {
    /// What this machine offers, below this process's own cgroups under `mount` (normally
    /// `/sys/fs/cgroup`).
    pub fn detect(mount: &Path) -> Self {
        let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else { return Cgroups::None };
        let below = |path: &str| mount.join(path.trim_start_matches('/'));
        if mount.join("cgroup.controllers").exists() {
            let Some(own) = text.lines().find_map(|l| l.strip_prefix("0::")) else { return Cgroups::None };
            let parent = below(own).join("atoll-jobs");
            if !writable_dir(&parent) {
                return Cgroups::None;
            }
            // Let runs use the controllers this cgroup has (a delegated subtree allows it).
            let available = std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
            let wanted: Vec<String> = available
                .split_whitespace()
                .filter(|c| matches!(*c, "cpu" | "memory" | "pids"))
                .map(|c| format!("+{c}"))
                .collect();
            if !wanted.is_empty() {
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), wanted.join(" "));
            }
            return Cgroups::V2(parent);
        }
        let controller = |name: &str| {
            let own = own_path(&text, name)?;
            let parent = mount.join(name).join(own.trim_start_matches('/')).join("atoll-jobs");
            writable_dir(&parent).then_some(parent)
        };
        let (cpu, memory, pids) = (controller("cpu"), controller("memory"), controller("pids"));
        if cpu.is_none() && memory.is_none() && pids.is_none() {
            return Cgroups::None;
        }
        Cgroups::V1 { cpu, memory, pids }
    }

    /// What [`Cgroups::detect`] found, for the log line at start.
    pub fn describe(&self) -> String {
        match self {
            Cgroups::V1 { cpu, memory, pids } => {
                let mut have = Vec::new();
                for (name, dir) in [("cpu", cpu), ("memory", memory), ("pids", pids)] {
                    if dir.is_some() {
                        have.push(name);
                    }
                }
                format!("cgroup v1 ({})", have.join(", "))
            }
            Cgroups::V2(dir) => format!("cgroup v2 under {}", dir.display()),
            Cgroups::None => "none".into(),
        }
    }

    /// A fresh cgroup for the run `name`, with `limits` written.
    pub fn create(&self, name: &str, limits: Limits) -> Result<Option<RunCgroup>, String> {
        let make = |parent: &Path| -> Result<PathBuf, String> {
            let dir = parent.join(name);
            match std::fs::create_dir(&dir) {
                // Left by an earlier start of the same attempt on this replica: used again.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
                Err(e) => Err(format!("making the cgroup {}: {e}", dir.display())),
                Ok(()) => Ok(dir),
            }
        };
        let write = |dir: &Path, file: &str, value: String| -> Result<(), String> {
            std::fs::write(dir.join(file), &value)
                .map_err(|e| format!("setting {} to {value} in {}: {e}", file, dir.display()))
        };
        match self {
            Cgroups::None => Ok(None),
            Cgroups::V1 { cpu, memory, pids } => {
                let mut run = RunCgroup { dirs: Vec::new() };
                if let Some(parent) = cpu {
                    let dir = make(parent)?;
                    run.dirs.push(dir.clone());
                    write(&dir, "cpu.shares", RUN_CPU_SHARES.to_string())?;
                    if let Some(millis) = limits.cpu_millis {
                        write(&dir, "cpu.cfs_period_us", "100000".into())?;
                        write(&dir, "cpu.cfs_quota_us", (millis.max(1) * 100).to_string())?;
                    }
                }
                if let Some(parent) = memory {
                    let dir = make(parent)?;
                    run.dirs.push(dir.clone());
                    if let Some(mib) = limits.memory_mib {
                        write(&dir, "memory.limit_in_bytes", (mib.max(1) * 1024 * 1024).to_string())?;
                    }
                }
                if let Some(parent) = pids {
                    run.dirs.push(make(parent)?);
                }
                Ok(Some(run))
            }
            Cgroups::V2(parent) => {
                let dir = make(parent)?;
                let run = RunCgroup { dirs: vec![dir.clone()] };
                // Controllers the parent does not hand down have no files: only limits asked
                // for must be written.
                let _ = write(&dir, "cpu.weight", RUN_CPU_WEIGHT.to_string());
                if let Some(millis) = limits.cpu_millis {
                    write(&dir, "cpu.max", format!("{} 100000", millis.max(1) * 100))?;
                }
                if let Some(mib) = limits.memory_mib {
                    write(&dir, "memory.max", (mib.max(1) * 1024 * 1024).to_string())?;
                }
                Ok(Some(run))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_path_of_a_controller_is_read_from_its_line() {
        let text = "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x\n0::/v2path\n";
        assert_eq!(own_path(text, "memory"), Some("/process_api/abc"));
        assert_eq!(own_path(text, "cpu"), Some("/x"));
        assert_eq!(own_path(text, "cpuacct"), Some("/x"));
        assert_eq!(own_path(text, "pids"), None);
    }
}
