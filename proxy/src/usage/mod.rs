//! The energy ledger (docs/design.md, Energy per request): each request's measured energy
//! (split per node by `fleet::energy`), tokens, model, node and key, summed for `GET /usage`,
//! `/metrics`, the ranking's measured J/token and the keys' energy budgets; kept in memory
//! (`ledger`) and, when configured, in an append-only log that a restart rebuilds it from
//! (`log`).

pub mod ledger;
mod log;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

pub use self::ledger::{
    Entry, KeyModelTotals, Ledger, MeasuredJoules, NodeTotals, Report, Totals,
    sum_per_key_and_model,
};
use self::log::{Line, Writer};
use crate::FastMap;
use crate::access::Limiter;
use crate::config::NodeConfig;
use crate::fleet::energy::{RequestFacts, Settled, Split};

const JOULES_PER_KWH: f64 = 3.6e6;

/// A node's energy with nothing in flight, gathered over one minute before it is logged.
#[derive(Debug, Clone, Copy)]
struct PendingNode {
    minute: u64,
    idle_joules: f64,
    measured_joules: f64,
}

pub struct Usage {
    ledger: Mutex<Ledger>,
    log: Option<Mutex<Writer>>,
    log_path: Option<PathBuf>,
    pending: Mutex<FastMap<Arc<str>, PendingNode>>,
}

impl Usage {
    /// A ledger in memory only: a restart loses it.
    pub fn in_memory() -> Usage {
        Usage {
            ledger: Mutex::new(Ledger::default()),
            log: None,
            log_path: None,
            pending: Mutex::default(),
        }
    }

    /// The ledger rebuilt from the log at `path` (created when missing), and kept there.
    pub fn open(path: &std::path::Path) -> std::io::Result<Usage> {
        let mut ledger = Ledger::default();
        let replayed = log::replay(path, &mut ledger)?;
        if replayed.skipped > 0 {
            tracing::warn!(path = %path.display(), skipped = replayed.skipped, "usage log: lines that could not be read were skipped");
        }
        tracing::info!(path = %path.display(), lines = replayed.lines, "usage ledger rebuilt from its log");
        Ok(Usage {
            ledger: Mutex::new(ledger),
            log: Some(Mutex::new(Writer::open(path)?)),
            log_path: Some(path.into()),
            pending: Mutex::default(),
        })
    }

    pub fn log_path(&self) -> Option<&std::path::Path> {
        self.log_path.as_deref()
    }

    /// Books one node's sample interval: its settled requests and its idle energy.
    pub fn record(
        &self,
        node: &NodeConfig,
        node_id: &Arc<str>,
        split: Split<RequestFacts>,
        now_unix_ms: u64,
        limits: &Limiter,
    ) -> KeyModelTotals {
        if split.measured_joules > 0.0 {
            self.ledger.lock().add_node_energy(
                node_id,
                now_unix_ms,
                split.idle_joules,
                split.measured_joules,
            );
            self.pend_node_energy(
                node_id,
                now_unix_ms,
                split.idle_joules,
                split.measured_joules,
            );
        }
        self.settle(node, node_id, split.settled, now_unix_ms, limits)
    }

    /// Books settled requests: the ledger, the log, the keys' energy budgets. Returns their
    /// sums per key and model, for the metrics.
    pub fn settle(
        &self,
        node: &NodeConfig,
        node_id: &Arc<str>,
        settled: Vec<Settled<RequestFacts>>,
        now_unix_ms: u64,
        limits: &Limiter,
    ) -> KeyModelTotals {
        if settled.is_empty() {
            return KeyModelTotals::new();
        }
        let now = Instant::now();
        let entries: Vec<Entry> = settled
            .into_iter()
            .map(|s| {
                if let Some(key) = &s.facts.key {
                    limits.charge_energy(key, s.joules, now);
                }
                let kwh = s.joules / JOULES_PER_KWH;
                Entry {
                    at_unix_ms: now_unix_ms,
                    key: s.facts.key,
                    model: s.facts.model,
                    node: node_id.clone(),
                    input_tokens: s.facts.input_tokens,
                    output_tokens: s.facts.output_tokens,
                    requests: u64::from(s.facts.answered),
                    joules: s.joules,
                    baseline_joules: s.baseline_joules,
                    cost: node.price_per_kwh.map(|p| p * kwh),
                    carbon_g: node.carbon_g_per_kwh.map(|g| g * kwh),
                    complete: s.complete,
                }
            })
            .collect();
        let sums = sum_per_key_and_model(&entries);
        self.ledger.lock().add_sums(node_id, now_unix_ms, &sums);
        if self.log.is_some() {
            for e in entries {
                self.append(&Line::Request(e));
            }
        }
        sums
    }

    fn pend_node_energy(&self, node: &Arc<str>, at_unix_ms: u64, idle: f64, measured: f64) {
        let minute = at_unix_ms / 60_000;
        let flushed = {
            let mut pending = self.pending.lock();
            let slot = pending.entry(node.clone()).or_insert(PendingNode {
                minute,
                idle_joules: 0.0,
                measured_joules: 0.0,
            });
            let flushed = (slot.minute != minute).then(|| {
                std::mem::replace(
                    slot,
                    PendingNode {
                        minute,
                        idle_joules: 0.0,
                        measured_joules: 0.0,
                    },
                )
            });
            slot.idle_joules += idle;
            slot.measured_joules += measured;
            flushed
        };
        if let Some(p) = flushed {
            self.append(&node_line(node, &p));
        }
    }

    /// Writes what is pending (at shutdown; a minute's node energy otherwise waits for the
    /// next minute's first sample).
    pub fn flush(&self) {
        let pending: Vec<(Arc<str>, PendingNode)> = self.pending.lock().drain().collect();
        for (node, p) in pending {
            self.append(&node_line(&node, &p));
        }
    }

    fn append(&self, line: &Line) {
        if let Some(log) = &self.log
            && let Err(e) = log.lock().append(line)
        {
            tracing::error!("usage log: cannot append ({e}); the in-memory ledger still has it");
        }
    }

    pub fn report(&self, since_unix_ms: Option<u64>) -> Report {
        self.ledger.lock().report(since_unix_ms)
    }

    /// Measured J/token (gross, net) per node and model since `since_unix_ms`.
    pub fn joules_per_token(&self, since_unix_ms: u64) -> MeasuredJoules {
        self.ledger.lock().joules_per_token(since_unix_ms)
    }

    pub fn fold_old(&self, now_unix_ms: u64) {
        self.ledger.lock().fold_old(now_unix_ms);
    }
}

fn node_line(node: &Arc<str>, p: &PendingNode) -> Line {
    Line::Node {
        t: p.minute * 60_000,
        node: node.clone(),
        idle_joules: p.idle_joules,
        measured_joules: p.measured_joules,
    }
}
