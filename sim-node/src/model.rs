//! The physics of a simulated node, free of clocks and I/O so that it can be tested exactly:
//! the caller says how much time passed and how many requests were running, and the model
//! answers with power, energy, die temperature, thermal state and the resulting speed.
//!
//! Power follows load: `idle + (busy − idle) × utilization(active) × power_factor(state)`.
//! Temperature is a first-order RC model, `C·dT/dt = P − (T − ambient)/R`, solved exactly for
//! each step so that any step length is stable. The thermal state follows temperature against
//! three thresholds, with hysteresis on the way down so that a node sitting on a threshold does
//! not flap. Throttling (Fair, Serious, Critical) multiplies decode speed by `speed_factor` and
//! power by `power_factor`; power drops less than speed (fans, leakage of hot silicon), so a
//! throttled node is worse per watt too, as in the WES seed's throttled M2.

use serde::{Deserialize, Serialize};

/// The thermal states the reporter's `command` sensor accepts (docs/contract.md, Command sensor), minus `Unknown`:
/// a simulated node always knows its own temperature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ThermalState {
    Normal,
    Fair,
    Serious,
    Critical,
}

impl ThermalState {
    pub fn name(self) -> &'static str {
        match self {
            ThermalState::Normal => "Normal",
            ThermalState::Fair => "Fair",
            ThermalState::Serious => "Serious",
            ThermalState::Critical => "Critical",
        }
    }
}

/// One multiplier per throttled state; Normal is always 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerState {
    pub fair: f64,
    pub serious: f64,
    pub critical: f64,
}

impl PerState {
    pub fn get(&self, state: ThermalState) -> f64 {
        match state {
            ThermalState::Normal => 1.0,
            ThermalState::Fair => self.fair,
            ThermalState::Serious => self.serious,
            ThermalState::Critical => self.critical,
        }
    }

    fn validate(&self, what: &str) -> Result<(), String> {
        for (name, v) in [
            ("fair", self.fair),
            ("serious", self.serious),
            ("critical", self.critical),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                return Err(format!("{what}.{name} must be in (0, 1], got {v}"));
            }
        }
        if !(self.fair >= self.serious && self.serious >= self.critical) {
            return Err(format!(
                "{what} must not rise with heat (fair >= serious >= critical)"
            ));
        }
        Ok(())
    }
}

/// What the node draws, as its own sensor would report it (NVML board power, Apple package
/// power, RAPL package power: see each profile for which).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerParams {
    pub idle_watts: f64,
    /// Drawn when the accelerator is saturated (many requests at once), before throttling.
    pub busy_watts: f64,
    /// Share of the idle-to-busy range one request draws: single-stream decode is
    /// memory-bound and leaves compute idle, so it rarely reaches `busy_watts`.
    pub single_stream_load: f64,
    /// How fast more streams bring the draw to `busy_watts`; by default as fast as they bring
    /// throughput (`speed.concurrency_exponent`). A box that barely batches still draws more
    /// per stream: near 1 there, with a small throughput exponent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_exponent: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThermalParams {
    pub ambient_c: f64,
    /// Steady-state rise per watt: at constant power `P` the die settles at
    /// `ambient_c + P × this`.
    pub thermal_resistance_c_per_w: f64,
    /// Joules to warm the die and its heatsink by one degree; with the resistance this gives
    /// the time constant `R × C` (63 % of the way to steady state).
    pub heat_capacity_j_per_c: f64,
    pub fair_c: f64,
    pub serious_c: f64,
    pub critical_c: f64,
    /// A state is left only once the die is this far below the threshold that entered it.
    pub hysteresis_c: f64,
    pub speed_factor: PerState,
    pub power_factor: PerState,
}

