//! Routing policies: each orders the candidates for one request, best first. The relay tries
//! them in that order (the next one only if the previous failed before answering, or filled up
//! meanwhile). One module per policy; `candidates` decides who may be ordered at all.

mod least_connections;
mod p2c;
mod round_robin;
mod slo;
mod top;
mod weighted;

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore};

pub use least_connections::LeastConnections;
pub use p2c::PowerOfTwo;
pub use round_robin::RoundRobin;
pub use slo::Slo;
pub use top::Top;
pub use weighted::Weighted;

use crate::config::{HealthConfig, RoutingConfig};
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
    /// Requests in flight when the candidates were gathered.
    pub in_flight: u32,
    /// For the requested model; `None` while unmeasured.
    pub penalized_wes: Option<f64>,
    /// Smoothed time to first token measured on this node for the model.
    pub ttft: Option<Duration>,
}

impl Candidate {
    /// Share of the node's slots still free, 0 to 1.
    pub fn free_share(&self) -> f64 {
        let max = f64::from(self.max_concurrency.max(1));
        (max - f64::from(self.in_flight)).max(0.0) / max
    }
}

/// What a policy knows about the request besides the candidates.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    pub model: &'a str,
    /// `top` keeps its previous node within this fraction of the best.
    pub hysteresis: f64,
    /// The `slo` policy's time-to-first-token target.
    pub slo_ttft: Duration,
}

pub trait Policy: Send + Sync {
    fn name(&self) -> &'static str;
    /// Puts the best candidate first. `rng` is the only source of chance, so tests can seed it.
    fn order(
        &self,
        request: &RouteRequest<'_>,
        candidates: &mut [Candidate],
        rng: &mut dyn RngCore,
    );
    /// Whether this policy ranks by efficiency, and so should explore unmeasured nodes.
    fn uses_wes(&self) -> bool {
        true
    }
}

/// Builds a policy by its config name (`config::POLICIES`).
pub fn by_name(name: &str) -> Option<Box<dyn Policy>> {
    match name {
        "top" => Some(Box::new(Top::default())),
        "weighted" => Some(Box::new(Weighted)),
        "p2c" => Some(Box::new(PowerOfTwo)),
        "slo" => Some(Box::new(Slo)),
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
    /// Nodes hold it, but none may take traffic; the reasons, per node.
    Unavailable(Vec<String>),
    /// Nodes that may take it are all full: a slot may free soon. The reasons, per node.
    Busy(Vec<String>),
}

/// The nodes that hold `model`, are healthy and have a free slot, unordered.
pub fn candidates(
    fleet: &FleetView,
    routing: &RoutingConfig,
    health: &HealthConfig,
    model: &str,
    now: Instant,
) -> Result<Vec<Candidate>, NoCandidate> {
    let mut found = Vec::new();
    let mut reasons = Vec::new();
    let mut busy = false;
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
        if let Some(problem) = node.state.health_problem(now, health.cooldown) {
            reasons.push(format!("{id}: {problem}"));
            continue;
        }
        let in_flight = node.state.in_flight();
        if in_flight >= node.config.max_concurrency {
            reasons.push(format!(
                "{id}: all {} slots busy",
                node.config.max_concurrency
            ));
            busy = true;
            continue;
        }
        let tok_s = node.state.tok_s_for(model, now).map(|(v, _)| v);
        let watts = node.state.scoring_watts(Some(model), t.watts);
        let penalized_wes = score::wes_pair(tok_s, watts, node.config.pue, t.thermal).penalized;
        found.push(Candidate {
            id: id.clone(),
            peer: peer_address(&node.config.url),
            state: node.state.clone(),
            max_concurrency: node.config.max_concurrency,
            in_flight,
            penalized_wes,
            ttft: node.state.ttft_for(model),
        });
    }
    if found.is_empty() {
        return Err(match (reasons.is_empty(), busy) {
            (true, _) => NoCandidate::UnknownModel,
            (false, true) => NoCandidate::Busy(reasons),
            (false, false) => NoCandidate::Unavailable(reasons),
        });
    }
    Ok(found)
}

