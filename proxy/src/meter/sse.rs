//! Server-sent events, the OpenAI-compatible streaming framing.
//!
//! Events are `field: value` lines ended by a blank line; `data` lines accumulate (joined with
//! `\n`) and the event counts when the blank line arrives, which is also when a client sees it.

use super::frame;
use super::lines::{LineSplitter, Piece, push_bounded};
use super::tally::Tally;
use std::time::Instant;

#[derive(Debug)]
pub(crate) struct Sse {
    lines: LineSplitter,
    event: Event,
}

#[derive(Debug)]
struct Event {
    /// Reused across events, so a stream allocates it once.
    data: Vec<u8>,
    cap: usize,
    has_data: bool,
    /// `event: error` names the data as an error payload rather than a chunk.
    is_error: bool,
    /// Part of the event was dropped as too long: parsing the rest would mislead.
    poisoned: bool,
}

impl Sse {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            lines: LineSplitter::new(cap),
            event: Event {
                data: Vec::new(),
                cap,
                has_data: false,
                is_error: false,
                poisoned: false,
            },
        }
    }

    pub(crate) fn buffered(&self) -> usize {
        self.lines.capacity() + self.event.data.capacity()
    }

    pub(crate) fn feed(&mut self, chunk: &[u8], at: Instant, tally: &mut Tally) {
        let Self { lines, event } = self;
        lines.feed(chunk, |p| event.piece(p, at, tally));
    }

    /// The spec drops an event cut off by the end of the stream; a meter is better served by
    /// counting it, since some servers end the body after `data: [DONE]` without a blank line.
    pub(crate) fn finish(&mut self, at: Instant, tally: &mut Tally) {
        let Self { lines, event } = self;
        lines.finish(|p| event.piece(p, at, tally));
        event.dispatch(at, tally);
    }
}

impl Event {
    fn piece(&mut self, p: Piece<'_>, at: Instant, tally: &mut Tally) {
        match p {
            Piece::Line(line) => self.line(line, at, tally),
            Piece::Overflow => {
                tally.parse_error();
                self.poisoned = true;
            }
        }
    }

    fn line(&mut self, line: &[u8], at: Instant, tally: &mut Tally) {
        match line.first() {
            None => return self.dispatch(at, tally),
            Some(b':') => return,
            // No SSE field starts with `{`, but a server that fails before it starts streaming
            // answers with a bare JSON error body even though the client asked for a stream.
            Some(b'{') => return tally.frame(line, at),
            Some(_) => {}
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                let fits = (!self.has_data || push_bounded(&mut self.data, b"\n", self.cap))
                    && push_bounded(&mut self.data, value, self.cap);
                self.has_data = true;
                if !fits && !self.poisoned {
                    tally.parse_error();
                    self.poisoned = true;
                }
            }
            b"event" => self.is_error = value == b"error",
            // llama.cpp's server reports a failure mid-stream as an `error:` field.
            b"error" => tally.set_error(frame::error_text_from_bytes(value)),
            _ => {}
        }
    }

    fn dispatch(&mut self, at: Instant, tally: &mut Tally) {
        let (has_data, is_error, poisoned) = (self.has_data, self.is_error, self.poisoned);
        self.has_data = false;
        self.is_error = false;
        self.poisoned = false;
        if has_data && !poisoned {
            let data = self.data.trim_ascii();
            match data {
                b"" => {}
                b"[DONE]" => tally.mark_done(),
                _ if is_error => tally.set_error(frame::error_text_from_bytes(data)),
                _ => tally.frame(data, at),
            }
        }
        self.data.clear();
    }
}
