//! [`SemanticIndex`]: the embeddings of cached chat prompts, searched for the nearest prompt
//! of the same bucket (deployment, scope, non-user turns and parameters; see [`super::key`]).
//!
//! The index is USearch's HNSW graph (crate `usearch`, cosine metric, `f32`), one for every
//! bucket, the bucket checked by a filter on each candidate. It is bounded by
//! `cache.semantic.max_entries`: past it, the oldest prompt is removed (USearch reuses removed
//! slots), as is any older than the TTL. Each process keeps its own index; with `state.redis`
//! the replicas tell each other the prompts they index, by pub/sub (`crate::state::cache`), so
//! every index holds them all (Redis 7 has no vector search of its own, and its search module is
//! not in the servers most users run; pub/sub is in every one).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::Digest;

/// The embeddings of cached prompts.
pub struct SemanticIndex {
    /// The deployment that embeds its prompts: another's vectors never go in.
    model: String,
    inner: Mutex<Inner>,
    max_entries: usize,
    ttl: Duration,
}

struct Inner {
    /// Made with the first embedding's dimensions.
    index: Option<Index>,
    /// Each indexed prompt: its bucket, the exact key of its entry, when it was indexed.
    prompts: HashMap<u64, Prompt>,
    /// Indexed keys, oldest first.
    order: VecDeque<u64>,
    next: u64,
}

struct Prompt {
    bucket: Digest,
    entry: Digest,
    at: Instant,
}

/// A prompt's nearest neighbour: the exact key of its entry, and how similar it is (cosine).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nearest {
    pub entry: Digest,
    pub similarity: f32,
}

impl SemanticIndex {
    /// An index of at most `max_entries` prompts, each kept `ttl`, embedded by the deployment
    /// `model`.
    pub fn new(max_entries: usize, ttl: Duration, model: &str) -> SemanticIndex {
        SemanticIndex {
            model: model.to_string(),
            inner: Mutex::new(Inner {
                index: None,
                prompts: HashMap::new(),
                order: VecDeque::new(),
                next: 0,
            }),
            max_entries,
            ttl,
        }
    }

