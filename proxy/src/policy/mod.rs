//! Routing policies. The routing table (`ranking::table`) holds, per model, the nodes that may
//! serve it, sorted by penalized WES; a policy picks from it the few nodes a request will try,
//! best first (the next only if the previous failed before answering, or filled up meanwhile).
//! Policies look at as few nodes as they can, so a decision stays cheap at thousands of nodes.
//! One module per policy; [`PolicyName`] is the one list of them (a new policy is its own file
//! plus a variant there).

mod least_connections;
mod p2c;
mod round_robin;
mod slo;
mod top;
mod weighted;

use std::time::{Duration, Instant};

use rand::{Rng, RngCore};
use serde::Deserialize;

pub use least_connections::LeastConnections;
pub use p2c::PowerOfTwo;
pub use round_robin::RoundRobin;
pub use slo::Slo;
pub use top::Top;
pub use weighted::Weighted;

pub use crate::ranking::{ModelRoute, RouteNode, RoutingTable};

/// Every policy, by the name the config gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    Top,
    Weighted,
    P2c,
    Slo,
    RoundRobin,
    LeastConnections,
}

impl PolicyName {
    pub const ALL: [PolicyName; 6] = [
        PolicyName::Top,
        PolicyName::Weighted,
        PolicyName::P2c,
        PolicyName::Slo,
        PolicyName::RoundRobin,
        PolicyName::LeastConnections,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::Top => "top",
            PolicyName::Weighted => "weighted",
            PolicyName::P2c => "p2c",
            PolicyName::Slo => "slo",
            PolicyName::RoundRobin => "round_robin",
            PolicyName::LeastConnections => "least_connections",
        }
    }

    /// Whether the policy reads predicted times to first token (a fit per node and model that
    /// the routing table computes only for such policies).
    pub fn reads_ttft(self) -> bool {
        matches!(self, PolicyName::Slo)
    }

    /// The policy named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// A fresh instance of the policy.
    pub fn build(self) -> Box<dyn Policy> {
        match self {
            PolicyName::Top => Box::new(Top::default()),
            PolicyName::Weighted => Box::new(Weighted),
            PolicyName::P2c => Box::new(PowerOfTwo),
            PolicyName::Slo => Box::new(Slo),
            PolicyName::RoundRobin => Box::new(RoundRobin::default()),
            PolicyName::LeastConnections => Box::new(LeastConnections),
        }
    }
}

impl std::fmt::Display for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a policy knows about the request besides the route.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    pub model: &'a str,
    pub now: Instant,
    /// Telemetry older than this disqualifies a node even between table rebuilds.
    pub stale_after: Duration,
    /// `top` keeps its previous node within this fraction of the best.
    pub hysteresis: f64,
    /// The `slo` policy's time-to-first-token target.
    pub slo_ttft: Duration,
    /// How long the request has waited in the queue for a slot: its client's time to first
    /// token includes it.
    pub waited: Duration,
    /// This proxy replica's name, hashed, while other replicas share the fleet: where they
    /// see near-equal nodes, each prefers a different one ([`replica_rank`]) rather than all
    /// herding onto the first. `None` alone: the best is the best.
    pub replica: Option<u64>,
}

/// Node `id`'s place in replica `replica`'s order of preference among near-equal nodes:
/// a different order per replica, the same one on every pick.
pub fn replica_rank(replica: u64, id: &str) -> u64 {
    // FNV-1a over the id, mixed with the replica: cheap, stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ replica;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (h >> 31)
}

impl<'a> RouteRequest<'a> {
    /// A request for `model` now, under the routing settings.
    pub fn new(model: &'a str, routing: &crate::config::RoutingConfig, now: Instant) -> Self {
        RouteRequest {
            model,
            now,
            stale_after: routing.stale_after,
            hysteresis: routing.hysteresis,
            slo_ttft: routing.slo_ttft,
            waited: Duration::ZERO,
            replica: None,
        }
    }

    /// Whether `node` can take this request now: a free slot and fresh telemetry.
    pub fn usable(&self, node: &RouteNode) -> bool {
        node.has_room() && self.now.saturating_duration_since(node.received_at) <= self.stale_after
    }
}

pub trait Policy: Send + Sync {
    fn name(&self) -> &'static str;
    /// Up to `want` distinct indices into `route.nodes`, best first, all usable now. `rng` is the
    /// only source of chance, so tests can seed it.
    fn choose(
        &self,
        request: &RouteRequest<'_>,
        route: &ModelRoute,
        want: usize,
        rng: &mut dyn RngCore,
    ) -> Vec<usize>;
    /// Whether this policy ranks by efficiency, and so should explore unmeasured nodes.
    fn uses_wes(&self) -> bool {
        true
    }
}

