//! `slo`: the most efficient node whose predicted time to first token meets the target. The
//! prediction is the node's smoothed measured TTFT for the model, stretched by its load
//! (`ttft × (1 + in_flight / max_concurrency)`): crude, but it moves traffic off a node whose
//! queue grows before its users notice. A node with no TTFT yet is assumed to meet the target,
//! so that it gets measured. When none meets it, the fastest predicted node goes first.

use std::time::Duration;

use rand::RngCore;

use super::{Candidate, Policy, RouteRequest, by_wes};

pub struct Slo;

pub fn predicted_ttft(c: &Candidate) -> Option<Duration> {
    let load = f64::from(c.in_flight) / f64::from(c.max_concurrency.max(1));
    c.ttft.map(|t| t.mul_f64(1.0 + load))
}

impl Policy for Slo {
    fn name(&self) -> &'static str {
        "slo"
    }

    fn order(&self, request: &RouteRequest<'_>, candidates: &mut [Candidate], _: &mut dyn RngCore) {
        let meets = |c: &Candidate| predicted_ttft(c).is_none_or(|t| t <= request.slo_ttft);
        candidates.sort_by(|a, b| {
            meets(b).cmp(&meets(a)).then_with(|| {
                if meets(a) {
                    by_wes(a, b)
                } else {
                    predicted_ttft(a)
                        .cmp(&predicted_ttft(b))
                        .then_with(|| by_wes(a, b))
                }
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn with_ttft(id: &str, wes: f64, in_flight: u32, ttft_ms: u64) -> Candidate {
        let mut c = cand(id, Some(wes), in_flight);
        c.ttft = Some(Duration::from_millis(ttft_ms));
        c
    }

    #[test]
    fn most_efficient_among_those_meeting_the_target() {
        // request("m") targets 1 s.
        let mut c = vec![
            with_ttft("efficient-but-slow", 50.0, 0, 1500),
            with_ttft("ok", 20.0, 0, 300),
            with_ttft("better", 30.0, 0, 600),
        ];
        Slo.order(&request("m"), &mut c, &mut rng());
        assert_eq!(ids(&c), ["better", "ok", "efficient-but-slow"]);
    }

    #[test]
    fn load_stretches_the_prediction() {
        // 600 ms idle, but 3 of 4 slots taken: 1050 ms predicted, over the target.
        let mut c = vec![
            with_ttft("loaded", 30.0, 3, 600),
            with_ttft("idle", 20.0, 0, 300),
        ];
        Slo.order(&request("m"), &mut c, &mut rng());
        assert_eq!(c[0].id, "idle");
    }

    #[test]
    fn when_none_meets_it_the_fastest_goes_first() {
        let mut c = vec![with_ttft("a", 30.0, 0, 3000), with_ttft("b", 10.0, 0, 2000)];
        Slo.order(&request("m"), &mut c, &mut rng());
        assert_eq!(c[0].id, "b");
    }
}
