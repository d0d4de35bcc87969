//! `weighted`: picks the first node at random with probability proportional to its penalized
//! WES, so traffic follows efficiency without piling onto one node; the rest follow in WES
//! order as fallbacks. A binary search over the table's running sums: O(log n).

use rand::{Rng, RngCore};

use super::{ModelRoute, Policy, RouteRequest, fill};

pub struct Weighted;

impl Policy for Weighted {
    fn name(&self) -> &'static str {
        "weighted"
    }

    fn choose(
        &self,
        request: &RouteRequest<'_>,
        route: &ModelRoute,
        want: usize,
        rng: &mut dyn RngCore,
    ) -> Vec<usize> {
        let mut chosen = Vec::with_capacity(want);
        let total = route.cumulative_wes.last().copied().unwrap_or(0.0);
        if total > 0.0 && want > 0 {
            let point = rng.random::<f64>() * total;
            let pick = route
                .cumulative_wes
                .partition_point(|c| *c <= point)
                .min(route.measured - 1);
            if request.usable(&route.nodes[pick]) {
                chosen.push(pick);
            }
        }
        fill(request, route, 0..route.nodes.len(), &mut chosen, want);
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn first_picks_follow_wes_shares() {
        let r = route(vec![
            node("a", Some(30.0), 0),
            node("b", Some(10.0), 0),
            node("new", None, 0),
        ]);
        let counts = first_counts(&Weighted, &r, 6000);
        let a = counts.get("a").copied().unwrap_or(0) as f64 / 6000.0;
        assert!((0.72..0.78).contains(&a), "{counts:?}");
        assert_eq!(
            counts.get("new"),
            None,
            "unmeasured nodes come by exploration only"
        );
    }

    #[test]
    fn fallbacks_stay_in_wes_order() {
        let r = route(vec![
            node("c", Some(1.0), 0),
            node("a", Some(3.0), 0),
            node("b", Some(2.0), 0),
        ]);
        let chosen = Weighted.choose(&request("m"), &r, 3, &mut rng());
        let rest: Vec<_> = chosen[1..]
            .iter()
            .map(|i| r.nodes[*i].penalized_wes)
            .collect();
        assert!(
            rest.windows(2).all(|w| w[0] >= w[1]),
            "{:?}",
            ids(&r, &chosen)
        );
    }
}
