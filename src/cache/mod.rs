//! The response cache (`cache`): which requests may be answered from it and under what key
//! ([`key`]), the answers kept ([`Entry`], read as they are relayed by a [`Capture`]), where
//! they are kept ([`Entries`]: in memory by [`local::LocalEntries`], or in Redis by
//! `crate::state::cache`), and the semantic index of chat prompts ([`semantic`]).
//!
//! Cached: a `POST` of chat completions, completions, embeddings, or a Responses request made
//! with `"store": false` and no `previous_response_id`, whose body is a JSON object naming no
//! stateful object, on a cached deployment. Never: anything else, answers other than 200,
//! compressed answers, answers larger than `cache.max_entry_bytes`, answers a fallback gave.

pub mod key;
pub mod local;
pub mod semantic;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{Cache, CacheScope};
use crate::request::{query, Request};
use crate::usage::Usage;
pub use key::Digest;

/// The cache of one process: its settings, where entries live, and the semantic index.
pub struct ResponseCache {
    pub config: Cache,
    pub entries: Arc<dyn Entries>,
    /// With `cache.semantic` (shared with the state task, which indexes other replicas'
    /// prompts).
    pub index: Option<Arc<semantic::SemanticIndex>>,
    /// Embeddings being made at once, at most ([`ResponseCache::EMBEDDINGS_AT_ONCE`]).
    pub embedding_slots: Arc<tokio::sync::Semaphore>,
}

impl ResponseCache {
    /// The most embeddings in flight: past it, a chat request misses the semantic lookup at
    /// once rather than queue (an embeddings deployment has its own quota).
    pub const EMBEDDINGS_AT_ONCE: usize = 64;

    /// The deployment that embeds prompts (a bucket is its own: another model's vectors are
    /// never compared with its), or none.
    fn embedded_by(&self) -> &str {
        let semantic = self.config.semantic.as_ref();
        semantic.map_or("", |s| s.embeddings_deployment.as_str())
    }

    pub fn new(
        config: Cache,
        entries: Arc<dyn Entries>,
        index: Option<Arc<semantic::SemanticIndex>>,
    ) -> Self {
        ResponseCache {
            config,
            entries,
            index,
            embedding_slots: Arc::new(tokio::sync::Semaphore::new(Self::EMBEDDINGS_AT_ONCE)),
        }
    }
}

/// What the cache answered a request, as its header `x-aoai-proxy-cache` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Looked {
    Hit,
    SemanticHit,
    Miss,
}

impl Looked {
    /// The header's value (and the access log's).
    pub fn as_str(self) -> &'static str {
        match self {
            Looked::Hit => "hit",
            Looked::SemanticHit => "semantic-hit",
            Looked::Miss => "miss",
        }
    }
}

/// A request the cache may answer: its key, its semantic bucket and user text (a chat
/// request, with `cache.semantic`), and what its `Cache-Control` allows.
#[derive(Debug)]
pub struct Cacheable {
    pub key: Digest,
    pub semantic: Option<(Digest, String)>,
    /// Not `Cache-Control: no-cache`.
    pub look_up: bool,
    /// Not `Cache-Control: no-store`.
    pub store: bool,
}

