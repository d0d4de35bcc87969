//! Checks one sample before it may touch fleet state. Pure: the same sample, binding and clock
//! always give the same verdict, so every rule is table-tested.

use std::time::Instant;

use wes_proto::{Sample, SensorKind, ThermalState};

use crate::config::TelemetryConfig;
use crate::fleet::{
    LoadedModel, ProbeLoad, ProbeObservation, ReplicaReport, ReportedLoad, Residency, Telemetry,
};

/// Why a sample was refused; the code is the gRPC status the stream ends with.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The sample speaks for a node other than the one the token is bound to.
    PermissionDenied(String),
    InvalidArgument(String),
}

impl Refusal {
    /// The status the stream ends with.
    pub fn into_status(self) -> tonic::Status {
        match self {
            Refusal::PermissionDenied(m) => tonic::Status::permission_denied(m),
            Refusal::InvalidArgument(m) => tonic::Status::invalid_argument(m),
        }
    }
}

const MAX_TEMPERATURE_C: f64 = 250.0;
const MIN_TEMPERATURE_C: f64 = -60.0;
/// Beyond any single node's decode rate today by two orders of magnitude.
const MAX_TOK_S: f64 = 1.0e6;
const MAX_MODELS: usize = 10_000;
const MAX_TEXT: usize = 4_096;
const MAX_ERRORS: usize = 64;
/// Concurrent probes per model and streams in one: far above what a reporter runs.
const MAX_PROBE_LOADS: usize = 16;
const MAX_PROBE_STREAMS: u32 = 64;

/// Replicas one node's reporter may name: far above any proxy deployment.
const MAX_REPLICAS: usize = 256;
const MAX_REPLICA_ID: usize = 256;
/// Requests one replica may say it has on one node.
const MAX_REPLICA_IN_FLIGHT: u32 = 1_000_000;

/// Checks a message's sender and clock: it speaks for the node its token is bound to, and its
/// timestamp is within the allowed skew. Every message, samples and load-only ones, passes
/// this first.
pub fn identity(
    sample: &Sample,
    bound_node: &str,
    now_unix_ms: i64,
    limits: &TelemetryConfig,
) -> Result<(), Refusal> {
    if sample.node_id != bound_node {
        return Err(Refusal::PermissionDenied(format!(
            "this token is bound to node {bound_node:?}, not {:?}",
            sample.node_id
        )));
    }
    let skew_ms = sample
        .timestamp_unix_ms
        .saturating_sub(now_unix_ms)
        .unsigned_abs();
    let max_skew_ms = limits.max_clock_skew.as_millis() as u64;
    if skew_ms > max_skew_ms {
        return Err(invalid(format!(
            "timestamp {} ms is {} ms from the proxy's clock (limit {} ms): check NTP on both hosts",
            sample.timestamp_unix_ms, skew_ms, max_skew_ms
        )));
    }
    Ok(())
}

/// The node's load as its reporter says it: each replica's in-flight count, the engine's.
pub fn load(sample: &Sample) -> Result<ReportedLoad, Refusal> {
    if let Some(n) = sample.engine_in_flight
        && n > MAX_REPLICA_IN_FLIGHT
    {
        return Err(invalid(format!(
            "engine_in_flight {n} is above {MAX_REPLICA_IN_FLIGHT}"
        )));
    }
    Ok(ReportedLoad {
        replicas: replicas(sample)?,
        engine: sample.engine_in_flight,
    })
}

/// Each replica's in-flight count on the node, as its reporter heard them.
fn replicas(sample: &Sample) -> Result<Vec<ReplicaReport>, Refusal> {
    if sample.replicas.len() > MAX_REPLICAS {
        return Err(invalid(format!(
            "{} replicas named; at most {MAX_REPLICAS}",
            sample.replicas.len()
        )));
    }
    sample
        .replicas
        .iter()
        .map(|r| {
            if r.replica_id.is_empty() || r.replica_id.len() > MAX_REPLICA_ID {
                return Err(invalid(format!(
                    "a replica id must be 1 to {MAX_REPLICA_ID} bytes"
                )));
            }
            if r.in_flight > MAX_REPLICA_IN_FLIGHT {
                return Err(invalid(format!(
                    "replica {:?} says {} in flight, above {MAX_REPLICA_IN_FLIGHT}",
                    r.replica_id, r.in_flight
                )));
            }
            if let Some(cap) = r.cap.filter(|c| *c > MAX_REPLICA_IN_FLIGHT) {
                return Err(invalid(format!(
                    "replica {:?} is granted a cap of {cap}, above {MAX_REPLICA_IN_FLIGHT}",
                    r.replica_id
                )));
            }
            Ok(ReplicaReport {
                id: r.replica_id.clone(),
                in_flight: r.in_flight,
                cap: r.cap,
            })
        })
        .collect()
}

