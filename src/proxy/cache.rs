//! The response cache on the request path (`cache`): a cacheable request is looked up before
//! its client's limits are charged (a hit spends none of them) and answered from the entry
//! with no backend contacted; a miss goes on to its backends, and its answer, read as it is
//! relayed, is kept once the client has it ([`Gateway::keep`]), by a task of its own, so a slow
//! store never slows an answer.
//!
//! With `cache.semantic`, a chat request that misses is embedded (`embed`) and answered from
//! the nearest prompt of its bucket when they are similar enough. The lookup waits for the
//! embedding at most `cache.semantic.deadline`; past it the request goes on as a miss, and the
//! embedding, when it comes, indexes its answer.

use std::sync::Arc;
use std::time::Duration;

use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use tokio::task::JoinHandle;

use super::accounting::{Ended, LetIn};
use super::{Gateway, RequestCtx};
use crate::cache::{unix_now_ms, Cacheable, Digest, Entry, Looked, ResponseCache};
use crate::metrics::CacheEvent;
use crate::request::Request;

/// The longest user text embedded, in bytes: longer is more than an embeddings model takes
/// (8,191 tokens), and is looked up exactly only.
const MAX_EMBEDDED: usize = 32 * 1024;
/// The most of a stored stream written at once (whole events), as the relay joins a burst.
const REPLAY_WRITE: usize = 64 * 1024;
/// How long a stored answer's entry waits for its prompt's embedding, at most.
const EMBEDDING_WAIT: Duration = Duration::from_secs(30);

/// A cacheable request that missed: what its answer is kept under, and the answer once
/// relayed whole.
pub(super) struct Fill {
    cacheable: Cacheable,
    /// The answer as the cache keeps it (a 200, complete, not too large).
    pub(super) captured: Option<Box<Entry>>,
    /// Its prompt's embedding (`cache.semantic`), or the task making it.
    embedding: Option<Embedding>,
}

enum Embedding {
    Ready(Vec<f32>),
    Coming(JoinHandle<Option<Vec<f32>>>),
}

impl Gateway {
    /// Answers `request` from the cache when it can (`true`). A cacheable request that misses
    /// is marked so (`x-aoai-proxy-cache: miss`) and its answer will be kept.
    pub(super) async fn answer_from_cache(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        request: &Request,
    ) -> Result<bool> {
        let Some(cache) = &self.cache else {
            return Ok(false);
        };
        let client = ctx.client.as_deref();
        // A client that may not use the deployment gets its 403, never another's answer.
        if client.is_some_and(|c| self.accounting.may_use(c, request.deployment()).is_err()) {
            return Ok(false);
        }
        let name = client.map(|c| c.name.as_str());
        let Some(cacheable) = cache.cacheable(session.req_header(), request, name) else {
            return Ok(false);
        };
        if cacheable.look_up {
            let ttl = cache.config.ttl;
            if let Some(entry) = cache.entries.get(&cacheable.key, ttl).await {
                self.replay(session, ctx, &entry, Looked::Hit).await?;
                return Ok(true);
            }
        }
        ctx.looked = Some(Looked::Miss);
        ctx.fill = Some(Box::new(Fill {
            cacheable,
            captured: None,
            embedding: None,
        }));
        Ok(false)
    }

    /// Whether `ctx`'s request, which missed the exact cache, is looked up by meaning.
    pub(super) fn looks_near(&self, ctx: &RequestCtx) -> bool {
        let semantic = ctx
            .fill
            .as_ref()
            .and_then(|f| f.cacheable.semantic.as_ref());
        semantic.is_some_and(|(_, text)| text.len() <= MAX_EMBEDDED)
    }

    /// Answers `ctx`'s request, let in to its client's limits (`let_in`), from the entry of
    /// the nearest prompt when it is similar enough (`true`), giving back what it was charged.
    /// After admission, so that a client over its limits gets its 429 and costs no embedding.
    pub(super) async fn answer_semantically(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        let_in: &LetIn,
    ) -> Result<bool> {
        let (Some(cache), Some(mut fill)) = (&self.cache, ctx.fill.take()) else {
            return Ok(false);
        };
        let near = match &fill.cacheable.semantic {
            Some((bucket, text)) => {
                let (near, embedding) = self.look_near(ctx, cache, bucket, text).await;
                fill.embedding = embedding;
                near
            }
            None => None,
        };
        let Some(entry) = near else {
            ctx.fill = Some(fill);
            return Ok(false);
        };
        // Nothing was spent: the minute's tokens, the quota and the budget are given back.
        let ended = Ended {
            deployment: None,
            status: None,
            usage: None,
        };
        let client = ctx.client.as_deref();
        self.accounting.settle(client, let_in, ended, &self.metrics);
        (ctx.admitted, ctx.charged) = (None, None);
        self.replay(session, ctx, &entry, Looked::SemanticHit)
            .await?;
        Ok(true)
    }

