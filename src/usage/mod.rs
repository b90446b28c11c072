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

pub mod cost;
mod stream;

pub use stream::UsageEventFilter;

use bytes::{Bytes, BytesMut};
use std::sync::LazyLock;

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
    /// The answer's `model`, when it is looked for (`Some`, with traces on), once found.
    model: Option<Option<Box<str>>>,
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
        Some(UsageReader {
            body,
            found: None,
            model: None,
        })
    }

    /// The same reader, also reading the model the answer names (for a trace's
    /// `gen_ai.response.model`): a stream's first event that names one, a JSON answer's last
    /// `"model"` in its end (Azure writes its keys in order: `model` after `choices`).
    pub fn reading_model(mut self) -> Self {
        self.model = Some(None);
        self
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
                    if let Some(wanted @ None) = &mut self.model {
                        *wanted = model_in(line);
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
        self.finish_with_model().0
    }

    /// The usage of the complete body, and the model it named, where it was looked for.
    pub fn finish_with_model(self) -> (Option<Usage>, Option<Box<str>>) {
        let wanted = self.model.is_some();
        match self.body {
            Body::Json { tail, len } => {
                let joined;
                let end: &[u8] = match &tail[..] {
                    [one] => one,
                    pieces => {
                        let mut all = BytesMut::with_capacity(len);
                        for p in pieces {
                            all.extend_from_slice(p);
                        }
                        joined = all;
                        &joined
                    }
                };
                let model = wanted.then(|| last_model_in(end)).flatten();
                (json_usage(end), model)
            }
            Body::Events { line, cut } => {
                let usage = line_usage(&line, cut).or(self.found);
                let model = self
                    .model
                    .flatten()
                    .or_else(|| wanted.then(|| model_in(&line)).flatten());
                (usage, model)
            }
        }
    }
}

/// `"model"`, the key of the model an answer names.
const MODEL: &[u8] = b"\"model\"";

/// Searchers for [`MODEL`], built once (as [`FIND_KEY`]'s).
static FIND_MODEL: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(MODEL));
static RFIND_MODEL: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new(MODEL));

/// The model the first `"model": "..."` in `bytes` names.
fn model_in(bytes: &[u8]) -> Option<Box<str>> {
    let at = FIND_MODEL.find(bytes)?;
    model_after(&bytes[at + MODEL.len()..])
}

/// The model the last `"model": "..."` in `bytes` names.
fn last_model_in(bytes: &[u8]) -> Option<Box<str>> {
    let at = RFIND_MODEL.rfind(bytes)?;
    model_after(&bytes[at + MODEL.len()..])
}

/// The string after a `"model"` key: `: "gpt-4o-2024-08-06"`. Model names have no escapes; a
/// value that is not a short plain string is none.
fn model_after(rest: &[u8]) -> Option<Box<str>> {
    let rest = rest
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    let rest = rest.strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', rest)?;
    let name = &rest[..end];
    // Azure's first chunk of a stream (its prompt filter results) says `"model": ""`.
    let plain = !name.is_empty()
        && name.len() <= 128
        && name
            .iter()
            .all(|b| (b' '..=b'~').contains(b) && *b != b'\\');
    plain
        .then(|| std::str::from_utf8(name).ok().map(Box::from))
        .flatten()
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

/// `"usage"`, the key looked for.
const KEY: &[u8] = b"\"usage\"";

/// Searchers for [`KEY`], built once: `memmem::find` builds one a call, which costs more than
/// the search on an answer's end.
static FIND_KEY: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(KEY));
static RFIND_KEY: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new(KEY));

/// The last `"usage": {...}` object in the end of a JSON body that parses as usage (a
/// `"usage"` in the client's own `metadata` after it is passed over).
fn json_usage(tail: &[u8]) -> Option<Usage> {
    let mut before = tail;
    while let Some(at) = RFIND_KEY.rfind(before) {
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
    let mut rest = data;
    while let Some(at) = FIND_KEY.find(rest) {
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
mod tests;
