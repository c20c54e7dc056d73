//! What a cluster's leader does toward the gateway, for one term:
//!
//! - **heartbeat** every heartbeat interval: the registration (term, leader, endpoint, labels,
//!   replicas) in one idempotent request; the answer is the mesh view (other clusters, revoked
//!   ones) when it changed since the revision the leader holds, the intervals to use, and the
//!   gateway replicas alive now, which every client of the gateway on this replica then tries
//!   (a replica added after the agent started is used when the one in use fails). A
//!   changed view is replicated through Raft, so followers
//!   (and the next leader) know it.
//! - **probe** every other cluster's endpoint every probe interval, over a fresh mTLS connection
//!   each time (a connection the target refuses counts as a failure, as a firewall would make
//!   it), feeding one [`Link`] detector per peer;
//! - **report** the whole row at once when any link changes state, and every row interval.
//!
//! The gateway fences by term: `stale_leader` (409) means a newer leader registered, so this one
//! stops acting (the duties end with [`DutyEnd::Fenced`] and are not restarted for this term).
//! `revoked` (403) means the cluster was revoked. Any other failure (the gateway unreachable) changes nothing: the
//! cluster keeps running and the duties keep trying.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use atoll_api::ErrorCode;
use atoll_api::Identity;
use atoll_api::client::ClientError;
use atoll_api::gateway::Heartbeat;
use atoll_api::gateway::HeartbeatAck;
use atoll_api::gateway::LinkState;
use atoll_api::gateway::ReplicaInfo;
use atoll_api::gateway::RowCell;
use atoll_api::gateway::RowReport;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::ids::Term;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsIdentity;
use atoll_raft_store::MeshPeer;
use atoll_raft_store::MeshView;
use tokio::time::Instant;

pub use crate::duty::DutyEnd;
use crate::duty::ended_by;
use crate::raft::Replica;
use crate::reachability::Link;
use crate::reachability::Thresholds;

/// The intervals the gateway asked for.
#[derive(Clone, Copy, Debug)]
struct Settings {
    heartbeat: Duration,
    probe: Duration,
    probe_timeout: Duration,
    row: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            probe: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            row: Duration::from_secs(10),
        }
    }
}

impl Settings {
    fn from_ack(ack: &HeartbeatAck) -> Self {
        let ms = |v: u64, default: Duration| if v == 0 { default } else { Duration::from_millis(v) };
        let d = Settings::default();
        Self {
            heartbeat: ms(ack.heartbeat_interval_ms, d.heartbeat),
            probe: ms(ack.probe_interval_ms, d.probe),
            probe_timeout: ms(ack.probe_timeout_ms, d.probe_timeout),
            row: ms(ack.row_interval_ms, d.row),
        }
    }
}

/// Probes other clusters: one HTTP client per target cluster (accepting only that cluster's
/// replicas), never reusing a connection.
pub struct Prober {
    tls: TlsIdentity,
    clients: Mutex<BTreeMap<String, reqwest::Client>>,
    /// Peers a transfer failed to reach: each counts as one failed probe.
    failed: Arc<crate::transfers::FailedPeers>,
}

impl Prober {
    pub fn new(tls: TlsIdentity, failed: Arc<crate::transfers::FailedPeers>) -> Self {
        Self { tls, clients: Mutex::new(BTreeMap::new()), failed }
    }

    fn client(&self, cluster: &str) -> Option<reqwest::Client> {
        let mut clients = self.clients.lock().expect("prober clients");
        if let Some(client) = clients.get(cluster) {
            return Some(client.clone());
        }
        let policy = ServerPolicy::NodeOf(cluster.parse().ok()?);
        let config = self.tls.client_config(policy).ok()?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(0)
            .build()
            .ok()?;
        clients.insert(cluster.to_string(), client.clone());
        Some(client)
    }

