//! `atoll verify`: check a live deployment from the operator's seat, without changing it —
//! the gateway and its CA, every cluster's leader as the gateway and the replicas themselves see
//! it, every replica's certificate, every directed pair of the matrix and how fresh it is — and,
//! with `--disruptive`, kill one leader and measure how long its cluster is without one.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use atoll_api::gateway::ClusterInfo;
use atoll_api::gateway::ClusterState;
use atoll_api::gateway::LinkState;
use atoll_api::ids::ClusterName;
use atoll_api::ids::Term;
use atoll_api::node::NodeStatus;
use atoll_api::node::Role;
use atoll_api::tls::ServerPolicy;
use serde::Serialize;
use time::OffsetDateTime;

use crate::cli_config::CliConfig;
use atoll_mesh::NodeRecord;

/// How long one probe of a replica may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
}

/// The failover `--disruptive` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    pub cluster: ClusterName,
    /// `kill` (SIGKILL of the leader's process) or `handover` (a leadership transfer, when the
    /// process cannot be reached from here).
    pub how: String,
    pub old_leader: u64,
    pub old_term: Term,
    pub new_leader: Option<u64>,
    pub new_term: Option<Term>,
    /// From the fault to the first replica answering as leader of a later term.
    pub ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
}

struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, check: impl Into<String>, status: Status, detail: impl Into<String>) {
        self.0.push(Check { check: check.into(), status, detail: detail.into() });
    }
}

pub struct Options {
    pub json: bool,
    pub disruptive: bool,
    pub cluster: Option<String>,
    pub nodes: Option<PathBuf>,
}

pub async fn run(config: &CliConfig, config_path: Option<&Path>, options: Options) -> anyhow::Result<()> {
    let mut checks = Checks(Vec::new());
    let gateway = config.gateway_client()?;
    let now = OffsetDateTime::now_utc();

    match gateway.ca().await {
        Ok(ca) => match atoll_api::pki::validity(&ca.ca) {
            Ok((_, not_after)) if not_after > now => checks.add(
                "gateway",
                Status::Ok,
                format!(
                    "serves; CA {} valid until {}",
                    &ca.fingerprint[..16.min(ca.fingerprint.len())],
                    when(not_after)
                ),
            ),
            Ok((_, not_after)) => checks.add("gateway", Status::Fail, format!("the CA expired at {}", when(not_after))),
            Err(e) => checks.add("gateway", Status::Fail, format!("unreadable CA certificate: {e}")),
        },
        Err(e) => checks.add("gateway", Status::Fail, format!("does not answer: {e}")),
    }
    if let Some(cert) = config.tls.as_ref().and_then(|t| t.cert.as_ref()) {
        let status =
            std::fs::read_to_string(cert).map_err(|e| e.to_string()).and_then(|pem| atoll_api::pki::validity(&pem));
        certificate(&mut checks, "operator certificate", status, now);
    }

    let clusters = match gateway.clusters().await {
        Ok(clusters) => clusters,
        Err(e) => {
            checks.add("clusters", Status::Fail, format!("the gateway did not list them: {e}"));
            Vec::new()
        }
    };
    let identity = config.operator_identity()?;
    let tls = identity.client_config(ServerPolicy::AnyNode)?;
    let node = atoll_api::client::NodeClient::new(&identity, ServerPolicy::AnyNode, PROBE_TIMEOUT)?;
    for cluster in clusters.iter().filter(|c| !c.revoked) {
        leader_check(&mut checks, &node, cluster).await;
        for replica in &cluster.replicas {
            let name = format!("certificate {}-{}", cluster.name, replica.id);
            let validity = atoll_api::tls::peer_certificate(tls.clone(), &replica.addr, PROBE_TIMEOUT)
                .await
                .and_then(|der| atoll_api::pki::validity_der(&der));
            match validity {
                Err(e) => checks.add(name, Status::Warn, format!("not reachable from here: {e}")),
                ok => certificate(&mut checks, &name, ok, now),
            }
        }
    }

    match gateway.matrix().await {
        Ok(matrix) => {
            for cell in &matrix.cells {
                let back = matrix.cells.iter().find(|b| b.from == cell.to && b.to == cell.from);
                let (status, detail) = match cell.state {
                    LinkState::Reachable => {
                        (Status::Ok, format!("reachable, {:.1} ms", cell.rtt_ms.unwrap_or_default()))
                    }
                    LinkState::Suspect => (Status::Warn, "suspect: probes are failing".to_string()),
                    LinkState::Unreachable if back.is_some_and(|b| b.state == LinkState::Reachable) => {
                        (Status::Ok, "unreachable; the other direction works, so transfers are direct".to_string())
                    }
                    LinkState::Unreachable => {
                        (Status::Warn, "unreachable both ways: transfers are relayed".to_string())
                    }
                    LinkState::Unknown => {
                        (Status::Fail, "unknown: its reporter has been silent past the bound".to_string())
                    }
                };
                let age = cell.age_ms.map(|a| format!(" (measured {a} ms ago)")).unwrap_or_default();
                checks.add(format!("link {}->{}", cell.from, cell.to), status, format!("{detail}{age}"));
            }
            let stale: Vec<String> = matrix
                .cells
                .iter()
                .filter(|c| c.state == LinkState::Unknown)
                .map(|c| format!("{}->{}", c.from, c.to))
                .collect();
            let oldest = matrix.cells.iter().filter_map(|c| c.age_ms).max().unwrap_or_default();
            match stale.is_empty() {
                true => {
                    checks.add("matrix freshness", Status::Ok, format!("every pair measured, oldest {oldest} ms ago"))
                }
                false => checks.add("matrix freshness", Status::Fail, format!("stale: {}", stale.join(", "))),
            }
        }
        Err(e) => checks.add("matrix", Status::Fail, format!("the gateway did not answer: {e}")),
    }

    let failover = if options.disruptive {
        let nodes = options.nodes.clone().or_else(|| {
            let dir = config_path.and_then(Path::parent).unwrap_or(Path::new("."));
            Some(dir.join("nodes.json")).filter(|p| p.exists())
        });
        let measured = disrupt(&node, &clusters, options.cluster.as_deref(), nodes.as_deref()).await;
        match &measured {
            Ok(f) if f.ms.is_some() => checks.add(
                format!("failover {}", f.cluster),
                Status::Ok,
                format!(
                    "{} of leader {} (term {}): replica {} leads term {} after {} ms",
                    f.how,
                    f.old_leader,
                    f.old_term,
                    f.new_leader.unwrap_or_default(),
                    f.new_term.unwrap_or_default(),
                    f.ms.unwrap_or_default()
                ),
            ),
            Ok(f) => checks.add(
                format!("failover {}", f.cluster),
                Status::Fail,
                format!("no new leader within 30 s of the {}", f.how),
            ),
            Err(e) => checks.add("failover", Status::Fail, format!("{e:#}")),
        }
        measured.ok()
    } else {
        None
    };

    let ok = checks.0.iter().all(|c| c.status != Status::Fail);
    let report = Report { ok, checks: checks.0, failover };
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let width = report.checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
        for c in &report.checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            println!("{mark}  {:width$}  {}", c.check, c.detail);
        }
        let warned = report.checks.iter().filter(|c| c.status == Status::Warn).count();
        let failed = report.checks.iter().filter(|c| c.status == Status::Fail).count();
        println!("{} checks: {failed} failed, {warned} warnings", report.checks.len());
    }
    anyhow::ensure!(report.ok, "verify: some checks failed");
    Ok(())
}