impl PowerParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.idle_watts.is_finite() && self.idle_watts > 0.0) {
            return Err(format!(
                "power.idle_watts must be > 0, got {}",
                self.idle_watts
            ));
        }
        if !(self.busy_watts.is_finite() && self.busy_watts >= self.idle_watts) {
            return Err(format!(
                "power.busy_watts must be >= idle_watts, got {}",
                self.busy_watts
            ));
        }
        if !(self.single_stream_load > 0.0 && self.single_stream_load <= 1.0) {
            return Err(format!(
                "power.single_stream_load must be in (0, 1], got {}",
                self.single_stream_load
            ));
        }
        if let Some(e) = self.concurrency_exponent
            && !(e > 0.0 && e <= 1.0)
        {
            return Err(format!(
                "power.concurrency_exponent must be in (0, 1], got {e}"
            ));
        }
        Ok(())
    }
}

impl ThermalParams {
    pub fn validate(&self) -> Result<(), String> {
        let finite = [
            self.ambient_c,
            self.thermal_resistance_c_per_w,
            self.heat_capacity_j_per_c,
            self.fair_c,
            self.serious_c,
            self.critical_c,
            self.hysteresis_c,
        ];
        if finite.iter().any(|v| !v.is_finite()) {
            return Err("thermal values must be finite numbers".to_string());
        }
        if self.thermal_resistance_c_per_w <= 0.0 || self.heat_capacity_j_per_c <= 0.0 {
            return Err(
                "thermal.thermal_resistance_c_per_w and heat_capacity_j_per_c must be > 0"
                    .to_string(),
            );
        }
        if !(self.ambient_c < self.fair_c
            && self.fair_c < self.serious_c
            && self.serious_c < self.critical_c)
        {
            return Err(
                "thermal thresholds must rise: ambient_c < fair_c < serious_c < critical_c"
                    .to_string(),
            );
        }
        if self.hysteresis_c < 0.0 {
            return Err("thermal.hysteresis_c must be >= 0".to_string());
        }
        self.speed_factor.validate("thermal.speed_factor")?;
        self.power_factor.validate("thermal.power_factor")
    }

    fn time_constant_s(&self) -> f64 {
        self.thermal_resistance_c_per_w * self.heat_capacity_j_per_c
    }

    /// The state a die at `t` is in with no history.
    pub fn level(&self, t: f64) -> ThermalState {
        if t >= self.critical_c {
            ThermalState::Critical
        } else if t >= self.serious_c {
            ThermalState::Serious
        } else if t >= self.fair_c {
            ThermalState::Fair
        } else {
            ThermalState::Normal
        }
    }

    /// Rising is immediate; falling waits until the die is `hysteresis_c` below the
    /// threshold, as firmware governors do, so the state does not flap on a threshold.
    pub fn next_state(&self, current: ThermalState, t: f64) -> ThermalState {
        let plain = self.level(t);
        if plain >= current {
            plain
        } else {
            current.min(self.level(t + self.hysteresis_c))
        }
    }
}

/// The result of one step: what a sensor on the node would read now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Snapshot {
    /// Average power over the step just taken, so that `energy_joules` is exactly the sum of
    /// `watts × dt` and a J/token figure from energy deltas agrees with the watts reported.
    pub watts: f64,
    pub energy_joules: f64,
    pub temperature_c: f64,
    pub thermal_state: ThermalState,
    /// Decode-speed multiplier from throttling (1.0 in Normal).
    pub speed_factor: f64,
}

#[derive(Debug, Clone)]
pub struct NodeModel {
    power: PowerParams,
    thermal: ThermalParams,
    /// Aggregate throughput of `n` concurrent streams is `single × n^exponent`.
    concurrency_exponent: f64,
    /// Thermal time runs this much faster than wall time (demos), while energy is integrated
    /// over wall time: J/token computed from the node's counter must stay physical.
    time_scale: f64,
    temperature_c: f64,
    state: ThermalState,
    energy_joules: f64,
    last_watts: f64,
}

