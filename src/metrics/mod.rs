//! Counters kept in one place and served as Prometheus text by the admin listener, and the
//! in-flight count that graceful shutdown waits on.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts};
use tokio::sync::Notify;

use crate::retry::{Failure, Outcome};
mod backend;
mod exposition;

use backend::TokenCounts;
pub use backend::{BackendStats, MAX_TOKEN_SERIES};

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

/// Histogram buckets for LLM traffic, in seconds: 10 ms to 5 minutes (a long completion
/// streams for minutes; an embedding answers in tens of milliseconds).
const SECONDS_BUCKETS: [f64; 15] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets of tries per request.
const TRIES_BUCKETS: [f64; 8] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0];

fn histogram(buckets: &[f64]) -> Histogram {
    // Buckets are constants, sorted and finite: `with_opts` cannot fail on them.
    Histogram::with_opts(HistogramOpts::new("h", "h").buckets(buckets.to_vec()))
        .expect("valid histogram buckets")
}

/// Why a try was retried: the `cause` label of `aoai_proxy_retries_by_cause_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryCause {
    Throttled,
    ServerError,
    TokenRefused,
    Connect,
    Tls,
    Timeout,
    Dropped,
    Other,
}

impl RetryCause {
    pub const ALL: [RetryCause; 8] = [
        RetryCause::Throttled,
        RetryCause::ServerError,
        RetryCause::TokenRefused,
        RetryCause::Connect,
        RetryCause::Tls,
        RetryCause::Timeout,
        RetryCause::Dropped,
        RetryCause::Other,
    ];

    pub fn of(outcome: Outcome) -> RetryCause {
        match outcome {
            Outcome::Status(s) => match s.as_u16() {
                429 => RetryCause::Throttled,
                401 => RetryCause::TokenRefused,
                500.. => RetryCause::ServerError,
                _ => RetryCause::Other,
            },
            Outcome::Failed(Failure::Connect) => RetryCause::Connect,
            Outcome::Failed(Failure::Tls) => RetryCause::Tls,
            Outcome::Failed(Failure::Timeout) => RetryCause::Timeout,
            Outcome::Failed(Failure::Dropped) => RetryCause::Dropped,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RetryCause::Throttled => "429",
            RetryCause::ServerError => "5xx",
            RetryCause::TokenRefused => "401",
            RetryCause::Connect => "connect",
            RetryCause::Tls => "tls",
            RetryCause::Timeout => "timeout",
            RetryCause::Dropped => "dropped",
            RetryCause::Other => "other",
        }
    }
}

/// The `class` label of `aoai_proxy_responses_total`: what the client got.
const RESPONSE_CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "429", "5xx"];

fn response_class(status: u16) -> usize {
    match status {
        429 => 3,
        0..300 => 0,
        300..400 => 1,
        400..500 => 2,
        _ => 4,
    }
}

/// Whether a configuration reload took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    Ok,
    Error,
}

/// All counters of the process that are not a backend's own ([`BackendStats`]).
pub struct Metrics {
    requests: AtomicU64,
    retries: AtomicU64,
    /// By [`RetryCause`] `as usize`.
    retry_causes: [AtomicU64; RetryCause::ALL.len()],
    /// By [`RESPONSE_CLASSES`].
    responses: [AtomicU64; RESPONSE_CLASSES.len()],
    in_flight: Arc<InFlightCount>,
    /// Client-facing: from the request's arrival to the end of its answer.
    duration: Histogram,
    /// Tries per request that reached a backend.
    tries: Histogram,
    /// `[ok, error]`.
    reloads: [AtomicU64; 2],
    /// `aoai_proxy_state_store_up`: 0 or 1, [`NO_STATE_STORE`] without `state.redis`.
    state_store_up: std::sync::atomic::AtomicU8,
}

/// `state_store_up` when there is no shared store.
const NO_STATE_STORE: u8 = 2;

