//! The one scoring function: what a node is worth for one model now. The board and the routing
//! table both call it, so a node's row and its place in a route cannot disagree.

use std::sync::Arc;
use std::time::Instant;

use wes_proto::ThermalState;

use crate::config::{LoadScore, PowerBasis, RoutingConfig};
use crate::fleet::load::MAX_TRACKED;
use crate::fleet::{FleetNode, LoadModel, RateSource, Telemetry};
use crate::score;

#[derive(Debug, Clone, Default)]
pub struct NodeScore {
    /// The model scored; `None` when the node has no rate for any.
    pub model: Option<String>,
    /// The node's throughput at its current load: tokens per second over all its streams
    /// (one stream's rate while idle).
    pub tok_s: Option<f64>,
    /// One stream's rate alone.
    pub tok_s_single: Option<f64>,
    /// Requests in flight when scored: the load `tok_s` and the watts are at.
    pub in_flight: u32,
    pub source: Option<RateSource>,
    /// The watts the score divides by: power while generating (see `fleet::PowerEstimate`).
    pub scoring_watts: Option<f64>,
    pub wes: score::WesPair,
    /// Share of the node's own clean efficiency for this model it is losing now.
    pub baseline_loss: Option<f64>,
    /// Index n: the routing score of one more request while n are in flight
    /// ([`next_request_score`]), for n up to the node's limit; empty while unmeasured.
    pub next: Arc<[Option<f64>]>,
}

/// Scores `node` on `model` at the load it carries now: its throughput there (from the load
/// curve, else one stream's rate: relayed, else probe), the watts it draws there, its PUE and
/// its thermal penalty; and, for routing, what one more request would score at each load.
/// Reads fleet state only.
pub fn score(
    node: &FleetNode,
    telemetry: Option<&Telemetry>,
    model: &str,
    routing: &RoutingConfig,
    now: Instant,
) -> NodeScore {
    let latest_watts = telemetry.and_then(|t| t.watts);
    let thermal = telemetry.map_or(ThermalState::Unknown, |t| t.thermal);
    let pue = node.config.pue;
    let in_flight = node.state.in_flight();
    let curve = node.state.load_model(model, latest_watts, now);
    let load = in_flight.max(1);
    let tok_s = curve.as_ref().map(|c| c.tok_s(load));
    let scoring_watts = match &curve {
        Some(c) => c.watts(load),
        None => node.state.scoring_watts(Some(model), latest_watts),
    };
    let wes = score::wes_pair(tok_s, scoring_watts, pue, thermal);
    // The baseline is one stream's, kept without PUE (a site's PUE may change on reload): the
    // loss compares one stream now with one stream at its best, whatever the load.
    let best_clean_raw = node.state.best_clean(model).map(|b| b / pue);
    let single = match &curve {
        Some(c) => score::wes_pair(Some(c.tok_s(1)), c.watts(1), pue, thermal),
        None => wes,
    };
    let next = match (&curve, score::thermal_penalty(thermal)) {
        (Some(c), Some(penalty)) => {
            // Past the curve's last measured load the score stays what it is there.
            let limit = node
                .config
                .max_concurrency
                .clamp(1, MAX_TRACKED as u32)
                .min(c.measured_up_to().max(1) + 1);
            (0..limit)
                .map(|n| next_request_score(c, n, routing.score, routing.power_basis, pue, penalty))
                .collect()
        }
        _ => Arc::from([]),
    };
    NodeScore {
        model: Some(model.to_owned()),
        tok_s,
        tok_s_single: curve.as_ref().map(|c| c.tok_s(1)),
        in_flight,
        source: node
            .state
            .tok_s_for(model, now)
            .map(|r| r.1)
            .or(curve.is_some().then_some(RateSource::Estimated)),
        scoring_watts,
        wes,
        baseline_loss: score::baseline_loss(single.penalized, best_clean_raw),
        next,
    }
}

