//! The few fields of a response frame the meter reads, across Ollama and OpenAI shapes.
//!
//! A frame is one JSON object: an NDJSON line, the data of one SSE event, or the kept members
//! of a whole body. One schema covers every endpoint because the shapes do not overlap (Ollama
//! puts text in `response` (a string) or `message`, OpenAI in `choices`, OpenAI's Responses
//! API and Anthropic's Messages API in a top-level `delta`), so a request labelled with the
//! wrong endpoint still meters. Text is never copied out: the visitors below only note whether
//! a field is non-empty, and serde_json skips every other field without allocating.

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Frame {
    // Ollama /api/generate (a string); the Responses API's events carry the response object
    // here instead, with its usage.
    pub(crate) response: ResponseField,
    // The Responses API's `*.delta` events (a string); Anthropic's `content_block_delta` (an
    // object with `text`, `thinking` or `partial_json`).
    delta: TopDelta,
    // The event type of the Responses and Anthropic streams.
    #[serde(rename = "type")]
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
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
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

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Choice {
    delta: Option<Delta>,
    text: Present,
    finish_reason: Present,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
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

/// Ollama's `response` text, or the Responses API's response object (only its usage read).
#[derive(Debug, Default)]
pub(crate) struct ResponseField {
    text: bool,
    pub(crate) usage: Option<Usage>,
}

impl<'de> Deserialize<'de> for ResponseField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Object {
            usage: Option<Usage>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ResponseField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a response object")
            }
            fn visit_str<E>(self, v: &str) -> Result<ResponseField, E> {
                Ok(ResponseField {
                    text: !v.is_empty(),
                    usage: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ResponseField, A::Error> {
                let o = Object::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ResponseField {
                    text: false,
                    usage: o.usage,
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ResponseField, A::Error> {
                drain_seq(seq).map(|_| ResponseField::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<ResponseField, E> {
                Ok(ResponseField::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<ResponseField, E> {
                Ok(ResponseField::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<ResponseField, E> {
                Ok(ResponseField::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<ResponseField, E> {
                Ok(ResponseField::default())
            }
            fn visit_unit<E>(self) -> Result<ResponseField, E> {
                Ok(ResponseField::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// A top-level `delta` that carries output: a non-empty string (the Responses API's text,
/// reasoning and tool-argument deltas), or an object with non-empty `text`, `thinking` or
/// `partial_json` (Anthropic's); Anthropic's `message_delta` (a stop reason) is not output.
#[derive(Debug, Default, Clone, Copy)]
struct TopDelta(bool);

impl<'de> Deserialize<'de> for TopDelta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Object {
            text: Present,
            thinking: Present,
            partial_json: Present,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopDelta;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a delta")
            }
            fn visit_str<E>(self, v: &str) -> Result<TopDelta, E> {
                Ok(TopDelta(!v.is_empty()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TopDelta, A::Error> {
                let o = Object::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(TopDelta(o.text.0 || o.thinking.0 || o.partial_json.0))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TopDelta, A::Error> {
                drain_seq(seq).map(|_| TopDelta(false))
            }
            fn visit_bool<E>(self, _: bool) -> Result<TopDelta, E> {
                Ok(TopDelta(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<TopDelta, E> {
                Ok(TopDelta(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<TopDelta, E> {
                Ok(TopDelta(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<TopDelta, E> {
                Ok(TopDelta(false))
            }
            fn visit_unit<E>(self) -> Result<TopDelta, E> {
                Ok(TopDelta(false))
            }
        }
        d.deserialize_any(V)
    }
}

/// The `type` of a typed stream event, as far as the meter cares: whether it ends the answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    #[default]
    Other,
    /// `response.completed` (Responses API), `message_stop` (Anthropic).
    Completed,
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EventKind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event type")
            }
            fn visit_str<E>(self, v: &str) -> Result<EventKind, E> {
                Ok(match v {
                    "response.completed" | "message_stop" => EventKind::Completed,
                    _ => EventKind::Other,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EventKind, A::Error> {
                drain_map(map).map(|_| EventKind::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<EventKind, A::Error> {
                drain_seq(seq).map(|_| EventKind::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<EventKind, E> {
                Ok(EventKind::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<EventKind, E> {
                Ok(EventKind::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<EventKind, E> {
                Ok(EventKind::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<EventKind, E> {
                Ok(EventKind::Other)
            }
            fn visit_unit<E>(self) -> Result<EventKind, E> {
                Ok(EventKind::Other)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Timings {
    pub(crate) predicted_n: Num,
    pub(crate) predicted_ms: Num,
    pub(crate) predicted_per_second: Num,
    pub(crate) prompt_n: Num,
}

/// `choices` folded while parsing, so a frame needs no `Vec`.
#[derive(Debug, Default)]
struct Choices {
    output: u64,
    finished: bool,
}

impl<'de> Deserialize<'de> for Choices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Choices;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_unit<E>(self) -> Result<Choices, E> {
                Ok(Choices::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Choices, A::Error> {
                let mut all = Choices::default();
                while let Some(c) = seq.next_element::<Choice>()? {
                    let output = c.text.0 || c.delta.as_ref().is_some_and(Delta::has_output);
                    all.output += u64::from(output);
                    all.finished |= c.finish_reason.0;
                }
                Ok(all)
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether a value carries anything: a non-empty string, array or object. `null`, `""`,
/// scalars and empty containers do not, which is how servers spell "no text in this chunk".
#[derive(Debug, Default, Clone, Copy)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Present;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Present, E> {
                Ok(Present(!v.is_empty()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Present, E> {
                Ok(Present(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Present, E> {
                Ok(Present(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Present, E> {
                Ok(Present(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Present, E> {
                Ok(Present(false))
            }
            fn visit_unit<E>(self) -> Result<Present, E> {
                Ok(Present(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Present, A::Error> {
                drain_seq(seq).map(|n| Present(n > 0))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Present, A::Error> {
                drain_map(map).map(|n| Present(n > 0))
            }
        }
        d.deserialize_any(V)
    }
}

/// A number where one is expected; any other type reads as absent rather than failing the
/// whole frame, so one odd field cannot cost a token.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Num(pub(crate) Option<f64>);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Num, E> {
                Ok(Num(Some(v as f64)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Num, E> {
                Ok(Num(Some(v as f64)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Num, E> {
                Ok(Num(Some(v)))
            }
            fn visit_str<E>(self, _: &str) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_unit<E>(self) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Num, A::Error> {
                drain_seq(seq).map(|_| Num(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Num, A::Error> {
                drain_map(map).map(|_| Num(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// `true` only for JSON `true`; anything else is not a completion signal.
#[derive(Debug, Default, Clone, Copy)]
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_str<E>(self, _: &str) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_unit<E>(self) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Flag, A::Error> {
                drain_seq(seq).map(|_| Flag(false))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Flag, A::Error> {
                drain_map(map).map(|_| Flag(false))
            }
        }
        d.deserialize_any(V)
    }
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<u64, A::Error> {
    let mut n = 0;
    while seq.next_element::<IgnoredAny>()?.is_some() {
        n += 1;
    }
    Ok(n)
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<u64, A::Error> {
    let mut n = 0;
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
        n += 1;
    }
    Ok(n)
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

    fn frame(s: &str) -> Frame {
        serde_json::from_str(s).unwrap()
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
}
