//! Boot and orderly shutdown of one replica.
//!
//! Boot, one log line per stage: TLS material (identity checked against the config), data
//! directory, listeners, Raft core, serving, bootstrap-or-join, background duties.
//!
//! Shutdown, under one grace deadline: readiness off, hand leadership to the most up-to-date
//! voter, stop accepting and drain requests, stop the Raft core, make the state machine durable.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use atoll_api::Identity;
use atoll_api::gateway_addrs::GatewayAddrs;
use atoll_api::serve::OnClose;
use atoll_api::tls::TlsIdentity;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::metrics::Metrics;
use crate::raft;
use crate::raft::ReplicaInfo;

/// Why a replica stopped other than by request.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Stopped(pub String);

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Run one replica until `shutdown` resolves (then stop in order) or it fails.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    tracing::info!(cluster = %config.cluster, node = config.node_id, version = atoll_api::VERSION, "starting atoll agent");

    tokio::pin!(shutdown);
    crate::link::files::recover(&config.tls).context("finishing an interrupted certificate write")?;
    // The gateway replicas, shared by every client of the gateway this replica builds: they
    // move to another replica together and learn the list from heartbeat answers together.
    let gateways = config.gateway.as_ref().map(|link| GatewayAddrs::new(&link.addrs));
    if let (Some(link), Some(gateways)) = (&config.gateway, &gateways)
        && !config.tls.cert.exists()
    {
        tokio::select! {
            enrolled = crate::link::enroll::enroll(&config, link, gateways) => enrolled?,
            () = &mut shutdown => {
                tracing::info!("shutdown requested while enrolling");
                return Ok(());
            }
        }
    }
    let tls = TlsIdentity::load(&config.tls).map_err(|e| {
        let hint = if config.gateway.is_some() && e.to_string().contains("expired") {
            " (to enroll again: remove tls.cert and tls.key and configure a new join token)"
        } else {
            ""
        };
        anyhow::anyhow!("loading TLS material: {e}{hint}")
    })?;
    let expected = Identity::node(config.cluster.clone(), config.node_id);
    if tls.identity() != &expected {
        anyhow::bail!(
            "certificate {} is for {}, but this replica is {expected} (check tls.cert, cluster.name and node.id)",
            config.tls.cert.display(),
            tls.identity()
        );
    }
    tracing::info!(identity = %tls.identity(), cert = %config.tls.cert.display(), "TLS material loaded");

    let data_dir = config.data_dir.clone();
    let cluster = config.cluster.to_string();
    let node_id = config.node_id;
    let (dir, log, state) = tokio::task::spawn_blocking(move || atoll_raft_store::open(&data_dir, &cluster, node_id))
        .await
        .context("opening the data directory")??;
    tracing::info!(
        data_dir = %dir.root().display(),
        incarnation = %dir.identity().incarnation,
        new = dir.created(),
        "data directory opened"
    );

    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("binding listen {}", config.listen))?;
    let ops_listener = match config.ops_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("binding ops_listen {addr}"))?),
        None => None,
    };

    let metrics = Arc::new(Metrics::new());
    let info = ReplicaInfo {
        cluster: config.cluster.clone(),
        node_id: config.node_id,
        addr: config.advertise.clone(),
        labels: config.labels.iter().map(|l| l.to_string()).collect(),
        incarnation: dir.identity().incarnation.clone(),
    };
    let started = raft::start(&config, &tls, info, log, state.clone(), metrics).await?;
    let replica = started.replica.clone();
    tracing::info!(
        heartbeat = ?config.timing.heartbeat,
        election = ?(config.timing.election_min, config.timing.election_max),
        fast_failover = config.fast_failover,
        "raft core started"
    );

    // Closed connections of this cluster's replicas feed the fast-failover watch.
    let (closed_tx, closed_rx) = mpsc::unbounded_channel::<u64>();
    let own_cluster = config.cluster.clone();
    let on_close: OnClose = Arc::new(move |identity: &Identity| {
        if let Identity::Node { cluster, node } = identity
            && *cluster == own_cluster
        {
            let _ = closed_tx.send(node.0);
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let blobs = atoll_store::Blobs::open(&config.storage).map_err(|e| anyhow::anyhow!("storage: {e}"))?;
    let blob_service =
        atoll_store::transfer::BlobService::new(blobs, crate::transfers::NodeGuard::new(config.cluster.clone(), &tls));
    let router = crate::api::with_envelope(
        crate::api::router(replica.clone())
            .merge(raft::rpc::router(raft::rpc::RpcState {
                raft: replica.raft.clone(),
                state: state.clone(),
                cluster: config.cluster.clone(),
                replica: replica.clone(),
            }))
            .merge(atoll_store::transfer::routes(blob_service.clone())),
    );
    let drain = config.shutdown_grace / 2;
    let mut server = tokio::spawn(atoll_api::serve::serve_mtls(
        listener,
        tls.server_config()?,
        router,
        atoll_api::serve::Hooks {
            on_close: Some(on_close),
            admit: Some(crate::admission::hook(
                config.cluster.clone(),
                config.refuse_inbound_from.clone(),
                replica.clone(),
            )),
            allow_anonymous: false,
        },
        stopped(stop_rx.clone()),
        drain,
    ));
    let ops = ops_listener.map(|listener| {
        tokio::spawn(atoll_api::serve::serve_ops(
            listener,
            crate::ops::router(replica.clone()),
            stopped(stop_rx.clone()),
        ))
    });
    tracing::info!(
        listen = %config.listen,
        advertise = %config.advertise,
        ops = ?config.ops_listen,
        "serving mTLS API and raft RPCs"
    );

    let bootstrapped = tokio::select! {
        result = raft::bootstrap_if_pristine(&config, &started, stop_rx.clone()) => result.map(|()| true),
        () = &mut shutdown => {
            tracing::info!("shutdown requested before the replica joined");
            Ok(false)
        }
    };
    let failure = match bootstrapped {
        Err(e) => Some(format!("{e:#}")),
        Ok(false) => None,
        Ok(true) => match join_mesh(&config, gateways, &replica, &tls, blob_service).await {
            Err(why) => Some(why),
            Ok(link) => {
                let failure = duties(&config, &replica, closed_rx, shutdown, &mut server).await;
                if let Some(link) = link {
                    link.abort();
                }
                failure
            }
        },
    };
    stop_in_order(&config, &replica, &stop_tx, server, ops, &state).await;
    match failure {
        None => {
            tracing::info!("stopped");
            Ok(())
        }
        Some(why) => {
            tracing::error!(reason = %why, "replica stopped on an error");
            Err(Stopped(why).into())
        }
    }
}

/// With a gateway configured (its replicas in `gateways`): set up the job executor and start
/// the gateway link.
async fn join_mesh(
    config: &AgentConfig,
    gateways: Option<GatewayAddrs>,
    replica: &Arc<crate::raft::Replica>,
    tls: &TlsIdentity,
    blobs: Arc<atoll_store::transfer::BlobService>,
) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
    let Some(gateways) = gateways else { return Ok(None) };
    let outputs = blobs.blobs().clone();
    match outputs.check().await {
        Ok(()) => tracing::info!(store = outputs.name(), "outputs are stored in {}", outputs.name()),
        // Not fatal: the store may come back; runs that end meanwhile end in error, saying why.
        Err(e) => tracing::warn!(error = %e, "the output store does not answer yet"),
    }
    let gateway = crate::link::gateway_client(tls, &gateways, crate::link::REQUEST_TIMEOUT)
        .map_err(|e| format!("the gateway client: {e:#}"))?;
    let failed = Arc::new(crate::transfers::FailedPeers::default());
    let own_store = matches!(config.storage, atoll_store::StorageConfig::Local { .. });
    let transfers = Arc::new(crate::transfers::Transfers::new(
        replica.clone(),
        own_store,
        blobs,
        tls.clone(),
        gateway,
        config.jobs.transfer_limit,
        failed.clone(),
    ));
    let executor = crate::jobs::executor::Executor::build(
        &config.jobs,
        config.data_dir.join("work"),
        outputs,
        &config.cluster,
        transfers.clone(),
        &config.tls.ca,
        hidden_from_jobs(config),
    )
    .await
    .map_err(|e| format!("jobs.executor: {e:#}"))?;
    tracing::info!(gateways = ?gateways.candidates(), "joining the mesh");
    let retention = crate::jobs::AbortOnDrop(tokio::spawn(crate::retention::run(
        replica.clone(),
        transfers.clone(),
        config.data_dir.join("work"),
        own_store,
    )));
    let pods = match &config.jobs.executor {
        crate::config::ExecutorConfig::Kubernetes(k) => {
            let uploads = config.data_dir.join("pod-uploads");
            Some(crate::pods::serve(k, tls, replica.clone(), transfers.clone(), uploads).await?)
        }
        crate::config::ExecutorConfig::Process => None,
    };
    let jobs = crate::link::Jobs { executor, max_running: config.jobs.max_running, transfers, failed };
    let link =
        crate::link::run(replica.clone(), tls.clone(), config.tls.clone(), config.tls_names.clone(), gateways, jobs);
    Ok(Some(tokio::spawn(async move {
        // Retention passes and the pod listener go on as long as the link does.
        let _retention = retention;
        let _pods = pods;
        link.await
    })))
}

type ServerTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// Run the replica's duties until shutdown is requested (`None`) or something fails.
async fn duties(
    config: &AgentConfig,
    replica: &Arc<raft::Replica>,
    closed: mpsc::UnboundedReceiver<u64>,
    shutdown: impl Future<Output = ()>,
    server: &mut ServerTask,
) -> Option<String> {
    let failover = config.fast_failover.then(|| tokio::spawn(raft::failover::run(replica.clone(), closed)));
    let mut watch = tokio::spawn(raft::watch::run(replica.clone()));
    let mut register = tokio::spawn(raft::register::run(replica.clone()));
    let mut registered = false;
    tokio::pin!(shutdown);
    let failure = loop {
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutdown requested");
                break None;
            }
            fatal = &mut watch => {
                let why = fatal.ok().flatten().unwrap_or_else(|| "unknown reason".into());
                break Some(format!("the raft core stopped: {why}"));
            }
            result = &mut register, if !registered => match result {
                Ok(Ok(())) => registered = true,
                Ok(Err(why)) => break Some(why),
                Err(e) => break Some(format!("incarnation registration task failed: {e}")),
            },
            ended = &mut *server => break Some(format!("the mTLS server ended: {ended:?}")),
        }
    };
    register.abort();
    watch.abort();
    if let Some(failover) = failover {
        failover.abort();
    }
    failure
}

