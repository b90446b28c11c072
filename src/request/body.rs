//! [`BodyFacts`]: what the proxy reads of a JSON request body, in one pass with serde and no
//! tree built: the top-level fields it acts on, where `model` and `stream_options` sit (so a
//! rewrite splices bytes instead of parsing again), and the stateful objects named at any depth.
//!
//! NOTE: a hand-written serde visitor rather than a derived struct or a `serde_json::Value`: a
//! derived struct cannot look for object ids at any depth, and a `Value` allocates the whole
//! tree of a body that may be megabytes of conversation.

use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::objects::named::{self, MAX_DEPTH};

/// The top-level fields of a JSON object body the proxy reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BodyFacts {
    /// `model`, when it is a string given once, and the bytes of its value.
    pub model: Option<(String, Range<usize>)>,
    /// `model` is given more than once, or is not a string: a backend might read another.
    pub model_unreadable: bool,
    /// `stream: true`.
    pub stream: bool,
    /// `max_completion_tokens`, `max_tokens` and `max_output_tokens`, where they are counts.
    pub max_completion_tokens: Option<u64>,
    pub max_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
    /// The bytes of the `stream_options` value.
    pub stream_options: Option<Range<usize>>,
    /// `store`, where it is a boolean.
    pub store: Option<bool>,
    /// `previous_response_id`, where it is a string.
    pub previous_response_id: Option<String>,
    /// The stateful objects named (`file_id`, `thread_id`, ... at any depth), first seen first.
    pub objects: SmallVec<[String; 2]>,
    /// How many top-level keys the object has.
    pub keys: usize,
}

impl BodyFacts {
    /// The facts of `body`, or `None` when it is not one JSON object.
    pub fn read(body: &[u8]) -> Option<BodyFacts> {
        let mut facts = BodyFacts::default();
        let mut de = serde_json::Deserializer::from_slice(body);
        let top = Top {
            facts: &mut facts,
            body,
        };
        de::Deserializer::deserialize_map(&mut de, top).ok()?;
        de.end().ok()?;
        Some(facts)
    }

    /// The most tokens the answer may have: `max_completion_tokens`, else `max_tokens`, else
    /// the Responses API's `max_output_tokens`.
    pub fn completion_cap(&self) -> Option<u64> {
        self.max_completion_tokens
            .or(self.max_tokens)
            .or(self.max_output_tokens)
    }

    fn name(&mut self, id: &str) {
        named::push_id(&mut self.objects, id);
    }
}

/// The top-level keys read; the rest are walked for object ids.
enum Key {
    Model,
    Stream,
    MaxCompletionTokens,
    MaxTokens,
    MaxOutputTokens,
    StreamOptions,
    Store,
    PreviousResponseId,
    /// A key whose value names objects (`file_id`, `thread_id`, ...).
    Names,
    /// A client's free-form tags: nothing in them names an object.
    Metadata,
    Other,
}

impl Key {
    fn of(key: &str) -> Key {
        match key {
            "model" => Key::Model,
            "stream" => Key::Stream,
            "max_completion_tokens" => Key::MaxCompletionTokens,
            "max_tokens" => Key::MaxTokens,
            "max_output_tokens" => Key::MaxOutputTokens,
            "stream_options" => Key::StreamOptions,
            "store" => Key::Store,
            "previous_response_id" => Key::PreviousResponseId,
            "metadata" => Key::Metadata,
            k if named::BODY_KEYS.contains(&k) => Key::Names,
            _ => Key::Other,
        }
    }
}

/// Reads a key without allocating (an escaped key is unescaped by serde_json into a buffer).
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(Key::of(key))
    }
}

