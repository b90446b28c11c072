//! [`SharedEntries`]: the response cache in Redis, shared by the replicas. An entry is the hash
//! `{prefix}:cache:{key in hex}` with two fields, `meta` (its headers, usage and time, JSON)
//! and `body` (the bytes the client got), expiring with the TTL.
//!
//! With `cache.semantic`, each replica keeps its own index of prompts (`crate::cache::semantic`);
//! a prompt a replica indexes is published on the channel `{prefix}:cache:prompts` (its bucket,
//! its entry's key and its embedding), and every other replica indexes it too, so a
//! near-duplicate finds the entry whichever replica it reaches. Redis's pub/sub is the one
//! capability used: every Redis server has it (vector search needs Redis 8 or a module).
//!
//! A cache is never worth a failed or a slower request: a lookup waits at most
//! `state.redis.timeout` and a Redis that cannot answer is a miss; a store is made after the
//! answer has reached the client, within a longer bound. Neither marks Redis down (a large
//! entry may be slower to move than a limit's count): the background check does that.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{SharedState, Write};
use crate::cache::semantic::SemanticIndex;
use crate::cache::{Digest, Entries, Entry};
use crate::usage::Usage;

/// How long a store may take: an entry may be up to 64 MiB.
const STORE_WITHIN: Duration = Duration::from_secs(5);

/// The entries in Redis.
pub struct SharedEntries {
    state: Arc<SharedState>,
}

impl SharedEntries {
    pub fn new(state: Arc<SharedState>) -> SharedEntries {
        SharedEntries { state }
    }

    fn key(&self, key: &Digest) -> String {
        self.state.key(&format!("cache:{}", hex::encode(key)))
    }
}

/// A prompt a replica indexed, as published to the others.
#[derive(Serialize, Deserialize)]
pub(crate) struct Prompt {
    /// The replica that indexed it, which skips its own messages.
    replica: String,
    /// The deployment that embedded it: a replica embedding with another skips it.
    model: String,
    bucket: String,
    entry: String,
    vector: Vec<f32>,
}

impl Prompt {
    /// Indexes the prompt in `index`, unless this replica (`me`) published it or another model
    /// embedded it.
    pub(crate) fn apply(self, index: &SemanticIndex, me: &str) {
        let digest =
            |hex_text: &str| -> Option<Digest> { hex::decode(hex_text).ok()?.try_into().ok() };
        if self.replica == me || self.model != index.model() {
            return;
        }
        if let (Some(bucket), Some(entry)) = (digest(&self.bucket), digest(&self.entry)) {
            index.insert(bucket, entry, &self.vector);
        }
    }
}

/// Publishes a prompt this replica indexed (`wire`, a [`Prompt`] as JSON) to the others.
pub(crate) async fn publish_prompt(state: &SharedState, wire: String) -> Option<i64> {
    state.publish(PROMPTS, wire).await
}

/// The channel of indexed prompts, under the prefix.
pub(crate) const PROMPTS: &str = "cache:prompts";

/// An entry's `meta` field.
#[derive(Serialize, Deserialize)]
struct Meta {
    headers: Vec<(String, String)>,
    /// Prompt, completion, cached and reasoning tokens.
    usage: Option<(u64, u64, Option<u64>, Option<u64>)>,
    stored_ms: u64,
}

#[async_trait]
impl Entries for SharedEntries {
    fn share_prompt(&self, model: &str, bucket: &Digest, entry: &Digest, vector: &[f32]) {
        let prompt = Prompt {
            replica: self.state.replica.clone(),
            model: model.to_string(),
            bucket: hex::encode(bucket),
            entry: hex::encode(entry),
            vector: vector.to_vec(),
        };
        if let Ok(wire) = serde_json::to_string(&prompt) {
            self.state.send(Write::Prompt(wire));
        }
    }

    async fn get(&self, key: &Digest, ttl: Duration) -> Option<Arc<Entry>> {
        let mut conn = self.state.conn()?;
        let key = self.key(key);
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(key).arg("meta").arg("body");
        let read = cmd.query_async::<(Option<Vec<u8>>, Option<Vec<u8>>)>(&mut conn);
        let (meta, body) = match tokio::time::timeout(self.state.timeout, read).await {
            Ok(Ok((Some(meta), Some(body)))) => (meta, body),
            Ok(Ok(_)) => return None,
            Ok(Err(e)) => {
                log::debug!("cache: a lookup in Redis failed: {e}");
                return None;
            }
            Err(_) => return None,
        };
        let meta: Meta = serde_json::from_slice(&meta).ok()?;
        // What another writer left there answers no client: a header that cannot be sent is a miss.
        let sendable = meta.headers.iter().all(|(k, v)| {
            http::HeaderName::from_bytes(k.as_bytes()).is_ok()
                && http::HeaderValue::from_str(v).is_ok()
        });
        if !sendable {
            return None;
        }
        let entry = Entry {
            headers: meta.headers,
            body: Bytes::from(body),
            usage: meta
                .usage
                .map(|(prompt, completion, cached, reasoning)| Usage {
                    prompt,
                    completion,
                    cached,
                    reasoning,
                }),
            stored_ms: meta.stored_ms,
        };
        // Redis expires it with the TTL it was stored with; a shorter TTL since counts too.
        (!entry.expired(ttl, crate::cache::unix_now_ms())).then(|| Arc::new(entry))
    }

    async fn put(&self, key: Digest, entry: Arc<Entry>, ttl: Duration) {
        let Some(mut conn) = self.state.conn() else {
            return;
        };
        let meta = Meta {
            headers: entry.headers.clone(),
            usage: entry
                .usage
                .map(|u| (u.prompt, u.completion, u.cached, u.reasoning)),
            stored_ms: entry.stored_ms,
        };
        let Ok(meta) = serde_json::to_vec(&meta) else {
            return;
        };
        let key = self.key(&key);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(&key)
            .arg("meta")
            .arg(meta)
            .arg("body")
            .arg(entry.body.as_ref())
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .ignore();
        let write = pipe.query_async::<()>(&mut conn);
        match tokio::time::timeout(STORE_WITHIN, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::debug!("cache: an entry could not be stored in Redis: {e}"),
            Err(_) => log::debug!("cache: storing an entry in Redis took over {STORE_WITHIN:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_replicas_prompt_is_indexed_unless_another_model_made_it() {
        let index = SemanticIndex::new(10, Duration::from_secs(60), "emb");
        let prompt = |replica: &str, model: &str, bucket: &str| Prompt {
            replica: replica.into(),
            model: model.into(),
            bucket: bucket.into(),
            entry: hex::encode([2; 32]),
            vector: vec![0.6, 0.8],
        };
        let bucket = hex::encode([1; 32]);
        prompt("me", "emb", &bucket).apply(&index, "me");
        prompt("other", "emb-large", &bucket).apply(&index, "me");
        prompt("other", "emb", "not hex").apply(&index, "me");
        assert!(index.is_empty());
        prompt("other", "emb", &bucket).apply(&index, "me");
        assert_eq!(index.len(), 1);
        let wire = serde_json::to_string(&prompt("other", "emb", &bucket)).unwrap();
        assert!(serde_json::from_str::<Prompt>(&wire).is_ok());
    }
}
