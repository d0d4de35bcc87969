//! End-to-end: the real proxy and real reporters, over real gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{Proxy, Reporter, node, proxy_config, wait_for, write_atomically};
use tonic::Code;
use wes_proto::telemetry_client::TelemetryClient;
use wes_proto::{Sample, ThermalState};

const INTERVAL_MS: u64 = 500;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn command_reporter(
    dir: &std::path::Path,
    proxy: &Proxy,
    id: &str,
    token: &str,
    sensor_file: &std::path::Path,
) -> Reporter {
    let cmd = format!("cat {}", sensor_file.display());
    let interval = format!("{INTERVAL_MS}ms");
    let url = proxy.telemetry_url();
    Reporter::start(
        dir,
        &[
            "--node-id",
            id,
            "--proxy",
            &url,
            "--token",
            token,
            "--interval",
            &interval,
            "--sensor",
            "command",
            "--sensor-command",
            &cmd,
        ],
    )
}

#[tokio::test]
async fn ranking_follows_watts_and_thermal_state_within_two_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        dir.path(),
        &proxy_config(0, &[node("gpu-1", "secret-1")], ""),
    );
    let sensor = dir.path().join("sensor.json");
    write_atomically(
        &sensor,
        r#"{"watts": 100.0, "thermal_state": "Normal", "temperature_c": 60}"#,
    );
    let reporter = command_reporter(dir.path(), &proxy, "gpu-1", "secret-1", &sensor);

    wait_for(Duration::from_secs(15), "the first sample", || async {
        let n = proxy.node("gpu-1").await;
        (n["watts"] == 100.0).then_some(())
    })
    .await;
    let first = proxy.node("gpu-1").await;
    assert_eq!(first["thermal_state"], "Normal");
    assert_eq!(first["temperature_c"], 60.0);
    assert!(
        first["last_sample_age_ms"].as_u64().unwrap() < 3 * INTERVAL_MS,
        "{first}"
    );
    assert_eq!(first["healthy"], true);

    write_atomically(&sensor, r#"{"watts": 250.5, "thermal_state": "Serious"}"#);
    let changed = Instant::now();
    let seen = wait_for(
        Duration::from_secs(10),
        "the new watts and thermal state",
        || async {
            let n = proxy.node("gpu-1").await;
            (n["watts"] == 250.5 && n["thermal_state"] == "Serious").then_some(n)
        },
    )
    .await;
    let took = changed.elapsed();
    assert!(
        took <= Duration::from_millis(2 * INTERVAL_MS),
        "took {took:?}, more than two {INTERVAL_MS} ms intervals; reporter log:\n{}",
        reporter.process.log_text()
    );
    assert_eq!(seen["temperature_c"], serde_json::Value::Null);

    write_atomically(&sensor, r#"{"watts": 90, "thermal_state": "Critical"}"#);
    let critical = wait_for(Duration::from_secs(10), "Critical", || async {
        let n = proxy.node("gpu-1").await;
        (n["thermal_state"] == "Critical").then_some(n)
    })
    .await;
    // Critical is excluded from routing by default.
    assert_eq!(critical["healthy"], false, "{critical}");
}

/// Opens a raw stream with `token` and sends `samples`; returns the status that ended it.
async fn send_raw(proxy: &Proxy, token: &str, samples: Vec<Sample>) -> tonic::Status {
    let mut client = TelemetryClient::connect(proxy.telemetry_url())
        .await
        .unwrap();
    let mut request = tonic::Request::new(tokio_stream::iter(samples));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match client.report(request).await {
        Err(status) => status,
        Ok(response) => {
            let mut acks = response.into_inner();
            loop {
                match tokio::time::timeout(Duration::from_secs(10), acks.message())
                    .await
                    .unwrap()
                {
                    Ok(Some(_)) => continue,
                    Ok(None) => return tonic::Status::ok("stream closed"),
                    Err(status) => return status,
                }
            }
        }
    }
}

fn sample(node_id: &str, watts: f64) -> Sample {
    Sample {
        node_id: node_id.into(),
        timestamp_unix_ms: now_ms(),
        seq: 1,
        power_watts: Some(watts),
        thermal_state: ThermalState::Normal as i32,
        ..Sample::default()
    }
}

#[tokio::test]
async fn bad_credentials_and_bad_samples_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        dir.path(),
        &proxy_config(0, &[node("a", "token-a"), node("b", "token-b")], ""),
    );

    // A good sample first, so "unchanged" has something to compare with.
    let status = send_raw(&proxy, "token-a", vec![sample("a", 40.0)]).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    wait_for(Duration::from_secs(5), "the good sample", || async {
        (proxy.node("a").await["watts"] == 40.0).then_some(())
    })
    .await;

    let wrong_token = send_raw(&proxy, "token-x", vec![sample("a", 999.0)]).await;
    assert_eq!(wrong_token.code(), Code::Unauthenticated, "{wrong_token:?}");

    let no_token = {
        let mut client = TelemetryClient::connect(proxy.telemetry_url())
            .await
            .unwrap();
        client
            .report(tonic::Request::new(tokio_stream::iter(vec![sample(
                "a", 999.0,
            )])))
            .await
            .unwrap_err()
    };
    assert_eq!(no_token.code(), Code::Unauthenticated);

    // A's token used to speak for b, and for a node the config does not know.
    let other_node = send_raw(&proxy, "token-a", vec![sample("b", 999.0)]).await;
    assert_eq!(other_node.code(), Code::PermissionDenied, "{other_node:?}");
    let unknown_node = send_raw(&proxy, "token-a", vec![sample("zz", 999.0)]).await;
    assert_eq!(
        unknown_node.code(),
        Code::PermissionDenied,
        "{unknown_node:?}"
    );

    let nan = send_raw(&proxy, "token-a", vec![sample("a", f64::NAN)]).await;
    assert_eq!(nan.code(), Code::InvalidArgument, "{nan:?}");
    assert!(nan.message().contains("power_watts"), "{nan:?}");
    let negative = send_raw(&proxy, "token-a", vec![sample("a", -5.0)]).await;
    assert_eq!(negative.code(), Code::InvalidArgument, "{negative:?}");
    let mut skewed = sample("a", 999.0);
    skewed.timestamp_unix_ms -= 3_600_000;
    let skewed = send_raw(&proxy, "token-a", vec![skewed]).await;
    assert_eq!(skewed.code(), Code::InvalidArgument, "{skewed:?}");

    let b = proxy.node("b").await;
    assert_eq!(
        b["last_sample_age_ms"],
        serde_json::Value::Null,
        "b got a sample: {b}"
    );
    // A barrier: once b's own good sample shows, every refusal above has been handled too.
    let status = send_raw(&proxy, "token-b", vec![sample("b", 7.0)]).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    wait_for(Duration::from_secs(5), "b's good sample", || async {
        (proxy.node("b").await["watts"] == 7.0).then_some(())
    })
    .await;
    let a = proxy.node("a").await;
    assert_eq!(a["watts"], 40.0, "a refused sample changed state: {a}");

    let metrics = reqwest::get(format!("http://{}/metrics", proxy.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("wes_telemetry_samples_refused_total 5\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wes_telemetry_streams_refused_total 2\n"),
        "{metrics}"
    );
    assert!(
        proxy
            .process
            .log_text()
            .contains("token matches no configured node")
    );
}

