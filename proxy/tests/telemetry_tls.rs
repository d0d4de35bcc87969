//! Telemetry over TLS, end to end: the real proxy with `telemetry_tls_cert`/`_key`, real
//! reporters with `https://` and `--ca-cert`, certificates made fresh per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{Proxy, Reporter, node, proxy_bin, proxy_config, wait_for};
use wes_proto::telemetry_client::TelemetryClient;

/// A self-signed certificate for 127.0.0.1 and localhost, written as `NAME.pem` and
/// `NAME.key` in `dir`.
fn self_signed(dir: &Path, name: &str) {
    self_signed_for(dir, name, &["127.0.0.1", "localhost"]);
}

fn self_signed_for(dir: &Path, name: &str, subjects: &[&str]) {
    let subjects: Vec<String> = subjects.iter().map(|s| (*s).to_owned()).collect();
    let made = rcgen::generate_simple_self_signed(subjects).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), made.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        made.signing_key.serialize_pem(),
    )
    .unwrap();
}

/// A proxy whose telemetry listener speaks TLS with `proxy.pem`/`proxy.key` (paths relative
/// to the config file, which lives in `dir`).
fn tls_proxy(dir: &Path, id: &str, token: &str) -> Proxy {
    let config = proxy_config(0, &[node(id, token)], "").replacen(
        "admin = \"127.0.0.1:0\"\n",
        "admin = \"127.0.0.1:0\"\ntelemetry_tls_cert = \"proxy.pem\"\ntelemetry_tls_key = \"proxy.key\"\n",
        1,
    );
    Proxy::start(dir, &config)
}

fn https_url(proxy: &Proxy) -> String {
    proxy.telemetry_url().replacen("http://", "https://", 1)
}

fn reporter(dir: &Path, url: &str, id: &str, token: &str, ca: &Path) -> Reporter {
    reporter_with(dir, url, id, token, ca, &[])
}

fn reporter_with(
    dir: &Path,
    url: &str,
    id: &str,
    token: &str,
    ca: &Path,
    extra: &[&str],
) -> Reporter {
    let ca = ca.display().to_string();
    let mut args = vec![
        "--node-id",
        id,
        "--proxy",
        url,
        "--ca-cert",
        &ca,
        "--token",
        token,
        "--interval",
        "300ms",
        "--sensor",
        "command",
        "--sensor-command",
        r#"echo '{"watts": 123.0, "thermal_state": "Normal"}'"#,
    ];
    args.extend_from_slice(extra);
    Reporter::start(dir, &args)
}

