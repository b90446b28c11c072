//! Counters kept in one place and served as Prometheus text by the admin listener.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::retry::{Failure, Outcome};

/// The outcome labels of `aoai_proxy_backend_tries_total`.
const OUTCOMES: [&str; 9] = [
    "2xx", "3xx", "4xx", "429", "5xx", "connect", "tls", "timeout", "dropped",
];

fn outcome_slot(o: Outcome) -> usize {
    match o {
        Outcome::Status(429) => 3,
        Outcome::Status(s) if s < 300 => 0,
        Outcome::Status(s) if s < 400 => 1,
        Outcome::Status(s) if s < 500 => 2,
        Outcome::Status(_) => 4,
        Outcome::Failed(Failure::Connect) => 5,
        Outcome::Failed(Failure::Tls) => 6,
        Outcome::Failed(Failure::Timeout) => 7,
        Outcome::Failed(Failure::Dropped) => 8,
    }
}

/// All counters of the process.
pub struct Metrics {
    backends: Vec<String>,
    /// `[backend][outcome]`.
    tries: Vec<[AtomicU64; OUTCOMES.len()]>,
    requests: AtomicU64,
    retries: AtomicU64,
    in_flight: Arc<AtomicUsize>,
}

impl Metrics {
    /// Counters for the named backends (in pool order).
    pub fn new(backends: Vec<String>) -> Self {
        let tries = backends.iter().map(|_| Default::default()).collect();
        Metrics {
            backends,
            tries,
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            in_flight: Arc::default(),
        }
    }

    /// Counts one try on backend `index`; `retried` when another try follows it.
    pub fn record_try(&self, index: usize, outcome: Outcome, retried: bool) {
        if let Some(row) = self.tries.get(index) {
            row[outcome_slot(outcome)].fetch_add(1, Ordering::Relaxed);
        }
        if retried {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks a request as started; it counts as in flight until the guard drops.
    pub fn start_request(&self) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.in_flight.clone())
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The Prometheus text exposition.
    pub fn render(&self, ready: bool, token_fetches: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# TYPE aoai_proxy_requests_total counter\naoai_proxy_requests_total {}",
            self.requests.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE aoai_proxy_retries_total counter\naoai_proxy_retries_total {}",
            self.retries.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE aoai_proxy_in_flight gauge\naoai_proxy_in_flight {}",
            self.in_flight()
        );
        let _ = writeln!(
            out,
            "# TYPE aoai_proxy_ready gauge\naoai_proxy_ready {}",
            u8::from(ready)
        );
        let _ = writeln!(out, "# TYPE aoai_proxy_token_fetches_total counter\naoai_proxy_token_fetches_total {token_fetches}");
        let _ = writeln!(out, "# TYPE aoai_proxy_backend_tries_total counter");
        for (name, row) in self.backends.iter().zip(&self.tries) {
            let name = label(name);
            for (label, n) in OUTCOMES.iter().zip(row) {
                let _ = writeln!(
                    out,
                    "aoai_proxy_backend_tries_total{{backend=\"{name}\",outcome=\"{label}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        }
        out
    }
}

/// Counts a request in flight until dropped.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Cooldowns, ejections and probe results of every backend, as Prometheus gauges.
pub fn render_health(pool: &crate::pool::Pool) -> String {
    let now = std::time::Instant::now();
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

/// A label value with `\` and `"` escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}
