//! Ground truth for the proxy's energy ledger: the node's energy, step by physics step, split
//! among the requests decoding in that step in proportion to the tokens each produced in it
//! (a request's prompt tokens count in the step its prefill ends); a step with requests but no
//! tokens is split evenly among them; a step with none is idle. The proxy does the same at its
//! sample interval, from what it relays; this is the same rule at the simulator's own
//! granularity, with nothing lost in transit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// One request's part: tokens credited by the generation, joules by the split.
#[derive(Debug, Default)]
pub struct Share {
    credited: AtomicU64,
    joules: Mutex<f64>,
}

impl Share {
    pub fn credit(&self, tokens: u64) {
        self.credited.fetch_add(tokens, Ordering::Relaxed);
    }

    pub fn joules(&self) -> f64 {
        *self.joules.lock()
    }
}

#[derive(Debug, Default)]
pub struct Attribution {
    /// Each share with the credited count already split for.
    shares: Vec<(Arc<Share>, u64)>,
    pub idle_joules: f64,
    pub attributed_joules: f64,
}

impl Attribution {
    pub fn open(&mut self) -> Arc<Share> {
        let share = Arc::new(Share::default());
        self.shares.push((share.clone(), 0));
        share
    }

    pub fn close(&mut self, share: &Arc<Share>) {
        self.shares.retain(|(s, _)| !Arc::ptr_eq(s, share));
    }

    /// Splits `joules`, the energy of the step just taken.
    pub fn split(&mut self, joules: f64) {
        if self.shares.is_empty() {
            self.idle_joules += joules;
            return;
        }
        self.attributed_joules += joules;
        let deltas: Vec<u64> = self
            .shares
            .iter_mut()
            .map(|(share, seen)| {
                let now = share.credited.load(Ordering::Relaxed);
                let delta = now.saturating_sub(*seen);
                *seen = now;
                delta
            })
            .collect();
        let total: u64 = deltas.iter().sum();
        let even = 1.0 / self.shares.len() as f64;
        for ((share, _), delta) in self.shares.iter().zip(deltas) {
            let fraction = if total == 0 {
                even
            } else {
                delta as f64 / total as f64
            };
            *share.joules.lock() += joules * fraction;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn energy_follows_tokens_and_nothing_is_lost() {
        let mut a = Attribution::default();
        a.split(5.0);
        let one = a.open();
        let two = a.open();
        a.split(2.0); // no tokens yet: even
        one.credit(3);
        two.credit(1);
        a.split(8.0); // 3:1
        a.close(&one);
        a.split(1.0); // two alone, no tokens: all of it
        assert!((one.joules() - 7.0).abs() < 1e-12);
        assert!((two.joules() - 4.0).abs() < 1e-12);
        assert!((a.idle_joules - 5.0).abs() < 1e-12);
        assert!((a.attributed_joules + a.idle_joules - 16.0).abs() < 1e-12);
    }
}
