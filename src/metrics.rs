//! Counters kept in one place and served as Prometheus text by the admin listener, and the
//! in-flight count that graceful shutdown waits on.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ahash::RandomState;
use tokio::sync::Notify;

use crate::balance::Pool;
use crate::retry::{Failure, Outcome};
use crate::usage::Usage;

/// The `outcome` label of `aoai_proxy_backend_tries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryLabel {
    S2xx,
    S3xx,
    S4xx,
    S429,
    S5xx,
    Connect,
    Tls,
    Timeout,
    Dropped,
}

impl TryLabel {
    /// Every label, in the order they are rendered (and stored: `label as usize`).
    pub const ALL: [TryLabel; 9] = [
        TryLabel::S2xx,
        TryLabel::S3xx,
        TryLabel::S4xx,
        TryLabel::S429,
        TryLabel::S5xx,
        TryLabel::Connect,
        TryLabel::Tls,
        TryLabel::Timeout,
        TryLabel::Dropped,
    ];

    /// The label of what a try produced.
    pub fn of(outcome: Outcome) -> TryLabel {
        match outcome {
            Outcome::Status(s) => match s.as_u16() {
                429 => TryLabel::S429,
                0..300 => TryLabel::S2xx,
                300..400 => TryLabel::S3xx,
                400..500 => TryLabel::S4xx,
                _ => TryLabel::S5xx,
            },
            Outcome::Failed(Failure::Connect) => TryLabel::Connect,
            Outcome::Failed(Failure::Tls) => TryLabel::Tls,
            Outcome::Failed(Failure::Timeout) => TryLabel::Timeout,
            Outcome::Failed(Failure::Dropped) => TryLabel::Dropped,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TryLabel::S2xx => "2xx",
            TryLabel::S3xx => "3xx",
            TryLabel::S4xx => "4xx",
            TryLabel::S429 => "429",
            TryLabel::S5xx => "5xx",
            TryLabel::Connect => "connect",
            TryLabel::Tls => "tls",
            TryLabel::Timeout => "timeout",
            TryLabel::Dropped => "dropped",
        }
    }
}

/// The `kind` label of `aoai_proxy_tokens_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Prompt,
    Completion,
    Cached,
    Reasoning,
}

impl TokenKind {
    /// Every kind, in the order they are stored and rendered.
    pub const ALL: [TokenKind; 4] = [
        TokenKind::Prompt,
        TokenKind::Completion,
        TokenKind::Cached,
        TokenKind::Reasoning,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Prompt => "prompt",
            TokenKind::Completion => "completion",
            TokenKind::Cached => "cached",
            TokenKind::Reasoning => "reasoning",
        }
    }
}

/// Tokens of one (deployment, client) on one backend, by [`TokenKind`]: `None` until a kind
/// is first reported.
type TokenCounts = [Option<u64>; 4];

/// Per backend: deployment, then client, then the counts. Looked up by `&str`, so an answer
/// of a series already seen allocates nothing (and hashed with aHash, not SipHash: the keys
/// are names the proxy has seen answered, and this runs once an answer).
type TokenTable = HashMap<Box<str>, HashMap<Box<str>, TokenCounts, RandomState>, RandomState>;

/// The most (deployment, client) series kept per backend. A deployment is named by the client
/// (in the path or the body's `model`), so spellings that a backend still answers could grow the
/// table without end: past the cap, new ones are counted under `deployment="other"`.
pub const MAX_TOKEN_SERIES: usize = 1000;

/// All counters of the process.
pub struct Metrics {
    backends: Vec<String>,
    /// `[backend][label as usize]`.
    tries: Vec<[AtomicU64; TryLabel::ALL.len()]>,
    requests: AtomicU64,
    retries: AtomicU64,
    in_flight: Arc<InFlightCount>,
    /// Tokens by backend: touched once an answer, when it reported usage.
    tokens: Vec<Mutex<TokenTable>>,
}

