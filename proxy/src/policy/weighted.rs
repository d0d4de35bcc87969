//! `weighted`: picks the first node at random with probability proportional to its penalized
//! WES, so traffic follows efficiency without piling onto one node; the rest follow in WES
//! order as fallbacks.

use rand::{Rng, RngCore};

use super::{Candidate, Policy, RouteRequest, by_wes};

pub struct Weighted;

impl Policy for Weighted {
    fn name(&self) -> &'static str {
        "weighted"
    }

    fn order(&self, _: &RouteRequest<'_>, candidates: &mut [Candidate], rng: &mut dyn RngCore) {
        candidates.sort_by(by_wes);
        let weight = |c: &Candidate| c.penalized_wes.filter(|w| *w > 0.0).unwrap_or(0.0);
        let total: f64 = candidates.iter().map(weight).sum();
        if total <= 0.0 {
            return;
        }
        let mut point = rng.random::<f64>() * total;
        let mut pick = 0;
        for (i, c) in candidates.iter().enumerate() {
            let w = weight(c);
            if w > 0.0 {
                pick = i;
                if point < w {
                    break;
                }
                point -= w;
            }
        }
        candidates[..=pick].rotate_right(1);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn first_picks_follow_wes_shares() {
        let counts = first_counts(&Weighted, 6000, || {
            vec![
                cand("a", Some(30.0), 0),
                cand("b", Some(10.0), 0),
                cand("new", None, 0),
            ]
        });
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
        let mut c = vec![
            cand("c", Some(1.0), 0),
            cand("a", Some(3.0), 0),
            cand("b", Some(2.0), 0),
        ];
        Weighted.order(&request("m"), &mut c, &mut rng());
        let rest: Vec<_> = c[1..].iter().map(|c| c.penalized_wes).collect();
        assert!(rest.windows(2).all(|w| w[0] >= w[1]), "{:?}", ids(&c));
    }
}
