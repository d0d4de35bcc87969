//! Platform thermal signals → [`ThermalState`], as pure functions so every rule of
//! docs/design.md ("Thermal state per sensor") is table-tested without hardware.
//!
//! The states order like the proto enum (`Unknown < Normal < Fair < Serious < Critical`), so
//! "the worst of several" is `max`, and a known state always beats `Unknown`.

use serde::{Deserialize, Serialize};
use wes_proto::ThermalState;

/// Operator-tunable limits (the `[thermal]` table of the reporter config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThermalThresholds {
    /// Fair starts this many °C below the lowest limit that would make the node Serious.
    pub fair_margin_c: f64,
    /// How many samples running an NVIDIA hardware-slowdown bit must be seen before the GPU
    /// counts as Critical. NVML raises HW_SLOWDOWN briefly during power-state and clock
    /// changes, so one sample alone is only Serious. 1 disables the debounce.
    pub nvidia_hw_slowdown_samples: u32,
    /// Replaces the device's GPU-max operating temperature, for boards that do not report it
    /// (many GeForce cards answer NotSupported).
    pub nvidia_gpu_max_c: Option<f64>,
    /// Replaces the device's hardware slowdown temperature.
    pub nvidia_slowdown_c: Option<f64>,
}

impl Default for ThermalThresholds {
    fn default() -> Self {
        ThermalThresholds {
            fair_margin_c: 5.0,
            nvidia_hw_slowdown_samples: 2,
            nvidia_gpu_max_c: None,
            nvidia_slowdown_c: None,
        }
    }
}

// NVML clock-event reason bits (nvml.h); the same values as nvml-wrapper's `ThrottleReasons`,
// spelled out here so the pure rules do not depend on the hardware crate.
pub const NV_GPU_IDLE: u64 = 0x1;
pub const NV_SW_POWER_CAP: u64 = 0x4;
pub const NV_HW_SLOWDOWN: u64 = 0x8;
pub const NV_SYNC_BOOST: u64 = 0x10;
pub const NV_SW_THERMAL_SLOWDOWN: u64 = 0x20;
pub const NV_HW_THERMAL_SLOWDOWN: u64 = 0x40;
pub const NV_HW_POWER_BRAKE_SLOWDOWN: u64 = 0x80;

/// Bits that mean the hardware itself halved the clocks.
pub const NV_HW_SLOWDOWN_BITS: u64 =
    NV_HW_SLOWDOWN | NV_HW_THERMAL_SLOWDOWN | NV_HW_POWER_BRAKE_SLOWDOWN;

/// Counts consecutive samples with a hardware-slowdown bit, per GPU.
///
/// A sample whose bits could not be read breaks the run: "seen in two samples running" needs
/// two samples actually seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HwSlowdownDebounce {
    streak: u32,
}

impl HwSlowdownDebounce {
    /// Feeds this sample's bits and returns the streak including it.
    pub fn observe(&mut self, throttle_reasons: Option<u64>) -> u32 {
        self.streak = match throttle_reasons {
            Some(bits) if bits & NV_HW_SLOWDOWN_BITS != 0 => self.streak.saturating_add(1),
            _ => 0,
        };
        self.streak
    }
}

/// What one NVIDIA GPU reported in one sample; `None` where NVML could not tell.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NvidiaSignals {
    pub throttle_reasons: Option<u64>,
    /// Consecutive samples, this one included, with a hardware-slowdown bit (see
    /// [`HwSlowdownDebounce`]).
    pub hw_slowdown_streak: u32,
    pub temperature_c: Option<f64>,
    /// `TemperatureThreshold::Slowdown`: the hardware starts throttling here.
    pub slowdown_c: Option<f64>,
    /// `TemperatureThreshold::GpuMax`: above it clocks may drop below base.
    pub gpu_max_c: Option<f64>,
}