async fn stop_in_order(
    config: &AgentConfig,
    replica: &Arc<raft::Replica>,
    stop_tx: &watch::Sender<bool>,
    server: ServerTask,
    ops: Option<ServerTask>,
    state: &atoll_raft_store::StateMachineStore,
) {
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    replica.mark_stopping();
    tracing::info!("shutdown: readiness off");
    replica.step_down_for_shutdown(Duration::from_secs(2).min(config.shutdown_grace / 3)).await;
    let _ = stop_tx.send(true);
    tracing::info!("shutdown: draining requests");
    // A task that already ended (and was awaited) must not be awaited again.
    if !server.is_finished() {
        let _ = tokio::time::timeout_at(deadline, server).await;
    }
    if let Some(ops) = ops.filter(|ops| !ops.is_finished()) {
        let _ = tokio::time::timeout_at(deadline, ops).await;
    }
    tracing::info!("shutdown: stopping the raft core");
    let _ = tokio::time::timeout_at(deadline, replica.raft.shutdown()).await;
    if let Err(e) = state.sync().await {
        tracing::warn!(error = %e, "making the state machine durable failed; it catches up from the log at the next start");
    }
}

/// What no job may see, should a system path hold it: the data directory (Raft state, stores,
/// other runs' work directories), the TLS files and the join token file.
fn hidden_from_jobs(config: &crate::config::AgentConfig) -> Vec<std::path::PathBuf> {
    let mut hidden =
        vec![config.data_dir.clone(), config.tls.ca.clone(), config.tls.cert.clone(), config.tls.key.clone()];
    if let Some(crate::config::GatewayLink { join_token: crate::config::JoinTokenSource::File(path), .. }) =
        &config.gateway
    {
        hidden.push(path.clone());
    }
    hidden.iter().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())).collect()
}
