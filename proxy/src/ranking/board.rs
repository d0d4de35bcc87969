//! The board: every node with its scores and health, in rank order: what `/ranking`, the
//! leaderboard and the node gauges in `/metrics` show.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wes_proto::ThermalState;

use super::node_score::NodeScore;
use crate::fleet::{FleetNode, FleetView, RateSource, Telemetry};
use crate::score;

#[derive(Debug, Default)]
pub struct RankingSnapshot {
    pub built_at: Option<Instant>,
    /// All nodes, ranked first (by penalized WES), then the unranked.
    pub nodes: Vec<RankEntry>,
    /// Every model some node holds (fleet-wide board; a per-model board holds its one model).
    pub models: BTreeSet<String>,
    /// The fleet-wide ranking scores every node on this model where it can (the model most
    /// nodes have a rate for), so that a node is not ranked on a tiny model against another's
    /// large one. `None` for a per-model ranking, or when nothing is measured.
    pub reference_model: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RankEntry {
    pub id: String,
    /// 1-based; `None` when the node cannot be ranked (unhealthy, or no score).
    pub rank: Option<u32>,
    pub wes: score::WesPair,
    /// Throughput at the node's current load: tokens per second over all its streams.
    pub tok_s: Option<f64>,
    /// One stream's rate alone.
    pub tok_s_single: Option<f64>,
    /// Requests in flight when the row was scored: the load `tok_s`, `scoring_watts` and the
    /// WES are at. The live count (`state.in_flight()`) may have moved since.
    pub scored_in_flight: u32,
    /// Which model `tok_s` is for.
    pub tok_s_model: Option<String>,
    pub tok_s_source: Option<RateSource>,
    /// The node's latest power reading.
    pub watts: Option<f64>,
    /// The watts the score divides by: power while generating (see `fleet::PowerEstimate`).
    pub scoring_watts: Option<f64>,
    /// Smoothed power while idle: the baseline for net J/token.
    pub idle_watts: Option<f64>,
    /// Energy per output token at the current rate, gross and net of the idle baseline.
    pub joules_per_token: score::JoulesPerToken,
    /// `1 − penalized / best clean raw WES` for this node and model (the seed's "losing 54%").
    pub baseline_loss: Option<f64>,
    pub pue: f64,
    pub thermal: ThermalState,
    pub temperature_c: Option<f64>,
    pub healthy: bool,
    /// Why the node is not healthy, for the admin.
    pub unhealthy_reason: Option<String>,
    pub sample_received_at: Option<Instant>,
    pub models: Option<Vec<String>>,
    /// What the node has loaded in memory; `None`: it does not say.
    pub residency: Option<Arc<crate::fleet::Residency>>,
    pub sensor_errors: Vec<String>,
    pub power_capped: bool,
    pub state: Arc<crate::fleet::NodeState>,
}

impl RankEntry {
    pub fn last_sample_age(&self, now: Instant) -> Option<Duration> {
        self.sample_received_at
            .map(|t| now.saturating_duration_since(t))
    }

