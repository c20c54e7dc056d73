//! `atoll dev`: a whole mesh on this machine, until Ctrl-C or SIGTERM.
//!
//! A gateway and, per cluster, replicas as child `atoll agent` processes on 127.0.0.1. Replicas
//! enroll with the gateway with a join token, elect a leader, and the leaders register and report
//! their measured links; two cuts are configured so the matrix shows a one-way cut
//! (aws->onprem) and a relayed pair (gcp<->onprem). `--standalone` runs the clusters alone.
//!
//! The directory is reused by the next run when it holds the same layout (same ports, same data),
//! so annotations and enrollments survive a restart of `atoll dev`. Children that exit are
//! restarted (unless `--no-restart`), and `nodes.json` always lists the current pids.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use crate::agent::shutdown_signal;
use crate::args::DevArgs;
use crate::cli_config::CliConfig;
use atoll_mesh::Layout;
use atoll_mesh::Mesh;
use atoll_mesh::MeshDir;
use atoll_mesh::replica_name;

/// Restarts of one replica allowed within [`RESTART_WINDOW`] before dev gives up on it.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

fn choose_layout(args: &DevArgs, dir: &MeshDir) -> anyhow::Result<Layout> {
    if args.fresh {
        atoll_mesh::wipe(&dir.root)?;
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
        anyhow::ensure!(
            stored.gateway.is_none() == args.standalone,
            "{} holds a mesh {} a gateway; pass --fresh to replace it, or another --dir",
            dir.root.display(),
            if stored.gateway.is_some() { "with" } else { "without" }
        );
        return Ok(stored);
    }
    if dir.root.exists() && std::fs::read_dir(&dir.root)?.next().is_some() {
        anyhow::bail!("{} is not empty and holds no atoll mesh; choose another --dir", dir.root.display());
    }
    let layout = Layout::new(args.clusters, args.replicas, args.base_port)?;
    if args.standalone { Ok(layout) } else { Ok(layout.with_gateway(args.base_port)?.with_default_cuts()) }
}

/// Wait for leaders, then (with a gateway) for every cluster to register and the matrix to fill,
/// and print what the mesh looks like.
async fn become_ready(mesh: &mut Mesh, client: &atoll_api::client::NodeClient) -> anyhow::Result<()> {
    let leaders = mesh.wait_for_leaders(client, Duration::from_secs(60)).await?;
    for leader in &leaders {
        println!("cluster {}: leader node {} at {} (term {})", leader.cluster, leader.leader, leader.addr, leader.term);
    }
    let config = mesh.dir.cli_config();
    if let Some(gateway) = mesh.layout.gateway.clone() {
        mesh.wait_for_registration(Duration::from_secs(60)).await?;
        println!("gateway at {}: every cluster registered", gateway.addr());
        let matrix = mesh.wait_for_matrix(Duration::from_secs(60)).await?;
        println!("reachability matrix (row: from, column: to):");
        print!("{}", crate::mesh_commands::render(&matrix));
        println!("try: atoll --config {} matrix", config.display());
    }
    if let Some(first) = leaders.first() {
        println!("try: atoll --config {} status --node {}", config.display(), first.addr);
    }
    Ok(())
}

/// The example pipeline `atoll dev` runs (`examples/pipeline.yaml`).
pub const EXAMPLE_PIPELINE: &str = include_str!("../../examples/pipeline.yaml");

