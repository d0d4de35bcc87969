//! Folds decoded frames into the running totals a report is built from.

use super::frame::{self, Frame, Num};
use super::{Claimed, Framing, MeterReport, Protocol, TokensSource};
use std::time::Instant;

#[derive(Debug)]
pub(crate) struct Tally {
    start: Instant,
    /// Embeddings generate nothing; their frames only carry prompt counts.
    counts_output: bool,
    bytes: u64,
    first_byte: Option<Instant>,
    last_byte: Option<Instant>,
    tokens: u64,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    done: bool,
    error: Option<String>,
    parse_errors: u64,
    claimed: Claimed,
}

impl Tally {
    pub fn tokens_so_far(&self) -> u64 {
        self.tokens
    }

    pub(crate) fn new(protocol: Protocol, start: Instant) -> Self {
        Self {
            start,
            counts_output: protocol != Protocol::Embedding,
            bytes: 0,
            first_byte: None,
            last_byte: None,
            tokens: 0,
            first_token: None,
            last_token: None,
            done: false,
            error: None,
            parse_errors: 0,
            claimed: Claimed::default(),
        }
    }

    pub(crate) fn bytes(&mut self, n: usize, at: Instant) {
        self.bytes = self.bytes.saturating_add(n as u64);
        self.first_byte.get_or_insert(at);
        self.last_byte = Some(at);
    }

    /// When the last bytes arrived: a line or event completed only by the end of the body
    /// was whole as of then, not as of whenever the caller gets round to `finish`.
    pub(crate) fn last_byte(&self) -> Option<Instant> {
        self.last_byte
    }

    /// Parses one frame; a frame that is not a JSON object is a parse error and nothing else.
    pub(crate) fn frame(&mut self, bytes: &[u8], at: Instant) {
        match Frame::read(bytes) {
            Some(f) => self.apply(&f, at),
            None => self.parse_error(),
        }
    }

    pub(crate) fn apply(&mut self, f: &Frame, at: Instant) {
        let chunks = f.output_chunks();
        if self.counts_output && chunks > 0 {
            self.tokens = self.tokens.saturating_add(chunks);
            self.first_token.get_or_insert(at);
            self.last_token = Some(at);
        }
        if f.finished() {
            self.done = true;
        }
        if let Some(e) = &f.error {
            self.set_error(frame::error_text(e));
        }
        // Later frames carry running or final totals, so the latest value wins.
        let c = &mut self.claimed;
        set(&mut c.eval_count, count(f.eval_count));
        set(&mut c.eval_duration_s, scaled(f.eval_duration, 1e-9));
        set(&mut c.prompt_eval_count, count(f.prompt_eval_count));
        set(
            &mut c.prompt_eval_duration_s,
            scaled(f.prompt_eval_duration, 1e-9),
        );
        set(&mut c.total_duration_s, scaled(f.total_duration, 1e-9));
        for u in f.usages() {
            set(&mut c.usage_completion_tokens, count(u.output()));
            set(&mut c.usage_prompt_tokens, count(u.prompt()));
        }
        if let Some(t) = &f.timings {
            set(&mut c.llama_timings_predicted_n, count(t.predicted_n));
            set(
                &mut c.llama_timings_predicted_ms,
                scaled(t.predicted_ms, 1.0),
            );
            set(
                &mut c.llama_timings_predicted_per_second,
                scaled(t.predicted_per_second, 1.0),
            );
            set(&mut c.llama_timings_prompt_n, count(t.prompt_n));
        }
    }

    pub(crate) fn parse_error(&mut self) {
        self.parse_errors = self.parse_errors.saturating_add(1);
    }

    pub(crate) fn mark_done(&mut self) {
        self.done = true;
    }

    /// Keeps the first error: later ones are usually consequences of it.
    pub(crate) fn set_error(&mut self, text: Option<String>) {
        if self.error.is_none() {
            self.error = text;
        }
    }

    pub(crate) fn report(self, protocol: Protocol, framing: Framing, at: Instant) -> MeterReport {
        let since = |t: Instant| t.saturating_duration_since(self.start);
        let mut claimed = self.claimed;
        claimed.tok_s = match (claimed.eval_count, claimed.eval_duration_s) {
            (Some(n), Some(s)) if n > 0 && s > 0.0 => Some(n as f64 / s),
            _ => None,
        };
        let (tokens, tokens_source) = if !self.counts_output {
            (0, TokensSource::None)
        } else if framing == Framing::WholeJson {
            match claimed.output_tokens() {
                Some(n) => (n, TokensSource::Claimed),
                None => (0, TokensSource::None),
            }
        } else {
            (self.tokens, TokensSource::Measured)
        };
        let measured = tokens_source == TokensSource::Measured;
        let first_token_at = self.first_token.filter(|_| measured).map(since);
        let last_token_at = self.last_token.filter(|_| measured).map(since);
        let decode_tok_s = match (first_token_at, last_token_at) {
            (Some(first), Some(last)) if tokens >= 2 && last > first => {
                Some((tokens - 1) as f64 / (last - first).as_secs_f64())
            }
            _ => None,
        };
        MeterReport {
            protocol,
            framing,
            bytes: self.bytes,
            total: since(at),
            first_byte_at: self.first_byte.map(since),
            last_byte_at: self.last_byte.map(since),
            tokens,
            tokens_source,
            first_token_at,
            last_token_at,
            decode_tok_s,
            claimed,
            done: self.done,
            error: self.error,
            parse_errors: self.parse_errors,
        }
    }
}

fn set<T>(slot: &mut Option<T>, v: Option<T>) {
    if v.is_some() {
        *slot = v;
    }
}

/// A count must be a non-negative number that `f64` holds exactly.
fn count(n: Num) -> Option<u64> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    n.0.filter(|v| v.is_finite() && *v >= 0.0 && *v <= EXACT)
        .map(|v| v as u64)
}

/// A non-negative finite quantity times `scale` (nanoseconds to seconds, or 1 to keep it).
fn scaled(n: Num, scale: f64) -> Option<f64> {
    n.0.filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v * scale)
}
