//! A whole (non-streaming) JSON body, scanned as it passes rather than buffered.
//!
//! Such a body can be many MiB (an embedding batch, Ollama's `context` array, a long answer),
//! while the meter needs only a few top-level members: the counts and `error`. So this tracks
//! just enough JSON structure to find top-level members, copies the wanted ones into a small
//! object, and parses that once at the end. Memory stays at [`KEPT_CAP`] whatever the body size.
//!
//! Most such bodies arrive in one chunk, and that chunk is known to end the body: it is read in
//! one pass of the strict reader instead (`read_whole`), with the same result. Where that
//! reader refuses the body, the scan runs after all, so that a body it cannot read (cut off,
//! malformed in a member that is not kept) meters exactly as before.

use super::frame::Frame;
use super::lines::push_bounded;
use super::tally::Tally;
use std::borrow::Cow;
use std::time::Instant;

/// Top-level members worth keeping; everything else is skipped unread.
const KEPT: [&[u8]; 8] = [
    b"eval_count",
    b"eval_duration",
    b"prompt_eval_count",
    b"prompt_eval_duration",
    b"total_duration",
    b"usage",
    b"timings",
    b"error",
];

/// Longer than any kept key; a longer key cannot be one.
const KEY_MAX: usize = 24;

/// Room for the kept members. Real ones are well under 1 KiB; an error message is the largest.
pub(crate) const KEPT_CAP: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the opening `{`.
    Start,
    /// Where a member's key (or the closing `}`) is due.
    Key,
    InKey,
    Colon,
    /// Where a member's value is due.
    Value,
    /// Inside a string value.
    Text,
    /// Inside a number, `true`, `false` or `null`.
    Scalar,
    /// Inside an object or array value.
    Nested,
    AfterValue,
    /// After the closing `}`.
    End,
    /// Not the JSON object expected; the rest is ignored.
    Broken,
}