    /// One probe: `Some(rtt)` when the peer answered over mTLS in time.
    ///
    /// The round-trip time is that of a TCP handshake to the endpoint (one network round trip),
    /// not of the mTLS exchange, whose key agreement and signatures would count CPU time as
    /// distance. Reachability is decided by the mTLS exchange alone.
    pub async fn probe(&self, peer: &MeshPeer, timeout: Duration) -> Option<Duration> {
        let client = self.client(&peer.name)?;
        let started = Instant::now();
        let rtt = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&peer.endpoint)).await {
            Ok(Ok(stream)) => {
                let rtt = started.elapsed();
                drop(stream);
                rtt
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer.name, error = %e, "probe: TCP connect failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(peer = %peer.name, "probe: TCP connect timed out");
                return None;
            }
        };
        let left = timeout.saturating_sub(started.elapsed());
        let answer = client.get(format!("https://{}/v1/probe", peer.endpoint)).timeout(left).send().await;
        match answer {
            Ok(response) if response.status().is_success() => Some(rtt),
            Ok(response) => {
                tracing::debug!(peer = %peer.name, status = %response.status(), "probe answered with an error");
                None
            }
            Err(e) => {
                tracing::debug!(peer = %peer.name, error = %atoll_api::client::error_chain(&e), "probe failed");
                None
            }
        }
    }
}

fn view_from(view: &atoll_api::gateway::MeshView) -> MeshView {
    let mut peers: Vec<MeshPeer> = view
        .peers
        .iter()
        .map(|p| MeshPeer { name: p.name.to_string(), endpoint: p.endpoint.clone(), labels: p.labels.clone() })
        .collect();
    peers.sort();
    let mut revoked = view.revoked.clone();
    revoked.sort();
    MeshView { peers, revoked }
}

/// This cluster's row of the matrix: a cell for every peer of the view, `unknown` until probed.
fn row(view: &MeshView, links: &BTreeMap<String, Link>) -> Vec<RowCell> {
    view.peers
        .iter()
        .map(|p| {
            links
                .get(&p.name)
                .map_or(RowCell { to: p.name.clone(), state: LinkState::Unknown, rtt_ms: None, loss: 0.0 }, |l| {
                    l.cell(&p.name)
                })
        })
        .collect()
}

/// Log a failure to reach the gateway at most every 10 s.
struct Quiet(Option<Instant>);

impl Quiet {
    fn warn(&mut self, what: &str, error: &ClientError) {
        if self.0.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
            tracing::warn!(error = %error, "{what} failed; the cluster keeps running and will retry");
            self.0 = Some(Instant::now());
        }
    }
}

