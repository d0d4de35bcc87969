//! `least_connections`: a baseline that sends to the node with the fewest requests in flight
//! (ties by id). It must look at every node: O(n) atomic loads.

use rand::RngCore;

use super::{ModelRoute, Policy, RouteRequest};

pub struct LeastConnections;

impl Policy for LeastConnections {
    fn name(&self) -> &'static str {
        "least_connections"
    }

    fn uses_wes(&self) -> bool {
        false
    }

    fn choose(
        &self,
        request: &RouteRequest<'_>,
        route: &ModelRoute,
        want: usize,
        _: &mut dyn RngCore,
    ) -> Vec<usize> {
        // The `want` least loaded, kept sorted; `want` is small (the relay's attempts).
        let mut best: Vec<(u32, &str, usize)> = Vec::with_capacity(want + 1);
        for (i, node) in route.nodes.iter().enumerate() {
            if !request.usable(node) {
                continue;
            }
            let key = (node.in_flight(), node.id.as_str(), i);
            if best.len() == want && best.last().is_some_and(|worst| key >= *worst) {
                continue;
            }
            let at = best.partition_point(|b| *b < key);
            best.insert(at, key);
            best.truncate(want);
        }
        best.into_iter().map(|(_, _, i)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn fewest_in_flight_first() {
        let r = route(vec![
            node("a", Some(9.0), 2),
            node("b", Some(1.0), 0),
            node("c", None, 1),
        ]);
        let chosen = LeastConnections.choose(&request("m"), &r, 3, &mut rng());
        assert_eq!(ids(&r, &chosen), ["b", "c", "a"]);
        let chosen = LeastConnections.choose(&request("m"), &r, 1, &mut rng());
        assert_eq!(ids(&r, &chosen), ["b"]);
    }
}
