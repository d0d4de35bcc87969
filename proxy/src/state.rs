//! What the proxy's services share: the running config, fleet state, the published ranking.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::fleet::Fleet;
use crate::policy::RoutingTable;
use crate::ranking::RankingSnapshot;

pub struct AppState {
    pub config: ArcSwap<Config>,
    /// Where `reload` reads the config from; `None` for a config built in memory.
    pub config_path: Option<PathBuf>,
    /// Serializes reloads so two at once cannot interleave their checks and stores.
    reload_lock: Mutex<()>,
    pub fleet: Fleet,
    pub ranking: ArcSwap<RankingSnapshot>,
    /// Per model, the nodes that may serve it, scored and sorted: what requests choose from.
    pub routing: ArcSwap<RoutingTable>,
    pub counters: Counters,
    /// Per-node request counts and latency histograms, recorded by the relay.
    pub stats: crate::stats::Stats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// False when the file matched the running config.
    pub changed: bool,
}

/// Process-wide counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub samples_accepted: AtomicU64,
    pub samples_refused: AtomicU64,
    pub streams_refused: AtomicU64,
}

impl AppState {
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Arc<Self> {
        let fleet = Fleet::new(&config.nodes);
        let state = AppState {
            config: ArcSwap::from_pointee(config),
            config_path,
            reload_lock: Mutex::new(()),
            fleet,
            ranking: ArcSwap::from_pointee(RankingSnapshot::default()),
            routing: ArcSwap::from_pointee(RoutingTable::default()),
            counters: Counters::default(),
            stats: crate::stats::Stats::default(),
        };
        state.rebuild_ranking();
        Arc::new(state)
    }

    /// Re-reads the config file and applies it whole, or refuses it whole and keeps the running
    /// one. Requests in flight keep the node state they hold; new requests see the new config.
    pub fn reload(&self) -> Result<ReloadOutcome, ConfigErrors> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = &self.config_path else {
            return Err(ConfigErrors(vec![ConfigError {
                line: None,
                message: "this proxy was not started from a config file".into(),
            }]));
        };
        let new = Config::load(path)?;
        let old = self.config.load_full();
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
            self.config.store(Arc::new(new));
            self.rebuild_ranking();
        }
        Ok(ReloadOutcome { changed })
    }

    /// Builds and publishes a fresh ranking and routing table from the current fleet state.
    pub fn rebuild_ranking(&self) {
        let config = self.config.load();
        let view = self.fleet.view();
        let now = std::time::Instant::now();
        let snapshot = RankingSnapshot::build(&view, &config.routing, &config.health, now);
        let table = RoutingTable::build(&view, &config.routing, &config.health, now);
        // The table first: whoever sees the new ranking can count on routing by it.
        self.routing.store(Arc::new(table));
        self.ranking.store(Arc::new(snapshot));
    }
}
