//! NVIDIA GPUs through NVML: power and energy summed over every GPU, thermal state the worst
//! of them.
//!
//! NVML itself sits behind [`NvmlSource`] so the aggregation, the energy bookkeeping and the
//! debounce are tested with a scripted fake; [`RealNvml`] is the thin nvml-wrapper binding.
//! `libnvidia-ml.so.1` is loaded at run time, so a machine without the driver gets a clear
//! error from [`open_real`], never a crash or a link failure.

use futures::future::BoxFuture;
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{TemperatureSensor, TemperatureThreshold};
use nvml_wrapper::error::NvmlError;
use wes_proto::{SensorKind, ThermalState};

use super::{Reading, Sensor};
use crate::sensor::thermal::{
    HwSlowdownDebounce, NvidiaSignals, ThermalThresholds, nvidia_power_capped, nvidia_state,
};

/// What the sensor needs from NVML, per GPU index. Every call may fail with a reason that is
/// shown to operators as is.
pub trait NvmlSource: Send {
    fn device_count(&mut self) -> Result<u32, String>;
    fn name(&mut self, index: u32) -> Result<String, String>;
    /// Board power draw in milliwatts.
    fn power_mw(&mut self, index: u32) -> Result<u32, String>;
    /// Energy since the driver was last loaded, in millijoules (Volta and newer).
    fn total_energy_mj(&mut self, index: u32) -> Result<u64, String>;
    /// Raw clock-event (throttle) reason bits.
    fn throttle_reasons(&mut self, index: u32) -> Result<u64, String>;
    /// GPU die temperature in °C.
    fn temperature_c(&mut self, index: u32) -> Result<u32, String>;
    /// `TemperatureThreshold::Slowdown` in °C.
    fn slowdown_threshold_c(&mut self, index: u32) -> Result<u32, String>;
    /// `TemperatureThreshold::GpuMax` in °C.
    fn gpu_max_threshold_c(&mut self, index: u32) -> Result<u32, String>;
    /// GPU busy share over NVML's last sample period, 0 to 100.
    fn utilization_pct(&mut self, index: u32) -> Result<u32, String>;
}

/// The energy a counter gained between two reads.
///
/// NVML's counter only goes back when the driver reloads (it restarts at 0), so a decrease
/// means "reset": the energy since the reset is the new value itself. Either way the total
/// built from these deltas never goes down.
pub fn energy_counter_delta(prev: Option<u64>, now: u64) -> u64 {
    match prev {
        None => 0,
        Some(p) if now >= p => now - p,
        Some(_) => now,
    }
}

/// What the sensor remembers about one GPU between reads.
#[derive(Debug, Default)]
struct GpuState {
    label: Option<String>,
    last_energy_mj: Option<u64>,
    energy_total_mj: u64,
    debounce: HwSlowdownDebounce,
    /// Thresholds are fixed per board (and NotSupported stays so): asked once.
    slowdown_c: Option<Result<u32, String>>,
    gpu_max_c: Option<Result<u32, String>>,
}

pub struct NvmlSensor<S: NvmlSource> {
    source: S,
    thresholds: ThermalThresholds,
    /// Grows with the highest index seen and never shrinks, so a GPU that drops off the bus
    /// keeps its share of the energy total and the total stays monotonic.
    gpus: Vec<GpuState>,
}

impl<S: NvmlSource> NvmlSensor<S> {
    pub fn new(source: S, thresholds: ThermalThresholds) -> Self {
        NvmlSensor {
            source,
            thresholds,
            gpus: Vec::new(),
        }
    }

    /// One synchronous pass over every GPU; NVML calls are short driver ioctls.
    pub fn read_now(&mut self) -> Reading {
        let count = match self.source.device_count() {
            Ok(0) => return Reading::unknown("NVML reports no NVIDIA GPU"),
            Ok(n) => n,
            Err(e) => return Reading::unknown(format!("NVML device count: {e}")),
        };
        if self.gpus.len() < count as usize {
            self.gpus.resize_with(count as usize, GpuState::default);
        }

        let mut r = Reading::default();
        let gpus: Vec<GpuReading> = (0..count)
            .zip(self.gpus.iter_mut())
            .map(|(index, gpu)| read_gpu(&mut self.source, index, gpu, &self.thresholds))
            .collect();
        // A sum that misses a GPU would look like a real, lower draw: all or nothing.
        r.watts = gpus.iter().map(|g| g.watts).sum::<Option<f64>>();
        r.energy_joules = gpus.iter().all(|g| g.energy_ok).then(|| {
            let mj: f64 = self.gpus.iter().map(|g| g.energy_total_mj as f64).sum();
            mj / 1000.0
        });
        let utils: Vec<f64> = gpus.iter().filter_map(|g| g.utilization).collect();
        r.utilization_pct =
            (!utils.is_empty()).then(|| utils.iter().sum::<f64>() / utils.len() as f64);
        r.temperature_c = gpus.iter().filter_map(|g| g.temperature_c).reduce(f64::max);
        for g in gpus {
            r.thermal = r.thermal.max(g.thermal);
            if let Some(bits) = g.throttle_reasons {
                r.throttle_reasons |= bits;
                r.power_capped |= nvidia_power_capped(bits);
            }
            r.errors.extend(g.errors);
        }
        r
    }
}

