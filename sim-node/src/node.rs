//! The running node: its models, its physics advanced in real time, the slots that bound how
//! many requests decode at once, and which models are loaded. HTTP handlers and the
//! generation engine share one `Arc<Node>`.
//!
//! Locks are `std` mutexes held for a few arithmetic operations and never across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::catalog::{ModelInfo, same_model};
use crate::energy::{Attribution, Share};
use crate::model::{NodeModel, Snapshot, ThermalState};
use crate::profile::Profile;

/// How often the background task advances the physics. Load changes step it too, so this only
/// bounds how stale an idle node's temperature can be.
pub const TICK: Duration = Duration::from_millis(100);
/// Ollama's default `keep_alive`.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(300);
/// The window over which `tok_s_now` averages the tokens actually sent.
const TOK_S_WINDOW_S: f64 = 1.0;
/// A cold load never takes longer than this, whatever the profile says.
const MAX_LOAD: Duration = Duration::from_secs(60);

pub struct Settings {
    pub profile: Profile,
    pub models: Vec<String>,
    pub seed: u64,
    pub time_scale: f64,
    /// Tokens generated when a request sets no `num_predict` / `max_tokens`.
    pub default_tokens: u32,
}

/// How long a model stays loaded after a request, as Ollama's `keep_alive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    For(Duration),
    Forever,
    UnloadNow,
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive::For(DEFAULT_KEEP_ALIVE)
    }
}

/// The queue is full: Ollama answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

struct Physics {
    model: NodeModel,
    last_step: Instant,
    last: Snapshot,
    /// Each step's energy, split among the requests decoding (ground truth for the ledger).
    attribution: Attribution,
    tok_s_now: f64,
    tokens_at_tick: u64,
    last_tick: Instant,
}

struct Loaded {
    ready_at: Instant,
    /// `None`: loaded until unloaded (`keep_alive` negative).
    expires: Option<Instant>,
    size_bytes: u64,
    /// Requests using it now: a model in use is never evicted.
    in_use: u32,
}

/// A request's hold on its loaded model; dropping it (the request ended, however) lets the
/// model be evicted again.
pub struct ModelUse {
    node: Weak<Node>,
    key: String,
}

impl Drop for ModelUse {
    fn drop(&mut self) {
        if let Some(node) = self.node.upgrade()
            && let Some(l) = node.loaded.lock().get_mut(&self.key)
        {
            l.in_use = l.in_use.saturating_sub(1);
        }
    }
}

pub struct Node {
    pub profile: Profile,
    pub seed: u64,
    pub default_tokens: u32,
    pub time_scale: f64,
    models: RwLock<Vec<Arc<ModelInfo>>>,
    physics: Mutex<Physics>,
    slots: Arc<Semaphore>,
    active: AtomicU32,
    queued: AtomicU32,
    tokens_sent: AtomicU64,
    loaded: Mutex<HashMap<String, Loaded>>,
    loads: AtomicU64,
    evictions: AtomicU64,
    /// Blobs and the management knobs.
    pub store: crate::store::Store,
}

/// What `GET /wes-sim/state` answers. The first four keys are the reporter's `command` sensor
/// contract; the rest explain them.
#[derive(Debug, Clone, Serialize)]
pub struct StateReport {
    pub watts: f64,
    pub energy_joules: f64,
    pub thermal_state: ThermalState,
    pub temperature_c: f64,
    /// Requests the node holds: decoding or waiting for a slot.
    pub in_flight: u32,
    /// Tokens per second actually sent over the last second, all requests together.
    pub tok_s_now: f64,
    pub active: u32,
    pub queued: u32,
    /// `energy_joules` split: the part spent with requests decoding (each request's share is
    /// in its final answer) and the part spent with none.
    pub attributed_energy_joules: f64,
    pub idle_energy_joules: f64,
    pub speed_factor: f64,
    pub idle_watts: f64,
    pub profile: String,
    pub time_scale: f64,
    /// Models in memory now (loaded or loading), and the cold loads and evictions so far:
    /// ground truth for the benchmark's oracle.
    pub loaded: Vec<String>,
    pub loads: u64,
    pub evictions: u64,
}

