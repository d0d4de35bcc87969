//! `GET /metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::ranking::RankEntry;
use crate::state::AppState;

pub async fn render(State(state): State<Arc<AppState>>) -> Response {
    let text = exposition(&state);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn exposition(state: &AppState) -> String {
    let mut out = String::with_capacity(4096);
    let counters = &state.counters;
    counter(
        &mut out,
        "wes_telemetry_samples_accepted_total",
        "Samples accepted from reporters.",
        counters.samples_accepted.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "wes_telemetry_samples_refused_total",
        "Samples refused (invalid or wrong node).",
        counters.samples_refused.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "wes_telemetry_streams_refused_total",
        "Telemetry streams refused at open (bad token).",
        counters.streams_refused.load(Ordering::Relaxed),
    );

    let snapshot = state.ranking.load();
    let now = Instant::now();
    type Read = fn(&RankEntry, Instant) -> Option<f64>;
    let gauges: [(&str, &str, Read); 7] = [
        (
            "wes_node_penalized_wes",
            "Penalized WES (tok/s per watt, thermal penalty applied).",
            |e, _| e.wes.penalized,
        ),
        (
            "wes_node_raw_wes",
            "Raw WES (thermal penalty 1.0).",
            |e, _| e.wes.raw,
        ),
        (
            "wes_node_tok_s",
            "Decode tok/s the ranking uses.",
            |e, _| e.tok_s,
        ),
        (
            "wes_node_watts",
            "Power draw reported by the node.",
            |e, _| e.watts,
        ),
        (
            "wes_node_in_flight",
            "Requests in flight to the node.",
            |e, _| Some(f64::from(e.state.in_flight())),
        ),
        (
            "wes_node_healthy",
            "1 when the node may receive traffic.",
            |e, _| Some(if e.healthy { 1.0 } else { 0.0 }),
        ),
        (
            "wes_node_last_sample_age_seconds",
            "Age of the node's newest telemetry sample.",
            |e, now| e.last_sample_age(now).map(|d| d.as_secs_f64()),
        ),
    ];
    for (name, help, read) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for e in &snapshot.nodes {
            if let Some(v) = read(e, now) {
                let _ = writeln!(out, "{name}{{node=\"{}\"}} {v}", escape(&e.id));
            }
        }
    }
    let name = "wes_node_thermal_state";
    let _ = writeln!(
        out,
        "# HELP {name} 1 for the node's current thermal state.\n# TYPE {name} gauge"
    );
    for e in &snapshot.nodes {
        let _ = writeln!(
            out,
            "{name}{{node=\"{}\",state=\"{}\"}} 1",
            escape(&e.id),
            e.thermal.display_name()
        );
    }
    out
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

/// Label values escape backslash, quote and newline per the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
