//! What the proxy changes in a request, from the facts it read once: the deployment renamed for
//! a backend that knows it by another name (in the path, the Realtime query or the body's
//! `model`), and `stream_options.include_usage` asked for (`usage.include_in_streams`). Body
//! changes are splices at the places [`BodyFacts`] located: the rest of the body goes on byte
//! for byte as the client sent it.

use std::ops::Range;
use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::memmem;

use super::body::BodyFacts;
use super::query;

const DEPLOYMENTS: &[u8] = b"/openai/deployments/";

/// Bytes to put in place of a range of the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Splice {
    pub at: Range<usize>,
    pub with: Vec<u8>,
}

/// `body` with `splices` (in any order, none overlapping) made.
pub fn apply(body: &[u8], splices: &mut [Splice]) -> Bytes {
    splices.sort_by_key(|s| s.at.start);
    let extra: usize = splices.iter().map(|s| s.with.len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + extra);
    let mut from = 0;
    for s in splices.iter() {
        out.extend_from_slice(&body[from..s.at.start]);
        out.extend_from_slice(&s.with);
        from = s.at.end;
    }
    out.extend_from_slice(&body[from..]);
    out.freeze()
}

/// `path_and_query` with the deployment segment renamed to `to`, or `None` when the path
/// names no deployment.
pub fn rename_in_path(path_and_query: &[u8], to: &str) -> Option<Vec<u8>> {
    let rest = path_and_query.strip_prefix(DEPLOYMENTS)?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let mut out = Vec::with_capacity(path_and_query.len() + to.len());
    out.extend_from_slice(DEPLOYMENTS);
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(&rest[end..]);
    Some(out)
}

/// `path_and_query` with query parameter `name` set to `to`.
pub fn rename_in_query(path_and_query: &[u8], name: &str, to: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(path_and_query).ok()?;
    let (path, q) = text.split_once('?')?;
    Some(format!("{path}?{}", query::with_param(q, name, to)).into_bytes())
}

/// The splice that sets the body's `model` to `to`, where the body has one.
pub fn rename_model(facts: &BodyFacts, to: &str) -> Option<Splice> {
    let (_, at) = facts.model.as_ref()?;
    let with = serde_json::to_vec(to).ok()?;
    Some(Splice {
        at: at.clone(),
        with,
    })
}

/// Whether the query's `api-version` (a date, maybe with `-preview`) is one that knows
/// `stream_options` (2024-09-01-preview on).
pub fn knows_stream_options(query: Option<&str>) -> bool {
    const FIRST: &str = "2024-09-01";
    query::param(query, "api-version").is_some_and(|v| {
        v.get(..FIRST.len()).is_some_and(|date| {
            date.bytes().all(|b| b.is_ascii_digit() || b == b'-') && date >= FIRST
        })
    })
}

/// The searcher for a body's `"stream"` key, built once (`memmem::find` builds one a call).
static STREAM_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"stream\""));

/// Whether a request on `path` with `query` and `body` is one that `usage.include_in_streams`
/// may ask for usage: a streamed chat completion or completion, on `/openai/v1/` or with an
/// `api-version` that knows `stream_options` (older versions refuse it). Reads no JSON.
pub fn may_ask_for_usage(path: &str, query: Option<&str>, body: &[u8]) -> bool {
    path.ends_with("/completions")
        && !path.contains("/extensions/")
        && STREAM_KEY.find(body).is_some()
        && (path.starts_with("/openai/v1/") || knows_stream_options(query))
}

