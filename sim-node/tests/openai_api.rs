//! The OpenAI-compatible API (`/v1`) against an in-process node, in the shapes Ollama
//! serves and the official `openai` client parses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use common::{profile, start};
use serde_json::{Value, json};

/// The JSON payloads of an SSE body, and whether it ended with `[DONE]`.
fn sse_events(lines: &[(std::time::Instant, String)]) -> (Vec<Value>, bool) {
    let mut events = Vec::new();
    let mut done = false;
    for (_, line) in lines {
        let data = line
            .strip_prefix("data: ")
            .expect("every line is a data line");
        if data == "[DONE]" {
            done = true;
        } else {
            assert!(!done, "nothing after [DONE]");
            events.push(serde_json::from_str(data).unwrap());
        }
    }
    (events, done)
}

fn openai_error(v: &Value, kind: &str) {
    let e = &v["error"];
    assert!(e["message"].is_string(), "{v}");
    assert_eq!(e["type"], kind, "{v}");
    assert!(e.get("param").is_some_and(Value::is_null), "{v}");
    assert!(e.get("code").is_some_and(Value::is_null), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_has_openai_shape_and_usage() {
    let sim = start(profile("rtx-4090")).await;
    let (status, v) = sim
        .post(
            "/v1/chat/completions",
            &json!({"model": "llama3.2:3b", "max_tokens": 7,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].is_u64());
    assert_eq!(v["model"], "llama3.2:3b");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(!choice["message"]["content"].as_str().unwrap().is_empty());
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 7);
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + 7
    );

    // Without a limit the answer ends on its own.
    let (_, v) = sim
        .post(
            "/v1/chat/completions",
            &json!({"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_streams_sse_chunks_usage_and_done() {
    let sim = start(profile("rtx-4090")).await;
    let body = json!({
        "model": "llama3.2:3b",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_completion_tokens": 6,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let (status, content_type, lines) = sim.stream_lines("/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/event-stream");
    let (events, done) = sse_events(&lines);
    assert!(done, "ends with data: [DONE]");
    assert_eq!(events.len(), 6 + 1 + 1, "tokens, final chunk, usage chunk");
    for e in &events {
        assert_eq!(e["object"], "chat.completion.chunk");
        assert_eq!(e["id"], events[0]["id"]);
    }
    for e in &events[..6] {
        let c = &e["choices"][0];
        assert_eq!(c["index"], 0);
        assert!(!c["delta"]["content"].as_str().unwrap().is_empty());
        assert!(c["finish_reason"].is_null());
    }
    assert_eq!(events[6]["choices"][0]["finish_reason"], "length");
    assert_eq!(events[7]["choices"], json!([]));
    assert_eq!(events[7]["usage"]["completion_tokens"], 6);

    // No usage chunk unless asked for.
    let body = json!({"model": "llama3.2:3b", "stream": true, "max_tokens": 2,
                      "messages": [{"role": "user", "content": "hi"}]});
    let (_, _, lines) = sim.stream_lines("/v1/chat/completions", &body).await;
    let (events, done) = sse_events(&lines);
    assert!(done);
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.get("usage").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_use_text_completion_shapes() {
    let sim = start(profile("rtx-4090")).await;
    let (status, v) = sim
        .post(
            "/v1/completions",
            &json!({"model": "llama3.2:3b", "prompt": "Once upon", "max_tokens": 4}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(
        v["choices"][0]["text"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count(),
        4
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(v["choices"][0]["logprobs"].is_null());
    assert_eq!(v["usage"]["completion_tokens"], 4);

    let body = json!({"model": "llama3.2:3b", "prompt": "Once upon", "max_tokens": 4,
                      "stream": true});
    let (_, content_type, lines) = sim.stream_lines("/v1/completions", &body).await;
    assert_eq!(content_type, "text/event-stream");
    let (events, done) = sse_events(&lines);
    assert!(done);
    let text: String = events
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, v["choices"][0]["text"].as_str().unwrap());
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_come_as_floats_or_base64() {
    let sim = start(profile("rtx-4090")).await;
    let (status, v) = sim
        .post(
            "/v1/embeddings",
            &json!({"model": "nomic-embed-text", "input": ["a", "b"]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "nomic-embed-text");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["object"], "embedding");
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["embedding"].as_array().unwrap().len(), 768);
    assert!(v["usage"]["prompt_tokens"].is_u64());
    assert!(v["usage"]["total_tokens"].is_u64());

    // The official client asks for base64 unless told otherwise.
    let (_, b) = sim
        .post(
            "/v1/embeddings",
            &json!({"model": "nomic-embed-text", "input": "a", "encoding_format": "base64"}),
        )
        .await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f64> = bytes
        .chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    let direct: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(floats.len(), direct.len());
    assert!(
        floats
            .iter()
            .zip(&direct)
            .all(|(a, b)| (a - b).abs() < 1e-6)
    );

    let (status, v) = sim
        .post(
            "/v1/embeddings",
            &json!({"model": "nomic-embed-text", "input": []}),
        )
        .await;
    assert_eq!(status, 400);
    openai_error(&v, "invalid_request_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_listed_and_retrievable() {
    let sim = start(profile("apple-m2")).await;
    let (status, v) = sim.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            assert!(m["created"].is_u64());
            assert!(m["owned_by"].is_string());
            m["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids, common::MODELS);
    let (status, v) = sim.get("/v1/models/llama3.2:3b").await;
    assert_eq!(status, 200);
    assert_eq!(v["id"], "llama3.2:3b");
    let (status, v) = sim.get("/v1/models/nope").await;
    assert_eq!(status, 404);
    openai_error(&v, "not_found_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_openai_shapes() {
    let sim = start(profile("apple-m2")).await;
    let (status, v) = sim
        .post(
            "/v1/chat/completions",
            &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(status, 404);
    openai_error(&v, "not_found_error");
    assert_eq!(
        v["error"]["message"],
        "model \"nope\" not found, try pulling it first"
    );
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
        let (status, v) = sim.post_raw(path, "{oops").await;
        assert_eq!(status, 400, "{path}");
        openai_error(&v, "invalid_request_error");
    }
    let (status, v) = sim
        .post(
            "/v1/chat/completions",
            &json!({"model": "llama3.2:3b", "messages": []}),
        )
        .await;
    assert_eq!(status, 400);
    openai_error(&v, "invalid_request_error");
}