/// Validates `sample` for the node `bound_node` (the id its token is bound to).
pub fn validate(
    sample: &Sample,
    bound_node: &str,
    now_unix_ms: i64,
    received_at: Instant,
    limits: &TelemetryConfig,
) -> Result<(Telemetry, Vec<ProbeObservation>), Refusal> {
    identity(sample, bound_node, now_unix_ms, limits)?;
    let watts = bounded("power_watts", sample.power_watts, 0.0, limits.max_watts)?;
    let energy_joules = bounded("energy_joules", sample.energy_joules, 0.0, f64::MAX)?;
    let temperature_c = bounded(
        "temperature_c",
        sample.temperature_c,
        MIN_TEMPERATURE_C,
        MAX_TEMPERATURE_C,
    )?;
    let utilization_pct = bounded("utilization_pct", sample.utilization_pct, 0.0, 100.0)?;
    let thermal = ThermalState::try_from(sample.thermal_state).map_err(|_| {
        invalid(format!(
            "thermal_state {} is not a known state",
            sample.thermal_state
        ))
    })?;
    let sensor = SensorKind::try_from(sample.sensor).map_err(|_| {
        invalid(format!(
            "sensor {} is not a known sensor kind",
            sample.sensor
        ))
    })?;

    let models = match &sample.models {
        None => None,
        Some(list) => {
            if list.models.len() > MAX_MODELS {
                return Err(invalid(format!(
                    "{} models is more than the {MAX_MODELS} allowed",
                    list.models.len()
                )));
            }
            let mut names = Vec::with_capacity(list.models.len());
            for m in &list.models {
                if m.name.is_empty() || m.name.len() > MAX_TEXT {
                    return Err(invalid("a model name is empty or too long".into()));
                }
                names.push(m.name.clone());
            }
            Some(names)
        }
    };

    let residency = match &sample.loaded {
        None => None,
        Some(list) => {
            if list.models.len() > MAX_MODELS {
                return Err(invalid(format!(
                    "{} loaded models is more than the {MAX_MODELS} allowed",
                    list.models.len()
                )));
            }
            let mut loaded = Vec::with_capacity(list.models.len());
            for m in &list.models {
                if m.name.is_empty() || m.name.len() > MAX_TEXT {
                    return Err(invalid("a loaded model's name is empty or too long".into()));
                }
                loaded.push(LoadedModel {
                    name: m.name.clone(),
                    size_bytes: m.size_bytes,
                    size_vram_bytes: m.size_vram_bytes,
                    expires_unix_ms: m.expires_unix_ms,
                });
            }
            let sizes = sample
                .models
                .iter()
                .flat_map(|l| &l.models)
                .map(|m| (m.name.clone(), m.size_bytes))
                .collect();
            Some(std::sync::Arc::new(Residency {
                loaded,
                memory_bytes: list.memory_bytes.filter(|b| *b > 0),
                sizes,
            }))
        }
    };

    let mut probes = Vec::with_capacity(sample.probes.len());
    for p in &sample.probes {
        let field = |name: &str| format!("probe {:?} {name}", p.model);
        if p.model.is_empty() || p.model.len() > MAX_TEXT {
            return Err(invalid("a probe's model name is empty or too long".into()));
        }
        let tok_s = bounded(&field("tok_s"), Some(p.tok_s), 0.0, MAX_TOK_S)?.unwrap_or_default();
        let seconds =
            bounded(&field("seconds"), Some(p.seconds), 0.0, 86_400.0)?.unwrap_or_default();
        if p.loads.len() > MAX_PROBE_LOADS {
            return Err(invalid(format!(
                "probe {:?}: at most {MAX_PROBE_LOADS} concurrent loads",
                p.model
            )));
        }
        let mut loads = Vec::with_capacity(p.loads.len());
        for l in &p.loads {
            if !(2..=MAX_PROBE_STREAMS).contains(&l.streams) {
                return Err(invalid(format!(
                    "probe {:?}: a concurrent load of {} streams (2 to {MAX_PROBE_STREAMS})",
                    p.model, l.streams
                )));
            }
            let name = format!("{} streams", l.streams);
            loads.push(ProbeLoad {
                streams: l.streams,
                tok_s: bounded(
                    &field(&format!("tok_s at {name}")),
                    Some(l.tok_s),
                    0.0,
                    MAX_TOK_S,
                )?
                .unwrap_or_default(),
                watts: bounded(
                    &field(&format!("watts at {name}")),
                    l.watts,
                    0.0,
                    limits.max_watts,
                )?,
            });
        }
        probes.push(ProbeObservation {
            model: p.model.clone(),
            tokens: p.tokens,
            seconds,
            tok_s,
            watts: bounded(&field("watts"), p.watts, 0.0, limits.max_watts)?,
            claimed_tok_s: bounded(&field("claimed_tok_s"), p.claimed_tok_s, 0.0, MAX_TOK_S)?,
            finished_unix_ms: p.finished_unix_ms,
            loads,
        });
    }

    if sample.sensor_errors.len() > MAX_ERRORS
        || sample.sensor_errors.iter().any(|e| e.len() > MAX_TEXT)
    {
        return Err(invalid(format!(
            "at most {MAX_ERRORS} sensor errors of {MAX_TEXT} bytes each"
        )));
    }
    let flags = sample.flags.unwrap_or_default();

    Ok((
        Telemetry {
            received_at,
            sample_unix_ms: sample.timestamp_unix_ms,
            seq: sample.seq,
            sensor,
            watts,
            energy_joules,
            thermal,
            temperature_c,
            power_capped: flags.power_capped,
            throttle_reasons: flags.throttle_reasons,
            cpu_throttled: flags.cpu_throttled,
            utilization_pct,
            models,
            sensor_errors: sample.sensor_errors.clone(),
            probing: sample.probing,
            residency,
        },
        probes,
    ))
}

