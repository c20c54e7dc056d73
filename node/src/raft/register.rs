//! Record this replica's incarnation in the replicated state once it has joined, so that a
//! wiped replica coming back under the same id is recognised (see [`super::bootstrap`]).

use std::sync::Arc;
use std::time::Duration;

use atoll_raft_store::Command;
use atoll_raft_store::CommandResponse;

use crate::raft::Replica;

/// Returns once recorded, or with an error when the group already holds another incarnation
/// for this node id (two replicas share an id): the replica must stop.
pub(crate) async fn run(replica: Arc<Replica>) -> Result<(), String> {
    let me = replica.info().node_id;
    let incarnation = replica.info().incarnation.clone();
    let mut delay = Duration::from_millis(100);
    loop {
        let m = replica.metrics_snapshot();
        let joined = m.current_leader.is_some()
            && m.last_applied.is_some()
            && m.membership_config.membership().get_node(&me).is_some();
        if joined {
            match replica.state.replicas().map(|r| r.get(&me).cloned()) {
                Ok(Some(record)) if record.incarnation == incarnation => return Ok(()),
                Ok(Some(record)) => {
                    return Err(format!(
                        "the group records node id {me} for incarnation {}, not this replica's {incarnation}: two replicas share an id",
                        record.incarnation
                    ));
                }
                Ok(None) => {
                    let command = Command::RegisterReplica { node_id: me, incarnation: incarnation.clone() };
                    match replica.propose(command).await {
                        Ok(CommandResponse::ReplicaRegistered { .. }) => {
                            tracing::info!(%incarnation, "incarnation recorded");
                            return Ok(());
                        }
                        Ok(CommandResponse::Refused { reason }) => return Err(reason),
                        Ok(other) => tracing::warn!(?other, "unexpected answer while recording the incarnation"),
                        Err(e) => tracing::debug!(error = %e.message, "recording the incarnation failed; will retry"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading replica records failed"),
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
