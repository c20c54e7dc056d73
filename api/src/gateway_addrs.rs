//! Which gateway replica a client talks to, and when it moves to another.
//!
//! Every gateway replica serves the whole API, so a client knows them all and uses one at a time:
//! [`GatewayAddrs`] is the ordered list and the address in use, shared by every client built over
//! it (an agent's heartbeats, leases, reports, transfers and renewal move together). A call starts
//! at the address in use and tries each other address at most once ([`Rotation::plan`]); what a
//! failure means for the next try is [`after_failure`]; the pause between two tries is
//! [`backoff`]. All of it is pure but the small lock around [`Rotation`].
//!
//! The list changes when a heartbeat answer carries the replicas alive now ([`Rotation::learn`]).
//! The configured addresses stay behind the learned ones as a last resort: a learned list whose
//! addresses this client cannot reach (a replica advertising an address only its own network
//! knows) never strands it.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use crate::client::ClientError;

/// The list a client tries, the address in use, and the one that last answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The replicas as the latest heartbeat answer listed them (the configured ones until then).
    list: Vec<String>,
    /// The configured addresses, tried after `list` when it does not name them.
    configured: Vec<String>,
    /// The address a call starts at.
    current: String,
    /// The address of the last answer, to tell a move from a retry.
    answered: Option<String>,
}

/// The client moved to another replica: from the one that last answered to the one answering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    pub from: String,
    pub to: String,
}

/// Addresses in order, each once, none empty.
fn distinct<'a>(addrs: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for addr in addrs {
        let addr = addr.trim();
        if !addr.is_empty() && !out.iter().any(|a| a == addr) {
            out.push(addr.to_string());
        }
    }
    out
}

impl Rotation {
    /// The configured addresses, in the order they are tried; the first is used first.
    pub fn new(configured: &[String]) -> Self {
        let configured = distinct(configured);
        let current = configured.first().cloned().unwrap_or_default();
        Self { list: configured.clone(), configured, current, answered: None }
    }

    /// Every address a call may try, in order: the list, then the configured addresses it lacks.
    pub fn candidates(&self) -> Vec<String> {
        distinct(self.list.iter().chain(&self.configured))
    }

    /// The address in use.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// The tries of one call: every candidate once, starting at the address in use.
    pub fn plan(&self) -> Vec<String> {
        let mut candidates = self.candidates();
        if let Some(at) = candidates.iter().position(|a| *a == self.current) {
            candidates.rotate_left(at);
        }
        candidates
    }

    /// `addr` answered (a success, or an answer that is not the replica failing): calls start
    /// there. Says so when that is a move away from the replica that answered before.
    pub fn answered(&mut self, addr: &str) -> Option<Moved> {
        self.current = addr.to_string();
        let moved = match &self.answered {
            Some(before) if before != addr => Some(Moved { from: before.clone(), to: addr.to_string() }),
            _ => None,
        };
        self.answered = Some(addr.to_string());
        moved
    }

    /// `addr` failed: when calls start there, they start at the next candidate from now on. A
    /// call that failed on an address another call already moved away from changes nothing.
    pub fn failed(&mut self, addr: &str) {
        if self.current != addr {
            return;
        }
        let candidates = self.candidates();
        if let Some(at) = candidates.iter().position(|a| a == addr) {
            self.current = candidates[(at + 1) % candidates.len()].clone();
        }
    }

    /// Take the replicas a heartbeat answer listed: they replace the list (an empty one is
    /// ignored: an older gateway sends none). The address in use stays in use while it is still
    /// a candidate, else the first of the new list is. True when the set of replicas changed.
    pub fn learn(&mut self, listed: &[String]) -> bool {
        let listed = distinct(listed);
        if listed.is_empty() {
            return false;
        }
        let mut before = self.list.clone();
        let mut after = listed.clone();
        before.sort();
        after.sort();
        self.list = listed;
        if !self.candidates().contains(&self.current) {
            self.current = self.list[0].clone();
        }
        before != after
    }
}

/// Whether a request may be sent again to another replica when its outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    /// Sending it twice does what sending it once does: reads, and the writes the gateway takes
    /// once however often they come (heartbeats, rows, leases, fenced reports, log pieces stored
    /// by sequence number, renewals, transfer plans, cancels, cluster actions).
    Safe,
    /// Sent again only when the first try surely never reached a replica: a submission whose
    /// answer timed out may have been stored (a second one would be a second pipeline); a join
    /// token is consumed once (a second enrollment would be refused as a used token); a created
    /// token may exist already.
    OnlyUnsent,
}

