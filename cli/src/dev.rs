//! `atoll dev`: a whole mesh on this machine, until Ctrl-C or SIGTERM.
//!
//! Every replica is a child `atoll agent` process on 127.0.0.1 with its own certificate. The
//! directory is reused by the next run when it holds the same layout (same ports, same data), so
//! annotations survive a restart of `atoll dev`. Children that exit are restarted (unless
//! `--no-restart`), and `nodes.json` always lists the current pids.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use crate::agent::shutdown_signal;
use crate::args::DevArgs;
use crate::cli_config::CliConfig;
use crate::mesh::Layout;
use crate::mesh::Mesh;
use crate::mesh::MeshDir;
use crate::mesh::replica_name;

/// Restarts of one replica allowed within [`RESTART_WINDOW`] before dev gives up on it.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

fn choose_layout(args: &DevArgs, dir: &MeshDir) -> anyhow::Result<Layout> {
    if args.fresh {
        crate::mesh::wipe(&dir.root)?;
    }
    if let Some(stored) = dir.stored_layout()? {
        let replicas = stored.clusters.first().map_or(0, |c| c.replicas.len());
        anyhow::ensure!(
            stored.clusters.len() == args.clusters && replicas == args.replicas,
            "{} holds a mesh of {} clusters x {replicas} replicas; pass --fresh to replace it, or another --dir",
            dir.root.display(),
            stored.clusters.len()
        );
        let first_port = stored.clusters.first().and_then(|c| c.replicas.first()).map_or(0, |r| r.port);
        anyhow::ensure!(
            args.base_port == 0 || args.base_port == first_port,
            "{} uses ports from {first_port}; pass --fresh to change them",
            dir.root.display()
        );
        return Ok(stored);
    }
    if dir.root.exists() && std::fs::read_dir(&dir.root)?.next().is_some() {
        anyhow::bail!("{} is not empty and holds no atoll mesh; choose another --dir", dir.root.display());
    }
    Layout::new(args.clusters, args.replicas, args.base_port)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let dir = MeshDir::new(&args.dir);
    let layout = choose_layout(&args, &dir)?;
    let exe = std::env::current_exe().context("finding the atoll binary")?;
    println!(
        "atoll dev: {} cluster(s) x {} replicas in {}",
        layout.clusters.len(),
        layout.clusters.first().map_or(0, |c| c.replicas.len()),
        dir.root.display()
    );
    let mut mesh = Mesh::start(dir, layout, exe)?;
    let client = CliConfig::load(&mesh.dir.cli_config())?.node_client()?;

    tokio::pin!(shutdown);
    let leaders = tokio::select! {
        leaders = mesh.wait_for_leaders(&client, Duration::from_secs(60)) => leaders,
        () = &mut shutdown => {
            println!("atoll dev: stopping before the mesh was ready");
            mesh.stop_all(Duration::from_secs(15)).await;
            return Ok(());
        }
    };
    let leaders = match leaders {
        Ok(leaders) => leaders,
        Err(e) => {
            mesh.stop_all(Duration::from_secs(15)).await;
            return Err(e);
        }
    };
    for leader in &leaders {
        println!("cluster {}: leader node {} at {} (term {})", leader.cluster, leader.leader, leader.addr, leader.term);
    }
    let config = mesh.dir.cli_config();
    if let Some(first) = leaders.first() {
        println!("try: atoll --config {} status --node {}", config.display(), first.addr);
    }
    println!("atoll dev: ready");

    let mut restarts: BTreeMap<(String, u64), Vec<tokio::time::Instant>> = BTreeMap::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for ((cluster, id), status) in mesh.reap() {
            let name = replica_name(&cluster, id);
            if args.no_restart {
                println!("atoll dev: {name} exited ({status}); not restarting (--no-restart)");
                continue;
            }
            let now = tokio::time::Instant::now();
            let recent = restarts.entry((cluster.clone(), id)).or_default();
            recent.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
            if recent.len() >= MAX_RESTARTS {
                println!(
                    "atoll dev: {name} exited ({status}) {MAX_RESTARTS} times within {RESTART_WINDOW:?}; leaving it stopped (see {})",
                    mesh.dir.log_file(&cluster, id).display()
                );
                continue;
            }
            recent.push(now);
            match mesh.spawn(&cluster, id) {
                Ok(pid) => println!("atoll dev: {name} exited ({status}); restarted as pid {pid}"),
                Err(e) => println!("atoll dev: {name} exited ({status}); restarting failed: {e:#}"),
            }
        }
    }
    println!("atoll dev: stopping");
    mesh.stop_all(Duration::from_secs(15)).await;
    println!("atoll dev: stopped");
    Ok(())
}
