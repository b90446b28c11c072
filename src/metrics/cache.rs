//! The response cache's counters (`cache`): `aoai_proxy_cache_total{result}` (`hit`,
//! `semantic_hit`, `miss`, `store`) and `aoai_proxy_cache_saved_tokens_total`, the tokens the
//! answers served from the cache had reported. Declared, at zero, only with a cache.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::proto::MetricFamily;

use super::{Family, Metrics};

/// What the cache did, counted.
#[derive(Default)]
pub(super) struct CacheCounts {
    /// By [`CacheEvent`] `as usize`.
    events: [AtomicU64; 4],
    saved_tokens: AtomicU64,
}

/// What the cache did for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheEvent {
    Hit,
    SemanticHit,
    Miss,
    Store,
}

impl CacheEvent {
    const ALL: [CacheEvent; 4] = [
        CacheEvent::Hit,
        CacheEvent::SemanticHit,
        CacheEvent::Miss,
        CacheEvent::Store,
    ];

    fn label(self) -> &'static str {
        match self {
            CacheEvent::Hit => "hit",
            CacheEvent::SemanticHit => "semantic_hit",
            CacheEvent::Miss => "miss",
            CacheEvent::Store => "store",
        }
    }
}

impl Metrics {
    /// Declares the cache's families (a process with a cache).
    pub fn declare_cache(&self) {
        let _ = self.cache.set(CacheCounts::default());
    }

    /// Counts `event`; a hit also the `saved` tokens its answer had reported.
    pub fn record_cache(&self, event: CacheEvent, saved: u64) {
        if let Some(counts) = self.cache.get() {
            counts.events[event as usize].fetch_add(1, Ordering::Relaxed);
            counts.saved_tokens.fetch_add(saved, Ordering::Relaxed);
        }
    }

    /// The two families, with a cache.
    pub(super) fn cache_families(&self) -> Vec<MetricFamily> {
        let Some(counts) = self.cache.get() else {
            return Vec::new();
        };
        let mut total = Family::counter(
            "aoai_proxy_cache_total",
            "Cacheable requests answered from the cache (hit, semantic_hit) or not (miss), and answers stored (store).",
        );
        for event in CacheEvent::ALL {
            let n = counts.events[event as usize].load(Ordering::Relaxed);
            total.add(&[("result", event.label())], n as f64);
        }
        let mut saved = Family::counter(
            "aoai_proxy_cache_saved_tokens_total",
            "Tokens (prompt and completion) that the answers served from the cache had reported when they were made.",
        );
        saved.add(&[], counts.saved_tokens.load(Ordering::Relaxed) as f64);
        vec![total.done(), saved.done()]
    }
}
