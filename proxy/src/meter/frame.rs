//! The few fields of a response frame the meter reads, across Ollama and OpenAI shapes.
//!
//! A frame is one JSON object: an NDJSON line, the data of one SSE event, or the kept members
//! of a whole body. One schema covers every endpoint because the shapes do not overlap (Ollama
//! puts text in `response` (a string) or `message`, OpenAI in `choices`, OpenAI's Responses
//! API and Anthropic's Messages API in a top-level `delta`), so a request labelled with the
//! wrong endpoint still meters. Text is never copied out: the readers below only note whether
//! a field is non-empty, and every other field is skipped (`scan.rs`).
//!
//! The schema's rules are serde's, as a derived `Deserialize` with `#[serde(default)]` reads
//! it (the first version of this file, kept as `frame/reference.rs` and checked against in
//! the tests): a field may be missing, a known field twice is an error, an `Option` of a
//! struct is `null` or that struct, and a struct may also come as an array of its fields in
//! order. The leaf types (`Present`, `Num`, `Flag`) take any value, so one odd field cannot
//! cost a token.

use crate::json::{Malformed, Read, Reader, Token};

#[cfg(test)]
mod reference;

#[derive(Debug, Default)]
#[cfg_attr(test, derive(serde::Deserialize), serde(default))]
pub(crate) struct Frame {
    // Ollama /api/generate (a string); the Responses API's events carry the response object
    // here instead, with its usage.
    pub(crate) response: ResponseField,
    // The Responses API's `*.delta` events (a string); Anthropic's `content_block_delta` (an
    // object with `text`, `thinking` or `partial_json`).
    delta: TopDelta,
    // The event type of the Responses and Anthropic streams.
    #[cfg_attr(test, serde(rename = "type"))]
    kind: EventKind,
    thinking: Present,
    // Ollama /api/chat.
    message: Option<Delta>,
    // OpenAI /v1/chat/completions and /v1/completions.
    choices: Choices,
    // Ollama's last line.
    done: Flag,
    pub(crate) eval_count: Num,
    pub(crate) eval_duration: Num,
    pub(crate) prompt_eval_count: Num,
    pub(crate) prompt_eval_duration: Num,
    pub(crate) total_duration: Num,
    pub(crate) usage: Option<Usage>,
    /// llama.cpp's server.
    pub(crate) timings: Option<Timings>,
    pub(crate) error: Option<serde_json::Value>,
}

impl Frame {
    /// Reads one frame; `None` when the bytes are not one the schema accepts.
    pub(crate) fn read(bytes: &[u8]) -> Option<Frame> {
        let mut r = Reader::new(bytes);
        let frame = read_struct(&mut r).ok()?;
        r.end().ok()?;
        Some(frame)
    }

