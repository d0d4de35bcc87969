//! `GET /metrics`: the metrics registry, encoded (see `crate::metrics`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

pub async fn render(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.encode();
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}