/// NVIDIA rules of docs/design.md, with one reading made explicit: "HW slowdown seen in two samples
/// running" is Critical, and a single sample with a hardware bit is Serious (the clocks *are*
/// halved right now, but it may be a clock-change blip). Temperature rules apply on their own,
/// so missing temperatures never hide known throttle bits, and vice versa.
pub fn nvidia_state(s: &NvidiaSignals, t: &ThermalThresholds) -> ThermalState {
    let slowdown = t
        .nvidia_slowdown_c
        .or(s.slowdown_c)
        .filter(|v| valid_limit(*v));
    let gpu_max = t
        .nvidia_gpu_max_c
        .or(s.gpu_max_c)
        .filter(|v| valid_limit(*v));
    let temp = s.temperature_c.filter(|v| v.is_finite());

    let from_bits = s.throttle_reasons.map(|bits| {
        if bits & NV_HW_SLOWDOWN_BITS != 0 {
            if s.hw_slowdown_streak >= t.nvidia_hw_slowdown_samples.max(1) {
                ThermalState::Critical
            } else {
                ThermalState::Serious
            }
        } else if bits & NV_SW_THERMAL_SLOWDOWN != 0 {
            ThermalState::Serious
        } else {
            ThermalState::Normal
        }
    });

    let from_temp = temp.and_then(|temp| {
        if slowdown.is_none() && gpu_max.is_none() {
            return None;
        }
        if slowdown.is_some_and(|l| temp >= l) {
            return Some(ThermalState::Critical);
        }
        if gpu_max.is_some_and(|l| temp >= l) {
            return Some(ThermalState::Serious);
        }
        // Normally GPU-max is the lower limit; when the board reports only the slowdown
        // threshold, Fair is measured against that instead.
        let lowest = min_opt(gpu_max, slowdown)?;
        Some(if temp >= lowest - t.fair_margin_c {
            ThermalState::Fair
        } else {
            ThermalState::Normal
        })
    });

    worst(from_bits, from_temp)
}

/// SW_POWER_CAP is the power limiter, not heat: it is reported as a flag, never as a state.
pub fn nvidia_power_capped(throttle_reasons: u64) -> bool {
    throttle_reasons & NV_SW_POWER_CAP != 0
}

/// Linux thermal-zone trip point kinds (`trip_point_N_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripKind {
    /// Fans only: not a limit on the chip.
    Active,
    /// The kernel starts throttling (passive cooling).
    Passive,
    Hot,
    Critical,
}

impl TripKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "active" => Some(TripKind::Active),
            "passive" => Some(TripKind::Passive),
            "hot" => Some(TripKind::Hot),
            "critical" => Some(TripKind::Critical),
            _ => None,
        }
    }
}

/// One hwmon `temp*_input` with its own limits, in °C.
#[derive(Debug, Clone, PartialEq)]
pub struct HwmonTemp {
    pub temp_c: f64,
    pub max_c: Option<f64>,
    pub crit_c: Option<f64>,
}

/// One `thermal_zone*` with its trip points, in °C.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneTemp {
    pub temp_c: f64,
    pub trips: Vec<(TripKind, f64)>,
}

/// What the Linux sysfs sources said in one sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinuxSignals {
    pub hwmon: Vec<HwmonTemp>,
    pub zones: Vec<ZoneTemp>,
    /// The CPU thermal-throttle counters grew since the previous sample.
    pub throttle_grew: bool,
}

/// Linux rules: each sensor is judged against its own limits and the node takes the worst.
/// Throttle counters that grew mean the CPU is being slowed for heat right now (Serious) even
/// without a temperature; with neither, the state is Unknown.
pub fn linux_state(s: &LinuxSignals, t: &ThermalThresholds) -> ThermalState {
    let hwmon = s.hwmon.iter().filter(|h| h.temp_c.is_finite()).map(|h| {
        let max = h.max_c.filter(|v| valid_limit(*v));
        let crit = h.crit_c.filter(|v| valid_limit(*v));
        classify(h.temp_c, crit, max, t)
    });
    let zones = s.zones.iter().filter(|z| z.temp_c.is_finite()).map(|z| {
        let limit = |kinds: &[TripKind]| {
            z.trips
                .iter()
                .filter(|(k, v)| kinds.contains(k) && valid_limit(*v))
                .map(|(_, v)| *v)
                .reduce(f64::min)
        };
        let crit = limit(&[TripKind::Critical]);
        let serious = limit(&[TripKind::Passive, TripKind::Hot]);
        classify(z.temp_c, crit, serious, t)
    });
    let from_temps = hwmon.chain(zones).max();
    let from_throttle = s.throttle_grew.then_some(ThermalState::Serious);
    worst(from_temps, from_throttle)
}

/// One temperature against its critical and serious limits. A sensor without limits still
/// proves the node is readable, so it counts as Normal rather than Unknown.
fn classify(
    temp: f64,
    crit: Option<f64>,
    serious: Option<f64>,
    t: &ThermalThresholds,
) -> ThermalState {
    if crit.is_some_and(|l| temp >= l) {
        return ThermalState::Critical;
    }
    if serious.is_some_and(|l| temp >= l) {
        return ThermalState::Serious;
    }
    match min_opt(serious, crit) {
        Some(lowest) if temp >= lowest - t.fair_margin_c => ThermalState::Fair,
        _ => ThermalState::Normal,
    }
}

