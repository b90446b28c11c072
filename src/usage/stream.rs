//! `usage.include_in_streams`: asking a streamed completion for its usage where the client did
//! not ([`ask_for_stream_usage`]), and taking the usage event that adds out of what that client
//! gets ([`UsageEventFilter`]). The tokens themselves are read by [`super::UsageReader`].

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::Deserialize;

/// Takes out of a chat completions stream the one event that `stream_options.include_usage`
/// adds (`choices: []` with a `usage`), for a client that did not ask for it: the proxy asked
/// (`usage.include_in_streams`), so that the tokens are counted.
///
/// Works line by line. A chunk that ends on a line end and mentions no empty `choices` (every
/// chunk but the usage one) passes as it is, not copied; only a line cut by a chunk's end is
/// held until the next chunk completes it.
#[derive(Debug, Default)]
pub struct UsageEventFilter {
    /// The start of a line the last chunk cut off.
    partial: Vec<u8>,
    /// The usage line was just taken out: the blank line that ends its event goes too.
    dropped: bool,
}

/// What marks a candidate line: only the usage chunk has no choices.
const NO_CHOICES: [&[u8]; 2] = [b"\"choices\":[]", b"\"choices\": []"];

impl UsageEventFilter {
    /// The part of `chunk` the client gets.
    pub fn filter(&mut self, chunk: Bytes) -> Bytes {
        let whole_lines = self.partial.is_empty() && chunk.last() == Some(&b'\n');
        let candidate = NO_CHOICES.iter().any(|m| memmem::find(&chunk, m).is_some());
        if whole_lines && !candidate && !self.dropped {
            return chunk;
        }
        let mut out = BytesMut::with_capacity(chunk.len() + self.partial.len());
        let mut rest = &chunk[..];
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let line = &rest[..=end];
            rest = &rest[end + 1..];
            if self.partial.is_empty() {
                self.pass(line, &mut out);
            } else {
                let mut joined = std::mem::take(&mut self.partial);
                joined.extend_from_slice(line);
                self.pass(&joined, &mut out);
            }
        }
        self.partial.extend_from_slice(rest);
        out.freeze()
    }

    /// Whatever is left when the stream ends (a last line without its line end).
    pub fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.partial))
    }

    fn pass(&mut self, line: &[u8], out: &mut BytesMut) {
        let blank = line.iter().all(|&b| b == b'\r' || b == b'\n');
        if self.dropped && blank {
            self.dropped = false;
            return;
        }
        self.dropped = false;
        if is_usage_event(line) {
            self.dropped = true;
            return;
        }
        out.extend_from_slice(line);
    }
}

/// Whether this stream line is the usage-only chunk: `data: {"choices": [], "usage": {...}}`.
fn is_usage_event(line: &[u8]) -> bool {
    let Some(data) = line.strip_prefix(b"data:") else {
        return false;
    };
    if !NO_CHOICES.iter().any(|m| memmem::find(data, m).is_some()) {
        return false;
    }
    #[derive(Deserialize)]
    struct Chunk {
        choices: Vec<serde::de::IgnoredAny>,
        usage: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Chunk>(data.trim_ascii())
        .is_ok_and(|c| c.choices.is_empty() && c.usage.is_some())
}

/// Whether the query's `api-version` (a date, maybe with `-preview`) is one that knows
/// `stream_options`.
fn knows_stream_options(query: Option<&str>) -> bool {
    const FIRST: &str = "2024-09-01";
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("api-version="))
        .and_then(|v| v.get(..FIRST.len()))
        .is_some_and(|date| date.bytes().all(|b| b.is_ascii_digit() || b == b'-') && date >= FIRST)
}

/// What [`ask_for_stream_usage`] did to a request body.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamUsage {
    /// Not a streamed completion, or the client asked for usage itself: sent as it came.
    AsSent,
    /// `stream_options.include_usage` was added: the usage event is the proxy's to take out.
    Added(Bytes),
}

