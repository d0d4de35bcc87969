//! Per-node state: what each node's reporter last said, what the proxy measured, and what is in
//! flight. The node set follows the config; a node's state survives a reload that keeps its id.

mod estimate;
mod telemetry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

pub use estimate::{HALF_LIFE, RateEstimate};
pub use telemetry::{ProbeObservation, Telemetry};

use crate::config::NodeConfig;

/// The live state of one node, shared by ingest, the router and the admin listener.
#[derive(Debug, Default)]
pub struct NodeState {
    telemetry: Mutex<Option<Telemetry>>,
    probes: Mutex<HashMap<String, ProbeObservation>>,
    /// Measured by the proxy on relayed responses, per model.
    relayed: Mutex<HashMap<String, RateEstimate>>,
    in_flight: AtomicU32,
}

impl NodeState {
    pub fn telemetry(&self) -> Option<Telemetry> {
        lock(&self.telemetry).clone()
    }

    pub fn probes(&self) -> HashMap<String, ProbeObservation> {
        lock(&self.probes).clone()
    }

    /// Records a decode rate the relay measured for `model`.
    pub fn observe_relayed(&self, model: &str, tok_s: f64, ttft: Option<Duration>, at: Instant) {
        let mut relayed = lock(&self.relayed);
        let entry = relayed
            .entry(model.to_owned())
            .and_modify(|e| e.observe(tok_s, at, HALF_LIFE))
            .or_insert_with(|| RateEstimate::new(tok_s, at));
        if ttft.is_some() {
            entry.last_ttft = ttft;
        }
    }

    /// The decode rate for `model` and where it came from: the proxy's own measurement while it
    /// is fresh, else the reporter's newest probe, else nothing (unmeasured).
    pub fn tok_s_for(&self, model: &str, now: Instant) -> Option<(f64, RateSource)> {
        if let Some(v) = lock(&self.relayed)
            .get(model)
            .and_then(|e| e.current(now, HALF_LIFE))
        {
            return Some((v, RateSource::Relayed));
        }
        lock(&self.probes)
            .get(model)
            .map(|p| (p.tok_s, RateSource::Probe))
    }

    /// The model measured most recently by either source, with its rate: the node's headline
    /// figure when no model is asked for.
    pub fn newest_rate(&self, now: Instant) -> Option<(String, f64, RateSource)> {
        let relayed = lock(&self.relayed);
        let newest_relayed = relayed
            .iter()
            .filter_map(|(m, e)| {
                e.current(now, HALF_LIFE)
                    .map(|v| (m.clone(), v, e.updated_at()))
            })
            .max_by_key(|(_, _, at)| *at);
        if let Some((model, v, _)) = newest_relayed {
            return Some((model, v, RateSource::Relayed));
        }
        lock(&self.probes)
            .values()
            .max_by_key(|p| p.finished_unix_ms)
            .map(|p| (p.model.clone(), p.tok_s, RateSource::Probe))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateSource {
    /// Measured by the proxy on responses it relayed.
    Relayed,
    /// The reporter's probe.
    Probe,
}

impl RateSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RateSource::Relayed => "relayed",
            RateSource::Probe => "probe",
        }
    }
}

/// A configured node with its state.
#[derive(Debug, Clone)]
pub struct FleetNode {
    pub config: NodeConfig,
    pub state: Arc<NodeState>,
}

/// The node set of one config generation.
#[derive(Debug, Default)]
pub struct FleetView {
    pub nodes: Vec<FleetNode>,
    by_id: HashMap<String, usize>,
}

impl FleetView {
    pub fn get(&self, id: &str) -> Option<&FleetNode> {
        self.by_id.get(id).map(|i| &self.nodes[*i])
    }
}

/// All nodes. Readers take a cheap snapshot of the view; writers touch one node's mutex.
#[derive(Debug, Default)]
pub struct Fleet {
    view: ArcSwap<FleetView>,
    changed: Notify,
}

impl Fleet {
    pub fn new(nodes: &[NodeConfig]) -> Self {
        let fleet = Fleet::default();
        fleet.apply_config(nodes);
        fleet
    }

    pub fn view(&self) -> Arc<FleetView> {
        self.view.load_full()
    }

