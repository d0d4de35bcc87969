//! Routing end to end: real `wes-sim-node` nodes (Ollama API with a speed model), real
//! `wes-reporter`s whose `command` sensor reads files this test rewrites, and the real proxy.
//! Traffic follows penalized WES, leaves a node that throttles from its next samples on, never
//! reaches a Critical node, overflows a full node, and respects draining.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Proxy, Reporter, Running, free_port, wait_for, write_atomically};

const INTERVAL_MS: u64 = 400;
const MODEL: &str = "llama3.2:3b";

fn sim_node(dir: &Path, profile: &str) -> (Running, SocketAddr) {
    support::sim_node(dir, profile, MODEL)
}

struct Node {
    id: &'static str,
    _sim: Running,
    addr: SocketAddr,
    sensor: PathBuf,
}

fn sensor_json(watts: f64, state: &str) -> String {
    json!({"watts": watts, "thermal_state": state}).to_string()
}

async fn generate(http: &reqwest::Client, proxy: &Proxy, tokens: u32) -> reqwest::Response {
    let body = json!({"model": MODEL, "prompt": "hi", "stream": false, "options": {"num_predict": tokens}});
    let r = http
        .post(format!("http://{}/api/generate", proxy.api))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r
}

fn node_of(r: &reqwest::Response) -> String {
    r.headers()["x-wes-node"].to_str().unwrap().to_owned()
}

/// Where `n` small requests went, one after another.
async fn destinations(http: &reqwest::Client, proxy: &Proxy, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(node_of(&generate(http, proxy, 4).await));
    }
    seen
}

