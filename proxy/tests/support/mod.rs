//! Runs the real `wes-proxy` and `wes-reporter` binaries for end-to-end tests: free ports, bounded
//! waits, child processes killed on drop, their logs kept for failure messages.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn proxy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wes-proxy"))
}

/// The reporter is another package's binary; `cargo test --workspace` builds it beside ours.
pub fn reporter_bin() -> PathBuf {
    let path = proxy_bin().with_file_name("wes-reporter");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`)",
        path.display()
    );
    path
}

/// A port free right now. Only for listeners we cannot bind on port 0 ourselves.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `limit` with `what`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process that is killed when dropped.
pub struct Running {
    pub child: Child,
    pub log: PathBuf,
}

impl Running {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` and waits (bounded) for the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: i32,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(self.pid(), signal) };
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Proxy {
    pub process: Running,
    pub admin: SocketAddr,
    pub telemetry: SocketAddr,
    pub api: SocketAddr,
    pub config_path: PathBuf,
}

/// One `[[nodes]]` entry.
pub struct NodeSpec<'a> {
    pub id: &'a str,
    pub url: &'a str,
    pub token: &'a str,
}

/// A node whose telemetry the test sends itself. Its URL answers the proxy's health check the
/// way Ollama does, so the node is healthy as long as its telemetry is.
pub fn node<'a>(id: &'a str, token: &'a str) -> NodeSpec<'a> {
    NodeSpec {
        id,
        url: banner_node(),
        token,
    }
}

/// `http://ADDR` of a process-wide server that answers every request "Ollama is running".
/// A plain thread, not a task: it outlives each test's own runtime.
pub fn banner_node() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                std::thread::spawn(move || answer_banner(stream));
            }
        });
        url
    })
}