/// Requests being served, and the wake-up a draining shutdown waits for.
#[derive(Default)]
struct InFlightCount {
    count: AtomicUsize,
    /// Set once shutdown waits: only then does the last request out notify.
    draining: AtomicBool,
    idle: Notify,
}

impl Metrics {
    /// Counters for the named backends (in pool order).
    pub fn new(backends: Vec<String>) -> Self {
        let tries = backends.iter().map(|_| Default::default()).collect();
        Metrics {
            tries,
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            in_flight: Arc::default(),
            tokens: backends.iter().map(|_| Mutex::default()).collect(),
            backends,
        }
    }

    /// Counts the tokens backend `index` reported for an answer to `client` (`None`: no
    /// `clients`) about `deployment`.
    pub fn record_usage(
        &self,
        index: usize,
        deployment: Option<&str>,
        client: Option<&str>,
        usage: &Usage,
    ) {
        let Some(table) = self.tokens.get(index) else {
            return;
        };
        let (deployment, client) = (deployment.unwrap_or("-"), client.unwrap_or("-"));
        let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
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
                *count = Some(count.unwrap_or(0) + n);
            }
        }
    }

    /// Counts one try on backend `index`; `retried` when another try follows it.
    pub fn record_try(&self, index: usize, outcome: Outcome, retried: Retried) {
        if let Some(row) = self.tries.get(index) {
            row[TryLabel::of(outcome) as usize].fetch_add(1, Ordering::Relaxed);
        }
        if retried == Retried::Yes {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks a request as started; it counts as in flight until the guard drops.
    pub fn start_request(&self) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.count.fetch_add(1, Ordering::AcqRel);
        InFlight(self.in_flight.clone())
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.count.load(Ordering::Acquire)
    }

    /// Returns once no request is in flight.
    pub async fn idle(&self) {
        // SeqCst here and in `InFlight::drop`: either this sees the last request's decrement,
        // or that request sees `draining` and notifies.
        self.in_flight.draining.store(true, Ordering::SeqCst);
        while self.in_flight.count.load(Ordering::SeqCst) > 0 {
            self.in_flight.idle.notified().await;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, ready: bool, token_fetches: u64) -> String {
        let mut out = String::new();
        let mut series = |kind: &str, name: &str, value: u64| {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
        };
        series(
            "counter",
            "aoai_proxy_requests_total",
            self.requests.load(Ordering::Relaxed),
        );
        series(
            "counter",
            "aoai_proxy_retries_total",
            self.retries.load(Ordering::Relaxed),
        );
        series("gauge", "aoai_proxy_in_flight", self.in_flight() as u64);
        series("gauge", "aoai_proxy_ready", u64::from(ready));
        series("counter", "aoai_proxy_token_fetches_total", token_fetches);
        let _ = writeln!(out, "# TYPE aoai_proxy_tokens_total counter");
        for (backend, table) in self.backends.iter().zip(&self.tokens) {
            let table = table.lock().unwrap_or_else(|e| e.into_inner());
            let mut series: Vec<(&str, &str, &TokenCounts)> = table
                .iter()
                .flat_map(|(d, clients)| clients.iter().map(move |(c, n)| (&**d, &**c, n)))
                .collect();
            series.sort_unstable_by_key(|(d, c, _)| (*d, *c));
            for (deployment, client, counts) in series {
                for (kind, n) in TokenKind::ALL.iter().zip(counts) {
                    let Some(n) = n else { continue };
                    let _ = writeln!(
                        out,
                        "aoai_proxy_tokens_total{{backend=\"{}\",deployment=\"{}\",client=\"{}\",kind=\"{}\"}} {n}",
                        label(backend),
                        label(deployment),
                        label(client),
                        kind.as_str()
                    );
                }
            }
        }
        let _ = writeln!(out, "# TYPE aoai_proxy_backend_tries_total counter");
        for (name, row) in self.backends.iter().zip(&self.tries) {
            let name = label(name);
            for l in TryLabel::ALL {
                let _ = writeln!(
                    out,
                    "aoai_proxy_backend_tries_total{{backend=\"{name}\",outcome=\"{}\"}} {}",
                    l.as_str(),
                    row[l as usize].load(Ordering::Relaxed)
                );
            }
        }
        out
    }
}

/// Whether another try followed the one being counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retried {
    Yes,
    No,
}

