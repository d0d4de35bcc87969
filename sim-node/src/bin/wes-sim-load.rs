//! `wes-sim-load --api URL --rate R --models a,b [--duration 60s]`: open-loop background
//! traffic for the demo fleet and the routing benchmarks. Requests arrive as a Poisson process
//! (the arrival times do not wait for answers, so a slow fleet sees its queue grow, as a real
//! one would), each streams its answer to the end, and a JSON summary goes to stdout on exit:
//! per-node counts (from `X-WES-Node`), statuses, time to first token, duration and tokens.
//! SIGINT or SIGTERM ends the run early and still prints the summary.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Endpoint {
    /// Ollama `POST /api/generate`, NDJSON stream.
    Generate,
    /// Ollama `POST /api/chat`, NDJSON stream.
    Chat,
    /// OpenAI-compatible `POST /v1/chat/completions`, SSE stream.
    OpenaiChat,
}

#[derive(Debug, Parser)]
#[command(name = "wes-sim-load", version, about)]
struct Cli {
    /// Base URL of the Ollama API to load (the proxy, or one node).
    #[arg(long, default_value = "http://127.0.0.1:11434")]
    api: String,
    /// Mean requests per second (Poisson arrivals).
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    rate: f64,
    /// Models to ask for, comma-separated; each request picks one uniformly.
    #[arg(long, value_delimiter = ',', default_value = "llama3.2:3b")]
    models: Vec<String>,
    /// APIs to call, comma-separated; each request picks one uniformly.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "generate")]
    endpoints: Vec<Endpoint>,
    /// Tokens each answer asks for (`num_predict` / `max_tokens`).
    #[arg(long, default_value_t = 64)]
    num_predict: u32,
    /// Stop after this long, e.g. "30s" (default: until SIGINT or SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Arrivals beyond this many open requests are dropped (and counted as `dropped`), so a
    /// dead API cannot make the generator pile up sockets.
    #[arg(long, default_value_t = 64)]
    max_in_flight: usize,
    /// Per-request limit, connect to last byte.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    timeout: Duration,
    /// Seeds arrivals, model and endpoint choice, so runs repeat.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Prints a one-line progress report to stderr this often ("0s": never).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    report_every: Duration,
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a number > 0, got {s:?}")),
    }
}

/// What one request came to.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    model: String,
    /// HTTP status; `None` when no response arrived (connect error, timeout).
    status: Option<u16>,
    node: Option<String>,
    /// From sending to the first body chunk that carries a token.
    ttft: Option<Duration>,
    total: Duration,
    /// Generated tokens as the final chunk reports them (`eval_count`, `completion_tokens`).
    tokens: Option<u64>,
    /// Transport error, or the `error` a stream ended with.
    error: Option<String>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.status == Some(200) && self.error.is_none()
    }
}

