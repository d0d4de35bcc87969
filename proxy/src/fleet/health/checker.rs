//! Active health checks: every `health.check_interval`, `GET /` on each node's Ollama (which
//! answers "Ollama is running"). A node that stops answering is taken out of rotation before a
//! client request finds out, even while its reporter still streams telemetry.
//!
//! Why not Pingora's own `lb::health_check`: its checks belong to a `LoadBalancer`'s
//! `Backends`, a second node set keyed by address that would have to follow our config and
//! reloads, and its verdict is a bare healthy/unhealthy flag, where `/ranking` shows the reason
//! (refused, timed out, HTTP 500) an operator acts on. The check itself is one GET on a
//! background thread, so owning it costs a few lines and keeps one node set, keyed by id.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use crate::state::AppState;

/// Checks every node once, all at once, and records each verdict on the node.
pub async fn check_all(state: &AppState, http: &reqwest::Client) {
    let config = state.config.load();
    let timeout = config.health.check_timeout;
    let view = state.fleet.view();
    let checks = view.nodes.iter().map(|node| {
        let url = format!("{}/", node.config.url);
        async move {
            let outcome = check(http, &url, timeout).await;
            match (&outcome, node.state.health.check_failed()) {
                (Err(why), false) => {
                    tracing::warn!(node = %node.config.id, "health check failed: {why}")
                }
                (Ok(()), true) => {
                    tracing::info!(node = %node.config.id, "health check passes again")
                }
                _ => {}
            }
            node.state.health.record_check(outcome);
        }
    });
    join_all(checks).await;
}

async fn check(http: &reqwest::Client, url: &str, timeout: Duration) -> Result<(), String> {
    let response = http
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    if response.status().is_server_error() {
        return Err(format!("GET {url}: HTTP {}", response.status()));
    }
    Ok(())
}

/// reqwest's Display stops at "error sending request"; the cause says what went wrong.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer within the check timeout".into();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Runs checks until `stop` resolves.
pub async fn run(state: Arc<AppState>, stop: impl std::future::Future<Output = ()>) {
    let http = match reqwest::Client::builder().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("health checks disabled: cannot build an HTTP client: {e}");
            return;
        }
    };
    tokio::pin!(stop);
    loop {
        let health = state.config.load().health.clone();
        if health.active_checks {
            check_all(&state, &http).await;
        } else {
            // Turned off (perhaps by a reload): no verdict of ours may linger on a node.
            for node in &state.fleet.view().nodes {
                node.state.health.record_check(Ok(()));
            }
        }
        let interval = health.check_interval;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut stop => return,
        }
    }
}
