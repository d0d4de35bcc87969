//! `POST /nodes/{id}/drain` and `/nodes/{id}/undrain`: take a node out of rotation for
//! maintenance without touching the config. Requests in flight on it finish; new ones go
//! elsewhere. The flag lives with the node's state: it survives reloads, not restarts.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

pub async fn drain(state: State<Arc<AppState>>, id: Path<String>) -> Response {
    set(state, id, true)
}

pub async fn undrain(state: State<Arc<AppState>>, id: Path<String>) -> Response {
    set(state, id, false)
}

fn set(State(state): State<Arc<AppState>>, Path(id): Path<String>, draining: bool) -> Response {
    if !state.fleet.set_draining(&id, draining) {
        let message = format!("no node {id:?} in the running config");
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": message })),
        )
            .into_response();
    }
    tracing::info!(node = %id, draining, "drain state set by admin");
    state.rebuild_ranking();
    let in_flight = state
        .fleet
        .view()
        .get(&id)
        .map_or(0, |n| n.state.own_in_flight());
    axum::Json(json!({ "id": id, "draining": draining, "in_flight": in_flight })).into_response()
}
