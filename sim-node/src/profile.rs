//! Hardware profiles are data (`config/profiles/*.toml`), compiled into the binary so that
//! `--profile apple-m2` works from any directory, while a path loads an operator's own file.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::{PowerParams, ThermalParams};

/// The built-in profiles, by the name `--profile` accepts.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "apple-m2",
        include_str!("../../config/profiles/apple-m2.toml"),
    ),
    (
        "rtx-4090",
        include_str!("../../config/profiles/rtx-4090.toml"),
    ),
    ("h100", include_str!("../../config/profiles/h100.toml")),
    (
        "ryzen-cpu",
        include_str!("../../config/profiles/ryzen-cpu.toml"),
    ),
    (
        "fanless-edge",
        include_str!("../../config/profiles/fanless-edge.toml"),
    ),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Served when `--models` is not given.
    #[serde(default = "default_models")]
    pub default_models: Vec<String>,
    /// Requests decoded at once (Ollama's `OLLAMA_NUM_PARALLEL`); more wait in the queue.
    #[serde(default = "default_max_parallel")]
    pub max_parallel: u32,
    /// Waiting requests beyond this get 503, as Ollama's `OLLAMA_MAX_QUEUE`.
    #[serde(default = "default_max_queue")]
    pub max_queue: u32,
    /// How fast a cold model loads from disk into (V)RAM; 0 loads instantly.
    #[serde(default)]
    pub load_gb_per_s: f64,
    /// The memory models load into, in GB (10^9 bytes); 0: unlimited. A model that does not
    /// fit beside the loaded ones evicts idle ones, soonest to expire first, as Ollama does.
    #[serde(default)]
    pub memory_gb: f64,
    /// Weights in system RAM rather than an accelerator's memory (`size_vram` 0 in `/api/ps`).
    #[serde(default)]
    pub cpu_only: bool,
    pub power: PowerParams,
    pub speed: SpeedParams,
    pub thermal: ThermalParams,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeedParams {
    /// The model the two rates below were measured with (bytes of weights on disk).
    pub reference_model_bytes: u64,
    /// Single-stream decode rate of the reference model, unthrottled.
    pub decode_tok_s: f64,
    /// Prompt processing (prefill) rate of the reference model.
    pub prompt_tok_s: f64,
    /// Small models stop scaling with size where per-token overheads (kernel launches,
    /// sampling) dominate: no model decodes or prefills faster than these.
    pub max_decode_tok_s: f64,
    pub max_prompt_tok_s: f64,
    /// Aggregate throughput of `n` concurrent requests is `single × n^exponent`:
    /// near 1 for a batching GPU, small for a CPU that is already saturated.
    pub concurrency_exponent: f64,
    /// Measured rates for particular models, taking precedence over scaling by size.
    #[serde(default)]
    pub models: BTreeMap<String, ModelSpeed>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpeed {
    pub decode_tok_s: Option<f64>,
    pub prompt_tok_s: Option<f64>,
}

fn default_models() -> Vec<String> {
    vec![
        "llama3.2:3b".to_string(),
        "smollm2:135m".to_string(),
        "nomic-embed-text".to_string(),
    ]
}

fn default_max_parallel() -> u32 {
    4
}

fn default_max_queue() -> u32 {
    512
}

impl Profile {
    /// A built-in name, or else a path to a TOML file.
    pub fn load(spec: &str) -> Result<Profile, String> {
        if let Some((_, text)) = BUILTIN.iter().find(|(name, _)| *name == spec) {
            return Profile::parse(text, &format!("built-in profile {spec}"));
        }
        let path = Path::new(spec);
        if !path.exists() {
            return Err(format!(
                "no profile \"{spec}\": not a built-in ({}) and no such file",
                builtin_names().join(", ")
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read profile {}: {e}", path.display()))?;
        Profile::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Profile, String> {
        let profile: Profile = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        profile.validate().map_err(|e| format!("{origin}: {e}"))?;
        Ok(profile)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name must not be empty".to_string());
        }
        if self.max_parallel == 0 {
            return Err("max_parallel must be >= 1".to_string());
        }
        if !(self.memory_gb.is_finite() && self.memory_gb >= 0.0) {
            return Err(format!("memory_gb {} must be a number ≥ 0", self.memory_gb));
        }
        if !(self.load_gb_per_s.is_finite() && self.load_gb_per_s >= 0.0) {
            return Err(format!(
                "load_gb_per_s must be >= 0, got {}",
                self.load_gb_per_s
            ));
        }
        self.power.validate()?;
        self.thermal.validate()?;
        self.speed.validate()
    }

    /// Unthrottled single-stream decode rate for a model of `size_bytes`.
    pub fn decode_tok_s(&self, model: &str, size_bytes: u64) -> f64 {
        let s = &self.speed;
        s.override_for(model)
            .and_then(|m| m.decode_tok_s)
            .unwrap_or_else(|| {
                // Decode streams every weight once per token: memory-bandwidth bound, so the
                // rate goes inversely with the bytes of weights.
                scale(s.decode_tok_s, s.reference_model_bytes, size_bytes).min(s.max_decode_tok_s)
            })
    }

    /// Unthrottled prefill rate for a model of `size_bytes`.
    pub fn prompt_tok_s(&self, model: &str, size_bytes: u64) -> f64 {
        let s = &self.speed;
        s.override_for(model)
            .and_then(|m| m.prompt_tok_s)
            .unwrap_or_else(|| {
                // Prefill is compute-bound, roughly proportional to parameters; bytes stand in
                // for parameters within one quantization family.
                scale(s.prompt_tok_s, s.reference_model_bytes, size_bytes).min(s.max_prompt_tok_s)
            })
    }
}

impl SpeedParams {
    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("speed.decode_tok_s", self.decode_tok_s),
            ("speed.prompt_tok_s", self.prompt_tok_s),
            ("speed.max_decode_tok_s", self.max_decode_tok_s),
            ("speed.max_prompt_tok_s", self.max_prompt_tok_s),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be > 0, got {v}"));
            }
        }
        if self.reference_model_bytes == 0 {
            return Err("speed.reference_model_bytes must be > 0".to_string());
        }
        if !(self.concurrency_exponent > 0.0 && self.concurrency_exponent <= 1.0) {
            return Err(format!(
                "speed.concurrency_exponent must be in (0, 1], got {}",
                self.concurrency_exponent
            ));
        }
        for (name, m) in &self.models {
            for v in [m.decode_tok_s, m.prompt_tok_s].into_iter().flatten() {
                if !(v.is_finite() && v > 0.0) {
                    return Err(format!(
                        "speed.models.\"{name}\": rates must be > 0, got {v}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// `llama3.2` and `llama3.2:latest` are one model to Ollama, so to the overrides too.
    fn override_for(&self, model: &str) -> Option<&ModelSpeed> {
        let bare = model.strip_suffix(":latest").unwrap_or(model);
        self.models
            .get(model)
            .or_else(|| self.models.get(bare))
            .or_else(|| self.models.get(&format!("{bare}:latest")))
    }
}

fn scale(rate: f64, reference_bytes: u64, size_bytes: u64) -> f64 {
    rate * reference_bytes as f64 / size_bytes.max(1) as f64
}

pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(name, _)| *name).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{NodeModel, ThermalState};

    const LLAMA32_3B: u64 = 2_019_393_189;

    #[test]
    fn every_builtin_parses_validates_and_is_named_as_listed() {
        for (name, _) in BUILTIN {
            let p = Profile::load(name).unwrap();
            assert_eq!(p.name, *name);
            assert!(!p.description.is_empty(), "{name} says what it models");
        }
    }

    #[test]
    fn builtins_rank_as_the_hardware_does() {
        let wes = |name: &str| {
            let p = Profile::load(name).unwrap();
            let m = NodeModel::new(
                p.power.clone(),
                p.thermal.clone(),
                p.speed.concurrency_exponent,
                1.0,
            );
            let tok_s = p.decode_tok_s("llama3.2:3b", LLAMA32_3B);
            (tok_s, tok_s / m.watts_at(1, ThermalState::Normal))
        };
        let (m2, m2_wes) = wes("apple-m2");
        let (gpu, gpu_wes) = wes("rtx-4090");
        let (h100, _) = wes("h100");
        let (cpu, cpu_wes) = wes("ryzen-cpu");
        let (edge, edge_wes) = wes("fanless-edge");
        assert!((m2 - 108.9).abs() < 1e-9, "the seed's M2 figure");
        assert!(h100 > gpu && gpu > m2 && m2 > cpu && cpu > edge);
        assert!(m2_wes > gpu_wes && m2_wes > edge_wes && edge_wes > cpu_wes);
        assert!(
            gpu_wes > cpu_wes * 3.0,
            "the CPU box is fast-ish but inefficient"
        );
    }

    #[test]
    fn rates_scale_with_model_size_and_are_capped() {
        let p = Profile::load("rtx-4090").unwrap();
        let big = p.decode_tok_s("llama3.1:8b", 4_920_753_328);
        let small = p.decode_tok_s("llama3.2:3b", LLAMA32_3B);
        let tiny = p.decode_tok_s("smollm2:135m", 270_898_672);
        assert!(big < small && small < tiny);
        assert!(tiny <= p.speed.max_decode_tok_s);
        assert!(p.prompt_tok_s("llama3.2:3b", LLAMA32_3B) > small);
    }

    #[test]
    fn overrides_match_with_or_without_latest() {
        let mut p = Profile::load("h100").unwrap();
        p.speed.models.insert(
            "custom".to_string(),
            ModelSpeed {
                decode_tok_s: Some(42.0),
                prompt_tok_s: None,
            },
        );
        assert_eq!(p.decode_tok_s("custom:latest", 1), 42.0);
        assert_eq!(p.decode_tok_s("custom", 1), 42.0);
        assert_eq!(p.prompt_tok_s("custom", 1), p.speed.max_prompt_tok_s);
    }

    #[test]
    fn a_path_loads_a_custom_profile_and_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        let text = BUILTIN[0]
            .1
            .replace("name = \"apple-m2\"", "name = \"mine\"");
        std::fs::write(&path, text).unwrap();
        assert_eq!(Profile::load(path.to_str().unwrap()).unwrap().name, "mine");

        let err = Profile::load("no-such-profile").unwrap_err();
        assert!(err.contains("apple-m2"), "{err}");

        std::fs::write(&path, "name = \"x\"\nbogus = 1\n").unwrap();
        let err = Profile::load(path.to_str().unwrap()).unwrap_err();
        assert!(err.contains("mine.toml"), "{err}");

        let bad = BUILTIN[0].1.replace("fair_c = 80.0", "fair_c = 200.0");
        let err = Profile::parse(&bad, "bad").unwrap_err();
        assert!(err.contains("thresholds"), "{err}");
    }
}
