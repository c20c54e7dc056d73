//! `atoll dev`: a whole mesh on this machine, until Ctrl-C or SIGTERM.
//!
//! A gateway and, per cluster, replicas as child `atoll agent` processes on 127.0.0.1. Replicas
//! enroll with the gateway with a join token, elect a leader, and the leaders register and report
//! their measured links; two cuts are configured so the matrix shows a one-way cut
//! (aws->onprem) and a relayed pair (gcp<->onprem). `--standalone` runs the clusters alone;
//! `--gateways N` runs N gateway replicas over a PostgreSQL server of the mesh's own (started
//! before them, stopped after them) and prints which replica holds the duties lease whenever
//! that changes.
//!
//! The directory is reused by the next run when it holds the same layout (same ports, same data),
//! so annotations and enrollments survive a restart of `atoll dev`. Children that exit are
//! restarted (unless `--no-restart`), and `nodes.json` (and `gateway.json` or `gateways.json`)
//! always lists the current pids.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use crate::agent::shutdown_signal;
use crate::args::DevArgs;
use crate::cli_config::CliConfig;
use atoll_api::gateway::GatewayReplica;
use atoll_api::gateway_client::GatewayClient;
use atoll_mesh::Layout;
use atoll_mesh::Mesh;
use atoll_mesh::MeshDir;
use atoll_mesh::replica_name;

/// Restarts of one replica allowed within [`RESTART_WINDOW`] before dev gives up on it.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// How often dev asks the gateway replicas who holds the lease, and how long one question may
/// take (the client moves on from a replica that fails to the next within it).
const LEASE_POLL: Duration = Duration::from_millis(1_500);
const LEASE_ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// After this long without an answer, dev says it cannot tell who holds the lease (once).
const LEASE_UNKNOWN_AFTER: Duration = Duration::from_secs(15);

/// The gateway replica count of a layout as `--gateways` gives it: `None` for the single gateway
/// (or none at all).
fn gateway_replicas(layout: &Layout) -> Option<usize> {
    layout.gateway.as_ref().filter(|g| g.ha).map(|g| g.replicas.len())
}

/// The clusters' container engine from `--containers FILE` (none without it, also for a stored
/// layout that had one).
fn with_containers(mut layout: Layout, args: &DevArgs) -> anyhow::Result<Layout> {
    let containers = match &args.containers {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("--containers {}", path.display()))?;
            let containers: atoll_mesh::JobContainers = serde_yaml_ng::from_str(&text).with_context(|| {
                format!(
                    "--containers {}: not a jobs.containers block (engine, engine_args, build_args, run_args, registry_args, compose)",
                    path.display()
                )
            })?;
            anyhow::ensure!(!containers.engine.trim().is_empty(), "--containers {}: engine: empty", path.display());
            Some(containers)
        }
        None => None,
    };
    for cluster in &mut layout.clusters {
        cluster.job_containers.clone_from(&containers);
    }
    Ok(layout)
}

fn choose_layout(args: &DevArgs, dir: &MeshDir) -> anyhow::Result<Layout> {
    with_containers(choose_mesh(args, dir)?, args)
}

fn choose_mesh(args: &DevArgs, dir: &MeshDir) -> anyhow::Result<Layout> {
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
        let wanted = args.gateways.map(usize::from);
        match (gateway_replicas(&stored), wanted) {
            (stored, wanted) if stored == wanted || args.standalone => {}
            (Some(n), _) => anyhow::bail!(
                "{} holds a mesh of {n} gateway replica(s) on PostgreSQL; pass --gateways {n}, or --fresh to replace it, or another --dir",
                dir.root.display()
            ),
            (None, _) => anyhow::bail!(
                "{} holds a mesh with one gateway on SQLite (made without --gateways); pass --fresh to replace it, or another --dir",
                dir.root.display()
            ),
        }
        return stored.with_dashboard();
    }
    if dir.root.exists() && std::fs::read_dir(&dir.root)?.next().is_some() {
        anyhow::bail!("{} is not empty and holds no atoll mesh; choose another --dir", dir.root.display());
    }
    let layout = Layout::new(args.clusters, args.replicas, args.base_port)?;
    match (args.standalone, args.gateways) {
        (true, _) => Ok(layout),
        (false, None) => layout.with_gateway(args.base_port)?.with_default_cuts().with_dashboard(),
        (false, Some(n)) => layout
            .with_gateway_replicas(usize::from(n), args.base_port)?
            .with_postgres(args.base_port)?
            .with_default_cuts()
            .with_dashboard(),
    }
}

