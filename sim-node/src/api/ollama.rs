//! Ollama's native API (`/api/*`) with its shapes, status codes and error strings.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{chat_prompt_tokens, content_text, parse_json, parse_keep_alive};
use crate::catalog::ModelInfo;
use crate::generation::{self, Event, Plan, Stats};
use crate::node::{Busy, KeepAlive, Node};
use crate::text::{combine, embedding, estimate_tokens, normalize, rfc3339, stable_hash};

/// The Ollama release whose API this simulator follows.
pub const VERSION: &str = "0.12.6";

/// Ollama's error body, `{"error": "..."}`, with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// What generate, chat and embed say for a model this node does not hold.
    fn model_not_found(model: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("model \"{model}\" not found, try pulling it first"),
        }
    }

    /// What show, delete and copy say instead.
    pub(crate) fn no_such_model(model: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("model '{model}' not found"),
        }
    }

    pub fn into_parts(self) -> (StatusCode, String) {
        (self.status, self.message)
    }
}

impl From<Busy> for ApiError {
    fn from(_: Busy) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "server busy, please try again.  maximum pending requests exceeded"
                .to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Options {
    /// A float is accepted too: Ollama converts numbers loosely.
    pub num_predict: Option<f64>,
    pub seed: Option<f64>,
}

/// Resolves `name` to a model this node holds, with Ollama's errors for the two ways a name
/// can fail.
pub fn resolve(node: &Node, name: &str) -> Result<Arc<ModelInfo>, ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    node.find_model(name)
        .ok_or_else(|| ApiError::model_not_found(name))
}

fn completion_model(node: &Node, name: &str, verb: &str) -> Result<Arc<ModelInfo>, ApiError> {
    let model = resolve(node, name)?;
    if model.embedding_only {
        return Err(ApiError::bad_request(format!(
            "\"{name}\" does not support {verb}"
        )));
    }
    Ok(model)
}

/// Same request, same answer: the text depends on the node's seed, the request's seed, the
/// model and the prompt.
pub fn text_seed(node: &Node, options_seed: Option<f64>, model: &str, prompt: &str) -> u64 {
    let request_seed = options_seed.map_or(0, |s| s as i64 as u64);
    combine(
        combine(node.seed, request_seed),
        combine(
            stable_hash(model.as_bytes()),
            stable_hash(prompt.as_bytes()),
        ),
    )
}

pub async fn root() -> &'static str {
    "Ollama is running"
}

pub async fn version() -> Json<Value> {
    Json(json!({ "version": VERSION }))
}

pub async fn tags(State(node): State<Arc<Node>>) -> Json<Value> {
    let models: Vec<Value> = node
        .models()
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "model": m.name,
                "modified_at": rfc3339(m.modified_at),
                "size": m.size_bytes,
                "digest": m.digest,
                "details": m.details(),
            })
        })
        .collect();
    Json(json!({ "models": models }))
}

pub async fn ps(State(node): State<Arc<Node>>) -> Json<Value> {
    // Ollama shows a model kept forever with an expiry centuries away.
    let forever = SystemTime::now() + Duration::from_secs(300 * 365 * 24 * 3600);
    let models: Vec<Value> = node
        .loaded_models()
        .iter()
        .map(|(m, expires)| {
            json!({
                "name": m.name,
                "model": m.name,
                "size": m.size_bytes,
                "digest": m.digest,
                "details": m.details(),
                "expires_at": rfc3339(expires.unwrap_or(forever)),
                "size_vram": if node.profile.cpu_only { 0 } else { m.size_bytes },
                "context_length": m.context_window(),
            })
        })
        .collect();
    Json(json!({ "models": models }))
}

#[derive(Deserialize)]
struct ShowRequest {
    #[serde(default)]
    model: Option<String>,
    /// The older spelling of `model`.
    #[serde(default)]
    name: Option<String>,
}

