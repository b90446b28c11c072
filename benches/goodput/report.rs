//! The goodput benchmark's results: each run's figures from what its clients saw and what the
//! proxy said, and the same as markdown, JSON and an SVG plot.

use std::fmt::Write;
use std::time::Instant;

use serde_json::{json, Value};

use crate::client::{Outcome, Sample};
use crate::procs::Snapshot;

/// How the runs were made.
pub struct Settings {
    pub seconds: f64,
    pub warmup: f64,
    pub clients: usize,
    pub latency_ms: u64,
    /// The baseline binary, when there was one.
    pub baseline: Option<String>,
}

/// One configuration at one load.
pub struct Run {
    pub config: String,
    /// Times the aggregate quota.
    pub load: f64,
    /// Estimated tokens a minute of the requests started in the window, over the quota.
    pub offered: f64,
    /// Estimated tokens a minute of the requests answered 200 in the window, over the quota.
    pub served: f64,
    /// Requests that ended in the window, however.
    pub requests: u64,
    /// Requests that ended 429 (their retries spent).
    pub client_429: u64,
    /// Every 429 the clients were answered, retried ones included.
    pub seen_429: u64,
    /// Other statuses than 200 and 429, and connection errors.
    pub other_failures: u64,
    pub backend_tries: f64,
    pub backend_429: f64,
    /// Of the requests answered 200, in milliseconds.
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// `aoai_proxy_wait_seconds` over the window: its sum and count; `None` without it.
    pub wait: Option<(f64, f64)>,
    pub cpu_s: f64,
    /// Each backend's tries over the window, by outcome.
    pub tries: Vec<(String, String, f64)>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `per` of `n`, per 1,000.
fn per_1k(n: f64, per: f64) -> f64 {
    if per > 0.0 {
        n * 1000.0 / per
    } else {
        0.0
    }
}

impl Run {
    /// The run of `config` at `load` from its clients' `samples` and the proxy's snapshots
    /// `before` and `after` the measurement `window`.
    pub fn new(
        config: String,
        load: f64,
        (from, until): (Instant, Instant),
        samples: &[Sample],
        before: &Snapshot,
        after: &Snapshot,
    ) -> Run {
        let minutes = (until - from).as_secs_f64() / 60.0;
        let quota = crate::quota() as f64 * minutes;
        let within = |t: Instant| t >= from && t < until;
        let offered: u64 = samples
            .iter()
            .filter(|s| within(s.started))
            .map(|s| s.estimate)
            .sum();
        let ended: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.outcome != Outcome::Unfinished && within(s.done))
            .collect();
        let ok: Vec<&&Sample> = ended
            .iter()
            .filter(|s| s.outcome == Outcome::Status(200))
            .collect();
        let client_429 = ended
            .iter()
            .filter(|s| s.outcome == Outcome::Status(429))
            .count() as u64;
        let mut latency: Vec<f64> = ok
            .iter()
            .map(|s| (s.done - s.started).as_secs_f64() * 1000.0)
            .collect();
        latency.sort_by(f64::total_cmp);
        let tries: Vec<(String, String, f64)> = after
            .tries
            .iter()
            .map(|(backend, outcome, n)| {
                let earlier = before
                    .tries
                    .iter()
                    .find(|(b, o, _)| b == backend && o == outcome)
                    .map_or(0.0, |t| t.2);
                (backend.clone(), outcome.clone(), n - earlier)
            })
            .collect();
        Run {
            config,
            load,
            offered: offered as f64 / quota,
            served: ok.iter().map(|s| s.estimate).sum::<u64>() as f64 / quota,
            requests: ended.len() as u64,
            client_429,
            seen_429: ended.iter().map(|s| u64::from(s.throttled)).sum(),
            other_failures: (ended.len() - ok.len()) as u64 - client_429,
            backend_tries: tries.iter().map(|t| t.2).sum(),
            backend_429: tries.iter().filter(|t| t.1 == "429").map(|t| t.2).sum(),
            p50_ms: percentile(&latency, 0.5),
            p95_ms: percentile(&latency, 0.95),
            wait: after
                .wait
                .zip(before.wait)
                .map(|((sum, count), (sum0, count0))| (sum - sum0, count - count0)),
            cpu_s: after.cpu - before.cpu,
            tries,
        }
    }

    fn client_429_per_1k(&self) -> f64 {
        per_1k(self.client_429 as f64, self.requests as f64)
    }

    fn backend_429_per_1k(&self) -> f64 {
        per_1k(self.backend_429, self.backend_tries)
    }

    /// Waiting as the table shows it: requests that waited and for how long, or `-`.
    fn waited(&self) -> String {
        match self.wait {
            None => "-".into(),
            Some((_, count)) if count < 1.0 => "0".into(),
            Some((sum, count)) => format!("{count:.0} req, {sum:.1} s ({:.2} s each)", sum / count),
        }
    }

