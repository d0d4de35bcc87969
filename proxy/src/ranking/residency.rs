//! What a node where the model is cold costs the request that would load it (docs/design.md,
//! "Residency"): the load's time, added to the request's time to first token, and the load's
//! energy (and the reload of whatever it evicts), added to the request's, so that a warm node
//! wins unless the cold one is better by more than its load costs.

use std::sync::Arc;
use std::time::Duration;

use crate::fleet::residency::evictions;
use crate::fleet::{FleetNode, Telemetry};
use crate::score;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColdCost {
    /// The load this request waits for.
    pub seconds: f64,
    /// The load's energy and the reloads of what it evicts, × PUE × thermal penalty: the units
    /// of a penalized WES's joule.
    pub joules: f64,
    /// The request's expected output tokens, which the energy is shared over.
    pub tokens: f64,
}

impl ColdCost {
    /// A score (tokens per joule) for a request that pays this load.
    pub fn charge(&self, score: Option<f64>) -> Option<f64> {
        score.map(|s| score::with_extra_energy(s, self.tokens, self.joules))
    }

    /// Predicted times to first token by load (`warm`, index n − 1) with the load added; where
    /// none is measured yet, the load alone at each of the node's `slots`.
    pub fn delay(&self, warm: Arc<[Duration]>, slots: u32) -> Arc<[Duration]> {
        let load = Duration::from_secs_f64(self.seconds);
        if warm.is_empty() {
            return vec![load; slots.max(1) as usize].into();
        }
        warm.iter().map(|t| *t + load).collect()
    }
}