/// What sending one more request to a node with `n` in flight is worth (docs/design.md,
/// "Load"). `Average`: the node's penalized WES at n + 1. `Marginal`: the tokens per second
/// the request adds per watt it adds; where the power curve shows no rise (nothing measured
/// between n and n + 1) that quotient means nothing, and the average stands in. `Net`
/// subtracts the node's idle power from what `Average` divides by (gross when the idle power
/// is unknown).
pub fn next_request_score(
    curve: &LoadModel,
    n: u32,
    kind: LoadScore,
    basis: PowerBasis,
    pue: f64,
    penalty: f64,
) -> Option<f64> {
    let after = n + 1;
    let watts = curve.watts(after)?;
    let watts = match (basis, curve.idle_watts()) {
        (PowerBasis::Net, Some(idle)) => watts - idle,
        _ => watts,
    };
    let average = score::wes(Some(curve.tok_s(after)), Some(watts), pue, penalty);
    if kind == LoadScore::Average {
        return average;
    }
    let before_watts = if n == 0 {
        curve.idle_watts().unwrap_or(0.0)
    } else {
        curve.watts(n)?
    };
    let added_watts = curve.watts(after)? - before_watts;
    // Less than a milliwatt: no rise measured.
    if added_watts < 1e-3 {
        return average;
    }
    let added_tok_s = (curve.tok_s(after) - curve.tok_s(n)).max(0.0);
    score::wes(Some(added_tok_s), Some(added_watts), pue, penalty)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fleet::load::{LoadCurve, PowerCurve, Prior};

    fn model(per_stream: &[(f64, f64)], power: &[(f64, f64)]) -> LoadModel {
        let now = Instant::now();
        let mut c = LoadCurve::default();
        for (n, r) in per_stream {
            c.observe(*n, *r, now);
        }
        let mut p = PowerCurve::default();
        for (n, w) in power {
            p.observe(*n, *w);
        }
        LoadModel::new(Some(&c), &p, Prior::default(), None, None, now).unwrap()
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn a_busy_node_that_batches_beats_an_idle_one_that_does_not() {
        // Batches: 4 streams at 90 each for 130 W; one alone at 100 for 100 W.
        let gpu = model(
            &[(1.0, 100.0), (4.0, 90.0)],
            &[(0.0, 60.0), (1.0, 100.0), (4.0, 130.0)],
        );
        // Faster alone, barely batches: 2 streams at 60 each, +40 W.
        let cpu = model(
            &[(1.0, 110.0), (2.0, 60.0)],
            &[(0.0, 30.0), (1.0, 80.0), (2.0, 120.0)],
        );
        let avg = |m: &LoadModel, n| {
            next_request_score(m, n, LoadScore::Average, PowerBasis::Gross, 1.0, 1.0)
        };
        // Alone, the CPU box wins: 110/80 against 100/100.
        assert!(avg(&cpu, 0).unwrap() > avg(&gpu, 0).unwrap());
        // With three in flight the GPU's next request is worth 360/130; the idle CPU's 110/80.
        assert!(close(avg(&gpu, 3), 360.0 / 130.0));
        assert!(avg(&gpu, 3).unwrap() > avg(&cpu, 0).unwrap());
        // Marginal: the GPU's fourth stream adds (360 − 280)/(130 − 120) tok/s per W.
        let t3 = 100.0 + 2.0 * (360.0 - 100.0) / 3.0;
        let m = next_request_score(&gpu, 3, LoadScore::Marginal, PowerBasis::Gross, 1.0, 1.0);
        assert!(close(m, (360.0 - t3) / 10.0), "{m:?}");
        // The CPU's second stream adds 10 tok/s for 40 W.
        let m = next_request_score(&cpu, 1, LoadScore::Marginal, PowerBasis::Gross, 1.0, 1.0);
        assert!(close(m, 10.0 / 40.0));
        // From idle the marginal figure is net of the idle power: 110 / (80 − 30).
        let m = next_request_score(&cpu, 0, LoadScore::Marginal, PowerBasis::Gross, 1.0, 1.0);
        assert!(close(m, 110.0 / 50.0));
    }

    #[test]
    fn net_basis_pue_and_penalty_divide_as_the_seed_does() {
        let m = model(&[(1.0, 100.0)], &[(0.0, 20.0), (1.0, 100.0)]);
        let net = next_request_score(&m, 0, LoadScore::Average, PowerBasis::Net, 1.0, 1.0);
        assert!(close(net, 100.0 / 80.0));
        let penalized = next_request_score(&m, 0, LoadScore::Average, PowerBasis::Gross, 1.5, 1.25);
        assert!(close(penalized, 100.0 / (100.0 * 1.5 * 1.25)));
        // Beyond what was measured the curve is flat: the marginal figure falls back to the
        // average, not to a division by zero.
        let flat = next_request_score(&m, 3, LoadScore::Marginal, PowerBasis::Gross, 1.0, 1.0);
        assert!(close(flat, 1.0));
    }
}
