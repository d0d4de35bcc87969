//! A simulated GPU box inside the reporter: power follows a bursty load, temperature follows
//! power through a first-order thermal model, and it throttles when hot.
//!
//! The demo and the end-to-end tests no longer use it (their nodes are `wes-sim-node`, read by
//! the `command` sensor). It stays because the reporter-footprint benchmark needs a sensor
//! that reads no hardware and spawns no process per reading, so that it measures the reporter
//! itself.
//!
//! [`SimModel`] is pure physics stepped by the caller; [`SimSensor`] drives it with a load
//! pattern that is deterministic for a seed and integrates energy exactly over the steps it
//! took, so `energy_joules` always equals the integral of the watts it reported.

use std::time::Instant;

use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use wes_proto::{SensorKind, ThermalState};

use super::{Reading, Sensor};

/// The simulated machine (the `[sensor.sim]` table of the reporter config). The defaults are
/// a ~30 W idle / 250 W busy GPU box that settles in the Serious band under sustained load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimParams {
    pub idle_watts: f64,
    pub busy_watts: f64,
    pub ambient_c: f64,
    /// Steady-state rise per watt: at `busy_watts` the die would settle at
    /// `ambient_c + busy_watts × this` if nothing throttled.
    pub thermal_resistance_c_per_w: f64,
    /// How fast the temperature follows the power (63 % of the way in this time).
    pub time_constant_secs: f64,
    pub fair_c: f64,
    pub serious_c: f64,
    pub critical_c: f64,
    /// Share of the idle-to-busy power range still drawn at `critical_c`; throttling ramps
    /// linearly from none at `serious_c` down to this.
    pub throttle_floor: f64,
    pub burst_secs_min: f64,
    pub burst_secs_max: f64,
    pub idle_secs_min: f64,
    pub idle_secs_max: f64,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            idle_watts: 30.0,
            busy_watts: 250.0,
            ambient_c: 25.0,
            thermal_resistance_c_per_w: 0.26,
            time_constant_secs: 60.0,
            fair_c: 75.0,
            serious_c: 83.0,
            critical_c: 90.0,
            throttle_floor: 0.6,
            burst_secs_min: 20.0,
            burst_secs_max: 120.0,
            idle_secs_min: 10.0,
            idle_secs_max: 60.0,
        }
    }
}

impl SimParams {
    /// For the config loader: the model clamps bad values rather than failing, but an
    /// operator should hear about them.
    pub fn validate(&self) -> Result<(), String> {
        let finite = [
            self.idle_watts,
            self.busy_watts,
            self.ambient_c,
            self.thermal_resistance_c_per_w,
            self.time_constant_secs,
            self.fair_c,
            self.serious_c,
            self.critical_c,
            self.throttle_floor,
            self.burst_secs_min,
            self.burst_secs_max,
            self.idle_secs_min,
            self.idle_secs_max,
        ];
        if finite.iter().any(|v| !v.is_finite()) {
            return Err("sim: every parameter must be a finite number".to_string());
        }
        if !(0.0 <= self.idle_watts && self.idle_watts <= self.busy_watts) {
            return Err("sim: need 0 <= idle_watts <= busy_watts".to_string());
        }
        if self.thermal_resistance_c_per_w < 0.0 || self.time_constant_secs <= 0.0 {
            return Err(
                "sim: need thermal_resistance_c_per_w >= 0 and time_constant_secs > 0".to_string(),
            );
        }
        if !(self.fair_c <= self.serious_c && self.serious_c < self.critical_c) {
            return Err("sim: need fair_c <= serious_c < critical_c".to_string());
        }
        if !(0.0..=1.0).contains(&self.throttle_floor) {
            return Err("sim: throttle_floor must be within 0..=1".to_string());
        }
        if !(0.0 < self.burst_secs_min
            && self.burst_secs_min <= self.burst_secs_max
            && 0.0 < self.idle_secs_min
            && self.idle_secs_min <= self.idle_secs_max)
        {
            return Err("sim: need 0 < *_secs_min <= *_secs_max".to_string());
        }
        Ok(())
    }
}

/// The model's output for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimState {
    /// Power drawn during the step.
    pub watts: f64,
    /// Temperature at the end of the step.
    pub temperature_c: f64,
    pub thermal: ThermalState,
    /// Work actually done, 0 to 1: the requested load less what throttling took away.
    pub utilization: f64,
}

