//! Per-node state: what each node's reporter last said, what the proxy measured, and what is in
//! flight. The node set follows the config; a node's state survives a reload that keeps its id.

pub mod energy;
mod estimate;
pub mod health;
pub mod load;
pub mod model_name;
pub mod peer;
mod power;
pub mod queue;
pub mod residency;
mod share;
mod telemetry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;
use wes_proto::ThermalState;

pub use estimate::{HALF_LIFE, RateEstimate};
pub use health::{Admission, Circuit, NodeHealth};
pub use load::{LoadModel, OccupancyMark};
pub use peer::Peer;
pub use power::PowerEstimate;
pub use share::{ReplicaReport, ReportedLoad};
pub use telemetry::{LoadedModel, ProbeLoad, ProbeObservation, Residency, Telemetry};

use crate::FastMap;
use crate::config::NodeConfig;

/// The live state of one node, shared by ingest, the router and the admin listener. Written by
/// what happens to the node (samples, relayed measurements, failures, checks, drain); the
/// ranking only reads it.
#[derive(Debug, Default)]
pub struct NodeState {
    /// Shared, not copied: every ranking rebuild reads every node's (model list included).
    telemetry: Mutex<Option<Arc<Telemetry>>>,
    probes: Mutex<FastMap<String, ProbeObservation>>,
    /// Measured by the proxy on relayed responses, per model.
    relayed: Mutex<FastMap<String, RateEstimate>>,
    power: Mutex<PowerEstimate>,
    /// Per model, the best tok/s per watt seen under Normal thermal state: the node's clean
    /// baseline (PUE is the site's, applied by the ranking).
    best_clean: Mutex<FastMap<String, f64>>,
    /// Requests this replica has on the node: exact, and what it admits against.
    in_flight: AtomicU32,
    /// Requests this replica has admitted here since it started (the reporter tells a
    /// replica that was served from one that still waits by it).
    admitted: std::sync::atomic::AtomicU64,
    /// Requests the other proxy replicas have on it, as the node's reporter last said.
    others_in_flight: AtomicU32,
    /// This replica's count changed: its telemetry stream tells the reporter.
    own_load_changed: Notify,
    /// This replica's cap here, as the reporter last granted it (`share`).
    cap: Mutex<Cap>,
    /// A request here was refused by the cap: the next ack says so.
    waiting_for_cap: std::sync::atomic::AtomicBool,
    /// The node's whole in-flight count (this replica's and the others') over time, for the
    /// concurrency a stream or a sample ran at.
    occupancy: Mutex<load::Occupancy>,
    /// Per model, per-stream decode rates by concurrency (`load`).
    load: Mutex<FastMap<String, load::LoadCurve>>,
    /// Power by the number of requests in flight when each sample arrived.
    power_by_load: Mutex<load::PowerCurve>,
    /// A management call changed what the node holds: its reporter is told on its stream.
    models_refresh: Notify,
    /// Per model, times to first token by the in-flight count each request was sent at.
    ttft: Mutex<FastMap<String, load::TtftCurve>>,
    /// Per model, when this proxy last sent a request that found it cold (`residency`).
    warming: Mutex<FastMap<String, Instant>>,
    /// Per model, the smoothed seconds a cold load took here.
    load_seconds: Mutex<FastMap<String, f64>>,
    /// Per model, the smoothed output tokens of a relayed request.
    request_tokens: Mutex<FastMap<String, f64>>,
    /// The node's measured energy, split among the requests in flight on it (`energy`).
    energy: Mutex<energy::NodeEnergy<energy::RequestFacts>>,
    pub health: NodeHealth,
    /// Shared by the whole fleet: woken whenever any node frees a slot, for queued requests.
    slot_freed: Arc<Notify>,
}

/// Folds `value` into `model`'s smoothed average, allocating the key only the first time.
fn smooth_into(map: &mut FastMap<String, f64>, model: &str, value: f64) {
    match map.get_mut(model) {
        Some(v) => *v = residency::smooth(Some(*v), value),
        None => {
            map.insert(model.to_owned(), value);
        }
    }
}

/// The rate a model is scored on: the proxy's own measurement while it is fresh, else the
/// reporter's newest probe. One rule for the score and for the clean baseline.
fn current_rate(
    relayed: &FastMap<String, RateEstimate>,
    probes: &FastMap<String, ProbeObservation>,
    model: &str,
    now: Instant,
) -> Option<(f64, RateSource)> {
    if let Some(v) = relayed.get(model).and_then(|e| e.current(now, HALF_LIFE)) {
        return Some((v, RateSource::Relayed));
    }
    probes.get(model).map(|p| (p.tok_s, RateSource::Probe))
}

