//! Load-aware routing end to end (docs/design.md, "Load"): two real `wes-sim-node`s, one that
//! batches (slower alone, its throughput grows with every stream for little more power) and one
//! that does not (faster and more efficient alone, each extra stream costs power and adds
//! almost nothing), real reporters reading each node's simulated power, the real proxy. Under
//! concurrent load the batching node must take most of the traffic once the proxy has learnt
//! the two curves, and `/ranking` must show its throughput at that load, not one stream's rate.
//! Before any traffic, the reporters' concurrent probes already give each node a curve, so the
//! first burst is not decided on one stream's figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};
use support::{Proxy, Reporter, free_port, wait_for};

const MODEL: &str = "llama3.2:3b";

/// A profile with a flat thermal model (no throttling in the test's minute) and the given
/// speed and power curves.
fn profile(name: &str, decode: f64, exponent: f64, power: (f64, f64, f64, f64)) -> String {
    let (idle, busy, single, power_exponent) = power;
    format!(
        r#"name = "{name}"
description = "load-aware routing test"
default_models = ["{MODEL}"]
max_parallel = 16
max_queue = 64

[power]
idle_watts = {idle}
busy_watts = {busy}
single_stream_load = {single}
concurrency_exponent = {power_exponent}

[speed]
reference_model_bytes = 2019393189
decode_tok_s = {decode}
prompt_tok_s = 50000.0
max_decode_tok_s = 1000.0
max_prompt_tok_s = 100000.0
concurrency_exponent = {exponent}

[thermal]
ambient_c = 25.0
thermal_resistance_c_per_w = 0.01
heat_capacity_j_per_c = 100000.0
fair_c = 200.0
serious_c = 210.0
critical_c = 220.0
hysteresis_c = 2.0
speed_factor = {{ fair = 0.9, serious = 0.7, critical = 0.5 }}
power_factor = {{ fair = 0.95, serious = 0.85, critical = 0.7 }}
"#
    )
}

/// One streamed generation through the proxy, read to its end; the node that served it.
async fn generate(http: &reqwest::Client, api: &str) -> Option<String> {
    let body =
        json!({"model": MODEL, "prompt": "hi", "stream": true, "options": {"num_predict": 40}});
    let r = http
        .post(format!("http://{api}/api/generate"))
        .json(&body)
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let node = r.headers().get("x-wes-node")?.to_str().ok()?.to_owned();
    r.bytes().await.ok()?;
    Some(node)
}