/// First-order thermal RC model: `dT/dt = (ambient + R·P − T) / τ`.
#[derive(Debug, Clone)]
pub struct SimModel {
    p: SimParams,
    temperature_c: f64,
}

impl SimModel {
    /// Starts at ambient temperature. Nonsense parameters are clamped so the model never
    /// produces NaN or negative power (see [`SimParams::validate`] for the loud check).
    pub fn new(params: SimParams) -> Self {
        let mut p = params;
        let d = SimParams::default();
        let fix = |v: f64, dflt: f64| if v.is_finite() { v } else { dflt };
        p.idle_watts = fix(p.idle_watts, d.idle_watts).max(0.0);
        p.busy_watts = fix(p.busy_watts, d.busy_watts).max(p.idle_watts);
        p.ambient_c = fix(p.ambient_c, d.ambient_c);
        p.thermal_resistance_c_per_w =
            fix(p.thermal_resistance_c_per_w, d.thermal_resistance_c_per_w).max(0.0);
        p.time_constant_secs = fix(p.time_constant_secs, d.time_constant_secs).max(1e-3);
        p.fair_c = fix(p.fair_c, d.fair_c);
        p.serious_c = fix(p.serious_c, d.serious_c).max(p.fair_c);
        p.critical_c = fix(p.critical_c, d.critical_c).max(p.serious_c + 1e-3);
        p.throttle_floor = fix(p.throttle_floor, d.throttle_floor).clamp(0.0, 1.0);
        p.burst_secs_min = fix(p.burst_secs_min, d.burst_secs_min).max(0.1);
        p.burst_secs_max = fix(p.burst_secs_max, d.burst_secs_max).max(p.burst_secs_min);
        p.idle_secs_min = fix(p.idle_secs_min, d.idle_secs_min).max(0.1);
        p.idle_secs_max = fix(p.idle_secs_max, d.idle_secs_max).max(p.idle_secs_min);
        SimModel {
            temperature_c: p.ambient_c,
            p,
        }
    }

    pub fn params(&self) -> &SimParams {
        &self.p
    }

    pub fn temperature_c(&self) -> f64 {
        self.temperature_c
    }

    /// Share of the requested work the chip still does at this temperature.
    fn throttle_factor(&self) -> f64 {
        let p = &self.p;
        let t = self.temperature_c;
        if t <= p.serious_c {
            1.0
        } else if t >= p.critical_c {
            p.throttle_floor
        } else {
            let x = (t - p.serious_c) / (p.critical_c - p.serious_c);
            1.0 - x * (1.0 - p.throttle_floor)
        }
    }

    fn thermal_of(&self, t: f64) -> ThermalState {
        let p = &self.p;
        if t >= p.critical_c {
            ThermalState::Critical
        } else if t >= p.serious_c {
            ThermalState::Serious
        } else if t >= p.fair_c {
            ThermalState::Fair
        } else {
            ThermalState::Normal
        }
    }

    /// Advances `dt_secs` at the requested load (0 to 1). The power is fixed over the step
    /// (throttled by the temperature at its start) and the temperature moves with the exact
    /// exponential solution, so any step length is stable.
    pub fn step(&mut self, dt_secs: f64, utilization: f64) -> SimState {
        let dt = if dt_secs.is_finite() {
            dt_secs.max(0.0)
        } else {
            0.0
        };
        let requested = if utilization.is_finite() {
            utilization.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let p = &self.p;
        let done = requested * self.throttle_factor();
        let watts = p.idle_watts + (p.busy_watts - p.idle_watts) * done;
        let steady = p.ambient_c + p.thermal_resistance_c_per_w * watts;
        let decay = (-dt / p.time_constant_secs).exp();
        self.temperature_c = steady + (self.temperature_c - steady) * decay;
        SimState {
            watts,
            temperature_c: self.temperature_c,
            thermal: self.thermal_of(self.temperature_c),
            utilization: done,
        }
    }
}

/// Alternating bursts and idle gaps with random lengths and levels, from a seeded RNG.
#[derive(Debug, Clone)]
struct LoadPattern {
    rng: StdRng,
    busy: bool,
    level: f64,
    remaining_secs: f64,
}

impl LoadPattern {
    fn new(seed: u64) -> Self {
        // Starts at the end of an idle gap, so the first phase drawn is a burst and a demo
        // shows activity at once.
        LoadPattern {
            rng: StdRng::seed_from_u64(seed),
            busy: false,
            level: 0.0,
            remaining_secs: 0.0,
        }
    }