async fn ranked_ids(proxy: &Proxy) -> Vec<String> {
    proxy.ranking().await["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["rank"].is_u64())
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn traffic_follows_penalized_wes_thermal_state_capacity_and_draining() {
    let dir = tempfile::tempdir().unwrap();
    // Decode rates come from the profiles (apple-m2 ~109 tok/s, rtx-4090 ~240, ryzen-cpu ~20);
    // watts from the sensor files: WES ≈ 2.2, 1.45 and 0.67, margins wide enough for probes
    // timed on a loaded machine; Serious (÷ 1.75) puts fast at 1.25, below mid.
    let specs = [
        ("fast", "apple-m2", 50.0),
        ("mid", "rtx-4090", 165.0),
        ("slow", "ryzen-cpu", 30.0),
    ];
    let nodes: Vec<Node> = specs
        .iter()
        .map(|(id, profile, watts)| {
            let (sim, addr) = sim_node(dir.path(), profile);
            let sensor = dir.path().join(format!("{id}.json"));
            write_atomically(&sensor, &sensor_json(*watts, "Normal"));
            Node {
                id,
                _sim: sim,
                addr,
                sensor,
            }
        })
        .collect();
    let mut config = format!(
        "[listen]\napi = \"127.0.0.1:{}\"\ntelemetry = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n\
         [routing]\npolicy = \"top\"\nstale_after = \"3s\"\nexploration_share = 0.0\n",
        free_port()
    );
    for n in &nodes {
        // The top node takes one request at a time, so overflow is easy to see.
        let max = if n.id == "fast" { 1 } else { 4 };
        config.push_str(&format!(
            "\n[[nodes]]\nid = \"{}\"\nurl = \"http://{}\"\ntoken = \"tok-{}\"\nmax_concurrency = {max}\n",
            n.id, n.addr, n.id
        ));
    }
    let proxy = Proxy::start(dir.path(), &config);
    let interval = format!("{INTERVAL_MS}ms");
    let _reporters: Vec<Reporter> = nodes
        .iter()
        .map(|n| {
            let command = format!("cat {}", n.sensor.display());
            Reporter::start(
                dir.path(),
                &[
                    "--node-id",
                    n.id,
                    "--token",
                    &format!("tok-{}", n.id),
                    "--proxy",
                    &proxy.telemetry_url(),
                    "--interval",
                    &interval,
                    "--sensor",
                    "command",
                    "--sensor-command",
                    &command,
                    "--ollama",
                    &format!("http://{}", n.addr),
                    "--probe-model",
                    MODEL,
                    "--probe-interval",
                    "1h",
                ],
            )
        })
        .collect();
    let order = wait_for(
        Duration::from_secs(60),
        "three probed, ranked nodes",
        || async {
            let ids = ranked_ids(&proxy).await;
            (ids.len() == 3).then_some(ids)
        },
    )
    .await;
    assert_eq!(order, ["fast", "mid", "slow"], "{}", proxy.ranking().await);
    let http = reqwest::Client::new();

    // Each reporter reads its node's /api/ps: the probe loaded the model, with Ollama's
    // keep_alive, and the node says nothing of its memory.
    let ranking = wait_for(
        Duration::from_secs(10),
        "loaded models on /ranking",
        || async {
            let r = proxy.ranking().await;
            let all = r["nodes"].as_array().unwrap().iter().all(|n| {
                n["loaded_models"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|m| m["name"] == MODEL))
            });
            all.then_some(r)
        },
    )
    .await;
    let now_ms = support::now_unix_ms();
    for n in ranking["nodes"].as_array().unwrap() {
        let m = &n["loaded_models"][0];
        let expires = m["expires_unix_ms"].as_i64().unwrap();
        assert!(
            expires > now_ms && expires <= now_ms + 5 * 60_000 + 5_000,
            "{n}"
        );
        assert!(m["size_bytes"].as_u64().unwrap() > 0, "{n}");
        assert_eq!(n["model_memory_bytes"], Value::Null, "{n}");
    }

    // Everything goes to the top node.
    assert_eq!(destinations(&http, &proxy, 5).await, vec!["fast"; 5]);

    // It throttles: from the next samples on it ranks below mid, and traffic follows.
    write_atomically(&nodes[0].sensor, &sensor_json(50.0, "Serious"));
    let changed = Instant::now();
    wait_for(Duration::from_secs(10), "fast to drop in rank", || async {
        (ranked_ids(&proxy).await == ["mid", "fast", "slow"]).then_some(())
    })
    .await;
    let took = changed.elapsed();
    assert!(
        took <= Duration::from_millis(2 * INTERVAL_MS + 200),
        "the rank changed after {took:?}, more than two {INTERVAL_MS} ms intervals"
    );
    let fast = proxy.node("fast").await;
    let cost = fast["thermal_cost_pct"].as_f64().unwrap();
    assert!((cost - 100.0 * (1.0 - 1.0 / 1.75)).abs() < 1e-6, "{fast}");
    assert_eq!(destinations(&http, &proxy, 5).await, vec!["mid"; 5]);

    // mid goes Critical: it gets nothing at all; fast (Serious) is next best again.
    write_atomically(&nodes[1].sensor, &sensor_json(165.0, "Critical"));
    wait_for(Duration::from_secs(10), "mid to be excluded", || async {
        let mid = proxy.node("mid").await;
        (mid["healthy"] == false && mid["rank"].is_null()).then_some(())
    })
    .await;
    assert_eq!(destinations(&http, &proxy, 6).await, vec!["fast"; 6]);

    // fast is full (one slot, a long answer in flight): the next request overflows to slow.
    let long = {
        let http = http.clone();
        let url = format!("http://{}/api/generate", proxy.api);
        tokio::spawn(async move {
            let body = json!({"model": MODEL, "prompt": "a long one", "stream": true,
                              "options": {"num_predict": 400}});
            let r = http.post(url).json(&body).send().await.unwrap();
            let node = node_of(&r);
            let text = r.text().await.unwrap();
            (node, text)
        })
    };
    wait_for(
        Duration::from_secs(10),
        "the long answer in flight",
        || async { (proxy.node("fast").await["in_flight"] == 1).then_some(()) },
    )
    .await;
    assert_eq!(destinations(&http, &proxy, 3).await, vec!["slow"; 3]);
    let (node, text) = long.await.unwrap();
    assert_eq!(node, "fast");
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["done"], true, "{text}");
    assert_eq!(destinations(&http, &proxy, 2).await, vec!["fast"; 2]);

    // Drained from the admin listener: no new requests; undrained: back in rotation.
    let admin = format!("http://{}", proxy.admin);
    let r = http
        .post(format!("{admin}/nodes/fast/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fast = proxy.node("fast").await;
    assert_eq!(fast["unhealthy_reason"], "draining", "{fast}");
    assert_eq!(destinations(&http, &proxy, 3).await, vec!["slow"; 3]);
    let r = http
        .post(format!("{admin}/nodes/nope/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    http.post(format!("{admin}/nodes/fast/undrain"))
        .send()
        .await
        .unwrap();
    assert_eq!(destinations(&http, &proxy, 2).await, vec!["fast"; 2]);
}

#[tokio::test]
async fn a_full_fleet_queues_then_answers_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, addr) = sim_node(dir.path(), "apple-m2");
    let sensor = dir.path().join("n.json");
    write_atomically(&sensor, &sensor_json(30.0, "Normal"));
    let config = format!(
        "[listen]\napi = \"127.0.0.1:{}\"\ntelemetry = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n\
         [routing]\nqueue_timeout = \"1500ms\"\n\n\
         [[nodes]]\nid = \"only\"\nurl = \"http://{addr}\"\ntoken = \"tok\"\nmax_concurrency = 1\n",
        free_port()
    );
    let proxy = Proxy::start(dir.path(), &config);
    let command = format!("cat {}", sensor.display());
    let _reporter = Reporter::start(
        dir.path(),
        &[
            "--node-id",
            "only",
            "--token",
            "tok",
            "--proxy",
            &proxy.telemetry_url(),
            "--interval",
            "300ms",
            "--sensor",
            "command",
            "--sensor-command",
            &command,
            "--ollama",
            &format!("http://{addr}"),
        ],
    );
    wait_for(Duration::from_secs(30), "the node's model list", || async {
        let n = proxy.node("only").await;
        (n["healthy"] == true && n["models"].as_array().is_some_and(|m| !m.is_empty()))
            .then_some(())
    })
    .await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/generate", proxy.api);
    let body = |tokens: u32| json!({"model": MODEL, "prompt": "x", "stream": false, "options": {"num_predict": tokens}});

    // Loads the model, so that what follows times decoding only.
    assert_eq!(
        http.post(&url)
            .json(&body(1))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // A short request behind a short one waits for the slot and succeeds.
    let first = http.post(&url).json(&body(10)).send();
    let second = http.post(&url).json(&body(10)).send();
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.unwrap().status(), 200);
    assert_eq!(second.unwrap().status(), 200);

    // Behind a long one (about 4 s), the wait times out: 503, Ollama's shape, Retry-After.
    let long = tokio::spawn(http.post(&url).json(&body(430)).send());
    wait_for(
        Duration::from_secs(10),
        "the long request in flight",
        || async { (proxy.node("only").await["in_flight"] == 1).then_some(()) },
    )
    .await;
    let started = Instant::now();
    let r = http.post(&url).json(&body(5)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(r.headers()["retry-after"], "1");
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("busy"), "{e}");
    assert_eq!(long.await.unwrap().unwrap().status(), 200);
}
