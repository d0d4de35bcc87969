//! Each node's measured energy, split among the requests the proxy had in flight on it
//! (docs/design.md, Energy per request). Pure: samples, times and token counts in, settled
//! shares out.
//!
//! - Energy between two samples comes from the node's counter when both carry one (the
//!   reporter folds hardware wraparound in; a smaller value is a reset, and the new value is the
//!   energy since it), else from the power readings, integrated (trapezoid) over the samples'
//!   own timestamps. A gap longer than [`MAX_GAP`] is not guessed across.
//! - Within an interval, the time with nothing in flight is idle: its energy is the node's
//!   idle power over that time (or, with no idle power known, that time's part of the whole).
//!   The rest, × PUE, is split among the requests in flight in proportion to the tokens each
//!   received in the interval, a request's prompt tokens counting in the interval its first
//!   token arrived in (its prefill ended there); by time present when none received any (a
//!   cold load). Requests plus idle is the counter's increase, × PUE.
//! - Engines say a request's prompt tokens only at its end, so an interval in which a first
//!   token arrived waits, unsplit, until each such request has ended; every other interval
//!   is split at once.
//! - Each share also carries its part of the node's idle power over its time, so that a
//!   request's energy net of idle is its energy minus that baseline.
//! - A request that ends stays in the split until the next sample (its last tokens arrived
//!   within that interval), then settles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// What the relay tells a request's share: tokens as they arrive, then when it ended and its
/// prompt tokens.
#[derive(Debug)]
pub struct RequestShare {
    opened: Instant,
    /// Output tokens received so far.
    credited: AtomicU64,
    ended: Mutex<Option<Ended>>,
}

#[derive(Debug, Clone, Copy)]
struct Ended {
    at: Instant,
    prompt_tokens: u64,
}

impl RequestShare {
    /// Sets the tokens received so far; counts only grow.
    pub fn credit_to(&self, tokens: u64) {
        self.credited.fetch_max(tokens, Ordering::Relaxed);
    }

    fn end_at(&self, at: Instant, prompt_tokens: u64) {
        self.ended.lock().get_or_insert(Ended { at, prompt_tokens });
    }

    fn ended(&self) -> Option<Ended> {
        *self.ended.lock()
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
    /// Opens get increasing ids and `NodeEnergy::open` stays sorted by them, so a member finds
    /// its share by binary search (thousands are in flight at saturation).
    id: u64,
    share: Arc<RequestShare>,
    seen: u64,
    joules: f64,
    baseline_joules: f64,
    complete: bool,
    /// Intervals waiting to be split that this share is in: it settles only after them.
    waiting_in: u32,
    /// What the relay wants back with the energy (key, model, tokens): set when it ends.
    facts: Arc<Mutex<Option<T>>>,
}

/// One share's part in an interval.
struct Member {
    id: u64,
    share: Arc<RequestShare>,
    tokens: f64,
    seconds: f64,
    /// Its first token arrived in this interval: its prompt tokens count here.
    first_token: bool,
}

/// An interval's energy and who was in it, split once every member's weight is known.
struct Unsplit {
    busy: f64,
    baseline: f64,
    members: Vec<Member>,
}

impl Unsplit {
    fn ready(&self) -> bool {
        self.members
            .iter()
            .all(|m| !m.first_token || m.share.ended().is_some())
    }

    /// Each member's fraction: by tokens (prompt included where it counts), else by time.
    fn fractions(&self) -> Vec<f64> {
        #[allow(clippy::cast_precision_loss)]
        let weights: Vec<f64> = self
            .members
            .iter()
            .map(|m| {
                let prompt = match (m.first_token, m.share.ended()) {
                    (true, Some(e)) => e.prompt_tokens as f64,
                    _ => 0.0,
                };
                m.tokens + prompt
            })
            .collect();
        let total: f64 = weights.iter().sum();
        let time: f64 = self.members.iter().map(|m| m.seconds).sum();
        self.members
            .iter()
            .zip(weights)
            .map(|(m, w)| {
                if total > 0.0 {
                    w / total
                } else if time > 0.0 {
                    m.seconds / time
                } else {
                    0.0
                }
            })
            .collect()
    }
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
    /// When the last reading arrived: the start of the interval the next one closes.
    last_arrival: Option<Instant>,
    open: Vec<Open<T>>,
    next_id: u64,
    unsplit: Vec<Unsplit>,
}

impl<T> Default for NodeEnergy<T> {
    fn default() -> Self {
        NodeEnergy {
            last: None,
            last_arrival: None,
            open: Vec::new(),
            next_id: 0,
            unsplit: Vec::new(),
        }
    }
}

impl<T> std::fmt::Debug for NodeEnergy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeEnergy")
            .field("last", &self.last)
            .field("open", &self.open.len())
            .field("unsplit", &self.unsplit.len())
            .finish()
    }
}