    /// Reads the top-level members of one JSON object that `pick` chooses (it gets each key,
    /// borrowed unless it had escapes) as a frame's fields; the others are checked and skipped.
    /// `None` when the bytes are not one JSON object or a picked member does not read.
    pub(crate) fn read_picked(
        bytes: &[u8],
        mut pick: impl FnMut(&std::borrow::Cow<'_, [u8]>) -> bool,
    ) -> Option<Frame> {
        let mut r = Reader::new(bytes);
        let mut frame = Frame::default();
        r.members(|r, key| {
            if !pick(key) {
                return r.skip();
            }
            match Frame::FIELDS
                .iter()
                .position(|f| f.as_bytes() == key.as_ref())
            {
                Some(i) => frame.read_field(i, r),
                None => r.skip(),
            }
        })
        .ok()?;
        r.end().ok()?;
        Some(frame)
    }

    /// Token chunks in this frame: servers send one token per chunk, and one per choice when a
    /// request asks for several choices.
    pub(crate) fn output_chunks(&self) -> u64 {
        let ollama = self.response.text
            || self.delta.0
            || self.thinking.0
            || self.message.as_ref().is_some_and(Delta::has_output);
        u64::from(ollama) + self.choices.output
    }

    /// The frame says the generation ended (Ollama `done: true`, an OpenAI `finish_reason`,
    /// the Responses API's `response.completed`, Anthropic's `message_stop`).
    pub(crate) fn finished(&self) -> bool {
        self.done.0 || self.choices.finished || self.kind == EventKind::Completed
    }

    /// Every usage object the frame carries: OpenAI's and Anthropic's at the top, the Responses
    /// API's inside `response`, Anthropic's first one inside `message`.
    pub(crate) fn usages(&self) -> impl Iterator<Item = &Usage> {
        [
            self.usage.as_ref(),
            self.response.usage.as_ref(),
            self.message.as_ref().and_then(|m| m.usage.as_ref()),
        ]
        .into_iter()
        .flatten()
    }
}

/// An Ollama chat `message` or an OpenAI `delta`: reasoning and tool calls are generated
/// tokens too, and the node spends the same energy on them.
#[derive(Debug, Default)]
#[cfg_attr(test, derive(serde::Deserialize), serde(default))]
struct Delta {
    content: Present,
    thinking: Present,
    reasoning: Present,
    reasoning_content: Present,
    tool_calls: Present,
    function_call: Present,
    /// Anthropic's `message_start` carries the prompt's usage in its message.
    usage: Option<Usage>,
}

impl Delta {
    fn has_output(&self) -> bool {
        self.content.0
            || self.thinking.0
            || self.reasoning.0
            || self.reasoning_content.0
            || self.tool_calls.0
            || self.function_call.0
    }
}

#[derive(Debug, Default)]
#[cfg_attr(test, derive(serde::Deserialize), serde(default))]
struct Choice {
    delta: Option<Delta>,
    text: Present,
    finish_reason: Present,
}

#[derive(Debug, Default)]
#[cfg_attr(test, derive(serde::Deserialize), serde(default))]
pub(crate) struct Usage {
    pub(crate) completion_tokens: Num,
    pub(crate) prompt_tokens: Num,
    /// The Responses API's and Anthropic's names.
    pub(crate) output_tokens: Num,
    pub(crate) input_tokens: Num,
}

impl Usage {
    pub(crate) fn output(&self) -> Num {
        Num(self.completion_tokens.0.or(self.output_tokens.0))
    }

    pub(crate) fn prompt(&self) -> Num {
        Num(self.prompt_tokens.0.or(self.input_tokens.0))
    }
}

#[derive(Debug, Default)]
#[cfg_attr(test, derive(serde::Deserialize), serde(default))]
pub(crate) struct Timings {
    pub(crate) predicted_n: Num,
    pub(crate) predicted_ms: Num,
    pub(crate) predicted_per_second: Num,
    pub(crate) prompt_n: Num,
}

/// Ollama's `response` text, or the Responses API's response object (only its usage read).
#[derive(Debug, Default)]
pub(crate) struct ResponseField {
    text: bool,
    pub(crate) usage: Option<Usage>,
}

/// The Responses API's response object, as far as the meter reads it.
#[derive(Debug, Default)]
struct ResponseObject {
    usage: Option<Usage>,
}

/// A top-level `delta` that carries output: a non-empty string (the Responses API's text,
/// reasoning and tool-argument deltas), or an object with non-empty `text`, `thinking` or
/// `partial_json` (Anthropic's); Anthropic's `message_delta` (a stop reason) is not output.
#[derive(Debug, Default, Clone, Copy)]
struct TopDelta(bool);

/// Anthropic's delta object.
#[derive(Debug, Default)]
struct DeltaObject {
    text: Present,
    thinking: Present,
    partial_json: Present,
}

/// The `type` of a typed stream event, as far as the meter cares: whether it ends the answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    #[default]
    Other,
    /// `response.completed` (Responses API), `message_stop` (Anthropic).
    Completed,
}

/// `choices` folded while parsing, so a frame needs no `Vec`.
#[derive(Debug, Default)]
struct Choices {
    output: u64,
    finished: bool,
}