    /// A one-line progress report.
    pub fn line(&self) -> String {
        format!(
            "{:<24} {:.1}x  offered {:>5.1}%  served {:>5.1}%  client 429 {:>4}/{:<5} backend 429 {:>5.1}/1k tries  p50 {:>6.0} ms  p95 {:>6.0} ms  waited {}",
            self.config,
            self.load,
            self.offered * 100.0,
            self.served * 100.0,
            self.client_429,
            self.requests,
            self.backend_429_per_1k(),
            self.p50_ms,
            self.p95_ms,
            self.waited()
        )
    }

    fn json(&self) -> Value {
        let tries: Vec<Value> = self
            .tries
            .iter()
            .map(|(b, o, n)| json!({"backend": b, "outcome": o, "tries": n}))
            .collect();
        json!({"configuration": self.config, "load": self.load, "offered_share": self.offered,
               "served_share": self.served, "requests": self.requests, "client_429": self.client_429, "seen_429": self.seen_429,
               "client_429_per_1k": self.client_429_per_1k(), "other_failures": self.other_failures,
               "backend_tries": self.backend_tries, "backend_429": self.backend_429,
               "backend_429_per_1k_tries": self.backend_429_per_1k(), "p50_ms": self.p50_ms,
               "p95_ms": self.p95_ms, "wait_seconds_sum": self.wait.map(|w| w.0),
               "wait_count": self.wait.map(|w| w.1), "proxy_cpu_s": self.cpu_s, "backend_tries_by_outcome": tries})
    }
}

/// All the runs, and how and where they were made.
pub struct Report {
    settings: Settings,
    runs: Vec<Run>,
    cpu: (String, usize),
    date: String,
}

impl Report {
    pub fn new(settings: Settings, runs: Vec<Run>) -> Report {
        Report {
            settings,
            runs,
            cpu: crate::common::cpu_info(),
            date: jiff::Timestamp::now()
                .strftime("%Y-%m-%d %H:%M UTC")
                .to_string(),
        }
    }