/// The relay's handle on one request's share.
pub struct ShareHandle<T> {
    pub share: Arc<RequestShare>,
    facts: Arc<Mutex<Option<T>>>,
}

impl<T> ShareHandle<T> {
    /// The request ended at `at` with `prompt_tokens` (0 when the engine did not say): its
    /// share settles at the node's next sample, with `facts`.
    pub fn end(self, facts: T, prompt_tokens: u64, at: Instant) {
        *self.facts.lock() = Some(facts);
        self.share.end_at(at, prompt_tokens);
    }
}

impl<T> Drop for ShareHandle<T> {
    /// A handle dropped without `end` (a request torn down before its end was seen) must not
    /// keep taking a share forever: it leaves the split, unbooked.
    fn drop(&mut self) {
        self.share.end_at(Instant::now(), 0);
    }
}

/// Seconds of `[t0, t1]` covered by at least one of `spans`.
fn covered(mut spans: Vec<(Instant, Instant)>) -> Duration {
    spans.sort_by_key(|s| s.0);
    let mut total = Duration::ZERO;
    let mut current: Option<(Instant, Instant)> = None;
    for (start, stop) in spans {
        match current.as_mut() {
            Some((_, end)) if start <= *end => *end = (*end).max(stop),
            _ => {
                if let Some((a, b)) = current {
                    total += b - a;
                }
                current = Some((start, stop));
            }
        }
    }
    if let Some((a, b)) = current {
        total += b - a;
    }
    total
}

