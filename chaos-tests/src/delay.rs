//! A delaying TCP proxy: this kernel has no netem, so latency between sites is added by relaying
//! their connections through a proxy that holds every piece of data for the current delay
//! before passing it on (each direction on its own, order kept).
//!
//! The proxy runs on a thread of its own that has entered the sandbox's `delay` namespace, so its
//! listeners and its connections to the real destinations live there; nftables DNAT rules in the
//! source namespaces send connections to the proxy's port for each destination.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Pieces in flight per direction of one connection: bounds the proxy's memory.
const IN_FLIGHT: usize = 64;

/// The running proxy. Dropping it stops every listener and connection.
pub struct DelayProxy {
    delay_ms: Arc<AtomicU64>,
    relayed: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayProxy {
    /// Listen on each `(listen, target)` pair inside the namespace at `netns_path`, relaying to
    /// `target` with no delay until [`DelayProxy::set_delay`].
    pub fn start(netns_path: &str, routes: Vec<(SocketAddr, SocketAddr)>) -> anyhow::Result<Self> {
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, is_ready) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let file = std::fs::File::open(netns_path).with_context(|| format!("opening {netns_path}"))?;
        let delay = delay_ms.clone();
        let relayed = Arc::new(AtomicU64::new(0));
        let counter = relayed.clone();
        let thread = std::thread::Builder::new().name("delay-proxy".into()).spawn(move || {
            let setup = || -> anyhow::Result<(tokio::runtime::Runtime, Vec<(TcpListener, SocketAddr)>)> {
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("entering the delay namespace")?;
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let listeners = runtime.block_on(async {
                    let mut out = Vec::new();
                    for (listen, target) in routes {
                        let listener =
                            TcpListener::bind(listen).await.with_context(|| format!("delay proxy binding {listen}"))?;
                        out.push((listener, target));
                    }
                    anyhow::Ok(out)
                })?;
                Ok((runtime, listeners))
            };
            let (runtime, listeners) = match setup() {
                Ok(ok) => {
                    let _ = ready.send(Ok(()));
                    ok
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for (listener, target) in listeners {
                    tasks.spawn(accept_loop(listener, target, delay.clone(), counter.clone()));
                }
                let _ = stopped.await;
                tasks.abort_all();
            });
        })?;
        is_ready.recv().context("the delay proxy thread ended before it was ready")??;
        Ok(Self { delay_ms, relayed, stop: Some(stop), thread: Some(thread) })
    }

    /// The one-way delay every direction of every relayed connection gets from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Connections relayed so far.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, delay: Arc<AtomicU64>, relayed: Arc<AtomicU64>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        relayed.fetch_add(1, Ordering::Relaxed);
        let delay = delay.clone();
        connections.spawn(async move {
            // A destination that cannot be reached closes the inbound side, as a refused
            // connection would.
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::join!(pump(in_read, out_write, delay.clone()), pump(out_read, in_write, delay));
        });
        // Reap finished connections so the set does not grow for the whole run.
        while connections.try_join_next().is_some() {}
    }
}

/// Copy `from` to `to`, each piece held until its due time (read time + the delay then).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<AtomicU64>,
) {
    let (send, mut receive) = mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = tokio::time::Instant::now() + Duration::from_millis(delay.load(Ordering::Relaxed));
                    if send.send((due, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, piece)) = receive.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&piece).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
