//! The OpenAI-compatible API as Ollama serves it under `/v1`: the same engine behind
//! OpenAI's shapes, Server-Sent Events for streams, and OpenAI's nested error object.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ollama::{self, embedding_dims, text_seed, truncated_embedding};
use super::{chat_prompt_tokens, content_text, parse_json};
use crate::catalog::ModelInfo;
use crate::generation::{self, Event, Plan, Stats};
use crate::node::{Busy, KeepAlive, Node};
use crate::text::{estimate_tokens, unix_seconds};

/// Ollama marks every OpenAI-compatible answer with this fingerprint.
const FINGERPRINT: &str = "fp_ollama";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id(prefix: &str) -> String {
    format!("{prefix}-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// `{"error": {"message", "type", "param", "code"}}`, typed by status as Ollama types it.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    message: String,
}

impl OpenAiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        OpenAiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        OpenAiError::new(StatusCode::BAD_REQUEST, message)
    }
}

/// The native API's checks (model required, not found, busy) with OpenAI's error shape.
impl From<ollama::ApiError> for OpenAiError {
    fn from(e: ollama::ApiError) -> Self {
        let (status, message) = e.into_parts();
        OpenAiError { status, message }
    }
}

impl From<Busy> for OpenAiError {
    fn from(b: Busy) -> Self {
        ollama::ApiError::from(b).into()
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::BAD_REQUEST => "invalid_request_error",
            StatusCode::NOT_FOUND => "not_found_error",
            _ => "api_error",
        };
        let body = json!({
            "error": {
                "message": self.message,
                "type": kind,
                "param": null,
                "code": null,
            }
        });
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, OpenAiError>;

fn completion_model(node: &Node, name: &str, verb: &str) -> Result<Arc<ModelInfo>, OpenAiError> {
    let model = ollama::resolve(node, name)?;
    if model.embedding_only {
        return Err(OpenAiError::bad_request(format!(
            "\"{name}\" does not support {verb}"
        )));
    }
    Ok(model)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    messages: Vec<ollama::ChatMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<f64>,
    #[serde(default)]
    max_completion_tokens: Option<f64>,
    #[serde(default)]
    seed: Option<f64>,
}

pub async fn chat_completions(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let received = Instant::now();
    let req: ChatRequest = parse_json(&body).map_err(OpenAiError::bad_request)?;
    let model = completion_model(&node, &req.model, "chat")?;
    if req.messages.is_empty() {
        return Err(OpenAiError::bad_request("messages must not be empty"));
    }
    let texts: Vec<String> = req
        .messages
        .iter()
        .map(|m| content_text(m.content.as_ref()))
        .collect();
    let transcript: String = req
        .messages
        .iter()
        .zip(&texts)
        .map(|(m, t)| format!("{}:{t}\n", m.role))
        .collect();
    let limit = req.max_completion_tokens.or(req.max_tokens);
    let (tokens, reason) = Plan::token_budget(limit.map(|n| n as i64), node.default_tokens);
    let plan = Plan {
        prompt_tokens: chat_prompt_tokens(texts.iter().map(String::as_str)),
        tokens,
        reason,
        seed: text_seed(&node, req.seed, &model.name, &transcript),
        keep_alive: KeepAlive::default(),
        model,
    };
    let job = generation::start(&node, plan, received).await?;
    let id = next_id("chatcmpl");
    let created = unix_seconds(SystemTime::now());
    let name = req.model;

    if !req.stream.unwrap_or(false) {
        let (text, stats) = job.run_to_end().await;
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "system_fingerprint": FINGERPRINT,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "finish_reason": stats.reason.as_str(),
            }],
            "usage": usage(&stats),
        }))
        .into_response());
    }

    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut v = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    };
    let events = job.into_stream().flat_map(move |event| {
        let out = match event {
            Event::Token(t) => vec![chunk(
                json!([{
                    "index": 0,
                    "delta": { "role": "assistant", "content": t },
                    "finish_reason": null,
                }]),
                None,
            )],
            Event::Done(stats) => {
                let mut out = vec![chunk(
                    json!([{
                        "index": 0,
                        "delta": { "role": "assistant", "content": "" },
                        "finish_reason": stats.reason.as_str(),
                    }]),
                    None,
                )];
                if include_usage {
                    out.push(chunk(json!([]), Some(usage(&stats))));
                }
                out
            }
        };
        futures::stream::iter(out)
    });
    Ok(sse(events))
}

#[derive(Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<f64>,
    #[serde(default)]
    seed: Option<f64>,
}

