//! The frame schema read by serde_json: what `Frame::read` was first written as, kept to
//! check the hand-written reader against (`frame.rs` tests). Test builds only.

use super::*;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

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
