//! [`UsageReader`]: the tokens a backend reports for an answer, read from its body as the bytes
//! pass to the client, never holding them back and never keeping the body whole.
//!
//! - A JSON answer carries `usage` near its end: the reader keeps only the chunks that hold the
//!   last [`JSON_TAIL`] bytes (shared with the client's copy, not copied) and reads `usage` from
//!   them when the body is complete.
//! - A stream (`text/event-stream`) carries it in one event: the final chunk that
//!   `stream_options.include_usage` adds to chat completions, or the Responses API's
//!   `response.completed`. The reader looks only at `data:` lines that mention `"usage"`.
//!
//! Both shapes are read: `prompt_tokens`/`completion_tokens` (chat, completions, embeddings)
//! and `input_tokens`/`output_tokens` (Responses), with their cached and reasoning details.

mod stream;

pub use stream::UsageEventFilter;

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::Deserialize;
use smallvec::SmallVec;

/// How much of the end of a JSON answer is kept to find its `usage`.
pub const JSON_TAIL: usize = 16 << 10;

/// The longest stream line kept whole; of a longer one only the last [`JSON_TAIL`] bytes are.
const MAX_LINE: usize = 64 << 10;

/// The most chunks of a JSON answer's end held before they are joined.
const MAX_PIECES: usize = 16;

/// Tokens a backend reported for one answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    /// Prompt tokens served from the cache, where reported.
    pub cached: Option<u64>,
    /// Completion tokens spent on reasoning, where reported.
    pub reasoning: Option<u64>,
}

/// How an answer's body is laid out.
#[derive(Debug)]
enum Body {
    /// JSON: the chunks that hold its last [`JSON_TAIL`] bytes (shared with what goes to the
    /// client, not copied), and how many bytes they hold.
    Json {
        tail: SmallVec<[Bytes; 2]>,
        len: usize,
    },
    /// Server-sent events: the line not yet ended, and whether its start was cut off.
    Events { line: Vec<u8>, cut: bool },
}

/// Reads the usage of one answer from its body, chunk by chunk.
#[derive(Debug)]
pub struct UsageReader {
    body: Body,
    found: Option<Usage>,
}

impl UsageReader {
    /// A reader for an answer with these headers, or `None` when it cannot carry usage that
    /// can be read as it passes: not JSON or a stream, or compressed (`content-encoding`).
    pub fn for_answer(headers: &http::HeaderMap) -> Option<UsageReader> {
        let encoded = headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            return None;
        }
        let ct = headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes());
        Self::for_content_type(ct)
    }

    /// A reader for an answer of this `content-type`, or `None` when it cannot carry usage.
    fn for_content_type(content_type: Option<&[u8]>) -> Option<UsageReader> {
        let ct = content_type?;
        let is =
            |what: &[u8]| ct.len() >= what.len() && ct[..what.len()].eq_ignore_ascii_case(what);
        let body = if is(b"application/json") {
            Body::Json {
                tail: SmallVec::new(),
                len: 0,
            }
        } else if is(b"text/event-stream") {
            Body::Events {
                line: Vec::new(),
                cut: false,
            }
        } else {
            return None;
        };
        Some(UsageReader { body, found: None })
    }

    /// Takes in the next bytes of the body.
    pub fn feed(&mut self, chunk: &Bytes) {
        match &mut self.body {
            Body::Json { tail, len } => {
                tail.push(chunk.clone());
                *len += chunk.len();
                while tail.len() > 1 && *len - tail[0].len() >= JSON_TAIL {
                    *len -= tail.remove(0).len();
                }
                // Many small chunks: join them, so the list stays short.
                if tail.len() > MAX_PIECES {
                    let mut joined = BytesMut::with_capacity(*len);
                    for piece in tail.drain(..) {
                        joined.extend_from_slice(&piece);
                    }
                    tail.push(joined.freeze());
                }
            }
            Body::Events { line, cut } => {
                let mut rest = &chunk[..];
                while let Some(end) = memchr::memchr(b'\n', rest) {
                    line.extend_from_slice(&rest[..end]);
                    if let Some(u) = line_usage(line, *cut) {
                        self.found = Some(u);
                    }
                    line.clear();
                    *cut = false;
                    rest = &rest[end + 1..];
                }
                line.extend_from_slice(rest);
                // A long event (a whole response in `response.completed`): keep its end only.
                if line.len() > MAX_LINE {
                    line.drain(..line.len() - JSON_TAIL);
                    *cut = true;
                }
            }
        }
    }

    /// The usage of the complete body, if it reported one.
    pub fn finish(self) -> Option<Usage> {
        match self.body {
            Body::Json { tail, len } => match &tail[..] {
                [one] => json_usage(one),
                pieces => {
                    let mut joined = BytesMut::with_capacity(len);
                    for p in pieces {
                        joined.extend_from_slice(p);
                    }
                    json_usage(&joined)
                }
            },
            Body::Events { line, cut } => line_usage(&line, cut).or(self.found),
        }
    }
}

