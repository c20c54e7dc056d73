//! Telling the other gateway replicas what changed: PostgreSQL `LISTEN`/`NOTIFY`.
//!
//! Each replica keeps waiters in memory (a cluster leader's lease long poll, log readers, a
//! submission waiting for the scheduling pass) and state the scheduler works from (pipelines to
//! settle, sends queued for a cluster, edges that fell back to the relay). What one replica
//! changes in the database, it also announces on the channel [`CHANNEL`]; every other replica
//! applies the announcement to its own memory ([`Gateway::heard`]). A notification is delivered
//! at the commit of the statement that sends it, within milliseconds; one published after a
//! write is sent after the write committed.
//!
//! Notifications can be missed (the listening connection drops and reconnects). A replica that
//! lost its connection treats it as having missed everything: it wakes every waiter, and if it
//! holds the duties lease it settles every waiting pipeline again. Every waiter also re-reads
//! the database on its own at least every [`RECHECK_EVERY`], so a missed notification costs at
//! most that long.
//!
//! With one gateway (`ha.enabled: false`) there is no bus: nothing is published.

use std::sync::Arc;
use std::time::Duration;

use atoll_api::jobs::SendTask;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::Gateway;

/// The channel every replica listens on.
pub const CHANNEL: &str = "atoll_gateway";
/// Waiters re-read the database at least this often with several replicas (a missed
/// notification costs at most this long).
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// Most notifications sent in one round trip.
const BATCH: usize = 256;

/// What a replica announces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// Work for a cluster changed (bound, cancelled, a send queued): wake its lease poll.
    Wake { cluster: String },
    /// A pipeline's jobs ended or were cancelled: the lease holder settles it.
    Dirty { pipeline: String },
    /// Something to place: the lease holder runs a pass.
    Kick,
    /// A scheduling pass finished (submissions waiting for placement look again).
    Pass,
    /// New log pieces, or a job ended: log readers look again.
    Logs,
    /// An output for `from`'s leader to send (push, relay upload).
    Send { from: String, task: SendTask },
    /// An edge fell back to the relay.
    Fallen { job: String, from_job: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The sending replica's incarnation: a replica ignores its own announcements.
    by: String,
    #[serde(flatten)]
    event: Event,
}

/// The publishing end (a no-op with one gateway).
#[derive(Debug, Default)]
pub struct Bus {
    tx: Option<mpsc::UnboundedSender<Event>>,
}

impl Bus {
    /// Announce `event` to the other replicas (after what it announces was written).
    pub fn publish(&self, event: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(event);
        }
    }

    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }
}

/// A bus for `pool`, and the receiver its sender task drains.
pub fn channel() -> (Bus, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Bus { tx: Some(tx) }, rx)
}

/// Send published events, batched, until the bus is dropped or `stop`.
pub async fn send_forever(
    pool: sqlx::PgPool,
    by: String,
    mut rx: mpsc::UnboundedReceiver<Event>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut batch = Vec::new();
    loop {
        batch.clear();
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
            _ = stop.changed() => return,
        }
        let mut payloads: Vec<String> = Vec::with_capacity(batch.len());
        for event in batch.drain(..) {
            match serde_json::to_string(&Envelope { by: by.clone(), event }) {
                // PostgreSQL refuses payloads of 8,000 bytes or more; such an event is left to
                // the waiters' own re-reads.
                Ok(text) if text.len() < 7_900 => {
                    if !payloads.contains(&text) {
                        payloads.push(text);
                    }
                }
                Ok(text) => tracing::debug!(bytes = text.len(), "an announcement too large to send; left to re-reads"),
                Err(e) => tracing::warn!(error = %e, "encoding an announcement failed"),
            }
        }
        let sent = sqlx::query("SELECT pg_notify($1, payload) FROM UNNEST($2::text[]) AS payload")
            .bind(CHANNEL)
            .bind(&payloads)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, events = payloads.len(), "announcing to the other replicas failed; they find out on their next re-read");
        }
    }
}

/// Listen to the other replicas until `stop`, applying what they announce.
pub async fn listen_forever(
    gateway: Arc<Gateway>,
    pool: sqlx::PgPool,
    me: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "listening to the other replicas failed; retrying");
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "listening to the other replicas failed; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        // Whatever was announced before this connection listened is missed.
        gateway.missed_announcements().await;
        loop {
            let next = tokio::select! {
                _ = stop.changed() => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(notification)) => match serde_json::from_str::<Envelope>(notification.payload()) {
                    Ok(envelope) if envelope.by == me => {}
                    Ok(envelope) => gateway.heard(envelope.event),
                    Err(e) => tracing::warn!(error = %e, "an unreadable announcement from another replica"),
                },
                Ok(None) => {
                    tracing::warn!("the connection listening to the other replicas dropped; reconnecting");
                    gateway.missed_announcements().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listening to the other replicas failed; reconnecting");
                    break;
                }
            }
        }
    }
}