impl<T> NodeEnergy<T> {
    /// A request went to the node at `now`.
    pub fn open(&mut self, now: Instant) -> ShareHandle<T> {
        let share = Arc::new(RequestShare {
            opened: now,
            credited: AtomicU64::new(0),
            ended: Mutex::new(None),
        });
        let facts = Arc::new(Mutex::new(None));
        self.next_id += 1;
        self.open.push(Open {
            id: self.next_id,
            share: share.clone(),
            seen: 0,
            joules: 0.0,
            baseline_joules: 0.0,
            complete: true,
            waiting_in: 0,
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
        let started = self.last_arrival;
        self.last = Some(reading);
        self.last_arrival = Some(arrived);
        let mut split = Split::default();
        match (interval, started) {
            (Some(i), Some(t0)) if arrived > t0 => {
                split.measured_joules = i.joules * pue;
                split.idle_joules = self.share_out(i, t0, arrived, pue, idle_watts);
            }
            _ => {
                for open in &mut self.open {
                    open.complete = false;
                    open.seen = open.share.credited.load(Ordering::Relaxed);
                }
            }
        }
        self.split_ready(false);
        split.settled = self.settle();
        split
    }

    /// Shares the interval `[t0, t1]` out; returns its idle energy.
    fn share_out(
        &mut self,
        i: Interval,
        t0: Instant,
        t1: Instant,
        pue: f64,
        idle_watts: Option<f64>,
    ) -> f64 {
        let joules = i.joules * pue;
        let span = (t1 - t0).as_secs_f64();
        let present: Vec<(Instant, Instant)> = self
            .open
            .iter()
            .map(|o| {
                let start = o.share.opened.clamp(t0, t1);
                let stop = o.share.ended().map_or(t1, |e| e.at).clamp(start, t1);
                (start, stop)
            })
            .collect();
        let busy_share = (covered(present.clone()).as_secs_f64() / span).min(1.0);
        if busy_share <= 0.0 {
            return joules;
        }
        // The node's seconds, not ours: the energy is over the samples' own timestamps.
        let (busy_s, idle_s) = (i.seconds * busy_share, i.seconds * (1.0 - busy_share));
        let idle = match idle_watts {
            Some(w) => (w * idle_s * pue).min(joules),
            None => joules * (1.0 - busy_share),
        };
        let busy = joules - idle;
        let baseline = idle_watts.map_or(0.0, |w| (w * busy_s * pue).min(busy));
        let members: Vec<Member> = self
            .open
            .iter_mut()
            .zip(present)
            .map(|(o, (a, b))| {
                let now = o.share.credited.load(Ordering::Relaxed);
                // A request that ends without output (an embedding) prefilled up to its end.
                let first_token = o.seen == 0 && (now > 0 || o.share.ended().is_some());
                let delta = now.saturating_sub(o.seen);
                o.seen = now;
                #[allow(clippy::cast_precision_loss)]
                let tokens = delta as f64;
                Member {
                    id: o.id,
                    share: o.share.clone(),
                    tokens,
                    seconds: (b - a).as_secs_f64(),
                    first_token,
                }
            })
            .collect();
        for o in &mut self.open {
            o.waiting_in += 1;
        }
        self.unsplit.push(Unsplit {
            busy,
            baseline,
            members,
        });
        idle
    }

    /// Splits every interval whose weights are all known (all of them when `force`: a prompt
    /// count that never comes counts as none).
    fn split_ready(&mut self, force: bool) {
        let mut i = 0;
        while i < self.unsplit.len() {
            if !(force || self.unsplit[i].ready()) {
                i += 1;
                continue;
            }
            let interval = self.unsplit.remove(i);
            for (member, fraction) in interval.members.iter().zip(interval.fractions()) {
                let found = self.open.binary_search_by_key(&member.id, |o| o.id);
                if let Some(o) = found.ok().and_then(|at| self.open.get_mut(at)) {
                    o.joules += interval.busy * fraction;
                    o.baseline_joules += interval.baseline * fraction;
                    o.waiting_in = o.waiting_in.saturating_sub(1);
                }
            }
        }
    }

    /// Removes the ended shares no interval waits on, and returns those with facts (a handle
    /// dropped without facts leaves unbooked).
    fn settle(&mut self) -> Vec<Settled<T>> {
        let mut settled = Vec::new();
        // One pass that keeps the order (ids stay sorted for the members' lookups).
        self.open.retain(|open| {
            if open.share.ended().is_none() || open.waiting_in > 0 {
                return true;
            }
            if let Some(facts) = open.facts.lock().take() {
                settled.push(Settled {
                    facts,
                    joules: open.joules,
                    baseline_joules: open.baseline_joules,
                    complete: open.complete,
                });
            }
            false
        });
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
        self.split_ready(true);
        self.settle()
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

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
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
        let mut step = |node: &mut NodeEnergy<&'static str>, j: f64, at: u64| {
            let s = node.sample(
                reading(Some(j), None, at as i64),
                ms(t0, at),
                1.5,
                Some(10.0),
            );
            measured += s.measured_joules;
            parts += s.idle_joules + s.settled.iter().map(|x| x.joules).sum::<f64>();
            s
        };
        assert!(step(&mut node, 0.0, 0).settled.is_empty());
        // An idle second: 40 J × PUE 1.5.
        let s = step(&mut node, 40.0, 1_000);
        assert_eq!(s.idle_joules, 60.0);
        // Both arrive in the second second, a quarter in: 10 W idle for 0.25 s is idle.
        let a = node.open(ms(t0, 1_250));
        let b = node.open(ms(t0, 1_250));
        let s = step(&mut node, 140.0, 2_000);
        assert!((s.idle_joules - 3.75).abs() < 1e-9);
        // No tokens yet: the 146.25 J left, by time present (even here).
        // Both first tokens arrive in the third second; a ends with it, its prompt 10 tokens.
        a.share.credit_to(30);
        b.share.credit_to(10);
        a.end("a", 10, ms(t0, 3_000));
        let s = step(&mut node, 240.0, 3_000);
        // That interval waits for b's prompt count: nothing settles, a included.
        assert!(s.settled.is_empty());
        // b ends half way through the last second (the rest of it is idle), prompt 30 tokens.
        b.share.credit_to(15);
        b.end("b", 30, ms(t0, 3_500));
        let s = step(&mut node, 300.0, 4_000);
        assert!((s.idle_joules - 7.5).abs() < 1e-9);
        assert_eq!(s.settled.len(), 2);
        let by = |id| s.settled.iter().find(|x| x.facts == id).unwrap();
        // The third second by 30 + 10 against 10 + 30: even. b had the last alone.
        let (sa, sb) = (by("a"), by("b"));
        assert!((sa.joules - (73.125 + 75.0)).abs() < 1e-9, "{}", sa.joules);
        assert!(
            (sb.joules - (73.125 + 75.0 + 82.5)).abs() < 1e-9,
            "{}",
            sb.joules
        );
        // Baseline: 10 W × the busy time × 1.5, shared the same way.
        assert!((sa.baseline_joules - (5.625 + 7.5)).abs() < 1e-9);
        assert!(sa.complete && sb.complete);
        assert_eq!(node.open_count(), 0);
        assert!((parts - measured).abs() < 1e-9);
        assert!((measured - 450.0).abs() < 1e-9);
    }

    #[test]
    fn without_idle_power_the_idle_part_is_its_time() {
        let t0 = Instant::now();
        let mut node: NodeEnergy<u8> = NodeEnergy::default();
        node.sample(reading(None, Some(100.0), 0), t0, 1.0, None);
        let r = node.open(ms(t0, 500));
        r.end(1, 0, ms(t0, 750));
        let s = node.sample(reading(None, Some(100.0), 1_000), ms(t0, 1_000), 1.0, None);
        assert!((s.settled[0].joules - 25.0).abs() < 1e-9);
        assert!((s.idle_joules - 75.0).abs() < 1e-9);
    }

    #[test]
    fn a_gap_marks_shares_incomplete_and_a_silent_node_releases_them() {
        let t0 = Instant::now();
        let mut node: NodeEnergy<u32> = NodeEnergy::default();
        node.sample(reading(None, Some(100.0), 0), t0, 1.0, None);
        let r = node.open(t0);
        r.share.credit_to(5);
        // 60 s later: not attributed.
        let s = node.sample(
            reading(None, Some(100.0), 60_000),
            ms(t0, 60_000),
            1.0,
            None,
        );
        assert_eq!(s.measured_joules, 0.0);
        r.share.credit_to(9);
        r.end(7, 4, ms(t0, 60_100));
        let later = ms(t0, 60_200);
        assert!(node.abandon_if_silent(later).is_empty(), "not silent yet");
        let gone = node.abandon_if_silent(later + MAX_GAP + Duration::from_secs(1));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].facts, 7);
        assert!(!gone[0].complete);
    }

    #[test]
    fn an_answer_without_output_counts_its_prompt_where_it_ends() {
        let t0 = Instant::now();
        let mut node: NodeEnergy<&'static str> = NodeEnergy::default();
        node.sample(reading(Some(0.0), None, 0), t0, 1.0, None);
        let stream = node.open(t0);
        let embed = node.open(t0);
        stream.share.credit_to(10);
        node.sample(reading(Some(10.0), None, 1_000), ms(t0, 1_000), 1.0, None);
        stream.share.credit_to(20);
        embed.end("embed", 30, ms(t0, 2_000));
        stream.end("stream", 0, ms(t0, 2_000));
        let s = node.sample(reading(Some(20.0), None, 2_000), ms(t0, 2_000), 1.0, None);
        let by = |id| s.settled.iter().find(|x| x.facts == id).unwrap().joules;
        // Second one: the stream's 10 tokens against the embedding's 30 prompt tokens.
        assert!((by("embed") - 7.5).abs() < 1e-9);
        assert!((by("stream") - 12.5).abs() < 1e-9);
    }

    #[test]
    fn overlapping_spans_count_once() {
        let t0 = Instant::now();
        let spans = vec![
            (ms(t0, 0), ms(t0, 10)),
            (ms(t0, 5), ms(t0, 20)),
            (ms(t0, 30), ms(t0, 40)),
        ];
        assert_eq!(covered(spans), Duration::from_millis(30));
    }
}
