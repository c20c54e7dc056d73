//! Everything that touches openraft: the core's configuration and start, the network, the RPC
//! endpoints, bootstrap, fast failover, and the [`Replica`] facade the rest of the node uses.
//!
//! - [`replica`]: status, proposals (forwarded to the leader), membership, leadership transfer.
//! - [`network`]: sending Raft RPCs (HTTP/2 over mTLS, per-RPC deadlines).
//! - [`rpc`]: receiving them (same-cluster replicas only, protocol version checked).
//! - [`bootstrap`]: what a replica with an empty log does (initialize, join, or refuse).
//! - [`failover`]: electing a successor at once when the leader's process dies.
//! - [`watch`]: metrics, leader-change log lines, fatal-error detection.
//! - [`register`]: recording this replica's incarnation in the replicated state.

pub mod bootstrap;
pub mod failover;
pub mod network;
pub mod register;
pub mod replica;
pub mod rpc;
pub mod watch;

use std::sync::Arc;

use anyhow::Context;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsIdentity;
use atoll_raft_store::LogStore;
use atoll_raft_store::StateMachineStore;
pub use replica::Leadership;
pub use replica::Replica;
pub use replica::ReplicaInfo;

use crate::config::AgentConfig;
use crate::metrics::Metrics;

/// The openraft configuration for `config`.
pub fn raft_config(config: &AgentConfig) -> anyhow::Result<openraft::Config> {
    let timing = config.timing;
    let raft = openraft::Config {
        cluster_name: config.cluster.to_string(),
        heartbeat_interval: timing.heartbeat.as_millis() as u64,
        election_timeout_min: timing.election_min.as_millis() as u64,
        election_timeout_max: timing.election_max.as_millis() as u64,
        install_snapshot_timeout: config.snapshot_timeout.as_millis() as u64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
        max_in_snapshot_log_to_keep: config.keep_entries_after_snapshot,
        // Lagging further than this gets a snapshot; must exceed the snapshot interval.
        replication_lag_threshold: config.snapshot_after_entries.saturating_mul(2),
        enable_pre_vote: Some(true),
        // A restarted leader must win an election like anyone else.
        enable_leader_restore: Some(false),
        backoff: "100ms 200ms ...1s".to_string(),
        // The log store makes appended entries readable before they are fsync'd; replicate them
        // at once, so the leader's disk sync and the followers' run in parallel.
        broadcast_submitted_on_append: Some(true),
        ..Default::default()
    };
    raft.validate().context("invalid raft timing")
}

/// A started Raft core with its facade.
pub struct Started {
    pub replica: Arc<Replica>,
    pub log: LogStore,
}

/// Start the Raft core over the opened stores. It does nothing until bootstrapped or contacted.
pub async fn start(
    config: &AgentConfig,
    tls: &TlsIdentity,
    info: ReplicaInfo,
    log: LogStore,
    state: StateMachineStore,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Started> {
    let raft_config = Arc::new(raft_config(config)?);
    let network = network::NetworkFactory::new(
        config.node_id,
        config.cluster.clone(),
        tls.clone(),
        config.append_timeout,
        metrics.clone(),
    );
    let raft = openraft::Raft::new(config.node_id, raft_config, network, log.clone(), state.clone())
        .await
        .context("starting the raft core")?;
    let peers = reqwest::Client::builder()
        .tls_backend_preconfigured(tls.client_config(ServerPolicy::NodeOf(config.cluster.clone()))?)
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(std::time::Duration::from_secs(2))
        .build()
        .context("building the peer client")?;
    let replica = Arc::new(Replica::new(raft, state, info, peers, config.write_timeout, metrics));
    Ok(Started { replica, log })
}

/// Bootstrap or join when this replica's log is empty; returns when decided.
pub async fn bootstrap_if_pristine(
    config: &AgentConfig,
    started: &Started,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if !started.log.is_pristine().context("reading the log")? {
        tracing::info!("log present; resuming");
        started.replica.mark_in_group();
        return Ok(());
    }
    let replica = &started.replica;
    let incarnation = replica.info().incarnation.clone();
    let mut attempts = 0u64;
    loop {
        let answers =
            bootstrap::ask_peers(&replica.peers, config.node_id, &config.peers, std::time::Duration::from_secs(1))
                .await;
        match bootstrap::decide(config.node_id, &incarnation, &config.peers, &answers) {
            bootstrap::Decision::Initialize => {
                let members: std::collections::BTreeMap<u64, atoll_raft_store::Member> =
                    config.peers.iter().map(|(id, addr)| (*id, atoll_raft_store::Member::new(addr))).collect();
                tracing::info!(voters = ?members.keys().collect::<Vec<_>>(), "bootstrapping the group");
                replica.mark_in_group();
                match replica.raft.initialize(members).await {
                    Ok(()) => return Ok(()),
                    // Another path got here first (a leader already replicated to us).
                    Err(openraft::errors::RaftError::APIError(openraft::errors::InitializeError::NotAllowed(_))) => {
                        return Ok(());
                    }
                    Err(e) => return Err(anyhow::anyhow!("bootstrapping the group failed: {e}")),
                }
            }
            bootstrap::Decision::Join => {
                tracing::info!("the group exists; waiting for the leader to replicate to this replica");
                replica.mark_in_group();
                return Ok(());
            }
            bootstrap::Decision::Refuse(why) => anyhow::bail!("refusing to start: {why}"),
            bootstrap::Decision::Wait(why) => {
                if attempts.is_multiple_of(10) {
                    tracing::info!(%why, "waiting for peers before bootstrapping");
                }
                attempts += 1;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = stop.changed() => anyhow::bail!("stopped while waiting for peers"),
        }
    }
}
