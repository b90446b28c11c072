//! [`BackendStats`]: what one backend did (tries by outcome, the tokens it reported, its time to
//! first byte), kept with the backend so it lives as long as the backend does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ahash::RandomState;
use prometheus::Histogram;

use super::{histogram, TokenKind, TryLabel, SECONDS_BUCKETS};
use crate::config::NO_CLIENT;
use crate::outcome::Outcome;
use crate::usage::Usage;

/// Tokens of one (deployment, client) on one backend, by [`TokenKind`]: `None` until a kind
/// is first reported.
pub type TokenCounts = [Option<u64>; 4];

/// Per backend: deployment, then client, then the counts. Looked up by `&str`, so an answer
/// of a series already seen allocates nothing (and hashed with aHash, not SipHash: the keys
/// are names the proxy has seen answered, and this runs once an answer).
type TokenTable = HashMap<Box<str>, HashMap<Box<str>, TokenCounts, RandomState>, RandomState>;

/// The most (deployment, client) series kept per backend. A deployment is named by the client
/// (in the path or the body's `model`), so spellings that a backend still answers could grow the
/// table without end: past the cap, new ones are counted under [`OTHER_DEPLOYMENTS`].
const MAX_TOKEN_SERIES: usize = 1000;

/// The `deployment` label of requests that name no deployment: not a deployment name (see
/// [`crate::config::is_deployment_name`]).
const NO_DEPLOYMENT: &str = "-";

/// The `deployment` label of names past [`MAX_TOKEN_SERIES`], and of names that cannot be a
/// deployment's (so that neither sentinel can be a real name).
const OTHER_DEPLOYMENTS: &str = "(other)";

/// The `deployment` label of `deployment`: its name when it can be one
/// ([`crate::config::is_deployment_name`]), else a sentinel no name can be.
fn deployment_label(deployment: Option<&str>) -> &str {
    match deployment {
        None => NO_DEPLOYMENT,
        Some(name) if crate::config::is_deployment_name(name) => name,
        Some(_) => OTHER_DEPLOYMENTS,
    }
}

/// What one backend did: its tries by outcome, the tokens it reported, and how long it took
/// to answer. Kept with the [`crate::balance::Backend`], so it lives as long as the backend does
/// (across a reload that keeps it).
pub struct BackendStats {
    /// By `label as usize`.
    tries: [AtomicU64; TryLabel::ALL.len()],
    /// Tokens: touched once an answer, when it reported usage.
    tokens: Mutex<TokenTable>,
    /// From sending the request to its response header, for tries that got one.
    first_byte: Histogram,
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

    /// From sending a request to its response header, for the tries that got one.
    pub fn first_byte(&self) -> &Histogram {
        &self.first_byte
    }

    /// The token counts, by (deployment, client) label, in label order.
    pub fn token_series(&self) -> Vec<(String, String, TokenCounts)> {
        let table = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let mut series: Vec<_> = table
            .iter()
            .flat_map(|(d, clients)| {
                clients
                    .iter()
                    .map(move |(c, n)| (d.to_string(), c.to_string(), *n))
            })
            .collect();
        series.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        series
    }

    /// Counts the tokens reported for an answer to `client` (`None`: no `clients`) about
    /// `deployment`.
    pub fn record_usage(&self, deployment: Option<&str>, client: Option<&str>, usage: &Usage) {
        let (deployment, client) = (deployment_label(deployment), client.unwrap_or(NO_CLIENT));
        let mut table = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let known = table
            .get(deployment)
            .is_some_and(|clients| clients.contains_key(client));
        let full = || table.values().map(HashMap::len).sum::<usize>() >= MAX_TOKEN_SERIES;
        let deployment = if known || !full() {
            deployment
        } else {
            OTHER_DEPLOYMENTS
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_series_are_bounded_and_sentinels_are_no_real_name() {
        let b = BackendStats::default();
        let usage = Usage {
            prompt: 1,
            completion: 1,
            ..Usage::default()
        };
        for i in 0..MAX_TOKEN_SERIES + 10 {
            b.record_usage(Some(&format!("d{i}")), None, &usage);
        }
        b.record_usage(Some("d0"), None, &usage);
        let series = b.token_series();
        assert_eq!(series.len(), MAX_TOKEN_SERIES + 1, "the cap, plus (other)");
        let count = |d: &str| series.iter().find(|s| s.0 == d).map(|s| s.2[0]);
        assert_eq!(count("(other)"), Some(Some(10)));
        assert_eq!(count("d0"), Some(Some(2)));
        // A deployment named as a sentinel is not one.
        assert_eq!(deployment_label(Some("-")), "(other)");
        assert_eq!(deployment_label(Some("(other)")), "(other)");
        assert_eq!(deployment_label(Some("other")), "other");
        assert_eq!(deployment_label(Some("x\ny")), "(other)");
        assert_eq!(deployment_label(None), "-");
        assert_eq!(deployment_label(Some("gpt-4.1-mini")), "gpt-4.1-mini");
    }
}
