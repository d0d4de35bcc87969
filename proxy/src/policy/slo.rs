//! `slo`: the most efficient node whose predicted time to first token meets the target. The
//! prediction is the node's TTFT curve for the model at the load this request would make
//! (`fleet::load::TtftCurve`: measured by in-flight count, growing past what was measured), plus
//! what the request has already waited in the queue, since its client waits for both. A node
//! with no TTFT yet is assumed to meet the target, so that it gets measured. When none meets
//! it, the fastest predicted node goes first.

use std::time::Duration;

use rand::RngCore;

use super::{ModelRoute, Policy, RouteNode, RouteRequest, fill};

pub struct Slo;

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
        let predicted = |n: &RouteNode| n.predicted_ttft().map(|t| t + request.waited);
        let meets = |n: &RouteNode| match predicted(n) {
            Some(t) => t <= request.slo_ttft,
            None => request.waited <= request.slo_ttft,
        };
        let mut chosen = Vec::with_capacity(want);
        // In WES order, so the first that meets the target is the most efficient that does.
        let first = (0..nodes.len())
            .find(|i| request.usable(&nodes[*i]) && meets(&nodes[*i]))
            .or_else(|| {
                (0..nodes.len())
                    .filter(|i| request.usable(&nodes[*i]))
                    .min_by_key(|i| predicted(&nodes[*i]).unwrap_or(Duration::ZERO))
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
    use std::sync::Arc;

    use super::super::testing::*;
    use super::*;

    /// A node whose TTFT curve predicts `by_load_ms[n − 1]` with n in flight.
    fn with_ttft(id: &str, wes: f64, in_flight: u32, by_load_ms: &[u64]) -> RouteNode {
        let mut n = node(id, Some(wes), in_flight);
        let curve: Vec<Duration> = by_load_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect();
        n.ttft = Arc::from(curve);
        n
    }

    fn first_after(nodes: Vec<RouteNode>, waited: Duration) -> String {
        let r = route(nodes);
        // request("m") targets 1 s.
        let mut req = request("m");
        req.waited = waited;
        ids(&r, &Slo.choose(&req, &r, 3, &mut rng()))[0].clone()
    }

    fn first(nodes: Vec<RouteNode>) -> String {
        first_after(nodes, Duration::ZERO)
    }

    #[test]
    fn most_efficient_among_those_meeting_the_target() {
        let got = first(vec![
            with_ttft("efficient-but-slow", 50.0, 0, &[1500; 4]),
            with_ttft("ok", 20.0, 0, &[300; 4]),
            with_ttft("better", 30.0, 0, &[600; 4]),
        ]);
        assert_eq!(got, "better");
    }

    #[test]
    fn the_prediction_is_the_curve_at_the_load_this_request_makes() {
        // 600 ms alone, but with 3 in flight this request is the 4th: 1200 ms, over the target.
        let got = first(vec![
            with_ttft("loaded", 30.0, 3, &[600, 700, 900, 1200]),
            with_ttft("idle", 20.0, 0, &[300, 400, 500, 600]),
        ]);
        assert_eq!(got, "idle");
        // At 2 in flight the same node predicts 900 ms and wins on WES.
        let got = first(vec![
            with_ttft("loaded", 30.0, 2, &[600, 700, 900, 1200]),
            with_ttft("idle", 20.0, 0, &[300, 400, 500, 600]),
        ]);
        assert_eq!(got, "loaded");
    }

    #[test]
    fn time_spent_waiting_counts_against_the_target() {
        let nodes = || {
            vec![
                with_ttft("efficient", 30.0, 0, &[700; 4]),
                with_ttft("quick", 20.0, 0, &[200; 4]),
            ]
        };
        assert_eq!(first(nodes()), "efficient");
        // After 500 ms in the queue only the quick one still answers within 1 s.
        assert_eq!(first_after(nodes(), Duration::from_millis(500)), "quick");
    }

    #[test]
    fn when_none_meets_it_the_fastest_goes_first() {
        let got = first(vec![
            with_ttft("a", 30.0, 0, &[3000; 4]),
            with_ttft("b", 10.0, 0, &[2000; 4]),
        ]);
        assert_eq!(got, "b");
    }

    #[test]
    fn an_unmeasured_node_counts_as_meeting_it() {
        let got = first(vec![
            with_ttft("slow", 30.0, 0, &[3000; 4]),
            node("new", Some(10.0), 0),
        ]);
        assert_eq!(got, "new");
    }
}
