//! Counters kept in one place and served as Prometheus text by the admin listener
//! ([`exposition`]), each backend's own ([`BackendStats`]), and the in-flight count that
//! graceful shutdown waits on.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts};
use tokio::sync::Notify;

use crate::outcome::Outcome;
mod backend;
mod cache;
mod exposition;
mod labels;
mod spend;

pub use backend::{BackendStats, TokenCounts};
pub use cache::CacheEvent;
pub use exposition::{encode, Family};
use labels::{response_class, RESPONSE_CLASSES};
pub use labels::{RetryCause, TokenKind, TryLabel};

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
    /// Requests waiting for capacity now (`retry.wait_for_capacity`).
    waiting: AtomicUsize,
    /// How long each wait for capacity lasted, however it ended.
    waits: Histogram,
    /// `[ok, error]`.
    reloads: [AtomicU64; 2],
    /// `aoai_proxy_state_store_up`: unset without `state.redis`.
    state_store_up: std::sync::OnceLock<AtomicBool>,
    /// Spend and fallbacks, by label.
    spending: spend::Spending,
    /// Spans the exporter dropped (`telemetry`); unset without it.
    spans_dropped: std::sync::OnceLock<Arc<AtomicU64>>,
    /// The response cache's counters (`cache`); unset without it.
    cache: std::sync::OnceLock<cache::CacheCounts>,
}

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
            waiting: AtomicUsize::new(0),
            waits: histogram(&SECONDS_BUCKETS),
            reloads: Default::default(),
            state_store_up: std::sync::OnceLock::new(),
            spending: spend::Spending::default(),
            spans_dropped: std::sync::OnceLock::new(),
            cache: std::sync::OnceLock::new(),
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

    /// Counts a request that begins to wait for capacity; it waits until the guard drops.
    pub fn start_waiting(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting {
            metrics: self.clone(),
            since: std::time::Instant::now(),
        }
    }

    /// Requests waiting for capacity now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Records whether the shared state store answers.
    pub fn set_state_store_up(&self, up: bool) {
        self.state_store_up
            .get_or_init(AtomicBool::default)
            .store(up, Ordering::Relaxed);
    }

    /// Whether the shared state store answers; `None` when there is none.
    pub fn state_store_up(&self) -> Option<bool> {
        Some(self.state_store_up.get()?.load(Ordering::Relaxed))
    }

    /// The counter of the spans the exporter drops (`telemetry`), from now on exported.
    pub fn spans_dropped(&self) -> Arc<AtomicU64> {
        self.spans_dropped.get_or_init(Arc::default).clone()
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

/// Counts a request waiting for capacity until dropped, and then how long it waited.
pub struct Waiting {
    metrics: Arc<Metrics>,
    since: std::time::Instant,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.metrics.waiting.fetch_sub(1, Ordering::Relaxed);
        let waited = self.since.elapsed().as_secs_f64();
        self.metrics.waits.observe(waited);
    }
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

    #[test]
    fn histograms_count_into_their_buckets() {
        let m = Metrics::default();
        m.record_end(Some(200), Duration::from_millis(30), 1);
        m.record_end(Some(429), Duration::from_secs(90), 3);
        m.record_end(None, Duration::from_secs(400), 0);
        let stats = BackendStats::default();
        let throttled = Outcome::Status(http::StatusCode::TOO_MANY_REQUESTS);
        m.record_try(&stats, throttled, Retried::Yes);
        let text = encode(m.families());
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
            "aoai_proxy_responses_total{class=\"2xx\"} 1",
            "aoai_proxy_responses_total{class=\"429\"} 1",
            "aoai_proxy_retries_by_cause_total{cause=\"429\"} 1",
            "aoai_proxy_retries_by_cause_total{cause=\"5xx\"} 0",
            "# HELP aoai_proxy_requests_total Requests received.",
            "# TYPE aoai_proxy_request_tries histogram",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text.contains("state_store_up"),
            "no shared store, no gauge"
        );
        m.set_state_store_up(true);
        assert!(encode(m.families()).contains("aoai_proxy_state_store_up 1"));
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
