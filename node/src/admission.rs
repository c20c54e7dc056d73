//! Which verified peers a replica serves.
//!
//! Replicas of a cluster that is revoked (as the gateway last told the leader, replicated to
//! every replica) or that this cluster refuses (`network.refuse_inbound_from`, plus the
//! annotation `atoll.io/refuse-inbound-from`) have their connections dropped on accept, as a
//! firewall would: they see a closed connection, not an answer. Everyone else is served and
//! then authorized per request.

use std::sync::Arc;

use atoll_api::Identity;
use atoll_api::ids::ClusterName;
use atoll_api::serve::Admit;

use crate::raft::Replica;

/// The annotation that adds refused clusters at run time (comma-separated names).
pub const REFUSE_ANNOTATION: &str = "atoll.io/refuse-inbound-from";

/// Decide about one peer (pure): `refused` from config and annotation, `revoked` from the
/// replicated mesh view.
pub fn decide(own: &ClusterName, peer: &Identity, refused: &[String], revoked: &[String]) -> Result<(), String> {
    let Identity::Node { cluster, .. } = peer else { return Ok(()) };
    if cluster == own {
        return Ok(());
    }
    if revoked.iter().any(|r| r == cluster.as_str()) {
        return Err(format!("cluster {cluster} is revoked"));
    }
    if refused.iter().any(|r| r == cluster.as_str()) {
        return Err(format!(
            "refusing inbound connections from cluster {cluster} (network.refuse_inbound_from / {REFUSE_ANNOTATION})"
        ));
    }
    Ok(())
}

/// The admission hook of a replica's server.
pub fn hook(own: ClusterName, configured: Vec<ClusterName>, replica: Arc<Replica>) -> Admit {
    Arc::new(move |peer: &Identity| {
        if !matches!(peer, Identity::Node { cluster, .. } if *cluster != own) {
            return Ok(());
        }
        let mut refused: Vec<String> = configured.iter().map(|c| c.to_string()).collect();
        if let Some(extra) = replica.annotation(REFUSE_ANNOTATION) {
            refused.extend(extra.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
        }
        decide(&own, peer, &refused, &replica.mesh_view().revoked)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_and_revoked_clusters_are_dropped_others_served() {
        let own: ClusterName = "onprem".parse().unwrap();
        let node = |c: &str| Identity::node(c.parse().unwrap(), 1);
        let refused = vec!["aws".to_string()];
        let revoked = vec!["bad".to_string()];
        assert!(decide(&own, &node("onprem"), &refused, &revoked).is_ok(), "own replicas always");
        assert!(decide(&own, &node("gcp"), &refused, &revoked).is_ok());
        assert!(decide(&own, &node("aws"), &refused, &revoked).unwrap_err().contains("refusing inbound"));
        assert!(decide(&own, &node("bad"), &refused, &revoked).unwrap_err().contains("revoked"));
        assert!(decide(&own, &Identity::Gateway { id: "g".into() }, &refused, &revoked).is_ok());
        assert!(decide(&own, &Identity::Operator { name: "a".into() }, &refused, &revoked).is_ok());
    }
}
