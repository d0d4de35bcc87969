//! `least_connections`: a baseline that sends to the node with the fewest requests in flight.

use super::{Candidate, Policy};

pub struct LeastConnections;

impl Policy for LeastConnections {
    fn name(&self) -> &'static str {
        "least_connections"
    }

    fn order(&self, candidates: &mut [Candidate]) {
        candidates.sort_by(|a, b| {
            a.state
                .in_flight()
                .cmp(&b.state.in_flight())
                .then_with(|| a.id.cmp(&b.id))
        });
    }
}