fn invalid(message: String) -> Refusal {
    Refusal::InvalidArgument(message)
}

/// A present value must be finite and within `[low, high]`; absent is fine (unknown).
fn bounded(name: &str, value: Option<f64>, low: f64, high: f64) -> Result<Option<f64>, Refusal> {
    match value {
        None => Ok(None),
        Some(v) if !v.is_finite() => Err(invalid(format!("{name} is {v}, not a finite number"))),
        Some(v) if v < low => Err(invalid(format!("{name} is {v}, below {low}"))),
        Some(v) if v > high => Err(invalid(format!("{name} is {v}, above the limit {high}"))),
        Some(v) => Ok(Some(v)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use wes_proto::{Model, ModelList, ProbeResult};

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn limits() -> TelemetryConfig {
        TelemetryConfig {
            max_clock_skew: Duration::from_secs(30),
            max_watts: 20_000.0,
        }
    }

    fn good() -> Sample {
        Sample {
            node_id: "a".into(),
            timestamp_unix_ms: NOW,
            seq: 1,
            sensor: SensorKind::Command as i32,
            power_watts: Some(42.5),
            energy_joules: Some(1000.0),
            thermal_state: ThermalState::Fair as i32,
            temperature_c: Some(71.0),
            utilization_pct: Some(50.0),
            models: Some(ModelList {
                models: vec![Model {
                    name: "llama3.2:3b".into(),
                    ..Model::default()
                }],
            }),
            ..Sample::default()
        }
    }

    fn check(s: &Sample) -> Result<(Telemetry, Vec<ProbeObservation>), Refusal> {
        validate(s, "a", NOW, Instant::now(), &limits())
    }

    #[test]
    fn a_good_sample_passes_whole() {
        let (t, probes) = check(&good()).unwrap();
        assert_eq!(t.watts, Some(42.5));
        assert_eq!(t.thermal, ThermalState::Fair);
        assert_eq!(t.models, Some(vec!["llama3.2:3b".to_string()]));
        assert!(probes.is_empty());
    }

    #[test]
    fn refusals() {
        type Mutate = Box<dyn Fn(&mut Sample)>;
        let cases: Vec<(&str, Mutate, bool)> = vec![
            ("other node", Box::new(|s| s.node_id = "b".into()), true),
            (
                "NaN watts",
                Box::new(|s| s.power_watts = Some(f64::NAN)),
                false,
            ),
            (
                "negative watts",
                Box::new(|s| s.power_watts = Some(-1.0)),
                false,
            ),
            (
                "absurd watts",
                Box::new(|s| s.power_watts = Some(1.0e9)),
                false,
            ),
            (
                "infinite energy",
                Box::new(|s| s.energy_joules = Some(f64::INFINITY)),
                false,
            ),
            (
                "negative energy",
                Box::new(|s| s.energy_joules = Some(-5.0)),
                false,
            ),
            ("hot", Box::new(|s| s.temperature_c = Some(900.0)), false),
            (
                "utilization",
                Box::new(|s| s.utilization_pct = Some(101.0)),
                false,
            ),
            (
                "future",
                Box::new(|s| s.timestamp_unix_ms = NOW + 31_000),
                false,
            ),
            (
                "past",
                Box::new(|s| s.timestamp_unix_ms = NOW - 31_000),
                false,
            ),
            ("thermal enum", Box::new(|s| s.thermal_state = 99), false),
            (
                "probe NaN",
                Box::new(|s| {
                    s.probes.push(ProbeResult {
                        model: "m".into(),
                        tok_s: f64::NAN,
                        ..ProbeResult::default()
                    })
                }),
                false,
            ),
            (
                "probe load of one stream",
                Box::new(|s| {
                    s.probes.push(ProbeResult {
                        model: "m".into(),
                        tok_s: 3.0,
                        loads: vec![wes_proto::ProbeLoad {
                            streams: 1,
                            tok_s: 3.0,
                            watts: None,
                        }],
                        ..ProbeResult::default()
                    })
                }),
                false,
            ),
            (
                "probe load NaN watts",
                Box::new(|s| {
                    s.probes.push(ProbeResult {
                        model: "m".into(),
                        tok_s: 3.0,
                        loads: vec![wes_proto::ProbeLoad {
                            streams: 4,
                            tok_s: 9.0,
                            watts: Some(f64::NAN),
                        }],
                        ..ProbeResult::default()
                    })
                }),
                false,
            ),
            (
                "probe no model",
                Box::new(|s| {
                    s.probes.push(ProbeResult {
                        tok_s: 3.0,
                        ..ProbeResult::default()
                    })
                }),
                false,
            ),
        ];
        for (name, mutate, denied) in cases {
            let mut s = good();
            mutate(&mut s);
            match check(&s) {
                Err(Refusal::PermissionDenied(_)) if denied => {}
                Err(Refusal::InvalidArgument(_)) if !denied => {}
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn replica_counts_are_bounded() {
        let mut s = good();
        s.replicas = vec![wes_proto::ReplicaLoad {
            replica_id: "p1".into(),
            in_flight: 3,
            cap: Some(4),
        }];
        let read = &load(&s).unwrap().replicas[0];
        assert_eq!(
            (read.id.as_str(), read.in_flight, read.cap),
            ("p1", 3, Some(4))
        );
        s.engine_in_flight = Some(5_000_000);
        assert!(load(&s).is_err());
        s.engine_in_flight = Some(2);
        assert_eq!(load(&s).unwrap().engine, Some(2));
        s.replicas[0].replica_id.clear();
        assert!(replicas(&s).is_err());
        s.replicas[0].replica_id = "p1".into();
        s.replicas[0].in_flight = 2_000_000;
        assert!(replicas(&s).is_err());
        s.replicas[0].in_flight = 1;
        s.replicas[0].cap = Some(2_000_000);
        assert!(replicas(&s).is_err());
    }

    #[test]
    fn skew_within_the_limit_passes_and_unknowns_are_fine() {
        let mut s = good();
        s.timestamp_unix_ms = NOW - 29_000;
        s.power_watts = None;
        s.thermal_state = ThermalState::Unknown as i32;
        s.models = None;
        let (t, _) = check(&s).unwrap();
        assert_eq!(t.watts, None);
        assert_eq!(t.models, None);
    }
}
