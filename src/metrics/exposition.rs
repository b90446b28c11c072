//! The Prometheus text exposition: metric families built from the counters and encoded by the
//! `prometheus` crate's [`TextEncoder`], which writes each family's `# HELP` and `# TYPE` and
//! escapes label values. The process's own families are built here ([`Metrics::families`]);
//! those whose series follow the pool (a set a backend, changing on reload) are the pool's to
//! build (`balance::exposition`), and the token's the admin listener's, with [`Family`].

use std::sync::atomic::Ordering;

use prometheus::core::Metric as _;
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Histogram, TextEncoder};

use super::{Metrics, RetryCause, RESPONSE_CLASSES};

/// A metric family being built, one series at a time.
pub struct Family {
    family: MetricFamily,
    series: Vec<proto::Metric>,
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(kind);
        Family {
            family,
            series: Vec::new(),
        }
    }

    pub fn counter(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::COUNTER)
    }

    pub fn gauge(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::GAUGE)
    }

    pub fn histogram(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::HISTOGRAM)
    }

    /// Adds the series of `labels` with `value` (a counter's or a gauge's).
    pub fn add(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Family {
        let mut m = proto::Metric::default();
        m.set_label(label_pairs(labels));
        match self.family.get_field_type() {
            MetricType::GAUGE => {
                let mut g = proto::Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
            _ => {
                let mut c = proto::Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
        }
        self.push(m)
    }

    /// Adds the series of `labels` with the buckets, sum and count of `h`.
    pub fn add_histogram(&mut self, labels: &[(&str, &str)], h: &Histogram) -> &mut Family {
        let mut m = h.metric();
        m.set_label(label_pairs(labels));
        self.push(m)
    }

    fn push(&mut self, m: proto::Metric) -> &mut Family {
        self.series.push(m);
        self
    }

    pub fn done(mut self) -> MetricFamily {
        self.family.set_metric(self.series);
        self.family
    }
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect()
}

/// The text exposition of `families`; a family with no series yet is left out (it would
/// have nothing to say).
pub fn encode(mut families: Vec<MetricFamily>) -> String {
    families.retain(|f| !f.get_metric().is_empty());
    TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_else(|e| format!("# the metrics could not be encoded: {e}\n"))
}

impl Metrics {
    /// The process's own families: requests, answers, retries, reloads, the shared state.
    pub fn families(&self) -> Vec<MetricFamily> {
        let n = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed) as f64;
        let mut out = Vec::with_capacity(10);
        out.push(one(
            Family::counter("aoai_proxy_requests_total", "Requests received."),
            n(&self.requests),
        ));
        out.push(one(
            Family::counter(
                "aoai_proxy_retries_total",
                "Tries followed by another (a retry).",
            ),
            n(&self.retries),
        ));
        out.push(one(
            Family::gauge("aoai_proxy_in_flight", "Requests being served now."),
            self.in_flight() as f64,
        ));
        out.push(one(
            Family::gauge(
                "aoai_proxy_waiting",
                "Requests waiting for capacity now (retry.wait_for_capacity).",
            ),
            self.waiting() as f64,
        ));
        out.extend(self.optional_families());
        let mut causes = Family::counter(
            "aoai_proxy_retries_by_cause_total",
            "Retries by what the try that was retried produced.",
        );
        for cause in RetryCause::ALL {
            causes.add(
                &[("cause", cause.as_str())],
                n(&self.retry_causes[cause as usize]),
            );
        }
        out.push(causes.done());
        let mut classes = Family::counter(
            "aoai_proxy_responses_total",
            "Answers by what the client got: 2xx, 3xx, 4xx, 429 or 5xx.",
        );
        for (class, count) in RESPONSE_CLASSES.iter().zip(&self.responses) {
            classes.add(&[("class", class)], n(count));
        }
        out.push(classes.done());
        let (ok, error) = self.reloads();
        let mut reloads = Family::counter(
            "aoai_proxy_config_reloads_total",
            "Configuration reloads (SIGHUP) by result.",
        );
        reloads.add(&[("result", "ok")], ok as f64);
        reloads.add(&[("result", "error")], error as f64);
        out.push(reloads.done());
        let mut duration = Family::histogram(
            "aoai_proxy_request_duration_seconds",
            "Requests from their arrival to the last byte of their answer.",
        );
        duration.add_histogram(&[], &self.duration);
        out.push(duration.done());
        let mut tries = Family::histogram(
            "aoai_proxy_request_tries",
            "Tries per request that reached a backend.",
        );
        tries.add_histogram(&[], &self.tries);
        out.push(tries.done());
        let mut waits = Family::histogram(
            "aoai_proxy_wait_seconds",
            "How long requests waited for capacity (retry.wait_for_capacity), however the wait ended.",
        );
        waits.add_histogram(&[], &self.waits);
        out.push(waits.done());
        out.extend(self.spend_families());
        out.extend(self.cache_families());
        out
    }

    /// The families of what is configured only sometimes: the shared state (`state.redis`)
    /// and the trace exporter (`telemetry`).
    fn optional_families(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        if let Some(up) = self.state_store_up() {
            let help = "1 while the shared state store (state.redis) answers, 0 while this replica uses its own state.";
            out.push(one(
                Family::gauge("aoai_proxy_state_store_up", help),
                f64::from(u8::from(up)),
            ));
        }
        if let Some(dropped) = self.spans_dropped.get() {
            let help =
                "Spans the trace exporter dropped: its queue full, or an export that failed.";
            out.push(one(
                Family::counter("aoai_proxy_spans_dropped_total", help),
                dropped.load(Ordering::Relaxed) as f64,
            ));
        }
        out
    }
}

/// `family` with its one series, unlabelled, of `value`.
fn one(mut family: Family, value: f64) -> MetricFamily {
    family.add(&[], value);
    family.done()
}
