//! What a node delivers as its load changes (docs/design.md, "Load"). A node that batches makes
//! more tokens in all as streams are added while each stream slows; its power rises far less
//! than in proportion. So per (node, model) the proxy learns a load curve: throughput T(n) and
//! power P(n) with n requests in flight, and scores a candidate on what one more request would
//! do to it. Pure: time is passed in.
//!
//! - T(n) comes from the meter: each relayed stream's decode rate, filed under the average
//!   number of requests the node had in flight while it ran ([`Occupancy`]), decayed like the
//!   single-stream estimate. n streams at r each make n·r tokens per second in all.
//! - P(n) comes from telemetry: each sample filed under the node's in-flight count as it
//!   arrives.
//! - The fit is monotone (more streams never make fewer tokens, nor draw less power) and never
//!   predicts beyond what was shown: past the highest measured n the curve stays flat, so a
//!   node is not credited with batching it has not been seen doing.
//! - TTFT(n), for the `slo` policy and the wait queue: each relayed request's time to first
//!   token, filed under the in-flight count it was sent at. Its fit is monotone too, and past
//!   what was shown it grows (a queue only gets longer), never stays flat.

use std::time::{Duration, Instant};

use super::estimate::{HALF_LIFE, RateEstimate};
use super::telemetry::ProbeLoad;

/// Concurrencies tracked one by one; busier readings are filed under the last.
pub const MAX_TRACKED: usize = 64;

/// Weight of the newest power sample in each concurrency's average.
const POWER_ALPHA: f64 = 0.2;

/// The area under a node's in-flight count over time, so that the average count over any
/// window is two readings apart.
#[derive(Debug, Clone, Copy)]
pub struct Occupancy {
    in_flight: u32,
    since: Instant,
    /// Request-seconds up to `since`.
    area: f64,
}

/// One reading of [`Occupancy`], to average from.
#[derive(Debug, Clone, Copy)]
pub struct OccupancyMark {
    at: Instant,
    area: f64,
}

impl Default for Occupancy {
    fn default() -> Self {
        Occupancy::new(Instant::now())
    }
}

impl Occupancy {
    pub fn new(now: Instant) -> Self {
        Occupancy {
            in_flight: 0,
            since: now,
            area: 0.0,
        }
    }

    /// The count changed to `in_flight` at `now`.
    pub fn set(&mut self, in_flight: u32, now: Instant) {
        self.area = self.mark(now).area;
        self.since = now.max(self.since);
        self.in_flight = in_flight;
    }

    pub fn mark(&self, now: Instant) -> OccupancyMark {
        let dt = now.saturating_duration_since(self.since).as_secs_f64();
        OccupancyMark {
            at: now.max(self.since),
            area: self.area + f64::from(self.in_flight) * dt,
        }
    }

    /// The average in-flight count between `from` and `now`; `None` for an empty window.
    pub fn average_since(&self, from: OccupancyMark, now: Instant) -> Option<f64> {
        let to = self.mark(now);
        let dt = to.at.saturating_duration_since(from.at).as_secs_f64();
        (dt > 0.0).then(|| ((to.area - from.area) / dt).max(0.0))
    }
}

/// The concurrency bucket an average count is filed under: the nearest whole count, within
/// `[low, MAX_TRACKED]`.
fn bucket(concurrency: f64, low: usize) -> usize {
    if !concurrency.is_finite() {
        return low;
    }
    (concurrency.round().max(0.0) as usize).clamp(low, MAX_TRACKED)
}

/// Per-stream decode rates by concurrency, for one (node, model).
#[derive(Debug, Clone, Default)]
pub struct LoadCurve {
    /// Index n − 1: streams that ran with about n requests in flight.
    per_stream: Vec<Option<RateEstimate>>,
}

impl LoadCurve {
    /// One relayed stream decoded at `tok_s` while the node averaged `concurrency` in flight.
    pub fn observe(&mut self, concurrency: f64, tok_s: f64, at: Instant) {
        if !(tok_s.is_finite() && tok_s > 0.0) {
            return;
        }
        let i = bucket(concurrency, 1) - 1;
        if self.per_stream.len() <= i {
            self.per_stream.resize(i + 1, None);
        }
        match &mut self.per_stream[i] {
            Some(e) => e.observe(tok_s, at, HALF_LIFE),
            slot @ None => *slot = Some(RateEstimate::new(tok_s, at)),
        }
    }

