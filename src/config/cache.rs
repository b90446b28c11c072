//! `cache` as validated: how long answers are kept and where, whose entries serve whom
//! (`scope`), which deployments are cached, and the semantic lookup (`cache.semantic`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use super::raw::{Problems, RawCache, RawSemantic};
use super::BackendConfig;

/// The response cache (`cache`).
#[derive(Clone, Debug, PartialEq)]
pub struct Cache {
    /// How long an answer is served from the cache after it was stored.
    pub ttl: Duration,
    /// The most the entries kept in memory may hold, in bytes (without `state.redis`; with it,
    /// Redis keeps them, bounded by its own `maxmemory`).
    pub max_bytes: u64,
    /// Larger answers are not stored.
    pub max_entry_bytes: u64,
    pub scope: CacheScope,
    /// The only deployments cached; `None`: every deployment.
    pub deployments: Option<BTreeSet<String>>,
    pub semantic: Option<Semantic>,
}

/// Whose entries serve whom.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheScope {
    /// A client's entries serve only it: one team never sees another's prompts' answers.
    #[default]
    Client,
    /// Every client's entries serve every client.
    Global,
}

/// The semantic lookup (`cache.semantic`): near-duplicate chat prompts.
#[derive(Clone, Debug, PartialEq)]
pub struct Semantic {
    /// The deployment that embeds prompts, reached through the proxy's own backends.
    pub embeddings_deployment: String,
    /// The least cosine similarity that counts as the same prompt.
    pub threshold: f32,
    /// How long a request waits for its prompt's embedding before it goes to a backend as a
    /// miss (the embedding still indexes its answer).
    pub deadline: Duration,
    /// The most prompts indexed; the oldest go first.
    pub max_entries: usize,
}

impl Cache {
    pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
    pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
    pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 1 << 20;
}

impl Semantic {
    pub const DEFAULT_THRESHOLD: f32 = 0.95;
    pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(250);
    pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
}

pub(super) fn cache(raw: RawCache, backends: &[BackendConfig], p: &mut Problems) -> Cache {
    let ttl = super::validate::duration(
        p,
        "cache.ttl",
        raw.ttl,
        Cache::DEFAULT_TTL,
        Duration::from_secs(1)..=Duration::from_secs(30 * 24 * 3600),
    );
    let max_bytes = raw.max_bytes.map_or(Cache::DEFAULT_MAX_BYTES, |b| b.0);
    if !(1 << 20..=1 << 40).contains(&max_bytes) {
        p.add("cache.max_bytes", "must be between 1MiB and 1TiB");
    }
    let max_entry_bytes = raw
        .max_entry_bytes
        .map_or(Cache::DEFAULT_MAX_ENTRY_BYTES, |b| b.0);
    if !(1 << 10..=64 << 20).contains(&max_entry_bytes) || max_entry_bytes > max_bytes {
        p.add(
            "cache.max_entry_bytes",
            "must be between 1KiB and 64MiB, and at most cache.max_bytes",
        );
    }
    let deployments = raw.deployments.map(|names| {
        let names: BTreeSet<String> = names.into_iter().map(|n| n.0).collect();
        if names.is_empty() {
            p.add(
                "cache.deployments",
                "name at least one deployment, or leave it out to cache every one",
            );
        }
        names
    });
    Cache {
        ttl,
        max_bytes,
        max_entry_bytes,
        scope: raw.scope.unwrap_or_default(),
        deployments,
        semantic: raw.semantic.map(|s| semantic(s, backends, p)),
    }
}

fn semantic(raw: RawSemantic, backends: &[BackendConfig], p: &mut Problems) -> Semantic {
    let embeddings_deployment = raw.embeddings_deployment.0;
    let served = backends.iter().any(|b| {
        b.deployments
            .as_ref()
            .is_none_or(|d| d.contains_key(&embeddings_deployment))
    });
    if embeddings_deployment.trim().is_empty() || !served {
        p.add(
            "cache.semantic.embeddings_deployment",
            "must name a deployment one of the backends serves",
        );
    }
    let threshold = raw
        .threshold
        .unwrap_or(f64::from(Semantic::DEFAULT_THRESHOLD));
    if !(threshold > 0.0 && threshold <= 1.0) {
        p.add(
            "cache.semantic.threshold",
            "must be a cosine similarity above 0 and at most 1 (0.95 is near-identical)",
        );
    }
    let max_entries = raw.max_entries.unwrap_or(Semantic::DEFAULT_MAX_ENTRIES);
    if !(1..=10_000_000).contains(&max_entries) {
        p.add("cache.semantic.max_entries", "must be from 1 to 10000000");
    }
    Semantic {
        embeddings_deployment,
        threshold: threshold as f32,
        deadline: super::validate::duration(
            p,
            "cache.semantic.deadline",
            raw.deadline,
            Semantic::DEFAULT_DEADLINE,
            Duration::from_millis(1)..=Duration::from_secs(30),
        ),
        max_entries,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::*;

    const BASE: &str = "listen: [\"127.0.0.1:8080\"]\nauth: {kind: none}\nbackends:\n  - url: https://a.openai.azure.com\n    deployments: {gpt-4o: gpt-4o, emb: emb}\n";

    #[test]
    fn the_cache_is_read_with_its_defaults() {
        assert!(Config::from_yaml(BASE).unwrap().cache.is_none());
        let c = Config::from_yaml(&format!(
            "{BASE}cache:\n  semantic: {{embeddings_deployment: emb}}\n"
        ))
        .unwrap();
        let cache = c.cache.unwrap();
        assert_eq!(cache.ttl, Cache::DEFAULT_TTL);
        assert_eq!(cache.max_bytes, 256 << 20);
        assert_eq!(cache.scope, CacheScope::Client);
        assert_eq!(cache.deployments, None);
        let semantic = cache.semantic.unwrap();
        assert_eq!(semantic.threshold, 0.95);
        assert_eq!(semantic.deadline, Semantic::DEFAULT_DEADLINE);
        let c = Config::from_yaml(&format!(
            "{BASE}cache: {{ttl: 10s, max_bytes: 8MiB, scope: global, deployments: [gpt-4o]}}\n"
        ))
        .unwrap()
        .cache
        .unwrap();
        assert_eq!(
            (c.ttl, c.max_bytes, c.scope),
            (Duration::from_secs(10), 8 << 20, CacheScope::Global)
        );
        assert_eq!(
            c.deployments.unwrap().into_iter().collect::<Vec<_>>(),
            ["gpt-4o"]
        );
    }

    #[test]
    fn bad_cache_settings_name_their_key_and_line() {
        let p = Config::from_yaml(&format!(
            "{BASE}cache:\n  max_bytes: 1KiB\n  semantic:\n    embeddings_deployment: nowhere\n    threshold: 1.5\n"
        ))
        .unwrap_err();
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        for key in [
            "cache.max_bytes",
            "cache.semantic.embeddings_deployment",
            "cache.semantic.threshold",
        ] {
            assert!(paths.contains(&key), "{key}: {paths:?}");
        }
        let p = Config::from_yaml(&format!(
            "{BASE}cache:\n  semantic:\n    embeddings_deployment: emb\n    threshold: high\n"
        ))
        .unwrap_err();
        assert_eq!(p[0].path, "cache.semantic.threshold");
        assert_eq!(p[0].line, Some(9));
        let p = Config::from_yaml(&format!("{BASE}cache: {{scope: team}}\n")).unwrap_err();
        assert_eq!(p[0].path, "cache.scope");
    }
}
