//! Every Prometheus metric the proxy exports (docs/contract.md, Metrics), on `prometheus-client`:
//! telemetry counters (ingest), per (node, model) request counters and histograms (the relay,
//! once per attempt), and per-node gauges read from the published ranking at scrape time
//! (`node_gauges`). `/metrics` encodes the registry in the OpenMetrics text format.

mod attempt;
mod node_gauges;

use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::RwLock;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use attempt::{ErrorKind, Outcome};

use crate::FastMap;
use crate::ranking::Ranking;

/// Seconds. From fast local GPUs (tens of ms) to a cold model load on a small box (tens of s).
pub const TTFT_BUCKETS: &[f64] = &[0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Seconds. Embeddings finish in milliseconds; long generations on CPU nodes take minutes.
pub const DURATION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Output tokens per response, up to the usual context sizes.
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 32768.0,
];

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeModel {
    node: Label,
    model: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyModelNode {
    /// The client key's id; empty while the API is open.
    key: Label,
    model: Label,
    node: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeOnly {
    node: Label,
}

type EnergyCounter = Counter<f64, std::sync::atomic::AtomicU64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeModelKind {
    node: Label,
    model: Label,
    kind: ErrorKind,
}

/// A label value, escaped as the text format requires: `prometheus-client` 0.24 writes label
/// values verbatim, and a model name is the reporter's to choose.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Label(Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for ch in self.0.chars() {
            match ch {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                _ => encoder.write_char(ch)?,
            }
        }
        Ok(())
    }
}

type HistogramFamily = Family<NodeModel, Histogram, fn() -> Histogram>;

/// One (node, model) pair's series, resolved from the families once. The handles share their
/// values with the families (they are `Arc`s), so recording through them is a few atomic
/// additions instead of a labelled lookup per family.
#[derive(Debug)]
struct PairSeries {
    requests: Counter,
    errors: [Counter; ErrorKind::ALL.len()],
    output_tokens: Counter,
    ttft: Histogram,
    duration: Histogram,
    tokens_per_request: Histogram,
}

/// The telemetry listener's counters.
#[derive(Debug, Default)]
pub struct TelemetryCounters {
    pub samples_accepted: Counter,
    pub samples_refused: Counter,
    pub streams_refused: Counter,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub telemetry: TelemetryCounters,
    requests: Family<NodeModel, Counter>,
    errors: Family<NodeModelKind, Counter>,
    output_tokens: Family<NodeModel, Counter>,
    ttft: HistogramFamily,
    duration: HistogramFamily,
    tokens_per_request: HistogramFamily,
    /// Every pair seen, so that an attempt costs one lookup, not one per family.
    pairs: RwLock<FastMap<NodeModel, Arc<PairSeries>>>,
    usage_requests: Family<KeyModelNode, Counter>,
    usage_input_tokens: Family<KeyModelNode, Counter>,
    usage_output_tokens: Family<KeyModelNode, Counter>,
    usage_energy: Family<KeyModelNode, EnergyCounter>,
    node_idle_energy: Family<NodeOnly, EnergyCounter>,
    node_measured_energy: Family<NodeOnly, EnergyCounter>,
    /// The `key` label of requests made while the API is open, built once.
    no_key: Label,
}

