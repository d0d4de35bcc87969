//! The admin listener: the live leaderboard page, the ranking as JSON, Prometheus metrics,
//! health, reload.

mod drain;
mod metrics;
mod ranking_json;
mod usage_json;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::access;
use crate::config::AdminConfig;
use crate::state::AppState;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(leaderboard))
        .route("/ranking", get(ranking))
        .route("/ranking/history", get(ranking_history))
        .route("/metrics", get(metrics::render))
        .route("/usage", get(usage_json::usage))
        .route("/healthz", get(healthz))
        .route("/reload", post(reload))
        .route("/nodes/{id}/drain", post(drain::drain))
        .route("/nodes/{id}/undrain", post(drain::undrain))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Which admin calls need the token (when one is configured: without one the listener is on
/// loopback, which the config check enforces, and stays open as before).
fn needs_token(method: &Method, path: &str, admin: &AdminConfig) -> bool {
    if admin.token.is_none() || path == "/healthz" {
        return false;
    }
    let read = method == Method::GET || method == Method::HEAD;
    !read || admin.protect_reads || path == "/usage"
}

async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let config = state.config.load();
    let (method, path) = (request.method(), request.uri().path());
    if needs_token(method, path, &config.admin)
        && let Err(denied) = access::check_admin(&config.admin, request.headers())
    {
        tracing::info!(%method, path, "admin call refused: {}", denied.message());
        return (
            StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(serde_json::json!({ "error": denied.message() })),
        )
            .into_response();
    }
    drop(config);
    next.run(request).await
}

/// `/ranking`'s measured J/token covers the ledger's last 15 minutes: recent enough to follow
/// a node that heats up, long enough to hold many requests.
const MEASURED_WINDOW_MS: u64 = 15 * 60 * 1000;

#[derive(Deserialize)]
struct RankingQuery {
    model: Option<String>,
}

async fn ranking(
    State(state): State<Arc<AppState>>,
    Query(query): Query<RankingQuery>,
) -> Response {
    let now = std::time::Instant::now();
    let published = state.ranking.load();
    let models = &published.board.models;
    let since = crate::state::unix_ms().saturating_sub(MEASURED_WINDOW_MS);
    let measured = state.usage.joules_per_token(since);
    let body = match query.model {
        None => ranking_json::render(&published.board, models, &measured, now),
        Some(model) => {
            let config = state.config.load();
            let snapshot = crate::ranking::RankingSnapshot::build_for_model(
                &state.fleet.view(),
                &config.routing,
                &config.health,
                now,
                &model,
            );
            ranking_json::render(&snapshot, models, &measured, now)
        }
    };
    axum::Json(body).into_response()
}

async fn ranking_history(State(state): State<Arc<AppState>>) -> Response {
    let history = state.history.lock();
    axum::Json(ranking_json::render_history(&history)).into_response()
}

/// Applies the config file whole, or answers 400 with every error and keeps the running one.
async fn reload(State(state): State<Arc<AppState>>) -> Response {
    match state.reload() {
        Ok(outcome) => {
            tracing::info!(
                trigger = "POST /reload",
                changed = outcome.changed,
                "config reloaded"
            );
            axum::Json(serde_json::json!({ "status": "applied", "changed": outcome.changed }))
                .into_response()
        }
        Err(errors) => {
            tracing::error!(trigger = "POST /reload", "config reload refused:\n{errors}");
            let list: Vec<_> = errors
                .0
                .iter()
                .map(|e| serde_json::json!({ "line": e.line, "message": e.message }))
                .collect();
            (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({ "error": format!("config refused, running config kept: {errors}"), "errors": list })),
            )
                .into_response()
        }
    }
}

/// One self-contained file (inline CSS and JS, no CDN): admin networks are often closed.
const LEADERBOARD_HTML: &str = include_str!("leaderboard.html");

async fn leaderboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // A proxy upgrade changes the page; a browser must not keep showing the old one.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        LEADERBOARD_HTML,
    )
        .into_response()
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(
            serde_json::json!({ "error": "not found: try /, /ranking, /ranking/history, /usage, /metrics or /healthz" }),
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::SecretDigest;

    #[test]
    fn which_admin_calls_need_the_token() {
        let mut admin = AdminConfig::default();
        // No token: a loopback listener, open as before.
        assert!(!needs_token(&Method::POST, "/reload", &admin));
        admin.token = Some(SecretDigest::of("adm"));
        assert!(needs_token(&Method::POST, "/reload", &admin));
        assert!(needs_token(&Method::POST, "/nodes/a/drain", &admin));
        assert!(needs_token(&Method::GET, "/usage", &admin));
        assert!(!needs_token(&Method::GET, "/ranking", &admin));
        assert!(!needs_token(&Method::GET, "/healthz", &admin));
        admin.protect_reads = true;
        assert!(needs_token(&Method::GET, "/ranking", &admin));
        assert!(needs_token(&Method::GET, "/metrics", &admin));
        assert!(needs_token(&Method::GET, "/", &admin));
        assert!(!needs_token(&Method::GET, "/healthz", &admin));
    }
}
