//! `top`: the highest penalized WES first, with hysteresis: the node chosen last time for a model
//! keeps the traffic while it stays within `hysteresis` of the best, so two near-equal nodes do
//! not swap places (and cold caches) on every sample's jitter.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::RngCore;

use super::{Candidate, Policy, RouteRequest, by_wes};

#[derive(Default)]
pub struct Top {
    /// Model → the node it went to last.
    last: Mutex<HashMap<String, String>>,
}

impl Policy for Top {
    fn name(&self) -> &'static str {
        "top"
    }

    fn order(&self, request: &RouteRequest<'_>, candidates: &mut [Candidate], _: &mut dyn RngCore) {
        candidates.sort_by(by_wes);
        let Some(best) = candidates.first().and_then(|c| c.penalized_wes) else {
            return;
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let keep = last.get(request.model).and_then(|prev| {
            candidates.iter().position(|c| {
                &c.id == prev
                    && c.penalized_wes
                        .is_some_and(|w| w >= best * (1.0 - request.hysteresis))
            })
        });
        if let Some(at) = keep {
            candidates[..=at].rotate_right(1);
        }
        if let Some(first) = candidates.first()
            && last.get(request.model) != Some(&first.id)
        {
            last.insert(request.model.to_owned(), first.id.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn best_first_unmeasured_last_ties_to_fewer_in_flight() {
        let top = Top::default();
        let mut c = vec![
            cand("slow", Some(1.0), 0),
            cand("new", None, 0),
            cand("busy", Some(5.0), 3),
            cand("idle", Some(5.0), 1),
        ];
        top.order(&request("m"), &mut c, &mut rng());
        assert_eq!(ids(&c), ["idle", "busy", "slow", "new"]);
    }

    #[test]
    fn keeps_its_node_within_hysteresis_and_leaves_it_beyond() {
        let top = Top::default();
        let mut c = vec![cand("a", Some(100.0), 0), cand("b", Some(90.0), 0)];
        top.order(&request("m"), &mut c, &mut rng());
        assert_eq!(c[0].id, "a");
        // b edges ahead by 2%: a stays.
        let mut c = vec![cand("a", Some(100.0), 0), cand("b", Some(102.0), 0)];
        top.order(&request("m"), &mut c, &mut rng());
        assert_eq!(ids(&c), ["a", "b"]);
        // Another model has its own memory.
        let mut c = vec![cand("a", Some(100.0), 0), cand("b", Some(102.0), 0)];
        top.order(&request("other"), &mut c, &mut rng());
        assert_eq!(c[0].id, "b");
        // b pulls 10% ahead: traffic moves, and now b is the sticky one.
        let mut c = vec![cand("a", Some(100.0), 0), cand("b", Some(110.0), 0)];
        top.order(&request("m"), &mut c, &mut rng());
        assert_eq!(c[0].id, "b");
        let mut c = vec![cand("a", Some(112.0), 0), cand("b", Some(110.0), 0)];
        top.order(&request("m"), &mut c, &mut rng());
        assert_eq!(c[0].id, "b");
    }
}
