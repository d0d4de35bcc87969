//! The node's own Ollama: the models it holds, and the optional decode-rate probe.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Deserialize;
use wes_proto::{LoadedModel, Model, ProbeResult};

/// The prompt is fixed so that probes of the same model compare over time.
pub const PROBE_PROMPT: &str = "Count from one to twenty in words, separated by commas.";
/// Enough tokens for a stable rate, few enough to cost the node little.
pub const PROBE_TOKENS: u32 = 32;

#[derive(Clone)]
pub struct OllamaClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct TagsResponse {
    #[serde(default)]
    models: Vec<TagModel>,
}

#[derive(Deserialize)]
struct OpenAiModels {
    #[serde(default)]
    data: Vec<OpenAiModel>,
}

#[derive(Deserialize)]
struct OpenAiModel {
    id: String,
    /// llama.cpp's router mode: whether the model is in memory now.
    #[serde(default)]
    status: Option<OpenAiStatus>,
    /// llama.cpp: the model's file size among its metadata.
    #[serde(default)]
    meta: Option<OpenAiMeta>,
}

#[derive(Deserialize)]
struct OpenAiStatus {
    value: String,
}

#[derive(Deserialize)]
struct OpenAiMeta {
    #[serde(default)]
    size: Option<u64>,
}

/// What an OpenAI-style server has in memory: llama.cpp's router mode says per model
/// (`status.value`); a server that serves one model (llama.cpp without `--models-dir`, vLLM)
/// has every model it lists loaded, for good.
fn loaded_from_openai(models: Vec<OpenAiModel>) -> Vec<LoadedModel> {
    models
        .into_iter()
        .filter(|m| m.status.as_ref().is_none_or(|s| s.value == "loaded"))
        .map(|m| LoadedModel {
            size_bytes: m.meta.and_then(|meta| meta.size).unwrap_or(0),
            name: m.id,
            size_vram_bytes: 0,
            expires_unix_ms: None,
        })
        .collect()
}

#[derive(Deserialize)]
struct PsResponse {
    #[serde(default)]
    models: Vec<PsModel>,
}

#[derive(Deserialize)]
struct PsModel {
    name: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    size_vram: u64,
    #[serde(default)]
    expires_at: Option<String>,
}

/// Ollama writes `expires_at` as RFC 3339 with its local offset ("2024-06-04T14:38:31.83753-07:00").
/// Unparseable or absent: never expires, as far as the proxy is told.
fn expiry_unix_ms(text: Option<&str>) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text?)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[derive(Deserialize)]
struct TagModel {
    name: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    digest: String,
}

impl OllamaClient {
    pub fn new(base: impl Into<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(1)
            .build()?;
        Ok(OllamaClient {
            base: base.into(),
            http,
        })
    }

