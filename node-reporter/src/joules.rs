//! `wes-reporter joules`: the second seed's measurement protocol, for comparing models,
//! runtimes and hardware by energy per token. On the node, with the reporter's own sensor:
//!
//! 1. wait until the thermal state has held steady (`--stable-for`), so that a run does not
//!    start on a node still cooling from the last job;
//! 2. measure the idle baseline (`--idle`, 30 s by default): the node's power with no load;
//! 3. one warm-up request (loads the model; not measured);
//! 4. run the fixed workload `--runs` times (10 by default): one completion of `--tokens`
//!    tokens at temperature 0, energy read over each run;
//! 5. report per run and overall J/token, gross and baseline-corrected (net), their mean and
//!    coefficient of variation, and the conditions (thermal state, sensor, model, engine,
//!    machine).
//!
//! Energy over a span is the sensor's counter difference where every reading has one (NVML,
//! RAPL, a command's `energy_joules`), else its power readings integrated (trapezoid), read
//! every `--interval` during the span. The arithmetic is pure and tested; the loop is glue.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wes_proto::ThermalState;

use crate::ollama::OllamaClient;
use crate::sensor::{Reading, Sensor};

/// The workload's prompt: fixed, so runs and machines compare.
pub const PROMPT: &str =
    "Explain, step by step, how a heat pump moves heat from a cold room to a warm one.";

/// The protocol's settings, as `wes-reporter joules` takes them.
#[derive(Debug, Clone, clap::Args)]
pub struct Protocol {
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value_t = 10)]
    pub runs: u32,
    /// Output tokens per run.
    #[arg(long, default_value_t = 256)]
    pub tokens: u32,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// The thermal state must have held this long before measuring...
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub stable_for: Duration,
    /// ...waiting at most this long (then measuring anyway, and saying so).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub stable_timeout: Duration,
    /// How often the sensor is read during a span: the reporter's `--interval`.
    #[arg(skip = Duration::from_millis(500))]
    pub interval: Duration,
}

/// Where a span's energy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Counter,
    Power,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Counter => "energy counter",
            Source::Power => "power readings, integrated",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub seconds: f64,
    pub joules: f64,
    pub source: Source,
}

/// The energy between the first and last of `readings` (time, reading).
pub fn energy_of(readings: &[(Instant, Reading)]) -> Result<Span, String> {
    let (Some(first), Some(last)) = (readings.first(), readings.last()) else {
        return Err("no readings".into());
    };
    let seconds = last.0.saturating_duration_since(first.0).as_secs_f64();
    if readings.len() < 2 || seconds <= 0.0 {
        return Err("the span is too short to measure".into());
    }
    if let (Some(a), Some(b)) = (first.1.energy_joules, last.1.energy_joules)
        && readings.iter().all(|(_, r)| r.energy_joules.is_some())
        && b >= a
    {
        return Ok(Span {
            seconds,
            joules: b - a,
            source: Source::Counter,
        });
    }
    let mut joules = 0.0;
    for pair in readings.windows(2) {
        let (Some(w0), Some(w1)) = (pair[0].1.watts, pair[1].1.watts) else {
            let why = pair
                .iter()
                .flat_map(|(_, r)| r.errors.iter())
                .next()
                .cloned()
                .unwrap_or_else(|| "no power reading".into());
            return Err(format!("the sensor gave neither energy nor power: {why}"));
        };
        let dt = pair[1].0.saturating_duration_since(pair[0].0).as_secs_f64();
        joules += (w0 + w1) / 2.0 * dt;
    }
    Ok(Span {
        seconds,
        joules,
        source: Source::Power,
    })
}

/// Mean, sample standard deviation and coefficient of variation (%).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub stdev: f64,
    pub cv_pct: f64,
}

pub fn spread(values: &[f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let stdev = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    let cv_pct = if mean == 0.0 {
        0.0
    } else {
        stdev / mean * 100.0
    };
    Some(Spread {
        mean,
        stdev,
        cv_pct,
    })
}

/// Whether the readings over the last `window` show a steady node: one thermal state held
/// (not Unknown), or, where the sensor gives no state, a temperature within 1 °C. `None`: the
/// sensor says neither, so there is nothing to wait for.
pub fn steady(readings: &[(Instant, Reading)], window: Duration) -> Option<bool> {
    let last = readings.last()?.0;
    let recent: Vec<&Reading> = readings
        .iter()
        .filter(|(t, _)| last.saturating_duration_since(*t) <= window)
        .map(|(_, r)| r)
        .collect();
    let covered = readings
        .first()
        .is_some_and(|(t, _)| last.saturating_duration_since(*t) >= window);
    let states: Vec<ThermalState> = recent.iter().map(|r| r.thermal).collect();
    if states.iter().any(|s| *s != ThermalState::Unknown) {
        return Some(covered && states.windows(2).all(|w| w[0] == w[1]));
    }
    let temps: Vec<f64> = recent.iter().filter_map(|r| r.temperature_c).collect();
    if temps.is_empty() {
        return None;
    }
    let (lo, hi) = temps
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
    Some(covered && temps.len() == recent.len() && hi - lo <= 1.0)
}

/// Reads the sensor every `interval` while `work` runs; the first reading just before, the
/// last just after. Returns the work's output, the span's energy and the last thermal state.
pub async fn measure<T>(
    sensor: &mut dyn Sensor,
    interval: Duration,
    work: impl Future<Output = T>,
) -> (T, Result<Span, String>, ThermalState) {
    let mut readings = vec![(Instant::now(), sensor.read().await)];
    let mut work = std::pin::pin!(work);
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = tokio::time::sleep(interval) => readings.push((Instant::now(), sensor.read().await)),
        }
    };
    readings.push((Instant::now(), sensor.read().await));
    let thermal = readings
        .last()
        .map_or(ThermalState::Unknown, |(_, r)| r.thermal);
    (out, energy_of(&readings), thermal)
}