impl Metrics {
    /// Registers every family (the registry ends each help text with a period); the node gauges read `ranking` whenever `/metrics` is scraped.
    pub fn new(ranking: Arc<ArcSwap<Ranking>>) -> Self {
        let telemetry = TelemetryCounters::default();
        let requests = Family::default();
        let errors = Family::default();
        let output_tokens = Family::default();
        let ttft: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(TTFT_BUCKETS.iter().copied()));
        let duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS.iter().copied()));
        let tokens_per_request: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(TOKEN_BUCKETS.iter().copied()));

        let mut registry = Registry::default();
        registry.register(
            "wes_telemetry_samples_accepted",
            "Samples accepted from reporters",
            telemetry.samples_accepted.clone(),
        );
        registry.register(
            "wes_telemetry_samples_refused",
            "Samples refused (invalid or wrong node)",
            telemetry.samples_refused.clone(),
        );
        registry.register(
            "wes_telemetry_streams_refused",
            "Telemetry streams refused at open (bad token)",
            telemetry.streams_refused.clone(),
        );
        registry.register_collector(Box::new(node_gauges::NodeGauges::new(ranking)));
        registry.register(
            "wes_node_requests",
            "Requests sent to the node (each attempt counts once, replays included)",
            requests.clone(),
        );
        registry.register(
            "wes_node_output_tokens",
            "Output tokens the node sent back (counted on streams, claimed on whole responses)",
            output_tokens.clone(),
        );
        registry.register(
            "wes_node_request_errors",
            "Requests to the node that failed, by kind",
            errors.clone(),
        );
        registry.register(
            "wes_node_time_to_first_token_seconds",
            "From sending the request to the first output token (streams only)",
            ttft.clone(),
        );
        registry.register(
            "wes_node_request_duration_seconds",
            "From sending the request to the end of the response",
            duration.clone(),
        );
        registry.register(
            "wes_node_request_output_tokens",
            "Output tokens per response",
            tokens_per_request.clone(),
        );
        let usage_requests = Family::default();
        let usage_input_tokens = Family::default();
        let usage_output_tokens = Family::default();
        let usage_energy = Family::default();
        let node_idle_energy = Family::default();
        let node_measured_energy = Family::default();
        registry.register(
            "wes_usage_requests",
            "Requests settled in the energy ledger, by client key, model and node",
            usage_requests.clone(),
        );
        registry.register(
            "wes_usage_input_tokens",
            "Prompt tokens of settled requests",
            usage_input_tokens.clone(),
        );
        registry.register(
            "wes_usage_output_tokens",
            "Output tokens of settled requests",
            usage_output_tokens.clone(),
        );
        registry.register(
            "wes_usage_energy_joules",
            "Measured energy of settled requests (gross, x PUE), split among requests in flight by tokens",
            usage_energy.clone(),
        );
        registry.register(
            "wes_node_idle_energy_joules",
            "Measured energy of the node with nothing in flight (x PUE)",
            node_idle_energy.clone(),
        );
        registry.register(
            "wes_node_measured_energy_joules",
            "Measured energy of the node over every interval it reported (x PUE)",
            node_measured_energy.clone(),
        );
        Metrics {
            no_key: Label(Arc::from("")),
            usage_requests,
            usage_input_tokens,
            usage_output_tokens,
            usage_energy,
            node_idle_energy,
            node_measured_energy,
            registry,
            telemetry,
            requests,
            errors,
            output_tokens,
            ttft,
            duration,
            tokens_per_request,
            pairs: RwLock::default(),
        }
    }

    /// The pair's series; the first attempt of a pair creates every one of them (each error
    /// kind at 0, tokens, each histogram), so a rate or a ratio over the pair has a series to
    /// read before its first event.
    fn pair(&self, labels: NodeModel) -> Arc<PairSeries> {
        if let Some(series) = self.pairs.read().get(&labels) {
            return series.clone();
        }
        let series = Arc::new(PairSeries {
            requests: self.requests.get_or_create(&labels).clone(),
            errors: ErrorKind::ALL
                .map(|kind| self.errors.get_or_create(&with_kind(&labels, kind)).clone()),
            output_tokens: self.output_tokens.get_or_create(&labels).clone(),
            ttft: self.ttft.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            tokens_per_request: self.tokens_per_request.get_or_create(&labels).clone(),
        });
        self.pairs.write().entry(labels).or_insert(series).clone()
    }

    /// Records one attempt. The relay calls it exactly once per attempt, where the attempt ends.
    /// Labels share the attempt's `Arc`s: nothing allocates after a pair's first attempt.
    pub fn record(&self, outcome: &Outcome<'_>) {
        let labels = NodeModel {
            node: Label(outcome.node.clone()),
            model: Label(outcome.model.clone()),
        };
        let series = self.pair(labels);
        series.requests.inc();
        if let Some(kind) = outcome.error {
            series.errors[kind.index()].inc();
        }
        if let Some(d) = outcome.duration {
            series.duration.observe(d.as_secs_f64());
        }
        if let Some(t) = outcome.ttft {
            series.ttft.observe(t.as_secs_f64());
        }
        if let Some(n) = outcome.output_tokens {
            series.output_tokens.inc_by(n);
            series.tokens_per_request.observe(n as f64);
        }
    }

    /// One node's settled requests, summed per key and model, and its interval's idle and
    /// measured energy.
    pub fn record_usage(
        &self,
        node: &Arc<str>,
        sums: &crate::usage::KeyModelTotals,
        idle_joules: f64,
        measured_joules: f64,
    ) {
        let node_label = NodeOnly {
            node: Label(node.clone()),
        };
        if measured_joules > 0.0 {
            self.node_idle_energy
                .get_or_create(&node_label)
                .inc_by(idle_joules);
            self.node_measured_energy
                .get_or_create(&node_label)
                .inc_by(measured_joules);
        }
        for ((key, model), t) in sums {
            let labels = KeyModelNode {
                key: key.clone().map_or_else(|| self.no_key.clone(), Label),
                model: Label(model.clone()),
                node: Label(node.clone()),
            };
            self.usage_requests
                .get_or_create(&labels)
                .inc_by(t.requests);
            self.usage_input_tokens
                .get_or_create(&labels)
                .inc_by(t.input_tokens);
            self.usage_output_tokens
                .get_or_create(&labels)
                .inc_by(t.output_tokens);
            self.usage_energy.get_or_create(&labels).inc_by(t.joules);
        }
    }

    /// The whole registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String cannot fail; a collector's error is the only way here.
            tracing::error!("encoding /metrics failed: {e}");
        }
        out
    }
}

