//! An in-process node on a free port, for the API tests: the real router and engine, no fixed
//! ports, stopped when dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use wes_sim_node::node::{Node, Settings};
use wes_sim_node::profile::Profile;

pub const MODELS: &[&str] = &["llama3.2:3b", "smollm2:135m", "nomic-embed-text"];

pub struct Sim {
    pub base: String,
    pub node: Arc<Node>,
    pub http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

/// A built-in profile with instant model loads, so timings in tests are decode and prefill
/// only; tests of loading set `load_gb_per_s` themselves.
pub fn profile(name: &str) -> Profile {
    let mut p = Profile::load(name).unwrap();
    p.load_gb_per_s = 0.0;
    p
}

pub async fn start(profile: Profile) -> Sim {
    start_with(profile, 1.0).await
}

pub async fn start_with(profile: Profile, time_scale: f64) -> Sim {
    let node = Node::new(Settings {
        profile,
        models: MODELS.iter().map(|m| m.to_string()).collect(),
        seed: 7,
        time_scale,
        default_tokens: 16,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(wes_sim_node::serve(
        listener,
        Arc::clone(&node),
        async move {
            let _ = stopped.await;
        },
    ));
    Sim {
        base: format!("http://{addr}"),
        node,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        _stop: stop,
    }
}

impl Sim {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Posts and reads the response as it arrives: each complete line with the instant it
    /// was read, as a client timing the stream sees it.
    pub async fn stream_lines(
        &self,
        path: &str,
        body: &Value,
    ) -> (u16, String, Vec<(Instant, String)>) {
        let mut r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let mut pending = Vec::new();
        let mut lines = Vec::new();
        while let Some(chunk) = r.chunk().await.unwrap() {
            let at = Instant::now();
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let text = String::from_utf8(line).unwrap().trim_end().to_string();
                if !text.is_empty() {
                    lines.push((at, text));
                }
            }
        }
        (status, content_type, lines)
    }

    pub async fn state(&self) -> Value {
        self.get("/wes-sim/state").await.1
    }

    /// Polls the state until `done` holds, or fails after `limit`.
    pub async fn wait_state(&self, limit: Duration, mut done: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.state().await;
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "state never matched; last {s}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Tokens per second a client measures: the gaps between first and last token.
pub fn client_rate(times: &[Instant]) -> f64 {
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        return 0.0;
    };
    (times.len() - 1) as f64 / last.duration_since(*first).as_secs_f64()
}

/// The `wes-sim-node` binary, running; killed when dropped.
pub struct Running {
    pub child: std::process::Child,
    /// `host:port` from its `listening on` line.
    pub addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the `wes-sim-node` binary at `bin` with `args` and waits (bounded) for its one stdout
/// line, `wes-sim-node listening on ADDR`.
pub fn spawn_binary(bin: &str, args: &[&str]) -> Running {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("no listening line within 20 s");
    let addr = line
        .strip_prefix("wes-sim-node listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Running { child, addr }
}
