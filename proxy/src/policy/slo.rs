//! `slo`: the most efficient node whose predicted time to first token meets the target. The
//! prediction is the node's smoothed measured TTFT for the model, stretched by its load
//! (`ttft × (1 + in_flight / max_concurrency)`): crude, but it moves traffic off a node whose
//! queue grows before its users notice. A node with no TTFT yet is assumed to meet the target,
//! so that it gets measured. When none meets it, the fastest predicted node goes first.

use std::time::Duration;

use rand::RngCore;

use super::{ModelRoute, Policy, RouteNode, RouteRequest, fill};

pub struct Slo;

pub fn predicted_ttft(n: &RouteNode) -> Option<Duration> {
    let load = f64::from(n.in_flight()) / f64::from(n.max_concurrency.max(1));
    n.ttft.map(|t| t.mul_f64(1.0 + load))
}

impl Policy for Slo {
    fn name(&self) -> &'static str {
        "slo"
    }

    fn choose(
        &self,
        request: &RouteRequest<'_>,
        route: &ModelRoute,
        want: usize,
        _: &mut dyn RngCore,
    ) -> Vec<usize> {
        let nodes = &route.nodes;
        let meets = |n: &RouteNode| predicted_ttft(n).is_none_or(|t| t <= request.slo_ttft);
        let mut chosen = Vec::with_capacity(want);
        // In WES order, so the first that meets the target is the most efficient that does.
        let first = (0..nodes.len())
            .find(|i| request.usable(&nodes[*i]) && meets(&nodes[*i]))
            .or_else(|| {
                (0..nodes.len())
                    .filter(|i| request.usable(&nodes[*i]))
                    .min_by_key(|i| predicted_ttft(&nodes[*i]))
            });
        if let (Some(first), true) = (first, want > 0) {
            chosen.push(first);
        }
        fill(request, route, 0..nodes.len(), &mut chosen, want);
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn with_ttft(id: &str, wes: f64, in_flight: u32, ttft_ms: u64) -> RouteNode {
        let mut n = node(id, Some(wes), in_flight);
        n.ttft = Some(Duration::from_millis(ttft_ms));
        n
    }

    fn first(nodes: Vec<RouteNode>) -> String {
        let r = route(nodes);
        // request("m") targets 1 s.
        ids(&r, &Slo.choose(&request("m"), &r, 3, &mut rng()))[0].clone()
    }

    #[test]
    fn most_efficient_among_those_meeting_the_target() {
        let got = first(vec![
            with_ttft("efficient-but-slow", 50.0, 0, 1500),
            with_ttft("ok", 20.0, 0, 300),
            with_ttft("better", 30.0, 0, 600),
        ]);
        assert_eq!(got, "better");
    }

    #[test]
    fn load_stretches_the_prediction() {
        // 600 ms idle, but 3 of 4 slots taken: 1050 ms predicted, over the target.
        let got = first(vec![
            with_ttft("loaded", 30.0, 3, 600),
            with_ttft("idle", 20.0, 0, 300),
        ]);
        assert_eq!(got, "idle");
    }

    #[test]
    fn when_none_meets_it_the_fastest_goes_first() {
        let got = first(vec![
            with_ttft("a", 30.0, 0, 3000),
            with_ttft("b", 10.0, 0, 2000),
        ]);
        assert_eq!(got, "b");
    }
}
