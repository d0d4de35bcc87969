//! Each node's measured energy, split among the requests the proxy had in flight on it
//! (docs/design.md, Energy per request). Pure: samples and token counts in, settled shares out.
//!
//! - Energy between two samples comes from the node's counter when both carry one (the
//!   reporter folds hardware wraparound in; a smaller value is a reset, and the new value is the
//!   energy since it), else from the power readings, integrated (trapezoid) over the samples'
//!   own timestamps. A gap longer than [`MAX_GAP`] is not guessed across.
//! - That energy × PUE is split among the requests in flight in proportion to the tokens each
//!   received in the interval; evenly when none received any (prefill, a cold load); as idle
//!   energy when nothing was in flight. Requests plus idle is the counter's increase.
//! - Each share also carries its part of the node's idle power over the interval, so that a
//!   request's energy net of idle is its energy minus that baseline.
//! - A request that ends stays in the split until the next sample (its last tokens arrived
//!   within that interval), then settles.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Two samples further apart than this: the energy between them is not attributed.
pub const MAX_GAP: Duration = Duration::from_secs(30);

/// What a request was, as the ledger books it; the relay fills it in when the request ends.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFacts {
    /// The client key's id; `None` while the API is open.
    pub key: Option<Arc<str>>,
    pub model: Arc<str>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The node answered (a failed attempt still drew its share of energy, but is no request).
    pub answered: bool,
}

/// One sample's energy reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub energy_joules: Option<f64>,
    pub watts: Option<f64>,
    /// The sample's own timestamp.
    pub at_unix_ms: i64,
}

/// The energy a node drew between two readings, and over how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub joules: f64,
    pub seconds: f64,
}

/// The energy between `previous` and `now`; `None` when it cannot be told.
pub fn between(previous: &Reading, now: &Reading) -> Option<Interval> {
    let ms = now.at_unix_ms.checked_sub(previous.at_unix_ms)?;
    if ms <= 0 || ms > i64::try_from(MAX_GAP.as_millis()).unwrap_or(i64::MAX) {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let seconds = ms as f64 / 1000.0;
    let joules = match (previous.energy_joules, now.energy_joules) {
        (Some(before), Some(after)) if after >= before => after - before,
        // A reset (a new reporter process, a counter that restarted): energy since it.
        (Some(_), Some(after)) => after,
        _ => {
            let (a, b) = (previous.watts?, now.watts?);
            (a + b) / 2.0 * seconds
        }
    };
    Some(Interval { joules, seconds })
}

/// What the relay tells a request's share: tokens as they arrive, then that it ended.
#[derive(Debug, Default)]
pub struct RequestShare {
    /// Tokens received so far (prompt tokens added once they are known, at the end).
    credited: AtomicU64,
    ended: AtomicBool,
}

impl RequestShare {
    /// Sets the tokens received so far; counts only grow.
    pub fn credit_to(&self, tokens: u64) {
        self.credited.fetch_max(tokens, Ordering::Relaxed);
    }

    pub fn end(&self) {
        self.ended.store(true, Ordering::Release);
    }
}

/// A share's energy, once the request ended and its last interval was split.
#[derive(Debug, Clone)]
pub struct Settled<T> {
    pub facts: T,
    /// Gross energy × PUE.
    pub joules: f64,
    /// The node's idle power over the share's part of the time, × PUE.
    pub baseline_joules: f64,
    /// Whether the node's energy over the request's whole life was measured (no gap).
    pub complete: bool,
}

struct Open<T> {
    share: Arc<RequestShare>,
    seen: u64,
    joules: f64,
    baseline_joules: f64,
    complete: bool,
    /// What the relay wants back with the energy (key, model, tokens): set when it ends.
    facts: Arc<Mutex<Option<T>>>,
}

/// What one sample's interval split into.
#[derive(Debug, Clone)]
pub struct Split<T> {
    pub settled: Vec<Settled<T>>,
    /// × PUE; energy with nothing in flight.
    pub idle_joules: f64,
    /// × PUE; the whole interval's energy (requests' plus idle).
    pub measured_joules: f64,
}

impl<T> Default for Split<T> {
    fn default() -> Self {
        Split {
            settled: Vec::new(),
            idle_joules: 0.0,
            measured_joules: 0.0,
        }
    }
}

/// One node's energy bookkeeping.
pub struct NodeEnergy<T> {
    last: Option<Reading>,
    /// When the last reading arrived, for requests whose node fell silent.
    last_arrival: Option<Instant>,
    open: Vec<Open<T>>,
}

impl<T> Default for NodeEnergy<T> {
    fn default() -> Self {
        NodeEnergy {
            last: None,
            last_arrival: None,
            open: Vec::new(),
        }
    }
}

/// The relay's handle on one request's share.
pub struct ShareHandle<T> {
    pub share: Arc<RequestShare>,
    facts: Arc<Mutex<Option<T>>>,
}

impl<T> ShareHandle<T> {
    /// The request ended: its share settles at the node's next sample, with `facts`.
    pub fn end(self, facts: T) {
        *self.facts.lock() = Some(facts);
        self.share.end();
    }
}

impl<T> Drop for ShareHandle<T> {
    /// A handle dropped without `end` (a request torn down before its end was seen) must not
    /// keep taking a share forever: it leaves the split, unbooked.
    fn drop(&mut self) {
        self.share.end();
    }
}

impl<T> std::fmt::Debug for NodeEnergy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeEnergy")
            .field("last", &self.last)
            .field("open", &self.open.len())
            .finish()
    }
}