/// The splice that sets `stream_options.include_usage: true` in a streamed body that does not
/// ask for usage (other `stream_options` kept in their order); `None` when the body is not
/// streamed, asks already, or has `stream_options` that are not an object.
pub fn ask_for_usage(body: &[u8], facts: &BodyFacts) -> Option<Splice> {
    if !facts.stream {
        return None;
    }
    let Some(at) = facts.stream_options.clone() else {
        // Before the object's closing brace.
        let end = body.iter().rposition(|&b| b == b'}')?;
        let comma = if facts.keys > 0 { "," } else { "" };
        let with = format!("{comma}\"stream_options\":{{\"include_usage\":true}}").into_bytes();
        return Some(Splice { at: end..end, with });
    };
    let serde_json::Value::Object(mut options) = serde_json::from_slice(&body[at.clone()]).ok()?
    else {
        return None;
    };
    if options.get("include_usage") == Some(&serde_json::Value::Bool(true)) {
        return None;
    }
    options.insert("include_usage".into(), true.into());
    let with = serde_json::to_vec(&options).ok()?;
    Some(Splice { at, with })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(body: &str) -> Option<String> {
        let facts = BodyFacts::read(body.as_bytes())?;
        let splice = ask_for_usage(body.as_bytes(), &facts)?;
        Some(String::from_utf8(apply(body.as_bytes(), &mut [splice]).to_vec()).unwrap())
    }

    #[test]
    fn stream_usage_is_asked_for_only_where_missing() {
        assert_eq!(
            asked(r#"{"messages":[],"stream":true}"#).as_deref(),
            Some(r#"{"messages":[],"stream":true,"stream_options":{"include_usage":true}}"#)
        );
        assert_eq!(
            asked(r#"{"stream":true,"stream_options":{"include_usage":false,"x":1}}"#).as_deref(),
            Some(r#"{"stream":true,"stream_options":{"include_usage":true,"x":1}}"#)
        );
        assert_eq!(
            asked("{\"stream\":true }\n").as_deref(),
            Some("{\"stream\":true ,\"stream_options\":{\"include_usage\":true}}\n")
        );
        assert_eq!(
            asked(r#"{"stream":true,"stream_options":{"include_usage":true}}"#),
            None
        );
        assert_eq!(asked(r#"{"stream":true,"stream_options":[1]}"#), None);
        assert_eq!(asked(r#"{"stream":false}"#), None);
        assert_eq!(asked(r#"{"messages":[]}"#), None);
        assert_eq!(asked("not json, \"stream\""), None);
    }

    #[test]
    fn only_streamed_completions_with_a_version_that_knows_it_are_asked() {
        let stream = br#"{"stream":true}"#;
        let chat = "/openai/deployments/d/chat/completions";
        assert!(may_ask_for_usage(
            chat,
            Some("api-version=2024-10-21"),
            stream
        ));
        assert!(!may_ask_for_usage(
            "/openai/deployments/d/embeddings",
            Some("api-version=2024-10-21"),
            stream
        ));
        for old in [
            "api-version=2024-06-01",
            "api-version=2024-08-01-preview",
            "x=1",
            "",
        ] {
            assert!(!may_ask_for_usage(chat, Some(old), stream), "{old}");
        }
        assert!(!may_ask_for_usage(chat, None, stream));
        for new in [
            "api-version=2024-09-01-preview",
            "a=b&api-version=2025-04-01-preview",
        ] {
            assert!(may_ask_for_usage(chat, Some(new), stream), "{new}");
        }
        assert!(may_ask_for_usage(
            "/openai/v1/chat/completions",
            None,
            stream
        ));
        assert!(!may_ask_for_usage(
            chat,
            Some("api-version=2024-10-21"),
            b"{}"
        ));
    }

    #[test]
    fn renaming_keeps_everything_else() {
        assert_eq!(
            rename_in_path(
                b"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
                "gpt-4o-eastus",
            )
            .unwrap(),
            b"/openai/deployments/gpt-4o-eastus/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            rename_in_path(b"/openai/deployments/d?x=1", "e").unwrap(),
            b"/openai/deployments/e?x=1"
        );
        assert_eq!(rename_in_path(b"/openai/v1/chat/completions", "e"), None);
        assert_eq!(
            rename_in_query(
                b"/openai/realtime?api-version=1&deployment=rt",
                "deployment",
                "rt-east"
            )
            .unwrap(),
            b"/openai/realtime?api-version=1&deployment=rt-east".to_vec()
        );
        let body = br#"{"stream":true,"model":"gpt-4o","messages":[]}"#;
        let facts = BodyFacts::read(body).unwrap();
        let splice = rename_model(&facts, "gpt-4o-eu").unwrap();
        assert_eq!(
            &apply(body, &mut [splice])[..],
            br#"{"stream":true,"model":"gpt-4o-eu","messages":[]}"#
        );
    }

    #[test]
    fn splices_are_made_in_order_of_place() {
        let body = br#"{"model":"a","stream":true}"#;
        let facts = BodyFacts::read(body).unwrap();
        let mut both = [
            ask_for_usage(body, &facts).unwrap(),
            rename_model(&facts, "b").unwrap(),
        ];
        assert_eq!(
            &apply(body, &mut both)[..],
            br#"{"model":"b","stream":true,"stream_options":{"include_usage":true}}"#
        );
    }
}
