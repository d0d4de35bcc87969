//! Sensor backends: each turns one platform's power and thermal signals into a [`Reading`].
//!
//! A sensor never fails the reporter: whatever it cannot read is left `None` (or
//! [`ThermalState::Unknown`]) and the reason goes into [`Reading::errors`], which travels to
//! the proxy as `sensor_errors`.

pub mod apple;
pub mod auto;
pub mod command;
pub mod linux;
pub mod nvml;
pub mod select;
pub mod sim;
pub mod thermal;

use futures::future::BoxFuture;
use wes_proto::{SensorKind, ThermalState};

/// What one sensor read at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Power drawn now, in watts.
    pub watts: Option<f64>,
    /// Monotonic energy in joules since this sensor started, wraparound already folded in.
    pub energy_joules: Option<f64>,
    pub thermal: ThermalState,
    pub temperature_c: Option<f64>,
    pub power_capped: bool,
    /// NVIDIA clock-event (throttle) reason bits as read; 0 on other platforms.
    pub throttle_reasons: u64,
    /// Linux: the CPU thermal throttle counters grew since the previous reading.
    pub cpu_throttled: bool,
    /// Busy share, 0 to 100.
    pub utilization_pct: Option<f64>,
    /// Requests the engine says it is working on, where the sensor knows (the command
    /// sensor's `engine_in_flight`).
    pub engine_in_flight: Option<u32>,
    /// Why something above is unknown, in words an operator can act on.
    pub errors: Vec<String>,
}

impl Reading {
    /// A reading that knows nothing, with the reason.
    pub fn unknown(reason: impl Into<String>) -> Self {
        Reading {
            errors: vec![reason.into()],
            ..Reading::default()
        }
    }
}

impl Default for Reading {
    fn default() -> Self {
        Reading {
            watts: None,
            energy_joules: None,
            thermal: ThermalState::Unknown,
            temperature_c: None,
            power_capped: false,
            throttle_reasons: 0,
            cpu_throttled: false,
            utilization_pct: None,
            engine_in_flight: None,
            errors: Vec::new(),
        }
    }
}

/// One source of power and thermal readings.
///
/// `read` is called once per reporter interval, from one task at a time; a backend may keep
/// state between calls (previous counter values, debouncing).
pub trait Sensor: Send {
    fn kind(&self) -> SensorKind;
    fn read(&mut self) -> BoxFuture<'_, Reading>;
}
