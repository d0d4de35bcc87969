//! What the proxy's services share: the running config, fleet state, the published ranking.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::fleet::Fleet;
use crate::ranking::RankingSnapshot;

pub struct AppState {
    pub config: ArcSwap<Config>,
    pub fleet: Fleet,
    pub ranking: ArcSwap<RankingSnapshot>,
    pub counters: Counters,
}

/// Process-wide counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub samples_accepted: AtomicU64,
    pub samples_refused: AtomicU64,
    pub streams_refused: AtomicU64,
}

impl AppState {
    pub fn new(config: Config) -> Arc<Self> {
        let fleet = Fleet::new(&config.nodes);
        let state = AppState {
            config: ArcSwap::from_pointee(config),
            fleet,
            ranking: ArcSwap::from_pointee(RankingSnapshot::default()),
            counters: Counters::default(),
        };
        state.rebuild_ranking();
        Arc::new(state)
    }

    /// Builds and publishes a fresh ranking from the current fleet state.
    pub fn rebuild_ranking(&self) {
        let config = self.config.load();
        let snapshot = RankingSnapshot::build(
            &self.fleet.view(),
            &config.routing,
            std::time::Instant::now(),
        );
        self.ranking.store(Arc::new(snapshot));
    }
}