pub async fn show(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let req: ShowRequest = parse_json(&body).map_err(ApiError::bad_request)?;
    let name = req.model.or(req.name).unwrap_or_default();
    if name.trim().is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    let m = node
        .find_model(&name)
        .ok_or_else(|| ApiError::no_such_model(&name))?;
    let (template, parameters) = if m.embedding_only {
        ("{{ .Prompt }}", String::new())
    } else {
        (
            "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
            "stop                           \"<|end|>\"".to_string(),
        )
    };
    let modelfile = format!(
        "# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM {name}\n\nFROM {name}\nTEMPLATE \"\"\"{template}\"\"\"\n{}",
        if parameters.is_empty() {
            String::new()
        } else {
            format!("PARAMETER {parameters}\n")
        }
    );
    Ok(Json(json!({
        "license": "",
        "modelfile": modelfile,
        "parameters": parameters,
        "template": template,
        "details": m.details(),
        "model_info": m.model_info(),
        "capabilities": m.capabilities(),
        "modified_at": rfc3339(m.modified_at),
    }))
    .into_response())
}

#[derive(Deserialize)]
struct GenerateRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    options: Option<Options>,
    #[serde(default)]
    keep_alive: Option<Value>,
}

pub async fn generate(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let received = Instant::now();
    let req: GenerateRequest = parse_json(&body).map_err(ApiError::bad_request)?;
    let model = completion_model(&node, &req.model, "generate")?;
    let keep_alive = parse_keep_alive(req.keep_alive.as_ref()).map_err(ApiError::bad_request)?;
    let prompt = req.prompt.unwrap_or_default();
    let system = req.system.unwrap_or_default();
    let suffix = req.suffix.unwrap_or_default();
    if prompt.is_empty() && system.is_empty() && suffix.is_empty() {
        return load_only(&node, &model, &req.model, keep_alive, received, false).await;
    }
    let options = req.options.unwrap_or_default();
    let (tokens, reason) =
        Plan::token_budget(options.num_predict.map(|n| n as i64), node.default_tokens);
    let plan = Plan {
        prompt_tokens: [&system, &prompt, &suffix]
            .iter()
            .map(|t| estimate_tokens(t))
            .fold(1, u32::saturating_add),
        tokens,
        reason,
        seed: text_seed(&node, options.seed, &model.name, &prompt),
        keep_alive,
        model,
    };
    let context_seed = plan.seed;
    let job = generation::start(&node, plan, received).await?;
    let name = req.model;
    if req.stream.unwrap_or(true) {
        return Ok(ndjson(job.into_stream().map(move |event| {
            let (response, done) = match &event {
                Event::Token(t) => (t.as_str(), None),
                Event::Done(stats) => ("", Some(stats)),
            };
            line(&GenerateChunk::new(&name, response, done, context_seed))
        })));
    }
    let (text, stats) = job.run_to_end().await;
    Ok(json_response(&GenerateChunk::new(
        &name,
        &text,
        Some(&stats),
        context_seed,
    )))
}

/// One `/api/generate` object, fields in Ollama's order; the last one carries the timings.
#[derive(Serialize)]
struct GenerateChunk<'a> {
    model: &'a str,
    created_at: String,
    response: &'a str,
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    done_reason: Option<&'static str>,
    /// The token ids of prompt and answer, which a client may send back to continue. The ids
    /// are stand-ins, stable for the same request.
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<Vec<u64>>,
    #[serde(flatten)]
    timings: Option<Timings>,
}

impl<'a> GenerateChunk<'a> {
    fn new(model: &'a str, response: &'a str, done: Option<&Stats>, seed: u64) -> Self {
        GenerateChunk {
            model,
            created_at: rfc3339(SystemTime::now()),
            response,
            done: done.is_some(),
            done_reason: done.map(|s| s.reason.as_str()),
            context: done.map(|s| {
                let n = u64::from(s.prompt_eval_count) + u64::from(s.eval_count);
                (0..n).map(|i| combine(seed, i) % 128_000).collect()
            }),
            timings: done.map(Timings::from),
        }
    }
}

/// One `/api/chat` object, fields in Ollama's order.
#[derive(Serialize)]
struct ChatChunk<'a> {
    model: &'a str,
    created_at: String,
    message: AssistantMessage<'a>,
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    done_reason: Option<&'static str>,
    #[serde(flatten)]
    timings: Option<Timings>,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
}

