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
    /// The reporter's probe was running when this was read.
    pub probing: bool,
    /// What the node has loaded in memory; `None`: unknown (the engine does not say).
    pub residency: Option<std::sync::Arc<Residency>>,
}

/// The models a node has loaded in memory now (Ollama `/api/ps`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Residency {
    pub loaded: Vec<LoadedModel>,
    /// The memory models load into, when the reporter knows it.
    pub memory_bytes: Option<u64>,
    /// The size of each model the node holds (its model list), for what loading one evicts.
    pub sizes: std::collections::HashMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadedModel {
    pub name: String,
    pub size_bytes: u64,
    pub size_vram_bytes: u64,
    /// When the engine will unload it if unused; `None`: never.
    pub expires_unix_ms: Option<i64>,
}

impl Residency {
    pub fn holds(&self, model: &str) -> bool {
        self.loaded.iter().any(|m| m.name == model)
    }
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
    /// The same probe as several streams at once: the node's load curve before traffic.
    pub loads: Vec<ProbeLoad>,
}

/// One concurrent probe: `streams` at once made `tok_s` in all, drawing `watts`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeLoad {
    pub streams: u32,
    pub tok_s: f64,
    pub watts: Option<f64>,
}

#[cfg(test)]
static PROBE_CLOCK: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);

#[cfg(test)]
impl ProbeObservation {
    /// A 32-token probe of `model` at `tok_s`, each newer than the last, as a reporter's are.
    pub fn for_test(model: &str, tok_s: f64) -> Self {
        ProbeObservation {
            model: model.into(),
            tokens: 32,
            seconds: 1.0,
            tok_s,
            watts: None,
            claimed_tok_s: None,
            finished_unix_ms: PROBE_CLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            loads: Vec::new(),
        }
    }
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
            probing: false,
            residency: None,
        }
    }
}
