//! Which watts a node's score uses. WES divides a decode rate by the power drawn *while
//! generating*; a node's momentary reading while idle is its baseline, not its cost per token.
//! Scoring on the momentary reading would make every idle node look efficient, pull traffic to
//! it, make it look costly, push traffic away: flapping. So each sample is filed as busy or idle
//! (busy when the proxy has requests in flight on the node, or the node reports high
//! utilization), and each kind is smoothed on its own.

/// Utilization at or above this counts as generating even with nothing of ours in flight
/// (another proxy replica's traffic, a local user).
pub const BUSY_UTILIZATION_PCT: f64 = 50.0;
/// Weight of the newest sample in each average: about the last ten samples count.
const ALPHA: f64 = 0.2;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PowerEstimate {
    /// Smoothed watts over samples taken while generating.
    pub busy: Option<f64>,
    /// Smoothed watts over samples taken while idle: the node's baseline.
    pub idle: Option<f64>,
}

impl PowerEstimate {
    pub fn observe(&mut self, watts: f64, busy: bool) {
        let slot = if busy { &mut self.busy } else { &mut self.idle };
        *slot = Some(match *slot {
            None => watts,
            Some(old) => old + ALPHA * (watts - old),
        });
    }

    /// Watts for scoring: the generating average; else the power a probe drew for this model;
    /// else the latest reading (a node never seen generating, honestly labelled by the caller).
    pub fn generating(&self, probe_watts: Option<f64>, latest: Option<f64>) -> Option<f64> {
        self.busy.or(probe_watts).or(latest)
    }
}

pub fn is_busy(in_flight: u32, utilization_pct: Option<f64>) -> bool {
    in_flight > 0 || utilization_pct.is_some_and(|u| u >= BUSY_UTILIZATION_PCT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_idle_are_averaged_apart() {
        let mut p = PowerEstimate::default();
        p.observe(20.0, false);
        assert_eq!(
            p.generating(None, Some(20.0)),
            Some(20.0),
            "never busy: the latest reading"
        );
        assert_eq!(
            p.generating(Some(200.0), Some(20.0)),
            Some(200.0),
            "a probe's watts first"
        );
        p.observe(250.0, true);
        p.observe(300.0, true);
        p.observe(30.0, false);
        assert_eq!(p.busy, Some(260.0));
        assert_eq!(p.idle, Some(22.0));
        assert_eq!(p.generating(Some(200.0), Some(30.0)), Some(260.0));
    }

    #[test]
    fn busy_means_our_requests_or_high_utilization() {
        assert!(is_busy(1, None));
        assert!(is_busy(0, Some(80.0)));
        assert!(!is_busy(0, Some(10.0)));
        assert!(!is_busy(0, None));
    }
}
