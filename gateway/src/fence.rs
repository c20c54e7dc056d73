//! The term fence (pure): how a request from a cluster's leader at some term stands against the
//! term the gateway knows for the cluster. Heartbeats ([`crate::registry::decide`]) and the
//! job service's leases, reports and log batches ([`crate::Gateway::fence`]) both ask it.

use atoll_api::ids::Term;

/// A request's term against the known one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// Lower than the known term: a deposed leader, refused (409 `stale_leader`).
    Stale,
    /// The known term.
    Current,
    /// Higher than the known term: a new leader, not registered yet.
    Ahead,
}

/// Where a request from term `got` stands when the cluster's known term is `known`.
pub fn fence(known: Term, got: Term) -> Fence {
    match got.cmp(&known) {
        std::cmp::Ordering::Less => Fence::Stale,
        std::cmp::Ordering::Equal => Fence::Current,
        std::cmp::Ordering::Greater => Fence::Ahead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_is_stale_current_or_ahead_of_the_known_one() {
        for (known, got, expected) in [
            (3, 2, Fence::Stale),
            (3, 0, Fence::Stale),
            (3, 3, Fence::Current),
            (0, 0, Fence::Current),
            (3, 4, Fence::Ahead),
            (0, u64::MAX, Fence::Ahead),
            (u64::MAX, 0, Fence::Stale),
        ] {
            assert_eq!(fence(Term(known), Term(got)), expected, "known {known}, got {got}");
        }
    }
}