/// Runs the whole protocol on `sensor` and the engine at `client`; progress goes to stderr.
pub async fn run(
    sensor: &mut dyn Sensor,
    sensor_why: &str,
    client: &OllamaClient,
    p: &Protocol,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut readings: Vec<(Instant, Reading)> = Vec::new();
    let stability = loop {
        readings.push((Instant::now(), sensor.read().await));
        readings.retain(|(t, _)| started.max(*t).duration_since(*t) <= p.stable_for * 2);
        match steady(&readings, p.stable_for) {
            None => {
                break "the sensor reports no thermal state or temperature: not waited".to_string();
            }
            Some(true) => break format!("steady for {}", humantime::format_duration(p.stable_for)),
            Some(false) if started.elapsed() >= p.stable_timeout => {
                break format!(
                    "not steady within {}: measured anyway",
                    humantime::format_duration(p.stable_timeout)
                );
            }
            Some(false) => tokio::time::sleep(p.interval).await,
        }
    };
    let thermal_start = readings
        .last()
        .map_or(ThermalState::Unknown, |(_, r)| r.thermal);
    eprintln!(
        "joules: thermal: {stability}; measuring the idle baseline over {}",
        humantime::format_duration(p.idle)
    );
    let ((), idle, _) = measure(sensor, p.interval, tokio::time::sleep(p.idle)).await;
    let idle = idle.map_err(|e| anyhow::anyhow!("idle baseline: {e}"))?;
    eprintln!(
        "joules: idle {:.2} W ({}); warming up {}",
        idle.joules / idle.seconds,
        idle.source.as_str(),
        p.model
    );
    client
        .complete(&p.model, PROMPT, p.tokens)
        .await
        .map_err(|e| anyhow::anyhow!("warm-up: {e}"))?;
    let mut runs = Vec::new();
    for i in 1..=p.runs {
        let (tokens, span, thermal) = measure(
            sensor,
            p.interval,
            client.complete(&p.model, PROMPT, p.tokens),
        )
        .await;
        let tokens = tokens.map_err(|e| anyhow::anyhow!("run {i}: {e}"))?;
        let span = span.map_err(|e| anyhow::anyhow!("run {i}: {e}"))?;
        let run = Run {
            span,
            tokens,
            thermal,
        };
        eprintln!(
            "joules: run {i}/{}: {} tokens in {:.2} s, {:.2} J: {:.4} J/token",
            p.runs,
            tokens,
            span.seconds,
            span.joules,
            run.joules_per_token()
        );
        runs.push(run);
    }
    let thermal_end = runs.last().map_or(thermal_start, |r| r.thermal);
    let conditions = json!({
        "model": p.model,
        "engine": client.engine().await,
        "prompt": PROMPT,
        "tokens_per_run": p.tokens,
        "runs": p.runs,
        "sensor": sensor_why,
        "thermal": stability,
        "thermal_state_start": thermal_start.display_name(),
        "thermal_state_end": thermal_end.display_name(),
        "machine": machine(),
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    });
    Ok(report(conditions, &idle, &runs))
}

/// Host name, CPU, cores and kernel, from `/proc` where it exists.
fn machine() -> Value {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let cpu = read("/proc/cpuinfo").and_then(|info| {
        info.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|m| m.trim().to_owned())
    });
    json!({
        "hostname": read("/proc/sys/kernel/hostname"),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "os": std::env::consts::OS,
    })
}

/// One run's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub span: Span,
    pub tokens: u64,
    pub thermal: ThermalState,
}

impl Run {
    pub fn joules_per_token(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let tokens = self.tokens.max(1) as f64;
        self.span.joules / tokens
    }

    /// Net of the idle baseline over the run's time.
    pub fn joules_per_token_net(&self, idle_watts: f64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let tokens = self.tokens.max(1) as f64;
        (self.span.joules - idle_watts * self.span.seconds).max(0.0) / tokens
    }
}

