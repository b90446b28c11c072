//! [`BackendStats`]: what one backend did (tries by outcome, the tokens it reported, its time to
//! first byte), kept with the backend so it lives as long as the backend does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ahash::RandomState;
use prometheus::Histogram;

use super::{histogram, TokenKind, TryLabel, SECONDS_BUCKETS};
use crate::retry::Outcome;
use crate::usage::Usage;

/// Tokens of one (deployment, client) on one backend, by [`TokenKind`]: `None` until a kind
/// is first reported.
pub(super) type TokenCounts = [Option<u64>; 4];

/// Per backend: deployment, then client, then the counts. Looked up by `&str`, so an answer
/// of a series already seen allocates nothing (and hashed with aHash, not SipHash: the keys
/// are names the proxy has seen answered, and this runs once an answer).
type TokenTable = HashMap<Box<str>, HashMap<Box<str>, TokenCounts, RandomState>, RandomState>;

/// The most (deployment, client) series kept per backend. A deployment is named by the client
/// (in the path or the body's `model`), so spellings that a backend still answers could grow the
/// table without end: past the cap, new ones are counted under `deployment="other"`.
pub const MAX_TOKEN_SERIES: usize = 1000;

/// What one backend did: its tries by outcome, the tokens it reported, and how long it took
/// to answer. Kept with the [`crate::balance::Backend`], so it lives as long as the backend does
/// (across a reload that keeps it).
pub struct BackendStats {
    /// By `label as usize`.
    pub(super) tries: [AtomicU64; TryLabel::ALL.len()],
    /// Tokens: touched once an answer, when it reported usage.
    pub(super) tokens: Mutex<TokenTable>,
    /// From sending the request to its response header, for tries that got one.
    pub(super) first_byte: Histogram,
}

impl Default for BackendStats {
    fn default() -> Self {
        BackendStats {
            tries: Default::default(),
            tokens: Mutex::default(),
            first_byte: histogram(&SECONDS_BUCKETS),
        }
    }
}

impl BackendStats {
    /// Counts one try's outcome.
    pub fn record_try(&self, outcome: Outcome) {
        self.tries[TryLabel::of(outcome) as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Times a try from its request to its response header.
    pub fn record_first_byte(&self, took: Duration) {
        self.first_byte.observe(took.as_secs_f64());
    }

    /// Tries by outcome, in [`TryLabel::ALL`] order.
    pub fn tries(&self) -> [u64; TryLabel::ALL.len()] {
        std::array::from_fn(|i| self.tries[i].load(Ordering::Relaxed))
    }

    /// Tokens reported so far, by kind, summed over deployments and clients.
    pub fn token_totals(&self) -> [u64; TokenKind::ALL.len()] {
        let table = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let mut totals = [0u64; TokenKind::ALL.len()];
        for counts in table.values().flat_map(HashMap::values) {
            for (t, n) in totals.iter_mut().zip(counts) {
                *t = (*t).saturating_add(n.unwrap_or(0));
            }
        }
        totals
    }

    /// Counts the tokens reported for an answer to `client` (`None`: no `clients`) about
    /// `deployment`.
    pub fn record_usage(&self, deployment: Option<&str>, client: Option<&str>, usage: &Usage) {
        let (deployment, client) = (deployment.unwrap_or("-"), client.unwrap_or("-"));
        let mut table = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let known = table
            .get(deployment)
            .is_some_and(|clients| clients.contains_key(client));
        let full = || table.values().map(HashMap::len).sum::<usize>() >= MAX_TOKEN_SERIES;
        let deployment = if known || !full() {
            deployment
        } else {
            "other"
        };
        let clients = match table.get_mut(deployment) {
            Some(clients) => clients,
            None => table.entry(deployment.into()).or_default(),
        };
        let counts = match clients.get_mut(client) {
            Some(counts) => counts,
            None => clients.entry(client.into()).or_default(),
        };
        let reported = [
            Some(usage.prompt),
            Some(usage.completion),
            usage.cached,
            usage.reasoning,
        ];
        for (count, n) in counts.iter_mut().zip(reported) {
            if let Some(n) = n {
                *count = Some(count.unwrap_or(0).saturating_add(n));
            }
        }
    }
}