    /// The deployment that embeds its prompts.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// How many prompts are indexed.
    pub fn len(&self) -> usize {
        self.lock().prompts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Indexes `vector`, the embedding of a prompt in `bucket` whose answer is stored under
    /// `entry`. The first embedding sets the index's dimensions; one of others, an empty one or
    /// one that is not finite is left out (and pushes nothing out).
    pub fn insert(&self, bucket: Digest, entry: Digest, vector: &[f32]) {
        if vector.is_empty() || !vector.iter().all(|x| x.is_finite()) {
            return;
        }
        let mut inner = self.lock();
        if inner
            .index
            .as_ref()
            .is_some_and(|i| i.dimensions() != vector.len())
        {
            return;
        }
        let now = Instant::now();
        inner.forget_older(now.checked_sub(self.ttl));
        while inner.prompts.len() >= self.max_entries {
            if !inner.forget_oldest() {
                break;
            }
        }
        let key = inner.next;
        let Some(index) = inner.index_for(vector.len(), self.max_entries) else {
            return;
        };
        let room = match index.size() < index.capacity() {
            true => Ok(()),
            false => index.reserve((index.capacity() * 2).clamp(64, self.max_entries.max(64))),
        };
        let added = room.and_then(|()| index.add(key, vector));
        if let Err(e) = added {
            log::warn!("cache: an embedding could not be indexed: {e}");
            return;
        }
        inner.next += 1;
        inner.order.push_back(key);
        inner.prompts.insert(
            key,
            Prompt {
                bucket,
                entry,
                at: now,
            },
        );
    }

    /// The prompt of `bucket` nearest to `vector`, indexed less than the TTL ago.
    pub fn nearest(&self, bucket: &Digest, vector: &[f32]) -> Option<Nearest> {
        let inner = self.lock();
        let index = inner.index.as_ref()?;
        if index.dimensions() != vector.len() {
            return None;
        }
        let fresh = Instant::now().checked_sub(self.ttl);
        let matches = index
            .filtered_search(vector, 1, |key| {
                inner
                    .prompts
                    .get(&key)
                    .is_some_and(|p| p.bucket == *bucket && fresh.is_none_or(|since| p.at > since))
            })
            .ok()?;
        let (key, distance) = matches.keys.first().zip(matches.distances.first())?;
        let prompt = inner.prompts.get(key)?;
        Some(Nearest {
            entry: prompt.entry,
            // USearch's cosine distance is one less the similarity.
            similarity: 1.0 - distance,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// The index, made for `dimensions` if there is none; `None` when it has others.
    fn index_for(&mut self, dimensions: usize, max_entries: usize) -> Option<&Index> {
        if self.index.is_none() {
            let options = IndexOptions {
                dimensions,
                metric: MetricKind::Cos,
                quantization: ScalarKind::F32,
                ..IndexOptions::default()
            };
            let index = Index::new(&options).ok()?;
            index.reserve(max_entries.min(1024)).ok()?;
            self.index = Some(index);
        }
        self.index.as_ref().filter(|i| i.dimensions() == dimensions)
    }

    /// Removes the oldest prompt; `false` when there is none.
    fn forget_oldest(&mut self) -> bool {
        let Some(key) = self.order.pop_front() else {
            return false;
        };
        self.prompts.remove(&key);
        if let Some(index) = &self.index {
            let _ = index.remove(key);
        }
        true
    }

    /// Removes the prompts indexed at or before `since`.
    fn forget_older(&mut self, since: Option<Instant>) {
        let Some(since) = since else { return };
        while let Some(key) = self.order.front() {
            if self.prompts.get(key).is_some_and(|p| p.at > since) {
                break;
            }
            self.forget_oldest();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / norm).collect()
    }

    #[test]
    fn the_nearest_prompt_of_the_same_bucket_is_found_with_its_similarity() {
        let index = SemanticIndex::new(100, Duration::from_secs(60), "emb");
        let (a, b) = ([1; 32], [2; 32]);
        index.insert(a, [10; 32], &unit(&[1.0, 0.0, 0.0]));
        index.insert(a, [11; 32], &unit(&[0.0, 1.0, 0.0]));
        index.insert(b, [12; 32], &unit(&[1.0, 0.1, 0.0]));
        let near = index.nearest(&a, &unit(&[1.0, 0.05, 0.0])).unwrap();
        assert_eq!(near.entry, [10; 32]);
        assert!(near.similarity > 0.99, "{near:?}");
        let other = index.nearest(&b, &unit(&[0.0, 1.0, 0.0])).unwrap();
        assert_eq!(other.entry, [12; 32], "only its own bucket");
        assert!(other.similarity < 0.2, "{other:?}");
        assert_eq!(index.nearest(&[3; 32], &unit(&[1.0, 0.0, 0.0])), None);
        assert_eq!(index.nearest(&a, &[1.0, 0.0]), None, "other dimensions");
        index.insert(a, [13; 32], &[1.0, 0.0]);
        index.insert(a, [14; 32], &[f32::NAN, 0.0, 0.0]);
        index.insert(a, [15; 32], &[]);
        assert_eq!(index.len(), 3, "left out, and nothing pushed out");
    }

    #[test]
    fn the_oldest_prompts_go_past_the_bound() {
        let index = SemanticIndex::new(2, Duration::from_secs(60), "emb");
        for n in 0..5u8 {
            index.insert([1; 32], [n; 32], &unit(&[1.0, f32::from(n), 0.5]));
        }
        assert_eq!(index.len(), 2);
        let near = index.nearest(&[1; 32], &unit(&[1.0, 0.0, 0.5])).unwrap();
        assert_eq!(near.entry, [3; 32], "0, 1 and 2 are gone: {near:?}");
    }

    #[test]
    fn prompts_older_than_the_ttl_are_not_found() {
        let index = SemanticIndex::new(10, Duration::from_millis(1), "emb");
        index.insert([1; 32], [1; 32], &unit(&[1.0, 0.0]));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(index.nearest(&[1; 32], &unit(&[1.0, 0.0])), None);
    }
}
