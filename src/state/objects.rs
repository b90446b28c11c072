//! Where objects live, shared by replicas: the hash `{prefix}:objects` (id → backend) and, for
//! the same bound by count as each process's LRU, the sorted set `{prefix}:objects:used` (id →
//! when it was last learned); past `objects.remember` ids, the least recently learned go.
//! Each process keeps its own LRU in front: a hit there asks Redis nothing.

use std::sync::Arc;

use super::{unix_now, SharedState, Write};
use crate::objects::{LocalLocations, ObjectLocations};

/// Records where an object lives, and forgets the least recently learned past the bound.
/// KEYS[1]: the hash, KEYS[2]: the sorted set; ARGV: id, backend, now (ms), the bound.
pub(crate) const LEARN: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  for _, gone in ipairs(redis.call('ZPOPMIN', KEYS[2], over)) do
    redis.call('HDEL', KEYS[1], gone)
  end
end
return 1
";

/// Object places in Redis, behind this process's own LRU.
pub struct SharedLocations {
    state: Arc<SharedState>,
    local: LocalLocations,
}

impl SharedLocations {
    pub fn new(state: Arc<SharedState>, local: LocalLocations) -> Self {
        SharedLocations { state, local }
    }
}

#[async_trait::async_trait]
impl ObjectLocations for SharedLocations {
    async fn find(&self, id: &str) -> Option<Arc<str>> {
        if let Some(found) = self.local.find(id).await {
            return Some(found);
        }
        let key = self.state.key("objects");
        let id_owned = id.to_string();
        let found: Option<String> = self
            .state
            .call(|mut conn| async move {
                redis::cmd("HGET")
                    .arg(key)
                    .arg(id_owned)
                    .query_async(&mut conn)
                    .await
            })
            .await
            .flatten();
        let found = found?;
        self.local.learn(id, &found);
        Some(found.into())
    }

    fn learn(&self, id: &str, backend: &str) {
        // Known here already: it went to Redis when it was first learned, or came from there.
        if self.local.find_here(id).as_deref() == Some(backend) {
            return;
        }
        self.local.learn(id, backend);
        self.state.send(Write::Learn {
            id: id.to_string(),
            backend: backend.to_string(),
        });
    }

    fn forget(&self, id: &str) {
        self.local.forget(id);
        self.state.send(Write::Forget { id: id.to_string() });
    }
}

/// Records in Redis that `id` lives on `backend`: the background task's write.
pub(crate) async fn learn(
    state: &SharedState,
    script: &redis::Script,
    id: String,
    backend: String,
) -> Option<i64> {
    let (hash, used) = (state.key("objects"), state.key("objects:used"));
    let now = u64::try_from(unix_now().as_millis()).unwrap_or(u64::MAX);
    let bound = state.remember;
    state
        .call(|mut conn| async move {
            script
                .key(hash)
                .key(used)
                .arg(id)
                .arg(backend)
                .arg(now)
                .arg(bound)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
}

/// Forgets `id` in Redis: the background task's write.
pub(crate) async fn forget(state: &SharedState, id: String) -> Option<i64> {
    let (hash, used) = (state.key("objects"), state.key("objects:used"));
    state
        .call(|mut conn| async move {
            redis::pipe()
                .hdel(hash, &id)
                .zrem(used, &id)
                .query_async::<(i64, i64)>(&mut conn)
                .await
                .map(|_| 1)
        })
        .await
}