fn answer_banner(stream: std::net::TcpStream) {
    use std::io::Write;
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    let body = "Ollama is running";
    // One response per request head, on a keep-alive connection.
    loop {
        let mut line = String::new();
        let mut got_head = false;
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            got_head = true;
            if line == "\r\n" || line == "\n" {
                break;
            }
            line.clear();
        }
        if !got_head {
            return;
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A config with the given telemetry port (0: any) and nodes; `stale_after` for routing, and
/// `tables` (more TOML tables) placed before the nodes.
pub fn proxy_config_with(
    telemetry_port: u16,
    nodes: &[NodeSpec<'_>],
    stale_after: &str,
    tables: &str,
) -> String {
    let mut text = format!(
        "[listen]\napi = \"127.0.0.1:{}\"\ntelemetry = \"127.0.0.1:{telemetry_port}\"\nadmin = \"127.0.0.1:0\"\n\n[routing]\npolicy = \"top\"\nstale_after = \"{stale_after}\"\n\n{tables}\n",
        free_port()
    );
    for n in nodes {
        text.push_str(&format!(
            "\n[[nodes]]\nid = \"{}\"\nurl = \"{}\"\ntoken = \"{}\"\npue = 1.0\nmax_concurrency = 4\n",
            n.id, n.url, n.token
        ));
    }
    text
}

pub fn proxy_config(telemetry_port: u16, nodes: &[NodeSpec<'_>], tables: &str) -> String {
    proxy_config_with(telemetry_port, nodes, "3s", tables)
}

/// Starts `command` with stderr into `log`; its stdout lines arrive on the receiver (read by a
/// thread, so a test can wait on them with a timeout).
pub fn spawn_reading_stdout(
    mut command: Command,
    log: PathBuf,
) -> (Running, std::sync::mpsc::Receiver<String>) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Running { child, log }, rx)
}

/// Starts `wes-sim-node` with `profile` holding `models`; returns it with the address it bound.
pub fn sim_node(dir: &Path, profile: &str, models: &str) -> (Running, SocketAddr) {
    let bin = proxy_bin().with_file_name("wes-sim-node");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace`",
        bin.display()
    );
    let mut command = Command::new(bin);
    command.args([
        "--listen",
        "127.0.0.1:0",
        "--profile",
        profile,
        "--models",
        models,
    ]);
    // A profile may be a path: name the log by its file stem.
    let name = Path::new(profile)
        .file_stem()
        .map_or_else(|| profile.to_owned(), |s| s.to_string_lossy().into_owned());
    let log = dir.join(format!("sim-{name}-{}.log", free_port()));
    let (running, rx) = spawn_reading_stdout(command, log);
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("wes-sim-node did not start: {}", running.log_text()));
    let addr = line.rsplit(' ').next().unwrap().parse().unwrap();
    (running, addr)
}

impl Proxy {
    pub fn start(dir: &Path, config: &str) -> Proxy {
        let config_path = dir.join(format!("proxy-{}.toml", free_port()));
        std::fs::write(&config_path, config).unwrap();
        let log = config_path.with_extension("log");
        let mut command = Command::new(proxy_bin());
        command.arg("--config").arg(&config_path);
        let (mut process, rx) = spawn_reading_stdout(command, log);
        let (mut admin, mut telemetry) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while admin.is_none() || telemetry.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "wes-proxy did not report its listeners; log:\n{}",
                    process.log_text()
                )
            });
            let addr = |l: &str| l.rsplit(' ').next().unwrap().parse::<SocketAddr>().unwrap();
            if line.contains("admin listening on") {
                admin = Some(addr(&line));
            } else if line.contains("telemetry listening on") {
                telemetry = Some(addr(&line));
            }
        }
        assert!(
            process.is_running(),
            "wes-proxy exited; log:\n{}",
            process.log_text()
        );
        let api = config
            .lines()
            .find_map(|l| l.strip_prefix("api = \""))
            .and_then(|l| l.trim_end_matches('"').parse().ok())
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        Proxy {
            process,
            admin: admin.unwrap(),
            telemetry: telemetry.unwrap(),
            api,
            config_path,
        }
    }

    pub fn telemetry_url(&self) -> String {
        format!("http://{}", self.telemetry)
    }

    pub async fn ranking(&self) -> Value {
        let url = format!("http://{}/ranking", self.admin);
        reqwest::get(&url).await.unwrap().json().await.unwrap()
    }

    /// The `/ranking` entry of one node.
    pub async fn node(&self, id: &str) -> Value {
        let ranking = self.ranking().await;
        ranking["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("node {id} not in /ranking: {ranking}"))
    }
}

pub struct Reporter {
    pub process: Running,
}

impl Reporter {
    pub fn start(dir: &Path, args: &[&str]) -> Reporter {
        let log = dir.join(format!("reporter-{}.log", free_port()));
        let child = Command::new(reporter_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Reporter {
            process: Running { child, log },
        }
    }
}

/// Writes `text` so that a reader never sees a half-written file.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Sends one sample for `node_id` over a fresh stream and waits until the proxy has answered.
pub async fn push_sample(telemetry_url: &str, token: &str, sample: wes_proto::Sample) {
    let mut client =
        wes_proto::telemetry_client::TelemetryClient::connect(telemetry_url.to_owned())
            .await
            .unwrap();
    let mut request = tonic::Request::new(tokio_stream::iter(vec![sample]));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut acks = client.report(request).await.unwrap().into_inner();
    while let Some(_ack) = acks.message().await.unwrap() {}
}

pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A sample saying the node holds `models` and decodes `model` at `tok_s` drawing `watts`.
pub fn node_sample(
    node_id: &str,
    watts: f64,
    thermal: wes_proto::ThermalState,
    models: &[&str],
    tok_s: f64,
) -> wes_proto::Sample {
    wes_proto::Sample {
        node_id: node_id.into(),
        timestamp_unix_ms: now_unix_ms(),
        seq: 1,
        power_watts: Some(watts),
        thermal_state: thermal as i32,
        models: Some(wes_proto::ModelList {
            models: models
                .iter()
                .map(|m| wes_proto::Model {
                    name: (*m).into(),
                    ..wes_proto::Model::default()
                })
                .collect(),
        }),
        probes: models
            .iter()
            .map(|m| wes_proto::ProbeResult {
                model: (*m).into(),
                tokens: 32,
                seconds: 31.0 / tok_s,
                tok_s,
                finished_unix_ms: now_unix_ms(),
                ..wes_proto::ProbeResult::default()
            })
            .collect(),
        ..wes_proto::Sample::default()
    }
}

/// Serves `app` on a free port in this test's runtime.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A stand-in Ollama: lists llama3.2:3b, smollm2:135m and `extra` models, answers the health
/// check, and streams `/api/generate` as `tokens` lines `gap` apart, with Ollama's own
/// `eval_count` / `eval_duration` at the end. A body naming a "broken" model gets a 500.
pub async fn fake_ollama(gap: Duration, tokens: usize, extra: &[&str]) -> SocketAddr {
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    let mut models = vec![
        serde_json::json!({"name": "llama3.2:3b", "size": 2019393189u64, "digest": "a80c4f17acd5"}),
        serde_json::json!({"name": "smollm2:135m", "size": 98000000u64, "digest": "9077fe9d2ae1"}),
    ];
    models.extend(
        extra
            .iter()
            .map(|m| serde_json::json!({"name": m, "size": 1000000u64, "digest": "0000000000aa"})),
    );
    let tags = serde_json::json!({ "models": models });
    let app = axum::Router::new()
        .route("/", get(|| async { "Ollama is running" }))
        .route("/api/tags", get(move || async move { axum::Json(tags) }))
        .route(
            "/api/generate",
            post(move |body: axum::body::Bytes| async move {
                if body.windows(6).any(|w| w == b"broken") {
                    return (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        axum::Json(serde_json::json!({"error": "model runner crashed"})),
                    )
                        .into_response();
                }
                let lines = futures::stream::unfold(0usize, move |i| async move {
                    if i > tokens {
                        return None;
                    }
                    tokio::time::sleep(gap).await;
                    let line = if i < tokens {
                        format!("{{\"model\":\"llama3.2:3b\",\"response\":\"t{i}\",\"done\":false}}\n")
                    } else {
                        let ns = gap.as_nanos() as u64 * tokens as u64;
                        format!("{{\"model\":\"llama3.2:3b\",\"response\":\"\",\"done\":true,\"eval_count\":{tokens},\"eval_duration\":{ns}}}\n")
                    };
                    Some((Ok::<_, std::convert::Infallible>(line), i + 1))
                });
                (
                    [("content-type", "application/x-ndjson")],
                    axum::body::Body::from_stream(lines),
                )
                    .into_response()
            }),
        );
    serve(app).await
}
