//! The admin listener: the ranking as JSON, Prometheus metrics, health.

mod metrics;
mod ranking_json;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::state::AppState;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ranking", get(ranking))
        .route("/metrics", get(metrics::render))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(state)
}

#[derive(Deserialize)]
struct RankingQuery {
    model: Option<String>,
}

async fn ranking(
    State(state): State<Arc<AppState>>,
    Query(query): Query<RankingQuery>,
) -> Response {
    let now = std::time::Instant::now();
    let body = match query.model {
        None => ranking_json::render(&state.ranking.load(), now),
        Some(model) => {
            let config = state.config.load();
            let snapshot = crate::ranking::RankingSnapshot::build_for_model(
                &state.fleet.view(),
                &config.routing,
                now,
                &model,
            );
            ranking_json::render(&snapshot, now)
        }
    };
    axum::Json(body).into_response()
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "error": "not found: try /ranking, /metrics or /healthz" })),
    )
        .into_response()
}