/// Requests being served, and the wake-up a draining shutdown waits for.
#[derive(Default)]
struct InFlightCount {
    count: AtomicUsize,
    /// Set once shutdown waits: only then does the last request out notify.
    draining: AtomicBool,
    idle: Notify,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            retry_causes: Default::default(),
            responses: Default::default(),
            in_flight: Arc::default(),
            duration: histogram(&SECONDS_BUCKETS),
            tries: histogram(&TRIES_BUCKETS),
            reloads: Default::default(),
            state_store_up: std::sync::atomic::AtomicU8::new(NO_STATE_STORE),
        }
    }
}

impl Metrics {
    /// Counts one try on `backend`; `retried` when another try follows it.
    pub fn record_try(&self, backend: &BackendStats, outcome: Outcome, retried: Retried) {
        backend.record_try(outcome);
        if retried == Retried::Yes {
            self.retries.fetch_add(1, Ordering::Relaxed);
            self.retry_causes[RetryCause::of(outcome) as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request's end: the status the client got (`None`: it got none), how long it
    /// took, and the tries it made.
    pub fn record_end(&self, status: Option<u16>, took: Duration, tries: u32) {
        if let Some(status) = status {
            self.responses[response_class(status)].fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(took.as_secs_f64());
        if tries > 0 {
            self.tries.observe(f64::from(tries));
        }
    }

    /// Whether the shared state store answers (`None`: there is none).
    pub fn set_state_store_up(&self, up: Option<bool>) {
        let v = up.map_or(NO_STATE_STORE, u8::from);
        self.state_store_up.store(v, Ordering::Relaxed);
    }

    /// Counts a configuration reload.
    pub fn record_reload(&self, result: Reload) {
        self.reloads[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Reloads so far: `(ok, error)`.
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads[0].load(Ordering::Relaxed),
            self.reloads[1].load(Ordering::Relaxed),
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Usage;
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
        let pool = crate::balance::test_pool(&[(0, 1)]);
        let b = &pool.get(0).stats;
        let usage = Usage {
            prompt: 1,
            completion: 1,
            ..Usage::default()
        };
        for i in 0..MAX_TOKEN_SERIES + 10 {
            b.record_usage(Some(&format!("d{i}")), None, &usage);
        }
        b.record_usage(Some("d0"), None, &usage);
        b.record_usage(Some("x\ny"), None, &usage);
        let text = Metrics::default().render(&pool, None);
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

    #[test]
    fn histograms_count_into_their_buckets() {
        let pool = crate::balance::test_pool(&[(0, 1)]);
        let m = Metrics::default();
        m.record_end(Some(200), Duration::from_millis(30), 1);
        m.record_end(Some(429), Duration::from_secs(90), 3);
        m.record_end(None, Duration::from_secs(400), 0);
        pool.get(0)
            .stats
            .record_first_byte(Duration::from_millis(7));
        let ok = Outcome::Status(http::StatusCode::TOO_MANY_REQUESTS);
        m.record_try(&pool.get(0).stats, ok, Retried::Yes);
        let text = m.render(&pool, None);
        for line in [
            "aoai_proxy_request_duration_seconds_bucket{le=\"0.025\"} 0",
            "aoai_proxy_request_duration_seconds_bucket{le=\"0.05\"} 1",
            "aoai_proxy_request_duration_seconds_bucket{le=\"120\"} 2",
            "aoai_proxy_request_duration_seconds_bucket{le=\"300\"} 2",
            "aoai_proxy_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "aoai_proxy_request_duration_seconds_count 3",
            "aoai_proxy_request_tries_bucket{le=\"1\"} 1",
            "aoai_proxy_request_tries_bucket{le=\"3\"} 2",
            "aoai_proxy_request_tries_count 2",
            "aoai_proxy_upstream_first_byte_seconds_bucket{backend=\"127.0.0.1:1000\",le=\"0.01\"} 1",
            "aoai_proxy_upstream_first_byte_seconds_count{backend=\"127.0.0.1:1000\"} 1",
            "aoai_proxy_responses_total{class=\"2xx\"} 1",
            "aoai_proxy_responses_total{class=\"429\"} 1",
            "aoai_proxy_retries_by_cause_total{cause=\"429\"} 1",
            "aoai_proxy_retries_by_cause_total{cause=\"5xx\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[tokio::test]
    async fn idle_returns_when_the_last_request_ends() {
        let m = Arc::new(Metrics::default());
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