    /// The entry of the prompt nearest to `text` in `bucket`, when it is similar enough; and
    /// the embedding, or the task still making it once the deadline has passed.
    async fn look_near(
        &self,
        ctx: &RequestCtx,
        cache: &ResponseCache,
        bucket: &Digest,
        text: &str,
    ) -> (Option<Arc<Entry>>, Option<Embedding>) {
        let (Some(index), Some(semantic)) = (&cache.index, &cache.config.semantic) else {
            return (None, None);
        };
        // Bounded: past it, a request goes on as a miss rather than queue for an embedding.
        let Ok(slot) = cache.embedding_slots.clone().try_acquire_owned() else {
            return (None, None);
        };
        let gateway = ctx.gateway.clone();
        let text = text.to_string();
        let mut task = tokio::spawn(async move {
            let _slot = slot;
            gateway.embed(&text).await
        });
        let vector = match tokio::time::timeout(semantic.deadline, &mut task).await {
            Ok(Ok(Some(vector))) => vector,
            Ok(_) => return (None, None),
            Err(_) => return (None, Some(Embedding::Coming(task))),
        };
        let near = index
            .nearest(bucket, &vector)
            .filter(|n| n.similarity >= semantic.threshold);
        let entry = match near {
            Some(n) => cache.entries.get(&n.entry, cache.config.ttl).await,
            None => None,
        };
        (entry, Some(Embedding::Ready(vector)))
    }

    /// Gives the client `entry` (`looked` up as a hit or a semantic hit): its headers, then its
    /// body, a stream's in whole events.
    async fn replay(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        entry: &Entry,
        looked: Looked,
    ) -> Result<()> {
        let event = match looked {
            Looked::SemanticHit => CacheEvent::SemanticHit,
            _ => CacheEvent::Hit,
        };
        let saved = entry
            .usage
            .map_or(0, |u| u.prompt.saturating_add(u.completion));
        self.metrics.record_cache(event, saved);
        ctx.looked = Some(looked);
        let mut head = ResponseHeader::build(200, Some(entry.headers.len() + 4))?;
        for (name, value) in &entry.headers {
            head.insert_header(name.clone(), value.as_str())?;
        }
        let age = unix_now_ms().saturating_sub(entry.stored_ms) / 1000;
        head.insert_header("age", age.to_string())?;
        match entry.is_stream() {
            true => head.insert_header("transfer-encoding", "chunked")?,
            false => head.insert_header("content-length", entry.body.len().to_string())?,
        }
        ctx.told().put_on(&mut head)?;
        ctx.first_byte = Some(ctx.started.elapsed());
        let write = async {
            session.write_response_header(Box::new(head), false).await?;
            for piece in entry.pieces(REPLAY_WRITE) {
                session.write_response_body(Some(piece), false).await?;
            }
            session.write_response_body(None, true).await
        };
        write.await.map_err(|e| e.into_down())
    }

    /// What an answer to `ctx`'s request tells of the cache, and the most of it that is kept
    /// (`None`: nothing is).
    pub(super) fn cache_told(&self, ctx: &RequestCtx) -> Option<(&'static str, Option<usize>)> {
        let looked = ctx.looked?;
        let keeps = ctx.fill.as_ref().filter(|f| f.cacheable.store);
        let max = self.cache.as_ref().map(|c| c.config.max_entry_bytes);
        let max = keeps
            .and(max)
            .map(|m| usize::try_from(m).unwrap_or(usize::MAX));
        Some((looked.as_str(), max))
    }

    /// Keeps the answer of a request that missed (`fill`), which ended with `status`, in the
    /// cache: a 200 relayed whole, not `no-store`, that its own deployment gave (not a
    /// fallback). Made by a task of its own; `store` is counted once it is kept.
    pub(super) fn keep(&self, fill: Fill, status: Option<u16>, fell_back: bool) {
        // Every request that missed is counted once, here at its end, whatever became of it.
        self.metrics.record_cache(CacheEvent::Miss, 0);
        let Fill {
            cacheable,
            captured,
            embedding,
        } = fill;
        let (Some(cache), Some(entry)) = (&self.cache, captured) else {
            return;
        };
        if status != Some(200) || fell_back || !cacheable.store {
            return;
        }
        let (cache, metrics) = (cache.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let key = cacheable.key;
            cache
                .entries
                .put(key, Arc::new(*entry), cache.config.ttl)
                .await;
            if let (Some(index), Some((bucket, _))) = (&cache.index, &cacheable.semantic) {
                let vector = match embedding {
                    Some(Embedding::Ready(v)) => Some(v),
                    Some(Embedding::Coming(task)) => tokio::time::timeout(EMBEDDING_WAIT, task)
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten(),
                    None => None,
                };
                if let Some(vector) = vector {
                    index.insert(*bucket, key, &vector);
                    cache
                        .entries
                        .share_prompt(index.model(), bucket, &key, &vector);
                }
            }
            metrics.record_cache(CacheEvent::Store, 0);
        });
    }
}