/// macOS thermal pressure (`com.apple.system.thermalpressurelevel`): 0 nominal, 1 moderate,
/// 2 heavy, 3 trapping, 4 sleeping.
pub fn apple_pressure_state(level: u64) -> ThermalState {
    match level {
        0 => ThermalState::Normal,
        1 => ThermalState::Fair,
        2 => ThermalState::Serious,
        3 | 4 => ThermalState::Critical,
        _ => ThermalState::Unknown,
    }
}

/// `NSProcessInfo.thermalState` (NSProcessInfoThermalState 0..=3).
pub fn apple_process_info_state(state: i64) -> ThermalState {
    match state {
        0 => ThermalState::Normal,
        1 => ThermalState::Fair,
        2 => ThermalState::Serious,
        3 => ThermalState::Critical,
        _ => ThermalState::Unknown,
    }
}

/// Drivers report 0 (or garbage) for limits they do not have; a limit at or below 0 °C
/// would make every node Critical.
fn valid_limit(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn worst(a: Option<ThermalState>, b: Option<ThermalState>) -> ThermalState {
    a.max(b).unwrap_or(ThermalState::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ThermalState::*;

    fn t() -> ThermalThresholds {
        ThermalThresholds::default()
    }

    fn nv(bits: Option<u64>, streak: u32, temp: Option<f64>) -> NvidiaSignals {
        NvidiaSignals {
            throttle_reasons: bits,
            hw_slowdown_streak: streak,
            temperature_c: temp,
            slowdown_c: Some(90.0),
            gpu_max_c: Some(85.0),
        }
    }

    #[test]
    fn nvidia_table() {
        let cases: &[(&str, NvidiaSignals, ThermalState)] = &[
            ("idle cool", nv(Some(NV_GPU_IDLE), 0, Some(40.0)), Normal),
            ("nothing", nv(Some(0), 0, Some(60.0)), Normal),
            (
                "sw power cap alone",
                nv(Some(NV_SW_POWER_CAP), 0, Some(60.0)),
                Normal,
            ),
            (
                "sync boost alone",
                nv(Some(NV_SYNC_BOOST), 0, Some(60.0)),
                Normal,
            ),
            (
                "hw slowdown one sample",
                nv(Some(NV_HW_SLOWDOWN), 1, Some(60.0)),
                Serious,
            ),
            (
                "hw slowdown two samples",
                nv(Some(NV_HW_SLOWDOWN), 2, Some(60.0)),
                Critical,
            ),
            (
                "hw thermal two samples",
                nv(Some(NV_HW_THERMAL_SLOWDOWN), 2, None),
                Critical,
            ),
            (
                "power brake one sample",
                nv(Some(NV_HW_POWER_BRAKE_SLOWDOWN), 1, None),
                Serious,
            ),
            (
                "power brake three",
                nv(Some(NV_HW_POWER_BRAKE_SLOWDOWN), 3, None),
                Critical,
            ),
            (
                "sw thermal",
                nv(Some(NV_SW_THERMAL_SLOWDOWN), 0, Some(60.0)),
                Serious,
            ),
            ("at slowdown temp", nv(Some(0), 0, Some(90.0)), Critical),
            ("at gpu max", nv(Some(0), 0, Some(85.0)), Serious),
            ("within margin", nv(Some(0), 0, Some(80.0)), Fair),
            ("just below margin", nv(Some(0), 0, Some(79.9)), Normal),
            ("bits unknown, hot", nv(None, 0, Some(86.0)), Serious),
            (
                "bits known, temp unknown",
                nv(Some(NV_SW_THERMAL_SLOWDOWN), 0, None),
                Serious,
            ),
            (
                "bits known, temp unknown, quiet",
                nv(Some(0), 0, None),
                Normal,
            ),
            ("nothing known", nv(None, 0, None), Unknown),
            ("temp but NaN", nv(None, 0, Some(f64::NAN)), Unknown),
        ];
        for (name, s, want) in cases {
            assert_eq!(nvidia_state(s, &t()), *want, "{name}");
        }
    }

    #[test]
    fn nvidia_without_thresholds() {
        let no_limits = NvidiaSignals {
            throttle_reasons: Some(0),
            temperature_c: Some(99.0),
            ..NvidiaSignals::default()
        };
        // Bits known and quiet, limits unknown: Normal, never Unknown.
        assert_eq!(nvidia_state(&no_limits, &t()), Normal);
        let only_temp = NvidiaSignals {
            throttle_reasons: None,
            ..no_limits
        };
        assert_eq!(nvidia_state(&only_temp, &t()), Unknown);
        // An operator override supplies the missing limit.
        let th = ThermalThresholds {
            nvidia_gpu_max_c: Some(83.0),
            ..t()
        };
        assert_eq!(nvidia_state(&only_temp, &th), Serious);
        // Only the slowdown threshold known: Fair is measured against it.
        let slow_only = NvidiaSignals {
            throttle_reasons: Some(0),
            temperature_c: Some(88.0),
            slowdown_c: Some(92.0),
            ..NvidiaSignals::default()
        };
        assert_eq!(nvidia_state(&slow_only, &t()), Fair);
        // A zero threshold is "not reported", not "everything is Critical".
        let zero = NvidiaSignals {
            slowdown_c: Some(0.0),
            gpu_max_c: Some(0.0),
            ..slow_only
        };
        assert_eq!(nvidia_state(&zero, &t()), Normal);
    }

    #[test]
    fn design_md_cases_with_debounce() {
        let mut d = HwSlowdownDebounce::default();
        let mut run = |bits: Option<u64>| {
            let streak = d.observe(bits);
            nvidia_state(&nv(bits, streak, Some(60.0)), &t())
        };
        assert_eq!(run(Some(NV_HW_SLOWDOWN)), Serious, "one sample");
        assert_eq!(run(Some(NV_HW_SLOWDOWN)), Critical, "two samples running");
        assert_eq!(run(Some(0)), Normal);
        assert_eq!(run(Some(NV_HW_SLOWDOWN)), Serious, "run restarted");
        assert_eq!(
            run(None),
            Normal,
            "unreadable bits break the run (temp says Normal)"
        );
        assert_eq!(run(Some(NV_HW_THERMAL_SLOWDOWN)), Serious);
        assert_eq!(
            run(Some(NV_HW_POWER_BRAKE_SLOWDOWN)),
            Critical,
            "any HW bit counts"
        );

        assert!(nvidia_power_capped(NV_SW_POWER_CAP));
        assert!(nvidia_power_capped(NV_SW_POWER_CAP | NV_GPU_IDLE));
        assert!(!nvidia_power_capped(NV_HW_SLOWDOWN | NV_SYNC_BOOST));
        assert_eq!(
            nvidia_state(&nv(Some(NV_SW_POWER_CAP), 0, Some(50.0)), &t()),
            Normal
        );
    }

    #[test]
    fn debounce_can_be_disabled() {
        let th = ThermalThresholds {
            nvidia_hw_slowdown_samples: 1,
            ..t()
        };
        assert_eq!(
            nvidia_state(&nv(Some(NV_HW_SLOWDOWN), 1, None), &th),
            Critical
        );
        let zero = ThermalThresholds {
            nvidia_hw_slowdown_samples: 0,
            ..t()
        };
        assert_eq!(
            nvidia_state(&nv(Some(NV_HW_SLOWDOWN), 1, None), &zero),
            Critical
        );
    }

    #[test]
    fn bits_match_nvml_wrapper() {
        use nvml_wrapper::bitmasks::device::ThrottleReasons as R;
        assert_eq!(R::GPU_IDLE.bits(), NV_GPU_IDLE);
        assert_eq!(R::SW_POWER_CAP.bits(), NV_SW_POWER_CAP);
        assert_eq!(R::HW_SLOWDOWN.bits(), NV_HW_SLOWDOWN);
        assert_eq!(R::SYNC_BOOST.bits(), NV_SYNC_BOOST);
        assert_eq!(R::SW_THERMAL_SLOWDOWN.bits(), NV_SW_THERMAL_SLOWDOWN);
        assert_eq!(R::HW_THERMAL_SLOWDOWN.bits(), NV_HW_THERMAL_SLOWDOWN);
        assert_eq!(
            R::HW_POWER_BRAKE_SLOWDOWN.bits(),
            NV_HW_POWER_BRAKE_SLOWDOWN
        );
    }

    fn hw(temp: f64, max: Option<f64>, crit: Option<f64>) -> HwmonTemp {
        HwmonTemp {
            temp_c: temp,
            max_c: max,
            crit_c: crit,
        }
    }

    fn zone(temp: f64, trips: &[(TripKind, f64)]) -> ZoneTemp {
        ZoneTemp {
            temp_c: temp,
            trips: trips.to_vec(),
        }
    }

    #[test]
    fn linux_table() {
        use TripKind as K;
        let sig = |hwmon: Vec<HwmonTemp>, zones: Vec<ZoneTemp>, grew: bool| LinuxSignals {
            hwmon,
            zones,
            throttle_grew: grew,
        };
        let cases: Vec<(&str, LinuxSignals, ThermalState)> = vec![
            (
                "no sources",
                sig(vec![], vec![], false),
                ThermalState::Unknown,
            ),
            ("throttle only", sig(vec![], vec![], true), Serious),
            (
                "cool",
                sig(vec![hw(45.0, Some(80.0), Some(100.0))], vec![], false),
                Normal,
            ),
            (
                "no limits",
                sig(vec![hw(95.0, None, None)], vec![], false),
                Normal,
            ),
            (
                "near max",
                sig(vec![hw(76.0, Some(80.0), Some(100.0))], vec![], false),
                Fair,
            ),
            (
                "at max",
                sig(vec![hw(80.0, Some(80.0), Some(100.0))], vec![], false),
                Serious,
            ),
            (
                "at crit",
                sig(vec![hw(100.0, Some(80.0), Some(100.0))], vec![], false),
                Critical,
            ),
            (
                "crit only, near",
                sig(vec![hw(96.0, None, Some(100.0))], vec![], false),
                Fair,
            ),
            (
                "zero limits ignored",
                sig(vec![hw(50.0, Some(0.0), Some(0.0))], vec![], false),
                Normal,
            ),
            (
                "cool, throttling",
                sig(vec![hw(45.0, Some(80.0), None)], vec![], true),
                Serious,
            ),
            (
                "worst of sensors",
                sig(
                    vec![hw(45.0, Some(80.0), None), hw(79.0, Some(80.0), None)],
                    vec![],
                    false,
                ),
                Fair,
            ),
            (
                "zone cool",
                sig(
                    vec![],
                    vec![zone(40.0, &[(K::Passive, 95.0), (K::Critical, 105.0)])],
                    false,
                ),
                Normal,
            ),
            (
                "zone active trip ignored",
                sig(vec![], vec![zone(60.0, &[(K::Active, 55.0)])], false),
                Normal,
            ),
            (
                "zone near passive",
                sig(vec![], vec![zone(91.0, &[(K::Passive, 95.0)])], false),
                Fair,
            ),
            (
                "zone passive",
                sig(vec![], vec![zone(95.0, &[(K::Passive, 95.0)])], false),
                Serious,
            ),
            (
                "zone hot",
                sig(
                    vec![],
                    vec![zone(99.0, &[(K::Hot, 98.0), (K::Critical, 105.0)])],
                    false,
                ),
                Serious,
            ),
            (
                "zone critical",
                sig(
                    vec![],
                    vec![zone(105.0, &[(K::Passive, 95.0), (K::Critical, 105.0)])],
                    false,
                ),
                Critical,
            ),
            (
                "hwmon cool, zone critical",
                sig(
                    vec![hw(40.0, Some(80.0), None)],
                    vec![zone(106.0, &[(K::Critical, 105.0)])],
                    false,
                ),
                Critical,
            ),
        ];
        for (name, s, want) in cases {
            assert_eq!(linux_state(&s, &t()), want, "{name}");
        }
    }

    #[test]
    fn apple_tables() {
        let pressure = [
            (0, Normal),
            (1, Fair),
            (2, Serious),
            (3, Critical),
            (4, Critical),
            (5, Unknown),
        ];
        for (level, want) in pressure {
            assert_eq!(apple_pressure_state(level), want, "pressure {level}");
        }
        let info = [
            (-1, Unknown),
            (0, Normal),
            (1, Fair),
            (2, Serious),
            (3, Critical),
            (4, Unknown),
        ];
        for (state, want) in info {
            assert_eq!(
                apple_process_info_state(state),
                want,
                "thermalState {state}"
            );
        }
    }

    #[test]
    fn thresholds_deserialize_with_defaults() {
        let empty: ThermalThresholds = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(empty, ThermalThresholds::default());
        let some: ThermalThresholds =
            serde_json::from_str(r#"{"fair_margin_c": 3.0, "nvidia_gpu_max_c": 83}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(some.fair_margin_c, 3.0);
        assert_eq!(some.nvidia_gpu_max_c, Some(83.0));
        assert_eq!(some.nvidia_hw_slowdown_samples, 2);
        assert!(serde_json::from_str::<ThermalThresholds>(r#"{"fair_margin": 3}"#).is_err());
    }
}
