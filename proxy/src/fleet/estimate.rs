//! Decode-rate estimates per (node, model) (and any other measured quantity that should fade): a time-decayed average of what the proxy measured
//! on relayed responses, so that a node's recent speed counts most and old speed fades.

use std::time::{Duration, Instant};

/// How fast old measurements lose weight: after one half-life a measurement counts half.
pub const HALF_LIFE: Duration = Duration::from_secs(60);
/// Below this weight the estimate is too old to trust: the model counts as unmeasured again
/// (about 4.3 half-lives), and gets probed or explored.
const MIN_WEIGHT: f64 = 0.05;

#[derive(Debug, Clone, PartialEq)]
pub struct RateEstimate {
    /// Weighted mean tok/s.
    tok_s: f64,
    /// Sum of the decayed weights behind `tok_s`, as of `updated_at`.
    weight: f64,
    updated_at: Instant,
    /// Relayed responses measured, ever.
    pub observations: u64,
}

fn decay(age: Duration, half_life: Duration) -> f64 {
    0.5f64.powf(age.as_secs_f64() / half_life.as_secs_f64().max(f64::MIN_POSITIVE))
}

impl RateEstimate {
    pub fn new(tok_s: f64, at: Instant) -> Self {
        RateEstimate {
            tok_s,
            weight: 1.0,
            updated_at: at,
            observations: 1,
        }
    }

    /// Folds one measurement in; each new measurement has weight 1, older ones their decayed
    /// weight, so a node that slows down shows it within a few requests.
    pub fn observe(&mut self, tok_s: f64, at: Instant, half_life: Duration) {
        let carried = self.weight * decay(at.saturating_duration_since(self.updated_at), half_life);
        self.tok_s = (self.tok_s * carried + tok_s) / (carried + 1.0);
        self.weight = carried + 1.0;
        self.updated_at = at;
        self.observations += 1;
    }

    pub fn updated_at(&self) -> Instant {
        self.updated_at
    }

    /// The estimate now, or `None` once it has faded below trust.
    pub fn current(&self, now: Instant, half_life: Duration) -> Option<f64> {
        self.current_weighted(now, half_life).map(|(v, _)| v)
    }

    /// The estimate now with the decayed weight behind it, or `None` once it has faded.
    pub fn current_weighted(&self, now: Instant, half_life: Duration) -> Option<(f64, f64)> {
        let weight = self.weight * decay(now.saturating_duration_since(self.updated_at), half_life);
        (weight >= MIN_WEIGHT).then_some((self.tok_s, weight))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recent_measurements_dominate() {
        let t0 = Instant::now();
        let mut e = RateEstimate::new(100.0, t0);
        // Long after, a slower node: the old figure has faded to almost nothing.
        e.observe(50.0, t0 + HALF_LIFE * 3, HALF_LIFE);
        let now = t0 + HALF_LIFE * 3;
        let v = e.current(now, HALF_LIFE).unwrap();
        assert!((v - (100.0 * 0.125 + 50.0) / 1.125).abs() < 1e-9, "{v}");
        // Two at the same instant weigh the same.
        let mut f = RateEstimate::new(10.0, t0);
        f.observe(20.0, t0, HALF_LIFE);
        assert!((f.current(t0, HALF_LIFE).unwrap() - 15.0).abs() < 1e-9);
        assert_eq!(f.observations, 2);
    }

    #[test]
    fn old_estimates_fade_to_unmeasured() {
        let t0 = Instant::now();
        let e = RateEstimate::new(100.0, t0);
        assert_eq!(e.current(t0 + HALF_LIFE * 4, HALF_LIFE), Some(100.0));
        assert_eq!(e.current(t0 + HALF_LIFE * 5, HALF_LIFE), None);
    }
}