/// What a failed try means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// The replica answered, with an error that is the call's answer (bad input, not found,
    /// fenced, revoked): another replica would say the same.
    Answered,
    /// The replica failed (no connection, reset, timed out, a 5xx) and the request may go to
    /// the next one.
    TryNext,
    /// The replica failed but the request must not be sent again: the call ends with this
    /// error, and the next call starts at the next replica.
    GiveUp,
}

/// Whether `error` is the replica failing rather than answering: the connection failed or was
/// reset, the request timed out, or it answered a server error (5xx).
pub fn replica_failed(error: &ClientError) -> bool {
    match error {
        ClientError::Transport { .. } => true,
        ClientError::Api { error, .. } => error.code.status().is_server_error(),
        ClientError::Decode { status, .. } => status.is_some_and(|s| s >= 500),
    }
}

/// What to do after a try failed with `error`, for a request that may be resent as `resend`.
pub fn after_failure(error: &ClientError, resend: Resend) -> AfterFailure {
    if !replica_failed(error) {
        return AfterFailure::Answered;
    }
    let unsent = matches!(error, ClientError::Transport { not_sent: true, .. });
    match resend {
        Resend::Safe => AfterFailure::TryNext,
        Resend::OnlyUnsent if unsent => AfterFailure::TryNext,
        Resend::OnlyUnsent => AfterFailure::GiveUp,
    }
}

/// The pause before the `n`th move to another replica within one call (from 1): 25 ms doubling,
/// at most 200 ms, plus up to as much again by `jitter` (in `[0, 1)`), so clients that lost the
/// same replica do not arrive at the next one in step.
pub fn backoff(n: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(25 << n.saturating_sub(1).min(3));
    base + base.mul_f64(jitter.clamp(0.0, 1.0))
}

/// The error of a call that tried several replicas: the last one's, naming the earlier ones.
/// It says the request surely had no effect only when no try may have had one, and timed out
/// when any try did (a try that timed out may have been applied).
pub fn with_earlier(last: ClientError, earlier: &[ClientError]) -> ClientError {
    if earlier.is_empty() {
        return last;
    }
    let before = earlier.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    let note = |text: String| format!("{text} (tried before: {before})");
    let unknown_before = earlier.iter().any(|e| !e.surely_failed());
    let timed_out_before = earlier.iter().any(ClientError::is_timeout);
    match last {
        ClientError::Transport { addr, message, timed_out, not_sent } => ClientError::Transport {
            addr,
            message: note(message),
            timed_out: timed_out || timed_out_before,
            not_sent: not_sent && !unknown_before,
        },
        ClientError::Api { addr, mut error } => {
            error.message = note(error.message);
            ClientError::Api { addr, error }
        }
        ClientError::Decode { addr, detail, status } => ClientError::Decode { addr, detail: note(detail), status },
    }
}

/// The gateway replicas a client knows and the one in use, shared by every client built over
/// the same value (clones share it).
#[derive(Clone, Debug)]
pub struct GatewayAddrs(Arc<Mutex<Rotation>>);