/// Write a read-scope token for the dashboard to `DIR/dashboard-token` and say where it is.
async fn open_dashboard(mesh: &Mesh) -> anyhow::Result<()> {
    let Some(gateway) = &mesh.layout.gateway else { return Ok(()) };
    let created = mesh
        .gateway_client()?
        .user_token(&atoll_api::gateway::UserTokenRequest {
            name: "dashboard".into(),
            scopes: vec![atoll_api::gateway::Scope::Read],
            ttl_s: None,
        })
        .await
        .context("making a read-scope token")?;
    let path = mesh.dir.dashboard_token();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        file.write_all(format!("{}\n", created.token).as_bytes())?;
    }
    for replica in &gateway.replicas {
        if let Some(addr) = replica.dashboard_addr() {
            println!("dashboard at https://{addr}/");
        }
    }
    println!(
        "atoll dev: sign in to the dashboard with the read-scope token in {} (its certificate is the dev CA's, {}: trust it, or accept the certificate)",
        path.display(),
        mesh.dir.certs().join("ca.pem").display()
    );
    Ok(())
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
        match gateway.ha {
            false => println!("gateway at {}: every cluster registered", gateway.addr()),
            true => println!("gateways at {}: every cluster registered", gateway.addrs().join(", ")),
        }
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
        let submitted = gateway.submit(&atoll_api::jobs::SubmitRequest { spec, files: Default::default() }).await?;
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

/// The line to print when the replicas' list says `replicas` and the holder last printed was
/// `shown`, and the holder to remember; `None` when nothing changed. Of two replicas that both
/// say they hold the lease (one has not noticed it lost it), the higher generation holds it.
fn lease_change(shown: Option<&(String, u64)>, replicas: &[GatewayReplica]) -> Option<(String, Option<(String, u64)>)> {
    let holder =
        replicas.iter().filter(|r| r.holds_lease).max_by_key(|r| r.generation).map(|r| (r.id.clone(), r.generation));
    match (&holder, shown) {
        (Some(now), Some(before)) if now == before => None,
        (Some((id, generation)), _) => {
            Some((format!("atoll dev: gateway {id} holds the lease (generation {generation})"), holder.clone()))
        }
        (None, Some(_)) => Some(("atoll dev: no gateway replica holds the lease".to_string(), None)),
        (None, None) => None,
    }
}