/// Orders `candidates` for one request: the policy's order, then, for efficiency policies, with
/// probability `exploration_share` an unmeasured candidate first, so new nodes and models get
/// measured instead of waiting forever behind measured ones.
pub fn order(
    policy: &dyn Policy,
    request: &RouteRequest<'_>,
    exploration_share: f64,
    candidates: &mut [Candidate],
    rng: &mut dyn RngCore,
) {
    policy.order(request, candidates, rng);
    if policy.uses_wes() {
        explore(candidates, exploration_share, rng);
    }
}

fn explore(candidates: &mut [Candidate], share: f64, rng: &mut dyn RngCore) {
    let unmeasured = candidates
        .iter()
        .filter(|c| c.penalized_wes.is_none())
        .count();
    if unmeasured == 0 || unmeasured == candidates.len() || rng.random::<f64>() >= share {
        return;
    }
    let pick = rng.random_range(0..unmeasured);
    if let Some(at) = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.penalized_wes.is_none())
        .nth(pick)
        .map(|(i, _)| i)
    {
        candidates[..=at].rotate_right(1);
    }
}

/// Efficiency order: higher penalized WES first, unmeasured after measured; ties to fewer in
/// flight, then by id so the order is total.
pub fn by_wes(a: &Candidate, b: &Candidate) -> Ordering {
    let (wa, wb) = (
        a.penalized_wes.unwrap_or(f64::NEG_INFINITY),
        b.penalized_wes.unwrap_or(f64::NEG_INFINITY),
    );
    wb.total_cmp(&wa)
        .then_with(|| a.in_flight.cmp(&b.in_flight))
        .then_with(|| a.id.cmp(&b.id))
}

/// `http://host:port/...` → `host:port` (config validation guarantees the form).
pub fn peer_address(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

#[cfg(test)]
pub(crate) mod testing {
    //! Candidates built by hand for the policy tests.

    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    pub fn cand(id: &str, wes: Option<f64>, in_flight: u32) -> Candidate {
        Candidate {
            id: id.into(),
            peer: "127.0.0.1:1".into(),
            state: Arc::new(NodeState::default()),
            max_concurrency: 4,
            in_flight,
            penalized_wes: wes,
            ttft: None,
        }
    }

    pub fn request(model: &str) -> RouteRequest<'_> {
        RouteRequest {
            model,
            hysteresis: 0.05,
            slo_ttft: Duration::from_secs(1),
        }
    }

    pub fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    pub fn ids(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.id.as_str()).collect()
    }

    /// How often each id comes first over `n` orderings of `make()`.
    pub fn first_counts(
        policy: &dyn Policy,
        n: usize,
        make: impl Fn() -> Vec<Candidate>,
    ) -> std::collections::BTreeMap<String, usize> {
        let mut rng = rng();
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..n {
            let mut c = make();
            policy.order(&request("m"), &mut c, &mut rng);
            *counts.entry(c[0].id.clone()).or_insert(0) += 1;
        }
        counts
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn every_configured_policy_exists() {
        for name in crate::config::POLICIES {
            let policy = by_name(name).unwrap();
            assert_eq!(policy.name(), *name);
        }
    }

    #[test]
    fn exploration_puts_an_unmeasured_node_first_at_about_its_share() {
        let make = || {
            vec![
                cand("a", Some(10.0), 0),
                cand("b", Some(5.0), 0),
                cand("new", None, 0),
            ]
        };
        let mut rng = rng();
        let top = Top::default();
        let n = 4000;
        let mut explored = 0;
        for _ in 0..n {
            let mut c = make();
            order(&top, &request("m"), 0.1, &mut c, &mut rng);
            if c[0].id == "new" {
                explored += 1;
                // The rest keep the policy's order behind it.
                assert_eq!(ids(&c[1..]), ["a", "b"]);
            }
        }
        let share = f64::from(explored) / f64::from(n);
        assert!((0.08..0.12).contains(&share), "{share}");
        // Baselines do not explore; nothing explores at share 0.
        let mut c = make();
        order(&top, &request("m"), 0.0, &mut c, &mut rng);
        assert_eq!(c[0].id, "a");
    }
}