/// Lead toward the gateway for `term`, until fenced, revoked, or cancelled.
/// `capabilities`: what this cluster's executor runs, said in every heartbeat.
pub async fn lead(
    replica: Arc<Replica>,
    gateway: GatewayClient,
    prober: Arc<Prober>,
    capabilities: atoll_api::spec::Capabilities,
    term: Term,
) -> DutyEnd {
    let info = replica.info().clone();
    let cluster = info.cluster.to_string();
    let thresholds = Thresholds::default();
    let mut settings = Settings::default();
    let mut view = replica.mesh_view();
    // None: ask for the whole view at the first heartbeat of the term.
    let mut view_revision: Option<u64> = None;
    let mut links: BTreeMap<String, Link> = BTreeMap::new();
    let mut registered = false;
    let mut quiet = Quiet(None);
    let now = Instant::now();
    let (mut next_heartbeat, mut next_probe, mut next_row) = (now, now, now + settings.row);
    tracing::info!(term = term.0, gateway = %gateway.addr(), "leading toward the gateway");
    loop {
        let wake = next_heartbeat.min(if registered { next_probe.min(next_row) } else { next_heartbeat });
        tokio::time::sleep_until(wake).await;
        let now = Instant::now();
        if now >= next_heartbeat {
            next_heartbeat = now + settings.heartbeat;
            let heartbeat = Heartbeat {
                term,
                leader_id: info.node_id,
                endpoint: info.addr.clone(),
                labels: info.labels.clone(),
                replicas: replica
                    .members()
                    .into_iter()
                    .map(|m| ReplicaInfo { id: m.id, addr: m.addr, voter: m.voter })
                    .collect(),
                view_revision,
                capabilities: Some(capabilities.clone()),
            };
            match gateway.heartbeat(&cluster, &heartbeat).await {
                Ok(ack) => {
                    if !registered {
                        tracing::info!(term = term.0, "registered with the gateway");
                    }
                    registered = true;
                    settings = Settings::from_ack(&ack);
                    // The replicas alive now: every client of the gateway here tries these.
                    gateway.learn(&ack.gateways);
                    // The view comes only when it changed since the revision sent.
                    if let Some(sent) = &ack.view {
                        let fresh = view_from(sent);
                        if fresh == view {
                            view_revision = Some(ack.view_revision);
                        } else if let Err(e) = replica.set_mesh_view(fresh.clone()).await {
                            tracing::warn!(error = %e.message, "replicating the mesh view failed; will retry");
                        } else {
                            tracing::info!(peers = fresh.peers.len(), revoked = ?fresh.revoked, "mesh view updated");
                            view = fresh;
                            view_revision = Some(ack.view_revision);
                        }
                    }
                    links.retain(|name, _| view.peers.iter().any(|p| &p.name == name));
                }
                Err(e) => match ended_by(&e, term) {
                    Some(end) => return end,
                    None => quiet.warn("heartbeat to the gateway", &e),
                },
            }
        }
        if !registered {
            continue;
        }
        let mut changed = false;
        if now >= next_probe {
            next_probe = now + settings.probe;
            let outcomes = futures::future::join_all(view.peers.iter().map(|peer| {
                let prober = prober.clone();
                let timeout = settings.probe_timeout;
                async move { (peer.name.clone(), prober.probe(peer, timeout).await) }
            }))
            .await;
            // A transfer that failed to reach a peer is a failed probe too, seen first.
            let failed = prober.failed.take().into_iter().map(|name| (name, None));
            for (name, outcome) in failed.chain(outcomes) {
                let link = links.entry(name.clone()).or_default();
                if link.observe(outcome, &thresholds) {
                    tracing::info!(peer = %name, state = %link.state(), "link state changed");
                    changed = true;
                }
            }
        }
        if changed || now >= next_row {
            next_row = now + settings.row;
            let cells = row(&view, &links);
            if let Err(e) = gateway.report_row(&cluster, &RowReport { term, cells }).await {
                match ended_by(&e, term) {
                    Some(end) => return end,
                    // The gateway does not know this term (its database was replaced, say):
                    // register again at once.
                    None if e.code() == Some(ErrorCode::Conflict) => {
                        registered = false;
                        next_heartbeat = now;
                    }
                    None => quiet.warn("reporting the matrix row", &e),
                }
            }
        }
    }
}

/// The identity of this replica (for renewal).
pub fn identity(replica: &Replica) -> Identity {
    Identity::node(replica.info().cluster.clone(), replica.info().node_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateways_intervals_apply_and_zero_keeps_the_default() {
        let ack: HeartbeatAck = serde_json::from_value(serde_json::json!({
            "heartbeat_interval_ms": 250,
            "probe_interval_ms": 0,
            "probe_timeout_ms": 100,
            "row_interval_ms": 0,
            "view_revision": 0,
        }))
        .expect("an ack");
        let s = Settings::from_ack(&ack);
        let d = Settings::default();
        assert_eq!((s.heartbeat, s.probe_timeout), (Duration::from_millis(250), Duration::from_millis(100)));
        assert_eq!((s.probe, s.row), (d.probe, d.row), "zero: the default");
    }

    #[test]
    fn the_view_is_kept_sorted_and_the_row_has_a_cell_per_peer() {
        let sent: atoll_api::gateway::MeshView = serde_json::from_value(serde_json::json!({
            "peers": [
                {"name": "gcp", "endpoint": "gcp:7100", "labels": []},
                {"name": "aws", "endpoint": "aws:7100", "labels": []},
            ],
            "revoked": ["z", "b"],
        }))
        .expect("a view");
        let view = view_from(&sent);
        assert_eq!(view.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["aws", "gcp"]);
        assert_eq!(view.revoked, ["b", "z"]);
        let cells = row(&view, &BTreeMap::new());
        assert_eq!(cells.len(), 2);
        assert!(cells.iter().all(|c| c.state == LinkState::Unknown && c.rtt_ms.is_none()), "not probed yet");
        assert_eq!(cells[0].to, "aws");
    }
}