/// For a streamed chat completion (or completion) whose body does not set
/// `stream_options.include_usage: true`, the body with it set, other keys kept in their order.
/// `query` is the request's query string: Azure knows `stream_options` from `api-version`
/// 2024-09-01-preview on (and always on `/openai/v1/`), and refuses it before that, so older
/// versions are sent as they came.
pub fn ask_for_stream_usage(path: &str, query: Option<&str>, body: &[u8]) -> StreamUsage {
    if !path.ends_with("/completions")
        || path.contains("/extensions/")
        || memmem::find(body, b"\"stream\"").is_none()
        || !(path.starts_with("/openai/v1/") || knows_stream_options(query))
    {
        return StreamUsage::AsSent;
    }
    let Ok(serde_json::Value::Object(mut request)) = serde_json::from_slice(body) else {
        return StreamUsage::AsSent;
    };
    if request.get("stream") != Some(&serde_json::Value::Bool(true)) {
        return StreamUsage::AsSent;
    }
    let options = request
        .entry("stream_options")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let serde_json::Value::Object(options) = options else {
        return StreamUsage::AsSent;
    };
    if options.get("include_usage") == Some(&serde_json::Value::Bool(true)) {
        return StreamUsage::AsSent;
    }
    options.insert("include_usage".into(), true.into());
    match serde_json::to_vec(&request) {
        Ok(body) => StreamUsage::Added(body.into()),
        Err(_) => StreamUsage::AsSent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_event_is_taken_out_and_nothing_else() {
        let events = [
            "data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
            "data: {\"id\":\"1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
            "data: [DONE]\n\n",
        ];
        let whole: String = events.concat();
        let expected = format!("{}{}", events[0], events[2]);
        // Every way of cutting the stream in two gives the same bytes to the client.
        for cut in 0..whole.len() {
            let mut f = UsageEventFilter::default();
            let mut out = Vec::new();
            out.extend_from_slice(&f.filter(Bytes::copy_from_slice(&whole.as_bytes()[..cut])));
            out.extend_from_slice(&f.filter(Bytes::copy_from_slice(&whole.as_bytes()[cut..])));
            out.extend_from_slice(&f.finish());
            assert_eq!(String::from_utf8(out).unwrap(), expected, "cut at {cut}");
        }
        // A chunk without the usage event passes as it is.
        let mut f = UsageEventFilter::default();
        let first = Bytes::from_static(events[0].as_bytes());
        assert_eq!(
            f.filter(first.clone()).as_ptr(),
            first.as_ptr(),
            "not copied"
        );
    }

    #[test]
    fn stream_usage_is_asked_for_only_where_missing() {
        let path = "/openai/deployments/d/chat/completions";
        let query = Some("api-version=2024-10-21");
        let added = |body: &str| match ask_for_stream_usage(path, query, body.as_bytes()) {
            StreamUsage::Added(b) => Some(String::from_utf8(b.to_vec()).unwrap()),
            StreamUsage::AsSent => None,
        };
        assert_eq!(
            added(r#"{"messages":[],"stream":true}"#).as_deref(),
            Some(r#"{"messages":[],"stream":true,"stream_options":{"include_usage":true}}"#)
        );
        assert_eq!(
            added(r#"{"stream":true,"stream_options":{"include_usage":false,"x":1}}"#).as_deref(),
            Some(r#"{"stream":true,"stream_options":{"include_usage":true,"x":1}}"#)
        );
        assert_eq!(
            added(r#"{"stream":true,"stream_options":{"include_usage":true}}"#),
            None
        );
        assert_eq!(added(r#"{"stream":false}"#), None);
        assert_eq!(added(r#"{"messages":[]}"#), None);
        assert_eq!(added("not json, \"stream\""), None);
        let stream = br#"{"stream":true}"#;
        assert_eq!(
            ask_for_stream_usage("/openai/deployments/d/embeddings", query, stream),
            StreamUsage::AsSent
        );
        // Versions before stream_options get the body as it came; v1 has no api-version.
        for old in [
            "api-version=2024-06-01",
            "api-version=2024-08-01-preview",
            "x=1",
            "",
        ] {
            assert_eq!(
                ask_for_stream_usage(path, Some(old), stream),
                StreamUsage::AsSent,
                "{old}"
            );
        }
        assert_eq!(
            ask_for_stream_usage(path, None, stream),
            StreamUsage::AsSent
        );
        for new in [
            "api-version=2024-09-01-preview",
            "a=b&api-version=2025-04-01-preview",
        ] {
            assert_ne!(
                ask_for_stream_usage(path, Some(new), stream),
                StreamUsage::AsSent,
                "{new}"
            );
        }
        assert_ne!(
            ask_for_stream_usage("/openai/v1/chat/completions", None, stream),
            StreamUsage::AsSent
        );
    }
}
