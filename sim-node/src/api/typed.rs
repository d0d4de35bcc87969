//! The two APIs whose streams are typed events (`event: <type>` then `data: {...}`): OpenAI's
//! Responses API (`POST /v1/responses`) and Ollama's Anthropic-compatible Messages API
//! (`POST /v1/messages`). Both answer from the same engine as every other endpoint.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ollama::{self, text_seed};
use super::{chat_prompt_tokens, content_text, parse_json};
use crate::generation::{self, DoneReason, Event, Plan, Stats};
use crate::node::{Busy, KeepAlive, Node};
use crate::text::unix_seconds;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id(prefix: &str) -> String {
    format!("{prefix}_{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// `event: <type>` and `data: {...}` per event, flushed as produced; no terminator (the last
/// event says the answer is complete).
fn typed_sse(events: impl Stream<Item = Value> + Send + 'static) -> Response {
    let frames = events.map(|v| {
        let kind = v["type"].as_str().unwrap_or("message").to_owned();
        let data = serde_json::to_string(&v).unwrap_or_default();
        Ok::<_, Infallible>(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(frames),
    )
        .into_response()
}

/// An error in the shape of the API asked: OpenAI's nested object, or Anthropic's
/// `{"type": "error", "error": {"type", "message"}}`.
#[derive(Debug)]
pub struct TypedError {
    anthropic: bool,
    status: StatusCode,
    message: String,
}

impl TypedError {
    fn bad_request(anthropic: bool, message: impl Into<String>) -> Self {
        TypedError {
            anthropic,
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn from_native(anthropic: bool, e: ollama::ApiError) -> Self {
        let (status, message) = e.into_parts();
        TypedError {
            anthropic,
            status,
            message,
        }
    }
}

impl IntoResponse for TypedError {
    fn into_response(self) -> Response {
        let body = if self.anthropic {
            let kind = match self.status {
                StatusCode::BAD_REQUEST => "invalid_request_error",
                StatusCode::NOT_FOUND => "not_found_error",
                StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": self.message}})
        } else {
            let kind = match self.status {
                StatusCode::BAD_REQUEST => "invalid_request_error",
                StatusCode::NOT_FOUND => "not_found_error",
                _ => "api_error",
            };
            json!({"error": {"message": self.message, "type": kind, "param": null, "code": null}})
        };
        (self.status, Json(body)).into_response()
    }
}

type TypedResult = Result<Response, TypedError>;

/// The plan for a chat given as (role, text) turns.
async fn start(
    node: &Arc<Node>,
    anthropic: bool,
    model: &str,
    turns: &[(String, String)],
    limit: Option<f64>,
    received: Instant,
) -> Result<generation::Job, TypedError> {
    let model = ollama::resolve(node, model).map_err(|e| TypedError::from_native(anthropic, e))?;
    if model.embedding_only {
        return Err(TypedError::bad_request(
            anthropic,
            format!("\"{}\" does not support chat", model.name),
        ));
    }
    if turns.is_empty() {
        return Err(TypedError::bad_request(anthropic, "no input messages"));
    }
    let transcript: String = turns.iter().map(|(r, t)| format!("{r}:{t}\n")).collect();
    let (tokens, reason) = Plan::token_budget(limit.map(|n| n as i64), node.default_tokens);
    let plan = Plan {
        prompt_tokens: chat_prompt_tokens(turns.iter().map(|(_, t)| t.as_str())),
        tokens,
        reason,
        seed: text_seed(node, None, &model.name, &transcript),
        keep_alive: KeepAlive::default(),
        model,
    };
    generation::start(node, plan, received)
        .await
        .map_err(|b: Busy| TypedError::from_native(anthropic, b.into()))
}

#[derive(Deserialize)]
struct ResponsesRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    max_output_tokens: Option<f64>,
    #[serde(default)]
    stream: Option<bool>,
}

/// `POST /v1/responses`: stateless, as Ollama serves it.
pub async fn responses(State(node): State<Arc<Node>>, body: Bytes) -> TypedResult {
    let received = Instant::now();
    let req: ResponsesRequest = parse_json(&body).map_err(|e| TypedError::bad_request(false, e))?;
    let mut turns: Vec<(String, String)> = Vec::new();
    if let Some(system) = &req.instructions {
        turns.push(("system".into(), system.clone()));
    }
    match &req.input {
        Some(Value::String(s)) => turns.push(("user".into(), s.clone())),
        Some(Value::Array(items)) => {
            for item in items {
                let role = item["role"].as_str().unwrap_or("user").to_owned();
                turns.push((role, content_text(item.get("content"))));
            }
        }
        _ => return Err(TypedError::bad_request(false, "input is required")),
    }
    let job = start(
        &node,
        false,
        &req.model,
        &turns,
        req.max_output_tokens,
        received,
    )
    .await?;
    let id = next_id("resp");
    let item_id = next_id("msg");
    let created = unix_seconds(SystemTime::now());
    let name = req.model;
    let response = move |status: &str, text: Option<&str>, stats: Option<&Stats>| {
        let output = match text {
            Some(t) => json!([{
                "type": "message", "id": item_id, "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": t, "annotations": []}],
            }]),
            None => json!([]),
        };
        let mut r = json!({
            "id": id, "object": "response", "created_at": created, "status": status,
            "model": name, "output": output, "parallel_tool_calls": true,
            "tool_choice": "auto", "tools": [], "error": null, "incomplete_details": null,
        });
        if let Some(s) = stats {
            r["usage"] = json!({
                "input_tokens": s.prompt_eval_count,
                "output_tokens": s.eval_count,
                "total_tokens": s.prompt_eval_count + s.eval_count,
            });
        }
        r
    };
    if !req.stream.unwrap_or(false) {
        let (text, stats) = job.run_to_end().await;
        return Ok(Json(response("completed", Some(&text), Some(&stats))).into_response());
    }
    let item = next_id("msg");
    let mut text = String::new();
    let mut seq = 0u64;
    let head = vec![
        json!({"type": "response.created", "response": response("in_progress", None, None)}),
        json!({"type": "response.in_progress", "response": response("in_progress", None, None)}),
        json!({"type": "response.output_item.added", "output_index": 0,
               "item": {"type": "message", "id": item, "status": "in_progress", "role": "assistant", "content": []}}),
        json!({"type": "response.content_part.added", "item_id": item, "output_index": 0,
               "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
    ];
    let body = job.into_stream().flat_map(move |event| {
        let out = match event {
            Event::Token(t) => {
                text.push_str(&t);
                vec![
                    json!({"type": "response.output_text.delta", "item_id": item,
                            "output_index": 0, "content_index": 0, "delta": t}),
                ]
            }
            Event::Done(stats) => vec![
                json!({"type": "response.output_text.done", "item_id": item, "output_index": 0,
                       "content_index": 0, "text": text}),
                json!({"type": "response.completed",
                       "response": response("completed", Some(&text), Some(&stats))}),
            ],
        };
        futures::stream::iter(out)
    });
    let numbered = futures::stream::iter(head).chain(body).map(move |mut v| {
        v["sequence_number"] = json!(seq);
        seq += 1;
        v
    });
    Ok(typed_sse(numbered))
}

#[derive(Deserialize)]
struct MessagesRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    messages: Vec<ollama::ChatMessage>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    max_tokens: Option<f64>,
    #[serde(default)]
    stream: Option<bool>,
}

fn stop_reason(reason: DoneReason) -> &'static str {
    match reason {
        DoneReason::Stop => "end_turn",
        DoneReason::Length => "max_tokens",
    }
}

/// `POST /v1/messages`: Anthropic's Messages API, as Ollama serves it.
pub async fn messages(State(node): State<Arc<Node>>, body: Bytes) -> TypedResult {
    let received = Instant::now();
    let req: MessagesRequest = parse_json(&body).map_err(|e| TypedError::bad_request(true, e))?;
    let mut turns: Vec<(String, String)> = Vec::new();
    if let Some(system) = &req.system {
        turns.push(("system".into(), content_text(Some(system))));
    }
    for m in &req.messages {
        turns.push((m.role.clone(), content_text(m.content.as_ref())));
    }
    let job = start(&node, true, &req.model, &turns, req.max_tokens, received).await?;
    let id = next_id("msg");
    let name = req.model;
    if !req.stream.unwrap_or(false) {
        let (text, stats) = job.run_to_end().await;
        return Ok(Json(json!({
            "id": id, "type": "message", "role": "assistant", "model": name,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason(stats.reason), "stop_sequence": null,
            "usage": {"input_tokens": stats.prompt_eval_count, "output_tokens": stats.eval_count},
        }))
        .into_response());
    }
    let prompt_tokens = job.prompt_tokens();
    let head = vec![
        json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": name, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": 0},
        }}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
    ];
    let body = job.into_stream().flat_map(|event| {
        let out = match event {
            Event::Token(t) => vec![json!({"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": t}})],
            Event::Done(stats) => vec![
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "message_delta",
                       "delta": {"stop_reason": stop_reason(stats.reason), "stop_sequence": null},
                       "usage": {"output_tokens": stats.eval_count}}),
                json!({"type": "message_stop"}),
            ],
        };
        futures::stream::iter(out)
    });
    Ok(typed_sse(futures::stream::iter(head).chain(body)))
}
