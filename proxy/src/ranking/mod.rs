//! The derived view of the fleet: one pass over fleet state scores every node
//! (`node_score::score`, one function per (node, model)), decides each node's eligibility
//! (`eligibility`, one rule), and yields the two things read from it: the board that admins
//! see (`board`) and the routing table that requests choose from (`table`). Both are published
//! together as one [`Ranking`] through one `arc-swap`, so a reader never sees one without the
//! other. Building only reads fleet state: asking for a ranking changes nothing. What the
//! published boards showed over the last minutes is kept apart, in `history`.

mod board;
pub mod eligibility;
mod history;
mod node_score;
mod residency;
pub mod table;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

pub use board::{RankEntry, RankingSnapshot};
pub use history::{History, NodeSeries, Point};
pub use node_score::NodeScore;
pub use table::{ModelRoute, RouteNode, RoutingTable};

use crate::FastMap;
use crate::config::{HealthConfig, RoutingConfig};
use crate::fleet::{FleetView, model_name};

/// What one rebuild publishes.
#[derive(Debug, Default)]
pub struct Ranking {
    /// Every node, ranked on the fleet's reference model.
    pub board: RankingSnapshot,
    /// Per model, the nodes that may serve it, best first.
    pub routes: RoutingTable,
}

impl Ranking {
    pub fn build(
        fleet: &FleetView,
        routing: &RoutingConfig,
        health: &HealthConfig,
        now: Instant,
    ) -> Self {
        let reference = board::reference_model(fleet, now);
        let mut entries = Vec::with_capacity(fleet.nodes.len());
        let mut models = BTreeSet::new();
        let mut eligible: HashMap<String, Vec<RouteNode>> = HashMap::new();
        let mut excluded: HashMap<String, Vec<String>> = HashMap::new();
        for node in &fleet.nodes {
            let telemetry = node.state.telemetry();
            let telemetry = telemetry.as_deref();
            let reason =
                eligibility::unavailable_reason(telemetry, &node.state, routing, health, now);
            let held = telemetry.and_then(|t| t.models.as_deref()).unwrap_or(&[]);
            // The reference model's score, when the loop below computes it anyway.
            let mut on_reference = None;
            for model in held {
                // Most nodes hold the same few models: copy a name only the first time.
                if !models.contains(model) {
                    models.insert(model.clone());
                }
                match &reason {
                    Some(why) => push(&mut excluded, model, format!("{}: {why}", node.id)),
                    None => {
                        let scored = node_score::score(node, telemetry, model, routing, now);
                        if reference.as_deref() == Some(model.as_str()) {
                            on_reference = Some(scored.clone());
                        }
                        // The route prices a cold model's load in; the board shows the node as
                        // it runs.
                        let cold =
                            residency::cold_cost(node, telemetry, model, scored.scoring_watts);
                        let mut next = scored.next.clone();
                        let mut penalized = table::score_at(&scored.next, scored.in_flight)
                            .or(scored.wes.penalized);
                        if let Some(cost) = &cold {
                            next = next.iter().map(|s| cost.charge(*s)).collect();
                            penalized = cost.charge(penalized);
                        }
                        let route_node = RouteNode {
                            id: node.id.clone(),
                            peer: node.peer.clone(),
                            header: node.header.clone(),
                            state: node.state.clone(),
                            max_concurrency: node.config.max_concurrency,
                            penalized_wes: penalized,
                            next,
                            // A fit per (node, model): only where a policy reads it.
                            ttft: if routing.policy_for(model).reads_ttft() {
                                let warm = node.state.ttft_by_load(
                                    model,
                                    node.config.max_concurrency,
                                    now,
                                );
                                match &cold {
                                    Some(c) => c.delay(warm, node.config.max_concurrency),
                                    None => warm,
                                }
                            } else {
                                Arc::from([])
                            },
                            received_at: telemetry.map_or(now, |t| t.received_at),
                        };
                        push(&mut eligible, model, route_node);
                    }
                }
            }
            // Fleet-wide, a node without a rate for the reference model shows its newest.
            let on_reference = on_reference
                .or_else(|| {
                    let m = reference.as_deref()?;
                    Some(node_score::score(node, telemetry, m, routing, now))
                })
                .filter(|s| s.tok_s.is_some());
            let scored = on_reference.or_else(|| {
                let (newest, _, _) = node.state.newest_rate(now)?;
                Some(node_score::score(node, telemetry, &newest, routing, now))
            });
            entries.push(RankEntry::new(node, telemetry, scored, reason));
        }
        let mut routes =
            FastMap::with_capacity_and_hasher(eligible.len() + excluded.len(), Default::default());
        for (model, nodes) in eligible {
            let why = excluded.remove(&model).unwrap_or_default();
            let name: Arc<str> = Arc::from(model.as_str());
            routes.insert(model, ModelRoute::from_nodes(name, nodes, why));
        }
        for (model, why) in excluded {
            let name: Arc<str> = Arc::from(model.as_str());
            routes.insert(model, ModelRoute::from_nodes(name, Vec::new(), why));
        }
        Ranking {
            board: RankingSnapshot::from_entries(entries, models, reference, now),
            routes: RoutingTable::new(routes),
        }
    }
}

fn push<T>(map: &mut HashMap<String, Vec<T>>, model: &str, item: T) {
    match map.get_mut(model) {
        Some(list) => list.push(item),
        None => {
            map.insert(model.to_owned(), vec![item]);
        }
    }
}

impl RankingSnapshot {
    /// The fleet-wide board alone (the routing table built beside it is dropped).
    pub fn build(
        fleet: &FleetView,
        routing: &RoutingConfig,
        health: &HealthConfig,
        now: Instant,
    ) -> Self {
        Ranking::build(fleet, routing, health, now).board
    }

    /// The board for one model: only nodes that hold it, scored on that model's rate.
    pub fn build_for_model(
        fleet: &FleetView,
        routing: &RoutingConfig,
        health: &HealthConfig,
        now: Instant,
        model: &str,
    ) -> Self {
        let mut entries = Vec::new();
        for node in &fleet.nodes {
            let telemetry = node.state.telemetry();
            let telemetry = telemetry.as_deref();
            let held = telemetry.and_then(|t| t.models.as_deref()).unwrap_or(&[]);
            // Under the node's own spelling of the name, as routing finds it.
            let Some(held_as) = held.iter().find(|m| model_name::same(m, model)) else {
                continue;
            };
            let reason =
                eligibility::unavailable_reason(telemetry, &node.state, routing, health, now);
            let scored = node_score::score(node, telemetry, held_as, routing, now);
            let scored = scored.tok_s.is_some().then_some(scored);
            entries.push(RankEntry::new(node, telemetry, scored, reason));
        }
        // The fleet's model list is the published board's; this one lists no other.
        RankingSnapshot::from_entries(entries, BTreeSet::from([model.to_owned()]), None, now)
    }
}
