//! The one scoring function: what a node is worth for one model now. The board and the routing
//! table both call it, so a node's row and its place in a route cannot disagree.

use std::time::Instant;

use wes_proto::ThermalState;

use crate::fleet::{FleetNode, RateSource, Telemetry};
use crate::score;

#[derive(Debug, Clone, Default)]
pub struct NodeScore {
    /// The model scored; `None` when the node has no rate for any.
    pub model: Option<String>,
    pub tok_s: Option<f64>,
    pub source: Option<RateSource>,
    /// The watts the score divides by: power while generating (see `fleet::PowerEstimate`).
    pub scoring_watts: Option<f64>,
    pub wes: score::WesPair,
    /// Share of the node's own clean efficiency for this model it is losing now.
    pub baseline_loss: Option<f64>,
}

/// Scores `node` on `model`: its current decode rate (relayed, else probe), the watts it draws
/// while generating, its PUE and its thermal penalty. Reads fleet state only.
pub fn score(
    node: &FleetNode,
    telemetry: Option<&Telemetry>,
    model: &str,
    now: Instant,
) -> NodeScore {
    let rate = node.state.tok_s_for(model, now);
    let tok_s = rate.map(|r| r.0);
    let scoring_watts = node
        .state
        .scoring_watts(Some(model), telemetry.and_then(|t| t.watts));
    let thermal = telemetry.map_or(ThermalState::Unknown, |t| t.thermal);
    let pue = node.config.pue;
    let wes = score::wes_pair(tok_s, scoring_watts, pue, thermal);
    // The baseline is kept without PUE (a site's PUE may change on reload); raw WES has it.
    let best_clean_raw = node.state.best_clean(model).map(|b| b / pue);
    NodeScore {
        model: Some(model.to_owned()),
        tok_s,
        source: rate.map(|r| r.1),
        scoring_watts,
        wes,
        baseline_loss: score::baseline_loss(wes.penalized, best_clean_raw),
    }
}
