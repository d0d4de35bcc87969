//! Deterministic stand-ins for what a model produces: filler tokens, token counts and
//! embedding vectors. Hashes are spelled out here (FNV-1a, SplitMix64) rather than taken from
//! `std` or `rand`, whose algorithms may change between releases: the same request must give
//! the same answer from every node and every build.

use std::time::SystemTime;

/// FNV-1a, 64 bit.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One SplitMix64 output for `x`: a well-mixed 64-bit value from any seed.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn combine(a: u64, b: u64) -> u64 {
    splitmix64(a ^ splitmix64(b))
}

const WORDS: &[&str] = &[
    "the",
    "node",
    "model",
    "token",
    "power",
    "watts",
    "efficient",
    "fleet",
    "edge",
    "routes",
    "request",
    "stream",
    "thermal",
    "state",
    "score",
    "fast",
    "cool",
    "inference",
    "quietly",
    "measures",
    "every",
    "second",
    "and",
    "with",
    "under",
    "load",
    "a",
    "of",
    "to",
    "is",
    "throughput",
    "energy",
    "joules",
    "per",
    "simulated",
    "answer",
    "clear",
    "sky",
    "blue",
    "light",
    "scatters",
    "short",
    "wavelengths",
    "more",
    "than",
    "long",
    "ones",
    "so",
];

/// Filler tokens: one word per token, with a sentence break now and then so that text reads
/// as text in a demo. The sequence depends only on `seed`.
pub struct Filler {
    state: u64,
    index: u64,
}

impl Filler {
    pub fn new(seed: u64) -> Filler {
        Filler {
            state: splitmix64(seed),
            index: 0,
        }
    }
}

impl Iterator for Filler {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        self.state = splitmix64(self.state);
        let word = WORDS[(self.state % WORDS.len() as u64) as usize];
        let starts_sentence = self.index.is_multiple_of(12);
        let ends_sentence = self.index % 12 == 11;
        self.index += 1;
        let mut token = String::with_capacity(word.len() + 2);
        if self.index > 1 {
            token.push(' ');
        }
        if starts_sentence {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                token.extend(first.to_uppercase());
                token.push_str(chars.as_str());
            }
        } else {
            token.push_str(word);
        }
        if ends_sentence {
            token.push('.');
        }
        Some(token)
    }
}

/// A tokenizer's count for `text`, near enough: BPE vocabularies of current models average
/// about four characters of English per token.
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// A unit-length vector for `text` under `model`: equal texts embed equally, different texts
/// differently, on every node (no seed: two nodes holding one model must agree).
pub fn embedding(model: &str, text: &str, dims: usize) -> Vec<f32> {
    let mut state = combine(stable_hash(model.as_bytes()), stable_hash(text.as_bytes()));
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            state = splitmix64(state);
            // Uniform in [-1, 1): the top 24 bits make an exact f32 mantissa.
            ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    normalize(&mut v);
    v
}

pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// RFC 3339 in UTC with microseconds, as Ollama's timestamps are and as Python's clients parse.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn filler_is_deterministic_and_reads_as_text() {
        let a: Vec<String> = Filler::new(7).take(30).collect();
        let b: Vec<String> = Filler::new(7).take(30).collect();
        let c: Vec<String> = Filler::new(8).take(30).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(!a[0].starts_with(' '));
        assert!(a[1..].iter().all(|t| t.starts_with(' ') && t.len() > 1));
        assert!(a[0].chars().next().unwrap().is_uppercase());
        assert!(a[11].ends_with('.'));
    }

    #[test]
    fn embeddings_are_unit_deterministic_and_distinct() {
        let a = embedding("m", "hello", 384);
        assert_eq!(a.len(), 384);
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        assert_eq!(a, embedding("m", "hello", 384));
        assert_ne!(a, embedding("m", "hello!", 384));
        assert_ne!(a, embedding("n", "hello", 384));
    }

    #[test]
    fn token_estimate_rounds_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcdefghi"), 3);
    }

    #[test]
    fn hashes_are_pinned() {
        // Pinned so that a change of algorithm, which would change every digest and text,
        // is a visible decision.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn timestamps_parse_as_rfc3339() {
        let s = rfc3339(SystemTime::UNIX_EPOCH);
        assert_eq!(s, "1970-01-01T00:00:00.000000Z");
    }
}