/// A decode slot. Dropping it (request finished, or client gone) frees the slot and lowers
/// the load the physics sees.
pub struct Slot {
    node: Arc<Node>,
    share: Arc<Share>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// Tokens this request produced (or prefilled), for its share of the node's energy.
    pub fn credit(&self, tokens: u64) {
        self.share.credit(tokens);
    }

    /// The request's energy share, readable after the slot is gone.
    pub fn share(&self) -> Arc<Share> {
        self.share.clone()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut p = self.node.physics.lock();
        self.node.step_locked(&mut p);
        let now = self.node.active.load(Ordering::SeqCst);
        self.node
            .active
            .store(now.saturating_sub(1), Ordering::SeqCst);
        p.attribution.close(&self.share);
    }
}

/// Counts a waiting request out of the queue however the wait ends.
struct Queued<'a>(&'a AtomicU32);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Node {
    pub fn new(settings: Settings) -> Arc<Node> {
        let Settings {
            profile,
            models,
            seed,
            time_scale,
            default_tokens,
        } = settings;
        let time_scale = if time_scale.is_finite() && time_scale > 0.0 {
            time_scale
        } else {
            1.0
        };
        let model = NodeModel::new(
            profile.power.clone(),
            profile.thermal.clone(),
            profile.speed.concurrency_exponent,
            time_scale,
        );
        let now = Instant::now();
        let started = SystemTime::now();
        let mut catalog: Vec<Arc<ModelInfo>> = Vec::new();
        for name in models {
            let name = name.trim();
            if !name.is_empty() && !catalog.iter().any(|m| same_model(&m.name, name)) {
                catalog.push(Arc::new(ModelInfo::new(name, started)));
            }
        }
        Arc::new(Node {
            slots: Arc::new(Semaphore::new(profile.max_parallel as usize)),
            profile,
            seed,
            default_tokens,
            time_scale,
            models: RwLock::new(catalog),
            physics: Mutex::new(Physics {
                last: model.snapshot(),
                attribution: Attribution::default(),
                model,
                last_step: now,
                tok_s_now: 0.0,
                tokens_at_tick: 0,
                last_tick: now,
            }),
            active: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            tokens_sent: AtomicU64::new(0),
            loaded: Mutex::new(HashMap::new()),
            loads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            store: crate::store::Store::default(),
        })
    }

