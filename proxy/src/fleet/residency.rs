//! Which models a node has loaded, and what loading one costs (docs/design.md, "Residency").
//! Ollama loads a model on its first request (seconds, and the power drawn meanwhile) and
//! unloads it after `keep_alive` or to make room. The reporter says what is loaded; between
//! samples, a request this proxy sent for a cold model counts as loading it. Load times are
//! learned per (node, model) from the requests that found the model cold. Pure: time is passed
//! in.

use std::time::{Duration, Instant};

use super::telemetry::{LoadedModel, Residency};

/// What a load is assumed to take until one has been measured on the node: a few GB read
/// from disk and set up, as Ollama takes for the common 2–8 GB models.
pub const COLD_LOAD_PRIOR: Duration = Duration::from_secs(5);
/// Output tokens of a request until the node has relayed some for the model: what a load's
/// energy is shared over.
pub const TOKENS_PER_REQUEST_PRIOR: f64 = 256.0;
/// Weight of the newest measurement in the load-time and tokens-per-request averages.
const ALPHA: f64 = 0.3;

pub fn smooth(old: Option<f64>, new: f64) -> f64 {
    match old {
        None => new,
        Some(old) => old + ALPHA * (new - old),
    }
}

/// A decode rate for a model of `bytes` from the rates measured on the same node for other
/// models `(tok_s, bytes)`: decoding reads every weight once per token, so the rate goes
/// inversely with the model's bytes. Scaled from the measured model nearest in size, so that
/// the guess spans as little as it can.
pub fn rate_by_size(bytes: u64, measured: &[(f64, u64)]) -> Option<f64> {
    if bytes == 0 {
        return None;
    }
    let distance = |b: u64| (b as f64 / bytes as f64).ln().abs();
    measured
        .iter()
        .filter(|(tok_s, b)| *b > 0 && tok_s.is_finite() && *tok_s > 0.0)
        .min_by(|(_, a), (_, b)| distance(*a).total_cmp(&distance(*b)))
        .map(|(tok_s, b)| tok_s * *b as f64 / bytes as f64)
}

/// Whether `model` is loaded on the node: `None` when the node does not say. A request this
/// proxy sent for it after the newest sample arrived (`warmed_at`) has started its load, so
/// the model counts as loaded from then on until a newer sample says otherwise.
pub fn resident(
    residency: Option<&Residency>,
    sample_received_at: Instant,
    warmed_at: Option<Instant>,
    model: &str,
) -> Option<bool> {
    let residency = residency?;
    Some(residency.holds(model) || warmed_at.is_some_and(|w| w > sample_received_at))
}

/// The loaded models that loading `model` (of `bytes`) evicts, when the node's memory is known
/// and the model does not fit beside them: the ones due to expire soonest first (those loaded
/// for good last), until it fits.
pub fn evictions<'a>(residency: &'a Residency, model: &str, bytes: u64) -> Vec<&'a LoadedModel> {
    let Some(memory) = residency.memory_bytes else {
        return Vec::new();
    };
    let mut used: u64 = residency
        .loaded
        .iter()
        .filter(|m| m.name != model)
        .map(|m| m.size_bytes)
        .sum();
    let mut by_expiry: Vec<&LoadedModel> = residency
        .loaded
        .iter()
        .filter(|m| m.name != model)
        .collect();
    by_expiry.sort_by_key(|m| m.expires_unix_ms.unwrap_or(i64::MAX));
    let mut out = Vec::new();
    for m in by_expiry {
        if used.saturating_add(bytes) <= memory {
            break;
        }
        used -= m.size_bytes;
        out.push(m);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn loaded(name: &str, gb: u64, expires: Option<i64>) -> LoadedModel {
        LoadedModel {
            name: name.into(),
            size_bytes: gb << 30,
            size_vram_bytes: gb << 30,
            expires_unix_ms: expires,
        }
    }

    #[test]
    fn cold_warm_unknown_and_warming_by_our_own_request() {
        let t0 = Instant::now();
        let r = Residency {
            loaded: vec![loaded("a", 4, None)],
            ..Residency::default()
        };
        assert_eq!(resident(Some(&r), t0, None, "a"), Some(true));
        assert_eq!(resident(Some(&r), t0, None, "b"), Some(false));
        assert_eq!(resident(None, t0, None, "b"), None);
        // We sent a request for b after the sample: it is loading.
        let later = t0 + Duration::from_millis(10);
        assert_eq!(resident(Some(&r), t0, Some(later), "b"), Some(true));
        // A newer sample without b (it was evicted since) wins over our old request.
        assert_eq!(
            resident(Some(&r), later + Duration::from_secs(1), Some(later), "b"),
            Some(false)
        );
    }

    #[test]
    fn a_model_that_does_not_fit_evicts_the_soonest_to_expire() {
        let r = Residency {
            loaded: vec![
                loaded("forever", 8, None),
                loaded("late", 4, Some(2_000)),
                loaded("soon", 4, Some(1_000)),
            ],
            memory_bytes: Some(20 << 30),
            ..Residency::default()
        };
        // 16 GB used: a 4 GB model fits, a 6 GB one evicts "soon", a 10 GB one both timed ones.
        assert!(evictions(&r, "new", 4 << 30).is_empty());
        let names = |v: Vec<&LoadedModel>| v.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(evictions(&r, "new", 6 << 30)), ["soon"]);
        assert_eq!(names(evictions(&r, "new", 10 << 30)), ["soon", "late"]);
        // Without the node's memory nothing is predicted.
        let unknown = Residency {
            memory_bytes: None,
            ..r.clone()
        };
        assert!(evictions(&unknown, "new", 100 << 30).is_empty());
    }

    #[test]
    fn an_unmeasured_model_is_estimated_from_the_nearest_measured_size() {
        // 100 tok/s on a 2 GB model, 20 on an 8 GB one: a 4 GB model scales from... the 2 GB
        // one and the 8 GB one are as near; a 5 GB one from the 8 GB: 32 tok/s.
        let measured = [(100.0, 2 << 30), (20.0, 8 << 30)];
        assert!((rate_by_size(5 << 30, &measured).unwrap() - 32.0).abs() < 1e-9);
        assert!((rate_by_size(1 << 30, &measured).unwrap() - 200.0).abs() < 1e-9);
        assert_eq!(rate_by_size(1 << 30, &[]), None);
        assert_eq!(rate_by_size(0, &measured), None);
    }

    #[test]
    fn averages_start_at_the_first_value() {
        assert_eq!(smooth(None, 4.0), 4.0);
        assert!((smooth(Some(4.0), 8.0) - 5.2).abs() < 1e-12);
    }
}
