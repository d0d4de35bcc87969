//! `top`: the highest score for the next request first; among equal scores, the node with
//! fewer requests in flight. The score is read at the load each node carries at the moment of
//! the pick (`RouteNode::wes_now`), not at the last rebuild's, so a burst that arrives between
//! two rebuilds spreads as the load curves say it should: onto a node that batches, away from
//! one that does not. With hysteresis: the node chosen last time for a model keeps the traffic
//! while it stays within `hysteresis` of the best, so two near-equal nodes do not swap places
//! (and cold caches) on every sample's jitter.

use std::sync::Arc;

use parking_lot::Mutex;

use rand::RngCore;

use super::{ModelRoute, Policy, RouteRequest, fill};
use crate::FastMap;

/// Usable measured nodes looked at per pick, best at the last rebuild first: a node further
/// down would need its score at the current load to have overtaken 16 others since the last
/// rebuild (at most 250 ms ago, and after every relayed answer). Each one looked at costs
/// about 20 ns at 1,000 nodes (docs/benchmarks/routing.md).
const SCAN: usize = 16;

#[derive(Default)]
pub struct Top {
    /// Model → the node it went to last.
    last: Mutex<FastMap<String, Arc<str>>>,
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
        let mut last = self.last.lock();
        let prev = last.get(request.model);
        // (index, score now) of the best usable measured node looked at, and of the previous
        // choice if it is among them.
        let mut best: Option<(usize, f64)> = None;
        let mut previous: Option<(usize, f64)> = None;
        let mut scanned = 0;
        for i in 0..route.measured {
            if scanned == SCAN {
                break;
            }
            if !request.usable(&nodes[i]) {
                continue;
            }
            scanned += 1;
            let score = nodes[i].wes_now().unwrap_or(f64::NEG_INFINITY);
            let better = match best {
                None => true,
                Some((b, bs)) => {
                    score > bs || (score == bs && nodes[i].in_flight() < nodes[b].in_flight())
                }
            };
            if better {
                best = Some((i, score));
            }
            if previous.is_none() && prev.is_some_and(|p| *p == nodes[i].id) {
                previous = Some((i, score));
            }
        }
        if let (Some((first, best_score)), true) = (best, want > 0) {
            let band = best_score * (1.0 - request.hysteresis);
            let pick = match previous {
                Some((i, score)) if score >= band => i,
                // No node to keep: among those within the band of the best, this replica's
                // own preference, so that replicas facing near-equal nodes start on different
                // ones instead of all sending their next request to the same.
                _ => match request.replica {
                    Some(replica) if request.hysteresis > 0.0 => (0..route.measured)
                        .filter(|&i| request.usable(&nodes[i]))
                        .take(SCAN)
                        .filter(|&i| nodes[i].wes_now().is_some_and(|s| s >= band))
                        .min_by_key(|&i| {
                            let rank = super::replica_rank(replica, &nodes[i].id);
                            (nodes[i].in_flight(), rank)
                        })
                        .unwrap_or(first),
                    _ => first,
                },
            };
            if prev != Some(&nodes[pick].id) {
                last.insert(request.model.to_owned(), nodes[pick].id.clone());
            }
            chosen.push(pick);
        }
        drop(last);
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
    fn replicas_facing_near_equal_nodes_start_on_different_ones() {
        let r = route(vec![
            node("a", Some(100.0), 0),
            node("b", Some(99.0), 0),
            node("c", Some(98.5), 0),
            node("far", Some(50.0), 0),
        ]);
        let mut firsts = std::collections::HashSet::new();
        for replica in 0..16u64 {
            let mut req = request("m");
            req.replica = Some(replica);
            let pick = ids(&r, &Top::default().choose(&req, &r, 1, &mut rng()))[0].clone();
            assert_ne!(pick, "far", "only near-equal nodes share");
            firsts.insert(pick);
        }
        assert_eq!(
            firsts.len(),
            3,
            "sixteen replicas spread over the three: {firsts:?}"
        );
        // Alone, a proxy takes the best.
        assert_eq!(
            ids(&r, &Top::default().choose(&request("m"), &r, 1, &mut rng()))[0],
            "a"
        );
        // Without hysteresis the best is the best.
        let mut strict = request("m");
        strict.hysteresis = 0.0;
        for replica in 0..4u64 {
            strict.replica = Some(replica);
            let pick = ids(&r, &Top::default().choose(&strict, &r, 1, &mut rng()))[0].clone();
            assert_eq!(pick, "a");
        }
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
