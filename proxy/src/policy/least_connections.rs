//! `least_connections`: a baseline that sends to the node with the fewest requests in flight
//! (ties to the earlier in the route, the better scored). It must look at every node: O(n)
//! atomic loads; it stops early once it holds enough idle nodes.

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
        let mut best: Vec<(u32, usize)> = Vec::with_capacity(want + 1);
        for (i, node) in route.nodes.iter().enumerate() {
            // `want` idle nodes found: nothing later can beat them.
            if best.len() == want && best.last().is_some_and(|worst| worst.0 == 0) {
                break;
            }
            let in_flight = node.in_flight();
            if best.len() == want && best.last().is_some_and(|worst| worst.0 <= in_flight) {
                continue;
            }
            if !request.usable(node) {
                continue;
            }
            let key = (in_flight, i);
            let at = best.partition_point(|b| *b < key);
            best.insert(at, key);
            best.truncate(want);
        }
        best.into_iter().map(|(_, i)| i).collect()
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