    /// Throughput points `(n, T(n) = n × per-stream rate, weight)` still trusted at `now`.
    pub fn throughput_points(&self, now: Instant) -> Vec<(f64, f64, f64)> {
        self.per_stream
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let (rate, weight) = e.as_ref()?.current_weighted(now, HALF_LIFE)?;
                let n = (i + 1) as f64;
                Some((n, n * rate, weight))
            })
            .collect()
    }
}

/// Power by concurrency, for one node (all models share its power).
#[derive(Debug, Clone, Default)]
pub struct PowerCurve {
    /// Index n: smoothed watts of samples taken with about n in flight (0: idle).
    by_load: Vec<Option<f64>>,
}

impl PowerCurve {
    pub fn observe(&mut self, concurrency: f64, watts: f64) {
        if !(watts.is_finite() && watts > 0.0) {
            return;
        }
        let i = bucket(concurrency, 0);
        if self.by_load.len() <= i {
            self.by_load.resize(i + 1, None);
        }
        let slot = &mut self.by_load[i];
        *slot = Some(match *slot {
            None => watts,
            Some(old) => old + POWER_ALPHA * (watts - old),
        });
    }

    /// `(n, watts, weight)` for every concurrency with a reading (n = 0: idle).
    fn points(&self) -> Vec<(f64, f64, f64)> {
        self.by_load
            .iter()
            .enumerate()
            .filter_map(|(n, w)| w.map(|w| (n as f64, w, 1.0)))
            .collect()
    }
}

/// Times to first token by the in-flight count each request was sent at (its own included),
/// for one (node, model), in seconds.
#[derive(Debug, Clone, Default)]
pub struct TtftCurve {
    /// Index n − 1: requests sent with n in flight.
    by_load: Vec<Option<RateEstimate>>,
}

impl TtftCurve {
    pub fn observe(&mut self, in_flight: u32, ttft: Duration, at: Instant) {
        let seconds = ttft.as_secs_f64();
        if !seconds.is_finite() {
            return;
        }
        let i = bucket(f64::from(in_flight), 1) - 1;
        if self.by_load.len() <= i {
            self.by_load.resize(i + 1, None);
        }
        match &mut self.by_load[i] {
            Some(e) => e.observe(seconds, at, HALF_LIFE),
            slot @ None => *slot = Some(RateEstimate::new(seconds, at)),
        }
    }

    /// Predicted TTFT for a request sent with n = 1 ..= `max_concurrency` in flight (its own
    /// included), index n − 1; `None` until measured or once every measurement has faded.
    /// Within what was measured, the monotone fit; past the busiest measured count m, each
    /// further request adds `1 / max_concurrency` of TTFT(m), as if it queued behind the
    /// others: the shape the prediction had before the curve existed, so that one measured
    /// point predicts what it always did.
    pub fn predict(&self, max_concurrency: u32, now: Instant) -> Option<Vec<Duration>> {
        let points: Vec<(f64, f64, f64)> = self
            .by_load
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let (seconds, weight) = e.as_ref()?.current_weighted(now, HALF_LIFE)?;
                Some(((i + 1) as f64, seconds, weight))
            })
            .collect();
        let fit = Monotone::fit(&points)?;
        let (last, per_request) = (fit.last_x(), 1.0 / f64::from(max_concurrency.max(1)));
        let at_last = fit.at(last);
        Some(
            (1..=max_concurrency.max(1))
                .map(|n| {
                    let n = f64::from(n);
                    let seconds = if n <= last {
                        fit.at(n)
                    } else {
                        at_last * (1.0 + (n - last) * per_request)
                    };
                    Duration::from_secs_f64(seconds.max(0.0))
                })
                .collect(),
        )
    }
}

/// A non-decreasing piecewise-linear fit through weighted points (pool adjacent violators),
/// flat before its first point and after its last.
#[derive(Debug, Clone, PartialEq)]
pub struct Monotone {
    /// Sorted by x, y non-decreasing.
    knots: Vec<(f64, f64)>,
}

