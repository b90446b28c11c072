//! The response cache as start-up builds it (`cache`): its entries in memory or in Redis, and
//! the semantic index, made before the shared state's task (which feeds it other replicas'
//! prompts) and the cache (which reads it).

use std::sync::Arc;

use crate::cache::semantic::SemanticIndex;
use crate::cache::{self, ResponseCache};
use crate::config::Cache;
use crate::metrics::Metrics;
use crate::state::SharedState;

/// The semantic index of `settings`, with `cache.semantic`.
pub(super) fn prompt_index(settings: &Cache) -> Option<Arc<SemanticIndex>> {
    let semantic = settings.semantic.as_ref()?;
    let model = &semantic.embeddings_deployment;
    Some(Arc::new(SemanticIndex::new(
        semantic.max_entries,
        settings.ttl,
        model,
    )))
}

/// The response cache of `settings`: in Redis with the shared `state`, else in memory; with
/// `index`, the semantic lookup.
pub(super) fn response_cache(
    settings: &Cache,
    state: Option<&Arc<SharedState>>,
    index: Option<Arc<SemanticIndex>>,
    metrics: &Metrics,
) -> Arc<ResponseCache> {
    metrics.declare_cache();
    let entries: Arc<dyn cache::Entries> = match state {
        Some(state) => Arc::new(crate::state::cache::SharedEntries::new(state.clone())),
        None => Arc::new(cache::local::LocalEntries::new(settings.max_bytes)),
    };
    Arc::new(ResponseCache::new(settings.clone(), entries, index))
}
