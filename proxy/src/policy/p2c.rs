//! `p2c` (power of two choices): two nodes at random, the better one first, where better is
//! penalized WES scaled by the share of free slots. Near-optimal load spreading at O(1) cost,
//! leaning toward efficient nodes without flooding the single best one.

use rand::{Rng, RngCore};

use super::{ModelRoute, Policy, RouteNode, RouteRequest, fill};

pub struct PowerOfTwo;

/// Efficiency discounted by load; an unmeasured node scores by its free share alone, below any
/// measured node.
fn score(n: &RouteNode) -> (bool, f64) {
    match n.penalized_wes {
        Some(w) => (true, w * n.free_share()),
        None => (false, n.free_share()),
    }
}

impl Policy for PowerOfTwo {
    fn name(&self) -> &'static str {
        "p2c"
    }

    fn choose(
        &self,
        request: &RouteRequest<'_>,
        route: &ModelRoute,
        want: usize,
        rng: &mut dyn RngCore,
    ) -> Vec<usize> {
        let n = route.nodes.len();
        let mut chosen = Vec::with_capacity(want);
        if n >= 2 && want > 0 {
            let i = rng.random_range(0..n);
            let mut j = rng.random_range(0..n - 1);
            if j >= i {
                j += 1;
            }
            let (si, sj) = (score(&route.nodes[i]), score(&route.nodes[j]));
            let (better, worse) = if si >= sj { (i, j) } else { (j, i) };
            fill(request, route, [better, worse].into_iter(), &mut chosen, 1);
        }
        fill(request, route, 0..n, &mut chosen, want);
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn the_worst_node_never_comes_first_and_the_best_most_often() {
        let r = route(vec![
            node("a", Some(30.0), 0),
            node("b", Some(20.0), 0),
            node("c", Some(10.0), 0),
        ]);
        let counts = first_counts(&PowerOfTwo, &r, 3000);
        assert_eq!(counts.get("c"), None, "{counts:?}");
        // a wins both pairs it is drawn in: 2 of 3 pairs.
        let a = counts["a"] as f64 / 3000.0;
        assert!((0.62..0.71).contains(&a), "{counts:?}");
    }

    #[test]
    fn load_discounts_efficiency() {
        // a is twice as efficient but 3 of 4 slots are taken: b (idle) wins when drawn with it.
        let r = route(vec![node("a", Some(20.0), 3), node("b", Some(10.0), 0)]);
        let chosen = PowerOfTwo.choose(&request("m"), &r, 2, &mut rng());
        assert_eq!(ids(&r, &chosen), ["b", "a"]);
    }
}
