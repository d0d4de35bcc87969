//! The native Ollama API against an in-process node: shapes, status codes, and timings that
//! agree with the pacing a client observes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{client_rate, profile, start};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_version_and_unknown_paths() {
    let sim = start(profile("apple-m2")).await;
    let r = sim.http.get(sim.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Ollama is running");
    let head = sim.http.head(sim.url("/")).send().await.unwrap();
    assert_eq!(head.status(), 200, "clients probe with HEAD /");
    let (status, v) = sim.get("/api/version").await;
    assert_eq!(status, 200);
    assert!(v["version"].as_str().unwrap().starts_with("0."));
    let r = sim.http.get(sim.url("/api/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_every_model_with_details() {
    let sim = start(profile("apple-m2")).await;
    let (status, v) = sim.get("/api/tags").await;
    assert_eq!(status, 200);
    let models = v["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, common::MODELS);
    for m in models {
        assert_eq!(m["model"], m["name"]);
        assert!(m["size"].as_u64().unwrap() > 0);
        assert_eq!(m["digest"].as_str().unwrap().len(), 64);
        assert!(m["modified_at"].as_str().unwrap().ends_with('Z'));
        let d = &m["details"];
        for key in ["format", "family", "parameter_size", "quantization_level"] {
            assert!(d[key].is_string(), "details.{key} in {m}");
        }
    }
    assert_eq!(models[0]["details"]["parameter_size"], "3.2B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ps_lists_loaded_models_until_unloaded() {
    let sim = start(profile("apple-m2")).await;
    let (_, v) = sim.get("/api/ps").await;
    assert_eq!(v["models"], json!([]), "nothing loaded at start");

    // An empty prompt only loads the model, as `ollama run` does before the first prompt.
    let (status, v) = sim
        .post("/api/generate", &json!({"model": "llama3.2:3b"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "load");
    let (_, v) = sim.get("/api/ps").await;
    let m = &v["models"][0];
    assert_eq!(m["name"], "llama3.2:3b");
    assert_eq!(m["model"], "llama3.2:3b");
    assert!(m["size_vram"].as_u64().unwrap() > 0);
    assert!(m["expires_at"].is_string());
    assert!(m["details"]["family"].is_string());
    assert_eq!(m["digest"].as_str().unwrap().len(), 64);

    let (_, v) = sim
        .post(
            "/api/generate",
            &json!({"model": "llama3.2:3b", "keep_alive": 0}),
        )
        .await;
    assert_eq!(v["done_reason"], "unload");
    let (_, v) = sim.get("/api/ps").await;
    assert_eq!(v["models"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_describes_a_model() {
    let sim = start(profile("apple-m2")).await;
    let (status, v) = sim
        .post("/api/show", &json!({"model": "llama3.2:3b"}))
        .await;
    assert_eq!(status, 200);
    for key in ["modelfile", "parameters", "template"] {
        assert!(v[key].is_string(), "{key} in {v}");
    }
    assert_eq!(v["details"]["quantization_level"], "Q4_K_M");
    assert_eq!(v["model_info"]["general.architecture"], "llama");
    assert_eq!(v["model_info"]["llama.embedding_length"], 3072);
    assert_eq!(v["capabilities"], json!(["completion"]));
    let (_, v) = sim
        .post("/api/show", &json!({"name": "nomic-embed-text:latest"}))
        .await;
    assert_eq!(v["capabilities"], json!(["embedding"]));
    let (status, v) = sim.post("/api/show", &json!({"model": "nope"})).await;
    assert_eq!(status, 404);
    assert_eq!(v, json!({"error": "model 'nope' not found"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_streams_paced_tokens_and_honest_timings() {
    let sim = start(profile("apple-m2")).await;
    let body = json!({
        "model": "llama3.2:3b",
        "prompt": "Why is the sky blue?",
        "options": {"num_predict": 40},
    });
    let (status, content_type, lines) = sim.stream_lines("/api/generate", &body).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/x-ndjson");
    assert_eq!(lines.len(), 41, "one token per line, then the final object");
    let chunks: Vec<Value> = lines
        .iter()
        .map(|(_, l)| serde_json::from_str(l).unwrap())
        .collect();
    for c in &chunks[..40] {
        assert_eq!(c["done"], false);
        assert_eq!(c["model"], "llama3.2:3b");
        assert!(!c["response"].as_str().unwrap().is_empty());
        assert!(c["created_at"].is_string());
    }
    let last = &chunks[40];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["response"], "");
    assert_eq!(last["eval_count"], 40);
    for key in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_duration",
    ] {
        assert!(last[key].is_u64(), "{key} in {last}");
    }
    assert!(last["context"].is_array());

    let profile_rate = 108.9;
    let claimed = 40.0 / (last["eval_duration"].as_u64().unwrap() as f64 / 1e9);
    let times: Vec<_> = lines[..40].iter().map(|(t, _)| *t).collect();
    let observed = client_rate(&times);
    assert!(
        (claimed - profile_rate).abs() / profile_rate < 0.1,
        "claimed {claimed}"
    );
    assert!(
        (observed - profile_rate).abs() / profile_rate < 0.25,
        "observed {observed}"
    );
    assert!(
        (observed - claimed).abs() / claimed < 0.25,
        "observed {observed} vs claimed {claimed}"
    );
    let total = last["total_duration"].as_u64().unwrap();
    let parts = last["prompt_eval_duration"].as_u64().unwrap()
        + last["eval_duration"].as_u64().unwrap()
        + last["load_duration"].as_u64().unwrap();
    assert!(total >= parts, "total {total} covers its parts {parts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_without_stream_answers_once_after_the_same_time() {
    let sim = start(profile("apple-m2")).await;
    let started = std::time::Instant::now();
    let (status, v) = sim
        .post(
            "/api/generate",
            &json!({"model": "llama3.2:3b", "prompt": "hi", "stream": false,
                    "options": {"num_predict": 20}}),
        )
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(status, 200);
    assert_eq!(v["done"], true);
    assert_eq!(v["eval_count"], 20);
    let words = v["response"].as_str().unwrap().split_whitespace().count();
    assert_eq!(words, 20, "one word per token: {v}");
    assert!(
        elapsed >= 20.0 / 108.9 * 0.9,
        "paced even when not streamed: {elapsed}"
    );

    // No num_predict: the model ends on its own after the default length.
    let (_, v) = sim
        .post(
            "/api/generate",
            &json!({"model": "llama3.2:3b", "prompt": "hi", "stream": false}),
        )
        .await;
    assert_eq!(v["done_reason"], "stop");
    assert_eq!(v["eval_count"], 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_request_same_text() {
    let sim = start(profile("rtx-4090")).await;
    let body = json!({"model": "llama3.2:3b", "prompt": "x", "stream": false,
                      "options": {"num_predict": 10, "seed": 3}});
    let (_, a) = sim.post("/api/generate", &body).await;
    let (_, b) = sim.post("/api/generate", &body).await;
    assert_eq!(a["response"], b["response"]);
    let other = json!({"model": "llama3.2:3b", "prompt": "y", "stream": false,
                       "options": {"num_predict": 10, "seed": 3}});
    let (_, c) = sim.post("/api/generate", &other).await;
    assert_ne!(a["response"], c["response"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streams_assistant_messages() {
    let sim = start(profile("rtx-4090")).await;
    let messages = json!([{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hello"}]);
    let body = json!({"model": "llama3.2:3b", "messages": messages,
                      "options": {"num_predict": 5}});
    let (status, _, lines) = sim.stream_lines("/api/chat", &body).await;
    assert_eq!(status, 200);
    let chunks: Vec<Value> = lines
        .iter()
        .map(|(_, l)| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(chunks.len(), 6);
    for c in &chunks[..5] {
        assert_eq!(c["message"]["role"], "assistant");
        assert!(!c["message"]["content"].as_str().unwrap().is_empty());
        assert_eq!(c["done"], false);
    }
    assert_eq!(chunks[5]["done"], true);
    assert_eq!(
        chunks[5]["message"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(chunks[5]["eval_count"], 5);
    assert!(chunks[5]["prompt_eval_count"].as_u64().unwrap() > 2);

    let body = json!({"model": "llama3.2:3b", "messages": messages, "stream": false,
                      "options": {"num_predict": 5}});
    let (status, v) = sim.post("/api/chat", &body).await;
    assert_eq!(status, 200);
    assert_eq!(v["message"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(v["message"]["content"], streamed.as_str());
    assert_eq!(v["done_reason"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_ollama_shapes() {
    let sim = start(profile("apple-m2")).await;
    for path in ["/api/generate", "/api/chat", "/api/embed"] {
        let (status, v) = sim
            .post(
                path,
                &json!({"model": "x", "prompt": "p", "input": "i",
                                "messages": [{"role": "user", "content": "m"}]}),
            )
            .await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(
            v,
            json!({"error": "model \"x\" not found, try pulling it first"})
        );
        let (status, v) = sim.post_raw(path, "{not json").await;
        assert_eq!(status, 400, "{path}");
        assert!(v["error"].as_str().unwrap().contains("line 1"), "{v}");
        let (status, v) = sim.post_raw(path, "").await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(v["error"], "missing request body");
        let (status, v) = sim.post(path, &json!({"prompt": "p"})).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(v["error"], "model is required");
    }
    let (status, v) = sim
        .post(
            "/api/generate",
            &json!({"model": "nomic-embed-text", "prompt": "p"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"], "\"nomic-embed-text\" does not support generate");
    let (status, v) = sim
        .post(
            "/api/generate",
            &json!({"model": "llama3.2:3b", "prompt": "p",
                                       "options": {"num_predict": "many"}}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let (status, _) = sim
        .post(
            "/api/generate",
            &json!({"model": "llama3.2:3b", "prompt": "p",
                                       "keep_alive": "someday"}),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_names_match_with_or_without_latest() {
    let sim = start(profile("rtx-4090")).await;
    let (status, v) = sim
        .post(
            "/api/embed",
            &json!({"model": "nomic-embed-text:latest", "input": "a"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        v["model"], "nomic-embed-text:latest",
        "echoes the name asked for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_returns_deterministic_unit_vectors() {
    let sim = start(profile("rtx-4090")).await;
    let (status, v) = sim
        .post(
            "/api/embed",
            &json!({"model": "nomic-embed-text", "input": ["one", "two"]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["model"], "nomic-embed-text");
    let e = v["embeddings"].as_array().unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].as_array().unwrap().len(), 768);
    let norm: f64 = e[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum();
    assert!((norm - 1.0).abs() < 1e-3);
    assert_ne!(e[0], e[1]);
    for key in ["total_duration", "load_duration", "prompt_eval_count"] {
        assert!(v[key].is_u64(), "{key}");
    }

    let (_, single) = sim
        .post(
            "/api/embed",
            &json!({"model": "nomic-embed-text", "input": "one"}),
        )
        .await;
    assert_eq!(single["embeddings"][0], e[0], "same text, same vector");
    let (_, short) = sim
        .post(
            "/api/embed",
            &json!({"model": "nomic-embed-text", "input": "one",
                                    "dimensions": 64}),
        )
        .await;
    assert_eq!(short["embeddings"][0].as_array().unwrap().len(), 64);
    let (status, _) = sim
        .post(
            "/api/embed",
            &json!({"model": "nomic-embed-text", "input": 5}),
        )
        .await;
    assert_eq!(status, 400);

    let (status, legacy) = sim
        .post(
            "/api/embeddings",
            &json!({"model": "nomic-embed-text", "prompt": "one"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(legacy["embedding"], e[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_copy_delete_change_the_model_list() {
    let sim = start(profile("apple-m2")).await;
    let (_, _, lines) = sim
        .stream_lines("/api/pull", &json!({"model": "qwen3:8b"}))
        .await;
    let last: Value = serde_json::from_str(&lines.last().unwrap().1).unwrap();
    assert_eq!(last, json!({"status": "success"}));
    let (status, _) = sim
        .post(
            "/api/copy",
            &json!({"source": "qwen3:8b", "destination": "mine"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, tags) = sim.get("/api/tags").await;
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"qwen3:8b") && names.contains(&"mine"));
    assert_eq!(tags["models"][3]["details"]["parameter_size"], "8.0B");

    let r = sim
        .http
        .delete(sim.url("/api/delete"))
        .json(&json!({"model": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = sim
        .http
        .delete(sim.url("/api/delete"))
        .json(&json!({"model": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "model 'mine' not found"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_model_pays_its_load_time_once() {
    let mut p = profile("apple-m2");
    p.load_gb_per_s = 20.0; // 2 GB in ~100 ms
    let sim = start(p).await;
    let body = json!({"model": "llama3.2:3b", "prompt": "hi", "stream": false,
                      "options": {"num_predict": 1}});
    let (_, cold) = sim.post("/api/generate", &body).await;
    let (_, warm) = sim.post("/api/generate", &body).await;
    let cold_load = cold["load_duration"].as_u64().unwrap();
    let warm_load = warm["load_duration"].as_u64().unwrap();
    assert!(cold_load >= 90_000_000, "{cold_load}");
    assert!(warm_load < 10_000_000, "{warm_load}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503() {
    let mut p = profile("fanless-edge");
    p.max_parallel = 1;
    p.max_queue = 0;
    let sim = start(p).await;
    // Holds the only slot until dropped.
    let long = sim
        .http
        .post(sim.url("/api/generate"))
        .json(&json!({"model": "llama3.2:3b", "prompt": "hi", "options": {"num_predict": 500}}))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 200);
    let (status, v) = sim
        .post(
            "/api/generate",
            &json!({"model": "llama3.2:3b", "prompt": "again"}),
        )
        .await;
    assert_eq!(status, 503);
    assert!(v["error"].as_str().unwrap().starts_with("server busy"));
    drop(long);
    sim.wait_state(Duration::from_secs(5), |s| s["in_flight"] == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_prompts_are_cut_to_the_context_window() {
    let sim = start(profile("rtx-4090")).await;
    let prompt = "word ".repeat(40_000);
    let (status, v) = sim
        .post(
            "/api/generate",
            &json!({"model": "llama3.2:3b", "prompt": prompt, "stream": false,
                    "options": {"num_predict": 1}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["prompt_eval_count"], 4096);
    assert_eq!(v["context"].as_array().unwrap().len(), 4097);
    // Prefill is paced too: 4096 tokens at the 4090's 15,000 tok/s.
    let prefill = v["prompt_eval_duration"].as_f64().unwrap() / 1e9;
    assert!((prefill - 4096.0 / 15_000.0).abs() < 0.05, "{prefill}");
}