#[derive(Debug, Default, Serialize, PartialEq)]
struct Percentiles {
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

/// Nearest-rank percentiles of `values`, in the same unit.
fn percentiles(mut values: Vec<f64>) -> Percentiles {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| -> Option<f64> {
        if values.is_empty() {
            return None;
        }
        // Nearest rank: the smallest value with at least q of the sample at or below it.
        let rank = (q * values.len() as f64).ceil().max(1.0) as usize;
        values.get(rank.min(values.len()) - 1).copied()
    };
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: values.last().copied(),
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    api: String,
    elapsed_s: f64,
    sent: u64,
    ok: u64,
    failed: u64,
    dropped: u64,
    tokens: u64,
    by_node: BTreeMap<String, u64>,
    by_model: BTreeMap<String, u64>,
    by_status: BTreeMap<String, u64>,
    ttft_ms: Percentiles,
    duration_ms: Percentiles,
    /// The first few distinct errors, for a person reading the summary.
    errors: Vec<String>,
}

const ERRORS_KEPT: usize = 5;

fn summarize(api: &str, elapsed: Duration, dropped: u64, outcomes: &[Outcome]) -> Summary {
    let mut s = Summary {
        api: api.to_owned(),
        elapsed_s: elapsed.as_secs_f64(),
        sent: outcomes.len() as u64,
        ok: 0,
        failed: 0,
        dropped,
        tokens: 0,
        by_node: BTreeMap::new(),
        by_model: BTreeMap::new(),
        by_status: BTreeMap::new(),
        ttft_ms: Percentiles::default(),
        duration_ms: Percentiles::default(),
        errors: vec![],
    };
    let mut ttft = vec![];
    let mut durations = vec![];
    for o in outcomes {
        if o.ok() {
            s.ok += 1;
            durations.push(o.total.as_secs_f64() * 1e3);
            if let Some(t) = o.ttft {
                ttft.push(t.as_secs_f64() * 1e3);
            }
        } else {
            s.failed += 1;
        }
        s.tokens += o.tokens.unwrap_or(0);
        let node = o.node.clone().unwrap_or_else(|| "(none)".into());
        *s.by_node.entry(node).or_default() += 1;
        *s.by_model.entry(o.model.clone()).or_default() += 1;
        let status = o
            .status
            .map_or_else(|| "no response".into(), |c| c.to_string());
        *s.by_status.entry(status).or_default() += 1;
        if let Some(e) = &o.error
            && s.errors.len() < ERRORS_KEPT
            && !s.errors.contains(e)
        {
            s.errors.push(e.clone());
        }
    }
    s.ttft_ms = percentiles(ttft);
    s.duration_ms = percentiles(durations);
    s
}

/// The request body for one call.
fn body(endpoint: Endpoint, model: &str, prompt: &str, num_predict: u32) -> Value {
    match endpoint {
        Endpoint::Generate => json!({
            "model": model, "prompt": prompt, "stream": true,
            "options": {"num_predict": num_predict},
        }),
        Endpoint::Chat => json!({
            "model": model, "stream": true,
            "messages": [{"role": "user", "content": prompt}],
            "options": {"num_predict": num_predict},
        }),
        Endpoint::OpenaiChat => json!({
            "model": model, "stream": true, "max_tokens": num_predict,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": prompt}],
        }),
    }
}

fn path(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Generate => "/api/generate",
        Endpoint::Chat => "/api/chat",
        Endpoint::OpenaiChat => "/v1/chat/completions",
    }
}

/// What one line of a streamed answer says, in either protocol.
#[derive(Debug, Default, PartialEq)]
struct LineInfo {
    /// The line carries generated text.
    token: bool,
    /// Generated-token count from a final chunk.
    tokens: Option<u64>,
    error: Option<String>,
}

/// Reads one NDJSON line or one SSE `data:` line; anything else says nothing.
fn parse_line(line: &str) -> LineInfo {
    let line = line.trim();
    let payload = line.strip_prefix("data:").map_or(line, str::trim);
    if payload.is_empty() || payload == "[DONE]" {
        return LineInfo::default();
    }
    let Ok(v) = serde_json::from_str::<Value>(payload) else {
        return LineInfo::default();
    };
    let error = match v.get("error") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => Some(
            o.get("message")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_owned(),
        ),
        _ => None,
    };
    let nonempty = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    LineInfo {
        token: nonempty("/response")
            || nonempty("/message/content")
            || nonempty("/choices/0/delta/content"),
        tokens: v
            .get("eval_count")
            .or_else(|| v.pointer("/usage/completion_tokens"))
            .and_then(Value::as_u64),
        error,
    }
}

async fn one_request(
    http: &reqwest::Client,
    api: &str,
    endpoint: Endpoint,
    model: String,
    prompt: String,
    num_predict: u32,
) -> Outcome {
    let start = Instant::now();
    let mut out = Outcome {
        model: model.clone(),
        status: None,
        node: None,
        ttft: None,
        total: Duration::ZERO,
        tokens: None,
        error: None,
    };
    let sent = http
        .post(format!("{api}{}", path(endpoint)))
        .json(&body(endpoint, &model, &prompt, num_predict))
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(error_chain(&e));
            out.total = start.elapsed();
            return out;
        }
    };
    out.status = Some(response.status().as_u16());
    out.node = response
        .headers()
        .get("x-wes-node")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let failed_status = !response.status().is_success();
    let mut stream = response.bytes_stream();
    // Chunks split lines anywhere; keep the unfinished tail for the next chunk.
    let mut pending: Vec<u8> = vec![];
    let handle = |line: &[u8], out: &mut Outcome| {
        let info = parse_line(&String::from_utf8_lossy(line));
        if info.token && out.ttft.is_none() {
            out.ttft = Some(start.elapsed());
        }
        if info.tokens.is_some() {
            out.tokens = info.tokens;
        }
        if info.error.is_some() && out.error.is_none() {
            out.error = info.error;
        }
    };
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                pending.extend_from_slice(&bytes);
                while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    handle(&line, &mut out);
                }
            }
            Err(e) => {
                out.error = Some(error_chain(&e));
                break;
            }
        }
    }
    if !pending.is_empty() {
        handle(&pending, &mut out);
    }
    if failed_status && out.error.is_none() {
        out.error = Some(format!("HTTP {}", out.status.unwrap_or(0)));
    }
    out.total = start.elapsed();
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Short prompts of varied length, so prefill differs a little between requests.
fn prompt(rng: &mut StdRng) -> String {
    const TOPICS: &[&str] = &[
        "why the sky is blue",
        "how a heat pump works",
        "the history of the bicycle",
        "what joules per token measures",
        "how to brew green tea",
        "why fanless devices throttle",
    ];
    let topic = TOPICS[rng.random_range(0..TOPICS.len())];
    let words = rng.random_range(1..=4);
    format!("In {} sentences, explain {topic}.", words * 2)
}