impl NodeState {
    pub fn telemetry(&self) -> Option<Arc<Telemetry>> {
        self.telemetry.lock().clone()
    }

    pub fn probes(&self) -> FastMap<String, ProbeObservation> {
        self.probes.lock().clone()
    }

    /// A request goes to the node: its share of the node's energy starts here.
    pub fn open_energy_share(&self) -> energy::ShareHandle<energy::RequestFacts> {
        self.energy.lock().open(Instant::now())
    }

    /// Ended requests of a node that fell silent, settled with the energy they have.
    pub fn abandon_energy_if_silent(
        &self,
        now: Instant,
    ) -> Vec<energy::Settled<energy::RequestFacts>> {
        self.energy.lock().abandon_if_silent(now)
    }

    fn with_slot_signal(slot_freed: Arc<Notify>) -> Self {
        NodeState {
            slot_freed,
            ..NodeState::default()
        }
    }

    /// Records a decode rate the relay measured for `model`, on a stream that ran while the
    /// node averaged `concurrency` requests in flight (unknown for a replayed subrequest).
    pub fn observe_relayed(&self, model: &str, tok_s: f64, at: Instant, concurrency: Option<f64>) {
        if let Some(n) = concurrency {
            let mut curves = self.load.lock();
            match curves.get_mut(model) {
                Some(c) => c.observe(n, tok_s, at),
                None => {
                    let mut c = load::LoadCurve::default();
                    c.observe(n, tok_s, at);
                    curves.insert(model.to_owned(), c);
                }
            }
        }
        {
            let mut relayed = self.relayed.lock();
            // Looked up first: a known model is the common case and needs no allocation.
            match relayed.get_mut(model) {
                Some(e) => e.observe(tok_s, at, HALF_LIFE),
                None => {
                    relayed.insert(model.to_owned(), RateEstimate::new(tok_s, at));
                }
            }
        }
        // Only this model's rate moved.
        if let Some(t) = self.telemetry() {
            self.note_clean_baseline(&t, at, Some(model));
        }
    }

    /// Resolves once something asked this node's reporter to re-read its model list; a request
    /// made while no stream waits is kept for the next one.
    pub async fn models_refresh_asked(&self) {
        self.models_refresh.notified().await;
    }

    pub fn power(&self) -> PowerEstimate {
        *self.power.lock()
    }

    /// The watts `model`'s score divides by (see `power`): generating power, else the power
    /// its probe drew, else the latest reading.
    pub fn scoring_watts(&self, model: Option<&str>, latest: Option<f64>) -> Option<f64> {
        let probe_watts = model.and_then(|m| self.probes.lock().get(m).and_then(|p| p.watts));
        self.power.lock().generating(probe_watts, latest)
    }

    /// The best tok/s per watt seen for `model` under Normal thermal state.
    pub fn best_clean(&self, model: &str) -> Option<f64> {
        self.best_clean.lock().get(model).copied()
    }

    /// Raises each rated model's clean baseline (or `only` that one's) when the node runs at
    /// Normal: one stream's WES from the load curve, so that the baseline says how the node
    /// runs, whatever its load. Called where its inputs change (a sample, a relayed
    /// measurement), so that building a ranking only reads.
    fn note_clean_baseline(&self, telemetry: &Telemetry, now: Instant, only: Option<&str>) {
        if telemetry.thermal != ThermalState::Normal {
            return;
        }
        let models: Vec<String> = match only {
            Some(m) => vec![m.to_owned()],
            None => self.rated_models(now),
        };
        for model in models {
            let Some(curve) = self.load_model(&model, telemetry.watts, now) else {
                continue;
            };
            let Some(efficiency) =
                crate::score::wes(Some(curve.tok_s(1)), curve.watts(1), 1.0, 1.0)
            else {
                continue;
            };
            let mut best = self.best_clean.lock();
            // Looked up first: most samples change nothing, and a new key costs an allocation.
            match best.get_mut(&model) {
                Some(b) => *b = b.max(efficiency),
                None => {
                    best.insert(model, efficiency);
                }
            }
        }
    }

    /// Records the time to first token of a relayed request for `model`, sent while the node
    /// had `in_flight` requests (its own included).
    pub fn observe_ttft(&self, model: &str, in_flight: u32, ttft: Duration, at: Instant) {
        let mut curves = self.ttft.lock();
        match curves.get_mut(model) {
            Some(c) => c.observe(in_flight, ttft, at),
            None => {
                let mut c = load::TtftCurve::default();
                c.observe(in_flight, ttft, at);
                curves.insert(model.to_owned(), c);
            }
        }
    }