/// One GPU's share of a reading.
struct GpuReading {
    watts: Option<f64>,
    energy_ok: bool,
    throttle_reasons: Option<u64>,
    temperature_c: Option<f64>,
    thermal: ThermalState,
    utilization: Option<f64>,
    errors: Vec<String>,
}

fn read_gpu<S: NvmlSource>(
    src: &mut S,
    index: u32,
    gpu: &mut GpuState,
    thresholds: &ThermalThresholds,
) -> GpuReading {
    let label = gpu_label(src, index, &mut gpu.label);
    let mut errors = Vec::new();

    let watts =
        keep_ok(&mut errors, &label, "power", src.power_mw(index)).map(|mw| f64::from(mw) / 1000.0);
    let energy = keep_ok(&mut errors, &label, "energy", src.total_energy_mj(index));
    if let Some(mj) = energy {
        let delta = energy_counter_delta(gpu.last_energy_mj, mj);
        gpu.energy_total_mj = gpu.energy_total_mj.saturating_add(delta);
        gpu.last_energy_mj = Some(mj);
    }
    let bits = keep_ok(
        &mut errors,
        &label,
        "throttle reasons",
        src.throttle_reasons(index),
    );
    let temperature_c =
        keep_ok(&mut errors, &label, "temperature", src.temperature_c(index)).map(f64::from);
    let utilization = keep_ok(
        &mut errors,
        &label,
        "utilization",
        src.utilization_pct(index),
    )
    .map(|u| f64::from(u.min(100)));

    let slowdown = gpu
        .slowdown_c
        .get_or_insert_with(|| src.slowdown_threshold_c(index));
    let gpu_max = gpu
        .gpu_max_c
        .get_or_insert_with(|| src.gpu_max_threshold_c(index));
    let signals = NvidiaSignals {
        throttle_reasons: bits,
        hw_slowdown_streak: gpu.debounce.observe(bits),
        temperature_c,
        slowdown_c: slowdown.as_ref().ok().map(|c| f64::from(*c)),
        gpu_max_c: gpu_max.as_ref().ok().map(|c| f64::from(*c)),
    };
    let thermal = nvidia_state(&signals, thresholds);
    if thermal == ThermalState::Unknown {
        // Threshold failures are cached and otherwise silent; they matter only here.
        let why: Vec<&str> = [slowdown.as_ref().err(), gpu_max.as_ref().err()]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        errors.push(format!(
            "{label}: thermal state unknown: no throttle reasons, and no temperature with \
             thresholds{}{}",
            if why.is_empty() { "" } else { ": " },
            why.join("; ")
        ));
    }
    GpuReading {
        watts,
        energy_ok: energy.is_some(),
        throttle_reasons: bits,
        temperature_c,
        thermal,
        utilization,
        errors,
    }
}

/// The value, or `None` with the reason noted against this GPU.
fn keep_ok<T>(
    errors: &mut Vec<String>,
    label: &str,
    what: &str,
    res: Result<T, String>,
) -> Option<T> {
    res.map_err(|e| errors.push(format!("{label}: {what}: {e}")))
        .ok()
}

fn gpu_label<S: NvmlSource>(source: &mut S, index: u32, cache: &mut Option<String>) -> String {
    if cache.is_none() {
        // Unnamed on failure, but asked again next time: the name only decorates errors.
        match source.name(index) {
            Ok(name) => *cache = Some(format!("GPU {index} ({name})")),
            Err(_) => return format!("GPU {index}"),
        }
    }
    cache.clone().unwrap_or_else(|| format!("GPU {index}"))
}

impl<S: NvmlSource> Sensor for NvmlSensor<S> {
    fn kind(&self) -> SensorKind {
        SensorKind::Nvml
    }

    fn read(&mut self) -> BoxFuture<'_, Reading> {
        Box::pin(async move { self.read_now() })
    }
}