    /// The next piece of the pattern, at most `max_secs` long: (length, requested load).
    fn next(&mut self, max_secs: f64, p: &SimParams) -> (f64, f64) {
        if self.remaining_secs <= 0.0 {
            self.busy = !self.busy;
            let (lo, hi, levels) = if self.busy {
                (p.burst_secs_min, p.burst_secs_max, (0.7, 1.0))
            } else {
                (p.idle_secs_min, p.idle_secs_max, (0.0, 0.08))
            };
            self.remaining_secs = uniform(&mut self.rng, lo, hi);
            self.level = uniform(&mut self.rng, levels.0, levels.1);
        }
        let secs = max_secs.min(self.remaining_secs);
        self.remaining_secs -= secs;
        // A little jitter within a phase, as real request mixes have.
        let jitter = if self.busy {
            uniform(&mut self.rng, -0.05, 0.05)
        } else {
            0.0
        };
        (secs, (self.level + jitter).clamp(0.0, 1.0))
    }
}

fn uniform(rng: &mut StdRng, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        rng.random_range(lo..hi)
    } else {
        lo
    }
}

/// Longest model step; a long gap between reads is split so the load pattern and the
/// throttling stay resolved.
const MAX_STEP_SECS: f64 = 1.0;
/// Beyond this many steps per read (a host suspended for hours) steps get longer instead.
const MAX_STEPS_PER_READ: f64 = 3600.0;

pub struct SimSensor {
    model: SimModel,
    load: LoadPattern,
    energy_joules: f64,
    last_read: Option<Instant>,
    last: SimState,
}

impl SimSensor {
    pub fn new(params: SimParams, seed: u64) -> Self {
        let mut model = SimModel::new(params);
        let last = model.step(0.0, 0.0);
        SimSensor {
            model,
            load: LoadPattern::new(seed),
            energy_joules: 0.0,
            last_read: None,
            last,
        }
    }

    pub fn model(&self) -> &SimModel {
        &self.model
    }

    /// Moves simulated time forward and reports the interval: watts and utilization are
    /// averages over it (what a power meter shows), temperature and state are at its end.
    pub fn advance(&mut self, dt_secs: f64) -> Reading {
        let dt = if dt_secs.is_finite() {
            dt_secs.max(0.0)
        } else {
            0.0
        };
        let max_step = MAX_STEP_SECS.max(dt / MAX_STEPS_PER_READ);
        let (mut energy, mut work, mut left) = (0.0, 0.0, dt);
        while left > 0.0 {
            let (secs, load) = self.load.next(left.min(max_step), self.model.params());
            let st = self.model.step(secs, load);
            energy += st.watts * secs;
            work += st.utilization * secs;
            left -= secs;
            self.last = st;
        }
        self.energy_joules += energy;
        let (watts, utilization) = if dt > 0.0 {
            (energy / dt, work / dt)
        } else {
            (self.last.watts, self.last.utilization)
        };
        Reading {
            watts: Some(watts),
            energy_joules: Some(self.energy_joules),
            thermal: self.last.thermal,
            temperature_c: Some(self.model.temperature_c()),
            utilization_pct: Some(utilization * 100.0),
            ..Reading::default()
        }
    }
}

impl Sensor for SimSensor {
    fn kind(&self) -> SensorKind {
        SensorKind::Sim
    }

