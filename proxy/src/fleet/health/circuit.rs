//! The passive circuit breaker fed by relayed requests: a pure state machine; the clock is
//! passed in.

use std::time::{Duration, Instant};

/// The circuit breaker: closed while requests succeed; open for a cool-down after
/// `threshold` failures in a row; then half-open, letting one trial request through, whose
/// outcome closes it again or reopens it for another cool-down.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Circuit {
    failures_in_row: u32,
    opened_at: Option<Instant>,
    trial_out: bool,
}

/// What the circuit says about sending one more request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Closed,
    /// Cool-down over: this request is the one trial.
    Trial,
    /// Open, or half-open with its trial still out.
    Refused,
}

impl Circuit {
    /// Whether the node may take traffic, without claiming anything (for ranking and listing).
    pub fn is_open(&self, now: Instant, cooldown: Duration) -> bool {
        match self.opened_at {
            None => false,
            Some(at) => now.saturating_duration_since(at) < cooldown || self.trial_out,
        }
    }

    /// Admits one request; a trial is claimed so that concurrent requests do not all try a node
    /// that may still be down.
    pub fn admit(&mut self, now: Instant, cooldown: Duration) -> Admission {
        match self.opened_at {
            None => Admission::Closed,
            Some(_) if self.is_open(now, cooldown) => Admission::Refused,
            Some(_) => {
                self.trial_out = true;
                Admission::Trial
            }
        }
    }

    pub fn on_success(&mut self) {
        *self = Circuit::default();
    }

    /// Returns true when this failure opened (or reopened) the circuit.
    pub fn on_failure(&mut self, now: Instant, threshold: u32) -> bool {
        self.failures_in_row = self.failures_in_row.saturating_add(1);
        let reopen = self.opened_at.is_some() && self.trial_out;
        if reopen || (self.opened_at.is_none() && self.failures_in_row >= threshold) {
            self.opened_at = Some(now);
            self.trial_out = false;
            return true;
        }
        false
    }

    /// A trial that ended without an outcome (the client left) must not keep the node shut.
    pub fn release_trial(&mut self) {
        self.trial_out = false;
    }

    pub fn failures_in_row(&self) -> u32 {
        self.failures_in_row
    }

    /// Time left in the cool-down, when open.
    pub fn retry_in(&self, now: Instant, cooldown: Duration) -> Option<Duration> {
        self.opened_at
            .map(|at| cooldown.saturating_sub(now.saturating_duration_since(at)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(10);

    #[test]
    fn opens_after_threshold_failures_in_a_row() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        assert!(!c.on_failure(t0, 3));
        assert!(!c.on_failure(t0, 3));
        c.on_success();
        assert!(!c.on_failure(t0, 3));
        assert!(!c.on_failure(t0, 3));
        assert_eq!(c.admit(t0, COOL), Admission::Closed);
        assert!(c.on_failure(t0, 3));
        assert!(c.is_open(t0, COOL));
        assert_eq!(c.admit(t0 + COOL / 2, COOL), Admission::Refused);
    }

    #[test]
    fn half_open_lets_one_trial_through() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        assert!(c.on_failure(t0, 1));
        let later = t0 + COOL;
        assert!(!c.is_open(later, COOL));
        assert_eq!(c.admit(later, COOL), Admission::Trial);
        // A second request while the trial is out is refused.
        assert_eq!(c.admit(later, COOL), Admission::Refused);
        assert!(c.is_open(later, COOL));
        // The trial fails: open again for a full cool-down from now.
        assert!(c.on_failure(later, 1));
        assert_eq!(c.admit(later + COOL / 2, COOL), Admission::Refused);
        assert_eq!(c.admit(later + COOL, COOL), Admission::Trial);
        c.on_success();
        assert_eq!(c.admit(later + COOL, COOL), Admission::Closed);
        assert_eq!(c.failures_in_row(), 0);
    }

    #[test]
    fn a_trial_without_outcome_is_released() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        c.on_failure(t0, 1);
        assert_eq!(c.admit(t0 + COOL, COOL), Admission::Trial);
        c.release_trial();
        assert_eq!(c.admit(t0 + COOL, COOL), Admission::Trial);
    }
}