/// NVML through nvml-wrapper.
pub struct RealNvml {
    nvml: Nvml,
}

impl RealNvml {
    pub fn init() -> Result<Self, String> {
        Nvml::init()
            .map(|nvml| RealNvml { nvml })
            .map_err(|e| init_error_text(&e))
    }

    fn device(&self, index: u32) -> Result<nvml_wrapper::Device<'_>, String> {
        self.nvml.device_by_index(index).map_err(|e| e.to_string())
    }
}

/// Why NVML could not start, in words that point at the fix.
fn init_error_text(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(inner) => format!(
            "NVML unavailable: libnvidia-ml.so.1 could not be loaded ({inner}); \
             this machine has no NVIDIA driver installed, or its library is not on the \
             loader path"
        ),
        NvmlError::DriverNotLoaded => {
            "NVML unavailable: the NVIDIA kernel driver is not loaded".to_string()
        }
        NvmlError::NoPermission => {
            "NVML unavailable: no permission to talk to the NVIDIA driver".to_string()
        }
        other => format!("NVML unavailable: init failed: {other}"),
    }
}

impl NvmlSource for RealNvml {
    fn device_count(&mut self) -> Result<u32, String> {
        self.nvml.device_count().map_err(|e| e.to_string())
    }

    fn name(&mut self, index: u32) -> Result<String, String> {
        self.device(index)?.name().map_err(|e| e.to_string())
    }

    fn power_mw(&mut self, index: u32) -> Result<u32, String> {
        self.device(index)?.power_usage().map_err(|e| e.to_string())
    }

    fn total_energy_mj(&mut self, index: u32) -> Result<u64, String> {
        self.device(index)?
            .total_energy_consumption()
            .map_err(|e| match e {
                NvmlError::NotSupported => {
                    "total energy counter not supported (needs a Volta or newer GPU)".to_string()
                }
                other => other.to_string(),
            })
    }

    fn throttle_reasons(&mut self, index: u32) -> Result<u64, String> {
        // Raw bits, not the bitflags type: bits this nvml-wrapper does not know yet still
        // travel to the proxy.
        let device = self.device(index)?;
        device
            .current_throttle_reasons()
            .map(|r| r.bits())
            .map_err(|e| e.to_string())
    }

    fn temperature_c(&mut self, index: u32) -> Result<u32, String> {
        self.device(index)?
            .temperature(TemperatureSensor::Gpu)
            .map_err(|e| e.to_string())
    }

    fn slowdown_threshold_c(&mut self, index: u32) -> Result<u32, String> {
        self.device(index)?
            .temperature_threshold(TemperatureThreshold::Slowdown)
            .map_err(|e| format!("slowdown threshold: {e}"))
    }

    fn gpu_max_threshold_c(&mut self, index: u32) -> Result<u32, String> {
        self.device(index)?
            .temperature_threshold(TemperatureThreshold::GpuMax)
            .map_err(|e| format!("GPU max threshold: {e}"))
    }

    fn utilization_pct(&mut self, index: u32) -> Result<u32, String> {
        self.device(index)?
            .utilization_rates()
            .map(|u| u.gpu)
            .map_err(|e| e.to_string())
    }
}