/// Whether a value carries anything: a non-empty string, array or object. `null`, `""`,
/// scalars and empty containers do not, which is how servers spell "no text in this chunk".
#[derive(Debug, Default, Clone, Copy)]
struct Present(bool);

/// A number where one is expected; any other type reads as absent rather than failing the
/// whole frame, so one odd field cannot cost a token.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Num(pub(crate) Option<f64>);

/// `true` only for JSON `true`; anything else is not a completion signal.
#[derive(Debug, Default, Clone, Copy)]
struct Flag(bool);

/// A struct of the schema: its fields' JSON names in declaration order, and how each reads.
trait Schema: Default {
    const FIELDS: &'static [&'static str];
    fn read_field(&mut self, index: usize, r: &mut Reader<'_>) -> Read<()>;
}

/// Declares a struct's fields once, in order: name, field, reader.
macro_rules! schema {
    ($ty:ty { $($name:literal => $field:ident: $read:expr),* $(,)? }) => {
        impl Schema for $ty {
            const FIELDS: &'static [&'static str] = &[$($name),*];
            fn read_field(&mut self, index: usize, r: &mut Reader<'_>) -> Read<()> {
                let mut i = 0;
                $(
                    if index == i {
                        self.$field = $read(r)?;
                        return Ok(());
                    }
                    i += 1;
                )*
                let _ = i;
                r.skip()
            }
        }
    };
}

schema!(Frame {
    "response" => response: response_field,
    "delta" => delta: top_delta,
    "type" => kind: event_kind,
    "thinking" => thinking: present,
    "message" => message: read_option,
    "choices" => choices: choices,
    "done" => done: flag,
    "eval_count" => eval_count: num,
    "eval_duration" => eval_duration: num,
    "prompt_eval_count" => prompt_eval_count: num,
    "prompt_eval_duration" => prompt_eval_duration: num,
    "total_duration" => total_duration: num,
    "usage" => usage: read_option,
    "timings" => timings: read_option,
    "error" => error: error_value,
});

schema!(Delta {
    "content" => content: present,
    "thinking" => thinking: present,
    "reasoning" => reasoning: present,
    "reasoning_content" => reasoning_content: present,
    "tool_calls" => tool_calls: present,
    "function_call" => function_call: present,
    "usage" => usage: read_option,
});

schema!(Choice {
    "delta" => delta: read_option,
    "text" => text: present,
    "finish_reason" => finish_reason: present,
});

schema!(Usage {
    "completion_tokens" => completion_tokens: num,
    "prompt_tokens" => prompt_tokens: num,
    "output_tokens" => output_tokens: num,
    "input_tokens" => input_tokens: num,
});

schema!(Timings {
    "predicted_n" => predicted_n: num,
    "predicted_ms" => predicted_ms: num,
    "predicted_per_second" => predicted_per_second: num,
    "prompt_n" => prompt_n: num,
});

schema!(ResponseObject {
    "usage" => usage: read_option,
});

schema!(DeltaObject {
    "text" => text: present,
    "thinking" => thinking: present,
    "partial_json" => partial_json: present,
});

/// A struct from an object; a known field twice is an error, unknown ones are skipped.
fn read_members<T: Schema>(r: &mut Reader<'_>) -> Read<T> {
    let mut out = T::default();
    let mut seen = 0u32;
    r.members(
        |r, key| match T::FIELDS.iter().position(|f| f.as_bytes() == key.as_ref()) {
            Some(i) if seen & (1 << i) != 0 => Err(Malformed),
            Some(i) => {
                seen |= 1 << i;
                out.read_field(i, r)
            }
            None => r.skip(),
        },
    )?;
    Ok(out)
}

/// A struct from an object, or from an array of its fields in order (missing ones default).
fn read_struct<T: Schema>(r: &mut Reader<'_>) -> Read<T> {
    match r.peek()? {
        Token::Object => read_members(r),
        Token::Array => {
            let mut out = T::default();
            let mut i = 0;
            r.elements(|r| {
                if i == T::FIELDS.len() {
                    return Err(Malformed);
                }
                out.read_field(i, r)?;
                i += 1;
                Ok(())
            })?;
            Ok(out)
        }
        _ => Err(Malformed),
    }
}