/// Exponential inter-arrival gap for a Poisson process of `rate` per second.
fn gap(rng: &mut StdRng, rate: f64) -> Duration {
    // 1 - u lies in (0, 1], so the log is finite.
    let u: f64 = rng.random();
    Duration::from_secs_f64(-(1.0 - u).ln() / rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.models.is_empty() || cli.endpoints.is_empty() {
        anyhow::bail!("--models and --endpoints need at least one entry each");
    }
    let api = cli.api.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .timeout(cli.timeout)
        .connect_timeout(Duration::from_secs(3))
        .build()?;
    let mut rng = StdRng::seed_from_u64(cli.seed);
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut dropped = 0u64;
    let start = Instant::now();
    let deadline = cli.duration.map(|d| tokio::time::Instant::now() + d);
    let mut next_arrival = tokio::time::Instant::now();
    let mut next_report = (!cli.report_every.is_zero()).then(|| start + cli.report_every);
    let mut stop = StopSignal::new()?;
    // Scripts and tests wait for this line: from here on a signal ends the run cleanly.
    eprintln!("wes-sim-load: sending to {api} at {} requests/s", cli.rate);

    loop {
        next_arrival += gap(&mut rng, cli.rate);
        if deadline.is_some_and(|d| next_arrival >= d) {
            // No more arrivals; let the deadline pass before waiting for what is open.
            if let Some(d) = deadline {
                tokio::select! {
                    _ = tokio::time::sleep_until(d) => {}
                    _ = stop.recv() => {}
                }
            }
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_arrival) => {}
            _ = stop.recv() => break,
        }
        // Reap finished tasks so the set does not grow over a long run.
        while tasks.try_join_next().is_some() {}
        if tasks.len() >= cli.max_in_flight {
            dropped += 1;
        } else {
            let endpoint = cli.endpoints[rng.random_range(0..cli.endpoints.len())];
            let model = cli.models[rng.random_range(0..cli.models.len())].clone();
            let prompt = prompt(&mut rng);
            let (http, api, outcomes) = (http.clone(), api.clone(), Arc::clone(&outcomes));
            let num_predict = cli.num_predict;
            tasks.spawn(async move {
                let o = one_request(&http, &api, endpoint, model, prompt, num_predict).await;
                if let Ok(mut all) = outcomes.lock() {
                    all.push(o);
                }
            });
        }
        if let Some(at) = next_report
            && Instant::now() >= at
        {
            next_report = Some(at + cli.report_every);
            let done = outcomes.lock().map(|o| o.clone()).unwrap_or_default();
            let s = summarize(&api, start.elapsed(), dropped, &done);
            eprintln!(
                "wes-sim-load: {:.0}s sent {} ok {} failed {} dropped {} open {} by node {:?}",
                s.elapsed_s,
                s.sent,
                s.ok,
                s.failed,
                s.dropped,
                tasks.len(),
                s.by_node
            );
        }
    }

    // Let open requests finish (bounded by their own timeout), unless asked to stop again.
    tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => {}
        _ = stop.recv() => tasks.abort_all(),
    }
    let done = outcomes.lock().map(|o| o.clone()).unwrap_or_default();
    let summary = summarize(&api, start.elapsed(), dropped, &done);
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &summary)?;
    writeln!(stdout)?;
    Ok(())
}

