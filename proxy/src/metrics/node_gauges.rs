//! Per-node gauges, read from the published ranking when `/metrics` is scraped, so they always
//! agree with `/ranking` and cost nothing between scrapes.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::ranking::{RankEntry, Ranking};

type Read = fn(&RankEntry, Instant) -> Option<f64>;

/// Name, help, and the reading of each gauge; a node without a value has no series.
const GAUGES: [(&str, &str, Read); 9] = [
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
        "Decode throughput at the node's current load (tokens/s over all its streams).",
        |e, _| e.tok_s,
    ),
    (
        "wes_node_tok_s_single",
        "One stream's decode rate alone.",
        |e, _| e.tok_s_single,
    ),
    (
        "wes_node_watts",
        "Power draw reported by the node.",
        |e, _| e.watts,
    ),
    (
        "wes_node_joules_per_token",
        "Energy per output token at the current rate: watts x PUE / tok/s.",
        |e, _| e.joules_per_token.gross,
    ),
    (
        "wes_node_in_flight",
        "Requests in flight to the node.",
        |e, _| Some(f64::from(e.state.own_in_flight())),
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

#[derive(Debug)]
pub struct NodeGauges {
    ranking: Arc<ArcSwap<Ranking>>,
}

impl NodeGauges {
    pub fn new(ranking: Arc<ArcSwap<Ranking>>) -> Self {
        NodeGauges { ranking }
    }
}

impl Collector for NodeGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let ranking = self.ranking.load();
        let nodes = &ranking.board.nodes;
        let now = Instant::now();
        for (name, help, read) in GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for e in nodes {
                if let Some(v) = read(e, now) {
                    let labels = [("node", e.id.as_str())];
                    ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "wes_node_thermal_state",
            "1 for the node's current thermal state.",
            None,
            MetricType::Gauge,
        )?;
        for e in nodes {
            let labels = [("node", e.id.as_str()), ("state", e.thermal.display_name())];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
