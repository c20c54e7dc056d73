//! Deliberate breakage for the chaos suite, to show that its checkers catch what they claim to.
//!
//! A [`Breakage`] is handed to the gateway when it is built ([`crate::run()`] always hands the
//! default: nothing broken). Only a test build (`cfg(test)` or the `testsuite` feature) can make
//! any other, and only the chaos suite's own gateway binary does, from its environment: the
//! product binary holds no code that reads a switch. The gateway warns loudly at start when a
//! breakage is on ([`Breakage::warnings`]).

/// What a deliberately broken gateway gets wrong: nothing, by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Breakage {
    fencing_disabled: bool,
    matrix_ignored: bool,
    lease_unfenced: bool,
}

impl Breakage {
    /// A gateway broken as asked: acting on leaders of stale terms instead of refusing them
    /// (`fencing_disabled`), and pulling every edge between clusters whatever the matrix says
    /// (`matrix_ignored`). Test builds only.
    #[cfg(any(test, feature = "testsuite"))]
    pub fn new(fencing_disabled: bool, matrix_ignored: bool) -> Self {
        Self { fencing_disabled, matrix_ignored, lease_unfenced: false }
    }

    /// Also (`lease_unfenced`) a duties lease holder that goes on acting as holder once its
    /// lease ran out or was taken, its writes no longer fenced on the generation. Test builds
    /// only.
    #[cfg(any(test, feature = "testsuite"))]
    pub fn with_lease_unfenced(self, lease_unfenced: bool) -> Self {
        Self { lease_unfenced, ..self }
    }

    /// Whether a lease holder goes on acting once its lease is gone, its writes unfenced.
    pub fn lease_unfenced(self) -> bool {
        self.lease_unfenced
    }

    /// Whether the gateway must act on leaders of stale terms instead of refusing them.
    pub fn fencing_disabled(self) -> bool {
        self.fencing_disabled
    }

    /// Whether every edge between clusters must be pulled, whatever the matrix says.
    pub fn matrix_ignored(self) -> bool {
        self.matrix_ignored
    }

    /// The warnings a gateway broken so logs at start (none for the default).
    pub fn warnings(self) -> Vec<&'static str> {
        let mut warnings = Vec::new();
        if self.fencing_disabled {
            warnings.push(
                "TERM FENCING IS OFF: this gateway acts on stale leaders (a deliberately broken build for the chaos suite)",
            );
        }
        if self.matrix_ignored {
            warnings.push(
                "FORWARDING IGNORES THE MATRIX: every edge is pulled (a deliberately broken build for the chaos suite)",
            );
        }
        if self.lease_unfenced {
            warnings.push(
                "THE DUTIES LEASE IS UNFENCED: this gateway schedules on after losing its lease (a deliberately broken build for the chaos suite)",
            );
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_broken_by_default_and_each_breakage_is_announced() {
        assert_eq!(Breakage::default(), Breakage::new(false, false));
        assert!(Breakage::default().warnings().is_empty());
        let fencing = Breakage::new(true, false);
        assert!(fencing.fencing_disabled() && !fencing.matrix_ignored());
        assert_eq!(fencing.warnings().len(), 1);
        assert!(fencing.warnings()[0].starts_with("TERM FENCING IS OFF"));
        let matrix = Breakage::new(false, true);
        assert!(matrix.matrix_ignored() && !matrix.fencing_disabled());
        assert!(matrix.warnings()[0].starts_with("FORWARDING IGNORES THE MATRIX"));
        let lease = Breakage::default().with_lease_unfenced(true);
        assert!(lease.lease_unfenced() && !lease.fencing_disabled());
        assert!(lease.warnings()[0].starts_with("THE DUTIES LEASE IS UNFENCED"));
    }
}
