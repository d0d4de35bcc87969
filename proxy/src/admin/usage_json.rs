//! `GET /usage`: the ledger's totals per key, model and node (docs/contract.md, Usage), over
//! the whole ledger or a window from `?since=`.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::state::{AppState, unix_ms};
use crate::usage::{NodeTotals, Report, Totals};

#[derive(Deserialize)]
pub struct UsageQuery {
    since: Option<String>,
}

/// `since`: a duration back from now ("15m", "24h"), an RFC 3339 time, or Unix milliseconds.
pub fn parse_since(text: &str, now_unix_ms: u64) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(back) = humantime::parse_duration(text) {
        let back = u64::try_from(back.as_millis()).unwrap_or(u64::MAX);
        return Ok(now_unix_ms.saturating_sub(back));
    }
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        return Ok(u64::try_from(ms).unwrap_or(u64::MAX));
    }
    Err(format!(
        "since {text:?} is not a duration (\"15m\"), an RFC 3339 time (\"2026-12-01T00:00:00Z\") or Unix milliseconds"
    ))
}

pub async fn usage(State(state): State<Arc<AppState>>, Query(q): Query<UsageQuery>) -> Response {
    let now = unix_ms();
    let since = match q.since.as_deref().map(|s| parse_since(s, now)).transpose() {
        Ok(s) => s,
        Err(message) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": message })),
            )
                .into_response();
        }
    };
    let report = state.usage.report(since);
    let persisted = state.usage.log_path().map(|p| p.display().to_string());
    axum::Json(render(&report, since, now, persisted)).into_response()
}

fn totals(id: Value, t: &Totals) -> serde_json::Map<String, Value> {
    let jpt = t.joules_per_token();
    let mut m = serde_json::Map::new();
    m.insert("id".into(), id);
    m.insert("requests".into(), t.requests.into());
    m.insert("input_tokens".into(), t.input_tokens.into());
    m.insert("output_tokens".into(), t.output_tokens.into());
    m.insert("energy_joules".into(), json!(t.joules));
    m.insert("energy_wh".into(), json!(t.joules / 3600.0));
    m.insert("joules_per_token".into(), json!(jpt.map(|j| j.0)));
    m.insert("joules_per_token_net".into(), json!(jpt.map(|j| j.1)));
    m.insert("cost".into(), json!(t.cost));
    m.insert("carbon_g".into(), json!(t.carbon_g));
    m.insert("incomplete_requests".into(), t.incomplete.into());
    m
}

fn node(id: &str, t: &NodeTotals) -> Value {
    let mut m = totals(json!(id), &t.served);
    m.insert("idle_energy_joules".into(), json!(t.idle_joules));
    m.insert("measured_energy_joules".into(), json!(t.measured_joules));
    Value::Object(m)
}

pub fn render(report: &Report, since: Option<u64>, now: u64, persisted: Option<String>) -> Value {
    json!({
        "since_unix_ms": since,
        "until_unix_ms": now,
        "keys": report.keys.iter().map(|(id, t)| Value::Object(totals(json!(id.as_deref()), t))).collect::<Vec<_>>(),
        "models": report.models.iter().map(|(id, t)| Value::Object(totals(json!(&**id), t))).collect::<Vec<_>>(),
        "nodes": report.nodes.iter().map(|(id, t)| node(id, t)).collect::<Vec<_>>(),
        "log": persisted,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_a_time_or_milliseconds() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_since("15m", now), Ok(now - 900_000));
        assert_eq!(parse_since("1700000000000", now), Ok(1_700_000_000_000));
        assert_eq!(
            parse_since("2026-12-01T00:00:00Z", now),
            Ok(1_796_083_200_000)
        );
        assert!(
            parse_since("yesterday", now)
                .unwrap_err()
                .contains("RFC 3339")
        );
    }
}
