//! `GET /ranking` in the shape CONTRACT.md fixes. Numbers are unrounded; unknown is `null`.

use std::collections::BTreeSet;
use std::time::Instant;

use serde_json::{Value, json};

use crate::ranking::{RankEntry, RankingSnapshot};

/// `models` lists every model the fleet holds, whatever the snapshot was filtered to, so that
/// a client showing one model can still offer the others.
pub fn render(snapshot: &RankingSnapshot, models: &BTreeSet<String>, now: Instant) -> Value {
    let nodes: Vec<Value> = snapshot
        .nodes
        .iter()
        .map(|e| {
            json!({
                "id": e.id,
                "rank": e.rank,
                "penalized_wes": e.wes.penalized,
                "raw_wes": e.wes.raw,
                "thermal_cost_pct": e.wes.thermal_cost_pct,
                "tok_s": e.tok_s,
                "tok_s_model": e.tok_s_model,
                "tok_s_source": e.tok_s_source.map(|s| s.as_str()),
                "watts": e.watts,
                "scoring_watts": e.scoring_watts,
                "idle_watts": e.idle_watts,
                "pue": e.pue,
                "joules_per_token": joules_per_token(e),
                "joules_per_token_net": net_joules_per_token(e),
                "baseline_loss_pct": e.baseline_loss.map(|l| l * 100.0),
                "thermal_state": e.thermal.display_name(),
                "temperature_c": e.temperature_c,
                "power_capped": e.power_capped,
                "healthy": e.healthy,
                "unhealthy_reason": e.unhealthy_reason,
                "in_flight": e.state.in_flight(),
                "last_sample_age_ms": e.last_sample_age(now).map(|d| d.as_millis() as u64),
                "models": e.models,
                "sensor_errors": e.sensor_errors,
            })
        })
        .collect();
    json!({ "nodes": nodes, "models": models, "reference_model": snapshot.reference_model })
}

/// Energy per output token at the node's current rate: `watts × pue ÷ tok/s`, the facility's
/// joules and not just the board's. `score::joules_per_token` integrates energy over a counted
/// interval; here there is only a power reading and a rate, so the ratio is taken directly. It
/// is the reciprocal of raw WES, but computed apart so that a rate of 0 gives `None`, not
/// infinity.
pub fn joules_per_token(e: &RankEntry) -> Option<f64> {
    rate_joules_per_token(e.scoring_watts, e.pue, e.tok_s)
}

/// The same net of the node's idle baseline: what generating adds over standing by.
pub fn net_joules_per_token(e: &RankEntry) -> Option<f64> {
    let added = (e.scoring_watts? - e.idle_watts?).max(0.0);
    let (t, pue) = (e.tok_s?, e.pue);
    (t > 0.0).then(|| added * pue / t)
}

fn rate_joules_per_token(watts: Option<f64>, pue: f64, tok_s: Option<f64>) -> Option<f64> {
    let (w, t) = (watts?, tok_s?);
    let j = w * pue / t;
    (w > 0.0 && t > 0.0 && pue > 0.0 && j.is_finite()).then_some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joules_per_token_is_facility_energy_per_token() {
        // The seed's clean node: 0.6 W at 108.9 tok/s.
        let j = rate_joules_per_token(Some(0.6), 1.0, Some(108.9));
        assert_eq!(j, Some(0.6 / 108.9));
        let raw = crate::score::wes(Some(108.9), Some(0.6), 1.5, 1.0);
        let with_pue = rate_joules_per_token(Some(0.6), 1.5, Some(108.9));
        assert!(
            matches!((raw, with_pue), (Some(r), Some(j)) if (r * j - 1.0).abs() < 1e-12),
            "{raw:?} {with_pue:?}"
        );
    }

    #[test]
    fn joules_per_token_unknown_is_none() {
        assert_eq!(rate_joules_per_token(None, 1.0, Some(10.0)), None);
        assert_eq!(rate_joules_per_token(Some(10.0), 1.0, None), None);
        assert_eq!(rate_joules_per_token(Some(10.0), 1.0, Some(0.0)), None);
        assert_eq!(rate_joules_per_token(Some(0.0), 1.0, Some(10.0)), None);
        assert_eq!(rate_joules_per_token(Some(-1.0), 1.0, Some(10.0)), None);
        assert_eq!(rate_joules_per_token(Some(f64::NAN), 1.0, Some(10.0)), None);
    }
}