fn with_kind(labels: &NodeModel, kind: ErrorKind) -> NodeModelKind {
    NodeModelKind {
        node: labels.node.clone(),
        model: labels.model.clone(),
        kind,
    }
}
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::state::AppState;

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

    fn recorded() -> Metrics {
        let metrics = Metrics::new(Arc::default());
        let (gpu, llama): (Arc<str>, Arc<str>) = ("gpu-\"1\"".into(), "llama3.2:3b".into());
        for (ms, tokens) in [(30, 1), (120, 40), (900, 300), (45_000, 5000)] {
            metrics.record(&Outcome {
                duration: Some(Duration::from_millis(ms * 2)),
                ttft: Some(Duration::from_millis(ms)),
                output_tokens: Some(tokens),
                ..Outcome::new(&gpu, &llama)
            });
        }
        metrics.record(&Outcome {
            error: Some(ErrorKind::Connect),
            ..Outcome::new(&gpu, &llama)
        });
        let (cpu, embed): (Arc<str>, Arc<str>) = ("cpu".into(), "nomic-embed-text".into());
        metrics.record(&Outcome {
            duration: Some(Duration::from_millis(8)),
            ..Outcome::new(&cpu, &embed)
        });
        metrics
    }

    #[test]
    fn bucket_bounds_rise() {
        for bounds in [TTFT_BUCKETS, DURATION_BUCKETS, TOKEN_BUCKETS] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        }
    }

    #[test]
    fn histograms_render_valid_cumulative_buckets() {
        let out = recorded().encode();
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
        assert_eq!(find(ttft, gpu, Some("1.0")), 3.0);
        assert_eq!(find(ttft, gpu, Some("30.0")), 3.0);
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
        let (a, m): (Arc<str>, Arc<str>) = ("a".into(), "m".into());
        state.metrics.record(&Outcome {
            duration: Some(Duration::from_millis(5)),
            ..Outcome::new(&a, &m)
        });
        let text = state.metrics.encode();
        for family in [
            "wes_node_joules_per_token gauge",
            "wes_node_requests counter",
            "wes_node_request_errors counter",
            "wes_node_output_tokens counter",
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
                let base = ["_bucket", "_sum", "_count", "_total"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| *b == family))
                    .unwrap_or(name);
                assert_eq!(base, family, "{line}");
            }
        }
    }
}
