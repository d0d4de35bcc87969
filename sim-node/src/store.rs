//! The simulated model store's management side: the blobs uploaded to it, the layers a model
//! is pulled as, and the knobs tests turn to make pulls slow or failing
//! (`POST /wes-sim/management`).

use std::collections::HashMap;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::catalog::ModelInfo;
use crate::text::stable_hash;

/// How pulls, pushes and blob uploads behave on this node.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementSettings {
    /// Bytes per second a pull downloads and a push uploads; 0: at once.
    pub pull_bytes_per_sec: u64,
    /// Pulls fail with this error (Ollama's words for a registry failure, say) ...
    pub fail_pulls: Option<String>,
    /// ... once this many bytes of the first layer arrived (0: before any layer).
    pub fail_after_bytes: u64,
    /// Bytes per second a blob upload is read at; 0: as fast as it comes.
    pub blob_bytes_per_sec: u64,
}

/// What the store holds beside the models: blobs by digest, with their sizes.
#[derive(Debug, Default)]
pub struct Store {
    blobs: Mutex<HashMap<String, u64>>,
    pub settings: Mutex<ManagementSettings>,
}

impl Store {
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blobs.lock().contains_key(digest)
    }

    pub fn blob_size(&self, digest: &str) -> Option<u64> {
        self.blobs.lock().get(digest).copied()
    }

    pub fn add_blob(&self, digest: &str, size: u64) {
        self.blobs.lock().insert(digest.to_owned(), size);
    }

    pub fn settings(&self) -> ManagementSettings {
        self.settings.lock().clone()
    }
}

/// A layer of a model as a registry serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// `sha256:` and 64 hex digits.
    pub digest: String,
    pub size: u64,
}

impl Layer {
    /// The 12 hex digits Ollama's progress lines name a layer by.
    pub fn short(&self) -> &str {
        let hex = self.digest.trim_start_matches("sha256:");
        &hex[..hex.len().min(12)]
    }
}

/// A model's layers: the weights, then its template and parameters (small, as in Ollama).
pub fn layers(model: &ModelInfo) -> Vec<Layer> {
    let small = |what: &str, size: u64| Layer {
        digest: format!("sha256:{}", hex64(&format!("{}/{what}", model.name))),
        size,
    };
    vec![
        Layer {
            digest: format!("sha256:{}", model.digest),
            size: model.size_bytes,
        },
        small("template", 1_429),
        small("params", 96),
    ]
}

/// 64 hex digits derived from `text`, stable across runs.
fn hex64(text: &str) -> String {
    let seed = stable_hash(text.as_bytes());
    (0..4u64)
        .map(|i| format!("{:016x}", crate::text::splitmix64(seed ^ i)))
        .collect()
}

/// How far a transfer of `size` bytes at `bytes_per_sec` gets in each step of `step_secs`:
/// the completed counts, the last one `size` (one step when the rate is 0: at once).
pub fn transfer_steps(size: u64, bytes_per_sec: u64, step_secs: f64) -> Vec<u64> {
    if bytes_per_sec == 0 || size == 0 {
        return vec![size];
    }
    let per_step = ((bytes_per_sec as f64 * step_secs).ceil() as u64).max(1);
    let mut steps = Vec::new();
    let mut done = 0;
    while done < size {
        done = (done + per_step).min(size);
        steps.push(done);
        // Bounded: a huge layer at a tiny rate is still a few thousand lines.
        if steps.len() >= 10_000 {
            steps.push(size);
            break;
        }
    }
    steps
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn layers_are_content_addressed_and_stable() {
        let m = ModelInfo::new("llama3.2:3b", SystemTime::now());
        let a = layers(&m);
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].size, m.size_bytes);
        assert_eq!(a[0].digest.len(), "sha256:".len() + 64);
        assert_eq!(a[0].short().len(), 12);
        assert_eq!(a, layers(&ModelInfo::new("llama3.2:3b", SystemTime::now())));
        assert_ne!(
            a[1].digest,
            layers(&ModelInfo::new("qwen2.5:7b", SystemTime::now()))[1].digest
        );
    }

    #[test]
    fn transfers_step_at_the_rate_and_end_at_the_size() {
        assert_eq!(transfer_steps(100, 0, 0.1), vec![100]);
        assert_eq!(transfer_steps(100, 300, 0.1), vec![30, 60, 90, 100]);
        assert_eq!(transfer_steps(0, 300, 0.1), vec![0]);
    }
}