    fn setup(&self) -> String {
        let s = &self.settings;
        let deployments: Vec<String> = crate::DEPLOYMENTS
            .iter()
            .map(|d| {
                let kind = if d.provisioned {
                    "provisioned, priority 0"
                } else {
                    "priority 1"
                };
                format!("{} ({}k TPM, {kind})", d.name, d.tokens_per_minute / 1000)
            })
            .collect();
        let baseline = s.baseline.as_ref().map_or(String::new(), |b| {
            format!(" The baseline is `{b}`, configured without `balance` and `retry`.")
        });
        let mut out = String::new();
        let _ = write!(
            out,
            "Measured on {}, {} × {}. ",
            self.date, self.cpu.1, self.cpu.0
        );
        let _ = write!(
            out,
            "One `aoai-proxy simulate` (one thread, {} ms before each answer) serves {}: {}k tokens a minute in all, charged on arrival (prompt + `max_tokens`). ",
            s.latency_ms,
            deployments.join(", "),
            crate::quota() / 1000
        );
        let _ = write!(
            out,
            "The proxy (one worker, `max_tries` 3) in front; {} paced clients in the benchmark's process send chat completions (prompt 200–2,000 tokens, `max_tokens` 100–1,000, the same seeded sequence in every run) at 1.5 and 0.8 times the aggregate quota, in estimated tokens, and, like the `openai` SDK, retry a 429 twice after the `retry-after-ms` it gave. ",
            s.clients
        );
        let _ = writeln!(
            out,
            "Each run: fresh processes, {:.0} s of warm-up, then {:.0} s measured.{baseline}\n",
            s.warmup, s.seconds
        );
        out.push_str("A quota starts full and holds a minute's tokens, which may go at once; so that a run measures quotas in use, not that first minute, halfway through the warm-up (after the proxy has seen each deployment's full quota) the quotas the load would have spent in its steady state (at 1.5×, every deployment's; at 0.8×, the provisioned one's, which takes the traffic first and is offered more than it has) are spent down to a few hundred tokens by requests sent straight to the simulator. `GOODPUT_WARMUP` sets the warm-up.\n");
        out
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from("# Goodput: three deployments of uneven quota\n\n");
        s.push_str(&self.setup());
        let _ = writeln!(s, "\nOffered and served: estimated tokens a minute of the requests started (offered) and of those answered 200 (served) in the measured window, as a share of the aggregate quota. Client 429s: requests that still got a 429 after their two retries; 429s seen: every 429 the clients were answered, retried ones included; failures: what else the clients got. Backend 429s: the proxy's `aoai_proxy_backend_tries_total`. Waited: the proxy's `aoai_proxy_wait_seconds` (`-`: the binary has none). Latency: of the requests answered 200.\n");
        let _ = writeln!(s, "| configuration | load | offered | served | requests | client 429s | 429s / 1k requests | 429s seen / 1k requests | other failures | backend 429s / 1k tries | p50 ms | p95 ms | waited | proxy CPU s |");
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
        );
        for r in &self.runs {
            let _ = writeln!(
                s,
                "| {} | {:.1}× | {:.1} % | {:.1} % | {} | {} | {:.1} | {:.1} | {} | {:.1} | {:.0} | {:.0} | {} | {:.2} |",
                r.config,
                r.load,
                r.offered * 100.0,
                r.served * 100.0,
                r.requests,
                r.client_429,
                r.client_429_per_1k(),
                per_1k(r.seen_429 as f64, r.requests as f64),
                r.other_failures,
                r.backend_429_per_1k(),
                r.p50_ms,
                r.p95_ms,
                r.waited(),
                r.cpu_s
            );
        }
        s
    }

    pub fn json(&self) -> String {
        let s = &self.settings;
        let deployments: Vec<Value> = crate::DEPLOYMENTS
            .iter()
            .map(|d| json!({"name": d.name, "tokens_per_minute": d.tokens_per_minute, "provisioned": d.provisioned}))
            .collect();
        let v = json!({
            "date": self.date,
            "machine": {"cpu": self.cpu.0, "cpus": self.cpu.1},
            "settings": {"seconds": s.seconds, "warmup_seconds": s.warmup, "clients": s.clients,
                         "latency_ms": s.latency_ms, "baseline": s.baseline, "deployments": deployments,
                         "aggregate_tokens_per_minute": crate::quota()},
            "runs": self.runs.iter().map(Run::json).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// Two panels, a group of bars per configuration and a bar per load: the share of the
    /// quota served, and the backends' 429s per 1,000 tries.
    pub fn svg(&self) -> String {
        let (w, h) = (1000.0, 440.0);
        let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
        let served = |r: &Run| r.served * 100.0;
        self.panel(
            &mut s,
            40.0,
            "Served, % of the aggregate quota",
            served,
            Some(100.0),
        );
        let backend = |r: &Run| r.backend_429_per_1k();
        self.panel(&mut s, 530.0, "Backend 429s per 1,000 tries", backend, None);
        for (i, load) in crate::LOADS.iter().enumerate() {
            let x = 40.0 + i as f64 * 180.0;
            let _ = writeln!(s, "<rect x=\"{x}\" y=\"418\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"428\">{load}× the quota offered</text>", color(i), x + 16.0);
        }
        s.push_str("</svg>\n");
        s
    }

    /// One panel at `x0`: `value` of each run, grouped by configuration, with a dashed line at
    /// `reference`.
    fn panel(
        &self,
        s: &mut String,
        x0: f64,
        title: &str,
        value: fn(&Run) -> f64,
        reference: Option<f64>,
    ) {
        let (y0, ph, pw) = (350.0, 290.0, 430.0);
        let _ = writeln!(
            s,
            "<text x=\"{x0}\" y=\"30\" font-size=\"14\">{title}</text>"
        );
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{}\" y2=\"{y0}\" stroke=\"#444\"/>",
            x0 + pw
        );
        let mut configs: Vec<&str> = Vec::new();
        for r in &self.runs {
            if !configs.contains(&r.config.as_str()) {
                configs.push(&r.config);
            }
        }
        let max = self
            .runs
            .iter()
            .map(value)
            .chain(reference)
            .fold(1.0, f64::max)
            * 1.1;
        let y = |v: f64| y0 - v / max * ph;
        if let Some(v) = reference {
            let _ = writeln!(s, "<line x1=\"{x0}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/><text x=\"{1}\" y=\"{2:.1}\" font-size=\"9\" text-anchor=\"end\">{v}</text>", y(v), x0 + pw, y(v) - 3.0);
        }
        let group = pw / configs.len().max(1) as f64;
        let bar = (group - 16.0) / crate::LOADS.len() as f64;
        for (gi, config) in configs.iter().enumerate() {
            let gx = x0 + gi as f64 * group + 8.0;
            for (li, load) in crate::LOADS.iter().enumerate() {
                let Some(r) = self
                    .runs
                    .iter()
                    .find(|r| r.config == *config && r.load == *load)
                else {
                    continue;
                };
                let (v, x) = (value(r), gx + li as f64 * bar);
                let _ = writeln!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
                    y(v),
                    bar - 3.0,
                    y0 - y(v),
                    color(li)
                );
                let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\">{v:.0}</text>", x + (bar - 3.0) / 2.0, y(v) - 3.0);
            }
            // The label on two lines: the strategy, and how it waits.
            let (first, second) = config.split_once(", ").unwrap_or((config, ""));
            let cx = gx + (group - 16.0) / 2.0;
            let _ = writeln!(s, "<text x=\"{cx:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{first}</text><text x=\"{cx:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{second}</text>", y0 + 16.0, y0 + 29.0);
        }
    }
}

/// The bars' colour for the `i`th of the loads.
fn color(i: usize) -> &'static str {
    ["#1565c0", "#90caf9"].get(i).copied().unwrap_or("#9e9e9e")
}
