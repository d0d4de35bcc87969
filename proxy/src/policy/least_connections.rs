//! `least_connections`: a baseline that sends to the node with the fewest requests in flight.

use rand::RngCore;

use super::{Candidate, Policy, RouteRequest};

pub struct LeastConnections;

impl Policy for LeastConnections {
    fn name(&self) -> &'static str {
        "least_connections"
    }

    fn uses_wes(&self) -> bool {
        false
    }

    fn order(&self, _: &RouteRequest<'_>, candidates: &mut [Candidate], _: &mut dyn RngCore) {
        candidates.sort_by(|a, b| a.in_flight.cmp(&b.in_flight).then_with(|| a.id.cmp(&b.id)));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn fewest_in_flight_first() {
        let mut c = vec![
            cand("a", Some(9.0), 2),
            cand("b", Some(1.0), 0),
            cand("c", None, 1),
        ];
        LeastConnections.order(&request("m"), &mut c, &mut rng());
        assert_eq!(ids(&c), ["b", "c", "a"]);
    }
}