/// The report as JSON (what `wes-reporter joules` prints).
pub fn report(conditions: Value, idle: &Span, runs: &[Run]) -> Value {
    let idle_watts = idle.joules / idle.seconds;
    let gross: Vec<f64> = runs.iter().map(Run::joules_per_token).collect();
    let net: Vec<f64> = runs
        .iter()
        .map(|r| r.joules_per_token_net(idle_watts))
        .collect();
    let spread_json = |s: Option<Spread>| {
        s.map(|s| json!({ "mean": s.mean, "stdev": s.stdev, "cv_pct": s.cv_pct }))
    };
    json!({
        "conditions": conditions,
        "idle": { "seconds": idle.seconds, "joules": idle.joules, "watts": idle_watts, "source": idle.source.as_str() },
        "runs": runs.iter().enumerate().map(|(i, r)| json!({
            "run": i + 1,
            "seconds": r.span.seconds,
            "joules": r.span.joules,
            "tokens": r.tokens,
            "joules_per_token": r.joules_per_token(),
            "joules_per_token_net": r.joules_per_token_net(idle_watts),
            "thermal_state": r.thermal.display_name(),
            "source": r.span.source.as_str(),
        })).collect::<Vec<_>>(),
        "joules_per_token": spread_json(spread(&gross)),
        "joules_per_token_net": spread_json(spread(&net)),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64, watts: Option<f64>, energy: Option<f64>) -> (Instant, Reading) {
        (
            t0 + Duration::from_millis(ms),
            Reading {
                watts,
                energy_joules: energy,
                ..Reading::default()
            },
        )
    }

    #[test]
    fn a_counter_wins_else_power_is_integrated() {
        let t0 = Instant::now();
        let counted = [
            at(t0, 0, Some(10.0), Some(5.0)),
            at(t0, 2_000, Some(90.0), Some(105.0)),
        ];
        let s = energy_of(&counted).unwrap();
        assert_eq!(
            (s.joules, s.seconds, s.source),
            (100.0, 2.0, Source::Counter)
        );
        let powered = [
            at(t0, 0, Some(10.0), None),
            at(t0, 1_000, Some(30.0), None),
            at(t0, 2_000, Some(30.0), None),
        ];
        let s = energy_of(&powered).unwrap();
        assert_eq!((s.joules, s.source), (50.0, Source::Power));
        assert!(energy_of(&[at(t0, 0, None, None), at(t0, 9, None, None)]).is_err());
        assert!(energy_of(&powered[..1]).is_err());
    }

    #[test]
    fn spread_is_the_sample_cv() {
        let s = spread(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.mean, 2.0);
        assert!((s.stdev - 1.0).abs() < 1e-12);
        assert!((s.cv_pct - 50.0).abs() < 1e-9);
        assert_eq!(spread(&[4.0]).unwrap().cv_pct, 0.0);
        assert!(spread(&[]).is_none());
    }

    #[test]
    fn steady_needs_one_state_over_the_whole_window() {
        let t0 = Instant::now();
        let reading = |ms, thermal, temp| {
            (
                t0 + Duration::from_millis(ms),
                Reading {
                    thermal,
                    temperature_c: temp,
                    ..Reading::default()
                },
            )
        };
        let w = Duration::from_secs(2);
        let changing = [
            reading(0, ThermalState::Fair, None),
            reading(1_000, ThermalState::Normal, None),
            reading(2_000, ThermalState::Normal, None),
        ];
        assert_eq!(steady(&changing, w), Some(false));
        assert_eq!(steady(&changing[1..], Duration::from_secs(1)), Some(true));
        // Not yet a whole window of readings.
        assert_eq!(steady(&changing[1..], w), Some(false));
        let temps = [
            reading(0, ThermalState::Unknown, Some(60.0)),
            reading(2_000, ThermalState::Unknown, Some(60.8)),
        ];
        assert_eq!(steady(&temps, w), Some(true));
        let nothing = [reading(0, ThermalState::Unknown, None)];
        assert_eq!(steady(&nothing, w), None);
    }

    #[test]
    fn net_subtracts_the_idle_power_over_the_run() {
        let run = Run {
            span: Span {
                seconds: 2.0,
                joules: 100.0,
                source: Source::Counter,
            },
            tokens: 50,
            thermal: ThermalState::Normal,
        };
        assert_eq!(run.joules_per_token(), 2.0);
        assert_eq!(run.joules_per_token_net(10.0), 1.6);
        let r = report(
            json!({}),
            &Span {
                seconds: 10.0,
                joules: 100.0,
                source: Source::Power,
            },
            &[run.clone(), run],
        );
        assert_eq!(r["idle"]["watts"], 10.0);
        assert_eq!(r["joules_per_token"]["cv_pct"], 0.0);
        assert_eq!(r["runs"][1]["run"], 2);
    }
}