impl<T> NodeEnergy<T> {
    /// A request went to the node.
    pub fn open(&mut self) -> ShareHandle<T> {
        let share = Arc::new(RequestShare::default());
        let facts = Arc::new(Mutex::new(None));
        self.open.push(Open {
            share: share.clone(),
            seen: 0,
            joules: 0.0,
            baseline_joules: 0.0,
            complete: true,
            facts: facts.clone(),
        });
        ShareHandle { share, facts }
    }

    /// A sample arrived: splits the energy since the previous one.
    pub fn sample(
        &mut self,
        reading: Reading,
        arrived: Instant,
        pue: f64,
        idle_watts: Option<f64>,
    ) -> Split<T> {
        let interval = self.last.as_ref().and_then(|prev| between(prev, &reading));
        self.last = Some(reading);
        self.last_arrival = Some(arrived);
        let mut split = Split::default();
        match interval {
            Some(i) => {
                let joules = i.joules * pue;
                split.measured_joules = joules;
                let baseline = idle_watts.map_or(0.0, |w| (w * i.seconds * pue).min(joules));
                if self.open.is_empty() {
                    split.idle_joules = joules;
                } else {
                    self.share_out(joules, baseline);
                }
            }
            None => {
                for open in &mut self.open {
                    open.complete = false;
                    open.seen = open.share.credited.load(Ordering::Relaxed);
                }
            }
        }
        split.settled = self.settle(|_| true);
        split
    }

    fn share_out(&mut self, joules: f64, baseline: f64) {
        let deltas: Vec<u64> = self
            .open
            .iter_mut()
            .map(|o| {
                let now = o.share.credited.load(Ordering::Relaxed);
                let delta = now.saturating_sub(o.seen);
                o.seen = now;
                delta
            })
            .collect();
        let total: u64 = deltas.iter().sum();
        #[allow(clippy::cast_precision_loss)]
        let even = 1.0 / self.open.len() as f64;
        for (open, delta) in self.open.iter_mut().zip(deltas) {
            #[allow(clippy::cast_precision_loss)]
            let fraction = if total == 0 {
                even
            } else {
                delta as f64 / total as f64
            };
            open.joules += joules * fraction;
            open.baseline_joules += baseline * fraction;
        }
    }

    /// Settles the ended shares `which` picks.
    fn settle(&mut self, which: impl Fn(&Open<T>) -> bool) -> Vec<Settled<T>> {
        let mut settled = Vec::new();
        let mut i = 0;
        while i < self.open.len() {
            let open = &self.open[i];
            if open.share.ended.load(Ordering::Acquire) && which(open) {
                let open = self.open.swap_remove(i);
                if let Some(facts) = open.facts.lock().take() {
                    settled.push(Settled {
                        facts,
                        joules: open.joules,
                        baseline_joules: open.baseline_joules,
                        complete: open.complete,
                    });
                }
            } else {
                i += 1;
            }
        }
        settled
    }

    /// Ended shares of a node that has sent nothing for [`MAX_GAP`]: settled with what they
    /// have, marked incomplete, so a silent node does not hold its requests' usage forever.
    pub fn abandon_if_silent(&mut self, now: Instant) -> Vec<Settled<T>> {
        let silent = self
            .last_arrival
            .is_none_or(|t| now.saturating_duration_since(t) > MAX_GAP);
        if !silent {
            return Vec::new();
        }
        for open in &mut self.open {
            open.complete = false;
        }
        self.settle(|_| true)
    }