    /// Advances the physics every [`TICK`] for as long as the node exists.
    pub fn spawn_ticker(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Node> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(node) = weak.upgrade() else { break };
                node.tick();
            }
        })
    }

    pub fn tick(&self) {
        let mut p = self.physics.lock();
        self.step_locked(&mut p);
        let now = Instant::now();
        let dt = now.duration_since(p.last_tick).as_secs_f64();
        if dt > 0.0 {
            let sent = self.tokens_sent.load(Ordering::Relaxed);
            let rate = sent.saturating_sub(p.tokens_at_tick) as f64 / dt;
            let alpha = 1.0 - (-dt / TOK_S_WINDOW_S).exp();
            p.tok_s_now += (rate - p.tok_s_now) * alpha;
            // The average decays forever; an idle node should read 0, not 1e-30.
            if p.tok_s_now < 0.01 {
                p.tok_s_now = 0.0;
            }
            p.tokens_at_tick = sent;
            p.last_tick = now;
        }
    }

    /// Steps the physics up to now with the load that held since the last step.
    /// Load changes step the physics first (`admit`, a slot's drop), so energy is integrated
    /// with the load that was really running, not the one sampled at the next tick.
    fn step_locked(&self, p: &mut Physics) {
        let now = Instant::now();
        let dt = now.duration_since(p.last_step).as_secs_f64();
        let before = p.last.energy_joules;
        p.last = p.model.step(dt, self.active.load(Ordering::SeqCst));
        p.last_step = now;
        p.attribution.split(p.last.energy_joules - before);
    }

    pub fn state(&self) -> StateReport {
        let mut p = self.physics.lock();
        self.step_locked(&mut p);
        let s = p.last;
        let active = self.active.load(Ordering::SeqCst);
        let queued = self.queued.load(Ordering::SeqCst);
        let now = Instant::now();
        let mut loaded: Vec<String> = self
            .loaded
            .lock()
            .iter()
            .filter(|(_, l)| l.expires.is_none_or(|e| e > now))
            .map(|(k, _)| k.clone())
            .collect();
        loaded.sort();
        StateReport {
            loaded,
            loads: self.loads.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            watts: s.watts,
            energy_joules: s.energy_joules,
            attributed_energy_joules: p.attribution.attributed_joules,
            idle_energy_joules: p.attribution.idle_joules,
            thermal_state: s.thermal_state,
            temperature_c: s.temperature_c,
            in_flight: active + queued,
            tok_s_now: p.tok_s_now,
            active,
            queued,
            speed_factor: s.speed_factor,
            idle_watts: p.model.idle_watts(),
            profile: self.profile.name.clone(),
            time_scale: self.time_scale,
        }
    }

    /// Forces a thermal event: the die jumps to `temperature_c`, and/or the room changes to
    /// `ambient_c` so the node settles elsewhere.
    pub fn heat(&self, temperature_c: Option<f64>, ambient_c: Option<f64>) {
        let mut p = self.physics.lock();
        self.step_locked(&mut p);
        if let Some(a) = ambient_c {
            p.model.set_ambient(a);
        }
        if let Some(t) = temperature_c {
            p.model.force_temperature(t);
        }
        p.last = p.model.snapshot();
    }

    /// Current (decode, prefill) tok/s for one request on `model`, given load and throttling.
    pub fn rates(&self, model: &ModelInfo) -> (f64, f64) {
        let decode = self.profile.decode_tok_s(&model.name, model.size_bytes);
        let prompt = self.profile.prompt_tok_s(&model.name, model.size_bytes);
        let p = self.physics.lock();
        let active = self.active.load(Ordering::SeqCst);
        (
            p.model.stream_tok_s(decode, active),
            p.model.stream_tok_s(prompt, active),
        )
    }

    pub fn record_tokens(&self, n: u64) {
        self.tokens_sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Waits for a decode slot, or refuses at once when the queue is full.
    pub async fn admit(self: &Arc<Self>) -> Result<Slot, Busy> {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let before = self.queued.fetch_add(1, Ordering::SeqCst);
                let _queued = Queued(&self.queued);
                if before >= self.profile.max_queue {
                    return Err(Busy);
                }
                Arc::clone(&self.slots)
                    .acquire_owned()
                    .await
                    .map_err(|_| Busy)?
            }
        };
        let share = {
            let mut p = self.physics.lock();
            self.step_locked(&mut p);
            self.active.fetch_add(1, Ordering::SeqCst);
            p.attribution.open()
        };
        Ok(Slot {
            node: Arc::clone(self),
            share,
            _permit: permit,
        })
    }

    pub fn find_model(&self, name: &str) -> Option<Arc<ModelInfo>> {
        self.models
            .read()
            .iter()
            .find(|m| same_model(&m.name, name))
            .cloned()
    }

    pub fn models(&self) -> Vec<Arc<ModelInfo>> {
        self.models.read().clone()
    }

    /// `ollama pull`: any name can be pulled, since figures are derived for unknown names.
    pub fn add_model(&self, name: &str) -> Arc<ModelInfo> {
        let mut models = self.models.write();
        if let Some(m) = models.iter().find(|m| same_model(&m.name, name)) {
            return Arc::clone(m);
        }
        let m = Arc::new(ModelInfo::new(name, SystemTime::now()));
        models.push(Arc::clone(&m));
        m
    }

    /// Like [`Node::add_model`] but under another name, sharing figures (`ollama cp`).
    pub fn copy_model(&self, source: &ModelInfo, destination: &str) {
        let mut models = self.models.write();
        models.retain(|m| !same_model(&m.name, destination));
        let mut copy = source.clone();
        copy.name = destination.to_string();
        copy.modified_at = SystemTime::now();
        models.push(Arc::new(copy));
    }

    /// `ollama create`: `model` under its name, replacing one of that name.
    pub fn put_model(&self, model: ModelInfo) {
        let mut models = self.models.write();
        models.retain(|m| !same_model(&m.name, &model.name));
        self.loaded.lock().remove(bare(&model.name));
        models.push(Arc::new(model));
    }

    pub fn remove_model(&self, name: &str) -> bool {
        let mut models = self.models.write();
        let before = models.len();
        models.retain(|m| !same_model(&m.name, name));
        self.loaded.lock().remove(bare(name));
        models.len() != before
    }

    /// Loads `model` if it is not resident (waiting out a load another request started),
    /// evicting idle models when the profile's memory is too small for it beside them; returns
    /// how long this request waited, and its hold on the model.
    pub async fn ensure_loaded(
        self: &Arc<Self>,
        model: &ModelInfo,
        keep_alive: KeepAlive,
    ) -> (Duration, ModelUse) {
        let start = Instant::now();
        let key = bare(&model.name).to_string();
        let ready_at = {
            let mut loaded = self.loaded.lock();
            loaded.retain(|_, l| l.in_use > 0 || l.expires.is_none_or(|e| e > start));
            let resident = loaded.get_mut(&key).map(|l| {
                l.in_use += 1;
                l.ready_at
            });
            match resident {
                Some(ready_at) => ready_at,
                None => {
                    self.evict_for(&mut loaded, model.size_bytes);
                    self.loads.fetch_add(1, Ordering::Relaxed);
                    let ready_at = start + self.load_time(model);
                    loaded.insert(
                        key.clone(),
                        Loaded {
                            ready_at,
                            expires: expiry(ready_at, keep_alive),
                            size_bytes: model.size_bytes,
                            in_use: 1,
                        },
                    );
                    ready_at
                }
            }
        };
        let hold = ModelUse {
            node: Arc::downgrade(self),
            key,
        };
        tokio::time::sleep_until(ready_at.into()).await;
        (start.elapsed(), hold)
    }

    /// Makes room for `bytes` more: idle models leave, soonest to expire first (those kept
    /// forever last). Models in use stay even when that leaves too little room: Ollama would
    /// make the request wait; the simulator lets memory overcommit instead.
    fn evict_for(&self, loaded: &mut HashMap<String, Loaded>, bytes: u64) {
        let memory = (self.profile.memory_gb * 1e9) as u64;
        if memory == 0 {
            return;
        }
        let mut used: u64 = loaded.values().map(|l| l.size_bytes).sum();
        let mut idle: Vec<(Option<Instant>, String)> = loaded
            .iter()
            .filter(|(_, l)| l.in_use == 0)
            .map(|(k, l)| (l.expires, k.clone()))
            .collect();
        idle.sort_by_key(|(expires, name)| (expires.is_none(), *expires, name.clone()));
        for (_, name) in idle {
            if used.saturating_add(bytes) <= memory {
                break;
            }
            if let Some(l) = loaded.remove(&name) {
                used -= l.size_bytes;
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A request finished with `keep_alive`: the model's timer restarts from now.
    pub fn touch(&self, model: &ModelInfo, keep_alive: KeepAlive) {
        let mut loaded = self.loaded.lock();
        let key = bare(&model.name);
        if keep_alive == KeepAlive::UnloadNow {
            loaded.remove(key);
        } else if let Some(l) = loaded.get_mut(key) {
            l.expires = expiry(Instant::now(), keep_alive);
        }
    }

    /// Models resident now, with when each will be unloaded (`None`: never).
    pub fn loaded_models(&self) -> Vec<(Arc<ModelInfo>, Option<SystemTime>)> {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut loaded = self.loaded.lock();
        loaded.retain(|_, l| l.expires.is_none_or(|e| e > now));
        self.models()
            .into_iter()
            .filter_map(|m| {
                let l = loaded.get(bare(&m.name))?;
                let expires = l.expires.map(|e| wall + e.saturating_duration_since(now));
                Some((m, expires))
            })
            .collect()
    }

    fn load_time(&self, model: &ModelInfo) -> Duration {
        let rate = self.profile.load_gb_per_s;
        if rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64(model.size_bytes as f64 / (rate * 1e9))
            .unwrap_or(MAX_LOAD)
            .min(MAX_LOAD)
    }
}

fn bare(name: &str) -> &str {
    name.strip_suffix(":latest").unwrap_or(name)
}

fn expiry(from: Instant, keep_alive: KeepAlive) -> Option<Instant> {
    match keep_alive {
        KeepAlive::For(d) => Some(from.checked_add(d).unwrap_or(from)),
        KeepAlive::Forever => None,
        KeepAlive::UnloadNow => Some(from),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(max_parallel: u32, max_queue: u32) -> Arc<Node> {
        let mut profile = Profile::load("apple-m2").unwrap();
        profile.max_parallel = max_parallel;
        profile.max_queue = max_queue;
        profile.load_gb_per_s = 0.0;
        Node::new(Settings {
            profile,
            models: vec!["llama3.2:3b".into(), "llama3.2:3b".into(), "x".into()],
            seed: 0,
            time_scale: 1.0,
            default_tokens: 8,
        })
    }

    #[tokio::test]
    async fn slots_bound_concurrency_and_the_queue_bounds_waiting() {
        let n = node(1, 1);
        let first = n.admit().await.unwrap();
        assert_eq!(n.state().active, 1);
        let waiter = {
            let n = Arc::clone(&n);
            tokio::spawn(async move { n.admit().await.map(|_| ()) })
        };
        while n.state().queued == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(n.state().in_flight, 2);
        assert_eq!(n.admit().await.err(), Some(Busy), "queue of one is full");
        drop(first);
        waiter.await.unwrap().unwrap();
        let s = n.state();
        assert_eq!((s.active, s.queued), (0, 0));
    }

    #[tokio::test]
    async fn models_are_deduplicated_and_matched_with_or_without_latest() {
        let n = node(1, 1);
        assert_eq!(n.models().len(), 2);
        assert!(n.find_model("x:latest").is_some());
        assert!(n.find_model("y").is_none());
        n.add_model("y:latest");
        assert!(n.find_model("y").is_some());
        assert!(n.remove_model("y"));
        assert!(!n.remove_model("y"));
    }

    #[tokio::test]
    async fn keep_alive_governs_what_is_loaded() {
        let n = node(1, 1);
        let m = n.find_model("llama3.2:3b").unwrap();
        assert!(n.loaded_models().is_empty());
        n.ensure_loaded(&m, KeepAlive::default()).await;
        assert_eq!(n.loaded_models().len(), 1);
        n.touch(&m, KeepAlive::UnloadNow);
        assert!(n.loaded_models().is_empty());
        n.ensure_loaded(&m, KeepAlive::Forever).await;
        assert_eq!(n.loaded_models()[0].1, None);
    }

    #[tokio::test]
    async fn a_model_that_does_not_fit_evicts_an_idle_one_never_one_in_use() {
        let mut profile = Profile::load("apple-m2").unwrap();
        profile.load_gb_per_s = 0.0;
        let n = Node::new(Settings {
            profile,
            models: vec!["a".into(), "b".into(), "c".into()],
            seed: 0,
            time_scale: 1.0,
            default_tokens: 8,
        });
        let size = n.find_model("a").unwrap().size_bytes as f64;
        // Room for two of the three.
        let mut p = n.profile.clone();
        p.memory_gb = 2.5 * size / 1e9;
        let n = Node::new(Settings {
            profile: p,
            models: vec!["a".into(), "b".into(), "c".into()],
            seed: 0,
            time_scale: 1.0,
            default_tokens: 8,
        });
        let m = |name: &str| n.find_model(name).unwrap();
        let held_a = n.ensure_loaded(&m("a"), KeepAlive::default()).await.1;
        drop(n.ensure_loaded(&m("b"), KeepAlive::default()).await.1);
        assert_eq!(n.state().loaded, ["a", "b"]);
        // c needs room: b is idle, a is in use.
        let _c = n.ensure_loaded(&m("c"), KeepAlive::default()).await;
        let s = n.state();
        assert_eq!(s.loaded, ["a", "c"]);
        assert_eq!((s.loads, s.evictions), (3, 1));
        // Nothing idle to evict: b loads beside both, over the memory.
        let _b = n.ensure_loaded(&m("b"), KeepAlive::default()).await;
        assert_eq!(n.state().loaded, ["a", "b", "c"]);
        drop(held_a);
    }

    #[tokio::test]
    async fn load_raises_power_and_energy_keeps_counting() {
        let n = node(2, 1);
        let idle = n.state();
        let _slot = n.admit().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let busy = n.state();
        assert!(
            busy.watts > idle.watts * 2.0,
            "{} vs {}",
            busy.watts,
            idle.watts
        );
        assert!(busy.energy_joules > idle.energy_joules);
    }
}
