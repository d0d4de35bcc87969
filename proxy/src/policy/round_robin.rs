//! `round_robin`: a baseline that ignores efficiency.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::RngCore;

use super::{Candidate, Policy, RouteRequest};

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

    fn order(&self, _: &RouteRequest<'_>, candidates: &mut [Candidate], _: &mut dyn RngCore) {
        if candidates.is_empty() {
            return;
        }
        // A stable base order first, so the rotation means the same thing on every call.
        candidates.sort_by(|a, b| a.id.cmp(&b.id));
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        candidates.rotate_left(turn);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn takes_turns() {
        let counts = first_counts(&RoundRobin::default(), 300, || {
            vec![
                cand("b", Some(1.0), 0),
                cand("a", Some(9.0), 0),
                cand("c", None, 0),
            ]
        });
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            [100, 100, 100]
        );
    }
}
