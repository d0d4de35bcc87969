//! Reassembles lines from body chunks that may split them anywhere.
//!
//! Both streaming framings (NDJSON and SSE) are line-based, and a relayed chunk boundary can
//! fall inside a line, inside a multi-byte UTF-8 sequence or between the `\r` and `\n` of a
//! CRLF. Working on bytes and handing out only complete lines makes all of those the same case.

/// Longest line the meter buffers. A longer one is skipped up to its terminator and counted as
/// one parse error: token frames are a few hundred bytes, so a line this long is not one, and
/// buffering it would let one response grow the proxy's memory without bound.
pub(crate) const LINE_CAP: usize = 1 << 20;

/// What the splitter hands out, in the order it occurs in the stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// A complete line without its terminator.
    Line(&'a [u8]),
    /// A line longer than the cap was dropped (reported once per such line).
    Overflow,
}

/// Splits on `\n`, `\r\n` and a lone `\r` (the three terminators SSE allows; NDJSON writers
/// use the first two). Complete lines that lie inside one chunk are handed out without copying.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    pending: Vec<u8>,
    cap: usize,
    /// Inside an over-long line whose overflow is already reported.
    skipping: bool,
    /// The last terminator was a `\r` at the very end of a chunk, so a `\n` opening the next
    /// chunk completes that CRLF rather than ending an empty line.
    after_cr: bool,
}

impl LineSplitter {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            pending: Vec::new(),
            cap,
            skipping: false,
            after_cr: false,
        }
    }

    /// Bytes reserved for a partial line; never more than the cap.
    pub(crate) fn capacity(&self) -> usize {
        self.pending.capacity()
    }

    pub(crate) fn feed(&mut self, chunk: &[u8], mut on: impl FnMut(Piece<'_>)) {
        let mut rest = chunk;
        if self.after_cr
            && let Some(&first) = rest.first()
        {
            self.after_cr = false;
            if first == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(i) = memchr::memchr2(b'\n', b'\r', rest) {
            let line = &rest[..i];
            let cr = rest[i] == b'\r';
            rest = &rest[i + 1..];
            if cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.end_line(line, &mut on);
        }
        self.hold(rest, &mut on);
    }

    /// Hands out a final line that had no terminator (a body may end without one).
    pub(crate) fn finish(&mut self, mut on: impl FnMut(Piece<'_>)) {
        self.after_cr = false;
        if self.skipping {
            self.skipping = false;
        } else if !self.pending.is_empty() {
            on(Piece::Line(&self.pending));
            self.pending.clear();
        }
    }

    fn end_line(&mut self, tail: &[u8], on: &mut impl FnMut(Piece<'_>)) {
        if self.skipping {
            self.skipping = false;
        } else if self.pending.is_empty() {
            // The cap applies to lines, not to what happens to be buffered, so that the
            // outcome does not depend on where the chunk boundaries fell.
            if tail.len() > self.cap {
                on(Piece::Overflow);
            } else {
                on(Piece::Line(tail));
            }
        } else if push_bounded(&mut self.pending, tail, self.cap) {
            on(Piece::Line(&self.pending));
            self.pending.clear();
        } else {
            self.pending = Vec::new();
            on(Piece::Overflow);
        }
    }

    fn hold(&mut self, rest: &[u8], on: &mut impl FnMut(Piece<'_>)) {
        if rest.is_empty() || self.skipping {
            return;
        }
        if !push_bounded(&mut self.pending, rest, self.cap) {
            // Give the memory back: the buffer grew towards the cap for a line we now drop.
            self.pending = Vec::new();
            self.skipping = true;
            on(Piece::Overflow);
        }
    }
}

/// Appends `bytes` unless that would take `buf` past `cap`; grows geometrically like `Vec` but
/// never reserves beyond `cap`, so the cap bounds the allocation and not just the length.
pub(crate) fn push_bounded(buf: &mut Vec<u8>, bytes: &[u8], cap: usize) -> bool {
    let need = buf.len() + bytes.len();
    if need > cap {
        return false;
    }
    if need > buf.capacity() {
        let target = buf.capacity().saturating_mul(2).max(need).max(256).min(cap);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(bytes);
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Line(Vec<u8>),
        Overflow,
    }

    fn split(cap: usize, input: &[u8], cuts: &[usize]) -> Vec<Owned> {
        let mut s = LineSplitter::new(cap);
        let mut out = Vec::new();
        let mut push = |p: Piece<'_>| {
            out.push(match p {
                Piece::Line(l) => Owned::Line(l.to_vec()),
                Piece::Overflow => Owned::Overflow,
            })
        };
        let mut from = 0;
        for &cut in cuts {
            s.feed(&input[from..cut], &mut push);
            assert!(s.capacity() <= cap);
            from = cut;
        }
        s.feed(&input[from..], &mut push);
        s.finish(&mut push);
        out
    }

    fn lines(v: &[&str]) -> Vec<Owned> {
        v.iter()
            .map(|l| Owned::Line(l.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn all_terminators_and_a_tail() {
        let got = split(100, b"a\nb\r\nc\rd\r\n\r\ne", &[]);
        assert_eq!(got, lines(&["a", "b", "c", "d", "", "e"]));
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_terminator() {
        let got = split(100, b"a\r\nb\r\n", &[2, 3]);
        assert_eq!(got, lines(&["a", "b"]));
    }

    #[test]
    fn overflow_is_reported_once_and_the_next_line_survives() {
        let long = [b'x'; 20];
        let mut input = long.to_vec();
        input.extend_from_slice(b"\nok\n");
        for cuts in [vec![], vec![5], vec![5, 10, 15, 19, 20, 21]] {
            assert_eq!(
                split(8, &input, &cuts),
                vec![Owned::Overflow, Owned::Line(b"ok".to_vec())]
            );
        }
    }

    #[test]
    fn a_line_exactly_at_the_cap_is_kept() {
        assert_eq!(split(4, b"abcd\n", &[2]), lines(&["abcd"]));
        assert_eq!(split(4, b"abcde\n", &[2]), vec![Owned::Overflow]);
    }

    fn input_and_cuts() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
        let byte = prop_oneof![
            4 => b'a'..=b'e',
            1 => Just(b'\n'),
            1 => Just(b'\r'),
            1 => any::<u8>(),
        ];
        prop::collection::vec(byte, 0..200).prop_flat_map(|input| {
            let n = input.len();
            let cuts = prop::collection::vec(0..=n, 0..40).prop_map(|mut c| {
                c.sort_unstable();
                c
            });
            (Just(input), cuts)
        })
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_pieces((input, cuts) in input_and_cuts(), cap in 1usize..12) {
            prop_assert_eq!(split(cap, &input, &cuts), split(cap, &input, &[]));
        }
    }
}
