//! What the proxy's services share: the running config, fleet state, the published ranking and
//! the metrics.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::access::Limiter;
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::fleet::Fleet;
use crate::fleet::energy::{RequestFacts, Split};
use crate::metrics::Metrics;
use crate::ranking::{History, Ranking};
use crate::usage::Usage;

pub struct AppState {
    pub config: ArcSwap<Config>,
    /// Where `reload` reads the config from; `None` for a config built in memory.
    pub config_path: Option<PathBuf>,
    /// Serializes reloads so two at once cannot interleave their checks and stores.
    reload_lock: Mutex<()>,
    pub fleet: Fleet,
    /// The board and the routing table of the latest rebuild, published together.
    pub ranking: Arc<ArcSwap<Ranking>>,
    /// What the published boards showed over the last minutes.
    pub history: Mutex<History>,
    pub metrics: Metrics,
    /// What each client key has spent of its limits.
    pub limits: Limiter,
    /// The energy ledger.
    pub usage: Usage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// False when the file matched the running config.
    pub changed: bool,
}

impl AppState {
    /// With an in-memory ledger (tests, benchmarks); `with_usage` for the one the config names.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Arc<Self> {
        Self::with_usage(config, config_path, Usage::in_memory())
    }

    pub fn with_usage(config: Config, config_path: Option<PathBuf>, usage: Usage) -> Arc<Self> {
        let fleet = Fleet::for_replica(&config.nodes, config.cluster.replica_id.as_deref());
        let ranking = Arc::new(ArcSwap::from_pointee(Ranking::default()));
        let history = History::new(config.admin.history_step, config.admin.history_window);
        let state = AppState {
            history: Mutex::new(history),
            config: ArcSwap::from_pointee(config),
            config_path,
            reload_lock: Mutex::new(()),
            fleet,
            metrics: Metrics::new(ranking.clone()),
            limits: Limiter::default(),
            usage,
            ranking,
        };
        state.rebuild_ranking();
        Arc::new(state)
    }

    /// Re-reads the config file and applies it whole, or refuses it whole and keeps the running
    /// one. Requests in flight keep the node state they hold; new requests see the new config.
    pub fn reload(&self) -> Result<ReloadOutcome, ConfigErrors> {
        let _serial = self.reload_lock.lock();
        let Some(path) = &self.config_path else {
            return Err(ConfigErrors(vec![ConfigError {
                line: None,
                message: "this proxy was not started from a config file".into(),
            }]));
        };
        let new = Config::load(path)?;
        let old = self.config.load_full();
        if new.usage != old.usage {
            return Err(ConfigErrors(vec![ConfigError {
                line: None,
                message: "[usage] changed: the usage log is opened once at start; restart to move it; nothing was applied".into(),
            }]));
        }
        if new.cluster != old.cluster {
            return Err(ConfigErrors(vec![ConfigError {
                line: None,
                message: "[cluster] changed: the replica id is taken once at start; restart to rename the replica; nothing was applied".into(),
            }]));
        }
        if new.listen != old.listen {
            // Listeners are bound once at start; half-applying a new address would be a lie.
            return Err(ConfigErrors(vec![ConfigError {
                line: None,
                message: "[listen] changed: listener settings (addresses, threads, TLS) take effect only on restart; nothing was applied".into(),
            }]));
        }
        let changed = *old != new;
        if changed {
            self.fleet.apply_config(&new.nodes);
            self.history
                .lock()
                .configure(new.admin.history_step, new.admin.history_window);
            self.limits.retain(&new.keys);
            self.config.store(Arc::new(new));
            self.rebuild_ranking();
        }
        Ok(ReloadOutcome { changed })
    }

    /// Books a node's sample interval in the ledger (`usage`) and the metrics.
    pub fn book_energy(&self, node_id: &str, split: Split<RequestFacts>) {
        let view = self.fleet.view();
        let Some(node) = view.get(node_id) else {
            return;
        };
        let (idle, measured) = (split.idle_joules, split.measured_joules);
        let sums = self
            .usage
            .record(&node.config, &node.id, split, unix_ms(), &self.limits);
        self.metrics.record_usage(&node.id, &sums, idle, measured);
    }

    /// Settles the ended requests of nodes that fell silent, and folds old ledger buckets.
    pub fn sweep_usage(&self) {
        let view = self.fleet.view();
        let now = std::time::Instant::now();
        for node in &view.nodes {
            let settled = node.state.abandon_energy_if_silent(now);
            if !settled.is_empty() {
                let sums =
                    self.usage
                        .settle(&node.config, &node.id, settled, unix_ms(), &self.limits);
                self.metrics.record_usage(&node.id, &sums, 0.0, 0.0);
            }
        }
        self.usage.fold_old(unix_ms());
    }

    /// Builds and publishes a fresh ranking (board and routing table) from fleet state.
    pub fn rebuild_ranking(&self) {
        let config = self.config.load();
        let view = self.fleet.view();
        let now = std::time::Instant::now();
        let ranking = Arc::new(Ranking::build(&view, &config.routing, &config.health, now));
        self.ranking.store(ranking.clone());
        self.history.lock().record(&ranking.board, unix_ms());
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