    /// Whether `model` is loaded here according to `telemetry` (this node's newest) and the
    /// requests sent since (`residency::resident`); `None`: the node does not say.
    pub fn resident_in(&self, telemetry: &Telemetry, model: &str) -> Option<bool> {
        let residency = telemetry.residency.as_deref()?;
        // The common case, a warm model, takes no lock.
        if residency.holds(model) {
            return Some(true);
        }
        let warmed = self.warming.lock().get(model).copied();
        residency::resident(Some(residency), telemetry.received_at, warmed, model)
    }

    /// A request for `model` is being sent: whether it finds the model cold. If so the model
    /// counts as loading from now on, so that the next request is not charged the same load.
    pub fn note_sent(&self, model: &str, now: Instant) -> bool {
        let Some(telemetry) = self.telemetry() else {
            return false;
        };
        if self.resident_in(&telemetry, model) != Some(false) {
            return false;
        }
        self.warming.lock().insert(model.to_owned(), now);
        true
    }

    /// A request that found `model` cold waited `seconds` more for its first token than a warm
    /// one would have: the load.
    pub fn observe_cold_load(&self, model: &str, seconds: f64) {
        if !(seconds.is_finite() && seconds >= 0.0) {
            return;
        }
        smooth_into(&mut self.load_seconds.lock(), model, seconds);
    }

    /// What loading `model` here takes: measured, else `residency::COLD_LOAD_PRIOR`.
    pub fn load_seconds(&self, model: &str) -> f64 {
        self.load_seconds
            .lock()
            .get(model)
            .copied()
            .unwrap_or(residency::COLD_LOAD_PRIOR.as_secs_f64())
    }

    pub fn observe_request_tokens(&self, model: &str, tokens: u64) {
        if tokens > 0 {
            smooth_into(&mut self.request_tokens.lock(), model, tokens as f64);
        }
    }

    /// Output tokens of a request for `model` here: measured, else the prior.
    pub fn tokens_per_request(&self, model: &str) -> f64 {
        self.request_tokens
            .lock()
            .get(model)
            .copied()
            .unwrap_or(residency::TOKENS_PER_REQUEST_PRIOR)
    }

    /// Predicted time to first token for `model` with n = 1 ..= `max_concurrency` in flight
    /// (index n − 1), from its TTFT curve; empty until measured.
    pub fn ttft_by_load(&self, model: &str, max_concurrency: u32, now: Instant) -> Arc<[Duration]> {
        self.ttft
            .lock()
            .get(model)
            .and_then(|c| c.predict(max_concurrency, now))
            .map_or_else(|| Arc::from([]), Arc::from)
    }

