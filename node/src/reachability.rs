//! The reachability detector: probe outcomes in, a link state with hysteresis out (pure).
//!
//! - `unknown` until the first probe;
//! - a success makes an unknown link `reachable`; a failure makes a reachable (or unknown) link
//!   `suspect`, and [`Thresholds::unreachable_after`] consecutive failures make it
//!   `unreachable`;
//! - a suspect or unreachable link needs [`Thresholds::reachable_after`] consecutive successes
//!   to be `reachable` again.
//!
//! So a flapping link (success and failure alternating) settles at `suspect`; it never swings
//! between reachable and unreachable. The RTT is a moving average of successful probes; loss
//! is the failed fraction of the last [`WINDOW`] probes.

use std::collections::VecDeque;
use std::time::Duration;

use atoll_api::gateway::LinkState;
use atoll_api::gateway::RowCell;

/// Probes the loss figure covers.
pub const WINDOW: usize = 20;
/// Weight of a new RTT sample in the moving average.
const RTT_WEIGHT: f64 = 0.3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub unreachable_after: u32,
    pub reachable_after: u32,
}

impl Default for Thresholds {
    /// With a 1 s probe interval a cut shows within 2 probes (at most 3 s) and a repair within 2.
    fn default() -> Self {
        Self { unreachable_after: 2, reachable_after: 2 }
    }
}

/// One directed link's detector.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    state: LinkState,
    successes: u32,
    failures: u32,
    rtt_ms: Option<f64>,
    window: VecDeque<bool>,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            state: LinkState::Unknown,
            successes: 0,
            failures: 0,
            rtt_ms: None,
            window: VecDeque::with_capacity(WINDOW),
        }
    }
}

impl Link {
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Feed one probe outcome (`Some(rtt)` on success); returns whether the state changed.
    pub fn observe(&mut self, outcome: Option<Duration>, thresholds: &Thresholds) -> bool {
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(outcome.is_some());
        let before = self.state;
        match outcome {
            Some(rtt) => {
                self.successes += 1;
                self.failures = 0;
                let sample = rtt.as_secs_f64() * 1000.0;
                self.rtt_ms = Some(self.rtt_ms.map_or(sample, |avg| avg + RTT_WEIGHT * (sample - avg)));
                self.state = match self.state {
                    LinkState::Unknown | LinkState::Reachable => LinkState::Reachable,
                    LinkState::Suspect | LinkState::Unreachable if self.successes >= thresholds.reachable_after => {
                        LinkState::Reachable
                    }
                    other => other,
                };
            }
            None => {
                self.failures += 1;
                self.successes = 0;
                self.state = if self.failures >= thresholds.unreachable_after || self.state == LinkState::Unreachable {
                    LinkState::Unreachable
                } else {
                    LinkState::Suspect
                };
            }
        }
        self.state != before
    }

    /// Fraction of failed probes in the window.
    pub fn loss(&self) -> f64 {
        if self.window.is_empty() {
            return 0.0;
        }
        self.window.iter().filter(|ok| !**ok).count() as f64 / self.window.len() as f64
    }

    pub fn cell(&self, to: &str) -> RowCell {
        RowCell {
            to: to.to_string(),
            state: self.state,
            rtt_ms: self.rtt_ms.map(|r| (r * 100.0).round() / 100.0),
            loss: self.loss(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Option<Duration> = Some(Duration::from_millis(2));
    const FAIL: Option<Duration> = None;

    fn run(samples: &[Option<Duration>]) -> (Link, Vec<LinkState>) {
        let t = Thresholds::default();
        let mut link = Link::default();
        let states = samples.iter().map(|s| {
            link.observe(*s, &t);
            link.state()
        });
        let states = states.collect();
        (link, states)
    }

    #[test]
    fn a_cut_shows_after_two_failures_and_a_repair_after_two_successes() {
        use LinkState::*;
        let (_, states) = run(&[OK, OK, FAIL, FAIL, FAIL, OK, OK, OK]);
        assert_eq!(
            states,
            vec![Reachable, Reachable, Suspect, Unreachable, Unreachable, Unreachable, Reachable, Reachable]
        );
    }

    #[test]
    fn a_link_never_seen_working_goes_suspect_then_unreachable() {
        use LinkState::*;
        let (_, states) = run(&[FAIL, FAIL, FAIL]);
        assert_eq!(states, vec![Suspect, Unreachable, Unreachable]);
        assert_eq!(Link::default().state(), Unknown);
    }

    #[test]
    fn a_flapping_link_does_not_flap_the_state() {
        use LinkState::*;
        let pattern: Vec<_> = [OK, OK].into_iter().chain((0..40).map(|i| if i % 2 == 0 { FAIL } else { OK })).collect();
        let (link, states) = run(&pattern);
        // After the first failure it stays suspect: never back to reachable, never unreachable.
        assert!(states[2..].iter().all(|s| *s == Suspect), "{states:?}");
        assert!((link.loss() - 0.5).abs() < 1e-9);
        // One success in a row is not enough to trust it again either.
        let (_, states) = run(&[FAIL, FAIL, OK, FAIL, OK]);
        assert_eq!(states.last(), Some(&Unreachable));
    }

    #[test]
    fn changes_are_reported_once() {
        let t = Thresholds::default();
        let mut link = Link::default();
        assert!(link.observe(OK, &t), "unknown -> reachable");
        assert!(!link.observe(OK, &t));
        assert!(link.observe(FAIL, &t), "reachable -> suspect");
        assert!(link.observe(FAIL, &t), "suspect -> unreachable");
        assert!(!link.observe(FAIL, &t));
    }

    #[test]
    fn rtt_and_loss() {
        let t = Thresholds::default();
        let mut link = Link::default();
        link.observe(Some(Duration::from_millis(10)), &t);
        link.observe(Some(Duration::from_millis(20)), &t);
        let cell = link.cell("gcp");
        assert_eq!(cell.to, "gcp");
        assert_eq!(cell.rtt_ms, Some(13.0));
        assert_eq!(cell.loss, 0.0);
        for _ in 0..WINDOW {
            link.observe(None, &t);
        }
        assert_eq!(link.loss(), 1.0);
        assert_eq!(link.cell("gcp").rtt_ms, Some(13.0), "the last known RTT is kept");
    }
}
