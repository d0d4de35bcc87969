//! WES proxy: routes Ollama-compatible traffic to the node that turns watts into tokens best.
//!
//! Data flows one way: reporter samples (`ingest`) → per-node state (`fleet`) → a published
//! ranking (`ranking`, scored by `score`) → peer choice → relay → meter → back into `fleet`.

pub mod admin;
pub mod checker;
pub mod config;
pub mod fleet;
pub mod ingest;
pub mod meter;
pub mod policy;
pub mod ranking;
pub mod relay;
pub mod score;
pub mod server;
pub mod state;
pub mod stats;
