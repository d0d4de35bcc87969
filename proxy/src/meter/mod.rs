//! Token meters over relayed response bodies (pure: no I/O, no clock).
//!
//! The proxy's decode rate for a (node, model) comes from the responses it relays, not from
//! what the node says about itself (docs/design.md, Meter and Scoring power). A [`Meter`] watches
//! one response body chunk by chunk, as it passes through the relay, and reports how many
//! output tokens went by and when; what the node claims (`eval_count`/`eval_duration`,
//! llama.cpp's `timings`, OpenAI `usage`) is reported beside that, not in its place.
//!
//! Servers stream one token per chunk (Ollama's NDJSON lines, llama.cpp's and Ollama's SSE
//! events), so a chunk that carries output is a token. The meter only observes: it never holds
//! back or changes bytes. It tolerates any chunking (a boundary may fall inside a line, a UTF-8
//! sequence or a CRLF), garbage lines and truncated bodies, and its memory is bounded whatever
//! the body: a partial line is capped at 1 MiB (a longer one is skipped and counted as a parse
//! error), and a whole JSON body is scanned, not buffered. Time is passed in, never read, so
//! the same bytes at the same instants always give the same report.

mod frame;
pub(crate) mod lines;
mod ndjson;
mod sse;
mod tally;
mod whole;

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

/// The endpoint a response answers; it decides the default framing and whether output counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `/api/generate`
    OllamaGenerate,
    /// `/api/chat`
    OllamaChat,
    /// `/v1/chat/completions`
    OpenAiChat,
    /// `/v1/completions`
    OpenAiCompletion,
    /// `/v1/responses`: typed SSE events (`response.output_text.delta`, ...).
    OpenAiResponses,
    /// `/v1/messages`: Anthropic's SSE events (`content_block_delta`, ...).
    AnthropicMessages,
    /// `/api/embed`, `/api/embeddings`, `/v1/embeddings`: no output tokens, prompt counts only.
    Embedding,
}

impl Protocol {
    /// Whether the endpoint streams when the request has no `stream` field: Ollama's native
    /// API does, the OpenAI API does not.
    pub fn streams_by_default(self) -> bool {
        matches!(self, Self::OllamaGenerate | Self::OllamaChat)
    }
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// One JSON object per line (Ollama's native streaming).
    Ndjson,
    /// Server-sent events with `data: {...}` and a `data: [DONE]` terminator (OpenAI streaming).
    Sse,
    /// One JSON object (any non-streaming response, and errors sent before a stream starts).
    WholeJson,
}

/// The framing to meter a response with.
///
/// The response's Content-Type wins when it names a framing, because a server that fails before
/// streaming answers `application/json` whatever the request asked for. Otherwise the request's
/// `stream` field decides, falling back to the endpoint's default.
pub fn framing_for(
    protocol: Protocol,
    stream_requested: Option<bool>,
    content_type: Option<&str>,
) -> Framing {
    if let Some(ct) = content_type {
        let mime = ct.split(';').next().unwrap_or(ct).trim();
        let is = |m: &str| mime.eq_ignore_ascii_case(m);
        if is("text/event-stream") {
            return Framing::Sse;
        }
        if is("application/x-ndjson") || is("application/ndjson") || is("application/jsonl") {
            return Framing::Ndjson;
        }
        if is("application/json") {
            return Framing::WholeJson;
        }
    }
    if protocol == Protocol::Embedding {
        return Framing::WholeJson;
    }
    match (
        stream_requested.unwrap_or(protocol.streams_by_default()),
        protocol,
    ) {
        (false, _) => Framing::WholeJson,
        (true, Protocol::OllamaGenerate | Protocol::OllamaChat) => Framing::Ndjson,
        (true, _) => Framing::Sse,
    }
}

/// Where [`MeterReport::tokens`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokensSource {
    /// Counted by the proxy, one per token chunk relayed (per choice when a request asks for
    /// several). Zero is a measurement too: a stream that ended before its first token.
    Measured,
    /// A whole response: the proxy saw no individual tokens, so this is the node's own count.
    Claimed,
    /// Nothing to count (an embedding) or nothing claimed.
    None,
}

/// What the node says about its own work, as it said it (latest value wins).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claimed {
    /// Ollama `eval_count`: output tokens.
    pub eval_count: Option<u64>,
    /// Ollama `eval_duration`, converted from nanoseconds.
    pub eval_duration_s: Option<f64>,
    pub prompt_eval_count: Option<u64>,
    pub prompt_eval_duration_s: Option<f64>,
    /// Ollama `total_duration`, including load and prompt evaluation.
    pub total_duration_s: Option<f64>,
    /// `eval_count / eval_duration_s`: Ollama's claimed decode rate.
    pub tok_s: Option<f64>,
    pub llama_timings_predicted_per_second: Option<f64>,
    pub llama_timings_predicted_n: Option<u64>,
    pub llama_timings_predicted_ms: Option<f64>,
    pub llama_timings_prompt_n: Option<u64>,
    pub usage_completion_tokens: Option<u64>,
    pub usage_prompt_tokens: Option<u64>,
}

impl Claimed {
    /// The node's output-token count, from whichever report it gave.
    pub fn output_tokens(&self) -> Option<u64> {
        self.eval_count
            .or(self.usage_completion_tokens)
            .or(self.llama_timings_predicted_n)
    }

