//! Picking listen ports for a local mesh.
//!
//! A port the kernel hands out for `bind(0)` comes from the ephemeral range, the same range
//! outgoing connections take their source ports from: between picking it and a child process
//! binding it, any connection on the machine may take it ("Address already in use"). So free
//! ports are picked *below* the ephemeral range, where no connection lands by chance, and each
//! pick is reserved across processes by an advisory lock on a file named after the port. The lock
//! is held until the process exits (even by SIGKILL, when the kernel drops it), so concurrent
//! meshes, test processes among them, never share a port.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use rand::Rng;

/// Lowest port considered; below are the well-known and commonly configured ones.
const FLOOR: u16 = 10_000;
/// The ephemeral range's usual first port, when the kernel does not say.
const DEFAULT_EPHEMERAL_LOW: u16 = 32_768;

/// Locks on reserved ports, held for the life of the process.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// `count` ports nobody listens on, outside the ephemeral range, reserved for this process.
pub fn reserve_free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let high = ephemeral_low();
    if high <= FLOOR + 1_000 {
        return kernel_picked(count);
    }
    let dir = std::env::temp_dir().join("atoll-ports");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let span = u32::from(high - FLOOR);
    let start = rand::rng().random_range(0..span);
    let mut picked = Vec::with_capacity(count);
    for step in 0..span {
        if picked.len() == count {
            break;
        }
        let port = FLOOR + ((start + step) % span) as u16;
        if let Some(lock) = try_reserve(&dir, port)? {
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(lock);
            picked.push(port);
        }
    }
    anyhow::ensure!(
        picked.len() == count,
        "only {} of {count} free ports found in {FLOOR}..{high} (reservations in {})",
        picked.len(),
        dir.display()
    );
    Ok(picked)
}

/// The lock on `port`'s file if no process holds it and nothing listens on the port.
fn try_reserve(dir: &std::path::Path, port: u16) -> anyhow::Result<Option<File>> {
    let path: PathBuf = dir.join(port.to_string());
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening port reservation {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking port reservation {}", path.display()));
        }
    }
    // Reserved among meshes; make sure nothing else on the machine listens there.
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        return Ok(None);
    }
    Ok(Some(file))
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|low| low.parse().ok()))
        .unwrap_or(DEFAULT_EPHEMERAL_LOW)
}

/// Fallback where the ephemeral range leaves no room below it: ports the kernel picks, all held
/// until every one is picked so none is handed out twice.
fn kernel_picked(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("picking free ports")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let first = reserve_free_ports(8).unwrap();
        let second = reserve_free_ports(8).unwrap();
        let mut all: Vec<u16> = first.iter().chain(&second).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 16, "a port was handed out twice: {first:?} {second:?}");
        let low = ephemeral_low();
        for port in all {
            assert!((FLOOR..low).contains(&port), "port {port} outside {FLOOR}..{low}");
            std::net::TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("bind {port}: {e}"));
        }
    }

    #[test]
    fn a_port_reserved_by_this_process_cannot_be_reserved_again() {
        let port = reserve_free_ports(1).unwrap()[0];
        let dir = std::env::temp_dir().join("atoll-ports");
        assert!(try_reserve(&dir, port).unwrap().is_none(), "port {port} reserved twice");
    }
}