#[tokio::test]
async fn reporter_resumes_after_the_proxy_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let config = proxy_config(port, &[node("n1", "tok-1")], "");
    let proxy = Proxy::start(dir.path(), &config);
    let sensor = dir.path().join("sensor.json");
    write_atomically(&sensor, r#"{"watts": 55, "thermal_state": "Normal"}"#);
    let mut reporter = command_reporter(dir.path(), &proxy, "n1", "tok-1", &sensor);
    wait_for(Duration::from_secs(15), "the first sample", || async {
        (proxy.node("n1").await["watts"] == 55.0).then_some(())
    })
    .await;

    drop(proxy);
    write_atomically(&sensor, r#"{"watts": 66, "thermal_state": "Fair"}"#);
    let restarted = Proxy::start(dir.path(), &config);
    let n = wait_for(
        Duration::from_secs(20),
        "the reporter to reconnect",
        || async {
            let n = restarted.node("n1").await;
            (n["watts"] == 66.0).then_some(n)
        },
    )
    .await;
    assert_eq!(n["thermal_state"], "Fair");
    assert!(reporter.process.is_running());
    let log = reporter.process.log_text();
    assert!(
        log.contains("telemetry stream down") || log.contains("closed the telemetry stream"),
        "{log}"
    );

    // SIGTERM: the reporter closes its streams and exits 0 promptly.
    let status = reporter
        .process
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .expect("reporter did not exit after SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn failing_or_garbage_sensor_command_shows_unknown_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(dir.path(), &proxy_config(0, &[node("n1", "tok-1")], ""));
    let sensor = dir.path().join("sensor.json");
    write_atomically(&sensor, "this is not json");
    let mut reporter = command_reporter(dir.path(), &proxy, "n1", "tok-1", &sensor);

    let n = wait_for(
        Duration::from_secs(15),
        "a sample with a sensor error",
        || async {
            let n = proxy.node("n1").await;
            (n["last_sample_age_ms"].is_u64()).then_some(n)
        },
    )
    .await;
    assert_eq!(n["thermal_state"], "Unknown", "{n}");
    assert_eq!(n["watts"], serde_json::Value::Null, "{n}");
    let errors = n["sensor_errors"].to_string();
    assert!(errors.to_lowercase().contains("json"), "{errors}");

    // A command that fails outright: the file is gone.
    std::fs::remove_file(&sensor).unwrap();
    let n = wait_for(Duration::from_secs(10), "the failure reason", || async {
        let n = proxy.node("n1").await;
        let errors = n["sensor_errors"].to_string();
        (errors.contains("exit") || errors.contains("status")).then_some(n)
    })
    .await;
    assert_eq!(n["thermal_state"], "Unknown");
    assert!(reporter.process.is_running());

    // The same reporter recovers as soon as the command works again.
    write_atomically(&sensor, r#"{"watts": 12.5, "thermal_state": "Normal"}"#);
    wait_for(Duration::from_secs(10), "recovery", || async {
        let n = proxy.node("n1").await;
        (n["watts"] == 12.5 && n["thermal_state"] == "Normal").then_some(())
    })
    .await;
    assert!(reporter.process.is_running());
}

#[tokio::test]
async fn models_and_probe_reach_the_ranking_on_every_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let ollama = support::fake_ollama(Duration::from_millis(10), 20, &[]).await;
    let first = Proxy::start(dir.path(), &proxy_config(0, &[node("n1", "tok-1")], ""));
    let second = Proxy::start(dir.path(), &proxy_config(0, &[node("n1", "tok-1")], ""));
    let sensor = dir.path().join("sensor.json");
    write_atomically(&sensor, r#"{"watts": 20.0, "thermal_state": "Fair"}"#);
    let cmd = format!("cat {}", sensor.display());
    let ollama_url = format!("http://{ollama}");
    let reporter = Reporter::start(
        dir.path(),
        &[
            "--node-id",
            "n1",
            "--token",
            "tok-1",
            "--interval",
            "300ms",
            "--proxy",
            &first.telemetry_url(),
            "--proxy",
            &second.telemetry_url(),
            "--sensor",
            "command",
            "--sensor-command",
            &cmd,
            "--ollama",
            &ollama_url,
            "--probe-model",
            "llama3.2:3b",
            "--probe-interval",
            "1h",
        ],
    );

    for proxy in [&first, &second] {
        let n = wait_for(
            Duration::from_secs(20),
            "models and a probe result",
            || async {
                let n = proxy.node("n1").await;
                (n["tok_s"].is_f64() && n["models"].is_array()).then_some(n)
            },
        )
        .await;
        assert_eq!(
            n["models"],
            serde_json::json!(["llama3.2:3b", "smollm2:135m"]),
            "{n}"
        );
        // 20 tokens 10 ms apart: about 100 tok/s measured from the stream.
        let tok_s = n["tok_s"].as_f64().unwrap();
        assert!(
            (50.0..=110.0).contains(&tok_s),
            "probe measured {tok_s} tok/s; log:\n{}",
            reporter.process.log_text()
        );
        assert_eq!(n["tok_s_model"], "llama3.2:3b");
        let raw = n["raw_wes"].as_f64().unwrap();
        let penalized = n["penalized_wes"].as_f64().unwrap();
        assert!((raw - tok_s / 20.0).abs() < 1e-9, "{n}");
        assert!((penalized - tok_s / (20.0 * 1.25)).abs() < 1e-9, "{n}");
        assert!(
            (n["thermal_cost_pct"].as_f64().unwrap() - 20.0).abs() < 1e-9,
            "{n}"
        );
        assert_eq!(n["rank"], 1);
    }

    let for_model = reqwest::get(format!("http://{}/ranking?model=smollm2:135m", first.admin))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let entry = &for_model["nodes"][0];
    assert_eq!(entry["id"], "n1");
    // Only llama3.2 was probed: for smollm2 the node holds the model but has no rate yet.
    assert_eq!(entry["tok_s"], serde_json::Value::Null, "{for_model}");
    assert_eq!(entry["rank"], serde_json::Value::Null, "{for_model}");
    let absent = reqwest::get(format!("http://{}/ranking?model=nope", first.admin))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(absent["nodes"], serde_json::json!([]));
}

#[tokio::test]
async fn a_thermal_change_is_sent_at_once_not_at_the_next_interval() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(dir.path(), &proxy_config(0, &[node("hot", "tok-hot")], ""));
    let sensor = dir.path().join("sensor.json");
    write_atomically(&sensor, r#"{"watts": 100.0, "thermal_state": "Normal"}"#);
    let cmd = format!("cat {}", sensor.display());
    let url = proxy.telemetry_url();
    // Samples 20 s apart, the thermal state checked every 100 ms between them.
    let _reporter = Reporter::start(
        dir.path(),
        &[
            "--node-id",
            "hot",
            "--proxy",
            &url,
            "--token",
            "tok-hot",
            "--interval",
            "20s",
            "--thermal-check",
            "100ms",
            "--sensor",
            "command",
            "--sensor-command",
            &cmd,
        ],
    );
    wait_for(Duration::from_secs(15), "the first sample", || async {
        (proxy.node("hot").await["thermal_state"] == "Normal").then_some(())
    })
    .await;
    write_atomically(&sensor, r#"{"watts": 90.0, "thermal_state": "Critical"}"#);
    // Well inside the 20 s interval: only the check can have sent it.
    let hot = wait_for(
        Duration::from_secs(5),
        "Critical reported at once",
        || async {
            let n = proxy.node("hot").await;
            (n["thermal_state"] == "Critical").then_some(n)
        },
    )
    .await;
    assert_eq!(hot["healthy"], false, "{hot}");
    assert_eq!(
        hot["watts"], 90.0,
        "the early sample is a whole sample: {hot}"
    );
}