/// The usage in one stream line, read whole, or from its end when its start was `cut`.
fn line_usage(line: &[u8], cut: bool) -> Option<Usage> {
    if cut {
        json_usage(line)
    } else {
        event_usage(line)
    }
}

/// The usage in one stream line (`data: {...}`), when it has one.
fn event_usage(line: &[u8]) -> Option<Usage> {
    let data = line.strip_prefix(b"data:")?;
    // Chat chunks say `"usage":null` until the last: parse only the event that has one.
    if !has_usage_object(data) {
        return None;
    }
    #[derive(Deserialize)]
    struct Event {
        usage: Option<RawUsage>,
        response: Option<Response>,
    }
    #[derive(Deserialize)]
    struct Response {
        usage: Option<RawUsage>,
    }
    let event: Event = serde_json::from_slice(data.trim_ascii()).ok()?;
    event
        .usage
        .or(event.response.and_then(|r| r.usage))
        .map(RawUsage::into_usage)
}

/// The last `"usage": {...}` object in the end of a JSON body that parses as usage (a
/// `"usage"` in the client's own `metadata` after it is passed over).
fn json_usage(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let mut before = tail;
    while let Some(at) = memmem::rfind(before, KEY) {
        let value = tail[at + KEY.len()..]
            .trim_ascii_start()
            .strip_prefix(b":")
            .map(<[u8]>::trim_ascii_start);
        if let Some(value) = value.filter(|v| v.starts_with(b"{")) {
            let mut values = serde_json::Deserializer::from_slice(value).into_iter();
            if let Some(Ok(raw)) = values.next() {
                return Some(RawUsage::into_usage(raw));
            }
        }
        before = &tail[..at];
    }
    None
}

/// Whether `data` has `"usage"` followed by an object (not `null`).
fn has_usage_object(data: &[u8]) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    let mut rest = data;
    while let Some(at) = memmem::find(rest, KEY) {
        rest = &rest[at + KEY.len()..];
        let value = rest
            .trim_ascii_start()
            .strip_prefix(b":")
            .map(<[u8]>::trim_ascii_start);
        if value.is_some_and(|v| v.starts_with(b"{")) {
            return true;
        }
    }
    false
}

/// `usage` as either API writes it.
#[derive(Deserialize)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
    input_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
    output_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    reasoning_tokens: Option<u64>,
}

