//! Routing policies: each orders the candidates for one request, best first. The relay tries
//! them in that order (the next one only if the previous failed before answering).

mod least_connections;
mod round_robin;
mod top;

use std::sync::Arc;
use std::time::Instant;

pub use least_connections::LeastConnections;
pub use round_robin::RoundRobin;
pub use top::Top;

use crate::config::RoutingConfig;
use crate::fleet::{FleetView, NodeState};
use crate::score;

/// A node that may take this request now.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    /// `host:port` of the node's Ollama.
    pub peer: String,
    pub state: Arc<NodeState>,
    pub max_concurrency: u32,
    /// For the requested model; `None` while unmeasured.
    pub penalized_wes: Option<f64>,
}

pub trait Policy: Send + Sync {
    fn name(&self) -> &'static str;
    /// Puts the best candidate first.
    fn order(&self, candidates: &mut [Candidate]);
}

/// Builds a policy by its config name.
pub fn by_name(name: &str) -> Option<Box<dyn Policy>> {
    match name {
        "top" => Some(Box::new(Top)),
        "round_robin" => Some(Box::new(RoundRobin::default())),
        "least_connections" => Some(Box::new(LeastConnections)),
        _ => None,
    }
}

/// Why no candidate could be offered.
#[derive(Debug, Clone, PartialEq)]
pub enum NoCandidate {
    /// No configured node reports holding the model.
    UnknownModel,
    /// Nodes hold it, but none is healthy with a free slot; the reasons, per node.
    Unavailable(Vec<String>),
}

/// The nodes that hold `model`, are healthy and have a free slot, unordered.
pub fn candidates(
    fleet: &FleetView,
    routing: &RoutingConfig,
    model: &str,
    now: Instant,
) -> Result<Vec<Candidate>, NoCandidate> {
    let mut found = Vec::new();
    let mut reasons = Vec::new();
    for node in &fleet.nodes {
        let Some(t) = node.state.telemetry() else {
            continue;
        };
        if !t
            .models
            .as_ref()
            .is_some_and(|m| m.iter().any(|name| name == model))
        {
            continue;
        }
        let id = &node.config.id;
        if now.saturating_duration_since(t.received_at) > routing.stale_after {
            reasons.push(format!("{id}: telemetry is stale"));
            continue;
        }
        if routing.exclude_thermal.contains(&t.thermal) {
            reasons.push(format!("{id}: thermal state {}", t.thermal.display_name()));
            continue;
        }
        if node.state.in_flight() >= node.config.max_concurrency {
            reasons.push(format!(
                "{id}: all {} slots busy",
                node.config.max_concurrency
            ));
            continue;
        }
        let tok_s = node.state.tok_s_for(model, now).map(|(v, _)| v);
        let penalized_wes = score::wes_pair(tok_s, t.watts, node.config.pue, t.thermal).penalized;
        found.push(Candidate {
            id: id.clone(),
            peer: peer_address(&node.config.url),
            state: node.state.clone(),
            max_concurrency: node.config.max_concurrency,
            penalized_wes,
        });
    }
    if found.is_empty() {
        return Err(if reasons.is_empty() {
            NoCandidate::UnknownModel
        } else {
            NoCandidate::Unavailable(reasons)
        });
    }
    Ok(found)
}

/// `http://host:port/...` → `host:port` (config validation guarantees the form).
pub fn peer_address(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_owned()
}
