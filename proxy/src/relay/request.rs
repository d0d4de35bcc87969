//! Reads a model-routed request's body (bounded) and the facts routing needs from it, and
//! checks the request is sane before any node sees it: headers within their limit, the body
//! one well-formed JSON object no deeper than [`MAX_JSON_DEPTH`].

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// JSON nested deeper than this is refused with 400. Real requests (messages, tools, a JSON
/// schema for structured output) stay within a few dozen levels; engines that parse JSON
/// recursively crash on the depths a client can send, and a crash is a dropped connection
/// that would count against the node.
pub const MAX_JSON_DEPTH: usize = 100;

/// What routing needs from a request body; the model name is borrowed from the body.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFacts<'a> {
    pub model: Cow<'a, str>,
    /// `"stream"` as the client sent it; `None` when absent (each API has its own default).
    pub stream: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BodyProblem {
    Malformed(String),
    NoModel,
}

/// The top-level fields routing reads. `/api/show` still accepts the older `name`.
#[derive(Default)]
struct Fields<'de> {
    model: Option<Text<'de>>,
    name: Option<Text<'de>>,
    stream: Option<bool>,
}

/// A string of the body, borrowed from it when it has no escapes (a model name never does), so
/// reading the model allocates nothing.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Model => fields.model = map.next_value()?,
                Key::Name => fields.name = map.next_value()?,
                Key::Stream => fields.stream = map.next_value()?,
                Key::Other => map.next_value_seed(Nested { depth: 2 })?,
            }
        }
        Ok(fields)
    }
}

enum Key {
    Model,
    Name,
    Stream,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "model" => Key::Model,
                    "name" => Key::Name,
                    "stream" => Key::Stream,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// Any JSON value at `depth` (the top-level object is depth 1): walked whole, so the body is
/// checked to its end, and kept nowhere.
struct Nested {
    depth: usize,
}

impl Nested {
    fn enter<E: de::Error>(&self) -> Result<Nested, E> {
        if self.depth > MAX_JSON_DEPTH {
            return Err(E::custom(format_args!(
                "JSON nested deeper than {MAX_JSON_DEPTH} levels"
            )));
        }
        Ok(Nested {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Nested {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Nested {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        while seq
            .next_element_seed(Nested { depth: inner.depth })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Nested { depth: inner.depth })?;
        }
        Ok(())
    }
}

/// The size of the request line and headers as sent, when it is over `limit`.
pub fn header_size_over(header: &RequestHeader, limit: usize) -> Option<usize> {
    // `METHOD PATH HTTP/1.1\r\n`: two spaces, the version and the line end.
    const LINE_FRAMING: usize = " ".len() * 2 + "HTTP/1.1".len() + "\r\n".len();
    // `name: value\r\n`.
    const FIELD_FRAMING: usize = ": ".len() + "\r\n".len();
    let line = header.method.as_str().len() + header.raw_path().len() + LINE_FRAMING;
    let fields: usize = header
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD_FRAMING)
        .sum();
    let size = line + fields;
    (size > limit).then_some(size)
}

/// Parses the routing fields and checks the whole body: well-formed JSON, one object, no deeper
/// than [`MAX_JSON_DEPTH`]. Other fields are walked, not copied.
pub fn facts(body: &[u8]) -> Result<RequestFacts<'_>, BodyProblem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyProblem::Malformed(
            "the request body is empty; a JSON object is expected".into(),
        ));
    }
    // The crate's strict reader first, at a fraction of serde_json's cost: it refuses all
    // that serde_json refuses here (and a little more), so a body it reads is one serde_json
    // reads alike. serde_json reads the rest, and says what is wrong.
    let fields = match read_fields(body) {
        Some(fields) => fields,
        None => serde_json::from_slice(body)
            .map_err(|e| BodyProblem::Malformed(format!("invalid JSON: {e}")))?,
    };
    routing_facts(fields)
}

