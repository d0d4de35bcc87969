//! A minimal Ollama-shaped node that answers as fast as the machine allows, so that what a
//! benchmark measures is the proxy in front of it, not the node.
//!
//! - `POST /api/generate`: one fixed JSON answer at once (whatever the body says).
//! - `POST /api/chat`: an NDJSON stream whose first token line goes out at once; the body's
//!   `options.num_predict` sets the token count (default 4) and the non-Ollama
//!   `options.token_interval_ms` the pause between later lines (default 0), which makes slow
//!   streams for the concurrency test.
//! - `GET /api/tags`: the one model, so a reporter reports it.
//! - `POST /v1/chat/completions`: OpenAI-shaped; with `"stream": true` an SSE stream of
//!   `data: {chunk}` events (`max_tokens` of them, default 4) ending with `data: [DONE]`,
//!   otherwise one fixed `chat.completion` at once.
//! - What vllm-router and sglang-router ask a worker before and while routing to it: `GET
//!   /health` (both, at start and every minute; `/health_generate`, which sglang-router can be
//!   told to use instead, too), and sglang-router's metadata at registration, `/server_info`
//!   and `/model_info` (or their older `/get_*` names), plus `/v1/models`. The metadata names
//!   the model but gives no `model_path`: from one, sglang-router would try to fetch a
//!   tokenizer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

struct Answers {
    model: String,
    generate: Bytes,
    tags: Bytes,
    token_line: Bytes,
    done_line: Bytes,
    openai_chat: Bytes,
    openai_chunk: Bytes,
    /// The chunk with `finish_reason`, then `[DONE]`.
    openai_end: Bytes,
    models: Bytes,
    server_info: Bytes,
    model_info: Bytes,
}

impl Answers {
    fn new(model: &str) -> Answers {
        let generate = serde_json::json!({
            "model": model,
            "created_at": "2025-01-01T00:00:00Z",
            "response": "Hello.",
            "done": true,
            "done_reason": "stop",
            "total_duration": 1_000_000,
            "load_duration": 0,
            "prompt_eval_count": 4,
            "prompt_eval_duration": 100_000,
            "eval_count": 2,
            "eval_duration": 500_000,
        });
        let tags = serde_json::json!({
            "models": [{
                "name": model,
                "model": model,
                "size": 2_019_393_189u64,
                "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                "details": {"format": "gguf", "family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
            }]
        });
        let token_line = serde_json::json!({
            "model": model,
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "tok"},
            "done": false,
        });
        let done_line = serde_json::json!({
            "model": model,
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""},
            "done": true,
            "done_reason": "stop",
            "eval_count": 4,
            "eval_duration": 4_000_000,
        });
        let created = 1_735_689_600;
        let openai_chat = serde_json::json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello."},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
        });
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            serde_json::json!({
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
        };
        let openai_chunk = chunk(
            serde_json::json!({"role": "assistant", "content": "tok"}),
            None,
        );
        let openai_end = chunk(serde_json::json!({}), Some("stop"));
        let models = serde_json::json!({
            "object": "list",
            "data": [{"id": model, "object": "model", "created": created, "owned_by": "wes-bench"}],
        });
        let server_info = serde_json::json!({"served_model_name": model, "version": "wes-bench"});
        let model_info = serde_json::json!({
            "is_generation": true,
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
        });
        let line = |v: serde_json::Value| Bytes::from(format!("{v}\n"));
        Answers {
            model: model.to_owned(),
            generate: Bytes::from(generate.to_string()),
            tags: Bytes::from(tags.to_string()),
            token_line: line(token_line),
            done_line: line(done_line),
            openai_chat: Bytes::from(openai_chat.to_string()),
            openai_chunk: Bytes::from(format!("data: {openai_chunk}\n\n")),
            openai_end: Bytes::from(format!("data: {openai_end}\n\ndata: [DONE]\n\n")),
            models: Bytes::from(models.to_string()),
            server_info: Bytes::from(server_info.to_string()),
            model_info: Bytes::from(model_info.to_string()),
        }
    }
}

pub async fn run(listen: SocketAddr, model: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    // Scripts read this line to learn the port.
    println!("wes-bench node listening on {}", listener.local_addr()?);
    let answers = Arc::new(Answers::new(model));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors under the concurrency test: back off, keep serving.
                eprintln!("wes-bench node: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let answers = answers.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(answers.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    answers: Arc<Answers>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                "application/json",
                Bytes::new(),
            ));
        }
    };
    let json = "application/json";
    Ok(match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/api/generate") => reply(StatusCode::OK, json, answers.generate.clone()),
        (&Method::POST, "/api/chat") => chat(&answers, &body),
        (&Method::POST, "/v1/chat/completions") => openai_chat(&answers, &body),
        (&Method::GET, "/api/tags") => reply(StatusCode::OK, json, answers.tags.clone()),
        (&Method::GET, "/health" | "/health_generate") => {
            reply(StatusCode::OK, "text/plain", Bytes::new())
        }
        (&Method::GET, "/v1/models") => reply(StatusCode::OK, json, answers.models.clone()),
        (&Method::GET, "/server_info" | "/get_server_info") => {
            reply(StatusCode::OK, json, answers.server_info.clone())
        }
        (&Method::GET, "/model_info" | "/get_model_info") => {
            reply(StatusCode::OK, json, answers.model_info.clone())
        }
        (&Method::GET, "/api/version") => reply(
            StatusCode::OK,
            json,
            Bytes::from_static(br#"{"version":"0.6.0"}"#),
        ),
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/plain",
            Bytes::from_static(b"Ollama is running"),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            json,
            Bytes::from(format!(
                r#"{{"error":"no such endpoint on the bench node ({})"}}"#,
                answers.model
            )),
        ),
    })
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn chat(answers: &Answers, body: &[u8]) -> Response<Body> {
    let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let option = |name: &str| request["options"][name].as_u64();
    let tokens = option("num_predict").unwrap_or(4);
    let interval = Duration::from_millis(option("token_interval_ms").unwrap_or(0));
    let lines = token_stream(
        answers.token_line.clone(),
        answers.done_line.clone(),
        tokens,
        interval,
    );
    let mut response = Response::new(lines);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

fn openai_chat(answers: &Answers, body: &[u8]) -> Response<Body> {
    let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if request["stream"] != true {
        return reply(
            StatusCode::OK,
            "application/json",
            answers.openai_chat.clone(),
        );
    }
    let tokens = request["max_tokens"].as_u64().unwrap_or(4);
    let events = token_stream(
        answers.openai_chunk.clone(),
        answers.openai_end.clone(),
        tokens,
        Duration::ZERO,
    );
    let mut response = Response::new(events);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    response
}

/// `tokens` copies of `token`, `interval` apart after the first, then `done`.
fn token_stream(token: Bytes, done: Bytes, tokens: u64, interval: Duration) -> Body {
    let tokens = tokens.clamp(1, 100_000);
    let lines = futures::stream::unfold(0u64, move |i| {
        let (token, done) = (token.clone(), done.clone());
        async move {
            if i > tokens {
                return None;
            }
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            let line = if i < tokens { token } else { done };
            Some((Ok::<_, Infallible>(Frame::data(line)), i + 1))
        }
    });
    BodyExt::boxed(StreamBody::new(lines))
}
