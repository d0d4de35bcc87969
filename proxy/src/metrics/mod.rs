//! Every Prometheus metric the proxy exports (docs/contract.md, Metrics), on `prometheus-client`:
//! telemetry counters (ingest), per (node, model) request counters and histograms (the relay,
//! once per attempt), and per-node gauges read from the published ranking at scrape time
//! (`node_gauges`). `/metrics` encodes the registry in the OpenMetrics text format.

mod attempt;
mod node_gauges;

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use attempt::{ErrorKind, Outcome};

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
    node: Arc<str>,
    model: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeModelKind {
    node: Arc<str>,
    model: Arc<str>,
    kind: ErrorKind,
}

type HistogramFamily = Family<NodeModel, Histogram, fn() -> Histogram>;

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
}

impl Metrics {
    /// Registers every family; the node gauges read `ranking` whenever `/metrics` is scraped.
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
            "Samples accepted from reporters.",
            telemetry.samples_accepted.clone(),
        );
        registry.register(
            "wes_telemetry_samples_refused",
            "Samples refused (invalid or wrong node).",
            telemetry.samples_refused.clone(),
        );
        registry.register(
            "wes_telemetry_streams_refused",
            "Telemetry streams refused at open (bad token).",
            telemetry.streams_refused.clone(),
        );
        registry.register_collector(Box::new(node_gauges::NodeGauges::new(ranking)));
        registry.register(
            "wes_node_requests",
            "Requests sent to the node (each attempt counts once, replays included).",
            requests.clone(),
        );
        registry.register(
            "wes_node_output_tokens",
            "Output tokens the node sent back (counted on streams, claimed on whole responses).",
            output_tokens.clone(),
        );
        registry.register(
            "wes_node_request_errors",
            "Requests to the node that failed, by kind.",
            errors.clone(),
        );
        registry.register(
            "wes_node_time_to_first_token_seconds",
            "From sending the request to the first output token (streams only).",
            ttft.clone(),
        );
        registry.register(
            "wes_node_request_duration_seconds",
            "From sending the request to the end of the response.",
            duration.clone(),
        );
        registry.register(
            "wes_node_request_output_tokens",
            "Output tokens per response.",
            tokens_per_request.clone(),
        );
        Metrics {
            registry,
            telemetry,
            requests,
            errors,
            output_tokens,
            ttft,
            duration,
            tokens_per_request,
        }
    }

    /// Records one attempt. The relay calls it exactly once per attempt, where the attempt ends.
    /// Labels share the attempt's `Arc`s: nothing allocates after a pair's first attempt.
    pub fn record(&self, outcome: &Outcome<'_>) {
        let labels = NodeModel {
            node: outcome.node.clone(),
            model: outcome.model.clone(),
        };
        if self.requests.get(&labels).is_none() {
            // A new pair shows every error kind, at 0, so a rate over it has a series to read.
            for kind in ErrorKind::ALL {
                let _ = self.errors.get_or_create(&with_kind(&labels, kind));
            }
        }
        self.requests.get_or_create(&labels).inc();
        if let Some(kind) = outcome.error {
            self.errors.get_or_create(&with_kind(&labels, kind)).inc();
        }
        if let Some(d) = outcome.duration {
            self.duration.get_or_create(&labels).observe(d.as_secs_f64());
        }
        if let Some(t) = outcome.ttft {
            self.ttft.get_or_create(&labels).observe(t.as_secs_f64());
        }
        if let Some(n) = outcome.output_tokens {
            self.output_tokens.get_or_create(&labels).inc_by(n);
            self.tokens_per_request
                .get_or_create(&labels)
                .observe(n as f64);
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