impl NodeModel {
    /// Starts at the idle steady state: a node that has been switched on for a while.
    pub fn new(
        power: PowerParams,
        thermal: ThermalParams,
        concurrency_exponent: f64,
        time_scale: f64,
    ) -> Self {
        let temperature_c =
            thermal.ambient_c + power.idle_watts * thermal.thermal_resistance_c_per_w;
        let state = thermal.level(temperature_c);
        let time_scale = if time_scale.is_finite() && time_scale > 0.0 {
            time_scale
        } else {
            1.0
        };
        let last_watts = power.idle_watts;
        NodeModel {
            power,
            thermal,
            concurrency_exponent: concurrency_exponent.clamp(0.0, 1.0),
            time_scale,
            temperature_c,
            state,
            energy_joules: 0.0,
            last_watts,
        }
    }

    /// Share of the idle-to-busy power range drawn with `active` requests running: one
    /// stream draws `single_stream_load`, and more streams approach saturation as fast as the
    /// hardware turns concurrency into throughput.
    pub fn utilization(&self, active: u32) -> f64 {
        if active == 0 {
            return 0.0;
        }
        let spare = 1.0 - self.power.single_stream_load;
        let exponent = self
            .power
            .concurrency_exponent
            .unwrap_or(self.concurrency_exponent);
        1.0 - spare * f64::from(active).powf(-exponent.max(0.05))
    }

    pub fn watts_at(&self, active: u32, state: ThermalState) -> f64 {
        let range = self.power.busy_watts - self.power.idle_watts;
        self.power.idle_watts
            + range * self.utilization(active) * self.thermal.power_factor.get(state)
    }

    /// Each of `active` streams decodes at `single × active^(exponent − 1)`: the aggregate
    /// grows sublinearly, and each stream slows as more join.
    pub fn stream_share(&self, active: u32) -> f64 {
        let n = f64::from(active.max(1));
        n.powf(self.concurrency_exponent - 1.0)
    }

    /// The decode rate one of `active` streams gets now for a model whose unthrottled
    /// single-stream rate is `base_tok_s`.
    pub fn stream_tok_s(&self, base_tok_s: f64, active: u32) -> f64 {
        base_tok_s * self.stream_share(active) * self.thermal.speed_factor.get(self.state)
    }