/// The body's routing fields by the crate's JSON reader, with `Fields`' rules (a repeated
/// field: the last one counts; `null`: absent); `None` where it refuses the body.
fn read_fields(body: &[u8]) -> Option<Fields<'_>> {
    use crate::json::{Malformed, Read, Reader, Token};
    fn text<'a>(r: &mut Reader<'a>) -> Read<Option<Text<'a>>> {
        match r.peek()? {
            Token::Null => {
                r.literal()?;
                return Ok(None);
            }
            Token::String => {}
            _ => return Err(Malformed),
        }
        let text = match r.string()? {
            Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).map_err(|_| Malformed)?),
            Cow::Owned(b) => Cow::Owned(String::from_utf8(b).map_err(|_| Malformed)?),
        };
        Ok(Some(Text(text)))
    }
    let mut r = Reader::new(body);
    let mut fields = Fields::default();
    r.members(|r, key| {
        match key.as_ref() {
            b"model" => fields.model = text(r)?,
            b"name" => fields.name = text(r)?,
            b"stream" => {
                fields.stream = match r.literal()? {
                    Token::True => Some(true),
                    Token::False => Some(false),
                    _ => None,
                }
            }
            // The top-level object is level 1.
            _ => r.skip_checked(MAX_JSON_DEPTH - 1)?,
        }
        Ok(())
    })
    .ok()?;
    r.end().ok()?;
    Some(fields)
}

