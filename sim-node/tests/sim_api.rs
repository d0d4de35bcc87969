//! The simulator's own surface and the physics seen through HTTP: the state a reporter's
//! `command` sensor reads, forced thermal events, throttled and shared decode rates, and a
//! node heating under load and cooling when idle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{client_rate, profile, start, start_with};
use serde_json::{Value, json};

/// What a claimed `eval_count / eval_duration` says for one non-streamed generation.
async fn claimed_rate(sim: &common::Sim, tokens: u32) -> f64 {
    let (status, v) = sim
        .post(
            "/api/generate",
            &json!({"model": "llama3.2:3b", "prompt": "x", "stream": false,
                    "options": {"num_predict": tokens}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v["eval_count"].as_f64().unwrap() / (v["eval_duration"].as_f64().unwrap() / 1e9)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_the_command_sensor_contract() {
    let sim = start(profile("apple-m2")).await;
    let s = sim.state().await;
    assert!(s["watts"].as_f64().unwrap() > 0.0);
    assert!(s["energy_joules"].as_f64().unwrap() >= 0.0);
    assert!(s["temperature_c"].as_f64().unwrap() > 20.0);
    assert_eq!(s["thermal_state"], "Normal");
    assert_eq!(s["in_flight"], 0);
    assert_eq!(s["tok_s_now"], 0.0);
    assert_eq!(s["profile"], "apple-m2");
    let idle_watts = s["watts"].as_f64().unwrap();
    assert_eq!(idle_watts, s["idle_watts"].as_f64().unwrap());

    // Energy only grows, and faster under load.
    let e0 = s["energy_joules"].as_f64().unwrap();
    let generation = {
        let sim_base = sim.base.clone();
        let http = sim.http.clone();
        tokio::spawn(async move {
            http.post(format!("{sim_base}/api/generate"))
                .json(
                    &json!({"model": "llama3.2:3b", "prompt": "x", "stream": false,
                              "options": {"num_predict": 60}}),
                )
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    let busy = sim
        .wait_state(Duration::from_secs(5), |s| {
            s["in_flight"] == 1 && s["tok_s_now"].as_f64().unwrap() > 20.0
        })
        .await;
    assert!(busy["watts"].as_f64().unwrap() > idle_watts * 3.0, "{busy}");
    assert!(busy["energy_joules"].as_f64().unwrap() > e0);
    generation.await.unwrap();
    let after = sim.state().await;
    assert!(after["energy_joules"].as_f64().unwrap() >= busy["energy_joules"].as_f64().unwrap());
    assert_eq!(after["in_flight"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_heat_throttles_decoding_and_the_node_recovers() {
    let sim = start(profile("apple-m2")).await;
    let cool = claimed_rate(&sim, 30).await;
    assert!((cool - 108.9).abs() / 108.9 < 0.1, "{cool}");

    let (status, s) = sim
        .post("/wes-sim/heat", &json!({"temperature_c": 110.0}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(s["thermal_state"], "Critical");
    assert_eq!(s["speed_factor"], 0.5);
    let hot = claimed_rate(&sim, 30).await;
    assert!(
        (hot / cool - 0.5).abs() < 0.08,
        "Critical halves tok/s: {hot} vs {cool}"
    );

    let (_, s) = sim
        .post("/wes-sim/heat", &json!({"temperature_c": 95.0}))
        .await;
    assert_eq!(s["thermal_state"], "Serious");
    let serious = claimed_rate(&sim, 30).await;
    assert!((serious / cool - 0.7).abs() < 0.08, "{serious} vs {cool}");

    let (_, s) = sim
        .post("/wes-sim/heat", &json!({"temperature_c": 40.0}))
        .await;
    assert_eq!(s["thermal_state"], "Normal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heat_rejects_nonsense() {
    let sim = start(profile("apple-m2")).await;
    for body in [
        json!({}),
        json!({"temperature_c": 1000.0}),
        json!({"temperature_c": "hot"}),
        json!({"celsius": 90}),
    ] {
        let (status, v) = sim.post("/wes-sim/heat", &body).await;
        assert_eq!(status, 400, "{body}");
        assert!(v["error"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_throughput_sublinearly() {
    let sim = start(profile("apple-m2")).await;
    let single = claimed_rate(&sim, 30).await;

    // Four at once on a node with concurrency exponent 0.5: each gets about half the
    // single-stream rate, together about twice as much.
    let body = json!({"model": "llama3.2:3b", "prompt": "x",
                      "options": {"num_predict": 40}});
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let http = sim.http.clone();
            let url = sim.url("/api/generate");
            let body = body.clone();
            tokio::spawn(async move {
                let mut r = http.post(url).json(&body).send().await.unwrap();
                let mut times = Vec::new();
                let mut last = Value::Null;
                let mut pending = Vec::new();
                while let Some(chunk) = r.chunk().await.unwrap() {
                    pending.extend_from_slice(&chunk);
                    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        let v: Value = serde_json::from_slice(&line).unwrap();
                        if v["done"] == true {
                            last = v;
                        } else {
                            times.push(Instant::now());
                        }
                    }
                }
                (times, last)
            })
        })
        .collect();
    let mut per_stream = Vec::new();
    for run in runs {
        let (times, last) = run.await.unwrap();
        assert_eq!(times.len(), 40);
        assert_eq!(last["eval_count"], 40);
        per_stream.push(client_rate(&times[5..35]));
    }
    let aggregate: f64 = per_stream.iter().sum();
    for r in &per_stream {
        assert!(
            *r < single * 0.75,
            "each stream slows down: {r} vs {single}"
        );
    }
    assert!(
        aggregate > single * 1.4,
        "aggregate grows: {aggregate} vs {single}"
    );
    assert!(
        aggregate < single * 2.8,
        "but sublinearly: {aggregate} vs {single}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanless_node_heats_under_load_and_cools_when_idle() {
    // A hundredfold thermal clock: the edge box's 60 s time constant becomes 0.6 s.
    let sim = start_with(profile("fanless-edge"), 100.0).await;
    let long = sim
        .http
        .post(sim.url("/api/generate"))
        .json(&json!({"model": "smollm2:135m", "prompt": "x",
                      "options": {"num_predict": 5000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 200);
    let mut seen = Vec::new();
    let hot = sim
        .wait_state(Duration::from_secs(10), |s| {
            let state = s["thermal_state"].as_str().unwrap().to_string();
            if seen.last() != Some(&state) {
                seen.push(state.clone());
            }
            state == "Serious"
        })
        .await;
    assert_eq!(
        seen[..2],
        ["Normal", "Fair"],
        "passes Fair on the way: {seen:?}"
    );
    assert!(hot["temperature_c"].as_f64().unwrap() >= 80.0);
    assert!(hot["speed_factor"].as_f64().unwrap() < 1.0);

    drop(long);
    let cooled = sim
        .wait_state(Duration::from_secs(10), |s| s["thermal_state"] == "Normal")
        .await;
    assert_eq!(cooled["in_flight"], 0);
    assert!(cooled["temperature_c"].as_f64().unwrap() < 70.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_endpoint_shows_the_loaded_profile() {
    let sim = start(profile("h100")).await;
    let (status, v) = sim.get("/wes-sim/profile").await;
    assert_eq!(status, 200);
    assert_eq!(v["name"], "h100");
    assert_eq!(v["max_parallel"], 16);
    assert!(v["thermal"]["critical_c"].is_number());
}