#[derive(Debug)]
pub(crate) struct WholeJson {
    state: State,
    escape: bool,
    /// Inside a string somewhere within a `Nested` value.
    in_string: bool,
    depth: u32,
    key: [u8; KEY_MAX],
    key_len: usize,
    /// The key had no escapes and fit in `key`, so it may be one of `KEPT`.
    key_plain: bool,
    /// One bit per `KEPT` key already kept: serde rejects duplicate fields, and a server that
    /// repeats a member means the same thing by both.
    seen: u8,
    keeping: bool,
    /// `{"key":value,"key":value` so far; closed with `}` at the end.
    kept: Vec<u8>,
    /// Length of `kept` after the last complete member; a cut-off member is rolled back to it.
    committed: usize,
    closed: bool,
    /// Some bytes were scanned: a final chunk is no longer the whole body.
    fed: bool,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl WholeJson {
    pub(crate) fn new() -> Self {
        Self {
            state: State::Start,
            escape: false,
            in_string: false,
            depth: 0,
            key: [0; KEY_MAX],
            key_len: 0,
            key_plain: false,
            seen: 0,
            keeping: false,
            kept: Vec::new(),
            committed: 0,
            closed: false,
            fed: false,
        }
    }

    pub(crate) fn buffered(&self) -> usize {
        self.kept.capacity()
    }

    /// The chunk that ends the body, arrived at `at`. When it is the whole body, it is read at
    /// once; the kept members count as the scan would have found them.
    pub(crate) fn feed_final(&mut self, chunk: &[u8], at: Instant, tally: &mut Tally) {
        // Within the cap, no kept member can overflow it (they are a part of the body), so
        // the scan would drop none.
        if !self.fed
            && chunk.len() <= KEPT_CAP
            && let Some(frame) = read_whole(chunk)
        {
            tally.apply(&frame, at);
            self.fed = true;
            self.close();
            return;
        }
        self.feed(chunk, tally);
    }

    pub(crate) fn feed(&mut self, chunk: &[u8], tally: &mut Tally) {
        self.fed = true;
        let mut i = 0;
        while i < chunk.len() {
            // Most bytes (a key's, a string's, a number's, a skipped value's) move no state:
            // they are taken as one run, and only the byte that ends the run is stepped.
            let run = self.inert_run(&chunk[i..]);
            if run > 0 {
                self.absorb(&chunk[i..i + run], tally);
                i += run;
                continue;
            }
            if self.step(chunk[i], tally) {
                i += 1;
            }
        }
    }

    /// How many bytes at the start of `rest` leave the state as it is.
    fn inert_run(&self, rest: &[u8]) -> usize {
        let until = |found: Option<usize>| found.unwrap_or(rest.len());
        // Keys and values here are short: a plain loop beats a vectorised search's setup.
        let in_string = || {
            rest.iter()
                .take_while(|&&c| c != b'"' && c != b'\\')
                .count()
        };
        match self.state {
            State::Broken => rest.len(),
            // The byte after a backslash is stepped alone.
            _ if self.escape => 0,
            State::InKey | State::Text => in_string(),
            State::Nested if self.in_string => in_string(),
            State::Nested => until(
                rest.iter()
                    .position(|b| matches!(b, b'"' | b'{' | b'}' | b'[' | b']')),
            ),
            State::Scalar => until(
                rest.iter()
                    .position(|&b| is_ws(b) || b == b',' || b == b'}'),
            ),
            _ => 0,
        }
    }

    /// Takes a run of bytes that move no state: a key's are noted, a kept value's copied.
    fn absorb(&mut self, run: &[u8], tally: &mut Tally) {
        match self.state {
            State::Broken => {}
            State::InKey => {
                let room = KEY_MAX - self.key_len;
                let taken = run.len().min(room);
                self.key[self.key_len..self.key_len + taken].copy_from_slice(&run[..taken]);
                self.key_len += taken;
                if run.len() > room {
                    self.key_plain = false;
                }
            }
            _ => {
                if self.keeping && !push_bounded(&mut self.kept, run, KEPT_CAP) {
                    self.drop_member(tally);
                }
            }
        }
    }

    /// Applies the kept members; `done` means the body was one complete JSON object.
    pub(crate) fn finish(&mut self, at: Instant, tally: &mut Tally) {
        if self.committed > 0 {
            self.kept.truncate(self.committed);
            self.kept.push(b'}');
            tally.frame(&self.kept, at);
            self.kept.truncate(self.committed);
        }
        if self.closed {
            tally.mark_done();
        }
    }

    /// Handles one byte; `false` means it ended a scalar and must be seen again by the state
    /// that follows.
    fn step(&mut self, b: u8, tally: &mut Tally) -> bool {
        match self.state {
            State::Start => match b {
                b'{' => self.state = State::Key,
                _ if is_ws(b) => {}
                _ => self.broken(tally),
            },
            State::Key => match b {
                b'"' => {
                    self.key_len = 0;
                    self.key_plain = true;
                    self.escape = false;
                    self.state = State::InKey;
                }
                b'}' => self.close(),
                _ if is_ws(b) => {}
                _ => self.broken(tally),
            },
            State::InKey => {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                    self.key_plain = false;
                } else if b == b'"' {
                    self.state = State::Colon;
                } else if self.key_len < KEY_MAX {
                    self.key[self.key_len] = b;
                    self.key_len += 1;
                } else {
                    self.key_plain = false;
                }
            }
            State::Colon => match b {
                b':' => self.state = State::Value,
                _ if is_ws(b) => {}
                _ => self.broken(tally),
            },
            State::Value => {
                if is_ws(b) {
                    return true;
                }
                self.begin_value(tally);
                self.escape = false;
                self.state = match b {
                    b'"' => State::Text,
                    b'{' | b'[' => {
                        self.depth = 1;
                        self.in_string = false;
                        State::Nested
                    }
                    _ => State::Scalar,
                };
                self.keep(b, tally);
            }
            State::Text => {
                self.keep(b, tally);
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.end_value();
                }
            }
            State::Scalar => {
                if is_ws(b) || b == b',' || b == b'}' {
                    self.end_value();
                    return false;
                }
                self.keep(b, tally);
            }
            State::Nested => {
                self.keep(b, tally);
                if self.in_string {
                    if self.escape {
                        self.escape = false;
                    } else if b == b'\\' {
                        self.escape = true;
                    } else if b == b'"' {
                        self.in_string = false;
                    }
                } else {
                    match b {
                        b'"' => self.in_string = true,
                        b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                        b'}' | b']' => {
                            self.depth = self.depth.saturating_sub(1);
                            if self.depth == 0 {
                                self.end_value();
                            }
                        }
                        _ => {}
                    }
                }
            }
            State::AfterValue => match b {
                b',' => self.state = State::Key,
                b'}' => self.close(),
                _ if is_ws(b) => {}
                _ => self.broken(tally),
            },
            State::End => {
                if !is_ws(b) {
                    // The object was complete; what follows it is counted, not trusted.
                    tally.parse_error();
                    self.state = State::Broken;
                }
            }
            State::Broken => {}
        }
        true
    }

    fn begin_value(&mut self, tally: &mut Tally) {
        let key = &self.key[..self.key_len];
        let Some(i) = KEPT
            .iter()
            .position(|k| *k == key)
            .filter(|_| self.key_plain)
        else {
            return;
        };
        let bit = 1u8 << i;
        if self.seen & bit != 0 {
            return;
        }
        self.seen |= bit;
        let opening: &[u8] = if self.kept.is_empty() { b"{\"" } else { b",\"" };
        if push_bounded(&mut self.kept, opening, KEPT_CAP)
            && push_bounded(&mut self.kept, KEPT[i], KEPT_CAP)
            && push_bounded(&mut self.kept, b"\":", KEPT_CAP)
        {
            self.keeping = true;
        } else {
            self.drop_member(tally);
        }
    }

    fn keep(&mut self, b: u8, tally: &mut Tally) {
        if self.keeping && !push_bounded(&mut self.kept, &[b], KEPT_CAP) {
            self.drop_member(tally);
        }
    }

    fn drop_member(&mut self, tally: &mut Tally) {
        self.kept.truncate(self.committed);
        self.keeping = false;
        tally.parse_error();
    }

    fn end_value(&mut self) {
        if self.keeping {
            self.committed = self.kept.len();
            self.keeping = false;
        }
        self.state = State::AfterValue;
    }

    fn close(&mut self) {
        self.closed = true;
        self.state = State::End;
    }

    fn broken(&mut self, tally: &mut Tally) {
        self.kept.truncate(self.committed);
        self.keeping = false;
        self.state = State::Broken;
        tally.parse_error();
    }
}

/// A whole body in one pass: the first of each kept member, as the scan keeps them (a key with
/// escapes is not one); `None` when the strict reader refuses the body.
fn read_whole(body: &[u8]) -> Option<Frame> {
    let mut seen = 0u8;
    Frame::read_picked(body, |key| {
        let Cow::Borrowed(key) = key else {
            return false;
        };
        let Some(i) = KEPT.iter().position(|k| k == key) else {
            return false;
        };
        let first = seen & (1 << i) == 0;
        seen |= 1 << i;
        first
    })
}