/// Print which gateway replica holds the lease once it is known and again whenever it changes,
/// asking (any replica: `client` is over all of them) every [`LEASE_POLL`].
async fn watch_lease(client: GatewayClient) {
    let mut shown: Option<(String, u64)> = None;
    let started = tokio::time::Instant::now();
    let mut answered = false;
    loop {
        let answer = match tokio::time::timeout(LEASE_ASK_TIMEOUT, client.gateways()).await {
            Ok(Ok(replicas)) => Ok(replicas),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {LEASE_ASK_TIMEOUT:?}")),
        };
        match answer {
            Ok(replicas) => {
                answered = true;
                if let Some((line, holder)) = lease_change(shown.as_ref(), &replicas) {
                    println!("{line}");
                    shown = holder;
                }
            }
            Err(e) if !answered && started.elapsed() >= LEASE_UNKNOWN_AFTER => {
                println!("atoll dev: cannot tell which gateway replica holds the lease ({e})");
                answered = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(LEASE_POLL).await;
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
    if let Some(postgres) = &layout.postgres {
        println!(
            "atoll dev: PostgreSQL at 127.0.0.1:{} in {} (installed first when missing)",
            postgres.port,
            dir.postgres_dir().display()
        );
    }
    if let Some(c) = layout.clusters.first().and_then(|c| c.job_containers.as_ref()) {
        println!(
            "atoll dev: docker, docker-image{} jobs through {} on every cluster",
            if c.compose.is_empty() { "" } else { " and docker-compose" },
            c.engine
        );
    }
    match &layout.gateway {
        Some(gateway) if gateway.ha => println!("atoll dev: {} gateway replica(s)", gateway.replicas.len()),
        Some(gateway) => println!("atoll dev: gateway at {} (ops {})", gateway.addr(), gateway.ops_addr()),
        None => {}
    }
    let mut mesh = Mesh::start(dir, layout, exe).await?;
    let client = CliConfig::load(&mesh.dir.cli_config())?.node_client()?;
    let lease = match mesh.layout.gateway.as_ref().filter(|g| g.ha) {
        Some(gateway) => {
            for (index, replica) in gateway.replicas.iter().enumerate() {
                println!(
                    "atoll dev: gateway {} at {} (ops {}) serves, pid {}",
                    replica.id,
                    replica.addr(),
                    replica.ops_addr(),
                    mesh.gateway_pid(index).map_or("-".to_string(), |p| p.to_string())
                );
            }
            println!("atoll dev: {} lists them with their pids", mesh.dir.gateways_json().display());
            Some(tokio::spawn(watch_lease(mesh.gateway_client()?)))
        }
        None => None,
    };

    tokio::pin!(shutdown);
    let ready = tokio::select! {
        ready = become_ready(&mut mesh, &client) => ready,
        () = &mut shutdown => {
            println!("atoll dev: stopping before the mesh was ready");
            lease.iter().for_each(tokio::task::JoinHandle::abort);
            mesh.stop_all(Duration::from_secs(15)).await;
            return Ok(());
        }
    };
    if let Err(e) = ready {
        lease.iter().for_each(tokio::task::JoinHandle::abort);
        mesh.stop_all(Duration::from_secs(15)).await;
        return Err(e);
    }
    if mesh.layout.gateway.is_some()
        && let Err(e) = open_dashboard(&mesh).await
    {
        println!("atoll dev: the dashboard token could not be made: {e:#}");
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
            // Replicas keep running without it; their leaders re-register when it is back (with
            // replicas, at another one meanwhile). gateways.json follows the restart.
            let name = mesh.gateway_name(index);
            let log = mesh.gateway_log(index).map(|l| l.display().to_string()).unwrap_or_default();
            if args.no_restart {
                println!("atoll dev: {name} exited ({status}); not restarting (--no-restart)");
            } else if !may_restart(&mut restarts, ("gateway".to_string(), index as u64)) {
                println!(
                    "atoll dev: {name} exited ({status}) {MAX_RESTARTS} times within {RESTART_WINDOW:?}; leaving it stopped (see {log})"
                );
            } else {
                match mesh.spawn_gateway(index) {
                    Ok(pid) => println!("atoll dev: {name} exited ({status}); restarted as pid {pid}"),
                    Err(e) => println!("atoll dev: {name} exited ({status}); restarting failed: {e:#}"),
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
    lease.iter().for_each(tokio::task::JoinHandle::abort);
    println!("atoll dev: stopping");
    mesh.stop_all(Duration::from_secs(15)).await;
    println!("atoll dev: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn args(dir: &Path, gateways: Option<u16>) -> DevArgs {
        DevArgs {
            dir: dir.to_path_buf(),
            clusters: 3,
            replicas: 3,
            base_port: 0,
            fresh: false,
            no_restart: false,
            standalone: false,
            gateways,
            containers: None,
        }
    }

    #[test]
    fn containers_from_a_file_go_to_every_clusters_agents_and_a_bad_file_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("mesh");
        let dir = MeshDir::new(&root);
        let file = temp.path().join("containers.yaml");
        std::fs::write(&file, "engine: podman\nengine_args: [--runtime, runc]\ncompose: [podman-compose]\n").unwrap();
        let with = DevArgs { containers: Some(file.clone()), ..args(&root, None) };
        let layout = choose_layout(&with, &dir).unwrap();
        dir.materialize(&layout).unwrap();
        for (cluster, replica) in layout.all() {
            let config = atoll_node::config::AgentConfig::load(&dir.agent_config(&cluster.name, replica.id))
                .unwrap_or_else(|e| panic!("{e}"));
            let engine = config.jobs.containers.expect("jobs.containers");
            assert_eq!(
                (engine.program.as_str(), engine.compose.as_slice()),
                ("podman", &["podman-compose".to_string()][..])
            );
        }
        // The same directory without the flag: no engine.
        let layout = choose_layout(&args(&root, None), &dir).unwrap();
        assert!(layout.clusters.iter().all(|c| c.job_containers.is_none()));
        std::fs::write(&file, "engine: podman\nengnie_args: []\n").unwrap();
        let error = choose_layout(&with, &dir).unwrap_err();
        assert!(format!("{error:#}").contains("unknown field `engnie_args`"), "{error:#}");
    }

    fn replica(id: &str, holds_lease: bool, generation: u64) -> GatewayReplica {
        GatewayReplica { id: id.into(), addr: String::new(), holds_lease, generation, last_seen_ms: 0 }
    }

    #[test]
    fn the_lease_holder_is_printed_once_known_and_again_when_it_changes() {
        let g2 = Some(("g2".to_string(), 3));
        // Nobody holds it yet: nothing to say.
        assert_eq!(lease_change(None, &[replica("g1", false, 0), replica("g2", false, 0)]), None);
        let (line, holder) = lease_change(None, &[replica("g1", false, 0), replica("g2", true, 3)]).unwrap();
        assert_eq!(line, "atoll dev: gateway g2 holds the lease (generation 3)");
        assert_eq!(holder, g2);
        // The same holder: nothing new.
        assert_eq!(lease_change(g2.as_ref(), &[replica("g1", false, 2), replica("g2", true, 3)]), None);
        // A former holder that has not noticed yet loses to the higher generation.
        let (line, holder) = lease_change(g2.as_ref(), &[replica("g1", true, 4), replica("g2", true, 3)]).unwrap();
        assert_eq!(line, "atoll dev: gateway g1 holds the lease (generation 4)");
        assert_eq!(holder, Some(("g1".to_string(), 4)));
        // The same replica under a new generation (it lost the lease and took it again) is news.
        assert!(lease_change(g2.as_ref(), &[replica("g2", true, 5)]).is_some());
        let (line, holder) = lease_change(g2.as_ref(), &[replica("g1", false, 2), replica("g2", false, 3)]).unwrap();
        assert_eq!(line, "atoll dev: no gateway replica holds the lease");
        assert_eq!(holder, None);
    }

    #[test]
    fn a_directory_made_with_another_gateway_count_is_refused_unless_fresh() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("mesh");
        let dir = MeshDir::new(&root);
        let layout = choose_layout(&args(&root, Some(3)), &dir).unwrap();
        assert_eq!(gateway_replicas(&layout), Some(3));
        assert!(layout.postgres.is_some());
        dir.materialize(&layout).unwrap();
        assert_eq!(choose_layout(&args(&root, Some(3)), &dir).unwrap(), layout);
        for (gateways, expected) in
            [(None, "3 gateway replica(s) on PostgreSQL; pass --gateways 3"), (Some(1), "pass --gateways 3")]
        {
            let error = choose_layout(&args(&root, gateways), &dir).unwrap_err();
            assert!(format!("{error:#}").contains(expected), "{error:#}");
        }
        let fresh = DevArgs { fresh: true, ..args(&root, None) };
        let single = choose_layout(&fresh, &dir).unwrap();
        assert_eq!(gateway_replicas(&single), None);
        assert!(single.gateway.is_some() && single.postgres.is_none());
        dir.materialize(&single).unwrap();
        let error = choose_layout(&args(&root, Some(1)), &dir).unwrap_err();
        assert!(format!("{error:#}").contains("one gateway on SQLite (made without --gateways)"), "{error:#}");
    }

    /// The daemons and the CLI accept what the mesh writes for gateway replicas.
    #[test]
    fn the_configs_written_for_gateway_replicas_are_accepted_by_gateway_agent_and_cli() {
        for gateways in [1u16, 3] {
            let temp = tempfile::tempdir().unwrap();
            let dir = MeshDir::new(temp.path().join("mesh"));
            let layout = choose_layout(&args(&dir.root, Some(gateways)), &dir).unwrap();
            dir.materialize(&layout).unwrap();
            // What the mesh's PostgreSQL writes at its start.
            std::fs::create_dir_all(dir.postgres_dir()).unwrap();
            std::fs::write(dir.postgres_dir().join("url"), "postgres://atoll:pw@127.0.0.1:5432/postgres\n").unwrap();
            let gateway = layout.gateway.as_ref().unwrap();
            for replica in &gateway.replicas {
                let config = atoll_gateway::config::GatewayConfig::load(&dir.gateway_config(&replica.id))
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(config.id, replica.id);
                assert!(config.ha.enabled);
                assert_eq!(config.ca_dir.canonicalize().unwrap(), dir.certs().canonicalize().unwrap());
            }
            for (cluster, replica) in layout.all() {
                atoll_node::config::AgentConfig::load(&dir.agent_config(&cluster.name, replica.id))
                    .unwrap_or_else(|e| panic!("{gateways} gateway replica(s): {e}"));
            }
            let cli = CliConfig::load(&dir.cli_config()).unwrap();
            assert_eq!(cli.gateway, gateway.addrs());
        }
    }
}
