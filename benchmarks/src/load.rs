//! HTTP load against an Ollama- or OpenAI-shaped endpoint: an open-loop schedule (latency counted from each
//! request's scheduled send time, so a stall is charged to every request it delays: no
//! coordinated omission), a closed loop for saturation, and many slow streams held open at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;

use crate::procstat::Family;

pub type Client = HyperClient<HttpConnector, Full<Bytes>>;

/// A keep-alive pool without a cap, so the open loop never waits for a connection.
pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    HyperClient::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(120))
        .build(connector)
}

/// Nanoseconds from 1 ns to 10 min at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3)
        .unwrap_or_else(|e| panic!("constant histogram bounds refused: {e}"))
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Non-streaming `/api/generate`, timed to the end of the response.
    Generate,
    /// Streaming `/api/chat`, timed to the first byte of the body (the first token line).
    ChatFirstByte,
    /// Non-streaming OpenAI `/v1/chat/completions`, timed to the end of the response.
    OpenAiChat,
    /// Streaming OpenAI `/v1/chat/completions` (SSE), timed to the first byte of the body.
    OpenAiChatFirstByte,
}

impl Call {
    pub fn path(self) -> &'static str {
        match self {
            Call::Generate => "/api/generate",
            Call::ChatFirstByte => "/api/chat",
            Call::OpenAiChat | Call::OpenAiChatFirstByte => "/v1/chat/completions",
        }
    }

    fn streams(self) -> bool {
        matches!(self, Call::ChatFirstByte | Call::OpenAiChatFirstByte)
    }

    /// What the stream's last line must hold for the stream to count as complete.
    fn end_marker(self) -> &'static [u8] {
        match self {
            Call::OpenAiChatFirstByte => b"data: [DONE]",
            _ => br#""done":true"#,
        }
    }
}

/// A request ready to be sent many times.
#[derive(Clone)]
pub struct Prepared {
    uri: Uri,
    body: Bytes,
    call: Call,
}

impl Prepared {
    pub fn new(base: &str, model: &str, call: Call) -> anyhow::Result<Prepared> {
        let messages = serde_json::json!([{"role": "user", "content": "Say hello."}]);
        let body = match call {
            Call::Generate => {
                serde_json::json!({"model": model, "prompt": "Say hello.", "stream": false})
            }
            Call::ChatFirstByte | Call::OpenAiChatFirstByte => {
                serde_json::json!({"model": model, "stream": true, "messages": messages})
            }
            Call::OpenAiChat => {
                serde_json::json!({"model": model, "stream": false, "messages": messages})
            }
        };
        Ok(Prepared {
            uri: format!("{base}{}", call.path()).parse()?,
            body: Bytes::from(body.to_string()),
            call,
        })
    }

    /// A streaming chat of `tokens` lines, `interval` apart (the bench node's own option).
    pub fn slow_chat(
        base: &str,
        model: &str,
        tokens: u64,
        interval: Duration,
    ) -> anyhow::Result<Prepared> {
        let body = serde_json::json!({"model": model, "stream": true,
            "messages": [{"role": "user", "content": "Say hello slowly."}],
            "options": {"num_predict": tokens, "token_interval_ms": interval.as_millis() as u64}});
        Ok(Prepared {
            uri: format!("{base}/api/chat").parse()?,
            body: Bytes::from(body.to_string()),
            call: Call::ChatFirstByte,
        })
    }

    fn request(&self) -> anyhow::Result<Request<Full<Bytes>>> {
        Ok(Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(self.body.clone()))?)
    }
}

/// A call's answer was not a success.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub body: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status {}", self.status)?;
        if !self.body.is_empty() {
            write!(f, ": {}", self.body)?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

/// Sends one call; the time from `start` to its end (non-streaming) or first body byte
/// (streaming).
pub async fn call(client: &Client, req: &Prepared, start: Instant) -> anyhow::Result<Duration> {
    let response = client.request(req.request()?).await?;
    if response.status() != StatusCode::OK {
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(Refused {
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        }
        .into());
    }
    let mut body = response.into_body();
    if !req.call.streams() {
        let bytes = body.collect().await?.to_bytes();
        let elapsed = start.elapsed();
        if !bytes.starts_with(b"{") {
            bail!("not a JSON answer");
        }
        return Ok(elapsed);
    }
    let mut first = None;
    let mut last_line = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(data) = frame.data_ref()
            && !data.is_empty()
        {
            first.get_or_insert_with(|| start.elapsed());
            remember_last_line(&mut last_line, data);
        }
    }
    let first = first.context("empty stream")?;
    if !contains(&last_line, req.call.end_marker()) {
        bail!("stream ended without its last line");
    }
    Ok(first)
}

