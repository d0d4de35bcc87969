//! `top`: the highest penalized WES first; unmeasured nodes after the measured ones.

use super::{Candidate, Policy};

pub struct Top;

impl Policy for Top {
    fn name(&self) -> &'static str {
        "top"
    }

    fn order(&self, candidates: &mut [Candidate]) {
        candidates.sort_by(|a, b| {
            let (wa, wb) = (
                a.penalized_wes.unwrap_or(f64::MIN),
                b.penalized_wes.unwrap_or(f64::MIN),
            );
            wb.total_cmp(&wa)
                .then_with(|| a.state.in_flight().cmp(&b.state.in_flight()))
                .then_with(|| a.id.cmp(&b.id))
        });
    }
}
