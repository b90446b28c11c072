//! What an answer is stored under: a SHA-256 of the request's scope, deployment, path,
//! `api-version` and its JSON body in canonical form (keys sorted, no insignificant
//! whitespace), so two bodies that differ only in key order or spacing share an entry. For the
//! semantic lookup, the same of the body with its user turns' text taken out (the bucket its
//! near-duplicates share), and that text.

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
    /// The digest of this prefix and `body`, under `kind` (the exact key, or a bucket).
    fn digest(&self, kind: &str, body: &Value) -> Digest {
        let mut canonical = Vec::with_capacity(256);
        write_canonical(body, &mut canonical);
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
        h.update(&canonical);
        h.finalize().into()
    }

    /// The exact key of a request with this prefix and `body`.
    pub fn exact(&self, body: &Value) -> Digest {
        self.digest("exact/1", body)
    }

    /// The semantic bucket of a chat request with this prefix and `body`, and the text of its
    /// user turns; `None` when it has no user text, or a user turn holds more than text (an
    /// image, a file, audio: text alone cannot say two such prompts are the same).
    ///
    /// Every user turn is embedded (joined by blank lines), not only the last: the bucket
    /// already holds the system prompt, the assistant turns and the parameters, but two
    /// conversations may share those and differ in an earlier user turn, and answering the
    /// last turn alike for both ("and in French?") would be wrong. Precision over reach.
    pub fn semantic(&self, body: &Value) -> Option<(Digest, String)> {
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
        Some((self.digest("semantic/1", &rest), text))
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

/// Writes `v` as compact JSON with every object's keys in byte order: the canonical form the
/// keys are digests of. Public so that the fuzz target `cache_key` can check it reads back as
/// the same value and is its own canonical form.
///
/// NOTE: by hand: serde_json writes objects in their own order (`preserve_order` is on for the
/// request path's rewrites), and no JSON canonicalisation crate is both kept up and needed for
/// more than this walk. Strings and numbers are written by serde_json itself.
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
mod tests {
    use super::*;

    const AT: Prefix = Prefix {
        scope: "team-a",
        deployment: "gpt-4o",
        path: "/openai/deployments/gpt-4o/chat/completions",
        api_version: "2024-10-21",
    };

    fn json(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn key_order_and_whitespace_do_not_change_the_key() {
        let a = json(r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0}"#);
        let b = json("{ \"temperature\" : 0,\n \"messages\" : [ { \"content\":\"hi\", \"role\":\"user\" } ] }");
        assert_eq!(AT.exact(&a), AT.exact(&b));
        let mut canonical = Vec::new();
        write_canonical(&b, &mut canonical);
        assert_eq!(
            String::from_utf8(canonical).unwrap(),
            r#"{"messages":[{"content":"hi","role":"user"}],"temperature":0}"#
        );
    }

    #[test]
    fn every_part_of_the_prefix_and_body_changes_the_key() {
        let body = json(r#"{"messages":[{"role":"user","content":"hi"}]}"#);
        let key = AT.exact(&body);
        let other = json(r#"{"messages":[{"role":"user","content":"hi!"}]}"#);
        assert_ne!(key, AT.exact(&other));
        for changed in [
            Prefix {
                scope: "team-b",
                ..AT
            },
            Prefix { scope: "", ..AT },
            Prefix {
                deployment: "gpt-4o-mini",
                ..AT
            },
            Prefix {
                path: "/openai/deployments/gpt-4o/completions",
                ..AT
            },
            Prefix {
                api_version: "2025-01-01",
                ..AT
            },
        ] {
            assert_ne!(key, changed.exact(&body), "{changed:?}");
        }
        // Where one part ends counts: "ab" + "c" is not "a" + "bc".
        let (x, y) = (
            Prefix {
                scope: "ab",
                deployment: "c",
                ..AT
            },
            Prefix {
                scope: "a",
                deployment: "bc",
                ..AT
            },
        );
        assert_ne!(x.exact(&body), y.exact(&body));
    }

    #[test]
    fn the_semantic_bucket_is_the_request_without_its_user_text() {
        let a = json(
            r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Capital of France?"}],"temperature":0}"#,
        );
        let b = json(
            r#"{"temperature":0,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"capital of france"}]}]}"#,
        );
        let (bucket_a, text_a) = AT.semantic(&a).unwrap();
        let (bucket_b, text_b) = AT.semantic(&b).unwrap();
        assert_eq!(bucket_a, bucket_b);
        assert_eq!(
            (text_a.as_str(), text_b.as_str()),
            ("Capital of France?", "capital of france")
        );
        assert_ne!(bucket_a, AT.exact(&a), "a bucket is not an exact key");
        let system = json(
            r#"{"messages":[{"role":"system","content":"Be long."},{"role":"user","content":"Capital of France?"}],"temperature":0}"#,
        );
        assert_ne!(
            AT.semantic(&system).unwrap().0,
            bucket_a,
            "other non-user turns"
        );
        let turns = json(
            r#"{"messages":[{"role":"user","content":"One"},{"role":"assistant","content":"A"},{"role":"user","content":"Two"}]}"#,
        );
        assert_eq!(AT.semantic(&turns).unwrap().1, "One\n\nTwo");
        let image = json(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"What is this?"},{"type":"image_url","image_url":{"url":"data:"}}]}]}"#,
        );
        assert!(AT.semantic(&image).is_none(), "an image is more than text");
        assert!(AT.semantic(&json(r#"{"prompt":"hi"}"#)).is_none());
    }
}
