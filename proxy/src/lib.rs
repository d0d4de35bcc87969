//! WES proxy: routes Ollama-compatible traffic to the node that turns watts into tokens best.
//!
//! Data flows one way (docs/architecture.md): reporter samples (`ingest`) → per-node state
//! (`fleet`, health included) → one derived view (`ranking`: the board and the routing table,
//! scored by `score`) → peer choice (`policy`) → relay (`relay`) → meter (`meter`) → back into
//! `fleet`; `metrics` and `admin` read along the way.

pub mod access;
pub mod admin;
pub mod config;
pub mod fleet;
pub mod ingest;
pub(crate) mod json;
pub mod manage;
pub mod meter;
pub mod metrics;
pub mod policy;
pub mod ranking;
pub mod relay;
pub mod score;
pub mod server;
pub mod state;
pub mod usage;

/// The map for lookups on the request path (node ids, model names, metric label pairs): with
/// std's SipHash these lookups cost ~1.1k instructions per request. foldhash is seeded per
/// process, and what these maps insert comes from config or from what nodes report (a client's
/// model name is only looked up), so its weaker flooding resistance does not matter here.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
