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
use crate::stats::{ErrorKind, Histogram, Row};

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
    let gauges: [(&str, &str, Read); 8] = [
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
            "wes_node_joules_per_token",
            "Energy per output token at the current rate: watts x PUE / tok/s.",
            |e, _| super::ranking_json::joules_per_token(e),
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
    requests(&mut out, &state.stats.snapshot());
    out
}

/// Counters and histograms per (node, model), from what the relay recorded.
fn requests(out: &mut String, rows: &[Row]) {
    type Count = fn(&Row) -> u64;
    let counters: [(&str, &str, Count); 2] = [
        (
            "wes_node_requests_total",
            "Requests sent to the node (each attempt counts, replays included).",
            |r| r.stats.requests,
        ),
        (
            "wes_node_output_tokens_total",
            "Output tokens the node sent back (counted on streams, claimed on whole responses).",
            |r| r.stats.output_tokens,
        ),
    ];
    for (name, help, read) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for r in rows {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(r), read(r));
        }
    }
    let name = "wes_node_request_errors_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests to the node that failed, by kind.\n# TYPE {name} counter"
    );
    for r in rows {
        for kind in ErrorKind::ALL {
            let _ = writeln!(
                out,
                "{name}{{{},kind=\"{}\"}} {}",
                labels(r),
                kind.as_str(),
                r.stats.errors(kind)
            );
        }
    }
    type Hist = fn(&Row) -> &Histogram;
    let histograms: [(&str, &str, Hist); 3] = [
        (
            "wes_node_time_to_first_token_seconds",
            "From sending the request to the first output token (streams only).",
            |r| &r.stats.ttft_seconds,
        ),
        (
            "wes_node_request_duration_seconds",
            "From sending the request to the end of the response.",
            |r| &r.stats.duration_seconds,
        ),
        (
            "wes_node_request_output_tokens",
            "Output tokens per response.",
            |r| &r.stats.output_tokens_per_request,
        ),
    ];
    for (name, help, read) in histograms {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for r in rows {
            histogram(out, name, &labels(r), read(r));
        }
    }
}

fn labels(r: &Row) -> String {
    format!(
        "node=\"{}\",model=\"{}\"",
        escape(&r.node),
        escape(&r.model)
    )
}

