//! The routing table: per model, the nodes that may serve it, pre-scored and sorted by penalized
//! WES. It is built in the same pass as the board (on every burst of samples, and every
//! 250 ms) and published with it, so that a request's peer choice reads a ready list and
//! touches only the few nodes it considers: a handful of atomic loads, not a pass over the fleet.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::FastMap;
use crate::fleet::{NodeState, Peer};

/// One node as a candidate for one model.
#[derive(Debug, Clone)]
pub struct RouteNode {
    /// Shared with the fleet view: a request carries it without copying.
    pub id: Arc<str>,
    /// Where the node's Ollama is.
    pub peer: Arc<Peer>,
    /// The id as an `X-WES-Node` header value.
    pub header: http::HeaderValue,
    pub state: Arc<NodeState>,
    pub max_concurrency: u32,
    /// For this model, what one more request scores at the load of the rebuild; `None` while
    /// unmeasured. The order of the route.
    pub penalized_wes: Option<f64>,
    /// Index n: what one more request scores while n are in flight (`node_score`), so that a
    /// pick between rebuilds sees the load it is made at.
    pub next: Arc<[Option<f64>]>,
    /// Index n − 1: predicted time to first token for this model with n in flight, this
    /// request included (the TTFT curve); empty while unmeasured, or when the model's policy
    /// does not ask.
    pub ttft: Arc<[Duration]>,
    /// When its newest telemetry arrived: a request re-checks staleness between rebuilds.
    pub received_at: Instant,
}

impl RouteNode {
    pub fn in_flight(&self) -> u32 {
        self.state.in_flight()
    }

    /// A free slot right now (a hint: the relay's atomic acquire decides).
    pub fn has_room(&self) -> bool {
        self.in_flight() < self.max_concurrency
    }

    /// What one more request scores on this node at its load now.
    pub fn wes_now(&self) -> Option<f64> {
        score_at(&self.next, self.in_flight()).or(self.penalized_wes)
    }

    /// Predicted time to first token for one more request at the node's load now.
    pub fn predicted_ttft(&self) -> Option<Duration> {
        let i = (self.in_flight() as usize).min(self.ttft.len().checked_sub(1)?);
        self.ttft.get(i).copied()
    }

    /// Share of the node's slots still free, 0 to 1.
    pub fn free_share(&self) -> f64 {
        let max = f64::from(self.max_concurrency.max(1));
        (max - f64::from(self.in_flight())).max(0.0) / max
    }
}

/// The score of one more request with `in_flight` requests running, from a node's `next`
/// scores (past the last, the last: the curve is flat beyond what was measured).
pub fn score_at(next: &[Option<f64>], in_flight: u32) -> Option<f64> {
    let i = (in_flight as usize).min(next.len().checked_sub(1)?);
    next[i]
}

/// The nodes for one model.
#[derive(Debug, Clone, Default)]
pub struct ModelRoute {
    /// The model's name, shared: the relay labels each attempt with it.
    pub model: Arc<str>,
    /// Measured nodes by penalized WES (highest first, ties by id), then unmeasured by id.
    pub nodes: Vec<RouteNode>,
    /// `nodes[..measured]` have a score.
    pub measured: usize,
    /// Running sums of penalized WES over the measured nodes, for proportional picks.
    pub cumulative_wes: Vec<f64>,
    /// Nodes that hold the model but may not take traffic, each with its reason.
    pub excluded: Vec<String>,
}

impl ModelRoute {
    pub fn from_nodes(model: Arc<str>, mut nodes: Vec<RouteNode>, excluded: Vec<String>) -> Self {
        nodes.sort_by(by_wes);
        let measured = nodes
            .iter()
            .take_while(|n| n.penalized_wes.is_some())
            .count();
        let mut sum = 0.0;
        let cumulative_wes = nodes[..measured]
            .iter()
            .map(|n| {
                sum += n.penalized_wes.unwrap_or(0.0).max(0.0);
                sum
            })
            .collect();
        ModelRoute {
            model,
            nodes,
            measured,
            cumulative_wes,
            excluded,
        }
    }
}

/// Higher penalized WES first, unmeasured after measured, then by id: a total order, so a
/// rebuild over unchanged state gives the same table.
fn by_wes(a: &RouteNode, b: &RouteNode) -> Ordering {
    let (wa, wb) = (
        a.penalized_wes.unwrap_or(f64::NEG_INFINITY),
        b.penalized_wes.unwrap_or(f64::NEG_INFINITY),
    );
    wb.total_cmp(&wa).then_with(|| a.id.cmp(&b.id))
}