impl Monotone {
    /// `None` without points. Points need not be sorted; equal x are pooled.
    pub fn fit(points: &[(f64, f64, f64)]) -> Option<Monotone> {
        let mut sorted: Vec<(f64, f64, f64)> = points
            .iter()
            .copied()
            .filter(|(x, y, w)| x.is_finite() && y.is_finite() && *w > 0.0)
            .collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Blocks of (first x, last x, weighted mean y, weight), merged while they decrease.
        let mut blocks: Vec<(f64, f64, f64, f64)> = Vec::with_capacity(sorted.len());
        for (x, y, w) in sorted {
            blocks.push((x, x, y, w));
            while blocks.len() > 1 {
                let (b, a) = (blocks[blocks.len() - 1], blocks[blocks.len() - 2]);
                if a.2 <= b.2 {
                    break;
                }
                let weight = a.3 + b.3;
                let merged = (a.0, b.1, (a.2 * a.3 + b.2 * b.3) / weight, weight);
                blocks.pop();
                if let Some(last) = blocks.last_mut() {
                    *last = merged;
                }
            }
        }
        let mut knots = Vec::with_capacity(blocks.len() * 2);
        for (x0, x1, y, _) in blocks {
            knots.push((x0, y));
            if x1 > x0 {
                knots.push((x1, y));
            }
        }
        Some(Monotone { knots })
    }

    pub fn at(&self, x: f64) -> f64 {
        let k = &self.knots;
        let Some(&(x0, y0)) = k.first() else {
            return 0.0;
        };
        if x <= x0 {
            return y0;
        }
        for pair in k.windows(2) {
            let ((xa, ya), (xb, yb)) = (pair[0], pair[1]);
            if x <= xb {
                let t = if xb > xa { (x - xa) / (xb - xa) } else { 1.0 };
                return ya + t * (yb - ya);
            }
        }
        k.last().map_or(y0, |&(_, y)| y)
    }

    /// The highest x the fit was shown.
    pub fn last_x(&self) -> f64 {
        self.knots.last().map_or(0.0, |&(x, _)| x)
    }
}

/// What stands in for measurements where the curves have none: the reporter's probe.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prior<'a> {
    /// One stream's rate (the probe's, else the relayed average).
    pub single: Option<f64>,
    /// The power one probe stream drew.
    pub single_watts: Option<f64>,
    /// The concurrent probes.
    pub loads: &'a [ProbeLoad],
}

/// The fitted curves of one (node, model): what n requests in flight make and draw.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadModel {
    /// Through the origin: no streams, no tokens.
    throughput: Monotone,
    /// `None`: no power readings filed by load; `fallback_watts` for every n ≥ 1.
    power: Option<Monotone>,
    fallback_watts: Option<f64>,
    idle_watts: Option<f64>,
}

impl LoadModel {
    /// From the curve's points; where the curve has none at a load, the prior stands in
    /// (one stream at n = 1, the concurrent probes at theirs, power included).
    /// `fallback_watts` is the watts to use where the power curve has no reading (power while
    /// generating, the latest).
    pub fn new(
        curve: Option<&LoadCurve>,
        power: &PowerCurve,
        prior: Prior<'_>,
        fallback_watts: Option<f64>,
        idle_watts: Option<f64>,
        now: Instant,
    ) -> Option<LoadModel> {
        let mut points = curve.map_or_else(Vec::new, |c| c.throughput_points(now));
        let priors = prior
            .single
            .map(|s| (1.0, s))
            .into_iter()
            .chain(prior.loads.iter().map(|l| (f64::from(l.streams), l.tok_s)));
        for (n, tok_s) in priors {
            if tok_s.is_finite() && tok_s > 0.0 && !points.iter().any(|p| p.0 == n) {
                points.push((n, tok_s, 1.0));
            }
        }
        if points.is_empty() {
            return None;
        }
        points.push((0.0, 0.0, f64::MAX));
        let throughput = Monotone::fit(&points)?;
        let mut readings = power.points();
        let probed_watts = prior.single_watts.map(|w| (1.0, w)).into_iter().chain(
            prior
                .loads
                .iter()
                .filter_map(|l| Some((f64::from(l.streams), l.watts?))),
        );
        for (n, w) in probed_watts {
            if w.is_finite() && w > 0.0 && !readings.iter().any(|p| p.0 == n) {
                readings.push((n, w, 1.0));
            }
        }
        let idle_watts = readings
            .iter()
            .find(|p| p.0 == 0.0)
            .map(|p| p.1)
            .or(idle_watts);
        // Without a busy reading there is no curve; with one, the idle power anchors it at
        // n = 0, so that a node seen only under heavy load is not charged that load's power
        // for one stream.
        let power = if readings.iter().any(|p| p.0 >= 1.0) {
            if let (Some(idle), false) = (idle_watts, readings.iter().any(|p| p.0 == 0.0)) {
                readings.push((0.0, idle, 1.0));
            }
            Monotone::fit(&readings)
        } else {
            None
        };
        Some(LoadModel {
            throughput,
            power,
            fallback_watts,
            idle_watts,
        })
    }

