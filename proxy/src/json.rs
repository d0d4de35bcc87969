//! A strict JSON reader for the two places that read JSON on every request: the meter's frame
//! schema (`meter/frame.rs`) and the routing fields of a request body (`relay/request.rs`).
//!
//! A frame is read on every token a node streams, and serde_json spent more per frame than the
//! rest of the relay's hooks together: it decodes every key and validates every string it
//! skips. This reader validates as strictly (grammar, escapes, control characters; UTF-8 in
//! every string it hands out) but hands out only what the caller asks for, skips the rest
//! without decoding, and allocates only for a decoded escape or a skipped container.

use std::borrow::Cow;

/// The bytes are not a JSON value of the expected shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

pub(crate) type Read<T> = Result<T, Malformed>;

/// What the next value is, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    Object,
    Array,
    String,
    Number,
    True,
    False,
    Null,
}

pub(crate) struct Reader<'a> {
    b: &'a [u8],
    i: usize,
    /// The closing brackets of the containers `skip` is inside.
    closers: Vec<u8>,
}

/// Bytes a string holds as they are: printable ASCII but the quote and the backslash.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0x20;
    while c < 0x80 {
        t[c] = c != b'"' as usize && c != b'\\' as usize;
        c += 1;
    }
    t
};

/// How many bytes at the start of `b` are `PLAIN`. Strings in frames are short (keys, ids, a
/// token's text): eight bytes per step in a register beat both a byte loop and a vectorised
/// search's setup.
fn plain_run(b: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = ONES << 7;
    // Each term sets the high bit of the bytes it finds. `(v - ONES) & !v` finds zero bytes
    // and `(x - 0x20 * ONES) & !x` bytes below 0x20; a borrow can also mark bytes above a
    // found one, never below, so the lowest mark is exact.
    let first_special = |x: u64| {
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        let marks = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (x.wrapping_sub(ONES * 0x20) & !x)
            | x;
        marks & HIGHS
    };
    let mut words = b.chunks_exact(8);
    let mut i = 0;
    for word in words.by_ref() {
        let marks = first_special(u64::from_le_bytes(std::array::from_fn(|k| word[k])));
        if marks != 0 {
            return i + (marks.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + words
        .remainder()
        .iter()
        .take_while(|&&c| PLAIN[usize::from(c)])
        .count()
}

/// What passing a string found in it.
struct Scanned {
    escaped: bool,
    ascii: bool,
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Reader {
            b,
            i: 0,
            closers: Vec::new(),
        }
    }

    pub(crate) fn position(&self) -> usize {
        self.i
    }

    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.b
    }

    fn ws(&mut self) {
        while self.b.get(self.i).is_some_and(|&c| is_ws(c)) {
            self.i += 1;
        }
    }

    /// The next non-whitespace byte, not consumed.
    fn next_byte(&mut self) -> Read<u8> {
        self.ws();
        self.b.get(self.i).copied().ok_or(Malformed)
    }

    fn expect(&mut self, c: u8) -> Read<()> {
        if self.next_byte()? != c {
            return Err(Malformed);
        }
        self.i += 1;
        Ok(())
    }

    /// The kind of the next value.
    pub(crate) fn peek(&mut self) -> Read<Token> {
        Ok(match self.next_byte()? {
            b'{' => Token::Object,
            b'[' => Token::Array,
            b'"' => Token::String,
            b'-' | b'0'..=b'9' => Token::Number,
            b't' => Token::True,
            b'f' => Token::False,
            b'n' => Token::Null,
            _ => return Err(Malformed),
        })
    }

    /// Nothing but whitespace is left.
    pub(crate) fn end(&mut self) -> Read<()> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    /// Past a string's closing quote.
    fn pass_string(&mut self) -> Read<Scanned> {
        self.expect(b'"')?;
        let mut scanned = Scanned {
            escaped: false,
            ascii: true,
        };
        loop {
            // Plain bytes eight at a time; the rest one at a time.
            self.i += plain_run(&self.b[self.i..]);
            let c = *self.b.get(self.i).ok_or(Malformed)?;
            self.i += 1;
            match c {
                b'"' => return Ok(scanned),
                b'\\' => {
                    scanned.escaped = true;
                    match self.b.get(self.i) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 1..self.i + 5).ok_or(Malformed)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Malformed);
                            }
                            self.i += 5;
                        }
                        _ => return Err(Malformed),
                    }
                }
                0x80.. => scanned.ascii = false,
                _ => return Err(Malformed),
            }
        }
    }

    /// A string's text, unescaped (only an escaped one is copied) and checked as UTF-8.
    pub(crate) fn string(&mut self) -> Read<Cow<'a, [u8]>> {
        self.ws();
        let start = self.i;
        let scanned = self.pass_string()?;
        let quoted = &self.b[start..self.i];
        if scanned.escaped {
            // Rare enough to hand to serde_json, which also checks surrogate pairs.
            return serde_json::from_slice::<String>(quoted)
                .map(|s| Cow::Owned(s.into_bytes()))
                .map_err(|_| Malformed);
        }
        let text = &quoted[1..quoted.len() - 1];
        if !scanned.ascii && std::str::from_utf8(text).is_err() {
            return Err(Malformed);
        }
        Ok(Cow::Borrowed(text))
    }

    /// Past a number, checked against JSON's grammar.
    fn pass_number(&mut self) -> Read<()> {
        self.ws();
        let digits = |r: &mut Self| {
            let from = r.i;
            while r.b.get(r.i).is_some_and(u8::is_ascii_digit) {
                r.i += 1;
            }
            r.i - from
        };
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(Malformed),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return Err(Malformed);
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err(Malformed);
            }
        }
        // A leading zero is a whole integer part ("01" is not JSON).
        if self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            return Err(Malformed);
        }
        Ok(())
    }

    pub(crate) fn number(&mut self) -> Read<f64> {
        self.ws();
        let start = self.i;
        self.pass_number()?;
        let text = &self.b[start..self.i];
        // Counts and durations are integers: up to 15 digits they are exact in an f64.
        let (negative, digits) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        if digits.len() <= 15 && digits.iter().all(u8::is_ascii_digit) {
            let n = digits
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            #[allow(clippy::cast_precision_loss)]
            let n = n as f64;
            return Ok(if negative { -n } else { n });
        }
        // The grammar is checked, so the text is ASCII and Rust's parser takes it. Out of
        // range is an error, as serde_json reads a number it visits.
        std::str::from_utf8(text)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|n| n.is_finite())
            .ok_or(Malformed)
    }

    /// `true`, `false` or `null`.
    pub(crate) fn literal(&mut self) -> Read<Token> {
        let (word, token): (&[u8], _) = match self.peek()? {
            Token::True => (b"true", Token::True),
            Token::False => (b"false", Token::False),
            Token::Null => (b"null", Token::Null),
            _ => return Err(Malformed),
        };
        if !self.b[self.i..].starts_with(word) {
            return Err(Malformed);
        }
        self.i += word.len();
        Ok(token)
    }

    /// An object's members: `each` gets the key (borrowed from the input unless it had escapes)
    /// and must read the value. Returns how many.
    pub(crate) fn members(
        &mut self,
        mut each: impl FnMut(&mut Self, &Cow<'a, [u8]>) -> Read<()>,
    ) -> Read<u64> {
        self.sequence(b'{', b'}', |r| {
            let key = r.string()?;
            r.expect(b':')?;
            each(r, &key)
        })
    }

    /// An array's elements: `each` must read one. Returns how many.
    pub(crate) fn elements(&mut self, each: impl FnMut(&mut Self) -> Read<()>) -> Read<u64> {
        self.sequence(b'[', b']', each)
    }

    /// `open`, then items `each` reads separated by commas, then `close`. Returns how many.
    fn sequence(
        &mut self,
        open: u8,
        close: u8,
        mut each: impl FnMut(&mut Self) -> Read<()>,
    ) -> Read<u64> {
        self.expect(open)?;
        if self.next_byte()? == close {
            self.i += 1;
            return Ok(0);
        }
        let mut n = 0;
        loop {
            each(self)?;
            n += 1;
            match self.next_byte()? {
                b',' => self.i += 1,
                b if b == close => {
                    self.i += 1;
                    return Ok(n);
                }
                _ => return Err(Malformed),
            }
        }
    }

    /// Past one value of any kind and depth, checked but not decoded (no UTF-8 check, as
    /// serde_json skips). Iterative, so no nesting can exhaust the stack.
    pub(crate) fn skip(&mut self) -> Read<()> {
        self.walk(false, usize::MAX)
    }

    /// Past one value, checked as strictly as serde_json reads a value it visits, and more:
    /// every string (keys too) valid UTF-8 with valid escapes, every number finite as an
    /// `f64`, and no more than `max_depth` containers deep.
    pub(crate) fn skip_checked(&mut self, max_depth: usize) -> Read<()> {
        self.walk(true, max_depth)
    }

    fn walk(&mut self, checked: bool, max_depth: usize) -> Read<()> {
        self.closers.clear();
        let key = |r: &mut Self| -> Read<()> {
            if checked {
                r.string()?;
            } else {
                r.pass_string()?;
            }
            r.expect(b':')
        };
        loop {
            // A value.
            match self.peek()? {
                Token::String if checked => {
                    self.string()?;
                }
                Token::String => {
                    self.pass_string()?;
                }
                Token::Number if checked => {
                    self.number()?;
                }
                Token::Number => self.pass_number()?,
                Token::True | Token::False | Token::Null => {
                    self.literal()?;
                }
                open @ (Token::Object | Token::Array) => {
                    self.i += 1;
                    let close = if open == Token::Object { b'}' } else { b']' };
                    if self.closers.len() >= max_depth {
                        return Err(Malformed);
                    }
                    if self.next_byte()? == close {
                        self.i += 1;
                    } else {
                        self.closers.push(close);
                        if close == b'}' {
                            key(self)?;
                        }
                        continue;
                    }
                }
            }
            // After it: the next element or member, or the ends of the containers it closes.
            loop {
                let Some(&close) = self.closers.last() else {
                    return Ok(());
                };
                match self.next_byte()? {
                    b',' => {
                        self.i += 1;
                        if close == b'}' {
                            key(self)?;
                        }
                        break;
                    }
                    c if c == close => {
                        self.i += 1;
                        self.closers.pop();
                    }
                    _ => return Err(Malformed),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn skips(s: &str) -> bool {
        let mut r = Reader::new(s.as_bytes());
        r.skip().is_ok() && r.end().is_ok()
    }

    #[test]
    fn skip_accepts_what_serde_json_accepts() {
        let cases = [
            r#"{"a":[1,-2.5e+3,true,false,null,{"b":"c\"\\\/\b\f\n\r\t\u00e9"}],"d":{}}"#,
            "[]",
            " [ [ ] , { } ] ",
            "0",
            "-0.0E-0",
            r#""""#,
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            "[1,]",
            "[1 2]",
            r#"{"a":1]"#,
            "[1}",
            "tru",
            "nul",
            r#""a\x""#,
            r#""\u12G4""#,
            "\"a\u{1}b\"",
            r#"{1:2}"#,
            "",
            "[",
        ];
        for case in cases {
            let theirs = serde_json::from_str::<serde::de::IgnoredAny>(case).is_ok();
            assert_eq!(skips(case), theirs, "{case:?}");
        }
    }

    #[test]
    fn skip_survives_any_depth() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(skips(&deep));
        let unbalanced = "[".repeat(100_000) + &"]".repeat(99_999) + "}";
        assert!(!skips(&unbalanced));
    }

    #[test]
    fn strings_are_unescaped_and_checked() {
        let mut r = Reader::new(br#""plain" "a\nb" "\ud83d\ude00" "\ud800""#);
        assert_eq!(&*r.string().unwrap(), b"plain");
        assert_eq!(&*r.string().unwrap(), b"a\nb");
        assert_eq!(&*r.string().unwrap(), "\u{1f600}".as_bytes());
        assert_eq!(r.string(), Err(Malformed), "a lone surrogate");
        let bad_utf8 = [b'"', 0xff, b'"'];
        assert_eq!(Reader::new(&bad_utf8).string(), Err(Malformed));
        // Skipped strings are not decoded, as serde_json skips them.
        assert!(Reader::new(&bad_utf8).skip().is_ok());
    }

    #[test]
    fn numbers_and_members() {
        let mut r = Reader::new(br#"{"n": -12.5e1, "m": [1, 2, 3], "x": "y"}"#);
        let mut n = None;
        let mut m = 0;
        let count = r
            .members(|r, key| match key.as_ref() {
                b"n" => {
                    n = Some(r.number()?);
                    Ok(())
                }
                b"m" => {
                    m = r.elements(|r| r.skip())?;
                    Ok(())
                }
                _ => r.skip(),
            })
            .unwrap();
        assert_eq!((count, n, m), (3, Some(-125.0), 3));
        assert!(r.end().is_ok());
    }

    proptest::proptest! {
        #[test]
        fn plain_runs_stop_where_the_byte_loop_stops(
            b in proptest::collection::vec(
                proptest::prop_oneof![
                    4 => 0x20u8..0x7f,
                    1 => proptest::prelude::any::<u8>(),
                ],
                0..40,
            ),
        ) {
            let expected = b.iter().take_while(|&&c| PLAIN[usize::from(c)]).count();
            proptest::prop_assert_eq!(plain_run(&b), expected);
        }
    }
}