    /// Requests in flight now, ended ones not yet settled included.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reading(joules: Option<f64>, watts: Option<f64>, at_unix_ms: i64) -> Reading {
        Reading {
            energy_joules: joules,
            watts,
            at_unix_ms,
        }
    }

    #[test]
    fn counter_differences_resets_and_integrated_power() {
        let a = reading(Some(100.0), Some(50.0), 1_000);
        let b = reading(Some(160.0), Some(70.0), 2_000);
        assert_eq!(between(&a, &b).unwrap().joules, 60.0);
        // Reset: the reporter restarted and counts from zero again.
        let reset = reading(Some(20.0), Some(70.0), 2_000);
        assert_eq!(between(&a, &reset).unwrap().joules, 20.0);
        // No counter: the trapezoid of the two readings.
        let (c, d) = (
            reading(None, Some(50.0), 1_000),
            reading(None, Some(70.0), 3_000),
        );
        let i = between(&c, &d).unwrap();
        assert_eq!((i.joules, i.seconds), (120.0, 2.0));
        // One side without a counter: power.
        assert_eq!(between(&c, &b).unwrap().joules, 60.0);
        // Out of order, or a gap too long to guess across.
        assert!(between(&b, &a).is_none());
        assert!(between(&a, &reading(Some(500.0), None, 40_000)).is_none());
        assert!(between(&reading(None, None, 0), &reading(None, Some(1.0), 1)).is_none());
    }

    #[test]
    fn energy_is_split_by_tokens_and_requests_plus_idle_is_the_increase() {
        let t0 = Instant::now();
        let mut node: NodeEnergy<&'static str> = NodeEnergy::default();
        let mut measured = 0.0;
        let mut parts = 0.0;
        let mut step = |node: &mut NodeEnergy<&'static str>, j: f64, ms: i64| {
            let s = node.sample(reading(Some(j), None, ms), t0, 1.5, Some(10.0));
            measured += s.measured_joules;
            parts += s.idle_joules + s.settled.iter().map(|x| x.joules).sum::<f64>();
            s
        };
        assert!(step(&mut node, 0.0, 0).settled.is_empty());
        // Idle second: 40 J × PUE 1.5.
        let s = step(&mut node, 40.0, 1_000);
        assert_eq!(s.idle_joules, 60.0);
        let a = node.open();
        let b = node.open();
        // Prefill: no tokens, even split.
        step(&mut node, 140.0, 2_000);
        a.share.credit_to(30);
        b.share.credit_to(10);
        a.end("a");
        let s = step(&mut node, 240.0, 3_000);
        // a: 75 (even) + 112.5 (3/4 of 150); b: 75 + 37.5 so far.
        assert_eq!(s.settled.len(), 1);
        let sa = &s.settled[0];
        assert_eq!(sa.facts, "a");
        assert!((sa.joules - 187.5).abs() < 1e-9);
        // Baseline: 10 W idle × 1 s × 1.5 per interval, shared the same way.
        assert!((sa.baseline_joules - (7.5 + 11.25)).abs() < 1e-9);
        assert!(sa.complete);
        b.share.credit_to(15);
        b.end("b");
        let s = step(&mut node, 300.0, 4_000);
        assert!((s.settled[0].joules - (75.0 + 37.5 + 90.0)).abs() < 1e-9);
        assert_eq!(node.open_count(), 0);
        assert!((parts - measured).abs() < 1e-9);
        assert!((measured - 450.0).abs() < 1e-9);
    }

    #[test]
    fn a_gap_marks_shares_incomplete_and_a_silent_node_releases_them() {
        let t0 = Instant::now();
        let mut node: NodeEnergy<u32> = NodeEnergy::default();
        node.sample(reading(None, Some(100.0), 0), t0, 1.0, None);
        let r = node.open();
        r.share.credit_to(5);
        // 60 s later: not attributed.
        let s = node.sample(reading(None, Some(100.0), 60_000), t0, 1.0, None);
        assert_eq!(s.measured_joules, 0.0);
        r.end(7);
        assert!(node.abandon_if_silent(t0).is_empty(), "not silent yet");
        let gone = node.abandon_if_silent(t0 + MAX_GAP + Duration::from_secs(1));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].facts, 7);
        assert!(!gone[0].complete);
    }
}