/// SIGINT and SIGTERM, registered when made (so a signal that comes early is not lost to the
/// default action); each `recv` waits for the next one.
struct StopSignal {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignal {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!(p.p50, Some(50.0));
        assert_eq!(p.p95, Some(95.0));
        assert_eq!(p.p99, Some(99.0));
        assert_eq!(p.max, Some(100.0));
        assert_eq!(percentiles(vec![7.0]).p50, Some(7.0));
        assert_eq!(percentiles(vec![]), Percentiles::default());
    }

    #[test]
    fn lines_of_both_protocols_are_read() {
        let ndjson = parse_line(r#"{"model":"m","response":"Hello","done":false}"#);
        assert_eq!(
            ndjson,
            LineInfo {
                token: true,
                ..LineInfo::default()
            }
        );
        let last = parse_line(r#"{"model":"m","response":"","done":true,"eval_count":64}"#);
        assert_eq!(last.tokens, Some(64));
        assert!(!last.token);
        let chat = parse_line(r#"{"message":{"role":"assistant","content":"Hi"},"done":false}"#);
        assert!(chat.token);
        let sse = parse_line(r#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#);
        assert!(sse.token);
        let usage = parse_line(r#"data: {"choices":[],"usage":{"completion_tokens":12}}"#);
        assert_eq!(usage.tokens, Some(12));
        assert_eq!(parse_line("data: [DONE]"), LineInfo::default());
        assert_eq!(parse_line(""), LineInfo::default());
        assert_eq!(parse_line("not json"), LineInfo::default());
        let err = parse_line(r#"{"error":"node went away"}"#);
        assert_eq!(err.error.as_deref(), Some("node went away"));
        let oerr = parse_line(r#"data: {"error":{"message":"boom","type":"x"}}"#);
        assert_eq!(oerr.error.as_deref(), Some("boom"));
    }

    #[test]
    fn summary_counts_nodes_statuses_and_errors() {
        let o = |status, node: Option<&str>, error: Option<&str>| Outcome {
            model: "m".into(),
            status,
            node: node.map(str::to_owned),
            ttft: Some(Duration::from_millis(10)),
            total: Duration::from_millis(100),
            tokens: Some(4),
            error: error.map(str::to_owned),
        };
        let s = summarize(
            "http://x",
            Duration::from_secs(2),
            3,
            &[
                o(Some(200), Some("a"), None),
                o(Some(200), Some("a"), None),
                o(Some(200), Some("b"), Some("cut mid-stream")),
                o(Some(503), None, Some("HTTP 503")),
                o(None, None, Some("connect refused")),
            ],
        );
        assert_eq!((s.sent, s.ok, s.failed, s.dropped), (5, 2, 3, 3));
        assert_eq!(s.by_node.get("a"), Some(&2));
        assert_eq!(s.by_node.get("(none)"), Some(&2));
        assert_eq!(s.by_status.get("200"), Some(&3));
        assert_eq!(s.by_status.get("no response"), Some(&1));
        assert_eq!(s.tokens, 20);
        assert_eq!(s.errors.len(), 3);
        assert_eq!(s.ttft_ms.p50, Some(10.0));
    }

    #[test]
    fn gaps_average_to_the_rate() {
        let mut rng = StdRng::seed_from_u64(3);
        let n = 20_000;
        let total: f64 = (0..n).map(|_| gap(&mut rng, 4.0).as_secs_f64()).sum();
        let mean = total / f64::from(n);
        assert!((mean - 0.25).abs() < 0.01, "mean gap {mean}");
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "wes-sim-load",
            "--api",
            "http://127.0.0.1:1/",
            "--rate",
            "2.5",
            "--models",
            "a,b",
            "--endpoints",
            "generate,openai-chat",
            "--duration",
            "3s",
        ])
        .unwrap();
        assert_eq!(cli.models, ["a", "b"]);
        assert_eq!(cli.endpoints, [Endpoint::Generate, Endpoint::OpenaiChat]);
        assert_eq!(cli.duration, Some(Duration::from_secs(3)));
        assert!(Cli::try_parse_from(["wes-sim-load", "--rate", "0"]).is_err());
    }
}
