//! The simulator's own endpoints: its power and thermal state, in the JSON object the
//! reporter's `command` sensor reads (`curl -s http://node/wes-sim/state`), and a way to force
//! a thermal event for tests and benchmarks.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::parse_json;
use crate::node::{Node, StateReport};
use crate::profile::Profile;

/// Temperatures outside this range are typos, not thermal events.
const PLAUSIBLE_C: std::ops::RangeInclusive<f64> = -40.0..=150.0;

pub async fn state(State(node): State<Arc<Node>>) -> Json<StateReport> {
    Json(node.state())
}

pub async fn profile(State(node): State<Arc<Node>>) -> Json<Profile> {
    Json(node.profile.clone())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeatRequest {
    /// The die is this hot now, and cools or heats from there.
    temperature_c: Option<f64>,
    /// The room is this hot from now on: where the node settles moves.
    ambient_c: Option<f64>,
}

pub async fn heat(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let bad = |message: String| {
        (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
    };
    let req: HeatRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    if req.temperature_c.is_none() && req.ambient_c.is_none() {
        return bad("give temperature_c and/or ambient_c".to_string());
    }
    for (key, value) in [
        ("temperature_c", req.temperature_c),
        ("ambient_c", req.ambient_c),
    ] {
        if let Some(v) = value
            && !PLAUSIBLE_C.contains(&v)
        {
            return bad(format!(
                "{key} must be within {}..={} °C, got {v}",
                PLAUSIBLE_C.start(),
                PLAUSIBLE_C.end()
            ));
        }
    }
    node.heat(req.temperature_c, req.ambient_c);
    Json(node.state()).into_response()
}