    /// Takes one slot if the node has one free and its circuit admits a request. The slot is
    /// reserved atomically, so concurrent requests never overfill a node; a refused admission
    /// gives it back.
    pub fn try_acquire(
        self: &Arc<Self>,
        max_concurrency: u32,
        now: Instant,
        cooldown: Duration,
    ) -> Option<InFlightGuard> {
        // The limit is the node's, across replicas (docs/design.md, "Several replicas"): where
        // the reporter shares it out, this replica's cap; else the others' latest count plus
        // this one's exact count. Under the cap's lock, so a lower cap arriving now binds.
        let cap = self.cap.lock();
        let room = match cap.granted {
            Some(granted) => granted.min(max_concurrency),
            None => max_concurrency.saturating_sub(self.others_in_flight.load(Ordering::Acquire)),
        };
        let reserved = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < room).then_some(n + 1)
            })
            .is_ok();
        if reserved {
            self.admitted.fetch_add(1, Ordering::Relaxed);
        } else {
            if cap.granted.is_some() {
                // Tell the reporter: it serves waiting replicas first.
                self.waiting_for_cap.store(true, Ordering::Release);
                self.own_load_changed.notify_one();
            }
            return None;
        }
        drop(cap);
        self.note_occupancy(now);
        self.own_load_changed.notify_one();
        let trial = match self.health.admit(now, cooldown) {
            Admission::Closed => false,
            Admission::Trial => true,
            Admission::Refused => {
                self.release_slot();
                return None;
            }
        };
        Some(InFlightGuard {
            state: self.clone(),
            trial,
            settled: false,
        })
    }

    fn release_slot(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.note_occupancy(Instant::now());
        self.own_load_changed.notify_one();
        self.slot_freed.notify_waiters();
    }

    /// Requests admitted here since start.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Whether a request was refused by the cap since the last call (the ack that says so
    /// clears it).
    pub fn take_waiting_for_cap(&self) -> bool {
        self.waiting_for_cap.swap(false, Ordering::AcqRel)
    }

    /// Whether the reporter grants this replica a cap here: other replicas share the node.
    pub fn shares_slots(&self) -> bool {
        self.cap.lock().granted.is_some()
    }

    /// Resolves once this replica's count here changed since the last call.
    pub async fn own_load_changed(&self) {
        self.own_load_changed.notified().await;
    }

    /// Load report `seq` granted this replica `granted` here (`None`: no caps, the limit
    /// alone). A report older than the one in force is ignored: the reporter counts on the
    /// newest cap a replica acknowledged being the one it obeys.
    fn set_cap(&self, granted: Option<u32>, seq: u64) {
        let mut cap = self.cap.lock();
        if seq < cap.seq {
            return;
        }
        let raised = match (cap.granted, granted) {
            (Some(before), Some(now)) => now > before,
            (Some(_), None) => true,
            (None, _) => false,
        };
        *cap = Cap { granted, seq };
        drop(cap);
        if raised {
            self.slot_freed.notify_waiters();
        }
    }

    /// The stream the caps came on ended: a cap from it no longer stands for anything the
    /// reporter knows (it dropped this replica's count), so nothing new is admitted here
    /// until a stream brings a fresh one.
    fn caps_lost(&self) {
        let mut cap = self.cap.lock();
        if cap.granted.is_some() {
            *cap = Cap {
                granted: Some(0),
                seq: 0,
            };
        }
    }

    /// The other replicas now have `others` requests here. True when that changed.
    fn set_others_in_flight(&self, others: u32) -> bool {
        let before = self.others_in_flight.swap(others, Ordering::AcqRel);
        if before == others {
            return false;
        }
        self.note_occupancy(Instant::now());
        if others < before {
            // Room freed elsewhere: waiting requests may take it.
            self.slot_freed.notify_waiters();
        }
        true
    }

    /// Files the in-flight count as it is now. Read under the lock: of two changes racing
    /// here, the later to take it files the count that both left.
    fn note_occupancy(&self, now: Instant) {
        let mut occupancy = self.occupancy.lock();
        occupancy.set(self.in_flight(), now);
    }

    /// A reading of the in-flight count's history, to average from.
    pub fn occupancy_mark(&self, now: Instant) -> OccupancyMark {
        self.occupancy.lock().mark(now)
    }

    /// The average in-flight count since `mark`.
    pub fn average_in_flight_since(&self, mark: OccupancyMark, now: Instant) -> Option<f64> {
        self.occupancy.lock().average_since(mark, now)
    }

    /// The load curves for `model` as they stand: what n in flight make and draw.
    pub fn load_model(
        &self,
        model: &str,
        latest_watts: Option<f64>,
        now: Instant,
    ) -> Option<LoadModel> {
        // Where the curve lacks n = 1: the probe ran alone on an idle node; the relayed
        // average mixes in streams that ran beside others.
        let (probed, single_watts, loads) = self
            .probes
            .lock()
            .get(model)
            .map_or((None, None, Vec::new()), |p| {
                (Some(p.tok_s), p.watts, p.loads.clone())
            });
        let prior = load::Prior {
            single: probed
                .or_else(|| self.tok_s_for(model, now).map(|r| r.0))
                .or_else(|| self.estimated_rate(model, now)),
            single_watts,
            loads: &loads,
        };
        let fallback = self.scoring_watts(Some(model), latest_watts);
        let idle = self.power.lock().idle;
        let curves = self.load.lock();
        let power = self.power_by_load.lock();
        LoadModel::new(curves.get(model), &power, prior, fallback, idle, now)
    }

    /// `model`'s decode rate here where neither the proxy nor the probe measured it: scaled by
    /// size from the node's measured models (sizes from its model list, sent with what is
    /// loaded), so that a model new to a node is routed on a guess rather than left to id order
    /// and exploration until measured.
    pub fn estimated_rate(&self, model: &str, now: Instant) -> Option<f64> {
        let telemetry = self.telemetry()?;
        let sizes = &telemetry.residency.as_ref()?.sizes;
        let bytes = *sizes.get(model)?;
        let relayed = self.relayed.lock();
        let probes = self.probes.lock();
        let measured: Vec<(f64, u64)> = sizes
            .iter()
            .filter(|(m, _)| m.as_str() != model)
            .filter_map(|(m, b)| current_rate(&relayed, &probes, m, now).map(|(r, _)| (r, *b)))
            .collect();
        residency::rate_by_size(bytes, &measured)
    }

    /// The decode rate for `model` and where it came from: the proxy's own measurement while it
    /// is fresh, else the reporter's newest probe, else nothing (unmeasured).
    pub fn tok_s_for(&self, model: &str, now: Instant) -> Option<(f64, RateSource)> {
        current_rate(&self.relayed.lock(), &self.probes.lock(), model, now)
    }

    /// The model measured most recently by either source, with its rate: the node's headline
    /// figure when no model is asked for.
    pub fn newest_rate(&self, now: Instant) -> Option<(String, f64, RateSource)> {
        let relayed = self.relayed.lock();
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
        self.probes
            .lock()
            .values()
            .max_by_key(|p| p.finished_unix_ms)
            .map(|p| (p.model.clone(), p.tok_s, RateSource::Probe))
    }

    /// Every model with a current rate from either source.
    pub fn rated_models(&self, now: Instant) -> Vec<String> {
        let mut models: Vec<String> = self
            .relayed
            .lock()
            .iter()
            .filter(|(_, e)| e.current(now, HALF_LIFE).is_some())
            .map(|(m, _)| m.clone())
            .collect();
        for model in self.probes.lock().keys() {
            if !models.contains(model) {
                models.push(model.clone());
            }
        }
        models
    }

    /// Requests on the node now, across proxy replicas: this one's exact count plus the
    /// others' latest. What scores, limits and policies read.
    pub fn in_flight(&self) -> u32 {
        self.own_in_flight()
            .saturating_add(self.others_in_flight.load(Ordering::Relaxed))
    }

    /// Requests this replica has on the node.
    pub fn own_in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateSource {
    /// Measured by the proxy on responses it relayed.
    Relayed,
    /// The reporter's probe.
    Probe,
    /// Neither: scaled by size from another model measured on the node
    /// (`residency::rate_by_size`).
    Estimated,
}

