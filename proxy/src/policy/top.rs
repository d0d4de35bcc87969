//! `top`: the highest penalized WES first; among equal scores, the node with fewer requests in
//! flight. With hysteresis: the node chosen last time for a model keeps the traffic while it
//! stays within `hysteresis` of the best, so two near-equal nodes do not swap places (and cold
//! caches) on every sample's jitter.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use rand::RngCore;

use super::{ModelRoute, Policy, RouteRequest, fill};

#[derive(Default)]
pub struct Top {
    /// Model → the node it went to last.
    last: Mutex<HashMap<String, Arc<str>>>,
}

impl Policy for Top {
    fn name(&self) -> &'static str {
        "top"
    }

    fn choose(
        &self,
        request: &RouteRequest<'_>,
        route: &ModelRoute,
        want: usize,
        _: &mut dyn RngCore,
    ) -> Vec<usize> {
        let nodes = &route.nodes;
        let mut chosen = Vec::with_capacity(want);
        let first = (0..route.measured).find(|i| request.usable(&nodes[*i]));
        if let (Some(first), true) = (first, want > 0) {
            let best = nodes[first].penalized_wes.unwrap_or(0.0);
            let within = |i: &usize| {
                *i < route.measured
                    && nodes[*i]
                        .penalized_wes
                        .is_some_and(|w| w >= best * (1.0 - request.hysteresis))
            };
            let mut last = self.last.lock();
            let sticky = last.get(request.model).and_then(|prev| {
                (first..route.measured)
                    .take_while(within)
                    .find(|i| &nodes[*i].id == prev && request.usable(&nodes[*i]))
            });
            let pick = sticky.unwrap_or_else(|| {
                // Exactly equal scores: the less loaded one.
                (first..route.measured)
                    .take_while(|i| nodes[*i].penalized_wes == Some(best))
                    .filter(|i| request.usable(&nodes[*i]))
                    .min_by_key(|i| nodes[*i].in_flight())
                    .unwrap_or(first)
            });
            if last.get(request.model) != Some(&nodes[pick].id) {
                last.insert(request.model.to_owned(), nodes[pick].id.clone());
            }
            chosen.push(pick);
        }
        fill(request, route, 0..nodes.len(), &mut chosen, want);
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn best_first_unmeasured_last_ties_to_fewer_in_flight() {
        let top = Top::default();
        let r = route(vec![
            node("slow", Some(1.0), 0),
            node("new", None, 0),
            node("busy", Some(5.0), 3),
            node("idle", Some(5.0), 1),
        ]);
        let chosen = top.choose(&request("m"), &r, 4, &mut rng());
        assert_eq!(ids(&r, &chosen), ["idle", "busy", "slow", "new"]);
    }

    #[test]
    fn keeps_its_node_within_hysteresis_and_leaves_it_beyond() {
        let top = Top::default();
        let first = |a: f64, b: f64, model: &str| {
            let r = route(vec![node("a", Some(a), 0), node("b", Some(b), 0)]);
            ids(&r, &top.choose(&request(model), &r, 2, &mut rng()))[0].clone()
        };
        assert_eq!(first(100.0, 90.0, "m"), "a");
        // b edges ahead by 2%: a stays.
        assert_eq!(first(100.0, 102.0, "m"), "a");
        // Another model has its own memory.
        assert_eq!(first(100.0, 102.0, "other"), "b");
        // b pulls 10% ahead: traffic moves, and now b is the sticky one.
        assert_eq!(first(100.0, 110.0, "m"), "b");
        assert_eq!(first(112.0, 110.0, "m"), "b");
    }

    #[test]
    fn a_full_best_node_overflows_to_the_next() {
        let r = route(vec![node("best", Some(9.0), 4), node("next", Some(5.0), 0)]);
        let chosen = Top::default().choose(&request("m"), &r, 3, &mut rng());
        assert_eq!(ids(&r, &chosen), ["next"]);
    }
}
