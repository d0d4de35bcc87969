//! `wes-sim-load` as the demo and the benchmarks run it: real binaries, a simulated node on a
//! free port, the JSON summary on stdout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const NODE: &str = env!("CARGO_BIN_EXE_wes-sim-node");
const LOAD: &str = env!("CARGO_BIN_EXE_wes-sim-load");

mod common;

struct Node {
    _running: common::Running,
    base: String,
}

fn start_node() -> Node {
    let running = common::spawn_binary(
        NODE,
        &[
            "--listen",
            "127.0.0.1:0",
            "--profile",
            "h100",
            "--models",
            "llama3.2:3b,smollm2:135m",
        ],
    );
    Node {
        base: format!("http://{}", running.addr),
        _running: running,
    }
}

fn run_load(args: &[&str]) -> Value {
    let out = Command::new(LOAD)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn streams_every_api_and_summarizes() {
    let node = start_node();
    let s = run_load(&[
        "--api",
        &node.base,
        "--rate",
        "20",
        "--duration",
        "1s",
        "--num-predict",
        "8",
        "--models",
        "llama3.2:3b,smollm2:135m",
        "--endpoints",
        "generate,chat,openai-chat",
    ]);
    let sent = s["sent"].as_u64().unwrap();
    assert!(sent >= 5, "only {sent} sent at 20/s for 1 s: {s}");
    assert_eq!(s["ok"], sent, "{s}");
    assert_eq!(s["failed"], 0);
    // Every answer asked for 8 tokens and each protocol's final chunk says how many came.
    assert_eq!(s["tokens"].as_u64().unwrap(), sent * 8, "{s}");
    // A node answers without X-WES-Node; only the proxy sets it.
    assert_eq!(s["by_node"]["(none)"], sent);
    assert!(s["ttft_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(s["duration_ms"]["p95"].as_f64().unwrap() >= s["ttft_ms"]["p50"].as_f64().unwrap());
}

#[test]
fn failures_are_counted_not_fatal() {
    let node = start_node();
    let s = run_load(&[
        "--api",
        &node.base,
        "--rate",
        "10",
        "--duration",
        "500ms",
        "--models",
        "no-such-model",
    ]);
    assert_eq!(s["ok"], 0);
    assert_eq!(s["failed"], s["sent"]);
    assert_eq!(s["by_status"]["404"], s["sent"], "{s}");

    // Nothing listens on port 1: every request fails to connect, and the run still ends.
    let s = run_load(&[
        "--api",
        "http://127.0.0.1:1",
        "--rate",
        "10",
        "--duration",
        "500ms",
    ]);
    assert_eq!(s["by_status"]["no response"], s["sent"], "{s}");
    assert!(!s["errors"].as_array().unwrap().is_empty());
}

#[test]
fn sigint_ends_the_run_with_a_summary() {
    let node = start_node();
    let mut child = Command::new(LOAD)
        .args(["--api", &node.base, "--rate", "5", "--num-predict", "4"])
        .args(["--report-every", "100ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Signalled once a request has come back (its progress lines say so): its signal handlers
    // are in place from before the first request.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("wes-sim-load never reported an answered request");
        let ok = line
            .split_once(" ok ")
            .and_then(|(_, rest)| rest.split(' ').next()?.parse::<u64>().ok());
        if ok.is_some_and(|n| n >= 1) {
            break;
        }
    }
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on a child we spawned; no memory is shared.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(out.status.success());
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s["sent"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
}