/// The top-level object.
struct Top<'f, 'b> {
    facts: &'f mut BodyFacts,
    body: &'b [u8],
}

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let facts = self.facts;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            facts.keys += 1;
            match key {
                Key::Model => {
                    let raw: &RawValue = map.next_value()?;
                    let span = span(self.body, raw);
                    match serde_json::from_str::<String>(raw.get()) {
                        Ok(model) if facts.model.is_none() && !facts.model_unreadable => {
                            facts.model = Some((model, span))
                        }
                        _ => {
                            facts.model = None;
                            facts.model_unreadable = true;
                        }
                    }
                }
                Key::Stream => facts.stream = map.next_value_seed(Loose)?.bool() == Some(true),
                Key::MaxCompletionTokens => {
                    facts.max_completion_tokens = map.next_value_seed(Loose)?.count()
                }
                Key::MaxTokens => facts.max_tokens = map.next_value_seed(Loose)?.count(),
                Key::MaxOutputTokens => {
                    facts.max_output_tokens = map.next_value_seed(Loose)?.count()
                }
                Key::StreamOptions => {
                    let raw: &RawValue = map.next_value()?;
                    facts.stream_options = Some(span(self.body, raw));
                }
                Key::Store => facts.store = map.next_value_seed(Loose)?.bool(),
                Key::PreviousResponseId => {
                    if let Scalar::Str(id) = map.next_value_seed(Loose)? {
                        facts.name(&id);
                        facts.previous_response_id = Some(id);
                    }
                }
                Key::Names => map.next_value_seed(Ids { facts })?,
                Key::Metadata => {
                    map.next_value::<IgnoredAny>()?;
                }
                Key::Other => map.next_value_seed(Walk { facts, depth: 1 })?,
            }
        }
        Ok(())
    }
}

/// The bytes of `raw` within `body` (it borrows from it).
fn span(body: &[u8], raw: &RawValue) -> Range<usize> {
    let start = (raw.get().as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
    start..start + raw.get().len()
}

/// The visits of the scalars a visitor passes over (serde's defaults refuse them).
macro_rules! ignore_scalars {
    () => {
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
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    };
}

/// A value of any shape, walked for the keys that name objects, at most [`MAX_DEPTH`] deep.
struct Walk<'f> {
    facts: &'f mut BodyFacts,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.depth > MAX_DEPTH {
            d.deserialize_ignored_any(IgnoredAny).map(|_| ())
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (facts, depth) = (self.facts, self.depth);
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key {
                Key::Names | Key::PreviousResponseId => map.next_value_seed(Ids { facts })?,
                Key::Metadata => {
                    map.next_value::<IgnoredAny>()?;
                }
                _ => map.next_value_seed(Walk {
                    facts: &mut *facts,
                    depth: depth + 1,
                })?,
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (facts, depth) = (self.facts, self.depth);
        while seq
            .next_element_seed(Walk {
                facts: &mut *facts,
                depth: depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    ignore_scalars!();
}

/// The value of a key that names objects: an id, or a list of them (anything else names none).
struct Ids<'f> {
    facts: &'f mut BodyFacts,
}

impl<'de> DeserializeSeed<'de> for Ids<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Ids<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object id or a list of them")
    }
    fn visit_str<E>(self, id: &str) -> Result<(), E> {
        self.facts.name(id);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element_seed(Loose)? {
            if let Scalar::Str(id) = item {
                self.facts.name(&id);
            }
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
    ignore_scalars!();
}

/// A scalar read loosely: a field of the wrong type is as good as absent, never an error.
#[derive(Debug, PartialEq, Eq)]
enum Scalar {
    Bool(bool),
    Count(u64),
    Str(String),
    Other,
}

impl Scalar {
    fn bool(&self) -> Option<bool> {
        match self {
            Scalar::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn count(&self) -> Option<u64> {
        match self {
            Scalar::Count(n) => Some(*n),
            _ => None,
        }
    }
}

struct Loose;

impl<'de> DeserializeSeed<'de> for Loose {
    type Value = Scalar;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Loose {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(b))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Scalar, E> {
        Ok(Scalar::Count(n))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_str<E>(self, s: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(s.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

#[cfg(test)]
mod tests;