/// Keeps the last non-empty line seen so far (SSE ends each event with a blank line).
fn remember_last_line(last: &mut Vec<u8>, data: &[u8]) {
    last.extend_from_slice(data);
    let Some(end) = last.iter().rposition(|b| *b != b'\n' && *b != b'\r') else {
        return;
    };
    if let Some(pos) = last[..end].iter().rposition(|b| *b == b'\n') {
        last.drain(..=pos);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What a run of calls saw.
pub struct Outcome {
    /// Latency (open loop: from the scheduled send time), nanoseconds.
    pub latency: Histogram<u64>,
    /// How late the generator itself started each call (open loop only), nanoseconds.
    pub lateness: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    /// Errors that were a 404 or 405 answer: the path is not routed at all.
    pub no_route: u64,
    pub first_error: Option<String>,
    pub wall: Duration,
}

impl Outcome {
    pub fn new() -> Outcome {
        Outcome {
            latency: histogram(),
            lateness: histogram(),
            ok: 0,
            errors: 0,
            no_route: 0,
            first_error: None,
            wall: Duration::ZERO,
        }
    }

    fn record(&mut self, result: anyhow::Result<Duration>) {
        match result {
            Ok(d) => {
                self.latency.saturating_record(ns(d));
                self.ok += 1;
            }
            Err(e) => {
                self.errors += 1;
                if e.downcast_ref::<Refused>().is_some_and(|r| {
                    matches!(
                        r.status,
                        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                    )
                }) {
                    self.no_route += 1;
                }
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    pub fn merge(&mut self, other: &Outcome) {
        // Both histograms share bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.lateness.add(&other.lateness);
        self.ok += other.ok;
        self.errors += other.errors;
        self.no_route += other.no_route;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.wall += other.wall;
    }
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `req` at `rate` per second for `duration`. A dedicated thread keeps the schedule
/// (tokio's timer ticks in whole milliseconds, coarser than what is measured) and hands each
/// call to the runtime at its time; if the generator falls behind, late calls go at once and
/// their lateness counts in their latency.
pub async fn open_loop(
    client: &Client,
    req: &Prepared,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let count = (duration.as_secs_f64() * rate).round() as u64;
    let shared = Arc::new(Mutex::new(Outcome::new()));
    let handle = tokio::runtime::Handle::current();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now() + Duration::from_millis(5);
    let (client2, req2, shared2) = (client.clone(), req.clone(), shared.clone());
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            precise_sleeps();
            for i in 0..count {
                let scheduled = start + Duration::from_nanos((i as f64 * 1e9 / rate) as u64);
                let now = Instant::now();
                if scheduled > now {
                    std::thread::sleep(scheduled - now);
                }
                let (client, req, shared) = (client2.clone(), req2.clone(), shared2.clone());
                let task = handle.spawn(async move {
                    let polled = Instant::now();
                    let result =
                        match tokio::time::timeout(CALL_TIMEOUT, call(&client, &req, scheduled))
                            .await
                        {
                            Ok(r) => r,
                            Err(_) => Err(anyhow::anyhow!("timed out after {CALL_TIMEOUT:?}")),
                        };
                    let mut o = shared.lock();
                    o.lateness
                        .saturating_record(ns(polled.saturating_duration_since(scheduled)));
                    o.record(result);
                });
                if tx.send(task).is_err() {
                    break;
                }
            }
        })?;
    while let Some(task) = rx.recv().await {
        let _ = task.await;
    }
    if pacer.join().is_err() {
        bail!("the pacer thread panicked");
    }
    let mut outcome = std::mem::replace(&mut *shared.lock(), Outcome::new());
    outcome.wall = start.elapsed();
    Ok(outcome)
}

/// `concurrency` callers, each sending its next call when the previous one ends.
pub async fn closed_loop(
    client: &Client,
    req: &Prepared,
    concurrency: usize,
    duration: Duration,
) -> Outcome {
    let shared = Arc::new(Mutex::new(Outcome::new()));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, req, shared) = (client.clone(), req.clone(), shared.clone());
        workers.spawn(async move {
            while Instant::now() < deadline {
                let t = Instant::now();
                let result = match tokio::time::timeout(CALL_TIMEOUT, call(&client, &req, t)).await
                {
                    Ok(r) => r,
                    Err(_) => Err(anyhow::anyhow!("timed out after {CALL_TIMEOUT:?}")),
                };
                shared.lock().record(result);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let mut outcome = std::mem::replace(&mut *shared.lock(), Outcome::new());
    outcome.wall = start.elapsed();
    outcome
}

/// Many slow streams held open at once.
#[derive(Debug, Default)]
pub struct HoldOutcome {
    pub requested: u64,
    /// Streams whose first token line arrived.
    pub opened: u64,
    /// Streams that ended with their done line.
    pub completed: u64,
    pub peak_open: u64,
    pub errors: BTreeMap<String, u64>,
    /// From the first request to the moment all were open at once.
    pub all_open_after: Option<Duration>,
    pub peak_rss_kib: u64,
    pub peak_fds: usize,
}

pub struct HoldPlan {
    pub streams: u64,
    pub open_rate: f64,
    pub tokens: u64,
    pub interval: Duration,
}

pub async fn hold_streams(
    client: &Client,
    base: &str,
    model: &str,
    plan: &HoldPlan,
    family: &Family,
) -> anyhow::Result<HoldOutcome> {
    let req = Prepared::slow_chat(base, model, plan.tokens, plan.interval)?;
    let open_now = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let stream_limit = plan.interval * u32::try_from(plan.tokens)? + Duration::from_secs(60);
    let start = Instant::now();
    let mut outcome = HoldOutcome {
        requested: plan.streams,
        ..HoldOutcome::default()
    };

    let monitor = {
        let (open_now, done_flag) = (open_now.clone(), completed.clone());
        let family = family.clone();
        let total = plan.streams;
        tokio::spawn(async move {
            let (mut peak_open, mut peak_rss, mut peak_fds, mut all_open_after) = (0, 0, 0, None);
            loop {
                let open = open_now.load(Ordering::Relaxed);
                peak_open = peak_open.max(open);
                if open == total && all_open_after.is_none() {
                    all_open_after = Some(start.elapsed());
                }
                peak_rss = peak_rss.max(family.status_kib("VmRSS"));
                peak_fds = peak_fds.max(family.open_fds());
                if done_flag.load(Ordering::Relaxed) == u64::MAX {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (peak_open, peak_rss, peak_fds, all_open_after)
        })
    };

    let mut tasks = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.open_rate));
    for _ in 0..plan.streams {
        ticker.tick().await;
        let (client, req) = (client.clone(), req.clone());
        let (open_now, opened, completed, errors) = (
            open_now.clone(),
            opened.clone(),
            completed.clone(),
            errors.clone(),
        );
        tasks.spawn(async move {
            let result =
                tokio::time::timeout(stream_limit, one_stream(&client, &req, &open_now, &opened))
                    .await;
            let result = result.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
            match result {
                Ok(()) => {
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let mut kind = format!("{e:#}");
                    kind.truncate(120);
                    *errors.lock().entry(kind).or_default() += 1;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    // Tells the monitor to stop: no stream count reaches this value.
    let done = completed.swap(u64::MAX, Ordering::Relaxed);
    let (peak_open, peak_rss, peak_fds, all_open_after) = monitor.await?;
    outcome.opened = opened.load(Ordering::Relaxed);
    outcome.completed = done;
    outcome.peak_open = peak_open;
    outcome.all_open_after = all_open_after;
    outcome.peak_rss_kib = peak_rss;
    outcome.peak_fds = peak_fds;
    outcome.errors = std::mem::take(&mut *errors.lock());
    Ok(outcome)
}

async fn one_stream(
    client: &Client,
    req: &Prepared,
    open_now: &AtomicU64,
    opened: &AtomicU64,
) -> anyhow::Result<()> {
    let response = client.request(req.request()?).await?;
    if response.status() != StatusCode::OK {
        bail!("status {}", response.status());
    }
    let mut body = response.into_body();
    let mut is_open = false;
    let mut last_line = Vec::new();
    let result = async {
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Some(data) = frame.data_ref()
                && !data.is_empty()
            {
                if !is_open {
                    is_open = true;
                    open_now.fetch_add(1, Ordering::Relaxed);
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                remember_last_line(&mut last_line, data);
            }
        }
        anyhow::Ok(())
    }
    .await;
    if is_open {
        open_now.fetch_sub(1, Ordering::Relaxed);
    }
    result?;
    if !contains(&last_line, req.call.end_marker()) {
        bail!("stream ended without a done line");
    }
    Ok(())
}

/// Asks the kernel to wake this thread's sleeps on time rather than batching them (the default
/// slack is 50 µs).
fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and touches only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_line_in_chunks(stream: &[u8], size: usize) -> Vec<u8> {
        let mut last = Vec::new();
        for chunk in stream.chunks(size) {
            remember_last_line(&mut last, chunk);
        }
        last
    }

    #[test]
    fn the_last_line_survives_any_chunking() {
        let stream = b"{\"done\":false}\n{\"done\":false}\n{\"done\":true}\n";
        for size in 1..stream.len() {
            let last = last_line_in_chunks(stream, size);
            assert!(contains(&last, br#""done":true"#), "chunk size {size}");
            assert!(!contains(&last, br#""done":false"#), "chunk size {size}");
        }
    }

    #[test]
    fn the_sse_done_line_survives_any_chunking() {
        let stream = b"data: {\"choices\":[]}\n\ndata: {\"choices\":[]}\r\n\r\ndata: [DONE]\n\n";
        for size in 1..stream.len() {
            let last = last_line_in_chunks(stream, size);
            assert!(contains(&last, b"data: [DONE]"), "chunk size {size}");
            assert!(!contains(&last, b"choices"), "chunk size {size}");
        }
    }
}