/// Submit the example pipeline and print where its jobs ran and how they ended.
async fn run_example(config: std::path::PathBuf) {
    let outcome = async {
        let gateway = CliConfig::load(&config)?.gateway_client()?;
        let spec = atoll_api::spec::parse_document(EXAMPLE_PIPELINE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let submitted = gateway.submit(&atoll_api::jobs::SubmitRequest { spec }).await?;
        println!("example pipeline {} submitted (examples/pipeline.yaml):", submitted.pipeline);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut now = submitted;
        while !now.jobs.iter().all(|j| j.state.is_final()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Ok(fresh) = gateway.pipeline(&now.pipeline).await {
                now = fresh;
            }
        }
        for job in &now.jobs {
            let inputs: Vec<String> = job
                .inputs
                .iter()
                .map(|i| format!("{} ({})", i.from_job, i.route.map_or("-", |r| r.as_str())))
                .collect();
            println!(
                "  {:<12} {:<9} on {:<7} {}",
                job.name,
                job.state.as_str(),
                job.cluster.as_deref().unwrap_or("-"),
                if inputs.is_empty() { String::new() } else { format!("inputs: {}", inputs.join(", ")) }
            );
        }
        println!(
            "  inputs: local = the parent's cluster; pull / push = directly between the clusters, \
             fetched by the child's / sent by the parent's; relay = through the gateway"
        );
        println!(
            "try: atoll --config {} jobs; atoll --config {} logs {}",
            config.display(),
            config.display(),
            now.jobs[0].id
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = outcome {
        println!("atoll dev: the example pipeline did not run: {e:#}");
    }
}

/// Record a restart of `key` unless it already restarted [`MAX_RESTARTS`] times within
/// [`RESTART_WINDOW`].
fn may_restart(restarts: &mut BTreeMap<(String, u64), Vec<tokio::time::Instant>>, key: (String, u64)) -> bool {
    let now = tokio::time::Instant::now();
    let recent = restarts.entry(key).or_default();
    recent.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
    if recent.len() >= MAX_RESTARTS {
        return false;
    }
    recent.push(now);
    true
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
    if let Some(gateway) = &layout.gateway {
        println!("atoll dev: gateway at {} (ops {})", gateway.addr(), gateway.ops_addr());
    }
    let mut mesh = Mesh::start(dir, layout, exe).await?;
    let client = CliConfig::load(&mesh.dir.cli_config())?.node_client()?;

    tokio::pin!(shutdown);
    let ready = tokio::select! {
        ready = become_ready(&mut mesh, &client) => ready,
        () = &mut shutdown => {
            println!("atoll dev: stopping before the mesh was ready");
            mesh.stop_all(Duration::from_secs(15)).await;
            return Ok(());
        }
    };
    if let Err(e) = ready {
        mesh.stop_all(Duration::from_secs(15)).await;
        return Err(e);
    }
    println!("atoll dev: ready");
    let example = mesh.layout.gateway.is_some().then(|| tokio::spawn(run_example(mesh.dir.cli_config())));

    let mut restarts: BTreeMap<(String, u64), Vec<tokio::time::Instant>> = BTreeMap::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for (index, status) in mesh.reap_gateways() {
            // Replicas keep running without it; their leaders re-register when it is back.
            let log = mesh.gateway_log(index).map(|l| l.display().to_string()).unwrap_or_default();
            if args.no_restart {
                println!("atoll dev: the gateway exited ({status}); not restarting (--no-restart)");
            } else if !may_restart(&mut restarts, ("gateway".to_string(), index as u64)) {
                println!(
                    "atoll dev: the gateway exited ({status}) {MAX_RESTARTS} times within {RESTART_WINDOW:?}; leaving it stopped (see {log})"
                );
            } else {
                match mesh.spawn_gateway(index) {
                    Ok(pid) => println!("atoll dev: the gateway exited ({status}); restarted as pid {pid}"),
                    Err(e) => println!("atoll dev: the gateway exited ({status}); restarting failed: {e:#}"),
                }
            }
        }
        for ((cluster, id), status) in mesh.reap() {
            let name = replica_name(&cluster, id);
            if args.no_restart {
                println!("atoll dev: {name} exited ({status}); not restarting (--no-restart)");
                continue;
            }
            if !may_restart(&mut restarts, (cluster.clone(), id)) {
                println!(
                    "atoll dev: {name} exited ({status}) {MAX_RESTARTS} times within {RESTART_WINDOW:?}; leaving it stopped (see {})",
                    mesh.dir.log_file(&cluster, id).display()
                );
                continue;
            }
            if let Err(e) = mesh.prepare_enrollment(&cluster, id).await {
                println!("atoll dev: {name} exited ({status}); cannot give it a join token: {e:#}");
                continue;
            }
            match mesh.spawn(&cluster, id) {
                Ok(pid) => println!("atoll dev: {name} exited ({status}); restarted as pid {pid}"),
                Err(e) => println!("atoll dev: {name} exited ({status}); restarting failed: {e:#}"),
            }
        }
    }
    if let Some(example) = example {
        example.abort();
    }
    println!("atoll dev: stopping");
    mesh.stop_all(Duration::from_secs(15)).await;
    println!("atoll dev: stopped");
    Ok(())
}
