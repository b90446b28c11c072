//! Where each stateful object lives: learned from the answers that made or found it, and kept
//! behind [`ObjectLocations`] so that a store shared by replicas can stand in for the local one.
//!
//! The local map is an LRU bounded by count (`objects.remember`), not a TTL: objects live as
//! long as their owners keep them (files and assistants for months, stored responses for 30
//! days), so no one lifetime fits, while a bound by count keeps memory fixed (about 150 bytes
//! an entry) and forgets the objects used least. A forgotten object costs one search.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

/// Where objects live, by id: the name of the backend that holds each.
#[async_trait::async_trait]
pub trait ObjectLocations: Send + Sync {
    /// The backend that holds `id`, when known.
    async fn find(&self, id: &str) -> Option<Arc<str>>;
    /// `id` lives on `backend`.
    fn learn(&self, id: &str, backend: &str);
    /// `id` is gone (deleted).
    fn forget(&self, id: &str);
}

/// The process's own map: the `capacity` objects used last.
pub struct LocalLocations {
    map: Mutex<LruCache<Box<str>, Arc<str>>>,
}

impl LocalLocations {
    pub fn new(capacity: NonZeroUsize) -> Self {
        LocalLocations {
            map: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The backend that holds `id`, when this process knows.
    pub fn find_here(&self, id: &str) -> Option<Arc<str>> {
        self.lock().get(id).cloned()
    }

    /// How many objects are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Box<str>, Arc<str>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl ObjectLocations for LocalLocations {
    async fn find(&self, id: &str) -> Option<Arc<str>> {
        self.find_here(id)
    }

    fn learn(&self, id: &str, backend: &str) {
        let mut map = self.lock();
        if map.get(id).is_some_and(|b| &**b == backend) {
            return;
        }
        map.put(id.into(), backend.into());
    }

    fn forget(&self, id: &str) {
        self.lock().pop(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_used_object_is_forgotten_first() {
        let map = LocalLocations::new(NonZeroUsize::new(2).unwrap());
        map.learn("file-1", "east");
        map.learn("file-2", "west");
        assert_eq!(map.find_here("file-1").as_deref(), Some("east"));
        map.learn("file-3", "west"); // file-2 was used least
        assert_eq!(map.find_here("file-2"), None);
        assert_eq!(map.find_here("file-1").as_deref(), Some("east"));
        assert_eq!(map.find_here("file-3").as_deref(), Some("west"));
        map.forget("file-1");
        assert_eq!(map.find_here("file-1"), None);
        assert_eq!(map.len(), 1);
    }
}