    /// Tokens per second over all streams with `n` in flight.
    pub fn tok_s(&self, n: u32) -> f64 {
        self.throughput.at(f64::from(n))
    }

    /// Watts drawn with `n` in flight, gross.
    pub fn watts(&self, n: u32) -> Option<f64> {
        if n == 0 {
            return self.idle_watts.or(self.fallback_watts);
        }
        match &self.power {
            Some(p) => Some(p.at(f64::from(n))),
            None => self.fallback_watts,
        }
    }

    pub fn idle_watts(&self) -> Option<f64> {
        self.idle_watts
    }

    /// The highest concurrency either curve was shown: past it both are flat.
    pub fn measured_up_to(&self) -> u32 {
        let power = self.power.as_ref().map_or(0.0, Monotone::last_x);
        self.throughput.last_x().max(power) as u32
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// The curves with one stream's rate as the only prior.
    fn fit(
        curve: Option<&LoadCurve>,
        power: &PowerCurve,
        single: Option<f64>,
        fallback_watts: Option<f64>,
        idle_watts: Option<f64>,
        now: Instant,
    ) -> Option<LoadModel> {
        let prior = Prior {
            single,
            ..Prior::default()
        };
        LoadModel::new(curve, power, prior, fallback_watts, idle_watts, now)
    }

    fn ms(v: &[Duration]) -> Vec<u128> {
        v.iter().map(Duration::as_millis).collect()
    }

    #[test]
    fn ttft_rises_with_load_and_past_what_was_measured() {
        let now = Instant::now();
        let mut c = TtftCurve::default();
        assert_eq!(c.predict(4, now), None);
        // One point: 400 ms alone; each further request queues a quarter of it.
        c.observe(1, Duration::from_millis(400), now);
        assert_eq!(ms(&c.predict(4, now).unwrap()), [400, 500, 600, 700]);
        // Measured at 3 in flight: interpolated between, stretched past it.
        c.observe(3, Duration::from_millis(800), now);
        assert_eq!(ms(&c.predict(4, now).unwrap()), [400, 600, 800, 1000]);
        // Noise that would make a busier node answer sooner is pooled.
        c.observe(2, Duration::from_millis(1000), now);
        let p = ms(&c.predict(4, now).unwrap());
        assert_eq!(p[1], p[2], "{p:?}");
        assert!(p[1] == 900 && p[0] == 400, "{p:?}");
    }

    #[test]
    fn ttft_measurements_fade() {
        let t0 = Instant::now();
        let mut c = TtftCurve::default();
        c.observe(1, Duration::from_millis(400), t0);
        c.observe(1, Duration::from_millis(200), t0 + HALF_LIFE * 3);
        let p = c.predict(2, t0 + HALF_LIFE * 3).unwrap();
        // The old 400 ms weighs an eighth of the new 200 ms.
        let expect = (0.4 * 0.125 + 0.2) / 1.125;
        assert!((p[0].as_secs_f64() - expect).abs() < 1e-9, "{p:?}");
        assert_eq!(c.predict(2, t0 + HALF_LIFE * 9), None);
    }

    #[test]
    fn occupancy_averages_the_count_over_a_window() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut o = Occupancy::new(t0);
        o.set(1, t0);
        let mark = o.mark(t0);
        o.set(3, t0 + s);
        o.set(2, t0 + 3 * s);
        // 1 for 1 s, 3 for 2 s, 2 for 1 s: 9 request-seconds over 4 s.
        assert!(close(o.average_since(mark, t0 + 4 * s).unwrap(), 2.25));
        assert_eq!(o.average_since(o.mark(t0 + 4 * s), t0 + 4 * s), None);
    }

