//! WES node reporter: reads this node's power and thermal state, lists the models its Ollama
//! holds, optionally probes its decode rate, and streams samples to every configured proxy.

pub mod agent;
pub mod config;
pub mod joules;
pub mod ollama;
pub mod replicas;
pub mod sample;
pub mod sensor;
pub mod slots;
pub mod stream;