impl<'a> ChatChunk<'a> {
    fn new(model: &'a str, content: &'a str, done: Option<&Stats>) -> Self {
        ChatChunk {
            model,
            created_at: rfc3339(SystemTime::now()),
            message: AssistantMessage {
                role: "assistant",
                content,
            },
            done: done.is_some(),
            done_reason: done.map(|s| s.reason.as_str()),
            timings: done.map(Timings::from),
        }
    }
}

/// The final object's durations, in nanoseconds as Ollama reports them.
#[derive(Serialize)]
struct Timings {
    total_duration: u64,
    load_duration: u64,
    prompt_eval_count: u32,
    prompt_eval_duration: u64,
    eval_count: u32,
    eval_duration: u64,
    /// Not Ollama's: the request's share of the simulated node's energy, the ledger's truth.
    wes_sim_energy_joules: f64,
}

impl From<&Stats> for Timings {
    fn from(s: &Stats) -> Self {
        Timings {
            total_duration: nanos(s.total),
            load_duration: nanos(s.load),
            prompt_eval_count: s.prompt_eval_count,
            prompt_eval_duration: nanos(s.prompt_eval),
            eval_count: s.eval_count,
            eval_duration: nanos(s.eval),
            wes_sim_energy_joules: s.energy_joules,
        }
    }
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    options: Option<Options>,
    #[serde(default)]
    keep_alive: Option<Value>,
}

#[derive(Deserialize)]
pub struct ChatMessage {
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
}

pub async fn chat(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let received = Instant::now();
    let req: ChatRequest = parse_json(&body).map_err(ApiError::bad_request)?;
    let model = completion_model(&node, &req.model, "chat")?;
    let keep_alive = parse_keep_alive(req.keep_alive.as_ref()).map_err(ApiError::bad_request)?;
    let messages = req.messages.unwrap_or_default();
    if messages.is_empty() {
        return load_only(&node, &model, &req.model, keep_alive, received, true).await;
    }
    let texts: Vec<String> = messages
        .iter()
        .map(|m| content_text(m.content.as_ref()))
        .collect();
    let options = req.options.unwrap_or_default();
    let (tokens, reason) =
        Plan::token_budget(options.num_predict.map(|n| n as i64), node.default_tokens);
    let transcript: String = messages
        .iter()
        .zip(&texts)
        .map(|(m, t)| format!("{}:{t}\n", m.role))
        .collect();
    let plan = Plan {
        prompt_tokens: chat_prompt_tokens(texts.iter().map(String::as_str)),
        tokens,
        reason,
        seed: text_seed(&node, options.seed, &model.name, &transcript),
        keep_alive,
        model,
    };
    let job = generation::start(&node, plan, received).await?;
    let name = req.model;
    if req.stream.unwrap_or(true) {
        return Ok(ndjson(job.into_stream().map(move |event| {
            let (content, done) = match &event {
                Event::Token(t) => (t.as_str(), None),
                Event::Done(stats) => ("", Some(stats)),
            };
            line(&ChatChunk::new(&name, content, done))
        })));
    }
    let (text, stats) = job.run_to_end().await;
    Ok(json_response(&ChatChunk::new(&name, &text, Some(&stats))))
}

/// An empty prompt (or no messages) only loads the model, or unloads it with
/// `keep_alive: 0`: how clients preload and evict models.
async fn load_only(
    node: &Arc<Node>,
    model: &Arc<ModelInfo>,
    name: &str,
    keep_alive: KeepAlive,
    received: Instant,
    chat: bool,
) -> ApiResult {
    let reason = if keep_alive == KeepAlive::UnloadNow {
        node.touch(model, keep_alive);
        "unload"
    } else {
        node.ensure_loaded(model, keep_alive).await;
        node.touch(model, keep_alive);
        "load"
    };
    let mut v = json!({
        "model": name,
        "created_at": rfc3339(SystemTime::now()),
        "done": true,
        "done_reason": reason,
    });
    if chat {
        v["message"] = json!({ "role": "assistant", "content": "" });
    } else {
        v["response"] = json!("");
    }
    v["total_duration"] = json!(nanos(received.elapsed()));
    Ok(Json(v).into_response())
}

pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One NDJSON line. Serializing these plain structs cannot fail; an empty line would be
/// skipped by clients rather than break the stream.
pub(crate) fn line(v: &impl Serialize) -> Bytes {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn json_response(v: &impl Serialize) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// One JSON object per line, flushed as each is produced.
pub(crate) fn ndjson(lines: impl Stream<Item = Bytes> + Send + 'static) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines.map(Ok::<_, Infallible>)),
    )
        .into_response()
}

#[derive(Deserialize)]
struct EmbedRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    keep_alive: Option<Value>,
    #[serde(default)]
    dimensions: Option<usize>,
}

pub async fn embed(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let received = Instant::now();
    let req: EmbedRequest = parse_json(&body).map_err(ApiError::bad_request)?;
    let model = resolve(&node, &req.model)?;
    let keep_alive = parse_keep_alive(req.keep_alive.as_ref()).map_err(ApiError::bad_request)?;
    let inputs = match req.input {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::bad_request("invalid input type")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::bad_request("invalid input type")),
    };
    let dims = embedding_dims(&model, req.dimensions)?;
    let tokens: u32 = inputs
        .iter()
        .map(|s| estimate_tokens(s).min(model.context_window()))
        .fold(0, u32::saturating_add);
    let stats = generation::embed(&node, &model, tokens, keep_alive, received).await?;
    let embeddings: Vec<Vec<f32>> = inputs
        .iter()
        .map(|s| truncated_embedding(&model.name, s, model.embedding_length, dims))
        .collect();
    Ok(Json(json!({
        "model": req.model,
        "embeddings": embeddings,
        "total_duration": nanos(stats.total),
        "load_duration": nanos(stats.load),
        "prompt_eval_count": tokens,
    }))
    .into_response())
}

/// `dimensions` shortens a vector (Matryoshka style) and renormalizes it; it cannot lengthen.
pub fn embedding_dims(model: &ModelInfo, requested: Option<usize>) -> Result<usize, ApiError> {
    let full = usize::try_from(model.embedding_length)
        .unwrap_or(384)
        .max(1);
    match requested {
        None => Ok(full),
        Some(d) if d >= 1 && d <= full => Ok(d),
        Some(d) => Err(ApiError::bad_request(format!(
            "dimensions must be between 1 and {full}, got {d}"
        ))),
    }
}

pub fn truncated_embedding(model: &str, text: &str, full: u64, dims: usize) -> Vec<f32> {
    let full = usize::try_from(full).unwrap_or(dims).max(dims);
    let mut v = embedding(model, text, full);
    if dims < full {
        v.truncate(dims);
        normalize(&mut v);
    }
    v
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    keep_alive: Option<Value>,
}

/// The legacy single-prompt endpoint, still used by older clients.
pub async fn embeddings(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let received = Instant::now();
    let req: EmbeddingsRequest = parse_json(&body).map_err(ApiError::bad_request)?;
    let model = resolve(&node, &req.model)?;
    let keep_alive = parse_keep_alive(req.keep_alive.as_ref()).map_err(ApiError::bad_request)?;
    let prompt = req.prompt.unwrap_or_default();
    if prompt.is_empty() {
        return Ok(Json(json!({ "embedding": [] })).into_response());
    }
    let tokens = estimate_tokens(&prompt).min(model.context_window());
    generation::embed(&node, &model, tokens, keep_alive, received).await?;
    let v = embedding(&model.name, &prompt, model.embedding_length as usize);
    Ok(Json(json!({ "embedding": v })).into_response())
}

#[derive(Deserialize)]
pub(crate) struct ModelRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    pub(crate) stream: Option<bool>,
}

impl ModelRequest {
    pub(crate) fn name(&self) -> Result<String, ApiError> {
        let name = self.model.clone().or_else(|| self.name.clone());
        name.filter(|n| !n.trim().is_empty())
            .ok_or_else(|| ApiError::bad_request("model is required"))
    }
}
