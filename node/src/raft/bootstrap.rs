//! Starting a replica whose data directory is empty: bootstrap the group, join it, or refuse.
//!
//! Every initial voter lists the same peers. A replica with an empty log asks its peers what
//! they know and decides:
//! - a peer has recorded an incarnation for this node id: this replica's data was wiped (or
//!   another replica uses its id). Its vote is lost, so rejoining under the same id could let it
//!   vote twice in one term: **refuse**; it must rejoin under a new id.
//! - a peer is initialized: the group exists; **join** and wait for the leader's replication
//!   (a late initial voter, or a new replica to be added with `atoll raft add`).
//! - a majority of the initial voters (this one included) answered and none is initialized:
//!   **initialize** with the configured voters (identical on every replica, so initializing on
//!   several of them is harmless).
//! - otherwise **wait** and ask again: nothing can happen without a majority anyway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::raft::rpc::BootstrapInfo;
use crate::raft::rpc::PROTOCOL_HEADER;
use crate::raft::rpc::PROTOCOL_VERSION;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Initialize,
    Join,
    Wait(String),
    Refuse(String),
}

/// Decide from the answers of peers (`id -> info`); `voters` are the configured initial voters.
pub fn decide(
    me: u64,
    incarnation: &str,
    voters: &BTreeMap<u64, String>,
    answers: &BTreeMap<u64, BootstrapInfo>,
) -> Decision {
    for (peer, info) in answers {
        if let Some(registered) = &info.registered_incarnation {
            let why = if registered == incarnation {
                format!(
                    "node {peer} says this replica (node {me}, incarnation {registered}) already joined the group, but its log is empty: its data was lost"
                )
            } else {
                format!(
                    "node {peer} has node id {me} recorded for incarnation {registered}, and this data directory is a new one (incarnation {incarnation}): a wiped replica, or two replicas configured with the same id"
                )
            };
            return Decision::Refuse(format!(
                "{why}. A replica that lost its data must rejoin under a new id (atoll raft remove {me}; give it a new node.id and an empty data_dir; atoll raft add)"
            ));
        }
    }
    if answers.values().any(|info| info.initialized) {
        return Decision::Join;
    }
    if !voters.contains_key(&me) {
        return Decision::Join;
    }
    let answered = 1 + answers.keys().filter(|id| voters.contains_key(id) && **id != me).count();
    let majority = voters.len() / 2 + 1;
    if answered >= majority {
        Decision::Initialize
    } else {
        Decision::Wait(format!(
            "{answered} of {} initial voters reachable, {majority} needed to bootstrap",
            voters.len()
        ))
    }
}

/// Ask every peer once (concurrently, with a deadline).
pub(crate) async fn ask_peers(
    peers: &reqwest::Client,
    me: u64,
    voters: &BTreeMap<u64, String>,
    timeout: Duration,
) -> BTreeMap<u64, BootstrapInfo> {
    let peers = Arc::new(peers.clone());
    let asks = voters.iter().filter(|(id, _)| **id != me).map(|(id, addr)| {
        let peers = peers.clone();
        let url = format!("https://{addr}/raft/v1/bootstrap");
        let id = *id;
        async move {
            let response =
                peers.get(url).header(PROTOCOL_HEADER, PROTOCOL_VERSION).timeout(timeout).send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let info: BootstrapInfo = response.json().await.ok()?;
            Some((id, info))
        }
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters() -> BTreeMap<u64, String> {
        (1..=3).map(|i| (i, format!("127.0.0.1:{i}"))).collect()
    }

    fn info(initialized: bool, registered: Option<&str>) -> BootstrapInfo {
        BootstrapInfo { initialized, registered_incarnation: registered.map(str::to_string) }
    }

    #[test]
    fn a_majority_of_fresh_voters_bootstraps() {
        let answers = BTreeMap::from([(2, info(false, None))]);
        assert_eq!(decide(1, "a", &voters(), &answers), Decision::Initialize);
    }

    #[test]
    fn alone_it_waits() {
        let decision = decide(1, "a", &voters(), &BTreeMap::new());
        assert!(matches!(decision, Decision::Wait(ref why) if why.contains("1 of 3")), "{decision:?}");
    }

    #[test]
    fn an_existing_group_is_joined() {
        let answers = BTreeMap::from([(2, info(true, None))]);
        assert_eq!(decide(3, "c", &voters(), &answers), Decision::Join);
        // A replica that is not an initial voter never bootstraps: it waits to be added.
        let answers = BTreeMap::from([(1, info(false, None)), (2, info(false, None)), (3, info(false, None))]);
        assert_eq!(decide(4, "d", &voters(), &answers), Decision::Join);
    }

    #[test]
    fn a_wiped_replica_is_refused() {
        let answers = BTreeMap::from([(2, info(true, Some("old")))]);
        match decide(1, "new", &voters(), &answers) {
            Decision::Refuse(why) => {
                assert!(why.contains("incarnation old"), "{why}");
                assert!(why.contains("rejoin under a new id"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let answers = BTreeMap::from([(2, info(true, Some("same")))]);
        assert!(
            matches!(decide(1, "same", &voters(), &answers), Decision::Refuse(ref why) if why.contains("data was lost"))
        );
    }
}