/// The policy's choice, and then, for efficiency policies, with probability `exploration_share`
/// an unmeasured node first, so that new nodes and models get measured instead of waiting
/// forever behind measured ones.
pub fn choose(
    policy: &dyn Policy,
    request: &RouteRequest<'_>,
    route: &ModelRoute,
    exploration_share: f64,
    want: usize,
    rng: &mut dyn RngCore,
) -> Vec<usize> {
    let mut chosen = policy.choose(request, route, want, rng);
    let unmeasured = route.nodes.len() - route.measured;
    if policy.uses_wes()
        && unmeasured > 0
        && route.measured > 0
        && exploration_share > 0.0
        && rng.random::<f64>() < exploration_share
    {
        let pick = route.measured + rng.random_range(0..unmeasured);
        if request.usable(&route.nodes[pick]) {
            chosen.retain(|i| *i != pick);
            chosen.insert(0, pick);
            chosen.truncate(want);
        }
    }
    chosen
}

/// Appends indices from `order` that are usable and not yet chosen, until `want` are.
pub fn fill(
    request: &RouteRequest<'_>,
    route: &ModelRoute,
    order: impl Iterator<Item = usize>,
    chosen: &mut Vec<usize>,
    want: usize,
) {
    for i in order {
        if chosen.len() >= want {
            return;
        }
        if !chosen.contains(&i) && request.usable(&route.nodes[i]) {
            chosen.push(i);
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Routes built by hand for the policy tests.

    use std::sync::Arc;

    use super::*;
    use crate::fleet::NodeState;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// A node with `in_flight` of its 4 slots taken.
    pub fn node(id: &str, wes: Option<f64>, in_flight: u32) -> RouteNode {
        let state = Arc::new(NodeState::default());
        let now = Instant::now();
        for _ in 0..in_flight {
            // The guards are forgotten on purpose: the slots stay taken for the test's life.
            if let Some(g) = state.try_acquire(4, now, Duration::from_secs(1)) {
                std::mem::forget(g);
            }
        }
        RouteNode {
            id: Arc::from(id),
            peer: Arc::new(crate::fleet::Peer::new("127.0.0.1:1")),
            header: http::HeaderValue::from_static("test"),
            state,
            max_concurrency: 4,
            penalized_wes: wes,
            next: Arc::from([]),
            ttft: Arc::from([]),
            received_at: now,
        }
    }

    pub fn route(nodes: Vec<RouteNode>) -> ModelRoute {
        ModelRoute::from_nodes(Arc::from("m"), nodes, Vec::new())
    }

    pub fn request(model: &str) -> RouteRequest<'_> {
        RouteRequest {
            model,
            now: Instant::now(),
            stale_after: Duration::from_secs(3),
            hysteresis: 0.05,
            slo_ttft: Duration::from_secs(1),
            waited: Duration::ZERO,
            replica: None,
        }
    }

    pub fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    pub fn ids(route: &ModelRoute, chosen: &[usize]) -> Vec<String> {
        chosen
            .iter()
            .map(|i| route.nodes[*i].id.to_string())
            .collect()
    }

    /// How often each id comes first over `n` choices.
    pub fn first_counts(
        policy: &dyn Policy,
        route: &ModelRoute,
        n: usize,
    ) -> std::collections::BTreeMap<String, usize> {
        let mut rng = rng();
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..n {
            let chosen = policy.choose(&request("m"), route, 3, &mut rng);
            *counts
                .entry(route.nodes[chosen[0]].id.to_string())
                .or_insert(0) += 1;
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
    fn every_configured_policy_exists_and_skips_full_and_stale_nodes() {
        let mut stale = node("stale", Some(50.0), 0);
        stale.received_at = Instant::now() - Duration::from_secs(10);
        let r = route(vec![
            node("full", Some(100.0), 4),
            stale,
            node("a", Some(10.0), 0),
            node("b", Some(5.0), 1),
            node("new", None, 0),
        ]);
        for name in PolicyName::ALL {
            let policy = name.build();
            assert_eq!(policy.name(), name.as_str());
            let chosen = policy.choose(&request("m"), &r, 3, &mut rng());
            let mut got = ids(&r, &chosen);
            assert_eq!(got.len(), 3, "{name}: {got:?}");
            got.sort();
            assert_eq!(got, ["a", "b", "new"], "{name}");
            assert!(policy.choose(&request("m"), &r, 1, &mut rng()).len() == 1);
        }
    }

    #[test]
    fn exploration_puts_an_unmeasured_node_first_at_about_its_share() {
        let r = route(vec![
            node("a", Some(10.0), 0),
            node("b", Some(5.0), 0),
            node("new", None, 0),
        ]);
        let mut rng = rng();
        let top = Top::default();
        let n = 4000;
        let mut explored = 0;
        for _ in 0..n {
            let chosen = choose(&top, &request("m"), &r, 0.1, 3, &mut rng);
            if ids(&r, &chosen)[0] == "new" {
                explored += 1;
                // The rest keep the policy's order behind it.
                assert_eq!(ids(&r, &chosen[1..]), ["a", "b"]);
            }
        }
        let share = f64::from(explored) / f64::from(n);
        assert!((0.08..0.12).contains(&share), "{share}");
        // Nothing explores at share 0, and baselines never do.
        let chosen = choose(&top, &request("m"), &r, 0.0, 3, &mut rng);
        assert_eq!(ids(&r, &chosen)[0], "a");
        let lc = LeastConnections;
        for _ in 0..200 {
            let chosen = choose(&lc, &request("m"), &r, 0.5, 3, &mut rng);
            assert_eq!(ids(&r, &chosen)[0], "a");
        }
    }
}