impl ResponseCache {
    /// Whether `client`'s request (`head`, read as `request`) may be answered from the
    /// cache, and under what key.
    pub fn cacheable(
        &self,
        head: &RequestHeader,
        request: &Request,
        client: Option<&str>,
    ) -> Option<Cacheable> {
        let path = head.uri.path();
        let kind = Operation::of(path)?;
        let deployment = request.deployment()?;
        let cached = self.config.deployments.as_ref();
        if !request.is_post() || cached.is_some_and(|d| !d.contains(deployment)) {
            return None;
        }
        let facts = request.facts()?;
        // What makes or uses a stored object is never answered from the cache: a stored chat
        // completion (`store: true`), and a Responses request unless it says `store: false`
        // (the API stores by default) and names no earlier response or conversation.
        let stateless = facts.store == Some(false)
            && facts.previous_response_id.is_none()
            && memchr::memmem::find(request.original(), b"\"conversation\"").is_none();
        let stores = match kind {
            Operation::Responses => !stateless,
            _ => facts.store == Some(true),
        };
        if stores || !request.objects().ids.is_empty() {
            return None;
        }
        let body = request.original();
        let api_version = query::param(head.uri.query(), "api-version");
        let prefix = key::Prefix {
            scope: match self.config.scope {
                CacheScope::Client => client.unwrap_or_default(),
                CacheScope::Global => "",
            },
            deployment,
            path,
            api_version: api_version.as_deref().unwrap_or_default(),
        };
        let key = prefix.exact(body)?;
        let (no_cache, no_store) = cache_control(head);
        // Only a chat request, with the semantic lookup on, is read into a tree.
        let semantic = match (kind, &self.index) {
            (Operation::Chat, Some(_)) if !no_cache => serde_json::from_slice(body)
                .ok()
                .and_then(|tree| prefix.semantic(&tree, self.embedded_by())),
            _ => None,
        };
        Some(Cacheable {
            key,
            semantic,
            look_up: !no_cache,
            store: !no_store,
        })
    }
}

/// The operations whose answers are cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Chat,
    Completions,
    Embeddings,
    Responses,
}

impl Operation {
    fn of(path: &str) -> Option<Operation> {
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Some(Operation::Chat)
        } else if path.ends_with("/completions") {
            Some(Operation::Completions)
        } else if path.ends_with("/embeddings") {
            Some(Operation::Embeddings)
        } else if path == "/openai/responses" || path == "/openai/v1/responses" {
            Some(Operation::Responses)
        } else {
            None
        }
    }
}

/// Whether the request's `Cache-Control` says `no-cache` (do not answer from the cache) and
/// `no-store` (do not keep the answer).
fn cache_control(head: &RequestHeader) -> (bool, bool) {
    let mut said = (false, false);
    for value in head.headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',').map(str::trim) {
            said.0 |= directive.eq_ignore_ascii_case("no-cache");
            said.1 |= directive.eq_ignore_ascii_case("no-store");
        }
    }
    said
}

/// An answer kept: the headers that matter to a client, its body as the client got it (a
/// stream's events, as they were sent), and the tokens it reported.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub usage: Option<Usage>,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub stored_ms: u64,
}

/// The answer's headers an entry keeps: the content type, and the ids that let a client or
/// Azure support find the request that made it. Not `x-ratelimit-*` (they spoke of one
/// instance at one moment) nor anything about the connection.
const KEPT: [&str; 4] = [
    "content-type",
    "x-request-id",
    "apim-request-id",
    "x-ms-region",
];

impl Entry {
    /// What it takes in memory, about.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum();
        self.body.len() + headers + 128
    }

    /// Whether it was stored `ttl` or longer before `now_ms`.
    pub fn expired(&self, ttl: Duration, now_ms: u64) -> bool {
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        now_ms >= self.stored_ms.saturating_add(ttl)
    }

    /// Whether it is a stream (its content type is `text/event-stream`).
    pub fn is_stream(&self) -> bool {
        self.headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.as_bytes().starts_with(b"text/event-stream"))
    }

    /// The body in the pieces it is written in, in order, as the client got it: a stream's
    /// whole events (each ending with its blank line), as many as fit in `max` bytes (an event
    /// larger than that alone); an answer that is not a stream whole. Slices of the body, not
    /// copies.
    ///
    /// A stored stream goes out as fast as the client reads it: one write for most answers,
    /// as the relay joins a burst of events into one write, rather than one write an event.
    pub fn pieces(&self, max: usize) -> impl Iterator<Item = Bytes> + '_ {
        let (body, stream) = (&self.body, self.is_stream());
        let mut at = 0;
        std::iter::from_fn(move || {
            if at >= body.len() {
                return None;
            }
            let mut end = at;
            while end < body.len() {
                let rest = &body[end..];
                let event = match stream {
                    true => memchr::memmem::find(rest, b"\n\n").map_or(rest.len(), |i| i + 2),
                    false => rest.len(),
                };
                if end > at && end + event - at > max {
                    break;
                }
                end += event;
            }
            let piece = body.slice(at..end);
            at = end;
            Some(piece)
        })
    }
}

