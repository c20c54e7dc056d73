//! Fast failover after a leader's process dies.
//!
//! Raft makes followers wait out the leader's lease (`election_timeout_max`) plus a random
//! timeout before they campaign; that is the right answer to silence, which may be a pause or a
//! partition. A crashed process is different and visible at once: the kernel closes its
//! connections, and a reconnect to its port is refused. When a follower sees its leader's
//! connection close, it tries to reconnect; only a *refused* reconnect confirms the death (a
//! pause, a partition or a connection recycled by an idle timeout do not refuse). Then it does
//! what the dead leader would have done in an orderly hand-over: it asks the surviving voters
//! for their last log ids, picks the most up-to-date one, and sends every survivor a
//! leadership-transfer request built from the dead leader's vote. The survivors drop the dead
//! leader's lease and the chosen one campaigns at once; its vote requests are marked as a
//! leadership transfer, so the other survivors grant them inside the lease.
//!
//! Safety does not depend on the detection: the request is fenced by the dead leader's exact
//! vote (a replica that has moved on ignores it), and the election is an ordinary Raft election.
//! A false alarm costs one needless election, never consistency.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use atoll_api::client::error_chain;
use atoll_raft_store::types::LogId;
use atoll_raft_store::types::Vote;
use openraft::ServerState;
use openraft::raft::TransferLeaderRequest;
use tokio::sync::mpsc;

use crate::raft::Replica;
use crate::raft::rpc::PROTOCOL_HEADER;
use crate::raft::rpc::PROTOCOL_VERSION;

/// How long the reconnect that confirms a death may take; a refusal is immediate.
const CONFIRM_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a survivor's answer about its log may take before it is left out.
const ASK_TIMEOUT: Duration = Duration::from_millis(100);

/// What a replica knows when a peer's connection closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub me: u64,
    pub state: ServerState,
    pub leader: Option<u64>,
    pub voters: BTreeSet<u64>,
    /// Whether the current vote is the committed vote of an elected leader.
    pub vote_committed: bool,
}

/// Whether the closed connection of `peer` may mean the leader died and this replica should
/// check: only a voting follower of an elected leader acts, and only about that leader.
pub fn should_check(view: &View, peer: u64) -> bool {
    view.state == ServerState::Follower
        && view.vote_committed
        && view.leader == Some(peer)
        && peer != view.me
        && view.voters.contains(&view.me)
}

/// The survivor that should lead: the greatest last log id; among equals, the lowest id.
/// Survivors that did not answer are left out; `None` when nobody answered.
pub fn choose_successor(answers: &BTreeMap<u64, Option<LogId>>) -> Option<u64> {
    answers.iter().max_by(|(a_id, a), (b_id, b)| a.cmp(b).then(b_id.cmp(a_id))).map(|(id, _)| *id)
}

/// Watch for closed connections of replicas of this cluster and take over when the leader died.
pub(crate) async fn run(replica: Arc<Replica>, mut closed: mpsc::UnboundedReceiver<u64>) {
    // The dead leader's vote we already acted on, so a second closed connection does not
    // start a second round.
    let mut handled: Option<Vote> = None;
    while let Some(peer) = closed.recv().await {
        let m = replica.metrics_snapshot();
        let view = View {
            me: replica.info().node_id,
            state: m.state,
            leader: m.current_leader,
            voters: m.membership_config.membership().voter_ids().collect(),
            vote_committed: m.vote.committed,
        };
        if !should_check(&view, peer) || handled.as_ref() == Some(&m.vote) {
            continue;
        }
        if let Some(successor) = replica.announced_successor(&m.vote) {
            tracing::info!(
                leader = peer,
                successor,
                "leader connection closed after it announced a hand-over; waiting for the successor"
            );
            handled = Some(m.vote);
            continue;
        }
        let Some(addr) = m.membership_config.membership().get_node(&peer).map(|n| n.addr.clone()) else { continue };
        if let Err(why) = refused(&addr).await {
            tracing::info!(leader = peer, %addr, reconnect = %why, "leader connection closed, but it was not refused: treating the leader as alive");
            continue;
        }
        handled = Some(m.vote);
        let survivors: Vec<u64> = view.voters.iter().copied().filter(|v| *v != peer).collect();
        tracing::warn!(
            leader = peer,
            term = m.current_term,
            "leader process is gone (connection closed, reconnect refused); electing a successor without waiting for its lease"
        );
        let answers = ask_last_logs(&replica, &survivors).await;
        let Some(successor) = choose_successor(&answers) else { continue };
        if answers.len() < survivors.len() {
            tracing::info!(answered = ?answers.keys().collect::<Vec<_>>(), ?survivors, "not every survivor told its last log id");
        }
        let last = answers.get(&successor).cloned().flatten();
        let request = TransferLeaderRequest::new(m.vote, successor, last);
        replica.metrics.fast_failovers.inc();
        tracing::info!(successor, ?last, "asking the survivors to hand leadership to the most up-to-date voter");
        deliver(&replica, &survivors, request).await;
    }
}

