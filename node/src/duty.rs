//! How a leader's duties for one term end, whichever duty saw it first: the gateway's duties
//! ([`crate::link`]) and the job duties ([`crate::jobs`]) both end with a [`DutyEnd`], read
//! from the gateway's refusal by [`ended_by`]. A leaf: it names no other module of the node.

use atoll_api::ErrorCode;
use atoll_api::client::ClientError;
use atoll_api::ids::Term;

/// Why the duties of a term ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DutyEnd {
    /// The gateway knows a newer leader.
    Fenced { term: Term, message: String },
    /// The cluster was revoked.
    Revoked(String),
}

/// Whether the gateway's refusal ends the duties of `term`: it knows a newer leader, or the
/// cluster was revoked; `None` for anything worth trying again.
pub fn ended_by(error: &ClientError, term: Term) -> Option<DutyEnd> {
    match error.code() {
        Some(ErrorCode::StaleLeader) => Some(DutyEnd::Fenced { term, message: error.to_string() }),
        Some(ErrorCode::Revoked) => Some(DutyEnd::Revoked(error.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use atoll_api::ApiError;

    use super::*;

    #[test]
    fn only_a_newer_leader_or_a_revocation_ends_the_duties() {
        let refused = |code| ClientError::Api { addr: "gw".into(), error: ApiError::new(code, "no") };
        let term = Term(7);
        assert!(matches!(
            ended_by(&refused(ErrorCode::StaleLeader), term),
            Some(DutyEnd::Fenced { term: Term(7), .. })
        ));
        assert!(matches!(ended_by(&refused(ErrorCode::Revoked), term), Some(DutyEnd::Revoked(_))));
        for code in [ErrorCode::Conflict, ErrorCode::Unavailable, ErrorCode::NotFound] {
            assert_eq!(ended_by(&refused(code), term), None, "{code:?}: tried again");
        }
        let away =
            ClientError::Transport { addr: "gw".into(), message: "refused".into(), timed_out: false, not_sent: true };
        assert_eq!(ended_by(&away, term), None, "an unreachable gateway is tried again");
    }
}