pub async fn completions(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let received = Instant::now();
    let req: CompletionRequest = parse_json(&body).map_err(OpenAiError::bad_request)?;
    let model = completion_model(&node, &req.model, "generate")?;
    // Ollama serves one choice, for the first prompt of a list.
    let prompt = match req.prompt {
        Some(Value::String(s)) => s,
        Some(Value::Array(items)) => items
            .first()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        None | Some(Value::Null) => String::new(),
        Some(_) => return Err(OpenAiError::bad_request("invalid prompt")),
    };
    let suffix = req.suffix.unwrap_or_default();
    let (tokens, reason) =
        Plan::token_budget(req.max_tokens.map(|n| n as i64), node.default_tokens);
    let plan = Plan {
        prompt_tokens: estimate_tokens(&prompt)
            .saturating_add(estimate_tokens(&suffix))
            .saturating_add(1),
        tokens,
        reason,
        seed: text_seed(&node, req.seed, &model.name, &prompt),
        keep_alive: KeepAlive::default(),
        model,
    };
    let job = generation::start(&node, plan, received).await?;
    let id = next_id("cmpl");
    let created = unix_seconds(SystemTime::now());
    let name = req.model;

    if !req.stream.unwrap_or(false) {
        let (text, stats) = job.run_to_end().await;
        return Ok(Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": name,
            "system_fingerprint": FINGERPRINT,
            "choices": [{
                "text": text,
                "index": 0,
                "logprobs": null,
                "finish_reason": stats.reason.as_str(),
            }],
            "usage": usage(&stats),
        }))
        .into_response());
    }

    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut v = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": name,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    };
    let events = job.into_stream().flat_map(move |event| {
        let out = match event {
            Event::Token(t) => vec![chunk(
                json!([{ "text": t, "index": 0, "logprobs": null, "finish_reason": null }]),
                None,
            )],
            Event::Done(stats) => {
                let mut out = vec![chunk(
                    json!([{
                        "text": "",
                        "index": 0,
                        "logprobs": null,
                        "finish_reason": stats.reason.as_str(),
                    }]),
                    None,
                )];
                if include_usage {
                    out.push(chunk(json!([]), Some(usage(&stats))));
                }
                out
            }
        };
        futures::stream::iter(out)
    });
    Ok(sse(events))
}

fn usage(stats: &Stats) -> Value {
    json!({
        "prompt_tokens": stats.prompt_eval_count,
        "completion_tokens": stats.eval_count,
        "total_tokens": stats.prompt_eval_count + stats.eval_count,
    })
}

/// `data: {...}\n\n` per chunk, then `data: [DONE]\n\n`, flushed as produced.
fn sse(events: impl Stream<Item = Value> + Send + 'static) -> Response {
    let frames = events
        .map(|v| {
            let mut frame = b"data: ".to_vec();
            frame.extend(serde_json::to_vec(&v).unwrap_or_default());
            frame.extend_from_slice(b"\n\n");
            Bytes::from(frame)
        })
        .chain(futures::stream::once(async {
            Bytes::from_static(b"data: [DONE]\n\n")
        }))
        .map(Ok::<_, Infallible>);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(frames),
    )
        .into_response()
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

/// Inputs as texts: strings as they are; token arrays (which this node cannot decode) as
/// their decimal spelling, so equal arrays still embed equally.
fn embedding_inputs(input: Option<Value>) -> Result<Vec<String>, OpenAiError> {
    let invalid = || OpenAiError::bad_request("invalid input");
    let tokens_text = |items: &[Value]| -> Result<String, OpenAiError> {
        items
            .iter()
            .map(|t| t.as_i64().map(|n| n.to_string()).ok_or_else(invalid))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join(" "))
    };
    let inputs = match input {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![tokens_text(&items)?]
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_array()
                    .ok_or_else(invalid)
                    .and_then(|t| tokens_text(t))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(invalid()),
    };
    if inputs.is_empty() {
        return Err(invalid());
    }
    Ok(inputs)
}

pub async fn embeddings(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let received = Instant::now();
    let req: EmbeddingsRequest = parse_json(&body).map_err(OpenAiError::bad_request)?;
    let model = ollama::resolve(&node, &req.model)?;
    let inputs = embedding_inputs(req.input)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(OpenAiError::bad_request(format!(
                "invalid encoding_format {other:?}: expected \"float\" or \"base64\""
            )));
        }
    };
    let dims = embedding_dims(&model, req.dimensions)?;
    let tokens: u32 = inputs
        .iter()
        .map(|s| estimate_tokens(s).min(model.context_window()))
        .fold(0, u32::saturating_add);
    generation::embed(&node, &model, tokens, KeepAlive::default(), received).await?;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let v = truncated_embedding(&model.name, text, model.embedding_length, dims);
            let embedding = if base64 {
                // OpenAI's base64 form: the little-endian f32 bytes.
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "embedding": embedding, "index": index })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response())
}

fn model_object(m: &ModelInfo) -> Value {
    json!({
        "id": m.name,
        "object": "model",
        "created": unix_seconds(m.modified_at),
        "owned_by": "library",
    })
}

pub async fn models(State(node): State<Arc<Node>>) -> Json<Value> {
    let data: Vec<Value> = node.models().iter().map(|m| model_object(m)).collect();
    Json(json!({ "object": "list", "data": data }))
}

pub async fn model(State(node): State<Arc<Node>>, Path(name): Path<String>) -> ApiResult {
    let m = node.find_model(&name).ok_or_else(|| {
        OpenAiError::new(StatusCode::NOT_FOUND, format!("model \"{name}\" not found"))
    })?;
    Ok(Json(model_object(&m)).into_response())
}