    fn read(&mut self) -> BoxFuture<'_, Reading> {
        let now = Instant::now();
        let dt = self
            .last_read
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.last_read = Some(now);
        Box::pin(async move { self.advance(dt) })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(SimParams::default().validate(), Ok(()));
        let p: SimParams = serde_json::from_str(r#"{"busy_watts": 400}"#).unwrap();
        assert_eq!(p.busy_watts, 400.0);
        assert_eq!(p.idle_watts, 30.0);
        let bad = SimParams {
            busy_watts: 10.0,
            ..SimParams::default()
        };
        assert!(bad.validate().is_err());
        let bad = SimParams {
            critical_c: 80.0,
            ..SimParams::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn sustained_full_load_gets_hot_and_throttles() {
        let mut m = SimModel::new(SimParams::default());
        let first = m.step(1.0, 1.0);
        assert_eq!(first.watts, 250.0);
        assert_eq!(first.thermal, ThermalState::Normal);
        let mut last = first;
        for _ in 0..1800 {
            last = m.step(1.0, 1.0);
        }
        assert!(
            matches!(last.thermal, ThermalState::Serious | ThermalState::Critical),
            "{last:?}"
        );
        assert!(last.watts < 250.0, "throttling lowers power: {last:?}");
        assert!(
            last.utilization < 1.0,
            "throttling lowers work done: {last:?}"
        );
    }

    #[test]
    fn hot_params_reach_critical() {
        let p = SimParams {
            ambient_c: 40.0,
            throttle_floor: 0.9,
            ..SimParams::default()
        };
        let mut m = SimModel::new(p);
        let last = (0..1800).map(|_| m.step(1.0, 1.0)).last().unwrap();
        assert_eq!(last.thermal, ThermalState::Critical, "{last:?}");
    }

    #[test]
    fn idle_cools_back_to_normal() {
        let mut m = SimModel::new(SimParams::default());
        for _ in 0..1800 {
            m.step(1.0, 1.0);
        }
        let mut last = m.step(1.0, 0.0);
        assert_ne!(last.thermal, ThermalState::Normal);
        for _ in 0..1800 {
            last = m.step(1.0, 0.0);
        }
        assert_eq!(last.thermal, ThermalState::Normal, "{last:?}");
        assert_eq!(last.watts, 30.0);
        let settled = 25.0 + 0.26 * 30.0;
        assert!((last.temperature_c - settled).abs() < 0.1, "{last:?}");
    }

    #[test]
    fn step_is_stable_for_any_dt_and_input() {
        let mut m = SimModel::new(SimParams::default());
        let s = m.step(1e9, 1.0);
        assert!(
            s.temperature_c.is_finite() && s.temperature_c < 100.0,
            "{s:?}"
        );
        for (dt, u) in [
            (f64::NAN, 0.5),
            (-1.0, 2.0),
            (1.0, f64::NAN),
            (f64::INFINITY, -1.0),
        ] {
            let s = m.step(dt, u);
            assert!(s.watts.is_finite() && s.watts >= 30.0, "{s:?}");
            assert!(s.temperature_c.is_finite());
        }
        let mut broken = SimModel::new(SimParams {
            time_constant_secs: 0.0,
            idle_watts: f64::NAN,
            busy_watts: -5.0,
            ..SimParams::default()
        });
        let s = broken.step(1.0, 1.0);
        assert!(
            s.watts.is_finite() && s.watts >= 0.0 && s.temperature_c.is_finite(),
            "{s:?}"
        );
    }

    #[test]
    fn energy_is_monotonic_and_the_integral_of_watts() {
        let mut s = SimSensor::new(SimParams::default(), 7);
        let first = s.advance(0.0);
        assert_eq!(first.energy_joules, Some(0.0));
        let mut energy = 0.0;
        let mut integral = 0.0;
        for i in 0..400 {
            let dt = 0.5 + (i % 7) as f64;
            let r = s.advance(dt);
            let e = r.energy_joules.unwrap();
            assert!(e >= energy, "energy went back at read {i}");
            integral += r.watts.unwrap() * dt;
            assert!(
                (e - integral).abs() < 1e-6 * e.max(1.0),
                "read {i}: {e} vs {integral}"
            );
            energy = e;
            let u = r.utilization_pct.unwrap();
            assert!((0.0..=100.0).contains(&u));
        }
    }

    #[test]
    fn pattern_has_bursts_and_gaps_and_is_deterministic() {
        let run = |seed| {
            let mut s = SimSensor::new(SimParams::default(), seed);
            (0..600)
                .map(|_| s.advance(1.0).watts.unwrap())
                .collect::<Vec<_>>()
        };
        let a = run(42);
        assert_eq!(a, run(42));
        assert_ne!(a, run(43));
        assert!(a.iter().any(|w| *w > 150.0), "some bursts");
        assert!(a.iter().any(|w| *w < 50.0), "some idle gaps");
    }

    #[tokio::test]
    async fn read_through_trait() {
        let mut s = SimSensor::new(SimParams::default(), 1);
        let r = s.read().await;
        assert_eq!(r.energy_joules, Some(0.0));
        assert_eq!(r.thermal, ThermalState::Normal);
        assert!(r.errors.is_empty());
        assert_eq!(s.kind(), SensorKind::Sim);
    }
}
