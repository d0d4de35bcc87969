//! Turns one sensor reading plus what the reporter knows of its Ollama into a wire sample.

use std::time::{SystemTime, UNIX_EPOCH};

use wes_proto::{
    LoadedModel, LoadedModels, Model, ModelList, PlatformFlags, ProbeResult, Sample, SensorKind,
};

use crate::replicas::Entry;
use crate::sensor::Reading;

pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What the reporter knows of its Ollama at sampling time.
#[derive(Debug, Clone, Default)]
pub struct OllamaView {
    /// `None` when no Ollama URL is configured or the model list has not been read yet.
    pub models: Option<Result<Vec<Model>, String>>,
    pub probes: Vec<ProbeResult>,
    pub probe_error: Option<String>,
    /// The probe is running: samples say so, so that the proxy does not take its power for
    /// the idle draw.
    pub probing: bool,
    /// What `/api/ps` said last: `None` until read, or where the engine has no such list (the
    /// error, if reading failed, is in `loaded_error`).
    pub loaded: Option<Vec<LoadedModel>>,
    pub loaded_error: Option<String>,
    /// The memory models load into, from the config, sent beside the loaded list.
    pub memory_bytes: Option<u64>,
    /// Requests the engine says it is working on (llama.cpp `/slots`); `None` where it does
    /// not say.
    pub engine_in_flight: Option<u32>,
}

pub fn build_sample(
    node_id: &str,
    seq: u64,
    sensor: SensorKind,
    reading: Reading,
    ollama: &OllamaView,
    timestamp_unix_ms: i64,
) -> Sample {
    let mut sensor_errors = reading.errors;
    let models = match &ollama.models {
        Some(Ok(models)) => Some(ModelList {
            models: models.clone(),
        }),
        Some(Err(reason)) => {
            sensor_errors.push(reason.clone());
            None
        }
        None => None,
    };
    if let Some(reason) = &ollama.probe_error {
        sensor_errors.push(reason.clone());
    }
    if let Some(reason) = &ollama.loaded_error {
        sensor_errors.push(reason.clone());
    }
    let loaded = ollama.loaded.as_ref().map(|models| LoadedModels {
        models: models.clone(),
        memory_bytes: ollama.memory_bytes,
    });
    Sample {
        node_id: node_id.to_owned(),
        timestamp_unix_ms,
        seq,
        sensor: sensor as i32,
        // Non-finite values never leave the reporter: the proxy would refuse the whole sample.
        power_watts: reading.watts.filter(|w| w.is_finite() && *w >= 0.0),
        energy_joules: reading.energy_joules.filter(|j| j.is_finite() && *j >= 0.0),
        thermal_state: reading.thermal as i32,
        temperature_c: reading.temperature_c.filter(|t| t.is_finite()),
        flags: Some(PlatformFlags {
            power_capped: reading.power_capped,
            throttle_reasons: reading.throttle_reasons,
            cpu_throttled: reading.cpu_throttled,
        }),
        utilization_pct: reading
            .utilization_pct
            .filter(|u| u.is_finite())
            .map(|u| u.clamp(0.0, 100.0)),
        models,
        probes: ollama.probes.clone(),
        sensor_errors,
        reporter_version: env!("CARGO_PKG_VERSION").to_owned(),
        probing: ollama.probing,
        loaded,
        // Filled by the sampler, which holds the replicas' counts.
        replicas: Vec::new(),
        load_only: false,
        // The command sensor's own figure, else the engine's list.
        engine_in_flight: reading.engine_in_flight.or(ollama.engine_in_flight),
    }
}

/// A message with the replicas' counts only, sent between samples when one changes.
pub fn load_sample(
    node_id: &str,
    seq: u64,
    replicas: Vec<Entry>,
    engine_in_flight: Option<u32>,
    timestamp_unix_ms: i64,
) -> Sample {
    Sample {
        engine_in_flight,
        node_id: node_id.to_owned(),
        timestamp_unix_ms,
        seq,
        replicas: replicas
            .into_iter()
            .map(|e| wes_proto::ReplicaLoad {
                replica_id: e.replica_id,
                in_flight: e.in_flight,
                cap: e.cap,
            })
            .collect(),
        load_only: true,
        reporter_version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Sample::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wes_proto::ThermalState;

    #[test]
    fn unreadable_model_list_is_absent_with_its_reason() {
        let view = OllamaView {
            models: Some(Err("ollama down".into())),
            ..OllamaView::default()
        };
        let s = build_sample("n", 1, SensorKind::Sim, Reading::default(), &view, 5);
        assert!(s.models.is_none());
        assert_eq!(s.sensor_errors, vec!["ollama down".to_string()]);
    }

    #[test]
    fn empty_model_list_is_present() {
        let view = OllamaView {
            models: Some(Ok(vec![])),
            ..OllamaView::default()
        };
        let s = build_sample("n", 1, SensorKind::Sim, Reading::default(), &view, 5);
        assert_eq!(s.models.unwrap().models.len(), 0);
    }

    #[test]
    fn non_finite_readings_are_dropped_not_sent() {
        let reading = Reading {
            watts: Some(f64::NAN),
            energy_joules: Some(-1.0),
            utilization_pct: Some(140.0),
            thermal: ThermalState::Fair,
            ..Reading::default()
        };
        let s = build_sample(
            "n",
            1,
            SensorKind::Linux,
            reading,
            &OllamaView::default(),
            5,
        );
        assert_eq!(s.power_watts, None);
        assert_eq!(s.energy_joules, None);
        assert_eq!(s.utilization_pct, Some(100.0));
        assert_eq!(s.thermal_state, ThermalState::Fair as i32);
    }
}