    /// `GET path`: `Ok(None)` when the engine has no such endpoint (404, or 501 where it has
    /// one turned off, as llama.cpp's `--no-slots`); otherwise an error that says what
    /// (`what`) could not be read from where.
    async fn get(
        &self,
        path: &str,
        what: &str,
        timeout: Duration,
    ) -> Result<Option<reqwest::Response>, String> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("{what} from {url}: {e}"))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND
            || status == reqwest::StatusCode::NOT_IMPLEMENTED
        {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(format!("{what} from {url}: HTTP {status}"));
        }
        Ok(Some(response))
    }

    /// [`Self::get`] as `T`.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<Option<T>, String> {
        let Some(response) = self.get(path, what, Duration::from_secs(5)).await? else {
            return Ok(None);
        };
        let body = response
            .json()
            .await
            .map_err(|e| format!("{what} from {}{path}: not the {path} shape: {e}", self.base))?;
        Ok(Some(body))
    }

    /// `GET /api/tags`: the models this node can serve. Engines that speak only the OpenAI API
    /// (llama.cpp's server, vLLM) answer 404 there; their `GET /v1/models` is asked instead.
    pub async fn models(&self) -> Result<Vec<Model>, String> {
        if let Some(tags) = self
            .get_json::<TagsResponse>("/api/tags", "ollama model list")
            .await?
        {
            return Ok(tags
                .models
                .into_iter()
                .map(|m| Model {
                    name: m.name,
                    size_bytes: m.size,
                    digest: m.digest,
                })
                .collect());
        }
        let list = self
            .get_json::<OpenAiModels>("/v1/models", "model list")
            .await?
            .ok_or_else(|| {
                format!(
                    "{}/api/tags and {}/v1/models: HTTP 404 (neither Ollama nor OpenAI API)",
                    self.base, self.base
                )
            })?;
        Ok(list
            .data
            .into_iter()
            .map(|m| Model {
                name: m.id,
                ..Model::default()
            })
            .collect())
    }

    /// `GET /api/ps`: the models loaded in memory now. An engine without it (404: llama.cpp's
    /// server, vLLM) is asked `GET /v1/models` instead (`loaded_from_openai`). `Ok(None)` when
    /// neither says, so that residency stays unknown rather than empty.
    pub async fn loaded(&self) -> Result<Option<Vec<LoadedModel>>, String> {
        if let Some(ps) = self
            .get_json::<PsResponse>("/api/ps", "ollama loaded models")
            .await?
        {
            return Ok(Some(
                ps.models
                    .into_iter()
                    .map(|m| LoadedModel {
                        expires_unix_ms: expiry_unix_ms(m.expires_at.as_deref()),
                        name: m.name,
                        size_bytes: m.size,
                        size_vram_bytes: m.size_vram,
                    })
                    .collect(),
            ));
        }
        Ok(self
            .get_json::<OpenAiModels>("/v1/models", "loaded models")
            .await?
            .map(|list| loaded_from_openai(list.data)))
    }

    /// Runs one small fixed streamed generation and measures its decode rate from the stream.
    /// One fixed completion (`/v1/completions`, which Ollama, llama.cpp and vLLM all serve):
    /// `tokens` tokens at temperature 0, not stopping at end-of-text where the engine allows.
    /// Returns the output tokens the engine counted.
    pub async fn complete(&self, model: &str, prompt: &str, tokens: u32) -> Result<u64, String> {
        let url = format!("{}/v1/completions", self.base);
        let body = serde_json::json!({
            "model": model,
            "prompt": prompt,
            "max_tokens": tokens,
            "temperature": 0,
            "seed": 1,
            "ignore_eos": true,
            "stream": false,
        });
        let response = self
            .http
            .post(&url)
            .json(&body)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .map_err(|e| format!("completion at {url}: {e}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "completion at {url}: HTTP {status}: {}",
                snippet(&text)
            ));
        }
        let answer: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("completion at {url}: not JSON ({e}): {}", snippet(&text)))?;
        answer["usage"]["completion_tokens"]
            .as_u64()
            .ok_or_else(|| {
                format!(
                    "completion at {url}: no usage.completion_tokens: {}",
                    snippet(&text)
                )
            })
    }

    /// What the engine says it is: llama.cpp's `/props` build, else Ollama's `/api/version`.
    /// Requests the engine says it is working on: llama.cpp's `/slots` (slots processing),
    /// else vLLM's `/metrics` (requests running and waiting). `None` where the engine says
    /// neither (Ollama: 404 on both).
    pub async fn engine_load(&self) -> Result<Option<u32>, String> {
        // Short: this is asked every sample interval.
        let timeout = Duration::from_secs(2);
        if let Some(slots) = self.get("/slots", "engine load", timeout).await? {
            let slots: serde_json::Value = slots
                .json()
                .await
                .map_err(|e| format!("engine load from {}/slots: {e}", self.base))?;
            if let Some(n) = slots_processing(&slots) {
                return Ok(Some(n));
            }
        }
        let Some(metrics) = self.get("/metrics", "engine load", timeout).await? else {
            return Ok(None);
        };
        let text = metrics
            .text()
            .await
            .map_err(|e| format!("engine load from {}/metrics: {e}", self.base))?;
        Ok(vllm_requests(&text))
    }

    pub async fn engine(&self) -> String {
        if let Ok(Some(props)) = self.get_json::<serde_json::Value>("/props", "props").await
            && let Some(build) = props["build_info"].as_str()
        {
            return format!("llama.cpp {build}");
        }
        match self
            .get_json::<serde_json::Value>("/api/version", "version")
            .await
        {
            Ok(Some(v)) => format!("ollama API {}", v["version"].as_str().unwrap_or("?")),
            _ => "unknown".into(),
        }
    }

    pub async fn probe(&self, model: &str, timeout: Duration) -> Result<ProbeResult, String> {
        let url = format!("{}/api/generate", self.base);
        let body = serde_json::json!({
            "model": model,
            "prompt": PROBE_PROMPT,
            "stream": true,
            "options": { "num_predict": PROBE_TOKENS, "temperature": 0, "seed": 1 },
        });
        let run = async {
            let response = self
                .http
                .post(&url)
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("probe {model} at {url}: {e}"))?;
            if !response.status().is_success() {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                return Err(format!(
                    "probe {model} at {url}: HTTP {status}: {}",
                    snippet(&text)
                ));
            }
            let mut meter = ProbeMeter::default();
            let mut chunks = response.bytes_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| format!("probe {model}: stream broke: {e}"))?;
                meter.feed(&chunk, Instant::now());
            }
            meter.finish(model)
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| format!("probe {model} at {url}: no answer within {timeout:?}"))?
    }
}

