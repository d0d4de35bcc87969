//! The ranking snapshot: every node with its scores and health, in rank order, built from fleet
//! state and published whole through `arc-swap`, so readers never see half a rebuild.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wes_proto::ThermalState;

use crate::config::{HealthConfig, RoutingConfig};
use crate::fleet::{FleetView, NodeState, RateSource};
use crate::score;

#[derive(Debug, Default)]
pub struct RankingSnapshot {
    pub built_at: Option<Instant>,
    /// All nodes, ranked first (by penalized WES), then the unranked.
    pub nodes: Vec<RankEntry>,
    /// Every model some node holds, for `?model=` and merged listings.
    pub models: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct RankEntry {
    pub id: String,
    /// 1-based; `None` when the node cannot be ranked (unhealthy, or no score).
    pub rank: Option<u32>,
    pub wes: score::WesPair,
    pub tok_s: Option<f64>,
    /// Which model `tok_s` is for.
    pub tok_s_model: Option<String>,
    pub tok_s_source: Option<RateSource>,
    pub watts: Option<f64>,
    pub pue: f64,
    pub thermal: ThermalState,
    pub temperature_c: Option<f64>,
    pub healthy: bool,
    /// Why the node is not healthy, for the admin.
    pub unhealthy_reason: Option<String>,
    pub sample_received_at: Option<Instant>,
    pub models: Option<Vec<String>>,
    pub sensor_errors: Vec<String>,
    pub power_capped: bool,
    pub state: Arc<NodeState>,
}

impl RankEntry {
    pub fn last_sample_age(&self, now: Instant) -> Option<Duration> {
        self.sample_received_at
            .map(|t| now.saturating_duration_since(t))
    }
}

impl RankingSnapshot {
    /// The fleet-wide ranking: each node by its most recently measured model.
    pub fn build(
        fleet: &FleetView,
        routing: &RoutingConfig,
        health: &HealthConfig,
        now: Instant,
    ) -> Self {
        Self::build_inner(fleet, routing, health, now, None)
    }

    /// The ranking for one model: only nodes that hold it, scored on that model's tok/s.
    pub fn build_for_model(
        fleet: &FleetView,
        routing: &RoutingConfig,
        health: &HealthConfig,
        now: Instant,
        model: &str,
    ) -> Self {
        Self::build_inner(fleet, routing, health, now, Some(model))
    }

    fn build_inner(
        fleet: &FleetView,
        routing: &RoutingConfig,
        health: &HealthConfig,
        now: Instant,
        model: Option<&str>,
    ) -> Self {
        let mut models = BTreeSet::new();
        let mut nodes: Vec<RankEntry> = fleet
            .nodes
            .iter()
            .filter_map(|node| {
                let telemetry = node.state.telemetry();
                if let Some(wanted) = model {
                    let holds = telemetry
                        .as_ref()
                        .and_then(|t| t.models.as_ref())
                        .is_some_and(|m| m.iter().any(|name| name == wanted));
                    if !holds {
                        return None;
                    }
                }
                let rate = match model {
                    Some(m) => node
                        .state
                        .tok_s_for(m, now)
                        .map(|(v, src)| (m.to_owned(), v, src)),
                    None => node.state.newest_rate(now),
                };
                let tok_s = rate.as_ref().map(|r| r.1);
                let watts = telemetry.as_ref().and_then(|t| t.watts);
                let thermal = telemetry
                    .as_ref()
                    .map_or(ThermalState::Unknown, |t| t.thermal);
                let unhealthy_reason = match &telemetry {
                    None => Some("no telemetry yet".to_owned()),
                    Some(t)
                        if now.saturating_duration_since(t.received_at) > routing.stale_after =>
                    {
                        Some(format!(
                            "telemetry older than {}",
                            humantime::format_duration(routing.stale_after)
                        ))
                    }
                    Some(t) if routing.exclude_thermal.contains(&t.thermal) => Some(format!(
                        "thermal state {} is excluded",
                        t.thermal.display_name()
                    )),
                    Some(_) => node.state.health_problem(now, health.cooldown),
                };
                if let Some(list) = telemetry.as_ref().and_then(|t| t.models.as_ref()) {
                    models.extend(list.iter().cloned());
                }
                Some(RankEntry {
                    id: node.config.id.clone(),
                    rank: None,
                    wes: score::wes_pair(tok_s, watts, node.config.pue, thermal),
                    tok_s,
                    tok_s_source: rate.as_ref().map(|r| r.2),
                    tok_s_model: rate.map(|r| r.0),
                    watts,
                    pue: node.config.pue,
                    thermal,
                    temperature_c: telemetry.as_ref().and_then(|t| t.temperature_c),
                    healthy: unhealthy_reason.is_none(),
                    unhealthy_reason,
                    sample_received_at: telemetry.as_ref().map(|t| t.received_at),
                    models: telemetry.as_ref().and_then(|t| t.models.clone()),
                    sensor_errors: telemetry
                        .as_ref()
                        .map(|t| t.sensor_errors.clone())
                        .unwrap_or_default(),
                    power_capped: telemetry.as_ref().is_some_and(|t| t.power_capped),
                    state: node.state.clone(),
                })
            })
            .collect();
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
        }
    }
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