#[tokio::test]
async fn reporter_streams_over_tls_and_plaintext_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    self_signed(dir.path(), "proxy");
    let proxy = tls_proxy(dir.path(), "gpu-1", "secret-1");

    // A client speaking plaintext HTTP/2 to the TLS listener gets no gRPC session.
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        let mut client = TelemetryClient::connect(proxy.telemetry_url())
            .await
            .map_err(|e| e.to_string())?;
        let mut request = tonic::Request::new(tokio_stream::iter(Vec::new()));
        request
            .metadata_mut()
            .insert("authorization", "Bearer secret-1".parse().unwrap());
        client
            .report(request)
            .await
            .map(|_| ())
            .map_err(|s| s.to_string())
    })
    .await
    .expect("the plaintext attempt hung");
    assert!(plain.is_err(), "plaintext gRPC was accepted");

    let reporter = reporter(
        dir.path(),
        &https_url(&proxy),
        "gpu-1",
        "secret-1",
        &dir.path().join("proxy.pem"),
    );
    let seen = wait_for(Duration::from_secs(15), "a sample over TLS", || async {
        let n = proxy.node("gpu-1").await;
        (n["watts"] == 123.0).then_some(n)
    })
    .await;
    assert_eq!(seen["healthy"], true, "{seen}");
    // The proxy's acknowledgement reaches the reporter just after the sample shows.
    wait_for(
        Duration::from_secs(10),
        "the reporter's stream-up line",
        || async {
            reporter
                .process
                .log_text()
                .contains("telemetry stream up")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn reporter_refuses_a_proxy_whose_certificate_it_does_not_trust() {
    let dir = tempfile::tempdir().unwrap();
    self_signed(dir.path(), "proxy");
    self_signed(dir.path(), "stranger");
    let proxy = tls_proxy(dir.path(), "gpu-1", "secret-1");
    let reporter = reporter(
        dir.path(),
        &https_url(&proxy),
        "gpu-1",
        "secret-1",
        &dir.path().join("stranger.pem"),
    );
    wait_for(
        Duration::from_secs(15),
        "the reporter to log the untrusted certificate",
        || async {
            let log = reporter.process.log_text();
            log.contains("invalid peer certificate").then_some(())
        },
    )
    .await;
    let n = proxy.node("gpu-1").await;
    assert_eq!(n["watts"], serde_json::Value::Null, "{n}");
}

/// Reporters dial each replica by IP (Kubernetes' headless Service) while the replicas share
/// one certificate for the service name: `--tls-server-name` checks that name instead.
#[tokio::test]
async fn a_proxy_dialled_by_ip_is_checked_against_the_named_server() {
    let dir = tempfile::tempdir().unwrap();
    self_signed_for(dir.path(), "proxy", &["telemetry.wes.test"]);
    let proxy = tls_proxy(dir.path(), "gpu-1", "secret-1");
    let ca = dir.path().join("proxy.pem");

    let by_ip = reporter(dir.path(), &https_url(&proxy), "gpu-1", "secret-1", &ca);
    wait_for(
        Duration::from_secs(15),
        "the reporter to refuse a certificate without the IP",
        || async {
            let log = by_ip.process.log_text();
            log.contains("invalid peer certificate").then_some(())
        },
    )
    .await;
    drop(by_ip);
    assert_eq!(proxy.node("gpu-1").await["watts"], serde_json::Value::Null);

    let named = reporter_with(
        dir.path(),
        &https_url(&proxy),
        "gpu-1",
        "secret-1",
        &ca,
        &["--tls-server-name", "telemetry.wes.test"],
    );
    wait_for(Duration::from_secs(15), "a sample over TLS", || async {
        let n = proxy.node("gpu-1").await;
        (n["watts"] == 123.0).then_some(())
    })
    .await;
    drop(named);
}

#[test]
fn a_bad_key_or_a_lone_certificate_is_a_clear_config_error() {
    let dir = tempfile::tempdir().unwrap();
    self_signed(dir.path(), "proxy");
    std::fs::write(dir.path().join("garbage.key"), "not a key").unwrap();
    let base = proxy_config(0, &[node("gpu-1", "secret-1")], "");
    let check = |name: &str, extra: &str| {
        let path = dir.path().join(name);
        let text = base.replacen(
            "admin = \"127.0.0.1:0\"\n",
            &format!("admin = \"127.0.0.1:0\"\n{extra}"),
            1,
        );
        std::fs::write(&path, text).unwrap();
        let out = Command::new(proxy_bin())
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (ok, err) = check(
        "good.toml",
        "telemetry_tls_cert = \"proxy.pem\"\ntelemetry_tls_key = \"proxy.key\"\n",
    );
    assert!(ok, "{err}");
    let (ok, err) = check(
        "garbage.toml",
        "telemetry_tls_cert = \"proxy.pem\"\ntelemetry_tls_key = \"garbage.key\"\n",
    );
    assert!(!ok && err.contains("telemetry TLS"), "{err}");
    let (ok, err) = check("lone.toml", "telemetry_tls_cert = \"proxy.pem\"\n");
    assert!(!ok && err.contains("set both or neither"), "{err}");
    let (ok, err) = check(
        "missing.toml",
        "telemetry_tls_cert = \"nowhere.pem\"\ntelemetry_tls_key = \"proxy.key\"\n",
    );
    assert!(!ok && err.contains("nowhere.pem"), "{err}");
}