impl RawUsage {
    fn into_usage(self) -> Usage {
        Usage {
            prompt: self.prompt_tokens.or(self.input_tokens).unwrap_or(0),
            completion: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
            cached: self
                .prompt_tokens_details
                .or(self.input_tokens_details)
                .and_then(|d| d.cached_tokens),
            reasoning: self
                .completion_tokens_details
                .or(self.output_tokens_details)
                .and_then(|d| d.reasoning_tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `body` fed in pieces of `step` bytes.
    fn read(content_type: &str, body: &str, step: usize) -> Option<Usage> {
        let mut r = UsageReader::for_content_type(Some(content_type.as_bytes())).unwrap();
        for piece in body.as_bytes().chunks(step) {
            r.feed(&Bytes::copy_from_slice(piece));
        }
        r.finish()
    }

    const CHAT: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"message":{"content":"usage is a word"}}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#;

    #[test]
    fn a_json_answer_reports_its_usage_however_it_is_split() {
        let expected = Usage {
            prompt: 12,
            completion: 7,
            cached: Some(4),
            reasoning: Some(2),
        };
        for step in [1, 3, 64, 10_000] {
            assert_eq!(
                read("application/json", CHAT, step),
                Some(expected),
                "{step}"
            );
        }
        let embeddings =
            r#"{"object":"list","data":[],"usage":{"prompt_tokens":5,"total_tokens":5}}"#;
        assert_eq!(
            read("application/json; charset=utf-8", embeddings, 7),
            Some(Usage {
                prompt: 5,
                ..Usage::default()
            })
        );
        assert_eq!(
            read("application/json", r#"{"error":{"code":"429"}}"#, 5),
            None
        );
    }

    #[test]
    fn a_long_json_answer_keeps_only_its_end() {
        let long = format!(
            r#"{{"choices":[{{"message":{{"content":"{}"}}}}],"usage":{{"prompt_tokens":1,"completion_tokens":900}}}}"#,
            "x".repeat(1 << 20)
        );
        let mut r = UsageReader::for_content_type(Some(b"application/json")).unwrap();
        for piece in long.as_bytes().chunks(4096) {
            r.feed(&Bytes::copy_from_slice(piece));
            if let Body::Json { len, .. } = &r.body {
                assert!(*len <= JSON_TAIL + 4096, "the body was kept: {len}");
            }
        }
        assert_eq!(r.finish().map(|u| u.completion), Some(900));
    }

    #[test]
    fn a_chat_stream_reports_the_usage_chunk() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
             data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\n\
             data: [DONE]\n\n";
        for step in [1, 2, 17, 1000] {
            let u = read("text/event-stream", stream, step).unwrap();
            assert_eq!((u.prompt, u.completion), (9, 3), "{step}");
        }
        let without = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(read("text/event-stream", without, 5), None);
    }

    #[test]
    fn a_responses_stream_reports_response_completed() {
        let stream = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"usage\":null}}\n\n\
             event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"usage\"}\n\n\
             event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"usage\":{\"input_tokens\":20,\"output_tokens\":8,\"input_tokens_details\":{\"cached_tokens\":16},\"output_tokens_details\":{\"reasoning_tokens\":5}}}}\n\n";
        assert_eq!(
            read("text/event-stream", stream, 13),
            Some(Usage {
                prompt: 20,
                completion: 8,
                cached: Some(16),
                reasoning: Some(5),
            })
        );
    }

    #[test]
    fn a_usage_in_the_clients_metadata_is_passed_over() {
        let body = r#"{"id":"resp_1","usage":{"input_tokens":3,"output_tokens":2},"metadata":{"usage":"x"}}"#;
        assert_eq!(
            read("application/json", body, 10).map(|u| u.completion),
            Some(2)
        );
    }

    #[test]
    fn a_huge_event_still_reports_its_usage() {
        let event = format!(
            "data: {{\"type\":\"response.completed\",\"response\":{{\"instructions\":\"{}\",\"usage\":{{\"input_tokens\":7,\"output_tokens\":5}},\"metadata\":{{}}}}}}\n\n",
            "i".repeat(300 << 10)
        );
        let mut r = UsageReader::for_content_type(Some(b"text/event-stream")).unwrap();
        for piece in event.as_bytes().chunks(8192) {
            r.feed(&Bytes::copy_from_slice(piece));
            if let Body::Events { line, .. } = &r.body {
                assert!(line.len() <= MAX_LINE + 8192, "the event was kept whole");
            }
        }
        assert_eq!(r.finish().map(|u| (u.prompt, u.completion)), Some((7, 5)));
    }

    #[test]
    fn compressed_answers_are_not_read() {
        let mut h = http::HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        assert!(UsageReader::for_answer(&h).is_some());
        h.insert("content-encoding", "gzip".parse().unwrap());
        assert!(UsageReader::for_answer(&h).is_none());
    }

    #[test]
    fn other_answers_are_not_read() {
        assert!(UsageReader::for_content_type(Some(b"audio/mpeg")).is_none());
        assert!(UsageReader::for_content_type(None).is_none());
    }
}