/// How long a freshly accepted probe connection must stay open for the peer to count as alive.
const HELD_OPEN: Duration = Duration::from_millis(10);
/// Probe attempts before giving up on a port that keeps accepting and dropping connections.
const CONFIRM_ATTEMPTS: usize = 8;

/// `Ok` when the process behind `addr` is gone, else what was seen instead.
///
/// A dead process's port refuses connections. While it is being torn down, its connections may
/// close before its listening socket does; a connect then still succeeds (the kernel completes
/// the handshake) or is reset, and the accepted connection is reset a moment later when the
/// listener goes. A live process (even a paused one) holds the connection open, waiting for our
/// TLS hello. So: refused means gone; reset, or closed soon after connecting, means look again;
/// held open means alive.
async fn refused(addr: &str) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    for _ in 0..CONFIRM_ATTEMPTS {
        match tokio::time::timeout(CONFIRM_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Err(_) => return Err(format!("no answer within {CONFIRM_TIMEOUT:?}")),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(mut stream)) => {
                let mut byte = [0u8; 1];
                match tokio::time::timeout(HELD_OPEN, stream.read(&mut byte)).await {
                    Err(_) => return Err("connected, and the connection was held open".to_string()),
                    Ok(Ok(n)) if n > 0 => return Err("connected, and the peer answered".to_string()),
                    Ok(_) => {} // closed or reset: the listener is going away
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(format!("the port kept accepting and dropping connections ({CONFIRM_ATTEMPTS} attempts)"))
}

/// Last log ids of the survivors (this replica's own from its Raft state).
async fn ask_last_logs(replica: &Arc<Replica>, survivors: &[u64]) -> BTreeMap<u64, Option<LogId>> {
    let me = replica.info().node_id;
    let m = replica.metrics_snapshot();
    let asks = survivors.iter().copied().map(|id| {
        let replica = replica.clone();
        let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone());
        async move {
            if id == me {
                let last = replica.raft.with_raft_state(|st| st.log_ids.last().cloned()).await.ok()?;
                return Some((id, last));
            }
            let response = replica
                .peers
                .get(format!("https://{}/raft/v1/last-log", addr?))
                .header(PROTOCOL_HEADER, PROTOCOL_VERSION)
                .timeout(ASK_TIMEOUT)
                .send()
                .await
                .ok()?;
            let last: Option<LogId> = response.json().await.ok()?;
            Some((id, last))
        }
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

/// Send the transfer request to every survivor, this replica included.
async fn deliver(
    replica: &Arc<Replica>,
    survivors: &[u64],
    request: TransferLeaderRequest<atoll_raft_store::TypeConfig>,
) {
    let me = replica.info().node_id;
    let m = replica.metrics_snapshot();
    let sends = survivors.iter().copied().map(|id| {
        let replica = replica.clone();
        let request = request.clone();
        let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone());
        async move {
            if id == me {
                match replica.raft.handle_transfer_leader(request).await {
                    Ok(Ok(())) => {}
                    Ok(Err(refused)) => {
                        tracing::info!(reason = %refused, "this replica did not take the leadership transfer")
                    }
                    Err(e) => tracing::warn!(error = %e, "local leadership transfer failed"),
                }
                return;
            }
            let Some(addr) = addr else { return };
            let sent = replica
                .peers
                .post(format!("https://{addr}/raft/v1/transfer-leader"))
                .header(PROTOCOL_HEADER, PROTOCOL_VERSION)
                .timeout(ASK_TIMEOUT)
                .json(&request)
                .send()
                .await;
            match sent {
                Err(e) => tracing::info!(node = id, error = %error_chain(&e), "delivering the transfer request failed"),
                Ok(response) if !response.status().is_success() => {
                    tracing::info!(node = id, status = %response.status(), "the transfer request was refused")
                }
                Ok(_) => {}
            }
        }
    });
    futures::future::join_all(sends).await;
}

#[cfg(test)]
mod tests {
    use openraft::LogId;
    use openraft::vote::RaftLeaderIdExt;

    use super::*;

    fn view(state: ServerState, leader: Option<u64>) -> View {
        View { me: 2, state, leader, voters: BTreeSet::from([1, 2, 3]), vote_committed: true }
    }

    fn log(term: u64, index: u64) -> Option<atoll_raft_store::types::LogId> {
        Some(LogId::new(openraft::impls::leader_id_std::LeaderId::new_committed(term, 1), index))
    }

    #[test]
    fn only_a_voting_follower_checks_its_leader() {
        assert!(should_check(&view(ServerState::Follower, Some(1)), 1));
        // Another follower's connection closing says nothing about the leader.
        assert!(!should_check(&view(ServerState::Follower, Some(1)), 3));
        // Candidates, leaders and learners do not act.
        assert!(!should_check(&view(ServerState::Candidate, Some(1)), 1));
        assert!(!should_check(&view(ServerState::Leader, Some(2)), 1));
        assert!(!should_check(&view(ServerState::Learner, Some(1)), 1));
        // No elected leader (vote not committed) or unknown leader: nothing to take over from.
        let mut v = view(ServerState::Follower, Some(1));
        v.vote_committed = false;
        assert!(!should_check(&v, 1));
        assert!(!should_check(&view(ServerState::Follower, None), 1));
        // A replica that is not a voter leaves it to the voters.
        let mut v = view(ServerState::Follower, Some(1));
        v.voters = BTreeSet::from([1, 3, 4]);
        assert!(!should_check(&v, 1));
    }

    #[test]
    fn the_most_up_to_date_survivor_is_chosen() {
        let answers = BTreeMap::from([(2, log(3, 10)), (3, log(3, 11))]);
        assert_eq!(choose_successor(&answers), Some(3));
        // A higher term wins over a longer log of an older term.
        let answers = BTreeMap::from([(2, log(4, 5)), (3, log(3, 11))]);
        assert_eq!(choose_successor(&answers), Some(2));
        // Ties go to the lowest id, so every survivor picks the same one.
        let answers = BTreeMap::from([(2, log(3, 10)), (3, log(3, 10))]);
        assert_eq!(choose_successor(&answers), Some(2));
        let answers = BTreeMap::from([(3, log(3, 10)), (2, log(3, 10))]);
        assert_eq!(choose_successor(&answers), Some(2));
        // A survivor that did not answer is left out; nobody answering means no action.
        let answers = BTreeMap::from([(3, None::<atoll_raft_store::types::LogId>)]);
        assert_eq!(choose_successor(&answers), Some(3));
        assert_eq!(choose_successor(&BTreeMap::new()), None);
    }

    #[tokio::test]
    async fn only_a_refused_connect_confirms_a_death() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Nobody accepts: the kernel still completes the handshake and holds the connection,
        // as for a paused process.
        assert!(refused(&addr).await.is_err(), "a listening port is alive");
        drop(listener);
        assert!(refused(&addr).await.is_ok(), "a closed port is refused");
    }

    #[tokio::test]
    async fn a_port_that_accepts_then_drops_is_looked_at_again() {
        // A listener that accepts and immediately closes, then goes away: as a dying process.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            if let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
            drop(listener);
        });
        assert!(refused(&addr).await.is_ok(), "a port that drops the probe and then closes is gone");
        server.await.unwrap();
    }
}