    /// Advances the node by `dt_s` wall seconds with `active` requests running throughout.
    /// A negative or non-finite `dt_s` counts as zero: a clock hiccup must not heat the node.
    pub fn step(&mut self, dt_s: f64, active: u32) -> Snapshot {
        let dt = if dt_s.is_finite() && dt_s > 0.0 {
            dt_s
        } else {
            0.0
        };
        let watts = self.watts_at(active, self.state);
        self.energy_joules += watts * dt;
        self.last_watts = watts;

        let target = self.thermal.ambient_c + watts * self.thermal.thermal_resistance_c_per_w;
        let decay = (-dt * self.time_scale / self.thermal.time_constant_s()).exp();
        self.temperature_c = target + (self.temperature_c - target) * decay;
        self.state = self.thermal.next_state(self.state, self.temperature_c);
        self.snapshot()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            watts: self.last_watts,
            energy_joules: self.energy_joules,
            temperature_c: self.temperature_c,
            thermal_state: self.state,
            speed_factor: self.thermal.speed_factor.get(self.state),
        }
    }

    /// A thermal event forced from outside (tests, benchmarks): the die is at `t` now and
    /// cools or heats from there; the state is taken from `t` afresh, without hysteresis.
    pub fn force_temperature(&mut self, t: f64) {
        if t.is_finite() {
            self.temperature_c = t;
            self.state = self.thermal.level(t);
        }
    }

    /// A hot room or a blocked vent: moves where the node settles, not where it is.
    pub fn set_ambient(&mut self, ambient_c: f64) {
        if ambient_c.is_finite() {
            self.thermal.ambient_c = ambient_c;
        }
    }

    pub fn idle_watts(&self) -> f64 {
        self.power.idle_watts
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn power() -> PowerParams {
        PowerParams {
            idle_watts: 10.0,
            busy_watts: 110.0,
            single_stream_load: 0.8,
            concurrency_exponent: None,
        }
    }

    /// Time constant 60 s; four streams draw 100 W and would settle at 85 °C, past Fair (60)
    /// and Serious (75), where throttled power (86.5 W) holds the die near 77 °C.
    fn thermal() -> ThermalParams {
        ThermalParams {
            ambient_c: 25.0,
            thermal_resistance_c_per_w: 0.6,
            heat_capacity_j_per_c: 100.0,
            fair_c: 60.0,
            serious_c: 75.0,
            critical_c: 90.0,
            hysteresis_c: 3.0,
            speed_factor: PerState {
                fair: 0.9,
                serious: 0.7,
                critical: 0.5,
            },
            power_factor: PerState {
                fair: 0.95,
                serious: 0.85,
                critical: 0.7,
            },
        }
    }

    fn model() -> NodeModel {
        NodeModel::new(power(), thermal(), 0.5, 1.0)
    }

    fn run(m: &mut NodeModel, seconds: f64, active: u32) -> Vec<Snapshot> {
        let steps = (seconds / 0.1).round() as usize;
        (0..steps).map(|_| m.step(0.1, active)).collect()
    }

    #[test]
    fn starts_at_idle_equilibrium() {
        let m = model();
        let s = m.snapshot();
        assert_eq!(s.thermal_state, ThermalState::Normal);
        assert!((s.temperature_c - 31.0).abs() < 1e-9);
        assert_eq!(s.watts, 10.0);
    }

    #[test]
    fn idle_stays_idle() {
        let mut m = model();
        let last = *run(&mut m, 600.0, 0).last().unwrap();
        assert!((last.temperature_c - 31.0).abs() < 1e-6);
        assert!((last.energy_joules - 6000.0).abs() < 1e-6);
    }

    #[test]
    fn heats_under_load_through_fair_and_serious_and_speed_drops() {
        let mut m = NodeModel::new(power(), thermal(), 0.5, 1.0);
        let base = m.stream_tok_s(100.0, 4);
        let trace = run(&mut m, 300.0, 4);
        let states: Vec<ThermalState> = trace.iter().map(|s| s.thermal_state).collect();
        let first = |st| states.iter().position(|s| *s == st);
        let fair = first(ThermalState::Fair).unwrap();
        let serious = first(ThermalState::Serious).unwrap();
        assert!(fair < serious, "passes Fair before Serious");
        assert!(trace[serious].temperature_c >= 75.0);
        let hot = m.stream_tok_s(100.0, 4);
        assert!(hot < base, "throttled {hot} vs cool {base}");
        assert!(
            trace
                .windows(2)
                .take(fair)
                .all(|w| w[1].temperature_c >= w[0].temperature_c),
            "monotonic heating before throttling"
        );
    }

    #[test]
    fn speed_factors_follow_the_state() {
        let mut m = model();
        for (t, state, factor) in [
            (50.0, ThermalState::Normal, 1.0),
            (65.0, ThermalState::Fair, 0.9),
            (80.0, ThermalState::Serious, 0.7),
            (95.0, ThermalState::Critical, 0.5),
        ] {
            m.force_temperature(t);
            let s = m.snapshot();
            assert_eq!(s.thermal_state, state, "at {t} °C");
            assert_eq!(s.speed_factor, factor);
            assert!((m.stream_tok_s(100.0, 1) - 100.0 * factor).abs() < 1e-9);
        }
    }

    #[test]
    fn cools_when_idle_with_hysteresis() {
        let mut m = model();
        m.force_temperature(95.0);
        assert_eq!(m.snapshot().thermal_state, ThermalState::Critical);
        let trace = run(&mut m, 2000.0, 0);
        // At 89 °C (below 90 but within the 3 °C hysteresis) it is still Critical.
        let at_89 = trace
            .iter()
            .find(|s| s.temperature_c < 89.0 && s.temperature_c > 87.0)
            .unwrap();
        assert_eq!(at_89.thermal_state, ThermalState::Critical);
        let last = trace.last().unwrap();
        assert_eq!(last.thermal_state, ThermalState::Normal);
        assert!(
            (last.temperature_c - 31.0).abs() < 0.5,
            "{}",
            last.temperature_c
        );
        assert!(
            trace
                .windows(2)
                .all(|w| w[1].temperature_c <= w[0].temperature_c),
            "monotonic cooling"
        );
    }

    #[test]
    fn energy_is_the_integral_of_reported_watts() {
        let mut m = model();
        let mut sum = 0.0;
        for (i, active) in [0, 1, 3, 8, 0, 2].iter().cycle().take(600).enumerate() {
            let dt = 0.05 + (i % 7) as f64 * 0.03;
            let s = m.step(dt, *active);
            sum += s.watts * dt;
            assert!((s.energy_joules - sum).abs() < 1e-6);
        }
    }

    #[test]
    fn power_grows_with_concurrency_and_is_bounded() {
        let m = model();
        let w: Vec<f64> = (0..=16)
            .map(|n| m.watts_at(n, ThermalState::Normal))
            .collect();
        assert_eq!(w[0], 10.0);
        assert!((w[1] - 90.0).abs() < 1e-9);
        assert!(w.windows(2).all(|p| p[1] > p[0]));
        assert!(w[16] < 110.0);
        assert!(m.watts_at(1, ThermalState::Critical) < w[1]);
        // Power may rise on its own exponent: a box that barely batches still draws per stream.
        let mut p = power();
        p.concurrency_exponent = Some(1.0);
        let cpu = NodeModel::new(p, thermal(), 0.1, 1.0);
        // 10 + 100 × (1 − 0.2 / n): n = 2 draws 90 + 10, against n^−0.5's 95.9.
        assert!((cpu.watts_at(2, ThermalState::Normal) - 100.0).abs() < 1e-9);
        assert!(
            (m.watts_at(2, ThermalState::Normal) - (10.0 + 100.0 * (1.0 - 0.2 / 2f64.sqrt())))
                .abs()
                < 1e-9
        );
    }

    #[test]
    fn aggregate_throughput_grows_sublinearly() {
        let m = model();
        let agg = |n: u32| m.stream_tok_s(100.0, n) * f64::from(n);
        assert!((agg(1) - 100.0).abs() < 1e-9);
        assert!(agg(2) > agg(1) && agg(4) > agg(2));
        assert!(agg(4) < 4.0 * agg(1));
        assert!((agg(4) - 200.0).abs() < 1e-9, "n^0.5");
    }

    #[test]
    fn time_scale_speeds_heat_not_energy() {
        let mut slow = model();
        let mut fast = NodeModel::new(power(), thermal(), 0.5, 10.0);
        // Two seconds: long enough to heat the fast one visibly, short enough that it is
        // still Normal, so both drew the same power.
        let a = *run(&mut slow, 2.0, 1).last().unwrap();
        let b = *run(&mut fast, 2.0, 1).last().unwrap();
        assert_eq!(b.thermal_state, ThermalState::Normal);
        assert!(b.temperature_c > a.temperature_c + 5.0);
        assert!((a.energy_joules - b.energy_joules).abs() < 1e-6);
    }

    #[test]
    fn bad_steps_are_ignored() {
        let mut m = model();
        let before = m.snapshot();
        for dt in [f64::NAN, -1.0, f64::NEG_INFINITY] {
            let s = m.step(dt, 4);
            assert_eq!(s.temperature_c, before.temperature_c);
            assert_eq!(s.energy_joules, 0.0);
        }
        m.force_temperature(f64::NAN);
        assert_eq!(m.snapshot().temperature_c, before.temperature_c);
    }

    #[test]
    fn validation_rejects_nonsense() {
        let mut t = thermal();
        t.serious_c = 50.0;
        assert!(t.validate().is_err());
        let mut t = thermal();
        t.speed_factor.fair = 1.5;
        assert!(t.validate().is_err());
        let mut p = power();
        p.busy_watts = 1.0;
        assert!(p.validate().is_err());
        assert!(thermal().validate().is_ok() && power().validate().is_ok());
    }
}
