//! `round_robin`: a baseline that ignores efficiency.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidate, Policy};

#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn order(&self, candidates: &mut [Candidate]) {
        if candidates.is_empty() {
            return;
        }
        // A stable base order first, so the rotation means the same thing on every call.
        candidates.sort_by(|a, b| a.id.cmp(&b.id));
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        candidates.rotate_left(turn);
    }
}