    #[test]
    fn a_batching_node_and_one_that_does_not() {
        let now = Instant::now();
        let power = PowerCurve::default();
        // Batching: four streams at 90 tok/s each; one alone at 100.
        let mut gpu = LoadCurve::default();
        gpu.observe(1.0, 100.0, now);
        gpu.observe(4.2, 90.0, now);
        let gpu = fit(Some(&gpu), &power, None, Some(200.0), None, now).unwrap();
        assert!(close(gpu.tok_s(1), 100.0));
        assert!(close(gpu.tok_s(4), 360.0));
        assert!(
            close(gpu.tok_s(2), 100.0 + (360.0 - 100.0) / 3.0),
            "interpolated"
        );
        assert!(close(gpu.tok_s(8), 360.0), "flat beyond what was shown");
        // Not batching: two streams at half the rate make what one does.
        let mut cpu = LoadCurve::default();
        cpu.observe(1.0, 100.0, now);
        cpu.observe(2.0, 50.0, now);
        let cpu = fit(Some(&cpu), &power, None, Some(200.0), None, now).unwrap();
        assert!(close(cpu.tok_s(2), 100.0));
        assert!(close(cpu.tok_s(3), 100.0));
    }

    #[test]
    fn noise_that_would_make_more_streams_slower_is_pooled() {
        let now = Instant::now();
        let mut c = LoadCurve::default();
        c.observe(1.0, 100.0, now);
        c.observe(2.0, 60.0, now); // 120 in all
        c.observe(3.0, 36.0, now); // 108 in all: below n = 2
        let m = fit(Some(&c), &PowerCurve::default(), None, None, None, now).unwrap();
        let (t2, t3) = (m.tok_s(2), m.tok_s(3));
        assert!(close(t2, 114.0) && close(t3, 114.0), "{t2} {t3}");
        assert!(m.tok_s(1) <= t2);
    }

    #[test]
    fn a_curve_with_one_point_is_one_streams_rate_everywhere() {
        let now = Instant::now();
        let m = fit(
            None,
            &PowerCurve::default(),
            Some(80.0),
            Some(50.0),
            None,
            now,
        )
        .unwrap();
        assert!(close(m.tok_s(1), 80.0));
        assert!(close(m.tok_s(6), 80.0));
        assert_eq!(m.watts(3), Some(50.0));
        assert_eq!(m.measured_up_to(), 1);
        assert!(fit(None, &PowerCurve::default(), None, None, None, now).is_none());
        // Only a busy point: below it each stream is taken to run at the measured rate.
        let mut c = LoadCurve::default();
        c.observe(4.0, 50.0, now);
        let m = fit(Some(&c), &PowerCurve::default(), None, None, None, now).unwrap();
        assert!(close(m.tok_s(1), 50.0));
        assert!(close(m.tok_s(4), 200.0));
    }

    #[test]
    fn power_by_load_with_idle_and_the_fallback() {
        let now = Instant::now();
        let mut p = PowerCurve::default();
        p.observe(0.0, 20.0);
        p.observe(1.0, 100.0);
        p.observe(3.2, 140.0);
        let m = fit(None, &p, Some(90.0), Some(999.0), None, now).unwrap();
        assert_eq!(m.watts(0), Some(20.0));
        assert_eq!(m.idle_watts(), Some(20.0));
        assert_eq!(m.watts(1), Some(100.0));
        assert_eq!(m.watts(0), Some(20.0));
        assert!(close(m.watts(2).unwrap(), 120.0));
        assert_eq!(m.watts(10), Some(140.0));
        // Smoothed: a second reading at n = 1 moves it a fifth of the way.
        p.observe(1.0, 200.0);
        let m = fit(None, &p, Some(90.0), None, None, now).unwrap();
        assert!(close(m.watts(1).unwrap(), 120.0));
    }

