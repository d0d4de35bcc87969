//! One node's latest telemetry, as validated by ingest.

use std::time::Instant;

use wes_proto::{SensorKind, ThermalState};

#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub received_at: Instant,
    pub sample_unix_ms: i64,
    pub seq: u64,
    pub sensor: SensorKind,
    pub watts: Option<f64>,
    pub energy_joules: Option<f64>,
    pub thermal: ThermalState,
    pub temperature_c: Option<f64>,
    pub power_capped: bool,
    pub throttle_reasons: u64,
    pub cpu_throttled: bool,
    pub utilization_pct: Option<f64>,
    /// `None`: the reporter could not read its Ollama's model list.
    pub models: Option<Vec<String>>,
    pub sensor_errors: Vec<String>,
}

/// A reporter's probe of one model, as validated by ingest.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeObservation {
    pub model: String,
    pub tokens: u64,
    pub seconds: f64,
    pub tok_s: f64,
    pub watts: Option<f64>,
    pub claimed_tok_s: Option<f64>,
    pub finished_unix_ms: i64,
}

impl Telemetry {
    #[cfg(test)]
    pub fn for_test(watts: f64) -> Self {
        Telemetry {
            received_at: Instant::now(),
            sample_unix_ms: 0,
            seq: 1,
            sensor: SensorKind::Sim,
            watts: Some(watts),
            energy_joules: None,
            thermal: ThermalState::Normal,
            temperature_c: None,
            power_capped: false,
            throttle_reasons: 0,
            cpu_throttled: false,
            utilization_pct: None,
            models: Some(vec![]),
            sensor_errors: vec![],
        }
    }
}