/// One labelled histogram: cumulative `_bucket` lines ending in `le="+Inf"`, then `_sum` and
/// `_count`, as the text format requires.
fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    for (le, count) in h.cumulative() {
        let le = le.map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum());
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count());
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::{Outcome, Stats};

    /// `(name, labels without le, le, value)` of each sample line.
    fn samples(text: &str) -> Vec<(String, String, Option<String>, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                let mut le = None;
                let rest: Vec<&str> = labels
                    .split(',')
                    .filter(|kv| match kv.strip_prefix("le=") {
                        Some(v) => {
                            le = Some(v.trim_matches('"').to_owned());
                            false
                        }
                        None => true,
                    })
                    .collect();
                (name.to_owned(), rest.join(","), le, value.parse().unwrap())
            })
            .collect()
    }

    fn recorded() -> Stats {
        let stats = Stats::default();
        for (ms, tokens) in [(30, 1), (120, 40), (900, 300), (45_000, 5000)] {
            stats.record(&Outcome {
                node: "gpu-\"1\"",
                model: "llama3.2:3b",
                duration: Some(Duration::from_millis(ms * 2)),
                ttft: Some(Duration::from_millis(ms)),
                output_tokens: Some(tokens),
                error: None,
            });
        }
        stats.record(&Outcome {
            node: "gpu-\"1\"",
            model: "llama3.2:3b",
            error: Some(ErrorKind::Connect),
            ..Outcome::default()
        });
        stats.record(&Outcome {
            node: "cpu",
            model: "nomic-embed-text",
            duration: Some(Duration::from_millis(8)),
            ..Outcome::default()
        });
        stats
    }

    #[test]
    fn histograms_render_valid_cumulative_buckets() {
        let mut out = String::new();
        requests(&mut out, &recorded().snapshot());
        let all = samples(&out);
        for family in [
            "wes_node_time_to_first_token_seconds",
            "wes_node_request_duration_seconds",
            "wes_node_request_output_tokens",
        ] {
            assert_eq!(
                out.matches(&format!("# TYPE {family} histogram\n")).count(),
                1,
                "{out}"
            );
            for series in [
                "node=\"gpu-\\\"1\\\"\",model=\"llama3.2:3b\"",
                "node=\"cpu\",model=\"nomic-embed-text\"",
            ] {
                let buckets: Vec<_> = all
                    .iter()
                    .filter(|s| s.0 == format!("{family}_bucket") && s.1 == series)
                    .collect();
                assert!(buckets.len() > 2, "{family} {series}:\n{out}");
                let les: Vec<&str> = buckets.iter().map(|b| b.2.as_deref().unwrap()).collect();
                assert_eq!(les.last(), Some(&"+Inf"), "{les:?}");
                let bounds: Vec<f64> = les[..les.len() - 1]
                    .iter()
                    .map(|l| l.parse().unwrap())
                    .collect();
                assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{les:?}");
                let counts: Vec<f64> = buckets.iter().map(|b| b.3).collect();
                assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
                let one = |suffix: &str| {
                    let name = format!("{family}{suffix}");
                    all.iter()
                        .find(|s| s.0 == name && s.1 == series)
                        .unwrap_or_else(|| panic!("no {name}{{{series}}}:\n{out}"))
                        .3
                };
                assert_eq!(counts.last().copied(), Some(one("_count")));
            }
        }
        let find = |name: &str, labels: &str, le: Option<&str>| {
            all.iter()
                .find(|s| s.0 == name && s.1 == labels && s.2.as_deref() == le)
                .unwrap_or_else(|| panic!("no {name}{{{labels}}} le={le:?}:\n{out}"))
                .3
        };
        let gpu = "node=\"gpu-\\\"1\\\"\",model=\"llama3.2:3b\"";
        // TTFTs of 30 ms, 120 ms, 900 ms and 45 s.
        let ttft = "wes_node_time_to_first_token_seconds_bucket";
        assert_eq!(find(ttft, gpu, Some("0.025")), 0.0);
        assert_eq!(find(ttft, gpu, Some("0.05")), 1.0);
        assert_eq!(find(ttft, gpu, Some("0.25")), 2.0);
        assert_eq!(find(ttft, gpu, Some("1")), 3.0);
        assert_eq!(find(ttft, gpu, Some("30")), 3.0);
        assert_eq!(find(ttft, gpu, Some("+Inf")), 4.0);
        let sum = find("wes_node_time_to_first_token_seconds_sum", gpu, None);
        assert!((sum - 46.05).abs() < 1e-9, "{sum}");
        // The refused attempt has no duration: five requests, four durations.
        assert_eq!(find("wes_node_requests_total", gpu, None), 5.0);
        assert_eq!(
            find("wes_node_request_duration_seconds_count", gpu, None),
            4.0
        );
        assert_eq!(find("wes_node_output_tokens_total", gpu, None), 5341.0);
        let errors = "wes_node_request_errors_total";
        assert_eq!(find(errors, &format!("{gpu},kind=\"connect\""), None), 1.0);
        assert_eq!(find(errors, &format!("{gpu},kind=\"status\""), None), 0.0);
        // An embedding has no output tokens: no observation, not a zero.
        let cpu = "node=\"cpu\",model=\"nomic-embed-text\"";
        assert_eq!(find("wes_node_request_output_tokens_count", cpu, None), 0.0);
        assert_eq!(
            find("wes_node_request_duration_seconds_count", cpu, None),
            1.0
        );
    }

    #[test]
    fn exposition_has_joules_per_token_and_request_families() {
        let config = crate::config::Config::parse(
            "[listen]\napi = \"127.0.0.1:0\"\ntelemetry = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[[nodes]]\nid = \"a\"\nurl = \"http://127.0.0.1:9\"\ntoken = \"t\"\n",
        )
        .unwrap();
        let state = AppState::new(config, None);
        state.stats.record(&Outcome {
            node: "a",
            model: "m",
            duration: Some(Duration::from_millis(5)),
            ..Outcome::default()
        });
        let text = exposition(&state);
        for family in [
            "wes_node_joules_per_token gauge",
            "wes_node_requests_total counter",
            "wes_node_request_errors_total counter",
            "wes_node_output_tokens_total counter",
            "wes_node_time_to_first_token_seconds histogram",
            "wes_node_request_duration_seconds histogram",
            "wes_node_request_output_tokens histogram",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family}\n")),
                "{family}:\n{text}"
            );
        }
        assert!(
            text.contains("wes_node_requests_total{node=\"a\",model=\"m\"} 1\n"),
            "{text}"
        );
        // Every sample line belongs to the family whose TYPE came last.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_owned();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| *b == family))
                    .unwrap_or(name);
                assert_eq!(base, family, "{line}");
            }
        }
    }
}