fn read_option<T: Schema>(r: &mut Reader<'_>) -> Read<Option<T>> {
    if r.peek()? == Token::Null {
        r.literal()?;
        return Ok(None);
    }
    read_struct(r).map(Some)
}

/// Reads any value; whether it carries anything (`Present`).
fn carries(r: &mut Reader<'_>) -> Read<bool> {
    Ok(match r.peek()? {
        Token::String => !r.string()?.is_empty(),
        Token::Number => {
            r.number()?;
            false
        }
        Token::True | Token::False | Token::Null => {
            r.literal()?;
            false
        }
        Token::Array => r.elements(|r| r.skip())? > 0,
        Token::Object => r.members(|r, _| r.skip())? > 0,
    })
}

fn present(r: &mut Reader<'_>) -> Read<Present> {
    carries(r).map(Present)
}

fn num(r: &mut Reader<'_>) -> Read<Num> {
    if r.peek()? == Token::Number {
        return r.number().map(|n| Num(Some(n)));
    }
    carries(r).map(|_| Num(None))
}

fn flag(r: &mut Reader<'_>) -> Read<Flag> {
    if r.peek()? == Token::True {
        r.literal()?;
        return Ok(Flag(true));
    }
    carries(r).map(|_| Flag(false))
}

fn event_kind(r: &mut Reader<'_>) -> Read<EventKind> {
    if r.peek()? == Token::String {
        return Ok(match &*r.string()? {
            b"response.completed" | b"message_stop" => EventKind::Completed,
            _ => EventKind::Other,
        });
    }
    carries(r).map(|_| EventKind::Other)
}

fn top_delta(r: &mut Reader<'_>) -> Read<TopDelta> {
    match r.peek()? {
        Token::String => Ok(TopDelta(!r.string()?.is_empty())),
        Token::Object => {
            let o: DeltaObject = read_members(r)?;
            Ok(TopDelta(o.text.0 || o.thinking.0 || o.partial_json.0))
        }
        _ => carries(r).map(|_| TopDelta(false)),
    }
}

fn response_field(r: &mut Reader<'_>) -> Read<ResponseField> {
    match r.peek()? {
        Token::String => Ok(ResponseField {
            text: !r.string()?.is_empty(),
            usage: None,
        }),
        Token::Object => {
            let o: ResponseObject = read_members(r)?;
            Ok(ResponseField {
                text: false,
                usage: o.usage,
            })
        }
        _ => carries(r).map(|_| ResponseField::default()),
    }
}

fn choices(r: &mut Reader<'_>) -> Read<Choices> {
    let mut all = Choices::default();
    match r.peek()? {
        Token::Null => {
            r.literal()?;
        }
        Token::Array => {
            r.elements(|r| {
                let c: Choice = read_struct(r)?;
                let output = c.text.0 || c.delta.as_ref().is_some_and(Delta::has_output);
                all.output += u64::from(output);
                all.finished |= c.finish_reason.0;
                Ok(())
            })?;
        }
        _ => return Err(Malformed),
    }
    Ok(all)
}

/// Errors are rare and their text is logged whole: the value is parsed as it is.
fn error_value(r: &mut Reader<'_>) -> Read<Option<serde_json::Value>> {
    if r.peek()? == Token::Null {
        r.literal()?;
        return Ok(None);
    }
    let start = r.position();
    r.skip()?;
    serde_json::from_slice(&r.bytes()[start..r.position()])
        .map(Some)
        .map_err(|_| Malformed)
}

/// The human-readable part of an error value: OpenAI and llama.cpp nest it as
/// `{"message": ...}`, Ollama sends a bare string. Bounded, since it ends up in logs.
pub(crate) fn error_text(v: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    let text = match v {
        Value::Null | Value::Bool(false) => return None,
        Value::String(s) => s.clone(),
        Value::Object(m) => match m.get("message") {
            Some(Value::String(s)) => s.clone(),
            _ => v.to_string(),
        },
        _ => v.to_string(),
    };
    Some(truncate(text))
}

