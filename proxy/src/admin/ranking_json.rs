//! `GET /ranking` in the shape docs/contract.md (Admin API) fixes. Numbers are unrounded; unknown is `null`.

use std::collections::BTreeSet;
use std::time::Instant;

use serde_json::{Value, json};

use crate::ranking::{History, RankingSnapshot};
use crate::usage::MeasuredJoules;

/// `models` lists every model the fleet holds, whatever the snapshot was filtered to, so that
/// a client showing one model can still offer the others.
/// `measured` is the ledger's J/token per node and model: shown beside the figure derived from
/// the rate and the power reading, for the model `tok_s` is about.
pub fn render(
    snapshot: &RankingSnapshot,
    models: &BTreeSet<String>,
    measured: &MeasuredJoules,
    now: Instant,
) -> Value {
    let nodes: Vec<Value> = snapshot
        .nodes
        .iter()
        .map(|e| {
            let measured = e
                .tok_s_model
                .as_deref()
                .and_then(|m| measured.get(e.id.as_str())?.get(m));
            json!({
                "id": e.id,
                "rank": e.rank,
                "penalized_wes": e.wes.penalized,
                "raw_wes": e.wes.raw,
                "thermal_cost_pct": e.wes.thermal_cost_pct,
                "tok_s": e.tok_s,
                "tok_s_single": e.tok_s_single,
                "tok_s_model": e.tok_s_model,
                "tok_s_source": e.tok_s_source.map(|s| s.as_str()),
                "watts": e.watts,
                "scoring_watts": e.scoring_watts,
                "idle_watts": e.idle_watts,
                "pue": e.pue,
                "joules_per_token": e.joules_per_token.gross,
                "joules_per_token_net": e.joules_per_token.net,
                "measured_joules_per_token": measured.map(|j| j.0),
                "measured_joules_per_token_net": measured.map(|j| j.1),
                "baseline_loss_pct": e.baseline_loss.map(|l| l * 100.0),
                "thermal_state": e.thermal.display_name(),
                "temperature_c": e.temperature_c,
                "power_capped": e.power_capped,
                "healthy": e.healthy,
                "unhealthy_reason": e.unhealthy_reason,
                "in_flight": e.state.own_in_flight(),
                "fleet_in_flight": e.state.in_flight(),
                "scored_in_flight": e.scored_in_flight,
                "last_sample_age_ms": e.last_sample_age(now).map(|d| d.as_millis() as u64),
                "models": e.models,
                "loaded_models": e.residency.as_ref().map(|r| {
                    r.loaded
                        .iter()
                        .map(|m| {
                            json!({
                                "name": m.name,
                                "size_bytes": m.size_bytes,
                                "size_vram_bytes": m.size_vram_bytes,
                                "expires_unix_ms": m.expires_unix_ms,
                            })
                        })
                        .collect::<Vec<_>>()
                }),
                "model_memory_bytes": e.residency.as_ref().and_then(|r| r.memory_bytes),
                "sensor_errors": e.sensor_errors,
            })
        })
        .collect();
    json!({ "nodes": nodes, "models": models, "reference_model": snapshot.reference_model })
}

/// `GET /ranking/history`: per node, one array per quantity, aligned on `t` (each step's start,
/// Unix ms; the last step is still open). Columns, not rows: a 1,000-node history is a few MB.
pub fn render_history(history: &History) -> Value {
    let nodes: Vec<Value> = history
        .series()
        .into_iter()
        .map(|s| {
            let p = &s.points;
            json!({
                "id": s.id,
                "t": p.iter().map(|p| p.at_ms).collect::<Vec<_>>(),
                "raw_wes": p.iter().map(|p| p.raw_wes).collect::<Vec<_>>(),
                "penalized_wes": p.iter().map(|p| p.penalized_wes).collect::<Vec<_>>(),
                "tok_s": p.iter().map(|p| p.tok_s).collect::<Vec<_>>(),
                "thermal_state": p.iter().map(|p| p.thermal.display_name()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "step_ms": history.step().as_millis() as u64,
        "window_ms": history.window().as_millis() as u64,
        "nodes": nodes,
    })
}
