//! `p2c` (power of two choices): two candidates at random, the better one first, where better
//! is penalized WES scaled by the share of free slots. Near-optimal load spreading at O(1) cost,
//! leaning toward efficient nodes without flooding the single best one.

use rand::{Rng, RngCore};

use super::{Candidate, Policy, RouteRequest, by_wes};

pub struct PowerOfTwo;

/// Efficiency discounted by load; an unmeasured node scores by its free share alone, below any
/// measured node that has room.
fn score(c: &Candidate) -> (bool, f64) {
    match c.penalized_wes {
        Some(w) => (true, w * c.free_share()),
        None => (false, c.free_share()),
    }
}

impl Policy for PowerOfTwo {
    fn name(&self) -> &'static str {
        "p2c"
    }

    fn order(&self, _: &RouteRequest<'_>, candidates: &mut [Candidate], rng: &mut dyn RngCore) {
        candidates.sort_by(by_wes);
        if candidates.len() < 2 {
            return;
        }
        let i = rng.random_range(0..candidates.len());
        let mut j = rng.random_range(0..candidates.len() - 1);
        if j >= i {
            j += 1;
        }
        let (si, sj) = (score(&candidates[i]), score(&candidates[j]));
        let better = if (si.0, si.1) >= (sj.0, sj.1) { i } else { j };
        candidates[..=better].rotate_right(1);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn the_worst_node_never_comes_first_and_the_best_most_often() {
        let counts = first_counts(&PowerOfTwo, 3000, || {
            vec![
                cand("a", Some(30.0), 0),
                cand("b", Some(20.0), 0),
                cand("c", Some(10.0), 0),
            ]
        });
        assert_eq!(counts.get("c"), None, "{counts:?}");
        // a wins both pairs it is drawn in: 2 of 3 pairs.
        let a = counts["a"] as f64 / 3000.0;
        assert!((0.62..0.71).contains(&a), "{counts:?}");
    }

    #[test]
    fn load_discounts_efficiency() {
        // a is twice as efficient but 3 of 4 slots are taken: b (idle) wins when drawn with it.
        let mut c = vec![cand("a", Some(20.0), 3), cand("b", Some(10.0), 0)];
        PowerOfTwo.order(&request("m"), &mut c, &mut rng());
        assert_eq!(c[0].id, "b");
    }
}
