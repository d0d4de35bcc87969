//! The `slo` policy end to end on its time-to-first-token curve (docs/design.md, "Load"): two
//! stand-in nodes behind the real proxy. One is the more efficient but queues: its first token
//! comes 120 ms later for every request it already holds. The other answers in 20 ms at any
//! load. With a 400 ms target, the efficient node may hold three requests (360 ms) but not a
//! fourth (480 ms): once the proxy has measured that, a fourth concurrent request goes to the
//! quick node, where `top` would fill the efficient one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;
use support::{NodeSpec, Proxy, node_sample, push_sample};
use wes_proto::ThermalState;

const MODEL: &str = "llama3.2:3b";

/// Every request's count of requests on the node as it arrived (its own included).
type Arrivals = Arc<Mutex<Vec<u32>>>;

/// A node whose first token waits `per_request` × the requests it holds (or `fixed`), then
/// streams 20 tokens 10 ms apart.
async fn node(per_request: Duration, fixed: Duration) -> (SocketAddr, Arrivals) {
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    let arrivals: Arrivals = Arc::default();
    let holding = Arc::new(AtomicU32::new(0));
    let seen = arrivals.clone();
    let tags =
        json!({"models": [{"name": MODEL, "size": 2019393189u64, "digest": "a80c4f17acd5"}]});
    let app = axum::Router::new()
        .route("/", get(|| async { "Ollama is running" }))
        .route("/api/tags", get(move || async move { axum::Json(tags) }))
        .route(
            "/api/generate",
            post(move || {
                let (holding, seen) = (holding.clone(), seen.clone());
                async move {
                    let k = holding.fetch_add(1, Ordering::SeqCst) + 1;
                    seen.lock().push(k);
                    let first = fixed + per_request * k;
                    let lines = futures::stream::unfold(0u32, move |i| {
                        let holding = holding.clone();
                        async move {
                            match i {
                                0 => tokio::time::sleep(first).await,
                                21.. => return None,
                                _ => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                            let line = if i < 20 {
                                format!("{{\"model\":\"{MODEL}\",\"response\":\"t{i}\",\"done\":false}}\n")
                            } else {
                                holding.fetch_sub(1, Ordering::SeqCst);
                                format!("{{\"model\":\"{MODEL}\",\"response\":\"\",\"done\":true}}\n")
                            };
                            Some((Ok::<_, std::convert::Infallible>(line), i + 1))
                        }
                    });
                    (
                        [("content-type", "application/x-ndjson")],
                        axum::body::Body::from_stream(lines),
                    )
                        .into_response()
                }
            }),
        );
    (support::serve(app).await, arrivals)
}

/// `callers` loops of streamed requests, each read to its end, for `length`.
async fn load(api: SocketAddr, callers: usize, length: Duration) {
    let until = Instant::now() + length;
    let mut tasks = Vec::new();
    for _ in 0..callers {
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let body = json!({"model": MODEL, "prompt": "hi", "stream": true});
            while Instant::now() < until {
                let r = http
                    .post(format!("http://{api}/api/generate"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn slo_keeps_a_queueing_node_below_the_load_that_misses_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let (queueing, queued) = node(Duration::from_millis(120), Duration::ZERO).await;
    let (quick, _) = node(Duration::ZERO, Duration::from_millis(20)).await;
    let (queueing_url, quick_url) = (format!("http://{queueing}"), format!("http://{quick}"));
    let specs = [
        NodeSpec {
            id: "efficient",
            url: &queueing_url,
            token: "tok-efficient",
        },
        NodeSpec {
            id: "quick",
            url: &quick_url,
            token: "tok-quick",
        },
    ];
    // One sample each, never stale during the test: 100 tok/s at 10 W against 40 W.
    let config = support::proxy_config_with(0, &specs, "5m", "").replace(
        "policy = \"top\"",
        "policy = \"slo\"\nslo_ttft = \"400ms\"\nexploration_share = 0.0",
    );
    let proxy = Proxy::start(dir.path(), &config);
    for (id, watts) in [("efficient", 10.0), ("quick", 40.0)] {
        let sample = node_sample(id, watts, ThermalState::Normal, &[MODEL], 100.0);
        push_sample(&proxy.telemetry_url(), &format!("tok-{id}"), sample).await;
    }
    support::wait_for(Duration::from_secs(10), "both nodes ranked", || async {
        let r = proxy.ranking().await;
        let ranked = r["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["rank"].is_u64());
        (ranked.count() == 2).then_some(())
    })
    .await;

    // Learning: unmeasured, then measured at one request, the efficient node fills to four
    // (one point predicts 120 ms stretched, 210 ms at four) until it has seen 480 ms there.
    load(proxy.api, 6, Duration::from_secs(4)).await;
    let learnt = queued.lock().len();
    let filled = queued.lock().iter().filter(|k| **k == 4).count();
    assert!(filled > 0, "never held four: {:?}", queued.lock());

    // Measured: the same load; the efficient node keeps to three, the rest goes quick.
    load(proxy.api, 6, Duration::from_secs(4)).await;
    let after: Vec<u32> = queued.lock()[learnt..].to_vec();
    let over = after.iter().filter(|k| **k >= 4).count();
    assert!(
        after.len() >= 20,
        "the efficient node got too little: {after:?}"
    );
    assert!(
        over * 10 <= after.len(),
        "{over} of {} requests found the efficient node at four or more: {after:?}",
        after.len()
    );
    let third = after.iter().filter(|k| **k == 3).count();
    assert!(third > 0, "never used its third slot: {after:?}");
}