/// `None` when the model is loaded on the node, or the node does not say, or there is no
/// power to price the load with.
pub fn cold_cost(
    node: &FleetNode,
    telemetry: Option<&Telemetry>,
    model: &str,
    watts: Option<f64>,
) -> Option<ColdCost> {
    let telemetry = telemetry?;
    let residency = telemetry.residency.as_deref()?;
    if node.state.resident_in(telemetry, model)? {
        return None;
    }
    let bytes = residency.sizes.get(model).copied().unwrap_or(0);
    let reloads: f64 = evictions(residency, model, bytes)
        .iter()
        .map(|m| node.state.load_seconds(&m.name))
        .sum();
    let seconds = node.state.load_seconds(model);
    let penalty = score::thermal_penalty(telemetry.thermal).unwrap_or(1.0);
    let joules = (seconds + reloads) * watts? * node.config.pue * penalty;
    Some(ColdCost {
        seconds,
        joules,
        tokens: node.state.tokens_per_request(model),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::config::{HealthConfig, NodeConfig, RoutingConfig};
    use crate::fleet::{Fleet, LoadedModel, ProbeObservation, Residency};
    use crate::ranking::Ranking;

    /// `id` decodes "m" at `tok_s` for 100 W, with `loaded` (4 GB each) in `memory_gb` of memory
    /// (`None`: it does not say what is loaded).
    fn report(fleet: &Fleet, id: &str, tok_s: f64, loaded: Option<&[&str]>, memory_gb: u64) {
        let mut t = Telemetry::for_test(100.0);
        t.models = Some(vec!["m".into(), "other".into()]);
        t.residency = loaded.map(|names| {
            Arc::new(Residency {
                loaded: names
                    .iter()
                    .map(|n| LoadedModel {
                        name: (*n).into(),
                        size_bytes: 4 << 30,
                        size_vram_bytes: 4 << 30,
                        expires_unix_ms: None,
                    })
                    .collect(),
                memory_bytes: Some(memory_gb << 30),
                sizes: [
                    ("m".to_owned(), 4u64 << 30),
                    ("other".to_owned(), 4u64 << 30),
                ]
                .into(),
            })
        });
        let probe = ProbeObservation::for_test("m", tok_s);
        assert!(fleet.record(id, t, vec![probe]).is_some());
    }

    fn route_order(fleet: &Fleet) -> Vec<String> {
        let r = Ranking::build(
            &fleet.view(),
            &RoutingConfig::default(),
            &HealthConfig::default(),
            Instant::now(),
        );
        r.routes
            .route("m")
            .unwrap()
            .nodes
            .iter()
            .map(|n| n.id.to_string())
            .collect()
    }

    fn fleet() -> Fleet {
        Fleet::new(&[NodeConfig::for_test("warm"), NodeConfig::for_test("cold")])
    }

    #[test]
    fn cold_against_warm_in_the_route() {
        // 16 GB of memory: loading one more 4 GB model evicts nothing.
        // Cold is 20% better per token, but a 5 s load at 100 W costs 500 J against the
        // 256-token request's ~200 J: warm goes first.
        let f = fleet();
        report(&f, "warm", 100.0, Some(&["m"]), 16);
        report(&f, "cold", 120.0, Some(&["other"]), 16);
        assert_eq!(route_order(&f), ["warm", "cold"]);
        // Ten times better is not enough for a 500 J load (256 tokens at 10 per joule: 26 J)...
        report(&f, "cold", 1000.0, Some(&["other"]), 16);
        assert_eq!(route_order(&f), ["warm", "cold"]);
        // ...but it is once the node has been seen to load the model in half a second (50 J).
        let cold = f.view().get("cold").unwrap().state.clone();
        cold.observe_cold_load("m", 0.5);
        assert_eq!(route_order(&f), ["cold", "warm"]);
        // A node that does not say what is loaded is charged nothing.
        report(&f, "cold", 120.0, None, 16);
        assert_eq!(route_order(&f), ["cold", "warm"]);
        // Once this proxy has sent it a request, the model is loading there: no second charge.
        cold.observe_cold_load("m", 5.0);
        report(&f, "cold", 120.0, Some(&["other"]), 16);
        assert_eq!(route_order(&f), ["warm", "cold"]);
        assert!(cold.note_sent("m", Instant::now()));
        assert!(!cold.note_sent("m", Instant::now()));
        assert_eq!(route_order(&f), ["cold", "warm"]);
    }

    #[test]
    fn an_eviction_costs_the_evicted_models_reload_and_loads_are_learned() {
        let f = fleet();
        report(&f, "warm", 100.0, Some(&["m"]), 6);
        let cold = f.view().get("cold").unwrap().state.clone();
        // 6 GB of memory holding "other" (4 GB): loading "m" (4 GB) evicts it.
        report(&f, "cold", 1000.0, Some(&["other"]), 6);
        let view = f.view();
        let node = view.get("cold").unwrap();
        let t = node.state.telemetry();
        let cost = cold_cost(node, t.as_deref(), "m", Some(100.0)).unwrap();
        assert_eq!(cost.seconds, 5.0);
        assert_eq!(cost.joules, (5.0 + 5.0) * 100.0);
        // So ten times the efficiency of the warm node is not enough where it evicts.
        assert_eq!(route_order(&f), ["warm", "cold"]);
        // A load measured at 1 s, and "other" reloads in 2 s.
        cold.observe_cold_load("m", 1.0);
        cold.observe_cold_load("other", 2.0);
        let cost = cold_cost(node, t.as_deref(), "m", Some(100.0)).unwrap();
        assert_eq!((cost.seconds, cost.joules), (1.0, 300.0));
        cold.observe_request_tokens("m", 1000);
        assert_eq!(
            cold_cost(node, t.as_deref(), "m", Some(100.0))
                .unwrap()
                .tokens,
            1000.0
        );
    }

    #[test]
    fn a_cold_load_delays_the_first_token_at_every_load() {
        let load = ColdCost {
            seconds: 2.0,
            joules: 0.0,
            tokens: 1.0,
        };
        let ms = Duration::from_millis;
        let warm: Arc<[Duration]> = Arc::from([ms(100), ms(300)]);
        assert_eq!(&*load.delay(warm, 2), &[ms(2100), ms(2300)]);
        assert_eq!(&*load.delay(Arc::from([]), 3), &[ms(2000); 3]);
    }

    #[test]
    fn a_warm_node_wins_unless_the_cold_one_is_better_by_more_than_its_load() {
        // 5 s at 100 W for a 256-token request.
        let load = ColdCost {
            seconds: 5.0,
            joules: 500.0,
            tokens: 256.0,
        };
        let warm = 1.0;
        // 1.5 tokens per joule warm, but 256 / (170.7 + 500) cold: 0.38.
        let cold = load.charge(Some(1.5)).unwrap();
        assert!((cold - 256.0 / (256.0 / 1.5 + 500.0)).abs() < 1e-12);
        assert!(cold < warm);
        // Far better and quick to load: 10 tokens per joule and 10 J make 7.2, still ahead.
        let quick = ColdCost {
            seconds: 1.0,
            joules: 10.0,
            tokens: 256.0,
        };
        assert!(quick.charge(Some(10.0)).unwrap() > 7.0);
        // Long requests share the load over more tokens.
        let long = ColdCost {
            tokens: 100_000.0,
            ..load
        };
        assert!(long.charge(Some(1.5)).unwrap() > warm);
        assert_eq!(load.charge(None), None);
    }
}