/// Counts Ollama NDJSON generate chunks as they arrive; lines may be split across chunks.
#[derive(Default)]
struct ProbeMeter {
    pending: Vec<u8>,
    tokens: u64,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    claimed_tok_s: Option<f64>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct GenerateChunk {
    #[serde(default)]
    response: String,
    #[serde(default)]
    done: bool,
    eval_count: Option<u64>,
    eval_duration: Option<u64>,
    error: Option<String>,
}

impl ProbeMeter {
    fn feed(&mut self, bytes: &[u8], at: Instant) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.line(&line, at);
        }
    }

    fn line(&mut self, line: &[u8], at: Instant) {
        let Ok(chunk) = serde_json::from_slice::<GenerateChunk>(line) else {
            return;
        };
        if let Some(e) = chunk.error {
            self.error = Some(e);
        }
        if !chunk.response.is_empty() {
            self.tokens += 1;
            self.first_token.get_or_insert(at);
            self.last_token = Some(at);
        }
        if chunk.done
            && let (Some(count), Some(ns)) = (chunk.eval_count, chunk.eval_duration)
            && ns > 0
        {
            self.claimed_tok_s = Some(count as f64 / (ns as f64 / 1e9));
        }
    }

    fn finish(mut self, model: &str) -> Result<ProbeResult, String> {
        let rest = std::mem::take(&mut self.pending);
        if let (Some(t), false) = (self.last_token, rest.is_empty()) {
            self.line(&rest, t);
        }
        if let Some(e) = self.error {
            return Err(format!("probe {model}: ollama said: {e}"));
        }
        let (Some(first), Some(last)) = (self.first_token, self.last_token) else {
            return Err(format!("probe {model}: no tokens in the answer"));
        };
        // The rate is over the gaps between tokens: the first token marks the start of decode.
        let seconds = last.duration_since(first).as_secs_f64();
        if self.tokens < 2 || seconds <= 0.0 {
            return Err(format!(
                "probe {model}: too few tokens ({}) to time",
                self.tokens
            ));
        }
        Ok(ProbeResult {
            model: model.to_owned(),
            tokens: self.tokens,
            seconds,
            tok_s: (self.tokens - 1) as f64 / seconds,
            watts: None,
            claimed_tok_s: self.claimed_tok_s,
            finished_unix_ms: crate::sample::unix_ms_now(),
            loads: Vec::new(),
        })
    }
}