#[derive(Debug, Default)]
pub struct RoutingTable {
    models: FastMap<String, ModelRoute>,
}

impl RoutingTable {
    pub(super) fn new(models: FastMap<String, ModelRoute>) -> Self {
        RoutingTable { models }
    }

    /// The route for `model`, or for its other spelling (`llama3.2` is `llama3.2:latest`);
    /// `None` when no configured node reports holding it.
    pub fn route(&self, model: &str) -> Option<&ModelRoute> {
        crate::fleet::model_name::find(model, |name| self.models.get(name))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::{HealthConfig, NodeConfig, RoutingConfig};
    use crate::fleet::{Fleet, ProbeObservation, Telemetry};
    use crate::ranking::Ranking;
    use std::time::Instant;
    use wes_proto::ThermalState;

    fn node(id: &str) -> NodeConfig {
        NodeConfig {
            url: format!("http://127.0.0.1:1/{id}"),
            ..NodeConfig::for_test(id)
        }
    }

    fn report(fleet: &Fleet, id: &str, thermal: ThermalState, tok_s: Option<f64>) {
        let mut t = Telemetry::for_test(10.0);
        t.thermal = thermal;
        t.models = Some(vec!["m".into(), "other".into()]);
        let probes = tok_s
            .map(|tok_s| ProbeObservation {
                finished_unix_ms: 1,
                ..ProbeObservation::for_test("m", tok_s)
            })
            .into_iter()
            .collect();
        assert!(fleet.record(id, t, probes).is_some());
    }

    fn rank(fleet: &Fleet) -> Ranking {
        Ranking::build(
            &fleet.view(),
            &RoutingConfig::default(),
            &HealthConfig::default(),
            Instant::now(),
        )
    }

    #[test]
    fn per_model_sorted_with_exclusions_and_cumulative_weights() {
        let fleet = Fleet::new(&[node("a"), node("b"), node("c"), node("hot"), node("new")]);
        report(&fleet, "a", ThermalState::Normal, Some(100.0));
        report(&fleet, "b", ThermalState::Normal, Some(300.0));
        report(&fleet, "c", ThermalState::Fair, Some(200.0));
        report(&fleet, "hot", ThermalState::Critical, Some(900.0));
        report(&fleet, "new", ThermalState::Normal, None);
        fleet.set_draining("a", false);
        let ranking = rank(&fleet);
        let table = &ranking.routes;
        let m = table.route("m").unwrap();
        let ids: Vec<_> = m.nodes.iter().map(|n| &*n.id).collect();
        // b 30, c 20/1.25 = 16, a 10; new unmeasured last.
        assert_eq!(ids, ["b", "c", "a", "new"]);
        assert_eq!(m.measured, 3);
        assert_eq!(m.cumulative_wes, [30.0, 46.0, 56.0]);
        assert_eq!(m.nodes[0].peer.authority(), "127.0.0.1:1");
        assert_eq!(m.excluded, ["hot: thermal state Critical is excluded"]);
        // No one measured "other": all unmeasured, by id.
        assert_eq!(table.route("other").unwrap().measured, 0);
        assert!(table.route("absent").is_none());
    }

    #[test]
    fn a_name_without_its_latest_tag_finds_the_tagged_model_and_back() {
        let fleet = Fleet::new(&[node("a"), node("b")]);
        let mut t = Telemetry::for_test(10.0);
        t.models = Some(vec![
            "llama3.2:latest".into(),
            "qwen".into(),
            "phi:3b".into(),
        ]);
        assert!(fleet.record("a", t, Vec::new()).is_some());
        let ranking = rank(&fleet);
        let table = &ranking.routes;
        assert_eq!(&*table.route("llama3.2").unwrap().model, "llama3.2:latest");
        assert_eq!(
            &*table.route("llama3.2:latest").unwrap().model,
            "llama3.2:latest"
        );
        assert_eq!(&*table.route("qwen:latest").unwrap().model, "qwen");
        // Another tag is another model.
        assert!(table.route("phi").is_none());
        assert!(table.route("llama3.2:3b").is_none());
    }

    #[test]
    fn a_model_held_only_by_excluded_nodes_has_an_empty_route_with_reasons() {
        let fleet = Fleet::new(&[node("a")]);
        report(&fleet, "a", ThermalState::Normal, Some(1.0));
        fleet.set_draining("a", true);
        let ranking = rank(&fleet);
        let table = &ranking.routes;
        let m = table.route("m").unwrap();
        assert!(m.nodes.is_empty());
        assert_eq!(m.excluded, ["a: draining"]);
    }
}
