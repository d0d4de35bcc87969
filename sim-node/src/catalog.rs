//! What the node says about the models it holds: sizes, families, quantization and shapes,
//! close enough to `ollama list` / `ollama show` that clients and the proxy's model routing
//! see what a real node would report. Well-known models carry their library figures
//! (approximate: the sizes of the default tags on ollama.com); any other name gets figures
//! derived from its tag (`:7b`, `:135m`, `-q8_0`), so `--models` accepts anything.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::text::stable_hash;

/// Ollama's default `num_ctx`: prompts longer than this are cut to their last tokens.
pub const DEFAULT_NUM_CTX: u64 = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// As the operator named it on `--models`; requests may add or drop `:latest`.
    pub name: String,
    pub family: String,
    pub parameter_count: u64,
    pub parameter_size: String,
    pub quantization: String,
    pub size_bytes: u64,
    pub digest: String,
    pub context_length: u64,
    pub embedding_length: u64,
    pub block_count: u64,
    /// Embedding models answer `/api/embed` only, as in Ollama.
    pub embedding_only: bool,
    pub modified_at: SystemTime,
}

struct Known {
    name: &'static str,
    family: &'static str,
    parameter_count: u64,
    parameter_size: &'static str,
    quantization: &'static str,
    size_bytes: u64,
    context_length: u64,
    embedding_length: u64,
    block_count: u64,
    embedding_only: bool,
}