fn snippet(text: &str) -> &str {
    let end = text.char_indices().nth(200).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

/// vLLM's requests running and waiting (`vllm:num_requests_running`,
/// `vllm:num_requests_waiting`, summed over their label sets), from its Prometheus text;
/// `None` when the text has neither.
pub fn vllm_requests(metrics: &str) -> Option<u32> {
    let mut total: Option<f64> = None;
    for line in metrics.lines() {
        let Some(rest) = line
            .strip_prefix("vllm:num_requests_running")
            .or_else(|| line.strip_prefix("vllm:num_requests_waiting"))
        else {
            continue;
        };
        // The name must end here: `{labels} value` or ` value`.
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value.filter(|v| v.is_finite() && *v >= 0.0) {
            *total.get_or_insert(0.0) += v;
        }
    }
    total.map(|t| t.round().min(f64::from(u32::MAX)) as u32)
}

/// The slots of llama.cpp's `/slots` that are processing a request (`is_processing`, or a
/// non-zero `state` in older servers); `None` for anything but a list of slots.
pub fn slots_processing(slots: &serde_json::Value) -> Option<u32> {
    let slots = slots.as_array()?;
    let busy = slots
        .iter()
        .filter(|s| {
            s.get("is_processing")
                .and_then(serde_json::Value::as_bool)
                .or_else(|| {
                    s.get("state")
                        .and_then(serde_json::Value::as_u64)
                        .map(|st| st != 0)
                })
                .unwrap_or(false)
        })
        .count();
    u32::try_from(busy).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn vllm_requests_sums_running_and_waiting() {
        let text = "# HELP vllm:num_requests_running Number of requests\n\
                    # TYPE vllm:num_requests_running gauge\n\
                    vllm:num_requests_running{model_name=\"m\"} 3.0\n\
                    vllm:num_requests_waiting{model_name=\"m\"} 2.0\n\
                    vllm:num_requests_swapped{model_name=\"m\"} 9.0\n";
        assert_eq!(vllm_requests(text), Some(5));
        assert_eq!(vllm_requests("process_cpu_seconds_total 1.0\n"), None);
        assert_eq!(vllm_requests("vllm:num_requests_running_total 4\n"), None);
    }

    #[test]
    fn slots_processing_counts_busy_slots() {
        let now = serde_json::json!([
            {"id": 0, "is_processing": false}, {"id": 1, "is_processing": true}
        ]);
        assert_eq!(slots_processing(&now), Some(1));
        let older = serde_json::json!([{"id": 0, "state": 1}, {"id": 1, "state": 0}]);
        assert_eq!(slots_processing(&older), Some(1));
        assert_eq!(slots_processing(&serde_json::json!({"error": "x"})), None);
    }

    #[test]
    fn an_openai_server_has_what_it_lists_loaded_unless_it_says_otherwise() {
        let single: OpenAiModels = serde_json::from_str(
            r#"{"object":"list","data":[{"id":"smollm2","object":"model","owned_by":"llamacpp","meta":{"n_params":134515008,"size":94000000}}]}"#,
        )
        .unwrap();
        let loaded = loaded_from_openai(single.data);
        assert_eq!(loaded.len(), 1);
        assert_eq!(
            (loaded[0].name.as_str(), loaded[0].size_bytes),
            ("smollm2", 94_000_000)
        );
        assert_eq!(loaded[0].expires_unix_ms, None);
        let router: OpenAiModels = serde_json::from_str(
            r#"{"object":"list","data":[{"id":"a","status":{"value":"loaded","args":[]}},{"id":"b","status":{"value":"unloaded"}},{"id":"c","status":{"value":"loading"}}]}"#,
        )
        .unwrap();
        let names: Vec<String> = loaded_from_openai(router.data)
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["a"]);
    }

    #[test]
    fn expiry_is_read_with_its_offset() {
        assert_eq!(
            expiry_unix_ms(Some("1970-01-01T01:00:01.5+01:00")),
            Some(1_500)
        );
        assert_eq!(
            expiry_unix_ms(Some("2024-06-04T14:38:31Z")),
            Some(1_717_511_911_000)
        );
        assert_eq!(expiry_unix_ms(Some("soon")), None);
        assert_eq!(expiry_unix_ms(None), None);
    }

    #[test]
    fn meter_counts_tokens_across_split_lines() {
        let stream = concat!(
            "{\"response\":\"one\",\"done\":false}\n",
            "{\"response\":\", two\",\"done\":false}\n",
            "{\"response\":\", three\",\"done\":false}\n",
            "{\"response\":\"\",\"done\":true,\"eval_count\":3,\"eval_duration\":30000000}\n",
        )
        .as_bytes();
        let t0 = Instant::now();
        let mut meter = ProbeMeter::default();
        // Split at every byte boundary class: mid-key, mid-value, exactly at newlines.
        for (i, piece) in stream.chunks(7).enumerate() {
            meter.feed(piece, t0 + Duration::from_millis(10 * i as u64));
        }
        let result = meter.finish("m").unwrap();
        assert_eq!(result.tokens, 3);
        assert!(result.tok_s > 0.0);
        let claimed = result.claimed_tok_s.unwrap();
        assert!((claimed - 100.0).abs() < 1e-9, "{claimed}");
    }

    #[test]
    fn meter_reports_engine_errors() {
        let mut meter = ProbeMeter::default();
        meter.feed(b"{\"error\":\"model 'x' not found\"}\n", Instant::now());
        let err = meter.finish("x").unwrap_err();
        assert!(err.contains("not found"), "{err}");
    }
}
