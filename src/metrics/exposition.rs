//! The Prometheus text exposition of [`Metrics`] and the pool's backends. Written by hand: the
//! label sets follow the pool, which changes on reload; the histograms' buckets, sums and
//! counts come from the `prometheus` crate's lock-free histogram.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

use prometheus::core::Metric as _;
use prometheus::Histogram;

use super::{Metrics, RetryCause, TokenCounts, TokenKind, TryLabel, RESPONSE_CLASSES};
use crate::balance::Pool;
use crate::credentials::TokenCache;

impl Metrics {
    /// The Prometheus text exposition: these counters, the backends of `pool` (their tries,
    /// tokens, timings and health) and the token the proxy holds (`None`: it needs none).
    pub fn render(&self, pool: &Pool, token: Option<&TokenCache>) -> String {
        let mut out = String::new();
        let series = |out: &mut String, kind: &str, name: &str, value: u64| {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
        };
        series(
            &mut out,
            "counter",
            "aoai_proxy_requests_total",
            self.requests.load(Ordering::Relaxed),
        );
        series(
            &mut out,
            "counter",
            "aoai_proxy_retries_total",
            self.retries.load(Ordering::Relaxed),
        );
        series(
            &mut out,
            "gauge",
            "aoai_proxy_in_flight",
            self.in_flight() as u64,
        );
        series(
            &mut out,
            "gauge",
            "aoai_proxy_ready",
            u64::from(token.is_none_or(|t| t.is_ready())),
        );
        let state = self.state_store_up.load(Ordering::Relaxed);
        if state != super::NO_STATE_STORE {
            series(
                &mut out,
                "gauge",
                "aoai_proxy_state_store_up",
                u64::from(state),
            );
        }
        series(
            &mut out,
            "counter",
            "aoai_proxy_token_fetches_total",
            token.map_or(0, |t| t.fetches()),
        );
        let _ = writeln!(out, "# TYPE aoai_proxy_token_refreshes_total counter");
        let refreshes = token.map_or((0, 0), |t| (t.fetches(), t.failed_fetches()));
        let _ = writeln!(
            out,
            "aoai_proxy_token_refreshes_total{{result=\"ok\"}} {}\naoai_proxy_token_refreshes_total{{result=\"error\"}} {}",
            refreshes.0, refreshes.1
        );
        if let Some(left) = token.and_then(TokenCache::expires_in) {
            series(
                &mut out,
                "gauge",
                "aoai_proxy_token_expires_in_seconds",
                left,
            );
        }
        let _ = writeln!(out, "# TYPE aoai_proxy_retries_by_cause_total counter");
        for cause in RetryCause::ALL {
            let _ = writeln!(
                out,
                "aoai_proxy_retries_by_cause_total{{cause=\"{}\"}} {}",
                cause.as_str(),
                self.retry_causes[cause as usize].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE aoai_proxy_responses_total counter");
        for (class, n) in RESPONSE_CLASSES.iter().zip(&self.responses) {
            let _ = writeln!(
                out,
                "aoai_proxy_responses_total{{class=\"{class}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let (ok, error) = self.reloads();
        let _ = writeln!(
            out,
            "# TYPE aoai_proxy_config_reloads_total counter\naoai_proxy_config_reloads_total{{result=\"ok\"}} {ok}\naoai_proxy_config_reloads_total{{result=\"error\"}} {error}"
        );
        render_histogram(
            &mut out,
            "aoai_proxy_request_duration_seconds",
            &[(None, &self.duration)],
        );
        render_histogram(&mut out, "aoai_proxy_request_tries", &[(None, &self.tries)]);
        let backends = pool.backends();
        let first_bytes: Vec<(Option<String>, &Histogram)> = backends
            .iter()
            .map(|b| {
                (
                    Some(format!("backend=\"{}\"", label(&b.name))),
                    &b.stats.first_byte,
                )
            })
            .collect();
        let first_bytes: Vec<(Option<&str>, &Histogram)> = first_bytes
            .iter()
            .map(|(l, h)| (l.as_deref(), *h))
            .collect();
        render_histogram(
            &mut out,
            "aoai_proxy_upstream_first_byte_seconds",
            &first_bytes,
        );

        let _ = writeln!(out, "# TYPE aoai_proxy_tokens_total counter");
        for b in backends {
            let table = b.stats.tokens.lock().unwrap_or_else(|e| e.into_inner());
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
                        label(&b.name),
                        label(deployment),
                        label(client),
                        kind.as_str()
                    );
                }
            }
        }
        let _ = writeln!(out, "# TYPE aoai_proxy_backend_tries_total counter");
        for b in backends {
            let name = label(&b.name);
            for (l, n) in TryLabel::ALL.iter().zip(b.stats.tries()) {
                let _ = writeln!(
                    out,
                    "aoai_proxy_backend_tries_total{{backend=\"{name}\",outcome=\"{}\"}} {n}",
                    l.as_str(),
                );
            }
        }
        render_health(&mut out, pool);
        out
    }
}

/// Writes `name` as a Prometheus histogram: one series a `(labels, histogram)`, `labels` the
/// text inside the braces (`None`: no labels). The buckets, sum and count come from the
/// `prometheus` crate's lock-free histogram; only the text is written here, because the other
/// series are, and their label sets follow the pool, which changes on reload.
fn render_histogram(out: &mut String, name: &str, series: &[(Option<&str>, &Histogram)]) {
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (labels, h) in series {
        let m = h.metric();
        let h = m.get_histogram();
        let (open, sep) = match labels {
            Some(l) => (format!("{{{l}"), ","),
            None => ("{".to_string(), ""),
        };
        for b in h.get_bucket() {
            let _ = writeln!(
                out,
                "{name}_bucket{open}{sep}le=\"{}\"}} {}",
                b.upper_bound(),
                b.cumulative_count()
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{open}{sep}le=\"+Inf\"}} {}",
            h.get_sample_count()
        );
        let braces = labels.map(|l| format!("{{{l}}}")).unwrap_or_default();
        let _ = writeln!(out, "{name}_sum{braces} {}", h.get_sample_sum());
        let _ = writeln!(out, "{name}_count{braces} {}", h.get_sample_count());
    }
}

/// Cooldowns, ejections and probe results of every backend, as Prometheus gauges.
fn render_health(out: &mut String, pool: &Pool) {
    let now = Instant::now();
    out.push_str(
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
}

/// A label value with `\`, `"` and line feeds escaped, as the exposition format asks.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