impl RateSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RateSource::Relayed => "relayed",
            RateSource::Probe => "probe",
            RateSource::Estimated => "estimated",
        }
    }
}

/// A configured node with its state.
#[derive(Debug, Clone)]
pub struct FleetNode {
    pub config: NodeConfig,
    /// `config.id`, shared: routes and requests carry it without copying.
    pub id: Arc<str>,
    /// `host:port` of the node's Ollama, from its url, and the addresses it resolves to.
    pub peer: Arc<Peer>,
    /// The id as a response header value (`X-WES-Node`), built once, not per response.
    pub header: http::HeaderValue,
    pub state: Arc<NodeState>,
}

/// `http://host:port/...` → `host:port` (config validation guarantees the form).
fn peer_address(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// The node set of one config generation.
#[derive(Debug, Default)]
pub struct FleetView {
    pub nodes: Vec<FleetNode>,
    by_id: FastMap<String, usize>,
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
    slot_freed: Arc<Notify>,
    /// Requests now waiting for a free slot, in order.
    pub queue: Arc<queue::WaitQueue>,
    replica_id: ReplicaId,
    /// When a sample last named another replica.
    peers_seen: Mutex<Option<Instant>>,
}

/// The cap a node's reporter granted this replica, and the report it came in.
#[derive(Debug, Clone, Copy, Default)]
struct Cap {
    /// `None`: no caps; the limit alone, against the others' reported count.
    granted: Option<u32>,
    seq: u64,
}

/// How long after the last word of another replica this one still acts as one of several.
const PEERS_FORGOTTEN: Duration = Duration::from_secs(30);

/// This proxy replica's name to the reporters (`[cluster] replica_id`), by which it finds its
/// own count among the replicas' in a sample.
#[derive(Debug, Clone)]
struct ReplicaId(Arc<str>);

impl Default for ReplicaId {
    /// The host's name and a random suffix: unique per process, so a restarted replica is a
    /// new one and the old one's count expires with its stream.
    fn default() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "wes-proxy".to_owned());
        ReplicaId(Arc::from(format!("{host}-{:08x}", rand::random::<u32>())))
    }
}

impl Fleet {
    pub fn new(nodes: &[NodeConfig]) -> Self {
        let fleet = Fleet::default();
        fleet.apply_config(nodes);
        fleet
    }

    /// [`Fleet::new`] for the replica named `replica_id` (a generated name when `None`).
    pub fn for_replica(nodes: &[NodeConfig], replica_id: Option<&str>) -> Self {
        let fleet = Fleet {
            replica_id: replica_id.map_or_else(ReplicaId::default, |id| ReplicaId(Arc::from(id))),
            ..Fleet::default()
        };
        fleet.apply_config(nodes);
        fleet
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id.0
    }

    /// The replica id hashed, for the policies' per-replica order among near-equal nodes,
    /// while another replica has been heard of in the last [`PEERS_FORGOTTEN`]; `None` alone.
    pub fn replica_hash_if_shared(&self, now: Instant) -> Option<u64> {
        let seen = (*self.peers_seen.lock())?;
        (now.saturating_duration_since(seen) < PEERS_FORGOTTEN)
            .then(|| crate::policy::replica_rank(0, self.replica_id()))
    }