/// A certificate's validity: failed when expired, warned when past the two-thirds of its life
/// at which its holder renews it.
fn certificate(
    checks: &mut Checks,
    name: &str,
    validity: Result<(OffsetDateTime, OffsetDateTime), String>,
    now: OffsetDateTime,
) {
    match validity {
        Err(e) => checks.add(name, Status::Fail, format!("unreadable: {e}")),
        Ok((_, not_after)) if not_after <= now => {
            checks.add(name, Status::Fail, format!("expired at {}", when(not_after)))
        }
        Ok((not_before, not_after)) => {
            let renew_at = not_before + (not_after - not_before) * 2 / 3 + time::Duration::minutes(5);
            let left = not_after - now;
            let left = if left.whole_days() >= 2 {
                format!("{} days", left.whole_days())
            } else {
                format!("{} h {} min", left.whole_hours(), left.whole_minutes() % 60)
            };
            if now > renew_at {
                checks.add(name, Status::Warn, format!("renewal overdue: {left} left (until {})", when(not_after)));
            } else {
                checks.add(name, Status::Ok, format!("valid until {} ({left} left)", when(not_after)));
            }
        }
    }
}

/// A time as RFC 3339 (what the CLI prints for a moment).
pub(crate) fn when(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// The cluster has one leader: the one the gateway registered, at the term it registered, and
/// every replica reachable from here agrees.
async fn leader_check(checks: &mut Checks, node: &atoll_api::client::NodeClient, cluster: &ClusterInfo) {
    let name = format!("leader {}", cluster.name);
    if !cluster.enabled {
        checks.add(name, Status::Warn, "disabled: takes no new work");
        return;
    }
    let Some(leader) = cluster.leader else {
        checks.add(name, Status::Fail, format!("no leader registered (state {})", cluster.state));
        return;
    };
    if cluster.state != ClusterState::Alive {
        checks.add(name, Status::Fail, format!("{}: last heartbeat {:?} ms ago", cluster.state, cluster.last_seen_ms));
        return;
    }
    let mut statuses: Vec<(u64, Result<NodeStatus, String>)> = Vec::new();
    for replica in &cluster.replicas {
        statuses.push((replica.id, node.status(&replica.addr).await.map_err(|e| e.to_string())));
    }
    let answered: Vec<&NodeStatus> = statuses.iter().filter_map(|(_, s)| s.as_ref().ok()).collect();
    let unreachable: Vec<String> = statuses.iter().filter(|(_, s)| s.is_err()).map(|(id, _)| id.to_string()).collect();
    let leaders: Vec<u64> = answered.iter().filter(|s| s.role == Role::Leader).map(|s| s.node_id).collect();
    let disagree: Vec<String> = answered
        .iter()
        .filter(|s| s.leader.as_ref().map(|l| l.id) != Some(leader))
        .map(|s| format!("{} says {:?}", s.node_id, s.leader.as_ref().map(|l| l.id)))
        .collect();
    let term = answered.iter().find(|s| s.node_id == leader).map(|s| s.term);
    let detail = format!(
        "replica {leader} at term {} ({} of {} replicas answered{})",
        cluster.term,
        answered.len(),
        cluster.replicas.len(),
        if unreachable.is_empty() {
            String::new()
        } else {
            format!("; not reachable from here: {}", unreachable.join(", "))
        }
    );
    if answered.is_empty() {
        checks.add(name, Status::Warn, format!("registered: {detail}"));
    } else if leaders.len() > 1 || !disagree.is_empty() {
        checks.add(name, Status::Fail, format!("replicas disagree: leaders {leaders:?}; {}", disagree.join(", ")));
    } else if term.is_some_and(|t| t != cluster.term) {
        checks.add(
            name,
            Status::Fail,
            format!("the gateway registered term {}, the leader is at {:?}", cluster.term, term.map(|t| t.0)),
        );
    } else {
        checks.add(name, Status::Ok, detail);
    }
}

/// Kill (or, without its pid, hand over) one cluster's leader and time the election.
async fn disrupt(
    node: &atoll_api::client::NodeClient,
    clusters: &[ClusterInfo],
    cluster: Option<&str>,
    nodes: Option<&Path>,
) -> anyhow::Result<Failover> {
    let target = match cluster {
        Some(name) => clusters.iter().find(|c| c.name == name).with_context(|| format!("no cluster {name}"))?,
        None => clusters
            .iter()
            .find(|c| c.state == ClusterState::Alive && c.leader.is_some() && c.replicas.len() > 1)
            .context("no alive cluster with a leader and more than one replica")?,
    };
    anyhow::ensure!(target.replicas.len() > 1, "cluster {} has one replica: nothing would take over", target.name);
    let old_leader = target.leader.with_context(|| format!("cluster {} has no leader", target.name))?;
    let leader_addr = &target.replicas.iter().find(|r| r.id == old_leader).context("leader not among replicas")?.addr;
    let old_term = node.status(leader_addr).await.map(|s| s.term).unwrap_or(target.term);
    let pid = match nodes {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let records: Vec<NodeRecord> =
                serde_json::from_str(&text).with_context(|| format!("{}: not a nodes.json", path.display()))?;
            records.into_iter().find(|r| r.cluster == target.name && r.node_id == old_leader).and_then(|r| r.pid)
        }
        None => None,
    };
    let started = Instant::now();
    let how = match pid {
        Some(pid) => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)
                .with_context(|| format!("killing {}-{old_leader} (pid {pid})", target.name))?;
            "kill"
        }
        None => {
            node.transfer_leader(leader_addr, None).await.context("asking the leader to hand over")?;
            "handover"
        }
    };
    let others: Vec<&str> = target.replicas.iter().filter(|r| r.id != old_leader).map(|r| r.addr.as_str()).collect();
    let deadline = started + Duration::from_secs(30);
    while Instant::now() < deadline {
        for addr in &others {
            if let Ok(status) = node.status(addr).await
                && status.role == Role::Leader
                && status.term > old_term
            {
                return Ok(Failover {
                    cluster: target.name.clone(),
                    how: how.into(),
                    old_leader,
                    old_term,
                    new_leader: Some(status.node_id),
                    new_term: Some(status.term),
                    ms: Some(started.elapsed().as_millis() as u64),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Failover {
        cluster: target.name.clone(),
        how: how.into(),
        old_leader,
        old_term,
        new_leader: None,
        new_term: None,
        ms: None,
    })
}