    fn prior(loads: &[ProbeLoad]) -> Prior<'_> {
        Prior {
            single: Some(100.0),
            single_watts: None,
            loads,
        }
    }

    #[test]
    fn concurrent_probes_give_a_curve_before_traffic_and_measurements_replace_them() {
        let now = Instant::now();
        let loads = [
            ProbeLoad {
                streams: 2,
                tok_s: 190.0,
                watts: Some(150.0),
            },
            ProbeLoad {
                streams: 4,
                tok_s: 360.0,
                watts: Some(180.0),
            },
        ];
        let mut p = PowerCurve::default();
        p.observe(0.0, 40.0);
        let m = LoadModel::new(None, &p, prior(&loads), Some(120.0), None, now).unwrap();
        assert!(close(m.tok_s(4), 360.0));
        assert!(close(m.tok_s(3), 275.0));
        assert_eq!(m.watts(4), Some(180.0));
        assert_eq!(m.measured_up_to(), 4);
        // A relayed measurement at 4 in flight takes the probe's place there.
        let mut c = LoadCurve::default();
        c.observe(4.0, 80.0, now);
        let mut p = PowerCurve::default();
        p.observe(4.0, 200.0);
        let m = LoadModel::new(Some(&c), &p, prior(&loads), None, None, now).unwrap();
        assert!(close(m.tok_s(4), 320.0));
        assert_eq!(m.watts(4), Some(200.0));
        assert_eq!(
            m.watts(2),
            Some(150.0),
            "the probe's power where nothing was filed"
        );
    }

    #[test]
    fn power_seen_only_under_load_is_anchored_at_idle() {
        let now = Instant::now();
        let mut p = PowerCurve::default();
        p.observe(0.0, 40.0);
        p.observe(3.0, 190.0);
        let m = fit(None, &p, Some(100.0), None, None, now).unwrap();
        assert_eq!(m.watts(1), Some(90.0));
        assert_eq!(m.watts(2), Some(140.0));
        assert_eq!(m.watts(5), Some(190.0));
        // The idle figure may come from the busy/idle average instead of the curve.
        let mut busy_only = PowerCurve::default();
        busy_only.observe(4.0, 200.0);
        let m = fit(None, &busy_only, Some(100.0), None, Some(40.0), now).unwrap();
        assert_eq!(m.watts(2), Some(120.0));
        let m = fit(None, &busy_only, Some(100.0), None, None, now).unwrap();
        assert_eq!(
            m.watts(1),
            Some(200.0),
            "no idle figure: flat before the first reading"
        );
    }

    #[test]
    fn old_measurements_decay_out_of_the_curve() {
        let t0 = Instant::now();
        let mut c = LoadCurve::default();
        c.observe(1.0, 100.0, t0);
        c.observe(4.0, 90.0, t0);
        assert_eq!(c.throughput_points(t0).len(), 2);
        // Fresh single-stream traffic keeps n = 1; n = 4 fades after about 4.3 half-lives.
        let later = t0 + HALF_LIFE * 5;
        c.observe(1.0, 100.0, later);
        let points = c.throughput_points(later);
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].0, 1.0);
        let m = fit(Some(&c), &PowerCurve::default(), None, None, None, later).unwrap();
        assert!(close(m.tok_s(4), 100.0), "no longer credited with batching");
    }

    #[test]
    fn nonsense_is_not_filed() {
        let now = Instant::now();
        let mut c = LoadCurve::default();
        c.observe(f64::NAN, 10.0, now);
        c.observe(2.0, f64::INFINITY, now);
        c.observe(1e9, 5.0, now);
        let points = c.throughput_points(now);
        assert_eq!(
            points.len(),
            2,
            "NaN concurrency files under 1, huge under the cap"
        );
        assert_eq!(points[1].0, MAX_TRACKED as f64);
        let mut p = PowerCurve::default();
        p.observe(1.0, -5.0);
        p.observe(1.0, f64::NAN);
        assert!(p.points().is_empty());
    }
}