    /// Replaces the node set. Nodes whose id stays keep their telemetry, estimates and
    /// in-flight count; requests already running on them are untouched.
    pub fn apply_config(&self, nodes: &[NodeConfig]) {
        let old = self.view.load();
        let mut view = FleetView::default();
        for config in nodes {
            let state = old
                .get(&config.id)
                .map(|n| n.state.clone())
                .unwrap_or_default();
            view.by_id.insert(config.id.clone(), view.nodes.len());
            view.nodes.push(FleetNode {
                config: config.clone(),
                state,
            });
        }
        self.view.store(Arc::new(view));
        self.changed.notify_one();
    }

    /// The node id a bearer token is bound to. Compares every token in constant time so the
    /// answer's timing says nothing about how close a guess was.
    pub fn authenticate(&self, token: &str) -> Option<String> {
        let view = self.view.load();
        let mut found = None;
        for node in &view.nodes {
            if constant_time_eq(node.config.token.as_bytes(), token.as_bytes()) {
                found = Some(node.config.id.clone());
            }
        }
        found
    }

    /// Whether `token` is still the one configured for `node_id`.
    pub fn token_matches(&self, node_id: &str, token: &str) -> bool {
        self.view
            .load()
            .get(node_id)
            .is_some_and(|n| constant_time_eq(n.config.token.as_bytes(), token.as_bytes()))
    }

    /// Stores a validated sample. Returns false if the node left the config meanwhile.
    pub fn record(
        &self,
        node_id: &str,
        telemetry: Telemetry,
        probes: Vec<ProbeObservation>,
    ) -> bool {
        let view = self.view.load();
        let Some(node) = view.get(node_id) else {
            return false;
        };
        {
            let mut known = lock(&node.state.probes);
            for probe in probes {
                let newer = known
                    .get(&probe.model)
                    .is_none_or(|p| p.finished_unix_ms < probe.finished_unix_ms);
                if newer {
                    known.insert(probe.model.clone(), probe);
                }
            }
        }
        *lock(&node.state.telemetry) = Some(telemetry);
        self.changed.notify_one();
        true
    }

    /// Resolves when something changed since the last call; bursts coalesce into one wake-up.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// When this guard drops, the request it counts is no longer in flight.
#[derive(Debug)]
pub struct InFlightGuard {
    state: Arc<NodeState>,
}

impl InFlightGuard {
    pub fn new(state: Arc<NodeState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard { state }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind these mutexes is replaced whole, never left half-written by a panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(id: &str, token: &str) -> NodeConfig {
        NodeConfig {
            id: id.into(),
            url: "http://127.0.0.1:1".into(),
            token: token.into(),
            pue: 1.0,
            max_concurrency: 4,
        }
    }

    #[test]
    fn tokens_bind_to_their_node() {
        let fleet = Fleet::new(&[node("a", "ta"), node("b", "tb")]);
        assert_eq!(fleet.authenticate("tb").as_deref(), Some("b"));
        assert_eq!(fleet.authenticate("t"), None);
        assert_eq!(fleet.authenticate(""), None);
    }

    #[test]
    fn reload_keeps_state_of_kept_nodes() {
        let fleet = Fleet::new(&[node("a", "ta"), node("b", "tb")]);
        assert!(fleet.record("a", Telemetry::for_test(100.0), vec![]));
        let _guard = InFlightGuard::new(fleet.view().get("a").unwrap().state.clone());
        fleet.apply_config(&[node("a", "new-token"), node("c", "tc")]);
        let view = fleet.view();
        let a = view.get("a").unwrap();
        assert_eq!(a.state.telemetry().unwrap().watts, Some(100.0));
        assert_eq!(a.state.in_flight(), 1);
        assert!(view.get("b").is_none());
        assert!(!fleet.record("b", Telemetry::for_test(1.0), vec![]));
        assert_eq!(fleet.authenticate("new-token").as_deref(), Some("a"));
    }

    #[test]
    fn older_probe_results_do_not_replace_newer() {
        let fleet = Fleet::new(&[node("a", "ta")]);
        let probe = |ms, tok_s| ProbeObservation {
            model: "m".into(),
            tokens: 32,
            seconds: 1.0,
            tok_s,
            watts: None,
            claimed_tok_s: None,
            finished_unix_ms: ms,
        };
        fleet.record("a", Telemetry::for_test(1.0), vec![probe(20, 50.0)]);
        fleet.record("a", Telemetry::for_test(1.0), vec![probe(10, 99.0)]);
        let probes = fleet.view().get("a").unwrap().state.probes();
        assert_eq!(probes["m"].tok_s, 50.0);
    }
}
