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

/// A score in tokens per joule (WES, penalized or not) for a request of `tokens` that must
/// first spend `extra_joules` in the same units (a model load): the request's tokens over all
/// the energy it causes.
pub fn with_extra_energy(score: f64, tokens: f64, extra_joules: f64) -> f64 {
    if !(score > 0.0 && tokens > 0.0) {
        return score;
    }
    tokens / (tokens / score + extra_joules.max(0.0))
}

/// Raw and penalized WES and the thermal cost between them, for one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JoulesPerToken {
    pub gross: Option<f64>,
    pub net: Option<f64>,
}

/// Energy per output token at a node's current rate: `watts × pue ÷ tok/s`, the facility's
/// joules and not just the board's; net subtracts the idle baseline first (what generating
/// adds over standing by). It is the reciprocal of raw WES, computed apart so that a rate of 0
/// gives `None`, not infinity.
pub fn rate_joules_per_token(
    tok_s: Option<f64>,
    watts: Option<f64>,
    idle_watts: Option<f64>,
    pue: f64,
) -> JoulesPerToken {
    let gross = match (watts, tok_s) {
        (Some(w), Some(t)) => {
            let j = w * pue / t;
            (w > 0.0 && t > 0.0 && pue > 0.0 && j.is_finite()).then_some(j)
        }
        _ => None,
    };
    let net = match (watts, idle_watts, tok_s) {
        (Some(w), Some(idle), Some(t)) if t > 0.0 => {
            let j = (w - idle).max(0.0) * pue / t;
            j.is_finite().then_some(j)
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
    fn joules_per_token_is_facility_energy_per_token() {
        // The seed's clean node: 0.6 W at 108.9 tok/s.
        let j = rate_joules_per_token(Some(108.9), Some(0.6), None, 1.0).gross;
        assert_eq!(j, Some(0.6 / 108.9));
        let raw = wes(Some(108.9), Some(0.6), 1.5, 1.0);
        let with_pue = rate_joules_per_token(Some(108.9), Some(0.6), None, 1.5).gross;
        assert!(
            matches!((raw, with_pue), (Some(r), Some(j)) if (r * j - 1.0).abs() < 1e-12),
            "{raw:?} {with_pue:?}"
        );
    }

    #[test]
    fn joules_per_token_unknown_is_none() {
        let gross = |watts, tok_s| rate_joules_per_token(tok_s, watts, None, 1.0).gross;
        assert_eq!(gross(None, Some(10.0)), None);
        assert_eq!(gross(Some(10.0), None), None);
        assert_eq!(gross(Some(10.0), Some(0.0)), None);
        assert_eq!(gross(Some(0.0), Some(10.0)), None);
        assert_eq!(gross(Some(-1.0), Some(10.0)), None);
        assert_eq!(gross(Some(f64::NAN), Some(10.0)), None);
    }

    #[test]
    fn net_joules_per_token_subtracts_the_idle_baseline() {
        // 100 W generating at 50 tok/s, idle 40 W: gross 2 J/token, net 60/50 = 1.2.
        let j = rate_joules_per_token(Some(50.0), Some(100.0), Some(40.0), 1.0);
        assert!(close(j.gross.unwrap(), 2.0));
        assert!(close(j.net.unwrap(), 1.2));
        assert_eq!(
            rate_joules_per_token(Some(50.0), Some(100.0), None, 1.0).net,
            None
        );
    }
}
