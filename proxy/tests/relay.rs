//! End-to-end through the real proxy: routing by model, bodies, errors, failover.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::{get, post};
use serde_json::{Value, json};
use support::{NodeSpec, Proxy, node_sample, push_sample};
use wes_proto::ThermalState;

/// A stand-in Ollama node that says who it is, echoes what it received, and streams.
async fn fake_node(name: &'static str) -> SocketAddr {
    let app = axum::Router::new()
        .route("/api/tags", get(move || async move { axum::Json(json!({"models": [{"name": "m1"}, {"name": format!("only-{name}")}]})) }))
        .route(
            "/api/generate",
            post(move |body: axum::body::Bytes| async move {
                // Non-streaming: report what arrived, so tests can check it byte for byte.
                axum::Json(json!({"node": name, "len": body.len(), "fnv": fnv(&body), "done": true, "response": "ok"}))
            }),
        )
        .route(
            "/api/chat",
            post(move |body: axum::body::Bytes| async move {
                // A "slow" request streams over about a second, to hold a request in flight.
                let gap = if body.windows(6).any(|w| w == b"\"slow\"") { 200 } else { 0 };
                // "linger": the done line, then the body stays open a while before it ends.
                let linger = body.windows(8).any(|w| w == b"\"linger\"");
                let lines = futures::stream::unfold(0u32, move |i| async move {
                    if i == 5 {
                        if linger {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(gap)).await;
                    let done = i == 4;
                    let line = format!("{{\"model\":\"m1\",\"message\":{{\"role\":\"assistant\",\"content\":\"{name}{i}\"}},\"done\":{done}}}\n");
                    Some((Ok::<_, std::convert::Infallible>(line), i + 1))
                });
                ([("content-type", "application/x-ndjson")], axum::body::Body::from_stream(lines))
            }),
        )
        // Real nodes take image payloads of many MiB.
        .layer(axum::extract::DefaultBodyLimit::disable());
    support::serve(app).await
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct Fleet {
    proxy: Proxy,
    _dir: tempfile::TempDir,
}

/// A proxy over `nodes` (id, url, watts): each says it holds m1 at 100 tok/s, so lower watts
/// ranks higher.
async fn fleet(nodes: &[(&str, String, f64)], extra: &str) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<String> = nodes.iter().map(|(id, _, _)| format!("tok-{id}")).collect();
    let specs: Vec<NodeSpec<'_>> = nodes
        .iter()
        .zip(&tokens)
        .map(|((id, url, _), token)| NodeSpec { id, url, token })
        .collect();
    let proxy = Proxy::start(
        dir.path(),
        &support::proxy_config_with(0, &specs, "60s", extra),
    );
    for ((id, _, watts), token) in nodes.iter().zip(&tokens) {
        push_sample(
            &proxy.telemetry_url(),
            token,
            node_sample(
                id,
                *watts,
                ThermalState::Normal,
                &["m1", &format!("only-{id}")],
                100.0,
            ),
        )
        .await;
    }
    support::wait_for(
        Duration::from_secs(10),
        "telemetry in the ranking",
        || async {
            let r = proxy.ranking().await;
            r["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["watts"].is_f64())
                .then_some(())
        },
    )
    .await;
    Fleet { proxy, _dir: dir }
}

fn api(proxy: &Proxy, path: &str) -> String {
    format!("http://{}{path}", proxy.api)
}

async fn wait_api_up(proxy: &Proxy) {
    support::wait_for(Duration::from_secs(10), "the API listener", || async {
        reqwest::get(api(proxy, "/")).await.ok().map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn streams_from_the_top_node_with_its_header() {
    let a = fake_node("a").await;
    let b = fake_node("b").await;
    let f = fleet(
        &[
            ("a", format!("http://{a}"), 50.0),
            ("b", format!("http://{b}"), 100.0),
        ],
        "",
    )
    .await;
    wait_api_up(&f.proxy).await;
    let http = reqwest::Client::new();
    let response = http
        .post(api(&f.proxy, "/api/chat"))
        .json(&json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-wes-node"], "a");
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines[0]["message"]["content"], "a0");
    assert_eq!(lines[4]["done"], true);

    // A model only b holds goes to b whatever the ranking says.
    let response = http
        .post(api(&f.proxy, "/api/generate"))
        .json(&json!({"model": "only-b", "prompt": "x", "stream": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-wes-node"], "b");
    // Written with Ollama's default tag, it is the same model.
    let response = http
        .post(api(&f.proxy, "/api/generate"))
        .json(&json!({"model": "only-b:latest", "prompt": "x", "stream": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-wes-node"], "b");

    let tags: Value = http
        .get(api(&f.proxy, "/api/tags"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut names: Vec<String> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["m1", "only-a", "only-b"]);
    let banner = http
        .get(api(&f.proxy, "/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(banner, "Ollama is running");
}

#[tokio::test]
async fn large_bodies_arrive_byte_for_byte_and_too_large_is_413() {
    let a = fake_node("a").await;
    let f = fleet(
        &[("a", format!("http://{a}"), 50.0)],
        "[api]\nmax_body_bytes = 25000000\n",
    )
    .await;
    wait_api_up(&f.proxy).await;
    let http = reqwest::Client::new();
    for size in [1 << 20, 20 << 20] {
        // An image-like payload after the model, so routing must read past 64 KiB.
        let filler: String = (0..size).map(|i| (b'A' + (i % 26) as u8) as char).collect();
        let body = format!(
            "{{\"prompt\":\"describe\",\"images\":[\"{filler}\"],\"stream\":false,\"model\":\"m1\"}}"
        );
        let response = http
            .post(api(&f.proxy, "/api/generate"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "size {size}");
        let echo: Value = response.json().await.unwrap();
        assert_eq!(echo["len"], body.len(), "size {size}");
        assert_eq!(echo["fnv"], fnv(body.as_bytes()), "size {size}");
    }
    let too_big = format!(
        "{{\"model\":\"m1\",\"prompt\":\"{}\"}}",
        "x".repeat(26_000_000)
    );
    let response = http
        .post(api(&f.proxy, "/api/generate"))
        .body(too_big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("limit"),
        "{error}"
    );
}

#[tokio::test]
async fn bad_requests_get_ollama_shaped_errors() {
    let a = fake_node("a").await;
    let f = fleet(&[("a", format!("http://{a}"), 50.0)], "").await;
    wait_api_up(&f.proxy).await;
    let http = reqwest::Client::new();
    let cases: [(&str, &str, u16); 4] = [
        ("/api/chat", "{not json", 400),
        ("/api/chat", r#"{"messages":[]}"#, 400),
        (
            "/api/chat",
            r#"{"model":"nobody-has-it","messages":[]}"#,
            404,
        ),
        ("/api/pull", r#"{"model":"m1"}"#, 403),
    ];
    for (path, body, status) in cases {
        let response = http
            .post(api(&f.proxy, path))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path} {body}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].is_string(), "{path} {body}: {error}");
    }
    let response = http
        .post(api(&f.proxy, "/v1/chat/completions"))
        .body(r#"{"model":"nobody-has-it","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nobody-has-it"),
        "{error}"
    );
}

/// Accepts connections and closes them at once: a node that resets before answering.
async fn resetting_node() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    addr
}

/// Answers with a stream header and two chunks, then dies.
async fn dying_node() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = stream.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                for i in 0..2 {
                    let line = format!(
                        "{{\"message\":{{\"role\":\"assistant\",\"content\":\"t{i}\"}},\"done\":false}}\n"
                    );
                    let _ = stream
                        .write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
                        .await;
                    let _ = stream.flush().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // A reset discards what the proxy has not read yet: give a loaded machine time
                // to read the last line (20 ms was once too little in CI).
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = stream.set_zero_linger();
            });
        }
    });
    addr
}

#[tokio::test]
async fn failover_before_the_answer_and_error_line_after_it() {
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let reset = format!("http://{}", resetting_node().await);
    let good = format!("http://{}", fake_node("good").await);
    // The dead and resetting nodes rank first (fewer watts); the good one last. Active health
    // checks are off: the relay itself must find out and fail over.
    let f = fleet(
        &[
            ("dead", dead, 10.0),
            ("reset", reset, 20.0),
            ("good", good, 90.0),
        ],
        "[health]\nactive_checks = false\nfailure_threshold = 100\n",
    )
    .await;
    wait_api_up(&f.proxy).await;
    let http = reqwest::Client::new();
    let response = http
        .post(api(&f.proxy, "/api/generate"))
        .json(&json!({"model": "m1", "prompt": "x", "stream": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-wes-node"], "good");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["node"], "good");
    // A body beyond Pingora's 64 KiB retry buffer fails over too, and arrives whole.
    let big = json!({"model": "m1", "prompt": "y".repeat(1 << 20), "stream": false}).to_string();
    let response = http
        .post(api(&f.proxy, "/api/generate"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["node"], "good");
    assert_eq!(body["fnv"], fnv(big.as_bytes()));
    // Both failures before the answer were seen and counted against the nodes that failed.
    let metrics = reqwest::get(format!("http://{}/metrics", f.proxy.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for node in ["dead", "reset"] {
        let errors: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("wes_node_request_errors_total")
                    && l.contains(&format!("node=\"{node}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(errors, 2.0, "{node}: {metrics}");
    }

    let dying = format!("http://{}", dying_node().await);
    let f = fleet(&[("dying", dying, 10.0)], "").await;
    wait_api_up(&f.proxy).await;
    let response = http
        .post(api(&f.proxy, "/api/chat"))
        .json(&json!({"model": "m1", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(10), response.text())
        .await
        .expect("stream hung")
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert!(last["error"].as_str().unwrap().contains("dying"), "{text}");
}

#[tokio::test]
async fn reload_applies_a_valid_policy_and_refuses_a_bad_file() {
    let a = fake_node("a").await;
    let b = fake_node("b").await;
    let f = fleet(
        &[
            ("a", format!("http://{a}"), 50.0),
            ("b", format!("http://{b}"), 100.0),
        ],
        "",
    )
    .await;
    wait_api_up(&f.proxy).await;
    let http = reqwest::Client::new();
    let chat = |slow: bool| {
        let body =
            json!({"model": "m1", "messages": [], "tag": if slow { "slow" } else { "fast" }});
        http.post(api(&f.proxy, "/api/chat")).json(&body).send()
    };
    let node_of = |r: &reqwest::Response| r.headers()["x-wes-node"].to_str().unwrap().to_owned();

    // Under `top`, a takes everything.
    for _ in 0..3 {
        assert_eq!(node_of(&chat(false).await.unwrap()), "a");
    }
    // A slow stream in flight across the reload.
    let in_flight = chat(true).await.unwrap();
    assert_eq!(node_of(&in_flight), "a");

    let config = std::fs::read_to_string(&f.proxy.config_path).unwrap();
    std::fs::write(
        &f.proxy.config_path,
        config.replace("policy = \"top\"", "policy = \"round_robin\""),
    )
    .unwrap();
    let reload = http
        .post(format!("http://{}/reload", f.proxy.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    assert_eq!(reload.json::<Value>().await.unwrap()["changed"], true);

    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(node_of(&chat(false).await.unwrap()));
    }
    assert_eq!(seen.len(), 2, "round_robin should use both nodes: {seen:?}");
    // The stream that started before the reload ends whole.
    let text = in_flight.text().await.unwrap();
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(
        text.lines().last().unwrap().contains("\"done\":true"),
        "{text}"
    );

    // A bad file is refused whole, with its line, and the running config stays.
    let good = std::fs::read_to_string(&f.proxy.config_path).unwrap();
    let bad = good
        .replace("policy = \"round_robin\"", "policy = \"fastest\"")
        .replace("pue = 1.0", "pue = 0.1");
    std::fs::write(&f.proxy.config_path, bad).unwrap();
    let reload = http
        .post(format!("http://{}/reload", f.proxy.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 400);
    let body: Value = reload.json().await.unwrap();
    let errors = body["errors"].as_array().unwrap();
    assert!(errors.len() >= 2, "{body}");
    assert!(errors.iter().all(|e| e["line"].is_u64()), "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("fastest"),
        "{body}"
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(node_of(&chat(false).await.unwrap()));
    }
    assert_eq!(
        seen.len(),
        2,
        "the running round_robin config should still apply: {seen:?}"
    );
    assert_eq!(f.proxy.node("a").await["pue"], 1.0);

    // SIGHUP with the bad file: refused, logged, the proxy keeps serving.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(f.proxy.process.pid(), libc::SIGHUP) };
    support::wait_for(
        Duration::from_secs(10),
        "the refusal in the log",
        || async {
            f.proxy
                .process
                .log_text()
                .contains("trigger=\"SIGHUP\"")
                .then_some(())
        },
    )
    .await;
    assert_eq!(chat(false).await.unwrap().status(), 200);
}

/// `id`'s `/ranking` entry once its rate comes from a relayed response.
async fn relayed_measurement(proxy: &Proxy, id: &str) -> Value {
    support::wait_for(
        Duration::from_secs(10),
        "the relayed measurement",
        || async {
            // The published ranking: the routing table is published with it, never later.
            let r: Value = reqwest::get(format!("http://{}/ranking", proxy.admin))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            r["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["id"] == id && n["tok_s_source"] == "relayed")
                .cloned()
        },
    )
    .await
}

#[tokio::test]
async fn measured_decode_rate_feeds_the_ranking_and_the_next_choice() {
    let a = fake_node("a").await;
    let b = fake_node("b").await;
    // By probes, a is best (100 tok/s at 50 W against b's 100 W).
    let f = fleet(
        &[
            ("a", format!("http://{a}"), 50.0),
            ("b", format!("http://{b}"), 100.0),
        ],
        "",
    )
    .await;
    wait_api_up(&f.proxy).await;
    let http = reqwest::Client::new();
    let response = http
        .post(api(&f.proxy, "/api/chat"))
        .json(&json!({"model": "m1", "messages": [], "tag": "slow"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-wes-node"], "a");
    assert_eq!(response.text().await.unwrap().lines().count(), 5);

    // a really streams 5 tokens 200 ms apart: about 5 tok/s, measured by the proxy.
    let entry = relayed_measurement(&f.proxy, "a").await;
    let tok_s = entry["tok_s"].as_f64().unwrap();
    assert!((3.5..=6.0).contains(&tok_s), "measured {tok_s}: {entry}");
    assert_eq!(entry["rank"], 2, "{entry}");

    let next = http
        .post(api(&f.proxy, "/api/chat"))
        .json(&json!({"model": "m1", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(next.headers()["x-wes-node"], "b");
}

/// SDKs close the connection as soon as they see the last event; the node's answer was whole,
/// so its measured rate still counts.
#[tokio::test]
async fn a_client_that_hangs_up_after_the_done_line_still_feeds_the_ranking() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = fake_node("a").await;
    let f = fleet(&[("a", format!("http://{a}"), 50.0)], "").await;
    wait_api_up(&f.proxy).await;
    let body = r#"{"model":"m1","messages":[],"tag":"slow","linger":true}"#;
    let mut client = tokio::net::TcpStream::connect(f.proxy.api).await.unwrap();
    let request = format!(
        "POST /api/chat HTTP/1.1\r\nhost: wes\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !seen.windows(11).any(|w| w == b"\"done\":true") {
            let n = client.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before the done line: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no done line within 10 s");
    // Hang up while the node's body is still open (it lingers 500 ms after the done line).
    drop(client);

    let entry = relayed_measurement(&f.proxy, "a").await;
    let tok_s = entry["tok_s"].as_f64().unwrap();
    assert!((3.5..=6.0).contains(&tok_s), "measured {tok_s}: {entry}");
}

/// Streams a line every 50 ms for a long while, and says when its stream was dropped: the
/// proxy let go of the node's response.
async fn endless_node(released: std::sync::Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    struct Released(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Released {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let app = axum::Router::new()
        .route("/", get(|| async { "Ollama is running" }))
        .route(
            "/api/chat",
            post(move || {
                let released = released.clone();
                async move {
                    let guard = Released(released);
                    let lines = futures::stream::unfold((0u32, guard), |(i, guard)| async move {
                        if i == 1200 {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let line = format!("{{\"model\":\"m1\",\"message\":{{\"role\":\"assistant\",\"content\":\"w{i} \"}},\"done\":false}}\n");
                        Some((Ok::<_, std::convert::Infallible>(line), (i + 1, guard)))
                    });
                    ([("content-type", "application/x-ndjson")], axum::body::Body::from_stream(lines))
                }
            }),
        );
    support::serve(app).await
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_releases_the_node() {
    let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let node = format!("http://{}", endless_node(released.clone()).await);
    let f = fleet(&[("n", node, 10.0)], "").await;
    wait_api_up(&f.proxy).await;
    let body = json!({"model": "m1", "messages": [{"role": "user", "content": "go on"}]});
    let mut response = reqwest::Client::new()
        .post(api(&f.proxy, "/api/chat"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.chunk().await.unwrap().is_some());
    assert_eq!(f.proxy.node("n").await["in_flight"], 1);
    drop(response);
    support::wait_for(
        Duration::from_secs(10),
        "the node's stream to be dropped",
        || async {
            released
                .load(std::sync::atomic::Ordering::SeqCst)
                .then_some(())
        },
    )
    .await;
    support::wait_for(Duration::from_secs(10), "the slot to be freed", || async {
        (f.proxy.node("n").await["in_flight"] == 0).then_some(())
    })
    .await;
    // Leaving is not the node's fault: it stays healthy and takes the next request.
    let n = f.proxy.node("n").await;
    assert_eq!(n["healthy"], true, "{n}");
}

#[test]
fn a_taken_api_port_is_a_clear_error_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    let text = format!(
        "[listen]\napi = \"127.0.0.1:{port}\"\ntelemetry = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[[nodes]]\nid = \"a\"\nurl = \"http://127.0.0.1:1\"\ntoken = \"t\"\n"
    );
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(support::proxy_bin())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen for api on 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_node_whose_host_name_does_not_resolve_is_failed_over_not_fatal() {
    let good = format!("http://{}", fake_node("good").await);
    // Ranked first (fewest watts), but its name resolves to nothing.
    let f = fleet(
        &[
            ("nowhere", "http://no-such-host.invalid:11434".into(), 10.0),
            ("good", good, 90.0),
        ],
        "[health]\nactive_checks = false\n",
    )
    .await;
    wait_api_up(&f.proxy).await;
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let response = http
            .post(api(&f.proxy, "/api/generate"))
            .json(&json!({"model": "m1", "prompt": "x", "stream": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-wes-node"], "good");
    }
    // Alone, it is a 502 in Ollama's shape that names it, and the proxy stays up.
    let f = fleet(
        &[("nowhere", "http://no-such-host.invalid:11434".into(), 10.0)],
        "[health]\nactive_checks = false\n",
    )
    .await;
    wait_api_up(&f.proxy).await;
    let response = http
        .post(api(&f.proxy, "/api/generate"))
        .json(&json!({"model": "m1", "prompt": "x", "stream": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("nowhere"),
        "{body}"
    );
    assert_eq!(
        reqwest::get(api(&f.proxy, "/")).await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn a_lone_node_addressed_as_localhost_is_relayed() {
    // The node listens on 127.0.0.1 only, as Ollama does. Where `localhost` also resolves to
    // `::1` first (most systems), the first request is refused there and retried on the next
    // address: alone, the node has no other node to fail over to.
    let port = fake_node("local").await.port();
    let f = fleet(
        &[("local", format!("http://localhost:{port}"), 10.0)],
        "[health]\nactive_checks = false\n",
    )
    .await;
    wait_api_up(&f.proxy).await;
    let http = reqwest::Client::new();
    for prompt in ["a", "b", "c"] {
        let response = generate(&http, &f.proxy, prompt).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-wes-node"], "local");
    }
    let ranking = f.proxy.ranking().await;
    assert_eq!(ranking["nodes"][0]["healthy"], true, "{ranking}");
}

/// `POST /api/generate` for m1, not streamed.
async fn generate(http: &reqwest::Client, proxy: &Proxy, prompt: &str) -> reqwest::Response {
    http.post(api(proxy, "/api/generate"))
        .json(&json!({"model": "m1", "prompt": prompt, "stream": false}))
        .send()
        .await
        .unwrap()
}

/// A node that reads each request whole and drops the connection (a reset) when the body holds
/// `"poison"`, as an engine that crashes on it would; it answers anything else, `GET /` too.
/// Counts the requests it read.
async fn poisoned_node(
    name: &'static str,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> SocketAddr {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = vec![0u8; 65536];
                // Until the header and as many body bytes as it declares have arrived.
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let declared = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + declared {
                            break;
                        }
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                if request.windows(6).any(|w| w == b"poison") {
                    let _ = stream.set_zero_linger();
                    return;
                }
                let body = if request.starts_with(b"GET") {
                    "Ollama is running".to_owned()
                } else {
                    json!({"node": name, "done": true, "response": "ok"}).to_string()
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.flush().await;
            });
        }
    });
    addr
}

async fn metrics_text(proxy: &Proxy) -> String {
    reqwest::get(format!("http://{}/metrics", proxy.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sum of a counter's samples whose labels include `labels`.
fn counter_sum(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn one_request_to_a_lone_failing_node_counts_one_request_and_one_error() {
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let f = fleet(&[("lone", dead, 10.0)], "[health]\nactive_checks = false\n").await;
    wait_api_up(&f.proxy).await;
    let response = generate(&reqwest::Client::new(), &f.proxy, "x").await;
    assert_eq!(response.status(), 502);
    let _ = response.text().await;
    // The attempt is recorded where it ends; wait until it shows, then check it shows once.
    let labels = "node=\"lone\",model=\"m1\"";
    let metrics = support::wait_for(
        Duration::from_secs(5),
        "the attempt in /metrics",
        || async {
            let text = metrics_text(&f.proxy).await;
            (counter_sum(&text, "wes_node_requests_total", labels) > 0.0).then_some(text)
        },
    )
    .await;
    assert_eq!(
        counter_sum(&metrics, "wes_node_requests_total", labels),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        counter_sum(&metrics, "wes_node_request_errors_total", labels),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        counter_sum(
            &metrics,
            "wes_node_request_errors_total",
            &format!("{labels},kind=\"connect\"")
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn poison_requests_open_no_circuit_and_a_really_failing_node_still_opens_its_own() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen_a = Arc::new(AtomicUsize::new(0));
    let seen_b = Arc::new(AtomicUsize::new(0));
    let a = format!("http://{}", poisoned_node("a", seen_a.clone()).await);
    let b = format!("http://{}", poisoned_node("b", seen_b.clone()).await);
    // Active checks off: the relay alone must tell the request's failures from the node's.
    let f = fleet(
        &[("a", a, 10.0), ("b", b, 20.0)],
        "[health]\nactive_checks = false\nfailure_threshold = 3\ncooldown = \"60s\"\n",
    )
    .await;
    wait_api_up(&f.proxy).await;
    // A new connection per request: after a 502 the proxy closes the client's connection, and
    // a pooled client that reuses it meanwhile gets a reset instead of an answer.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    // Nested far beyond the limit: refused by the proxy, no node ever sees it.
    let deep = format!(
        r#"{{"model":"m1","prompt":"x","stream":false,"options":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    for _ in 0..3 {
        let response = http
            .post(api(&f.proxy, "/api/generate"))
            .body(deep.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("nested deeper than"),
            "{body}"
        );
    }
    assert_eq!(
        seen_a.load(Ordering::SeqCst) + seen_b.load(Ordering::SeqCst),
        0
    );

    // Bursts of well-formed requests that make every node drop the connection, four at once
    // (each node has four slots, so each request finds the other node free to try).
    let poison = json!({"model": "m1", "prompt": "poison", "stream": false});
    for _ in 0..3 {
        let burst = (0..4).map(|_| {
            let http = http.clone();
            let url = api(&f.proxy, "/api/generate");
            let poison = poison.clone();
            async move {
                let response = http.post(url).json(&poison).send().await.unwrap();
                let status = response.status();
                (status, response.json::<Value>().await.unwrap())
            }
        });
        for (status, body) in futures::future::join_all(burst).await {
            assert_eq!(status, 502, "{body}");
            let error = body["error"].as_str().unwrap();
            assert!(error.contains("request itself"), "{error}");
        }
    }
    // Each poison request was tried on two nodes, never a third time.
    assert_eq!(
        seen_a.load(Ordering::SeqCst) + seen_b.load(Ordering::SeqCst),
        24
    );
    // More at once than the fleet has slots: some find no second node free and fail on one
    // (ambiguous, so counted against nobody either), some wait; none opens a circuit.
    let flood = (0..20).map(|_| {
        let http = http.clone();
        let url = api(&f.proxy, "/api/generate");
        let poison = poison.clone();
        async move { http.post(url).json(&poison).send().await.unwrap().status() }
    });
    for status in futures::future::join_all(flood).await {
        assert_eq!(status, 502);
    }
    // Every circuit stayed closed and the fleet serves.
    let ranking = f.proxy.ranking().await;
    for node in ranking["nodes"].as_array().unwrap() {
        assert_eq!(node["healthy"], true, "{node}");
    }
    for _ in 0..4 {
        let response = generate(&http, &f.proxy, "hello").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-wes-node"], "a");
    }

    // A node that really fails (resets every request) beside one that answers: its failures
    // are held until the other node answers, then counted, and its circuit opens at three.
    let broken = format!("http://{}", resetting_node().await);
    let seen_c = Arc::new(AtomicUsize::new(0));
    let good = format!("http://{}", poisoned_node("good", seen_c.clone()).await);
    let f = fleet(
        &[("broken", broken, 10.0), ("good", good, 20.0)],
        "[health]\nactive_checks = false\nfailure_threshold = 3\ncooldown = \"60s\"\n",
    )
    .await;
    wait_api_up(&f.proxy).await;
    for _ in 0..3 {
        let response = generate(&http, &f.proxy, "hello").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-wes-node"], "good");
    }
    let broken = support::wait_for(Duration::from_secs(5), "broken's circuit open", || async {
        let n = f.proxy.node("broken").await;
        (n["healthy"] == false).then_some(n)
    })
    .await;
    assert!(
        broken["unhealthy_reason"]
            .as_str()
            .unwrap()
            .contains("circuit open"),
        "{broken}"
    );
    assert_eq!(f.proxy.node("good").await["healthy"], true);
}

#[tokio::test]
async fn headers_past_the_limit_get_431_in_the_protocol_shape() {
    let good = format!("http://{}", fake_node("good").await);
    let f = fleet(&[("good", good, 10.0)], "[api]\nmax_header_bytes = 16384\n").await;
    wait_api_up(&f.proxy).await;
    let http = reqwest::Client::new();
    let big = "a".repeat(200 * 1024);
    let response = http
        .post(api(&f.proxy, "/api/generate"))
        .header("x-padding", &big)
        .json(&json!({"model": "m1", "prompt": "x", "stream": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("16384"), "{body}");
    let response = http
        .post(api(&f.proxy, "/v1/chat/completions"))
        .header("x-padding", &big[..20_000])
        .json(&json!({"model": "m1", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    // Within the limit: relayed as before.
    let response = http
        .post(api(&f.proxy, "/api/generate"))
        .header("x-padding", &big[..8_000])
        .json(&json!({"model": "m1", "prompt": "x", "stream": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
