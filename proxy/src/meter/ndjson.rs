//! Ollama's native streaming framing: one JSON object per line.

use super::lines::{LineSplitter, Piece};
use super::tally::Tally;
use std::time::Instant;

#[derive(Debug)]
pub(crate) struct Ndjson {
    lines: LineSplitter,
}

impl Ndjson {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            lines: LineSplitter::new(cap),
        }
    }

    pub(crate) fn buffered(&self) -> usize {
        self.lines.capacity()
    }

    pub(crate) fn feed(&mut self, chunk: &[u8], at: Instant, tally: &mut Tally) {
        self.lines.feed(chunk, |p| piece(p, at, tally));
    }

    pub(crate) fn finish(&mut self, at: Instant, tally: &mut Tally) {
        self.lines.finish(|p| piece(p, at, tally));
    }
}

fn piece(p: Piece<'_>, at: Instant, tally: &mut Tally) {
    match p {
        Piece::Line(line) => {
            let line = line.trim_ascii();
            if !line.is_empty() {
                tally.frame(line, at);
            }
        }
        Piece::Overflow => tally.parse_error(),
    }
}