impl GatewayAddrs {
    /// The configured addresses (`host:port`), tried in this order.
    pub fn new(configured: &[String]) -> Self {
        Self(Arc::new(Mutex::new(Rotation::new(configured))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rotation> {
        // The lock is never held across an await or a call that can panic.
        self.0.lock().expect("gateway addresses")
    }

    /// The address in use.
    pub fn current(&self) -> String {
        self.lock().current().to_string()
    }

    /// Every address a call may try, in order.
    pub fn candidates(&self) -> Vec<String> {
        self.lock().candidates()
    }

    /// The tries of one call, starting at the address in use.
    pub fn plan(&self) -> Vec<String> {
        self.lock().plan()
    }

    /// `addr` answered: calls start there (logged when that is a move to another replica).
    pub fn answered(&self, addr: &str) {
        if let Some(Moved { from, to }) = self.lock().answered(addr) {
            tracing::info!(from = %from, to = %to, "now using another gateway replica");
        }
    }

    /// `addr` failed: calls that would start there start at the next replica.
    pub fn failed(&self, addr: &str) {
        self.lock().failed(addr);
    }

    /// Take the replicas a heartbeat answer listed (logged when the set changed).
    pub fn learn(&self, listed: &[String]) {
        let (changed, candidates, current) = {
            let mut rotation = self.lock();
            let changed = rotation.learn(listed);
            (changed, rotation.candidates(), rotation.current().to_string())
        };
        if changed {
            tracing::info!(gateways = ?candidates, using = %current, "the gateway replicas changed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ApiError;
    use crate::ErrorCode;

    fn addrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| a.to_string()).collect()
    }

    fn refused(addr: &str) -> ClientError {
        ClientError::Transport {
            addr: addr.into(),
            message: "connection refused".into(),
            timed_out: false,
            not_sent: true,
        }
    }

    fn timed_out(addr: &str) -> ClientError {
        ClientError::Transport { addr: addr.into(), message: "timed out".into(), timed_out: true, not_sent: false }
    }

    fn reset(addr: &str) -> ClientError {
        ClientError::Transport {
            addr: addr.into(),
            message: "connection reset".into(),
            timed_out: false,
            not_sent: false,
        }
    }

    fn answered(addr: &str, code: ErrorCode) -> ClientError {
        ClientError::Api { addr: addr.into(), error: ApiError::new(code, "no") }
    }

    #[test]
    fn a_call_tries_every_replica_once_starting_at_the_one_in_use() {
        let mut r = Rotation::new(&addrs(&["a:1", "b:1", "c:1"]));
        assert_eq!(r.plan(), addrs(&["a:1", "b:1", "c:1"]));
        r.failed("a:1");
        assert_eq!(r.current(), "b:1", "the next call starts past the failed one");
        assert_eq!(r.plan(), addrs(&["b:1", "c:1", "a:1"]));
        r.failed("b:1");
        r.failed("c:1");
        assert_eq!(r.current(), "a:1", "round and round, each once per call");
    }

    #[test]
    fn the_next_call_starts_at_the_replica_that_last_answered() {
        let mut r = Rotation::new(&addrs(&["a:1", "b:1", "c:1"]));
        assert_eq!(r.answered("a:1"), None, "the first answer is no move");
        r.failed("a:1");
        r.failed("b:1");
        assert_eq!(r.answered("c:1"), Some(Moved { from: "a:1".into(), to: "c:1".into() }));
        assert_eq!(r.plan(), addrs(&["c:1", "a:1", "b:1"]));
        assert_eq!(r.answered("c:1"), None, "staying is no move");
    }

    #[test]
    fn a_stale_failure_does_not_move_a_client_that_already_moved() {
        let mut r = Rotation::new(&addrs(&["a:1", "b:1"]));
        r.failed("a:1");
        assert_eq!(r.answered("b:1"), None);
        // A call that was still waiting on a:1 fails late.
        r.failed("a:1");
        assert_eq!(r.current(), "b:1");
    }

    #[test]
    fn configured_addresses_are_kept_once_in_order() {
        let r = Rotation::new(&addrs(&["a:1", " ", "b:1", "a:1"]));
        assert_eq!(r.plan(), addrs(&["a:1", "b:1"]));
        let empty = Rotation::new(&[]);
        assert!(empty.plan().is_empty());
    }

    #[test]
    fn learning_replaces_the_list_and_keeps_the_replica_in_use() {
        let mut r = Rotation::new(&addrs(&["a:1", "b:1"]));
        r.failed("a:1");
        r.answered("b:1");
        assert!(r.learn(&addrs(&["a:1", "b:1", "c:1"])), "c:1 was added");
        assert_eq!(r.current(), "b:1", "still in use: still listed");
        assert_eq!(r.plan(), addrs(&["b:1", "c:1", "a:1"]));
        assert!(!r.learn(&addrs(&["c:1", "b:1", "a:1"])), "the same replicas in another order are no change");
        assert!(!r.learn(&[]), "an empty list (a gateway that does not know) is ignored");
        assert_eq!(r.plan(), addrs(&["b:1", "a:1", "c:1"]), "in the order last learned, from the one in use");
    }

    #[test]
    fn a_removed_replica_is_left_for_the_first_listed_and_configured_ones_stay_last() {
        let mut r = Rotation::new(&addrs(&["a:1", "b:1"]));
        r.failed("a:1");
        r.answered("b:1");
        assert!(r.learn(&addrs(&["c:1", "d:1"])));
        // b:1 is still configured: it stays in use while it answers.
        assert_eq!(r.current(), "b:1");
        assert_eq!(r.plan(), addrs(&["b:1", "c:1", "d:1", "a:1"]));
        // A replica neither listed nor configured is left at once.
        let mut r = Rotation::new(&addrs(&["a:1"]));
        assert!(r.learn(&addrs(&["x:1", "a:1"])));
        assert!(r.learn(&addrs(&["x:1", "y:1"])));
        assert_eq!(r.current(), "a:1", "configured: a last resort, still in use");
        r.failed("a:1");
        assert_eq!(r.current(), "x:1");
        assert!(r.learn(&addrs(&["y:1"])));
        assert_eq!(r.current(), "y:1", "x:1 is gone: the first listed");
        assert_eq!(r.plan(), addrs(&["y:1", "a:1"]));
    }

    #[test]
    fn which_failures_move_to_the_next_replica() {
        use AfterFailure::*;
        let cases = [
            (refused("a"), TryNext, TryNext),
            (reset("a"), TryNext, GiveUp),
            (timed_out("a"), TryNext, GiveUp),
            (answered("a", ErrorCode::Unavailable), TryNext, GiveUp),
            (answered("a", ErrorCode::Internal), TryNext, GiveUp),
            (answered("a", ErrorCode::Timeout), TryNext, GiveUp),
            (ClientError::Decode { addr: "a".into(), detail: "HTTP 502".into(), status: Some(502) }, TryNext, GiveUp),
            (ClientError::Decode { addr: "a".into(), detail: "bad json".into(), status: None }, Answered, Answered),
            (
                ClientError::Decode { addr: "a".into(), detail: "HTTP 404".into(), status: Some(404) },
                Answered,
                Answered,
            ),
            (answered("a", ErrorCode::BadRequest), Answered, Answered),
            (answered("a", ErrorCode::NotFound), Answered, Answered),
            (answered("a", ErrorCode::Conflict), Answered, Answered),
            (answered("a", ErrorCode::StaleLeader), Answered, Answered),
            (answered("a", ErrorCode::Revoked), Answered, Answered),
            (answered("a", ErrorCode::Unauthenticated), Answered, Answered),
        ];
        for (error, safe, unsent_only) in cases {
            assert_eq!(after_failure(&error, Resend::Safe), safe, "{error}");
            assert_eq!(after_failure(&error, Resend::OnlyUnsent), unsent_only, "{error}");
        }
    }

    #[test]
    fn the_backoff_grows_with_jitter_and_is_bounded() {
        let ms = |n, jitter| backoff(n, jitter).as_secs_f64() * 1000.0;
        assert_eq!(backoff(1, 0.0), Duration::from_millis(25));
        assert!((49.0..50.0).contains(&ms(1, 0.999)), "{}", ms(1, 0.999));
        assert_eq!(backoff(2, 0.0), Duration::from_millis(50));
        assert!((149.9..150.1).contains(&ms(3, 0.5)), "{}", ms(3, 0.5));
        assert_eq!(backoff(4, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(40, 1.0), Duration::from_millis(400), "at most 200 ms and as much jitter");
        assert_eq!(backoff(0, 0.0), Duration::from_millis(25), "never less than the first");
    }

    #[test]
    fn the_error_of_several_tries_names_every_replica_and_its_outcome() {
        let error = with_earlier(refused("c:1"), &[refused("a:1"), refused("b:1")]);
        let text = error.to_string();
        assert!(text.starts_with("c:1: connection refused"), "{text}");
        assert!(text.contains("a:1: connection refused") && text.contains("b:1: connection refused"), "{text}");
        assert!(error.surely_failed(), "no try reached a replica");

        let error = with_earlier(refused("b:1"), &[timed_out("a:1")]);
        assert!(!error.surely_failed(), "a:1 may have applied it");
        assert!(error.is_timeout());

        let error = with_earlier(answered("b:1", ErrorCode::NotFound), &[reset("a:1")]);
        assert_eq!(error.code(), Some(ErrorCode::NotFound), "the answer stays the answer");
        assert!(error.to_string().contains("a:1: connection reset"), "{error}");

        let alone = with_earlier(refused("a:1"), &[]);
        assert_eq!(alone.to_string(), "a:1: connection refused");
    }
}