    /// What node `node_id`'s reporter says of its load (each replica's count and cap, the
    /// engine's): the rest of it becomes the node's load beside this replica's own count, and
    /// this replica's cap binds from now. `seq` is the report's.
    pub fn record_load(&self, node_id: &str, report: &ReportedLoad, seq: u64) {
        let view = self.view.load();
        let Some(node) = view.get(node_id) else {
            return;
        };
        let me = self.replica_id();
        node.state.set_cap(report.cap_of(me), seq);
        if report.replicas.iter().any(|r| r.id != me) {
            *self.peers_seen.lock() = Some(Instant::now());
        }
        if node.state.set_others_in_flight(report.others_than(me)) {
            self.changed.notify_one();
        }
    }

    /// Node `node_id`'s telemetry stream ended (see [`NodeState::caps_lost`]).
    pub fn load_reports_lost(&self, node_id: &str) {
        if let Some(node) = self.view.load().get(node_id) {
            node.state.caps_lost();
        }
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
            let state = old.get(&config.id).map_or_else(
                || Arc::new(NodeState::with_slot_signal(self.slot_freed.clone())),
                |n| n.state.clone(),
            );
            view.by_id.insert(config.id.clone(), view.nodes.len());
            view.nodes.push(FleetNode {
                id: Arc::from(config.id.as_str()),
                peer: Arc::new(Peer::new(peer_address(&config.url))),
                // Validated ids are plain ASCII, always a valid header value.
                header: http::HeaderValue::from_str(&config.id)
                    .unwrap_or_else(|_| http::HeaderValue::from_static("?")),
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

    /// Stores a validated sample, and returns the node's energy since its previous sample
    /// split among the requests that were in flight (`energy`). `None` if the node left the
    /// config meanwhile.
    pub fn record(
        &self,
        node_id: &str,
        telemetry: Telemetry,
        probes: Vec<ProbeObservation>,
    ) -> Option<energy::Split<energy::RequestFacts>> {
        let view = self.view.load();
        let node = view.get(node_id)?;
        {
            let mut known = node.state.probes.lock();
            for probe in probes {
                let newer = known
                    .get(&probe.model)
                    .is_none_or(|p| p.finished_unix_ms < probe.finished_unix_ms);
                if newer {
                    known.insert(probe.model.clone(), probe);
                }
            }
        }
        // A reading taken while the reporter's probe ran is the probe's load: neither idle
        // power nor the power of the requests in flight.
        if let Some(watts) = telemetry.watts.filter(|_| !telemetry.probing) {
            let busy = power::is_busy(node.state.in_flight(), telemetry.utilization_pct);
            node.state.power.lock().observe(watts, busy);
            // Filed under the count in flight as it arrives, as busy and idle are: a power
            // reading is a moment's (or a second's average), not the whole interval's.
            let in_flight = f64::from(node.state.in_flight());
            node.state.power_by_load.lock().observe(in_flight, watts);
        }
        let reading = energy::Reading {
            energy_joules: telemetry.energy_joules,
            watts: telemetry.watts,
            at_unix_ms: telemetry.sample_unix_ms,
        };
        let idle_watts = node.state.power().idle;
        let split = node.state.energy.lock().sample(
            reading,
            telemetry.received_at,
            node.config.pue,
            idle_watts,
        );
        let telemetry = Arc::new(telemetry);
        *node.state.telemetry.lock() = Some(telemetry.clone());
        node.state
            .note_clean_baseline(&telemetry, Instant::now(), None);
        self.changed.notify_one();
        Some(split)
    }

    /// Resolves when something changed since the last call; bursts coalesce into one wake-up.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Asks for a ranking rebuild: something a score depends on changed outside ingest (a
    /// relayed measurement, a circuit that opened).
    pub fn mark_changed(&self) {
        self.changed.notify_one();
    }

    /// Woken whenever a slot frees anywhere in the fleet.
    pub fn slot_freed(&self) -> &Notify {
        &self.slot_freed
    }

    /// Asks node `id`'s reporter, on its telemetry stream, to re-read the model list now.
    pub fn refresh_models(&self, id: &str) {
        if let Some(node) = self.view.load().get(id) {
            node.state.models_refresh.notify_one();
        }
    }

    /// Drains (or undrains) a node by id; false when no such node is configured.
    pub fn set_draining(&self, id: &str, draining: bool) -> bool {
        let view = self.view.load();
        let Some(node) = view.get(id) else {
            return false;
        };
        node.state.health.set_draining(draining);
        self.changed.notify_one();
        true
    }
}

/// One request's slot on a node. When it drops, the request is no longer in flight and a queued
/// request may take the slot.
#[derive(Debug)]
pub struct InFlightGuard {
    state: Arc<NodeState>,
    /// This request is the circuit's half-open trial.
    trial: bool,
    settled: bool,
}

impl InFlightGuard {
    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// The node answered: its circuit closes.
    pub fn succeeded(&mut self) {
        self.state.health.succeeded();
        self.settled = true;
    }

    /// The node failed this request; returns true when that opened its circuit.
    pub fn failed(&mut self, now: Instant, threshold: u32) -> bool {
        self.settled = true;
        self.state.health.failed(now, threshold)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.trial && !self.settled {
            self.state.health.release_trial();
        }
        self.state.release_slot();
    }
}

/// Equal-length inputs are compared in constant time; a token's length is not secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(id: &str, token: &str) -> NodeConfig {
        NodeConfig {
            token: token.into(),
            ..NodeConfig::for_test(id)
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
        assert!(
            fleet
                .record("a", Telemetry::for_test(100.0), vec![])
                .is_some()
        );
        let _guard = fleet
            .view()
            .get("a")
            .unwrap()
            .state
            .try_acquire(4, Instant::now(), Duration::from_secs(1))
            .unwrap();
        fleet.apply_config(&[node("a", "new-token"), node("c", "tc")]);
        let view = fleet.view();
        let a = view.get("a").unwrap();
        assert_eq!(a.state.telemetry().unwrap().watts, Some(100.0));
        assert_eq!(a.state.in_flight(), 1);
        assert!(view.get("b").is_none());
        assert!(
            fleet
                .record("b", Telemetry::for_test(1.0), vec![])
                .is_none()
        );
        assert_eq!(fleet.authenticate("new-token").as_deref(), Some("a"));
    }

    #[test]
    fn slots_are_bounded_and_freed_on_drop() {
        let fleet = Fleet::new(&[node("a", "ta")]);
        let state = fleet.view().get("a").unwrap().state.clone();
        let now = Instant::now();
        let cool = Duration::from_secs(5);
        let one = state.try_acquire(2, now, cool).unwrap();
        let two = state.try_acquire(2, now, cool).unwrap();
        assert!(state.try_acquire(2, now, cool).is_none());
        assert_eq!(state.in_flight(), 2);
        drop(one);
        assert_eq!(state.in_flight(), 1);
        assert!(state.try_acquire(2, now, cool).is_some());
        drop(two);
    }

    fn report(c: impl IntoIterator<Item = (&'static str, u32, Option<u32>)>) -> ReportedLoad {
        ReportedLoad {
            replicas: c
                .into_iter()
                .map(|(id, in_flight, cap)| ReplicaReport {
                    id: id.to_string(),
                    in_flight,
                    cap,
                })
                .collect(),
            engine: None,
        }
    }

    fn load(c: &[(&'static str, u32)]) -> ReportedLoad {
        report(c.iter().map(|(id, n)| (*id, *n, None)))
    }

    fn capped(c: &[(&'static str, u32, u32)]) -> ReportedLoad {
        report(c.iter().map(|(id, n, cap)| (*id, *n, Some(*cap))))
    }

    #[test]
    fn the_limit_holds_across_replicas() {
        let fleet = Fleet::for_replica(&[node("a", "ta")], Some("me"));
        let state = fleet.view().get("a").unwrap().state.clone();
        let (now, cool) = (Instant::now(), Duration::from_secs(5));
        assert_eq!(
            fleet.replica_hash_if_shared(now),
            None,
            "alone until told otherwise"
        );
        // The reporter says: this replica has 0 (as it last heard), another has 1.
        fleet.record_load("a", &load(&[("me", 0), ("other", 1)]), 0);
        assert!(fleet.replica_hash_if_shared(Instant::now()).is_some());
        assert_eq!((state.own_in_flight(), state.in_flight()), (0, 1));
        let mine = state.try_acquire(2, now, cool).unwrap();
        assert!(
            state.try_acquire(2, now, cool).is_none(),
            "1 here + 1 there = the limit"
        );
        assert_eq!((state.own_in_flight(), state.in_flight()), (1, 2));
        // The other replica's request ended (or the replica died): room again.
        fleet.record_load("a", &load(&[("me", 1)]), 1);
        let second = state.try_acquire(2, now, cool).unwrap();
        assert_eq!(state.in_flight(), 2);
        drop((mine, second));
        assert_eq!(state.in_flight(), 0);
        // Its own entry is never counted twice, and an unknown node changes nothing.
        fleet.record_load("a", &load(&[("me", 7)]), 2);
        assert_eq!(state.in_flight(), 0);
        fleet.record_load("zz", &load(&[("other", 3)]), 3);
    }

    #[test]
    fn a_granted_cap_binds_and_a_lost_stream_admits_nothing_new() {
        let fleet = Fleet::for_replica(&[node("a", "ta")], Some("me"));
        let state = fleet.view().get("a").unwrap().state.clone();
        let (now, cool) = (Instant::now(), Duration::from_secs(5));
        // Cap 1, though the counts alone would leave room for 3.
        fleet.record_load("a", &capped(&[("me", 0, 1), ("other", 0, 3)]), 5);
        let one = state.try_acquire(4, now, cool).unwrap();
        assert!(state.try_acquire(4, now, cool).is_none());
        assert!(state.take_waiting_for_cap(), "the refusal is told");
        assert!(!state.take_waiting_for_cap());
        // An older report, arriving late on the other channel, does not undo the newer cap.
        fleet.record_load("a", &capped(&[("me", 0, 3), ("other", 0, 1)]), 4);
        assert!(state.try_acquire(4, now, cool).is_none());
        fleet.record_load("a", &capped(&[("me", 1, 2), ("other", 0, 2)]), 6);
        let two = state.try_acquire(4, now, cool).unwrap();
        // Named nowhere in a report that grants caps: nothing new.
        drop((one, two));
        fleet.record_load("a", &capped(&[("other", 0, 4)]), 7);
        assert!(state.try_acquire(4, now, cool).is_none());
        fleet.record_load("a", &capped(&[("me", 0, 2), ("other", 0, 2)]), 8);
        fleet.load_reports_lost("a");
        assert!(state.try_acquire(4, now, cool).is_none(), "stream gone");
        // A fresh stream (its seq starts again) with no caps: the limit alone.
        fleet.record_load("a", &load(&[("me", 0)]), 1);
        assert!(state.try_acquire(4, now, cool).is_some());
    }

    #[tokio::test]
    async fn a_change_in_this_replicas_count_wakes_its_stream() {
        let fleet = Fleet::new(&[node("a", "ta")]);
        let state = fleet.view().get("a").unwrap().state.clone();
        let guard = state
            .try_acquire(2, Instant::now(), Duration::from_secs(5))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), state.own_load_changed())
            .await
            .unwrap();
        drop(guard);
        tokio::time::timeout(Duration::from_secs(1), state.own_load_changed())
            .await
            .unwrap();
    }

    #[test]
    fn circuit_gates_acquire_and_a_trial_reopens_or_closes_it() {
        let fleet = Fleet::new(&[node("a", "ta")]);
        let state = fleet.view().get("a").unwrap().state.clone();
        let t0 = Instant::now();
        let cool = Duration::from_secs(5);
        let mut g = state.try_acquire(4, t0, cool).unwrap();
        assert!(g.failed(t0, 1));
        drop(g);
        assert!(
            state
                .health
                .problem(t0, cool)
                .unwrap()
                .contains("circuit open")
        );
        assert!(state.try_acquire(4, t0, cool).is_none());
        assert_eq!(
            state.in_flight(),
            0,
            "a refused acquire gives its slot back"
        );
        let later = t0 + cool;
        let mut trial = state.try_acquire(4, later, cool).unwrap();
        assert!(
            state.try_acquire(4, later, cool).is_none(),
            "one trial at a time"
        );
        trial.succeeded();
        drop(trial);
        assert!(state.health.problem(later, cool).is_none());
        assert!(state.try_acquire(4, later, cool).is_some());
    }

    #[test]
    fn draining_and_failed_checks_are_health_problems() {
        let fleet = Fleet::new(&[node("a", "ta")]);
        let state = fleet.view().get("a").unwrap().state.clone();
        let now = Instant::now();
        let cool = Duration::from_secs(5);
        assert!(fleet.set_draining("a", true));
        assert!(!fleet.set_draining("zz", true));
        assert_eq!(state.health.problem(now, cool).as_deref(), Some("draining"));
        fleet.set_draining("a", false);
        state.health.record_check(Err("connection refused".into()));
        assert!(
            state
                .health
                .problem(now, cool)
                .unwrap()
                .contains("connection refused")
        );
        state.health.record_check(Ok(()));
        assert!(state.health.problem(now, cool).is_none());
    }

    #[test]
    fn older_probe_results_do_not_replace_newer() {
        let fleet = Fleet::new(&[node("a", "ta")]);
        let probe = |ms, tok_s| ProbeObservation {
            finished_unix_ms: ms,
            ..ProbeObservation::for_test("m", tok_s)
        };
        fleet.record("a", Telemetry::for_test(1.0), vec![probe(20, 50.0)]);
        fleet.record("a", Telemetry::for_test(1.0), vec![probe(10, 99.0)]);
        let probes = fleet.view().get("a").unwrap().state.probes();
        assert_eq!(probes["m"].tok_s, 50.0);
    }
}