    /// One node's row, from its telemetry, its score and the eligibility verdict.
    pub(super) fn new(
        node: &FleetNode,
        telemetry: Option<&Telemetry>,
        scored: Option<NodeScore>,
        unhealthy_reason: Option<String>,
    ) -> Self {
        let watts = telemetry.and_then(|t| t.watts);
        let (scored, unscored_watts) = match scored {
            Some(s) => (s, None),
            // Unmeasured: still show the watts a score would divide by.
            None => (NodeScore::default(), node.state.scoring_watts(None, watts)),
        };
        let scoring_watts = scored.scoring_watts.or(unscored_watts);
        let idle_watts = node.state.power().idle;
        RankEntry {
            id: node.config.id.clone(),
            rank: None,
            wes: scored.wes,
            baseline_loss: scored.baseline_loss,
            scoring_watts,
            idle_watts,
            joules_per_token: score::rate_joules_per_token(
                scored.tok_s,
                scoring_watts,
                idle_watts,
                node.config.pue,
            ),
            tok_s: scored.tok_s,
            tok_s_single: scored.tok_s_single,
            scored_in_flight: scored.in_flight,
            tok_s_source: scored.source,
            tok_s_model: scored.model,
            watts,
            pue: node.config.pue,
            thermal: telemetry.map_or(ThermalState::Unknown, |t| t.thermal),
            temperature_c: telemetry.and_then(|t| t.temperature_c),
            healthy: unhealthy_reason.is_none(),
            unhealthy_reason,
            sample_received_at: telemetry.map(|t| t.received_at),
            models: telemetry.and_then(|t| t.models.clone()),
            residency: telemetry.and_then(|t| t.residency.clone()),
            sensor_errors: telemetry
                .map(|t| t.sensor_errors.clone())
                .unwrap_or_default(),
            power_capped: telemetry.is_some_and(|t| t.power_capped),
            state: node.state.clone(),
        }
    }
}

impl RankingSnapshot {
    /// Sorts the rows and numbers the rankable ones.
    pub(super) fn from_entries(
        mut nodes: Vec<RankEntry>,
        models: BTreeSet<String>,
        reference_model: Option<String>,
        now: Instant,
    ) -> Self {
        nodes.sort_by(rank_order);
        let mut next = 1u32;
        for entry in &mut nodes {
            if entry.healthy && entry.wes.penalized.is_some() {
                entry.rank = Some(next);
                next += 1;
            }
        }
        RankingSnapshot {
            built_at: Some(now),
            nodes,
            models,
            reference_model,
        }
    }
}

/// The model the most nodes have a rate for; ties to the name first in order.
pub(super) fn reference_model(fleet: &FleetView, now: Instant) -> Option<String> {
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for node in &fleet.nodes {
        for m in node.state.rated_models(now) {
            *counts.entry(m).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by(|(ma, a), (mb, b)| a.cmp(b).then_with(|| mb.cmp(ma)))
        .map(|(m, _)| m)
}

/// Ranked before unranked; higher penalized WES first; ties to fewer in flight, then by id so
/// the order is total and stable.
fn rank_order(a: &RankEntry, b: &RankEntry) -> Ordering {
    let rankable = |e: &RankEntry| e.healthy && e.wes.penalized.is_some();
    rankable(b)
        .cmp(&rankable(a))
        .then_with(|| {
            let (pa, pb) = (
                a.wes.penalized.unwrap_or(f64::MIN),
                b.wes.penalized.unwrap_or(f64::MIN),
            );
            pb.total_cmp(&pa)
        })
        .then_with(|| a.state.in_flight().cmp(&b.state.in_flight()))
        .then_with(|| a.id.cmp(&b.id))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{HealthConfig, NodeConfig, RoutingConfig};
    use crate::fleet::{Fleet, ProbeObservation, Telemetry};

    fn node(id: &str, pue: f64) -> NodeConfig {
        NodeConfig {
            pue,
            ..NodeConfig::for_test(id)
        }
    }

    fn report(fleet: &Fleet, id: &str, watts: f64, thermal: ThermalState, tok_s: f64) {
        let mut t = Telemetry::for_test(watts);
        t.thermal = thermal;
        t.models = Some(vec!["m".into()]);
        let probe = ProbeObservation::for_test("m", tok_s);
        assert!(fleet.record(id, t, vec![probe]).is_some());
    }

    fn build(fleet: &Fleet) -> RankingSnapshot {
        build_as(fleet, "m")
    }

    fn build_as(fleet: &Fleet, model: &str) -> RankingSnapshot {
        RankingSnapshot::build_for_model(
            &fleet.view(),
            &RoutingConfig::default(),
            &HealthConfig::default(),
            Instant::now(),
            model,
        )
    }

    #[test]
    fn a_per_model_board_finds_the_model_under_either_spelling() {
        let fleet = Fleet::new(&[node("a", 1.0)]);
        report(&fleet, "a", 0.6, ThermalState::Normal, 108.9);
        let snap = build_as(&fleet, "m:latest");
        assert_eq!(snap.nodes.len(), 1);
        // Scored on the node's rate for `m`: the name it lists.
        assert!((snap.nodes[0].wes.raw.unwrap() - 108.9 / 0.6).abs() < 1e-9);
        assert!(build_as(&fleet, "m:7b").nodes.is_empty());
    }

    #[test]
    fn order_follows_penalized_wes_with_pue_and_penalties() {
        let fleet = Fleet::new(&[
            node("clean", 1.0),
            node("hot", 1.0),
            node("dear-site", 2.0),
            node("critical", 1.0),
            node("silent", 1.0),
        ]);
        // The seed's pair: 181.5 clean, 104.6 raw / 83.6 penalized under Fair.
        report(&fleet, "clean", 0.6, ThermalState::Normal, 108.9);
        report(&fleet, "hot", 0.9, ThermalState::Fair, 94.1);
        // 108.9 / (0.6 × 2.0) = 90.75: PUE halves the clean node's score, above hot's 83.6.
        report(&fleet, "dear-site", 0.6, ThermalState::Normal, 108.9);
        report(&fleet, "critical", 0.1, ThermalState::Critical, 108.9);
        let snap = build(&fleet);
        let order: Vec<_> = snap.nodes.iter().map(|e| (e.id.as_str(), e.rank)).collect();
        assert_eq!(
            order,
            [
                ("clean", Some(1)),
                ("dear-site", Some(2)),
                ("hot", Some(3)),
                // Critical is excluded by default: scored, but not ranked.
                ("critical", None),
            ]
        );
        let hot = &snap.nodes[2];
        assert!((hot.wes.raw.unwrap() - 94.1 / 0.9).abs() < 1e-9);
        assert!((hot.wes.penalized.unwrap() - 94.1 / (0.9 * 1.25)).abs() < 1e-9);
        assert!((hot.wes.thermal_cost_pct.unwrap() - 20.0).abs() < 1e-9);
        let critical = &snap.nodes[3];
        assert!(critical.wes.penalized.is_some());
        assert!(
            critical
                .unhealthy_reason
                .as_deref()
                .unwrap()
                .contains("Critical")
        );
        // A node without telemetry holds no model: it shows only in the fleet-wide ranking.
        let all = RankingSnapshot::build(
            &fleet.view(),
            &RoutingConfig::default(),
            &HealthConfig::default(),
            Instant::now(),
        );
        let silent = all.nodes.last().unwrap();
        assert_eq!(silent.id, "silent");
        assert_eq!(silent.unhealthy_reason.as_deref(), Some("no telemetry yet"));
    }

    #[test]
    fn baseline_loss_is_against_the_nodes_own_clean_best() {
        let fleet = Fleet::new(&[node("n", 1.0)]);
        report(&fleet, "n", 0.6, ThermalState::Normal, 108.9);
        let clean = build(&fleet);
        assert_eq!(clean.nodes[0].baseline_loss, Some(0.0));
        // The seed's throttled sample: 94.1 tok/s at 0.9 W, Fair → 83.6 vs the clean 181.5.
        report(&fleet, "n", 0.9, ThermalState::Fair, 94.1);
        let hot = build(&fleet);
        let loss = hot.nodes[0].baseline_loss.unwrap();
        assert!((loss - (1.0 - (94.1 / (0.9 * 1.25)) / (108.9 / 0.6))).abs() < 1e-12);
        assert_eq!((loss * 100.0).round(), 54.0);
    }

    #[test]
    fn fleet_wide_ranking_scores_every_node_on_the_common_model() {
        let fleet = Fleet::new(&[node("a", 1.0), node("b", 1.0)]);
        report(&fleet, "a", 10.0, ThermalState::Normal, 50.0);
        report(&fleet, "b", 10.0, ThermalState::Normal, 40.0);
        // b also serves a tiny model, fast and most recently: it must not rank b on that.
        let b = fleet.view().get("b").unwrap().state.clone();
        b.observe_relayed("tiny", 900.0, Instant::now(), None);
        let snap = RankingSnapshot::build(
            &fleet.view(),
            &RoutingConfig::default(),
            &HealthConfig::default(),
            Instant::now(),
        );
        assert_eq!(snap.reference_model.as_deref(), Some("m"));
        let order: Vec<_> = snap.nodes.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(order, ["a", "b"]);
        assert_eq!(snap.nodes[1].tok_s_model.as_deref(), Some("m"));
    }

    #[test]
    fn scores_use_power_while_generating_not_the_idle_reading() {
        let fleet = Fleet::new(&[node("n", 1.0)]);
        let state = fleet.view().get("n").unwrap().state.clone();
        // A sample while one of our requests runs: 200 W.
        let slot = state
            .try_acquire(4, Instant::now(), std::time::Duration::from_secs(1))
            .unwrap();
        report(&fleet, "n", 200.0, ThermalState::Normal, 100.0);
        drop(slot);
        // Then idle at 20 W: the score still divides by the generating 200 W.
        report(&fleet, "n", 20.0, ThermalState::Normal, 100.0);
        let e = &build(&fleet).nodes[0];
        assert_eq!(e.watts, Some(20.0));
        assert_eq!(e.scoring_watts, Some(200.0));
        assert_eq!(e.idle_watts, Some(20.0));
        assert_eq!(e.wes.raw, Some(0.5));
    }
}
