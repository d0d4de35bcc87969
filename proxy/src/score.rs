//! The Wicklee Efficiency Score and its companions, as pure functions on exact values.
//! Rounding is for display only; ranking uses these unrounded.

use wes_proto::ThermalState;

/// The seed's penalty table. Unknown is not a thermal state the hardware reported, so it has no
/// penalty of its own: callers decide (by policy) whether an Unknown node is ranked at all.
pub fn thermal_penalty(state: ThermalState) -> Option<f64> {
    match state {
        ThermalState::Normal => Some(1.0),
        ThermalState::Fair => Some(1.25),
        ThermalState::Serious => Some(1.75),
        ThermalState::Critical => Some(2.0),
        ThermalState::Unknown => None,
    }
}

/// WES = tok/s ÷ (W × PUE × penalty). `None` whenever any input makes the score meaningless:
/// no tok/s, no watts, watts ≤ 0, a non-finite value. Never 0, never infinity.
pub fn wes(tok_s: Option<f64>, watts: Option<f64>, pue: f64, penalty: f64) -> Option<f64> {
    let (t, w) = (tok_s?, watts?);
    let denominator = w * pue * penalty;
    if !(t.is_finite() && t >= 0.0 && denominator.is_finite() && denominator > 0.0) {
        return None;
    }
    Some(t / denominator)
}

/// Raw and penalized WES and the thermal cost between them, for one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WesPair {
    pub raw: Option<f64>,
    pub penalized: Option<f64>,
    /// `(raw − penalized) / raw × 100`.
    pub thermal_cost_pct: Option<f64>,
}

pub fn wes_pair(tok_s: Option<f64>, watts: Option<f64>, pue: f64, state: ThermalState) -> WesPair {
    let raw = wes(tok_s, watts, pue, 1.0);
    let penalized = thermal_penalty(state).and_then(|p| wes(tok_s, watts, pue, p));
    let thermal_cost_pct = match (raw, penalized) {
        (Some(r), Some(p)) if r > 0.0 => Some((r - p) / r * 100.0),
        _ => None,
    };
    WesPair {
        raw,
        penalized,
        thermal_cost_pct,
    }
}

/// Share of a node's own clean efficiency it is losing now: `1 − penalized / best raw WES seen
/// under Normal` for the same node and model. The seed's "losing 54%" is this figure.
pub fn baseline_loss(penalized: Option<f64>, best_clean_raw: Option<f64>) -> Option<f64> {
    let (p, b) = (penalized?, best_clean_raw?);
    (b > 0.0 && p.is_finite()).then(|| 1.0 - p / b)
}

/// Joules per output token, gross (everything the node drew) and net of its idle baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JoulesPerToken {
    pub gross: Option<f64>,
    pub net: Option<f64>,
}

pub fn joules_per_token(
    joules: Option<f64>,
    seconds: f64,
    idle_watts: Option<f64>,
    tokens: u64,
) -> JoulesPerToken {
    if tokens == 0 || !seconds.is_finite() || seconds < 0.0 {
        return JoulesPerToken {
            gross: None,
            net: None,
        };
    }
    let gross = joules
        .filter(|j| j.is_finite() && *j >= 0.0)
        .map(|j| j / tokens as f64);
    let net = match (joules, idle_watts) {
        (Some(j), Some(idle)) if j.is_finite() && idle.is_finite() && idle >= 0.0 => {
            Some((j - idle * seconds).max(0.0) / tokens as f64)
        }
        _ => None,
    };
    JoulesPerToken { gross, net }
}

/// Rounds for display the way the seed does (one decimal).
pub fn display_round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn seed_clean_node() {
        let p = wes_pair(Some(108.9), Some(0.6), 1.0, ThermalState::Normal);
        assert_eq!(display_round(p.raw.unwrap()), 181.5);
        assert_eq!(display_round(p.penalized.unwrap()), 181.5);
        assert_eq!(p.thermal_cost_pct.unwrap().round(), 0.0);
    }

    #[test]
    fn seed_throttled_node() {
        let p = wes_pair(Some(94.1), Some(0.9), 1.0, ThermalState::Fair);
        assert_eq!(display_round(p.raw.unwrap()), 104.6);
        assert_eq!(display_round(p.penalized.unwrap()), 83.6);
        assert_eq!(p.thermal_cost_pct.unwrap().round(), 20.0);
        // The seed's "losing 54%": penalized throttled against the clean baseline of 181.5.
        let clean = wes(Some(108.9), Some(0.6), 1.0, 1.0);
        let loss = baseline_loss(p.penalized, clean).unwrap();
        assert_eq!((loss * 100.0).round(), 54.0);
    }

    #[test]
    fn pue_and_penalty_divide() {
        let plain = wes(Some(100.0), Some(50.0), 1.0, 1.0).unwrap();
        let with_pue = wes(Some(100.0), Some(50.0), 1.5, 1.0).unwrap();
        let serious = wes(Some(100.0), Some(50.0), 1.0, 1.75).unwrap();
        assert!(close(plain, 2.0));
        assert!(close(with_pue, 2.0 / 1.5));
        assert!(close(serious, 2.0 / 1.75));
        assert_eq!(thermal_penalty(ThermalState::Critical), Some(2.0));
    }

    #[test]
    fn no_score_without_meaningful_inputs() {
        assert_eq!(wes(None, Some(1.0), 1.0, 1.0), None);
        assert_eq!(wes(Some(1.0), None, 1.0, 1.0), None);
        assert_eq!(wes(Some(1.0), Some(0.0), 1.0, 1.0), None);
        assert_eq!(wes(Some(1.0), Some(-3.0), 1.0, 1.0), None);
        assert_eq!(wes(Some(f64::NAN), Some(1.0), 1.0, 1.0), None);
        assert_eq!(wes(Some(1.0), Some(f64::INFINITY), 1.0, 1.0), None);
        let unknown = wes_pair(Some(10.0), Some(5.0), 1.0, ThermalState::Unknown);
        assert_eq!(unknown.raw, Some(2.0));
        assert_eq!(unknown.penalized, None);
        assert_eq!(unknown.thermal_cost_pct, None);
    }

    #[test]
    fn joules_per_token_gross_and_net() {
        // 100 W for 2 s over 50 tokens, idle 40 W: gross 4 J/token, net (200-80)/50 = 2.4.
        let j = joules_per_token(Some(200.0), 2.0, Some(40.0), 50);
        assert!(close(j.gross.unwrap(), 4.0));
        assert!(close(j.net.unwrap(), 2.4));
        assert_eq!(joules_per_token(Some(200.0), 2.0, None, 0).gross, None);
    }
}