/// Counts a request in flight until dropped.
pub struct InFlight(Arc<InFlightCount>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let before = self.0.count.fetch_sub(1, Ordering::SeqCst);
        if before == 1 && self.0.draining.load(Ordering::SeqCst) {
            self.0.idle.notify_one();
        }
    }
}

/// Cooldowns, ejections and probe results of every backend, as Prometheus gauges.
pub fn render_health(pool: &Pool) -> String {
    let now = Instant::now();
    let mut out = String::from(
        "# TYPE aoai_proxy_backend_cooling_seconds gauge\n# TYPE aoai_proxy_backend_ejected_seconds gauge\n# TYPE aoai_proxy_backend_probe_up gauge\n",
    );
    for b in pool.backends() {
        let name = label(&b.name);
        let s = b.health.snapshot(now);
        for (deployment, left) in &s.cooling {
            let d = label(deployment.as_deref().unwrap_or(""));
            let _ = writeln!(
                out,
                "aoai_proxy_backend_cooling_seconds{{backend=\"{name}\",deployment=\"{d}\"}} {:.3}",
                left.as_secs_f64()
            );
        }
        let ejected = s.ejected.map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(
            out,
            "aoai_proxy_backend_ejected_seconds{{backend=\"{name}\"}} {ejected:.3}"
        );
        if let Some(up) = s.probe_up {
            let _ = writeln!(
                out,
                "aoai_proxy_backend_probe_up{{backend=\"{name}\"}} {}",
                u8::from(up)
            );
        }
    }
    out
}

/// A label value with `\`, `"` and line feeds escaped, as the exposition format asks.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn every_outcome_has_its_label() {
        let status = |s| TryLabel::of(Outcome::Status(StatusCode::from_u16(s).unwrap()));
        let labels: Vec<&str> = [200, 302, 404, 429, 503]
            .into_iter()
            .map(|s| status(s).as_str())
            .collect();
        assert_eq!(labels, ["2xx", "3xx", "4xx", "429", "5xx"]);
        assert_eq!(
            TryLabel::of(Outcome::Failed(Failure::Timeout)).as_str(),
            "timeout"
        );
        for (i, l) in TryLabel::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i, "{l:?} is stored where it is rendered");
        }
    }

    #[test]
    fn token_series_are_bounded_and_labels_escaped() {
        let m = Metrics::new(vec!["b0".into()]);
        let usage = Usage {
            prompt: 1,
            completion: 1,
            ..Usage::default()
        };
        for i in 0..MAX_TOKEN_SERIES + 10 {
            m.record_usage(0, Some(&format!("d{i}")), None, &usage);
        }
        m.record_usage(0, Some("d0"), None, &usage);
        m.record_usage(0, Some("x\ny"), None, &usage);
        let text = m.render(true, 0);
        let series = text
            .lines()
            .filter(|l| l.starts_with("aoai_proxy_tokens_total{") && l.contains("kind=\"prompt\""))
            .count();
        assert_eq!(
            series,
            MAX_TOKEN_SERIES + 1,
            "the cap, plus deployment=\"other\""
        );
        assert!(text.contains("deployment=\"other\",client=\"-\",kind=\"prompt\"} 11"));
        assert!(text.contains("deployment=\"d0\",client=\"-\",kind=\"prompt\"} 2"));
        assert!(
            !text.contains("x\ny"),
            "a line feed got into the exposition"
        );
    }

    #[tokio::test]
    async fn idle_returns_when_the_last_request_ends() {
        let m = Arc::new(Metrics::new(vec![]));
        let a = m.start_request();
        let b = m.start_request();
        let waiter = tokio::spawn({
            let m = m.clone();
            async move { m.idle().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one request is still in flight");
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("idle() did not return")
            .unwrap();
    }
}