/// Error text from bytes that may not be JSON (an SSE `error` field can carry anything).
pub(crate) fn error_text_from_bytes(bytes: &[u8]) -> Option<String> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => error_text(&v),
        Err(_) if bytes.trim_ascii().is_empty() => None,
        Err(_) => Some(truncate(String::from_utf8_lossy(bytes).into_owned())),
    }
}

const ERROR_TEXT_MAX: usize = 1024;

fn truncate(mut s: String) -> String {
    if s.len() > ERROR_TEXT_MAX {
        let mut end = ERROR_TEXT_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(s: &str) -> Frame {
        Frame::read(s.as_bytes()).unwrap()
    }

    #[test]
    fn empty_text_is_not_output() {
        assert_eq!(frame(r#"{"response":""}"#).output_chunks(), 0);
        assert_eq!(
            frame(r#"{"choices":[{"delta":{"role":"assistant","content":null}}]}"#).output_chunks(),
            0
        );
        assert_eq!(
            frame(r#"{"message":{"role":"assistant","content":"","tool_calls":[]}}"#)
                .output_chunks(),
            0
        );
    }

    #[test]
    fn every_choice_with_text_counts() {
        let f = frame(
            r#"{"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"text":"b","finish_reason":"stop"}]}"#,
        );
        assert_eq!(f.output_chunks(), 2);
        assert!(f.finished());
    }

    #[test]
    fn odd_types_do_not_fail_the_frame() {
        let f = frame(
            r#"{"response":"x","eval_count":"12","done":"yes","usage":{"completion_tokens":[1]}}"#,
        );
        assert_eq!(f.output_chunks(), 1);
        assert!(!f.finished());
        assert!(f.eval_count.0.is_none());
    }

    #[test]
    fn typed_events_of_the_responses_and_anthropic_apis() {
        let text =
            frame(r#"{"type":"response.output_text.delta","delta":"Hi","sequence_number":3}"#);
        assert_eq!(text.output_chunks(), 1);
        // The response object is not Ollama text; its usage is read.
        let done = frame(
            r#"{"type":"response.completed","response":{"id":"r","output":[{"content":[{"text":"Hi"}]}],"usage":{"input_tokens":5,"output_tokens":7}}}"#,
        );
        assert_eq!(done.output_chunks(), 0);
        assert!(done.finished());
        assert_eq!(done.usages().next().unwrap().output().0, Some(7.0));
        let created =
            frame(r#"{"type":"response.created","response":{"id":"r","status":"in_progress"}}"#);
        assert_eq!(created.output_chunks(), 0);
        assert!(!created.finished());
        let delta = frame(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
        );
        assert_eq!(delta.output_chunks(), 1);
        let stop_reason = frame(
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#,
        );
        assert_eq!(stop_reason.output_chunks(), 0);
        assert_eq!(stop_reason.usages().next().unwrap().output().0, Some(9.0));
        let start = frame(
            r#"{"type":"message_start","message":{"id":"m","content":[],"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        );
        assert_eq!(start.output_chunks(), 0);
        assert_eq!(start.usages().next().unwrap().prompt().0, Some(12.0));
        assert!(frame(r#"{"type":"message_stop"}"#).finished());
    }

    #[test]
    fn error_text_shapes() {
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(error_text(&v(r#""boom""#)).as_deref(), Some("boom"));
        assert_eq!(
            error_text(&v(r#"{"code":500,"message":"boom","type":"server_error"}"#)).as_deref(),
            Some("boom")
        );
        assert_eq!(error_text(&v("null")), None);
        assert_eq!(
            error_text_from_bytes(b"not json").as_deref(),
            Some("not json")
        );
        let long = "é".repeat(ERROR_TEXT_MAX);
        assert!(error_text(&serde_json::Value::String(long)).unwrap().len() <= ERROR_TEXT_MAX);
    }

    /// Everything the meter takes from a frame, comparable across the two readers.
    type Summary = (u64, bool, Vec<Option<f64>>, Vec<(Option<f64>, Option<f64>)>);

    fn summary(f: &Frame) -> Summary {
        let mut nums = vec![
            f.eval_count.0,
            f.eval_duration.0,
            f.prompt_eval_count.0,
            f.prompt_eval_duration.0,
            f.total_duration.0,
        ];
        if let Some(t) = &f.timings {
            nums.extend([
                t.predicted_n.0,
                t.predicted_ms.0,
                t.predicted_per_second.0,
                t.prompt_n.0,
            ]);
        }
        nums.push(f.error.as_ref().map(|e| e.to_string().len() as f64));
        let usages = f.usages().map(|u| (u.output().0, u.prompt().0)).collect();
        (f.output_chunks(), f.finished(), nums, usages)
    }

    /// Both readers accept `bytes` or both refuse it, and agree on what they accept.
    fn agree(bytes: &[u8]) -> Result<(), String> {
        let ours = Frame::read(bytes).map(|f| summary(&f));
        let serde = serde_json::from_slice::<Frame>(bytes)
            .ok()
            .map(|f| summary(&f));
        if ours == serde {
            Ok(())
        } else {
            Err(format!(
                "{:?}: ours {ours:?}, serde's {serde:?}",
                String::from_utf8_lossy(bytes)
            ))
        }
    }

    const KEYS: &[&str] = &[
        "response",
        "delta",
        "type",
        "thinking",
        "message",
        "choices",
        "done",
        "eval_count",
        "eval_duration",
        "prompt_eval_count",
        "total_duration",
        "usage",
        "timings",
        "error",
        "content",
        "reasoning",
        "tool_calls",
        "text",
        "partial_json",
        "finish_reason",
        "completion_tokens",
        "prompt_tokens",
        "output_tokens",
        "input_tokens",
        "predicted_n",
        "predicted_per_second",
        "message",
        "id",
        "con\\u0074ent",
    ];

    const SCALARS: &[&str] = &[
        "null",
        "true",
        "false",
        "0",
        "-3",
        "12",
        "2.5",
        "1e3",
        "18446744073709551616",
        "1e999",
        r#""""#,
        r#""a""#,
        r#""response.completed""#,
        r#""message_stop""#,
        r#""message\u005fstop""#,
        r#""\n""#,
        r#""é""#,
    ];

    /// JSON text (not a `Value`, which would drop repeated keys) over the schema's names.
    fn json() -> impl Strategy<Value = String> {
        let leaf = proptest::sample::select(SCALARS).prop_map(str::to_owned);
        leaf.prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(
                    |members| {
                        let members: Vec<String> = members
                            .iter()
                            .map(|(k, v)| format!("\"{k}\":{v}"))
                            .collect();
                        format!("{{{}}}", members.join(","))
                    }
                ),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn the_reader_agrees_with_serde(text in json()) {
            agree(text.as_bytes()).map_err(TestCaseError::fail)?;
        }

        #[test]
        fn the_reader_refuses_what_serde_refuses(text in json(), cut in 0usize..400, junk in 0u8..128) {
            let bytes = text.as_bytes();
            let cut = cut.min(bytes.len());
            agree(&bytes[..cut]).map_err(TestCaseError::fail)?;
            let mut changed = bytes.to_vec();
            if let Some(b) = changed.get_mut(cut) {
                *b = junk;
            }
            agree(&changed).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn every_fixture_line_reads_as_serde_reads_it() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/meter/fixtures");
        for entry in std::fs::read_dir(dir).unwrap() {
            let body = std::fs::read(entry.unwrap().path()).unwrap();
            agree(&body).unwrap();
            for line in body.split(|&b| b == b'\n') {
                let line = line.strip_prefix(b"data: ").unwrap_or(line);
                agree(line).unwrap();
            }
        }
    }
}
