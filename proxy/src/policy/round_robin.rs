//! `round_robin`: a baseline that ignores efficiency: each request starts one node further
//! along the route, skipping full ones.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::RngCore;

use super::{ModelRoute, Policy, RouteRequest, fill};

#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
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
        let n = route.nodes.len();
        let mut chosen = Vec::with_capacity(want);
        if n == 0 {
            return chosen;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        fill(
            request,
            route,
            (start..n).chain(0..start),
            &mut chosen,
            want,
        );
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn takes_turns() {
        let r = route(vec![
            node("b", Some(1.0), 0),
            node("a", Some(9.0), 0),
            node("c", None, 0),
        ]);
        let counts = first_counts(&RoundRobin::default(), &r, 300);
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            [100, 100, 100]
        );
    }
}