fn routing_facts(fields: Fields<'_>) -> Result<RequestFacts<'_>, BodyProblem> {
    let model = fields
        .model
        .or(fields.name)
        .map(|t| t.0)
        .filter(|m| !m.trim().is_empty())
        .ok_or(BodyProblem::NoModel)?;
    Ok(RequestFacts {
        model,
        stream: fields.stream,
    })
}

/// The body was larger than the configured limit.
#[derive(Debug)]
pub struct TooLarge;

/// Reads the whole request body, up to `limit` bytes.
///
/// A body over the limit is still read and dropped, up to four times the limit, so that the
/// client finishes sending and can read the 413; a client that sends more than that gets the
/// 413 on a connection the proxy closes mid-upload.
pub async fn read_body(
    session: &mut Session,
    limit: usize,
) -> pingora::Result<Result<Bytes, TooLarge>> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let drain_cap = limit.saturating_mul(4);
    if declared.is_some_and(|n| n > limit) {
        if declared.is_some_and(|n| n <= drain_cap) {
            discard(session, drain_cap).await?;
        }
        return Ok(Err(TooLarge));
    }
    // Most bodies arrive in one chunk: kept as it is, not copied.
    let mut first: Option<Bytes> = None;
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        let so_far = first.as_ref().map_or(0, Bytes::len) + body.len();
        if so_far + chunk.len() > limit {
            discard(session, drain_cap.saturating_sub(so_far + chunk.len())).await?;
            return Ok(Err(TooLarge));
        }
        match first.take() {
            None if body.is_empty() => first = Some(chunk),
            held => {
                if body.is_empty() {
                    body.reserve(declared.unwrap_or(0).max(so_far + chunk.len()));
                }
                if let Some(held) = held {
                    body.extend_from_slice(&held);
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
    Ok(Ok(first.unwrap_or_else(|| body.freeze())))
}

/// Reads a whole JSON object body, up to `limit` bytes; the error is the status and message
/// to answer with (413 past the limit, 400 for an empty or malformed body).
pub async fn read_json_body(
    session: &mut Session,
    limit: usize,
) -> pingora::Result<Result<serde_json::Value, (u16, String)>> {
    let body = match read_body(session, limit).await? {
        Ok(b) => b,
        Err(TooLarge) => {
            let message = format!("request body is larger than the proxy's limit of {limit} bytes");
            return Ok(Err((413, message)));
        }
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        let message = "the request body is empty; a JSON object is expected";
        return Ok(Err((400, message.to_owned())));
    }
    Ok(match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err((400, "the request body must be a JSON object".to_owned())),
        Err(e) => Err((400, format!("invalid JSON: {e}"))),
    })
}

/// Reads and drops up to `cap` more bytes of the request body.
async fn discard(session: &mut Session, cap: usize) -> pingora::Result<()> {
    let mut seen = 0usize;
    while seen <= cap {
        match session.read_request_body().await? {
            Some(chunk) => seen += chunk.len(),
            None => break,
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn model_and_stream() {
        let f = facts(br#"{"model":"llama3.2:3b","messages":[{"role":"user","content":"hi"}],"stream":false}"#).unwrap();
        assert_eq!(f.model, "llama3.2:3b");
        assert_eq!(f.stream, Some(false));
        let f = facts(br#"{"messages":[],"model":"m"}"#).unwrap();
        assert_eq!(f.stream, None);
        assert_eq!(facts(br#"{"name":"m"}"#).unwrap().model, "m");
        // Borrowed from the body when it can be; an escaped name is still read right.
        assert!(matches!(
            facts(br#"{"model":"m"}"#).unwrap().model,
            Cow::Borrowed("m")
        ));
        assert_eq!(facts(br#"{"model":"a\u0062"}"#).unwrap().model, "ab");
    }

    #[test]
    fn problems() {
        assert!(matches!(
            facts(b"{not json"),
            Err(BodyProblem::Malformed(_))
        ));
        assert!(matches!(facts(b""), Err(BodyProblem::Malformed(_))));
        assert!(matches!(facts(br#"[1,2]"#), Err(BodyProblem::Malformed(_))));
        assert_eq!(facts(br#"{"prompt":"x"}"#), Err(BodyProblem::NoModel));
        assert_eq!(facts(br#"{"model":"  "}"#), Err(BodyProblem::NoModel));
        assert!(matches!(
            facts(br#"{"model":7}"#),
            Err(BodyProblem::Malformed(_))
        ));
    }

    #[test]
    fn depth_is_bounded_and_the_whole_body_is_checked() {
        let nested = |depth: usize| {
            let mut body = String::from(r#"{"model":"m","x":"#);
            body.push_str(&"[".repeat(depth));
            body.push_str(&"]".repeat(depth));
            body.push('}');
            body
        };
        // The object is level 1: `depth` arrays under it reach level depth + 1.
        assert!(facts(nested(MAX_JSON_DEPTH - 1).as_bytes()).is_ok());
        let too_deep = nested(MAX_JSON_DEPTH);
        let deep = facts(too_deep.as_bytes());
        assert!(
            matches!(&deep, Err(BodyProblem::Malformed(why)) if why.contains("nested deeper than 100 levels")),
            "{deep:?}"
        );
        // 100,000 levels: refused without exhausting the stack.
        assert!(matches!(
            facts(nested(100_000).as_bytes()),
            Err(BodyProblem::Malformed(_))
        ));
        let objects = format!(
            r#"{{"model":"m","o":{}1{}}}"#,
            r#"{"a":"#.repeat(200),
            "}".repeat(200)
        );
        assert!(matches!(
            facts(objects.as_bytes()),
            Err(BodyProblem::Malformed(_))
        ));
        // Malformed after the routing fields is still malformed: the body is read to its end.
        assert!(matches!(
            facts(br#"{"model":"m","messages":[1,2,}"#),
            Err(BodyProblem::Malformed(_))
        ));
        assert!(matches!(
            facts(br#"{"model":"m"} trailing"#),
            Err(BodyProblem::Malformed(_))
        ));
        // Realistic nesting and every JSON type pass.
        let ok = br#"{"model":"m","stream":true,"format":{"type":"object","properties":{"a":{"type":"array","items":{"type":"number"}}}},"options":{"temperature":0.5,"seed":-1,"stop":null,"x":[true,false,1e3,"s\n"]}}"#;
        let f = facts(ok).unwrap();
        assert_eq!((&*f.model, f.stream), ("m", Some(true)));
    }

    /// What serde_json alone makes of a body: the reference the fast path must agree with.
    fn by_serde(body: &[u8]) -> Result<RequestFacts<'_>, BodyProblem> {
        let fields: Fields<'_> = serde_json::from_slice(body)
            .map_err(|e| BodyProblem::Malformed(format!("invalid JSON: {e}")))?;
        routing_facts(fields)
    }

    /// Bodies made of what requests are made of, and of what breaks them.
    fn body() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        // JSON's punctuation, a byte at a time.
        const PUNCTUATION: &[u8] = b"{}[],: \"";
        const PARTS: &[&str] = &[
            "\"model\":",
            "\"name\":",
            "\"stream\":",
            "\"model\":\"m\"",
            "\"mod\\u0065l\":\"e\"",
            "\"stream\":true",
            "\"stream\":null",
            "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]",
            "\"x\":",
            "\"é\"",
            "\"\\ud800\"",
            "\"\\n\"",
            "1",
            "-0.5e3",
            "1e400",
            "01",
            "true",
            "null",
            "nul",
            "[[[[[[[[[[",
            "]]]]]]]]]]",
            "{\"a\":{\"b\":",
            "}}",
        ];
        let part = prop_oneof![
            4 => proptest::sample::select(PUNCTUATION).prop_map(|c| vec![c]),
            6 => proptest::sample::select(PARTS).prop_map(|s| s.as_bytes().to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 1..3),
        ];
        proptest::collection::vec(part, 0..30).prop_map(|parts| {
            let mut body = b"{".to_vec();
            body.extend(parts.concat());
            body
        })
    }

    /// Well-formed objects of any shape, with the routing fields' names among the keys.
    fn object() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        use serde_json::Value;
        let key = prop_oneof![
            Just("model".to_owned()),
            Just("name".to_owned()),
            Just("stream".to_owned()),
            "[a-z\u{e9}\u{1f999}\\n\"]{0,6}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-z \u{e9}\u{1f999}\\n\"\\\\]{0,8}".prop_map(Value::String),
        ];
        let value = leaf.prop_recursive(6, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::vec((key.clone(), inner), 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        proptest::collection::vec(
            (
                prop_oneof![Just("model"), Just("name"), Just("stream"), Just("x")],
                value,
            ),
            0..6,
        )
        .prop_map(|members| {
            // Written by hand so that a repeated key stays repeated.
            let members: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("\"{k}\": {v}"))
                .collect();
            format!("{{{}}}", members.join(", ")).into_bytes()
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        #[test]
        fn well_formed_bodies_read_as_serde_reads_them(body in object()) {
            let reference = by_serde(&body);
            // Where serde_json reads the fields, so does the fast path: serde_json is not asked.
            if !matches!(reference, Err(BodyProblem::Malformed(_))) {
                proptest::prop_assert!(read_fields(&body).is_some());
            }
            proptest::prop_assert_eq!(facts(&body), reference);
        }

        #[test]
        fn the_fast_path_agrees_with_serde(body in body(), depth in 95usize..105) {
            let nested = format!(
                r#"{{"model":"m","x":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            for body in [body, nested.into_bytes()] {
                let fast = facts(&body);
                let reference = by_serde(&body);
                proptest::prop_assert_eq!(&fast, &reference, "{}", String::from_utf8_lossy(&body));
                if read_fields(&body).is_some() {
                    proptest::prop_assert!(reference.is_ok() || reference == Err(BodyProblem::NoModel));
                }
            }
        }
    }

    #[test]
    fn header_size_counts_the_request_line_and_every_field() {
        let mut header = RequestHeader::build("POST", b"/api/chat", None).unwrap();
        header
            .insert_header("content-type", "application/json")
            .unwrap();
        assert_eq!(header_size_over(&header, 1 << 16), None);
        let small = header_size_over(&header, 0).unwrap();
        assert_eq!(
            small,
            "POST".len()
                + "/api/chat".len()
                + 12
                + "content-type".len()
                + "application/json".len()
                + 4
        );
        header
            .insert_header("x-big", "a".repeat(200 * 1024))
            .unwrap();
        assert!(header_size_over(&header, 64 * 1024).unwrap() > 200 * 1024);
    }
}
