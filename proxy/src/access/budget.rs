//! A per-key allowance that refills at a steady rate up to its size: a token bucket, kept pure
//! (time is passed in) so its arithmetic is unit-tested.
//!
//! Requests are taken from their budget before they run. Output tokens and energy are known
//! only afterwards, so those budgets admit a request while anything is left and are charged
//! when the request ends: one long answer may overdraw its budget, and the key then waits until
//! the budget has refilled above zero. That bounds what a key gets over any window by its limit
//! plus one request's worth.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    size: f64,
    /// Refill per second: the whole size over one period.
    per_second: f64,
    level: f64,
    at: Instant,
}

impl Budget {
    /// A full budget of `size` that refills whole over `period`.
    pub fn new(size: f64, period: Duration, now: Instant) -> Self {
        Budget {
            size,
            per_second: size / period.as_secs_f64(),
            level: size,
            at: now,
        }
    }

    /// A changed limit (a reload) keeps what was spent: the level moves by the change in size.
    pub fn resize(&mut self, size: f64, period: Duration, now: Instant) {
        if size == self.size && (size / period.as_secs_f64()) == self.per_second {
            return;
        }
        self.refill(now);
        self.level = (self.level + size - self.size).min(size);
        self.size = size;
        self.per_second = size / period.as_secs_f64();
    }

    pub fn size(&self) -> f64 {
        self.size
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.size);
        self.at = self.at.max(now);
    }

    /// Whether `amount` can be taken now; else how long until it can.
    pub fn check(&mut self, amount: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= amount {
            return Ok(());
        }
        let missing = amount - self.level;
        Err(Duration::from_secs_f64(missing / self.per_second))
    }

    /// Admits while anything is left (for budgets charged afterwards); else how long until the
    /// level is above zero again.
    pub fn check_left(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level > 0.0 {
            return Ok(());
        }
        // Just above zero, so the retry finds something left.
        Err(Duration::from_secs_f64((-self.level) / self.per_second) + Duration::from_millis(1))
    }

    /// Takes `amount`, below zero if need be.
    pub fn charge(&mut self, amount: f64, now: Instant) {
        self.refill(now);
        self.level -= amount;
    }
}

/// A `Retry-After` value: whole seconds, rounded up, at least one.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_full_budget_admits_its_size_then_says_when_one_more_fits() {
        let t0 = Instant::now();
        let mut b = Budget::new(60.0, MINUTE, t0);
        for _ in 0..60 {
            assert_eq!(b.check(1.0, t0), Ok(()));
            b.charge(1.0, t0);
        }
        // One per second refills: the next request fits in one second.
        assert_eq!(b.check(1.0, t0), Err(Duration::from_secs(1)));
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(b.check(1.0, later), Ok(()));
    }

    #[test]
    fn refill_stops_at_the_size() {
        let t0 = Instant::now();
        let mut b = Budget::new(10.0, MINUTE, t0);
        b.charge(5.0, t0);
        let hour = t0 + Duration::from_secs(3600);
        b.charge(10.0, hour);
        assert!(
            b.check(0.5, hour).is_err(),
            "an idle hour must not bank more than the size"
        );
    }

    #[test]
    fn an_overdraw_waits_until_the_level_is_above_zero() {
        let t0 = Instant::now();
        // 600 tokens a minute: 10 a second.
        let mut b = Budget::new(600.0, MINUTE, t0);
        assert_eq!(b.check_left(t0), Ok(()));
        b.charge(900.0, t0);
        let wait = b.check_left(t0).unwrap_err();
        assert!(wait > Duration::from_secs(30) && wait < Duration::from_millis(30_010));
        assert_eq!(b.check_left(t0 + wait), Ok(()));
    }

    #[test]
    fn a_reload_keeps_what_was_spent() {
        let t0 = Instant::now();
        let mut b = Budget::new(100.0, MINUTE, t0);
        b.charge(80.0, t0);
        b.resize(200.0, MINUTE, t0);
        // 20 were left; 100 more allowed: 120 left, not a fresh 200.
        assert!(b.check(120.0, t0).is_ok());
        assert!(b.check(121.0, t0).is_err());
        b.resize(50.0, MINUTE, t0);
        assert!(b.check_left(t0).is_err(), "shrunk below what was spent");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }
}
