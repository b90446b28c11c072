//! The pool's metric families: a series per backend (its tries, tokens and time to first
//! byte, from its [`BackendStats`](crate::metrics::BackendStats)) and its standing (cooldowns,
//! ejection, probes), built afresh for each scrape since the backends change on reload.

use std::time::Instant;

use prometheus::proto::MetricFamily;

use super::Pool;
use crate::metrics::{Family, TokenKind, TryLabel};

impl Pool {
    /// The families of every backend's series.
    pub fn families(&self) -> Vec<MetricFamily> {
        let mut first_byte = Family::histogram(
            "aoai_proxy_upstream_first_byte_seconds",
            "Each try, from its request to the backend's response header.",
        );
        let mut tokens = Family::counter(
            "aoai_proxy_tokens_total",
            "Tokens the backends reported, by kind: prompt, completion, cached, reasoning.",
        );
        let mut tries = Family::counter(
            "aoai_proxy_backend_tries_total",
            "Every try, by outcome: 2xx, 3xx, 4xx, 429, 5xx, connect, tls, timeout, dropped.",
        );
        for b in self.backends() {
            let backend = b.name.as_str();
            first_byte.add_histogram(&[("backend", backend)], b.stats.first_byte());
            for (deployment, client, counts) in b.stats.token_series() {
                for (kind, n) in TokenKind::ALL.iter().zip(counts) {
                    let Some(n) = n else { continue };
                    let labels = [
                        ("backend", backend),
                        ("deployment", deployment.as_str()),
                        ("client", client.as_str()),
                        ("kind", kind.as_str()),
                    ];
                    tokens.add(&labels, n as f64);
                }
            }
            for (outcome, n) in TryLabel::ALL.iter().zip(b.stats.tries()) {
                tries.add(
                    &[("backend", backend), ("outcome", outcome.as_str())],
                    n as f64,
                );
            }
        }
        let mut families = vec![first_byte.done(), tokens.done(), tries.done()];
        families.extend(self.standing_families());
        families
    }

    /// Cooldowns, ejections and probe results of every backend, as gauges.
    fn standing_families(&self) -> [MetricFamily; 3] {
        let now = Instant::now();
        let mut cooling = Family::gauge(
            "aoai_proxy_backend_cooling_seconds",
            "Seconds a backend still cools for a deployment after a 429 or 503.",
        );
        let mut ejected = Family::gauge(
            "aoai_proxy_backend_ejected_seconds",
            "Seconds a backend stays ejected by passive health (0: in rotation).",
        );
        let mut probe = Family::gauge(
            "aoai_proxy_backend_probe_up",
            "1 while a backend passes its active health checks, 0 while it fails them.",
        );
        for b in self.backends() {
            let backend = b.name.as_str();
            let s = b.standing.snapshot(now);
            for (deployment, left) in &s.cooling {
                let d = deployment.as_deref().unwrap_or("");
                cooling.add(
                    &[("backend", backend), ("deployment", d)],
                    left.as_secs_f64(),
                );
            }
            let out = s.ejected.map_or(0.0, |d| d.as_secs_f64());
            ejected.add(&[("backend", backend)], out);
            if let Some(up) = s.probe_up {
                probe.add(&[("backend", backend)], f64::from(u8::from(up)));
            }
        }
        [cooling.done(), ejected.done(), probe.done()]
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::pool::tests::pool;
    use crate::metrics::encode;
    use crate::usage::Usage;

    #[test]
    fn every_backend_has_its_series_and_labels_are_escaped() {
        let p = pool(&[(0, 1), (0, 1)]);
        let usage = Usage {
            prompt: 3,
            completion: 4,
            ..Usage::default()
        };
        p.get(0)
            .stats
            .record_usage(Some("gpt-4o"), Some("team \"a\"\nb"), &usage);
        p.get(1).stats.record_first_byte(Duration::from_millis(7));
        p.get(1)
            .standing
            .cool(Some("gpt-4o"), Duration::from_secs(60), "test");
        let text = encode(p.families());
        for line in [
            "aoai_proxy_tokens_total{backend=\"127.0.0.1:1000\",deployment=\"gpt-4o\",client=\"team \\\"a\\\"\\nb\",kind=\"prompt\"} 3",
            "aoai_proxy_upstream_first_byte_seconds_bucket{backend=\"127.0.0.1:1001\",le=\"0.01\"} 1",
            "aoai_proxy_backend_tries_total{backend=\"127.0.0.1:1000\",outcome=\"2xx\"} 0",
            "aoai_proxy_backend_ejected_seconds{backend=\"127.0.0.1:1000\"} 0",
            "# HELP aoai_proxy_backend_cooling_seconds ",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains(
            "aoai_proxy_backend_cooling_seconds{backend=\"127.0.0.1:1001\",deployment=\"gpt-4o\"} 59."
        ));
        assert!(!text.contains("probe_up"), "no probes, no series");
    }
}
