//! Wires the reporter together: sampler → newest-sample slot → one stream per proxy, with the
//! model list and the probe feeding the sampler from their own tasks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use wes_proto::{ProbeLoad, ProbeResult, Sample};

use crate::config::ReporterConfig;
use crate::ollama::OllamaClient;
use crate::replicas::ReplicaLoads;
use crate::sample::{OllamaView, build_sample, load_sample, unix_ms_now};
use crate::sensor::Sensor;
use crate::stream::{self, StreamTarget};

/// Least time between two load-only messages: a node whose count changes a thousand times a
/// second sends a hundred, each with the counts as they are then.
const LOAD_SPACING: Duration = Duration::from_millis(2);

/// Runs the reporter until `shutdown` turns true.
pub async fn run(
    config: ReporterConfig,
    sensor: Box<dyn Sensor>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (sample_tx, sample_rx) = watch::channel::<Option<Sample>>(None);
    // Load-only messages on their own channel: the newest of each kind is sent, and one
    // never stands in for the other.
    let (load_tx, load_rx) = watch::channel::<Option<Sample>>(None);
    let view = Arc::new(Mutex::new(OllamaView {
        memory_bytes: config.model_memory,
        ..OllamaView::default()
    }));
    let mut tasks = JoinSet::new();
    // A proxy asks for the model list after a pull through it; the list, once read, goes out
    // in a sample at once.
    let refresh_models = Arc::new(Notify::new());
    let sample_now = Arc::new(Notify::new());
    // Two intervals: a live replica acknowledges every sample, so one that has not for two
    // is gone or stuck, and the others stop counting its requests.
    let loads = Arc::new(Mutex::new(ReplicaLoads::new(config.interval * 2)));
    let load_now = Arc::new(Notify::new());

    for (index, url) in config.proxies.iter().enumerate() {
        let target = StreamTarget {
            url: url.clone(),
            ca_pem: config.ca_pem.clone(),
            tls_server_name: config.tls_server_name.clone(),
            token: config.token.clone(),
            node_id: config.node_id.clone(),
            // Two sample intervals (1 s to 10 s): a restarted replica is ranked and admits
            // again within about that, and a thousand reporters still retry only once a
            // second each while it is down.
            reconnect_max: (config.interval * 2)
                .clamp(Duration::from_secs(1), Duration::from_secs(10)),
        };
        let feedback = stream::Feedback {
            index,
            refresh_models: refresh_models.clone(),
            loads: loads.clone(),
            load_now: load_now.clone(),
        };
        tasks.spawn(stream::run(
            target,
            (sample_rx.clone(), load_rx.clone()),
            shutdown.clone(),
            feedback,
        ));
    }
    if let Some(base) = &config.ollama {
        let client = OllamaClient::new(base.clone())?;
        tasks.spawn(poll_models(
            client.clone(),
            config.models_interval,
            view.clone(),
            shutdown.clone(),
            (refresh_models.clone(), sample_now.clone()),
        ));
        tasks.spawn(poll_loaded(
            client.clone(),
            config.interval,
            config.models_interval,
            view.clone(),
            shutdown.clone(),
        ));
        if let Some(model) = &config.probe_model {
            tasks.spawn(probe_loop(
                client,
                model.clone(),
                config.probe_interval,
                config.probe_idle_below_pct,
                config.probe_streams.clone(),
                view.clone(),
                sample_rx.clone(),
                shutdown.clone(),
            ));
        }
    }
    let feeds = (sample_now, load_now, loads);
    sample_loop(config, sensor, view, sample_tx, shutdown, feeds, load_tx).await;
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn sample_loop(
    config: ReporterConfig,
    mut sensor: Box<dyn Sensor>,
    view: Arc<Mutex<OllamaView>>,
    samples: watch::Sender<Option<Sample>>,
    mut shutdown: watch::Receiver<bool>,
    (sample_now, load_now, loads): (Arc<Notify>, Arc<Notify>, Arc<Mutex<ReplicaLoads>>),
    load_tx: watch::Sender<Option<Sample>>,
) {
    let mut ticker = tokio::time::interval(config.interval);
    // A slow sensor read must not be followed by a burst of catch-up samples.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Between samples, a read that finds the thermal state changed is sent at once: a node
    // turning Critical must not take traffic for the rest of an interval.
    let mut checks = config.thermal_check.map(|every| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let kind = sensor.kind();
    let mut seq = 0u64;
    let mut sent_thermal = None;
    loop {
        let check = tokio::select! {
            _ = ticker.tick() => false,
            () = sample_now.notified() => {
                // The next regular sample comes a whole interval after this one.
                ticker.reset();
                false
            }
            () = load_now.notified() => {
                // A replica's count changed: the others hear of it now, without a sensor read.
                seq += 1;
                let engine = view.lock().engine_in_flight;
                let replicas = loads.lock().publish(seq, std::time::Instant::now(), engine);
                let message = load_sample(&config.node_id, seq, replicas, engine, unix_ms_now());
                load_tx.send_replace(Some(message));
                // Bursts of changes coalesce into one message per spacing.
                tokio::time::sleep(LOAD_SPACING).await;
                continue;
            }
            _ = async {
                match checks.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            } => true,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let reading = sensor.read().await;
        if check && sent_thermal == Some(reading.thermal) {
            continue;
        }
        if check {
            // The next regular sample comes a whole interval after this one.
            ticker.reset();
        }
        sent_thermal = Some(reading.thermal);
        seq += 1;
        let ollama = view.lock().clone();
        let mut sample = build_sample(&config.node_id, seq, kind, reading, &ollama, unix_ms_now());
        let replicas =
            loads
                .lock()
                .publish(seq, std::time::Instant::now(), sample.engine_in_flight);
        sample.replicas = load_sample(&config.node_id, seq, replicas, None, 0).replicas;
        tracing::debug!(seq, watts = ?sample.power_watts, thermal = sample.thermal_state, "sample");
        samples.send_replace(Some(sample));
    }
}

/// Reads the model list every `every`, and at once when `refresh.0` is woken; a list read on
/// request wakes `refresh.1`, the sampler, so that it reaches the proxies now.
async fn poll_models(
    client: OllamaClient,
    every: Duration,
    view: Arc<Mutex<OllamaView>>,
    mut shutdown: watch::Receiver<bool>,
    refresh: (Arc<Notify>, Arc<Notify>),
) {
    let (asked, sample_now) = refresh;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ok: Option<bool> = None;
    loop {
        let on_request = tokio::select! {
            _ = ticker.tick() => false,
            () = asked.notified() => true,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let models = client.models().await;
        // Log transitions only: a node whose Ollama is down should not flood the log.
        match (&models, last_ok) {
            (Err(e), Some(true) | None) => tracing::warn!("{e}"),
            (Ok(m), Some(false) | None) => {
                tracing::info!(count = m.len(), "ollama model list read")
            }
            _ => {}
        }
        last_ok = Some(models.is_ok());
        view.lock().models = Some(models);
        if on_request {
            sample_now.notify_one();
        }
    }
}

/// Reads what is loaded once per sample interval: residency changes with every request. An
/// engine without `/api/ps` is asked again only at the model-list pace, in case it is replaced
/// by one that has it.
async fn poll_loaded(
    client: OllamaClient,
    every: Duration,
    without_list: Duration,
    view: Arc<Mutex<OllamaView>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_error: Option<String> = None;
    // When to ask the engine for its load next: each time while it answers, at the
    // model-list pace while it has no such list (Ollama, vLLM), in case it is replaced.
    let mut ask_load_at = tokio::time::Instant::now();
    loop {
        let loaded = client.loaded().await;
        if tokio::time::Instant::now() >= ask_load_at {
            let engine = client.engine_load().await.ok().flatten();
            if engine.is_none() {
                ask_load_at = tokio::time::Instant::now() + without_list.max(every);
            }
            view.lock().engine_in_flight = engine;
        }
        let pause = match &loaded {
            Ok(None) => without_list.max(every),
            _ => every,
        };
        match &loaded {
            Err(e) if last_error.as_ref() != Some(e) => tracing::warn!("{e}"),
            _ => {}
        }
        {
            let mut view = view.lock();
            match loaded {
                Ok(list) => {
                    view.loaded = list;
                    view.loaded_error = None;
                    last_error = None;
                }
                Err(e) => {
                    // Unknown, not empty: a stale list would charge or spare the wrong nodes.
                    view.loaded = None;
                    view.loaded_error = Some(e.clone());
                    last_error = Some(e);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn probe_loop(
    client: OllamaClient,
    model: String,
    every: Duration,
    idle_below_pct: f64,
    streams: Vec<u32>,
    view: Arc<Mutex<OllamaView>>,
    samples: watch::Receiver<Option<Sample>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let busy = samples
            .borrow()
            .as_ref()
            .and_then(|s| s.utilization_pct)
            .is_some_and(|u| u >= idle_below_pct);
        if busy {
            tracing::debug!("node busy; probe skipped");
            continue;
        }
        view.lock().probing = true;
        let mut power = PowerDuring::new(samples.clone());
        let outcome = tokio::select! {
            r = client.probe(&model, Duration::from_secs(120)) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let mut outcome = outcome.map(|mut result| {
            result.watts = power.mean();
            result
        });
        if let Ok(result) = &mut outcome {
            for &n in &streams {
                let load = tokio::select! {
                    l = probe_load(&client, &model, n, &samples) => l,
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                match load {
                    Ok(load) => result.loads.push(load),
                    Err(e) => tracing::warn!("probe of {n} streams: {e}"),
                }
            }
        }
        let mut view = view.lock();
        view.probing = false;
        match outcome {
            Ok(result) => {
                tracing::info!(model = %result.model, tok_s = result.tok_s, watts = ?result.watts, loads = ?result.loads, "probe done");
                upsert_probe(&mut view.probes, result);
                view.probe_error = None;
            }
            Err(e) => {
                tracing::warn!("{e}");
                view.probe_error = Some(e);
            }
        }
    }
}

/// The probe as `streams` generations started together: the node's throughput over them
/// ([`aggregate_tok_s`]), and the mean power of the samples taken while they ran (none if the
/// run was shorter than the sample interval: a reading from before or after would be another
/// load's).
async fn probe_load(
    client: &OllamaClient,
    model: &str,
    streams: u32,
    samples: &watch::Receiver<Option<Sample>>,
) -> Result<ProbeLoad, String> {
    let mut samples = samples.clone();
    samples.mark_unchanged();
    let started = Instant::now();
    let runs = (0..streams).map(|_| async {
        let result = client.probe(model, Duration::from_secs(120)).await;
        (result, started.elapsed())
    });
    let mut run = std::pin::pin!(futures::future::join_all(runs));
    let mut readings = Vec::new();
    let results = loop {
        tokio::select! {
            results = &mut run => break results,
            changed = samples.changed() => {
                if changed.is_err() {
                    break run.await;
                }
                if let Some(w) = samples.borrow_and_update().as_ref().and_then(|s| s.power_watts) {
                    readings.push(w);
                }
            }
        }
    };
    let mut streamed = Vec::with_capacity(results.len());
    for (result, done) in results {
        let result = result?;
        streamed.push(Streamed {
            tokens: result.tokens,
            decode: Duration::from_secs_f64(result.seconds),
            done,
        });
    }
    let tok_s = aggregate_tok_s(&streamed)
        .ok_or_else(|| format!("probe of {streams} streams: too few tokens to time"))?;
    // The first reading may have been taken as the streams started: it counts only when it
    // is all there is.
    let during = if readings.len() > 1 {
        &readings[1..]
    } else {
        &readings[..]
    };
    let watts = (!during.is_empty()).then(|| during.iter().sum::<f64>() / during.len() as f64);
    Ok(ProbeLoad {
        streams,
        tok_s,
        watts,
    })
}

/// One stream of a load probe: its tokens, its decode time (first token to last), and when it
/// ended, from the start of the probe.
#[derive(Debug, Clone, Copy)]
struct Streamed {
    tokens: u64,
    decode: Duration,
    done: Duration,
}

/// The node's decode throughput over streams started together: the tokens decoded after each
/// stream's first, over the time from the earliest first token to the latest end. Where every
/// stream runs at once this is the sum of their rates; where the engine has fewer slots than
/// streams (Ollama with `OLLAMA_NUM_PARALLEL=1`, llama-server with fewer `--parallel` slots),
/// the queued streams run after the others and the sum of rates would count each slot's rate
/// several times over.
fn aggregate_tok_s(streams: &[Streamed]) -> Option<f64> {
    let start = streams
        .iter()
        .map(|s| s.done.saturating_sub(s.decode))
        .min()?;
    let end = streams.iter().map(|s| s.done).max()?;
    let seconds = end.saturating_sub(start).as_secs_f64();
    let tokens: u64 = streams.iter().map(|s| s.tokens.saturating_sub(1)).sum();
    (seconds > 0.0 && tokens > 0).then(|| tokens as f64 / seconds)
}

/// Keeps one result per model, the newest.
fn upsert_probe(probes: &mut Vec<ProbeResult>, result: ProbeResult) {
    probes.retain(|p| p.model != result.model);
    probes.push(result);
}

/// Power while a probe runs: from the energy counter between the samples around it when the
/// sensor has one (a true mean), else the power of the newest sample at its end.
struct PowerDuring {
    samples: watch::Receiver<Option<Sample>>,
    start: Option<(f64, i64)>,
}

impl PowerDuring {
    fn new(samples: watch::Receiver<Option<Sample>>) -> Self {
        let start = energy_at(samples.borrow().as_ref());
        PowerDuring { samples, start }
    }

    fn mean(&mut self) -> Option<f64> {
        let latest = self.samples.borrow().clone()?;
        if let (Some((e0, t0)), Some((e1, t1))) = (self.start, energy_at(Some(&latest)))
            && t1 > t0
            && e1 >= e0
        {
            return Some((e1 - e0) / ((t1 - t0) as f64 / 1000.0));
        }
        latest.power_watts
    }
}

fn energy_at(sample: Option<&Sample>) -> Option<(f64, i64)> {
    sample.and_then(|s| s.energy_joules.map(|e| (e, s.timestamp_unix_ms)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stream(tokens: u64, decode_s: f64, done_s: f64) -> Streamed {
        Streamed {
            tokens,
            decode: Duration::from_secs_f64(decode_s),
            done: Duration::from_secs_f64(done_s),
        }
    }

    #[test]
    fn streams_run_together_add_their_rates() {
        // Four streams, each 33 tokens over the same second: 32 tok/s each.
        let together: Vec<_> = (0..4).map(|_| stream(33, 1.0, 1.2)).collect();
        let tok_s = aggregate_tok_s(&together).unwrap();
        assert!((tok_s - 128.0).abs() < 1e-9, "{tok_s}");
    }

    #[test]
    fn streams_an_engine_queues_count_one_slot_once() {
        // One slot: the second stream decodes after the first, each at 32 tok/s. The sum of
        // their rates would say 64.
        let queued = [stream(33, 1.0, 1.2), stream(33, 1.0, 2.3)];
        let tok_s = aggregate_tok_s(&queued).unwrap();
        assert!(tok_s < 33.0 && tok_s > 28.0, "{tok_s}");
    }

    #[test]
    fn nothing_to_time_is_no_rate() {
        assert_eq!(aggregate_tok_s(&[]), None);
        assert_eq!(aggregate_tok_s(&[stream(1, 0.0, 0.5)]), None);
    }
}
