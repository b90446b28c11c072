//! [`LocalEntries`]: the entries of a process without `state.redis`, least recently used
//! first out once they hold more than `cache.max_bytes`; an entry older than the TTL is gone
//! when next asked for (or pushed out by newer ones).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lru::LruCache;

use super::unix_now_ms;
use super::{Digest, Entries, Entry};

/// Entries in memory, bounded by their size.
pub struct LocalEntries {
    inner: Mutex<Kept>,
    max_bytes: usize,
}

struct Kept {
    /// Unbounded by count: [`LocalEntries::put`] bounds it by bytes.
    entries: LruCache<Digest, Arc<Entry>>,
    bytes: usize,
}

impl LocalEntries {
    pub fn new(max_bytes: u64) -> LocalEntries {
        LocalEntries {
            inner: Mutex::new(Kept {
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
        }
    }

    /// The entries kept, and the bytes they take.
    pub fn held(&self) -> (usize, usize) {
        let kept = self.lock();
        (kept.entries.len(), kept.bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Entries for LocalEntries {
    async fn get(&self, key: &Digest, ttl: Duration) -> Option<Arc<Entry>> {
        let mut kept = self.lock();
        let entry = kept.entries.get(key)?.clone();
        if entry.expired(ttl, unix_now_ms()) {
            kept.entries.pop(key);
            kept.bytes -= entry.size();
            return None;
        }
        Some(entry)
    }

    async fn put(&self, key: Digest, entry: Arc<Entry>, _ttl: Duration) {
        let size = entry.size();
        if size > self.max_bytes {
            return;
        }
        let mut kept = self.lock();
        if let Some(old) = kept.entries.put(key, entry) {
            kept.bytes -= old.size();
        }
        kept.bytes += size;
        while kept.bytes > self.max_bytes {
            let Some((_, out)) = kept.entries.pop_lru() else {
                break;
            };
            kept.bytes -= out.size();
        }
    }
}
