//! The daemons' malloc setting.
//!
//! Replicas and the gateway move outputs in chunks of up to 8 MiB. glibc keeps freed chunk
//! buffers in its heaps (its mmap threshold rises to 8 MiB once the first such buffer is freed),
//! and it makes up to eight heaps per core: the first transfer after start peaked 50-74 MiB above
//! idle on a receiver, against the 64 MiB goal. Two heaps (`glibc.malloc.arena_max=2`) gave peaks
//! of 33-50 MiB at the same speed, for transfers and for job dispatch alike; a fixed mmap
//! threshold gave lower peaks still but cost a fifth to a quarter of the transfer speed
//! (docs/performance.md).
//!
//! glibc reads `GLIBC_TUNABLES` only when a process starts, so a daemon started without a malloc
//! tunable starts itself again, once (same pid, same arguments), with the setting added. One the
//! operator set (any `glibc.malloc.*`) is left as it is.

/// The tunable the daemons run with.
pub const TUNABLE: &str = "glibc.malloc.arena_max=2";

/// Set on the restarted process, so it never restarts again (whatever glibc does with the
/// variable).
const RESTARTED: &str = "ATOLL_MALLOC_TUNED";

/// `GLIBC_TUNABLES` for a daemon started with `current`; `None` when it is to be left alone.
pub fn tunables(current: Option<&str>) -> Option<String> {
    match current {
        Some(c) if c.contains("glibc.malloc.") => None,
        Some(c) if !c.is_empty() => Some(format!("{c}:{TUNABLE}")),
        _ => Some(TUNABLE.to_string()),
    }
}

/// Start this process again with [`TUNABLE`] unless it runs with a malloc tunable
/// already. Returns only when it did not restart: nothing to do (`Ok`), or the exec failed
/// (`Err`; the process goes on with glibc's default).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn restart_tuned() -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(RESTARTED).is_some() {
        return Ok(());
    }
    let Some(value) = tunables(std::env::var("GLIBC_TUNABLES").ok().as_deref()) else {
        return Ok(());
    };
    let exe = std::env::current_exe()?;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    Err(std::process::Command::new(&exe).arg0(argv0).args(args).env("GLIBC_TUNABLES", value).env(RESTARTED, "1").exec())
}

/// Other C libraries read no such variable: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn restart_tuned() -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_added_unless_a_malloc_tunable_is_set() {
        assert_eq!(tunables(None).as_deref(), Some(TUNABLE));
        assert_eq!(tunables(Some("")).as_deref(), Some(TUNABLE));
        assert_eq!(tunables(Some("glibc.pthread.rseq=0")), Some(format!("glibc.pthread.rseq=0:{TUNABLE}")));
        assert_eq!(tunables(Some("glibc.malloc.mmap_threshold=1048576")), None, "the operator's own choice");
        assert_eq!(tunables(Some(TUNABLE)), None);
    }
}