    pub fn prompt_tokens(&self) -> Option<u64> {
        self.prompt_eval_count
            .or(self.usage_prompt_tokens)
            .or(self.llama_timings_prompt_n)
    }

    /// The node's claimed decode rate, Ollama's or llama.cpp's.
    pub fn decode_tok_s(&self) -> Option<f64> {
        self.tok_s.or(self.llama_timings_predicted_per_second)
    }
}

/// One response, metered. Instants are durations since the `start` given to [`Meter::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct MeterReport {
    pub protocol: Protocol,
    pub framing: Framing,
    /// Body bytes seen.
    pub bytes: u64,
    /// From `start` to the instant given to [`Meter::finish`].
    pub total: Duration,
    /// Known for every framing, including whole responses where tokens are not.
    pub first_byte_at: Option<Duration>,
    pub last_byte_at: Option<Duration>,
    /// Output tokens: see `tokens_source` for whose count it is.
    pub tokens: u64,
    pub tokens_source: TokensSource,
    /// Time to first token (arrival of the chunk that completed the first token frame);
    /// measured streams only.
    pub first_token_at: Option<Duration>,
    pub last_token_at: Option<Duration>,
    /// `(tokens - 1) / (last - first)`: the decode rate between first and last token, which
    /// leaves out queueing and prompt evaluation. Needs two tokens at distinct instants.
    pub decode_tok_s: Option<f64>,
    pub claimed: Claimed,
    /// The body ended the way its protocol ends a complete response (Ollama `done: true`, a
    /// `finish_reason`, `data: [DONE]`, a complete JSON object). An error may still be set.
    pub done: bool,
    /// The first error the body carried (`{"error": ...}`, an SSE error event).
    pub error: Option<String>,
    /// Lines, events or members that were not what they should be (not JSON, over the size cap).
    pub parse_errors: u64,
}

impl MeterReport {
    /// Ended normally and without an error: the kind of response whose rate is worth keeping.
    pub fn succeeded(&self) -> bool {
        self.done && self.error.is_none()
    }
}

/// Meters one response body.
#[derive(Debug)]
pub struct Meter {
    protocol: Protocol,
    framing: Framing,
    decoder: Decoder,
    tally: tally::Tally,
}

#[derive(Debug)]
enum Decoder {
    Ndjson(ndjson::Ndjson),
    Sse(sse::Sse),
    Whole(whole::WholeJson),
}

impl Meter {
    /// `start` is when the request went to the node: first-token and first-byte times count
    /// from it.
    pub fn new(protocol: Protocol, framing: Framing, start: Instant) -> Self {
        Self::with_line_cap(protocol, framing, start, lines::LINE_CAP)
    }

    fn with_line_cap(protocol: Protocol, framing: Framing, start: Instant, cap: usize) -> Self {
        let decoder = match framing {
            Framing::Ndjson => Decoder::Ndjson(ndjson::Ndjson::new(cap)),
            Framing::Sse => Decoder::Sse(sse::Sse::new(cap)),
            Framing::WholeJson => Decoder::Whole(whole::WholeJson::new()),
        };
        Self {
            protocol,
            framing,
            decoder,
            tally: tally::Tally::new(protocol, start),
        }
    }

    /// Observes one body chunk that arrived at `at`. Bytes already seen are never looked at
    /// again; only an incomplete last line is kept.
    pub fn feed(&mut self, chunk: &[u8], at: Instant) {
        if chunk.is_empty() {
            return;
        }
        self.tally.bytes(chunk.len(), at);
        match &mut self.decoder {
            Decoder::Ndjson(d) => d.feed(chunk, at, &mut self.tally),
            Decoder::Sse(d) => d.feed(chunk, at, &mut self.tally),
            Decoder::Whole(d) => d.feed(chunk, &mut self.tally),
        }
    }

    /// Observes the chunk that ends the body (Pingora says which one does). A whole JSON body
    /// that is only this chunk is read at once rather than scanned.
    pub fn feed_final(&mut self, chunk: &[u8], at: Instant) {
        if chunk.is_empty() {
            return;
        }
        match &mut self.decoder {
            Decoder::Whole(d) => {
                self.tally.bytes(chunk.len(), at);
                d.feed_final(chunk, at, &mut self.tally);
            }
            _ => self.feed(chunk, at),
        }
    }

    /// Ends the body (normally or not) at `at` and reports. A last line or event that had no
    /// terminator still counts, as of when its last bytes arrived.
    pub fn finish(mut self, at: Instant) -> MeterReport {
        let flush_at = self.tally.last_byte().unwrap_or(at);
        match &mut self.decoder {
            Decoder::Ndjson(d) => d.finish(flush_at, &mut self.tally),
            Decoder::Sse(d) => d.finish(flush_at, &mut self.tally),
            Decoder::Whole(d) => d.finish(flush_at, &mut self.tally),
        }
        self.tally.report(self.protocol, self.framing, at)
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Output tokens counted so far (on streams; a whole response counts at `finish`).
    pub fn tokens_so_far(&self) -> u64 {
        self.tally.tokens_so_far()
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Bytes reserved for partial lines, events or kept members: bounded by the caps whatever
    /// the body.
    pub fn buffered_bytes(&self) -> usize {
        match &self.decoder {
            Decoder::Ndjson(d) => d.buffered(),
            Decoder::Sse(d) => d.buffered(),
            Decoder::Whole(d) => d.buffered(),
        }
    }
}
