//! The real binary as scripts and the client tests run it: the one stdout line, serving, and
//! a clean exit on SIGTERM and SIGINT.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_wes-sim-node");

mod common;

use common::Running;

/// Starts the binary and waits (bounded) for its `listening on` line.
fn spawn(args: &[&str]) -> Running {
    common::spawn_binary(BIN, args)
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) with a pid we spawned and own; no memory is shared.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0);
}

#[tokio::test]
async fn serves_after_its_line_and_exits_cleanly_on_sigterm() {
    let mut node = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--profile",
        "ryzen-cpu",
        "--models",
        "llama3.2:3b,qwen3:8b",
    ]);
    let base = format!("http://{}", node.addr);
    let text = reqwest::get(format!("{base}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "Ollama is running");
    let tags: serde_json::Value = reqwest::get(format!("{base}/api/tags"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["llama3.2:3b", "qwen3:8b"]);
    let state: serde_json::Value = reqwest::get(format!("{base}/wes-sim/state"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["profile"], "ryzen-cpu");

    signal(&node.child, libc::SIGTERM);
    let status = wait_exit(&mut node.child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sigint_ends_it_even_with_a_stream_open() {
    let mut node = spawn(&["--listen", "127.0.0.1:0", "--profile", "fanless-edge"]);
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/generate", node.addr))
        .json(&serde_json::json!({"model": "llama3.2:3b", "prompt": "x",
                                  "options": {"num_predict": 5000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    signal(&node.child, libc::SIGINT);
    let status = wait_exit(&mut node.child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_profile_file_works_and_a_bad_profile_fails_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custom.toml");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/profiles/h100.toml"
    ))
    .unwrap()
    .replace("name = \"h100\"", "name = \"custom\"");
    std::fs::write(&path, text).unwrap();
    let node = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--profile",
        path.to_str().unwrap(),
    ]);
    assert!(!node.addr.is_empty());
    drop(node);

    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--profile", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apple-m2"), "lists the built-ins: {stderr}");
    assert!(out.stdout.is_empty(), "no listening line");
}

#[test]
fn list_profiles_names_the_builtins() {
    let out = Command::new(BIN).arg("--list-profiles").output().unwrap();
    assert!(out.status.success());
    let names = String::from_utf8(out.stdout).unwrap();
    for name in ["apple-m2", "rtx-4090", "h100", "ryzen-cpu", "fanless-edge"] {
        assert!(names.lines().any(|l| l == name), "{name} in {names}");
    }
}