/// Opens NVML and checks that it sees at least one GPU.
pub fn open_real(thresholds: ThermalThresholds) -> Result<NvmlSensor<RealNvml>, String> {
    let mut nvml = RealNvml::init()?;
    match nvml.device_count() {
        Ok(0) => Err("NVML started but reports no NVIDIA GPU".to_string()),
        Ok(_) => Ok(NvmlSensor::new(nvml, thresholds)),
        Err(e) => Err(format!("NVML started but cannot count GPUs: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sensor::thermal::{NV_HW_SLOWDOWN, NV_SW_POWER_CAP, NV_SW_THERMAL_SLOWDOWN};
    use std::collections::VecDeque;

    /// Values handed out in order; the last one repeats once the script runs out.
    #[derive(Clone)]
    struct Script<T: Clone>(VecDeque<Result<T, String>>);

    impl<T: Clone> Script<T> {
        fn of(items: Vec<Result<T, String>>) -> Self {
            Script(items.into())
        }
        fn always(v: T) -> Self {
            Script::of(vec![Ok(v)])
        }
        fn next(&mut self) -> Result<T, String> {
            if self.0.len() > 1 {
                self.0.pop_front().unwrap()
            } else {
                self.0
                    .front()
                    .cloned()
                    .unwrap_or_else(|| Err("script empty".into()))
            }
        }
    }

    #[derive(Clone)]
    struct FakeGpu {
        power: Script<u32>,
        energy: Script<u64>,
        bits: Script<u64>,
        temp: Script<u32>,
        slowdown: Script<u32>,
        gpu_max: Script<u32>,
        util: Script<u32>,
        threshold_queries: usize,
    }

    impl Default for FakeGpu {
        fn default() -> Self {
            FakeGpu {
                power: Script::always(100_000),
                energy: Script::always(1_000_000),
                bits: Script::always(0),
                temp: Script::always(50),
                slowdown: Script::always(90),
                gpu_max: Script::always(85),
                util: Script::always(40),
                threshold_queries: 0,
            }
        }
    }

    struct Fake {
        count: Script<u32>,
        gpus: Vec<FakeGpu>,
    }

    impl Fake {
        fn new(gpus: Vec<FakeGpu>) -> Self {
            Fake {
                count: Script::always(gpus.len() as u32),
                gpus,
            }
        }
        fn gpu(&mut self, i: u32) -> Result<&mut FakeGpu, String> {
            self.gpus
                .get_mut(i as usize)
                .ok_or_else(|| "GPU is lost".to_string())
        }
    }

    impl NvmlSource for Fake {
        fn device_count(&mut self) -> Result<u32, String> {
            self.count.next()
        }
        fn name(&mut self, index: u32) -> Result<String, String> {
            Ok(format!("Fake {index}"))
        }
        fn power_mw(&mut self, i: u32) -> Result<u32, String> {
            self.gpu(i)?.power.next()
        }
        fn total_energy_mj(&mut self, i: u32) -> Result<u64, String> {
            self.gpu(i)?.energy.next()
        }
        fn throttle_reasons(&mut self, i: u32) -> Result<u64, String> {
            self.gpu(i)?.bits.next()
        }
        fn temperature_c(&mut self, i: u32) -> Result<u32, String> {
            self.gpu(i)?.temp.next()
        }
        fn slowdown_threshold_c(&mut self, i: u32) -> Result<u32, String> {
            let g = self.gpu(i)?;
            g.threshold_queries += 1;
            g.slowdown.next()
        }
        fn gpu_max_threshold_c(&mut self, i: u32) -> Result<u32, String> {
            self.gpu(i)?.gpu_max.next()
        }
        fn utilization_pct(&mut self, i: u32) -> Result<u32, String> {
            self.gpu(i)?.util.next()
        }
    }

    fn sensor(gpus: Vec<FakeGpu>) -> NvmlSensor<Fake> {
        NvmlSensor::new(Fake::new(gpus), ThermalThresholds::default())
    }

    #[test]
    fn energy_delta_table() {
        assert_eq!(
            energy_counter_delta(None, 5_000),
            0,
            "first value is the baseline"
        );
        assert_eq!(energy_counter_delta(Some(5_000), 7_500), 2_500);
        assert_eq!(energy_counter_delta(Some(5_000), 5_000), 0);
        assert_eq!(
            energy_counter_delta(Some(5_000), 300),
            300,
            "reset: energy since reset"
        );
    }

    #[test]
    fn sums_two_gpus_and_takes_worst_state() {
        let hot = FakeGpu {
            power: Script::always(250_000),
            bits: Script::always(NV_SW_THERMAL_SLOWDOWN | NV_SW_POWER_CAP),
            temp: Script::always(86),
            util: Script::always(100),
            ..FakeGpu::default()
        };
        let mut s = sensor(vec![FakeGpu::default(), hot]);
        let r = s.read_now();
        assert_eq!(r.watts, Some(350.0));
        assert_eq!(r.energy_joules, Some(0.0));
        assert_eq!(r.thermal, ThermalState::Serious);
        assert_eq!(r.temperature_c, Some(86.0));
        assert_eq!(r.utilization_pct, Some(70.0));
        assert!(r.power_capped);
        assert_eq!(r.throttle_reasons, NV_SW_THERMAL_SLOWDOWN | NV_SW_POWER_CAP);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(s.kind(), SensorKind::Nvml);
    }

    #[test]
    fn power_cap_alone_is_normal_and_flagged() {
        let capped = FakeGpu {
            bits: Script::always(NV_SW_POWER_CAP),
            ..FakeGpu::default()
        };
        let r = sensor(vec![capped]).read_now();
        assert_eq!(r.thermal, ThermalState::Normal);
        assert!(r.power_capped);
        assert_eq!(r.throttle_reasons, NV_SW_POWER_CAP);
    }

    #[test]
    fn hw_slowdown_is_debounced_per_gpu() {
        let gpu = FakeGpu {
            bits: Script::of(vec![Ok(NV_HW_SLOWDOWN), Ok(NV_HW_SLOWDOWN), Ok(0)]),
            ..FakeGpu::default()
        };
        let mut s = sensor(vec![gpu]);
        assert_eq!(s.read_now().thermal, ThermalState::Serious);
        assert_eq!(s.read_now().thermal, ThermalState::Critical);
        assert_eq!(s.read_now().thermal, ThermalState::Normal);
    }

    #[test]
    fn energy_is_monotonic_across_reset_and_errors() {
        let gpu = FakeGpu {
            energy: Script::of(vec![
                Ok(10_000),
                Ok(12_000),
                Err("GPU is lost".into()),
                Ok(15_000),
                Ok(1_000), // driver reloaded
                Ok(2_500),
            ]),
            ..FakeGpu::default()
        };
        let mut s = sensor(vec![gpu]);
        let seen: Vec<Option<f64>> = (0..6).map(|_| s.read_now().energy_joules).collect();
        assert_eq!(
            seen,
            vec![Some(0.0), Some(2.0), None, Some(5.0), Some(6.0), Some(7.5)]
        );
    }

    #[test]
    fn partial_failures_keep_what_is_known() {
        let broken = FakeGpu {
            power: Script::of(vec![Err("Unknown error".into())]),
            temp: Script::of(vec![Err("not supported".into())]),
            util: Script::of(vec![Err("not supported".into())]),
            ..FakeGpu::default()
        };
        let r = sensor(vec![FakeGpu::default(), broken]).read_now();
        assert_eq!(r.watts, None, "a sum missing one GPU is not reported");
        assert_eq!(r.energy_joules, Some(0.0));
        assert_eq!(r.thermal, ThermalState::Normal, "throttle bits still known");
        assert_eq!(r.temperature_c, Some(50.0));
        assert_eq!(r.utilization_pct, Some(40.0));
        assert_eq!(r.errors.len(), 3, "{:?}", r.errors);
        assert!(
            r.errors[0].contains("GPU 1 (Fake 1): power: Unknown error"),
            "{:?}",
            r.errors
        );
    }

    #[test]
    fn unknown_thermal_says_why() {
        let gpu = FakeGpu {
            bits: Script::of(vec![Err("not supported".into())]),
            slowdown: Script::of(vec![Err("slowdown threshold: not supported".into())]),
            gpu_max: Script::of(vec![Err("GPU max threshold: not supported".into())]),
            ..FakeGpu::default()
        };
        let mut s = sensor(vec![gpu]);
        let r = s.read_now();
        assert_eq!(r.thermal, ThermalState::Unknown);
        assert!(
            r.errors.iter().any(|e| e.contains("thermal state unknown")
                && e.contains("slowdown threshold: not supported")),
            "{:?}",
            r.errors
        );
        s.read_now();
        assert_eq!(
            s.source.gpus[0].threshold_queries, 1,
            "thresholds are asked once"
        );
    }

    #[test]
    fn no_gpu_or_count_error_is_unknown() {
        let r = sensor(vec![]).read_now();
        assert_eq!(r, Reading::unknown("NVML reports no NVIDIA GPU"));
        let mut s = sensor(vec![FakeGpu::default()]);
        s.source.count = Script::of(vec![Err("Uninitialized".into())]);
        let r = s.read_now();
        assert_eq!(r.thermal, ThermalState::Unknown);
        assert_eq!(
            r.errors,
            vec!["NVML device count: Uninitialized".to_string()]
        );
    }

    #[test]
    fn lost_gpu_keeps_energy_total() {
        let mut s = sensor(vec![
            FakeGpu::default(),
            FakeGpu {
                energy: Script::of(vec![Ok(0), Ok(4_000)]),
                ..FakeGpu::default()
            },
        ]);
        s.read_now();
        assert_eq!(s.read_now().energy_joules, Some(4.0));
        s.source.count = Script::always(1);
        assert_eq!(
            s.read_now().energy_joules,
            Some(4.0),
            "GPU 1's energy is not forgotten"
        );
    }

    #[test]
    fn real_nvml_absent_is_a_clear_error() {
        // This machine may or may not have a driver; without one, the error must name it.
        if let Err(e) = open_real(ThermalThresholds::default()) {
            assert!(e.starts_with("NVML"), "{e}");
        }
    }

    #[test]
    fn read_through_trait() {
        let mut s = sensor(vec![FakeGpu::default()]);
        let r = futures::executor::block_on(s.read());
        assert_eq!(r.watts, Some(100.0));
    }
}