/// `callers` loops of back-to-back requests for `length`; the count per node that served them.
async fn load(api: &str, callers: usize, length: Duration) -> HashMap<String, u32> {
    let served = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let until = Instant::now() + length;
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (api, served) = (api.to_owned(), served.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            while Instant::now() < until {
                if let Some(node) = generate(&http, &api).await {
                    *served.lock().entry(node).or_default() += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(served).unwrap().into_inner()
}

fn entry<'a>(ranking: &'a Value, id: &str) -> &'a Value {
    ranking["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .unwrap()
}

/// Both scores in turn, one fleet at a time: two fleets at once would share two cores with
/// sixteen paced streams.
#[tokio::test]
async fn under_concurrent_load_the_node_that_batches_takes_the_traffic() {
    for score in ["average", "marginal"] {
        scenario(score).await;
    }
}

async fn scenario(score: &str) {
    let dir = tempfile::tempdir().unwrap();
    // Alone: batcher 100 tok/s at 40 + 200 × 0.4 = 120 W (WES 0.83); solo 120 tok/s at
    // 20 + 180 × 0.3 = 74 W (1.62): solo wins one stream. At four streams the batcher makes
    // 100 × 4^0.95 ≈ 373 tok/s for ~208 W (1.79), solo 120 × 4^0.1 ≈ 138 for ~169 W (0.82).
    let profiles = [
        (
            "batcher",
            profile("batcher", 100.0, 0.95, (40.0, 240.0, 0.4, 0.95)),
        ),
        ("solo", profile("solo", 120.0, 0.1, (20.0, 200.0, 0.3, 1.0))),
    ];
    let mut sims = Vec::new();
    let mut addrs = HashMap::new();
    for (id, text) in &profiles {
        let path = dir.path().join(format!("{id}.toml"));
        std::fs::write(&path, text).unwrap();
        let (sim, addr) = support::sim_node(dir.path(), path.to_str().unwrap(), MODEL);
        sims.push(sim);
        addrs.insert(*id, addr);
    }
    let mut config = format!(
        "[listen]\napi = \"127.0.0.1:{}\"\ntelemetry = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n\
         [routing]\npolicy = \"top\"\nstale_after = \"5s\"\nexploration_share = 0.0\nhysteresis = 0.0\nscore = \"{score}\"\n",
        free_port()
    );
    for (id, _) in &profiles {
        config.push_str(&format!(
            "\n[[nodes]]\nid = \"{id}\"\nurl = \"http://{}\"\ntoken = \"tok-{id}\"\nmax_concurrency = 8\n",
            addrs[id]
        ));
    }
    let proxy = Proxy::start(dir.path(), &config);
    let _reporters: Vec<Reporter> = profiles
        .iter()
        .map(|(id, _)| {
            let url = format!("http://{}", addrs[id]);
            let sensor = format!("curl -sf --max-time 1 {url}/wes-sim/state");
            Reporter::start(
                dir.path(),
                &[
                    "--node-id",
                    id,
                    "--token",
                    &format!("tok-{id}"),
                    "--proxy",
                    &proxy.telemetry_url(),
                    "--interval",
                    "300ms",
                    "--sensor",
                    "command",
                    "--sensor-command",
                    &sensor,
                    "--ollama",
                    &url,
                    "--probe-model",
                    MODEL,
                    "--probe-interval",
                    "1h",
                ],
            )
        })
        .collect();
    // Both probed and ranked, one stream's figures deciding: solo first.
    let order = wait_for(Duration::from_secs(60), "both nodes ranked", || async {
        let ranking = proxy.ranking().await;
        let ranked: Vec<String> = ranking["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["rank"].is_u64())
            .map(|n| n["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        (ranked.len() == 2).then_some(ranked)
    })
    .await;
    assert_eq!(
        order,
        ["solo", "batcher"],
        "alone, the node that does not batch is the better"
    );

    let api = proxy.api.to_string();
    // Cold: no traffic yet, but the reporters' probes at 2, 4 and 8 streams drew a curve. Eight
    // requests at once: one stream's figures would send all eight to solo (it stays the better
    // one at every load it has not been seen at); the probed curves send most to the batcher.
    let http = reqwest::Client::new();
    let wave = futures::future::join_all((0..8).map(|_| generate(&http, &api))).await;
    let first_wave: Vec<String> = wave.into_iter().flatten().collect();
    eprintln!("{score}: first burst {first_wave:?}");
    let to_batcher = first_wave.iter().filter(|n| *n == "batcher").count();
    assert!(
        first_wave.len() == 8 && to_batcher >= 4,
        "{score}: the first burst is decided on the probed curves: {first_wave:?}"
    );
    // Learning: relayed streams refine the curves.
    load(&api, 8, Duration::from_secs(12)).await;
    // Measured: eight callers, and /ranking read while they run (the batching node's row
    // scored at the busiest load seen: `in_flight` is live, the figures are the last
    // rebuild's, at `scored_in_flight`).
    let length = Duration::from_secs(10);
    let until = Instant::now() + length;
    let (served, busiest) = tokio::join!(load(&api, 8, length), async {
        let mut busiest = json!({"scored_in_flight": 0});
        while Instant::now() < until {
            let row = entry(&proxy.ranking().await, "batcher").clone();
            if row["scored_in_flight"].as_u64() > busiest["scored_in_flight"].as_u64() {
                busiest = row;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        busiest
    });
    eprintln!("{score}: served under load {served:?}; the batching node at its busiest: {busiest}");
    let total: u32 = served.values().sum();
    let batcher = served.get("batcher").copied().unwrap_or(0);
    assert!(total > 40, "too few requests to judge: {served:?}");
    assert!(
        f64::from(batcher) >= 0.6 * f64::from(total),
        "{score}: the batching node must take most of the load: {served:?}"
    );
    let b = &busiest;
    let (tok_s, single) = (
        b["tok_s"].as_f64().unwrap(),
        b["tok_s_single"].as_f64().unwrap(),
    );
    // At three or more streams the batcher makes over 2.8 times one stream's rate.
    assert!(
        b["scored_in_flight"].as_u64().unwrap() >= 3 && tok_s > 1.8 * single,
        "{score}: /ranking shows the batching node's throughput at its load, not one stream's: {b}"
    );
    // Idle again, it shows one stream's rate from the next rebuild on.
    wait_for(
        Duration::from_secs(10),
        "the idle node to show one stream's rate",
        || async {
            let ranking = proxy.ranking().await;
            let b = entry(&ranking, "batcher");
            (b["scored_in_flight"] == 0 && b["tok_s"] == b["tok_s_single"]).then_some(())
        },
    )
    .await;
}
