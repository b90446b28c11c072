//! What an answer is stored under: a SHA-256 of the request's scope, deployment, path,
//! `api-version` and its JSON body in canonical form (keys sorted, no insignificant
//! whitespace), so two bodies that differ only in key order or spacing share an entry. For the
//! semantic lookup, the same of the body with its user turns' text taken out (the bucket its
//! near-duplicates share), and that text.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// A SHA-256.
pub type Digest = [u8; 32];

/// What, besides its body, tells two cacheable requests apart.
#[derive(Clone, Copy, Debug)]
pub struct Prefix<'a> {
    /// The client's name with `scope: client`; empty with `scope: global`.
    pub scope: &'a str,
    pub deployment: &'a str,
    pub path: &'a str,
    /// The `api-version` query parameter; empty when there is none (`/openai/v1/`).
    pub api_version: &'a str,
}

impl Prefix<'_> {
    /// The digest of this prefix and the `canonical` body, under `kind` (the exact key, or a
    /// bucket).
    fn digest(&self, kind: &str, canonical: &[u8]) -> Digest {
        let mut h = Sha256::new();
        for part in [
            kind,
            self.scope,
            self.deployment,
            self.path,
            self.api_version,
        ] {
            // Each part ends with a byte none of them holds, so that no two differ only in
            // where one ends and the next begins.
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(canonical);
        h.finalize().into()
    }

    /// The exact key of a request with this prefix and `body`; `None` when the body is not
    /// JSON.
    pub fn exact(&self, body: &[u8]) -> Option<Digest> {
        Some(self.digest("exact/1", &canonical(body)?))
    }

    /// The semantic bucket of a chat request with this prefix and `body`, and the text of its
    /// user turns; `None` when it has no user text, or a user turn holds more than text (an
    /// image, a file, audio: text alone cannot say two such prompts are the same).
    ///
    /// Every user turn is embedded (joined by blank lines), not only the last: the bucket
    /// already holds the system prompt, the assistant turns and the parameters, but two
    /// conversations may share those and differ in an earlier user turn, and answering the
    /// last turn alike for both ("and in French?") would be wrong. Precision over reach.
    /// The bucket is also `embedded_by`'s, the deployment that embeds prompts: another model's
    /// vectors are never compared with its.
    pub fn semantic(&self, body: &Value, embedded_by: &str) -> Option<(Digest, String)> {
        let mut rest = body.clone();
        let messages = rest.get_mut("messages")?.as_array_mut()?;
        let mut text = String::new();
        for message in messages.iter_mut() {
            let Some(m) = message.as_object_mut() else {
                continue;
            };
            if m.get("role").and_then(Value::as_str) != Some("user") {
                continue;
            }
            let turn = user_text(m.get("content")?)?;
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            text.push_str(&turn);
            m.insert("content".into(), Value::Null);
        }
        if text.trim().is_empty() {
            return None;
        }
        let mut canonical = Vec::with_capacity(256);
        write_canonical(&rest, &mut canonical);
        let kind = format!("semantic/1/{embedded_by}");
        Some((self.digest(&kind, &canonical), text))
    }
}

/// The text of a user turn's `content`: a string, or text parts; `None` for anything else.
fn user_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                if part.get("type").and_then(Value::as_str) != Some("text") {
                    return None;
                }
                text.push_str(part.get("text")?.as_str()?);
            }
            Some(text)
        }
        _ => None,
    }
}

/// The JSON text `body` in canonical form: compact, every object's keys in byte order, strings
/// and numbers as they were written. The exact keys are digests of it. `None` (not cacheable)
/// when it is not JSON, when an object gives a key twice (a backend might read the first where
/// the key was made with the last), or when it nests deeper than [`MAX_DEPTH`].
///
/// NOTE: by hand, and without building a tree: each object's members are read as borrowed raw
/// values, sorted, and written in turn, so the body's strings (a conversation, megabytes of it)
/// are never copied or unescaped, and no number is rounded. Each level reads its part of the
/// body again, hence the bound on depth.
pub fn canonical(body: &[u8]) -> Option<Vec<u8>> {
    let raw: &RawValue = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(body.len());
    write_raw(raw, &mut out, 0).ok()?;
    Some(out)
}

/// The deepest a cacheable body nests (tool schemas nest a dozen levels or so).
pub const MAX_DEPTH: usize = 32;

/// Writes `raw`, at `depth`, in canonical form.
fn write_raw(raw: &RawValue, out: &mut Vec<u8>, depth: usize) -> serde_json::Result<()> {
    let text = raw.get().trim_matches([' ', '\t', '\n', '\r']);
    if depth >= MAX_DEPTH && matches!(text.as_bytes().first(), Some(b'{' | b'[')) {
        return Err(de::Error::custom("nested too deep to be cached"));
    }
    match text.as_bytes().first() {
        Some(b'{') => {
            let Members(mut members) = serde_json::from_str(text)?;
            members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            if members.windows(2).any(|pair| pair[0].0 == pair[1].0) {
                return Err(de::Error::custom("a key given twice"));
            }
            out.push(b'{');
            for (n, (key, value)) in members.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key.as_ref())?;
                out.push(b':');
                write_raw(value, out, depth + 1)?;
            }
            out.push(b'}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            out.push(b'[');
            for (n, item) in items.into_iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_raw(item, out, depth + 1)?;
            }
            out.push(b']');
        }
        _ => out.extend_from_slice(text.as_bytes()),
    }
    Ok(())
}

/// An object's members in the order written: keys borrowed unless they hold escapes, values raw.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> de::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MembersVisitor)
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Members<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
        let mut members = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            members.push((key, map.next_value()?));
        }
        Ok(Members(members))
    }
}

/// A key, borrowed from the body where it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Writes `v` as compact JSON with every object's keys in byte order: the canonical form of a
/// body read into a tree (the semantic bucket's, whose user text is taken out). Strings and
/// numbers are written by serde_json.
///
/// NOTE: by hand: serde_json writes objects in their own order (`preserve_order` is on for the
/// request path's rewrites), and no JSON canonicalisation crate is both kept up and needed for
/// more than this walk.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (n, (k, v)) in entries.into_iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

#[cfg(test)]
mod tests;