/// `params` is (count, label), `file` is (quantization, bytes), `shape` is (context length,
/// embedding length, block count).
const fn known(
    name: &'static str,
    family: &'static str,
    params: (u64, &'static str),
    file: (&'static str, u64),
    shape: (u64, u64, u64),
    embedding_only: bool,
) -> Known {
    let (parameter_count, parameter_size) = params;
    let (quantization, size_bytes) = file;
    Known {
        name,
        family,
        parameter_count,
        parameter_size,
        quantization,
        size_bytes,
        context_length: shape.0,
        embedding_length: shape.1,
        block_count: shape.2,
        embedding_only,
    }
}

#[rustfmt::skip]
const KNOWN: &[Known] = &[
    known("llama3.2:3b", "llama", (3_212_749_888, "3.2B"), ("Q4_K_M", 2_019_393_189), (131_072, 3072, 28), false),
    known("llama3.2:1b", "llama", (1_235_814_432, "1.2B"), ("Q8_0", 1_321_098_329), (131_072, 2048, 16), false),
    known("llama3.1:8b", "llama", (8_030_261_248, "8.0B"), ("Q4_K_M", 4_920_753_328), (131_072, 4096, 32), false),
    known("smollm2:135m", "llama", (134_515_008, "134.52M"), ("F16", 270_898_672), (8192, 576, 30), false),
    known("smollm2:360m", "llama", (361_821_120, "361.82M"), ("F16", 725_566_512), (8192, 960, 32), false),
    known("smollm2:1.7b", "llama", (1_711_376_384, "1.7B"), ("Q8_0", 1_820_414_944), (8192, 2048, 24), false),
    known("qwen2.5:0.5b", "qwen2", (494_032_768, "494.03M"), ("Q4_K_M", 397_821_319), (32_768, 896, 24), false),
    known("qwen2.5:7b", "qwen2", (7_615_616_512, "7.6B"), ("Q4_K_M", 4_683_087_332), (32_768, 3584, 28), false),
    known("mistral:7b", "llama", (7_248_023_552, "7.2B"), ("Q4_0", 4_113_301_824), (32_768, 4096, 32), false),
    known("gemma3:1b", "gemma3", (999_885_952, "999.89M"), ("Q4_K_M", 815_319_791), (32_768, 1152, 26), false),
    known("gemma3:4b", "gemma3", (4_300_079_472, "4.3B"), ("Q4_K_M", 3_338_801_804), (131_072, 2560, 34), false),
    known("nomic-embed-text", "nomic-bert", (136_727_040, "137M"), ("F16", 274_302_450), (2048, 768, 12), true),
    known("all-minilm", "bert", (22_565_376, "23M"), ("F16", 45_960_996), (512, 384, 6), true),
    known("mxbai-embed-large", "bert", (334_094_848, "334M"), ("F16", 669_615_493), (512, 1024, 24), true),
];

/// `llama3.2` and `llama3.2:latest` name one model in Ollama.
pub fn same_model(a: &str, b: &str) -> bool {
    bare(a) == bare(b)
}

fn bare(name: &str) -> &str {
    name.strip_suffix(":latest").unwrap_or(name)
}

impl ModelInfo {
    pub fn new(name: &str, modified_at: SystemTime) -> ModelInfo {
        let digest = digest_of(name);
        if let Some(k) = KNOWN.iter().find(|k| same_model(k.name, name)) {
            return ModelInfo {
                name: name.to_string(),
                family: k.family.to_string(),
                parameter_count: k.parameter_count,
                parameter_size: k.parameter_size.to_string(),
                quantization: k.quantization.to_string(),
                size_bytes: k.size_bytes,
                digest,
                context_length: k.context_length,
                embedding_length: k.embedding_length,
                block_count: k.block_count,
                embedding_only: k.embedding_only,
                modified_at,
            };
        }
        derived(name, digest, modified_at)
    }

    /// The tokens of context a request gets: the default window, or less for a model whose
    /// own context is shorter.
    pub fn context_window(&self) -> u32 {
        u32::try_from(self.context_length.min(DEFAULT_NUM_CTX)).unwrap_or(u32::MAX)
    }

    pub fn capabilities(&self) -> Vec<&'static str> {
        if self.embedding_only {
            vec!["embedding"]
        } else {
            vec!["completion"]
        }
    }

    /// The `details` object of `/api/tags`, `/api/ps` and `/api/show`.
    pub fn details(&self) -> Value {
        json!({
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization,
        })
    }

    /// The `model_info` object of `/api/show`: GGUF metadata keys as Ollama returns them.
    pub fn model_info(&self) -> Value {
        let arch = &self.family;
        let mut info = serde_json::Map::new();
        info.insert("general.architecture".into(), json!(arch));
        info.insert(
            "general.parameter_count".into(),
            json!(self.parameter_count),
        );
        info.insert("general.quantization_version".into(), json!(2));
        info.insert(format!("{arch}.context_length"), json!(self.context_length));
        info.insert(
            format!("{arch}.embedding_length"),
            json!(self.embedding_length),
        );
        info.insert(format!("{arch}.block_count"), json!(self.block_count));
        Value::Object(info)
    }
}

/// A sha256-shaped digest that is the same for a name on every node and every run, as the
/// digest of one pulled model is across a real fleet.
fn digest_of(name: &str) -> String {
    let seed = stable_hash(bare(name).as_bytes());
    (0..4u64)
        .map(|i| format!("{:016x}", crate::text::splitmix64(seed ^ i)))
        .collect()
}

/// Figures for a name the table does not know, from its tag: `qwen3:14b-q8_0` is a 14B model
/// at Q8_0. Unknown sizes count as 3B, the typical small edge model.
fn derived(name: &str, digest: String, modified_at: SystemTime) -> ModelInfo {
    let (base, tag) = name.split_once(':').unwrap_or((name, "latest"));
    let tag = tag.to_ascii_lowercase();
    let parameter_count = tag
        .split(['-', '_'])
        .find_map(parse_parameter_count)
        .unwrap_or(3_000_000_000);
    let quantization = [
        "q4_0", "q4_k_m", "q5_k_m", "q6_k", "q8_0", "fp16", "f16", "bf16",
    ]
    .into_iter()
    .find(|q| tag.contains(q))
    .map(|q| if q == "fp16" { "F16" } else { q })
    .unwrap_or("Q4_K_M")
    .to_ascii_uppercase();
    let bits_per_weight = match quantization.as_str() {
        "Q4_0" => 4.5,
        "Q4_K_M" => 4.85,
        "Q5_K_M" => 5.7,
        "Q6_K" => 6.6,
        "Q8_0" => 8.5,
        _ => 16.0,
    };
    let lower = base.to_ascii_lowercase();
    let embedding_only = ["embed", "minilm", "bge"].iter().any(|k| lower.contains(k));
    let family: String = lower
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    ModelInfo {
        name: name.to_string(),
        family: if family.is_empty() {
            "llama".to_string()
        } else {
            family
        },
        parameter_count,
        parameter_size: format_parameter_size(parameter_count),
        quantization,
        size_bytes: (parameter_count as f64 * bits_per_weight / 8.0) as u64,
        digest,
        context_length: if embedding_only { 2048 } else { 32_768 },
        embedding_length: if embedding_only { 384 } else { 4096 },
        block_count: 32,
        embedding_only,
        modified_at,
    }
}

fn parse_parameter_count(part: &str) -> Option<u64> {
    let (number, unit) = part.split_at(part.len().checked_sub(1)?);
    let scale = match unit {
        "b" => 1e9,
        "m" => 1e6,
        _ => return None,
    };
    // `8x7b` (mixture of experts) holds 8 × 7B parameters.
    let value = match number.split_once('x') {
        Some((experts, each)) => experts.parse::<f64>().ok()? * each.parse::<f64>().ok()?,
        None => number.parse::<f64>().ok()?,
    };
    (value.is_finite() && value > 0.0).then_some((value * scale) as u64)
}

fn format_parameter_size(count: u64) -> String {
    if count >= 1_000_000_000 {
        format!("{:.1}B", count as f64 / 1e9)
    } else {
        format!("{:.0}M", count as f64 / 1e6)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn info(name: &str) -> ModelInfo {
        ModelInfo::new(name, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn known_models_carry_library_figures() {
        let m = info("llama3.2:3b");
        assert_eq!(m.parameter_size, "3.2B");
        assert_eq!(m.quantization, "Q4_K_M");
        assert_eq!(m.embedding_length, 3072);
        let e = info("nomic-embed-text:latest");
        assert!(e.embedding_only);
        assert_eq!(e.name, "nomic-embed-text:latest");
        assert_eq!(e.capabilities(), vec!["embedding"]);
    }

    #[test]
    fn unknown_names_are_derived_from_their_tags() {
        let m = info("qwen3:14b-q8_0");
        assert_eq!(m.parameter_count, 14_000_000_000);
        assert_eq!(m.parameter_size, "14.0B");
        assert_eq!(m.quantization, "Q8_0");
        assert!(m.size_bytes > 14_000_000_000);
        assert_eq!(m.family, "qwen3");
        assert_eq!(info("mixtral:8x7b").parameter_count, 56_000_000_000);
        assert_eq!(info("tiny:350m").parameter_size, "350M");
        assert!(info("my-embed-model").embedding_only);
        let plain = info("whatever");
        assert_eq!(plain.parameter_count, 3_000_000_000);
        assert!(!plain.embedding_only);
    }

    #[test]
    fn digests_are_stable_sha256_shaped_and_ignore_latest() {
        let a = info("llama3.2:3b").digest;
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, info("llama3.2:3b").digest);
        assert_ne!(a, info("llama3.2:1b").digest);
        assert_eq!(info("x").digest, info("x:latest").digest);
    }

    #[test]
    fn model_info_uses_the_architecture_prefix() {
        let v = info("gemma3:1b").model_info();
        assert_eq!(v["general.architecture"], "gemma3");
        assert_eq!(v["gemma3.embedding_length"], 1152);
    }
}
