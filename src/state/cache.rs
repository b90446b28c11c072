//! [`SharedEntries`]: the response cache in Redis, shared by the replicas. An entry is the hash
//! `{prefix}:cache:{key in hex}` with two fields, `meta` (its headers, usage and time, JSON)
//! and `body` (the bytes the client got), expiring with the TTL.
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

use super::SharedState;
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