/// Reads an answer as it is relayed, into the entry it would make: a 200, not compressed,
/// of at most `max` bytes.
pub struct Capture {
    headers: Vec<(String, String)>,
    body: BytesMut,
    max: usize,
    /// It grew past `max`: nothing is kept.
    over: bool,
}

impl Capture {
    /// A capture of the answer whose header is `head`, or `None` when it cannot be kept.
    pub fn begin(head: &ResponseHeader, max: usize) -> Option<Capture> {
        let h = &head.headers;
        if head.status != http::StatusCode::OK || h.contains_key(http::header::CONTENT_ENCODING) {
            return None;
        }
        let headers = KEPT
            .iter()
            .filter_map(|name| Some((name.to_string(), h.get(*name)?.to_str().ok()?.to_string())))
            .collect();
        Some(Capture {
            headers,
            body: BytesMut::new(),
            max,
            over: false,
        })
    }

    /// Takes in `bytes` as the client gets them.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.over || self.body.len() + bytes.len() > self.max {
            self.over = true;
            self.body = BytesMut::new();
            return;
        }
        self.body.extend_from_slice(bytes);
    }

    /// The entry of a complete answer that reported `usage`, stored at `now_ms` (Unix
    /// milliseconds).
    /// A stream is kept only when it ended as a whole answer does ([`ended_well`]).
    pub fn finish(self, usage: Option<Usage>, now_ms: u64) -> Option<Entry> {
        let entry = Entry {
            headers: self.headers,
            // Copied at its size: the buffer grew by doubling, and `max_bytes` counts lengths.
            body: Bytes::copy_from_slice(&self.body),
            usage,
            stored_ms: now_ms,
        };
        let whole = !entry.is_stream() || ended_well(&entry.body);
        (!self.over && whole).then_some(entry)
    }
}

/// Whether a stream's body ended as a complete answer does: its last event is `data: [DONE]`
/// (chat, completions) or `response.completed` (Responses), and none was an error (Azure may
/// end a 200 stream with one).
fn ended_well(body: &[u8]) -> bool {
    use memchr::memmem;
    let text = body.trim_ascii_end();
    let last = memmem::rfind(text, b"\n\n").map_or(text, |i| &text[i + 2..]);
    let done =
        last.starts_with(b"data: [DONE]") || memmem::find(last, b"response.completed").is_some();
    let error = body.starts_with(b"event: error")
        || memmem::find(body, b"\nevent: error").is_some()
        || memmem::find(body, b"data: {\"error\"").is_some();
    done && !error
}

/// Milliseconds since the Unix epoch now: the clock entries are stored and aged by, which
/// the replicas share.
pub fn unix_now_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where entries are kept: in this process, or in Redis for every replica.
#[async_trait]
pub trait Entries: Send + Sync {
    /// The entry under `key`, if one was stored less than `ttl` ago. A store that cannot be
    /// reached has none.
    async fn get(&self, key: &Digest, ttl: Duration) -> Option<Arc<Entry>>;
    /// Keeps `entry` under `key` for `ttl`.
    async fn put(&self, key: Digest, entry: Arc<Entry>, ttl: Duration);
    /// Tells the other replicas that share these entries of a prompt indexed here: in `bucket`,
    /// its answer under `entry`, and its embedding by `model`. Nothing where no other replica
    /// shares them.
    fn share_prompt(&self, _model: &str, _bucket: &Digest, _entry: &Digest, _vector: &[f32]) {}
}

#[cfg(test)]
mod tests;
