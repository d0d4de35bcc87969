//! `GET /ranking` in the shape CONTRACT.md fixes. Numbers are unrounded; unknown is `null`.

use std::time::Instant;

use serde_json::{Value, json};

use crate::ranking::RankingSnapshot;

pub fn render(snapshot: &RankingSnapshot, now: Instant) -> Value {
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
                "pue": e.pue,
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
    json!({ "nodes": nodes })
}
