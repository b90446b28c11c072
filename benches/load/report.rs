//! The benchmark's results: each run's statistics, the ratios the project targets, and the
//! same as markdown, JSON and an SVG plot.

use std::fmt::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::client::Samples;

/// One measurement.
pub struct Run {
    pub target: String,
    pub scenario: String,
    pub conns: usize,
    pub streaming: bool,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50: u32,
    pub p99: u32,
    pub p999: u32,
    pub ttfb_p50: u32,
    /// Process CPU seconds per 1,000 requests.
    pub cpu_per_1k: Option<f64>,
    pub rss_mb: Option<f64>,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Run {
    #[allow(clippy::too_many_arguments)]
    pub fn from_samples(
        target: &str,
        scenario: &str,
        conns: usize,
        streaming: bool,
        seconds: f64,
        mut s: Samples,
        cpu: Option<f64>,
        rss_mb: Option<f64>,
    ) -> Run {
        s.latency_us.sort_unstable();
        s.ttfb_us.sort_unstable();
        let requests = s.latency_us.len() as u64;
        Run {
            target: target.into(),
            scenario: scenario.into(),
            conns,
            streaming,
            requests,
            errors: s.errors,
            rps: requests as f64 / seconds,
            p50: percentile(&s.latency_us, 0.5),
            p99: percentile(&s.latency_us, 0.99),
            p999: percentile(&s.latency_us, 0.999),
            ttfb_p50: percentile(&s.ttfb_us, 0.5),
            cpu_per_1k: cpu
                .filter(|_| requests > 0)
                .map(|c| c / requests as f64 * 1000.0),
            rss_mb,
        }
    }

    /// A one-line progress report.
    pub fn line(&self) -> String {
        format!(
            "{:<22} {:>3} conns {:<9} {:<10} {:>8.0} req/s  p50 {:>6}us  p99 {:>6}us  errors {}",
            self.scenario,
            self.conns,
            if self.streaming { "streaming" } else { "whole" },
            self.target,
            self.rps,
            self.p50,
            self.p99,
            self.errors
        )
    }

    fn json(&self) -> Value {
        json!({"target": self.target, "scenario": self.scenario, "connections": self.conns, "streaming": self.streaming,
               "requests": self.requests, "errors": self.errors, "rps": self.rps, "p50_us": self.p50, "p99_us": self.p99,
               "p999_us": self.p999, "ttfb_p50_us": self.ttfb_p50, "cpu_s_per_1k": self.cpu_per_1k, "rss_mb": self.rss_mb})
    }
}

/// Memory with many streams open at once.
pub struct Streams {
    pub target: String,
    pub open: usize,
    pub rss_mb: f64,
}

/// What the benchmark ran on.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gb: f64,
    pub kernel: String,
    pub nginx: String,
}

impl Machine {
    pub fn read(nginx: Option<&Path>) -> Machine {
        let (cpu, _) = crate::common::cpu_info();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kb: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let nginx = nginx
            .and_then(|bin| std::process::Command::new(bin).arg("-v").output().ok())
            .map_or("not installed".into(), |o| {
                String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .trim_start_matches("nginx version: ")
                    .to_string()
            });
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gb: kb / 1024.0 / 1024.0,
            kernel,
            nginx,
        }
    }
}

/// All results, and the ratios the project holds itself to.
pub struct Report {
    machine: Machine,
    runs: Vec<Run>,
    streams: Vec<Streams>,
    peaks: Vec<(String, f64)>,
}

/// A target the project set itself, with today's figure.
struct Target {
    what: String,
    goal: &'static str,
    today: String,
    met: Option<bool>,
}

impl Report {
    pub fn new(
        machine: Machine,
        runs: Vec<Run>,
        streams: Vec<Streams>,
        peaks: Vec<(String, f64)>,
    ) -> Report {
        Report {
            machine,
            runs,
            streams,
            peaks,
        }
    }

    fn find(&self, target: &str, scenario: &str, conns: usize, streaming: bool) -> Option<&Run> {
        self.runs.iter().find(|r| {
            r.target == target
                && r.scenario == scenario
                && r.conns == conns
                && r.streaming == streaming
        })
    }

    fn targets(&self) -> Vec<Target> {
        let run = |t, scenario, c, s| self.find(t, scenario, c, s);
        let mut out = Vec::new();
        for (scenario, label) in [
            ("normal", "simulator backend, 1 worker"),
            (crate::NGINX_BACKEND, "nginx backend, 1 worker"),
            (crate::NGINX_BACKEND_2, "nginx backend, 2 workers"),
            (crate::NGINX_BACKEND_LOG, "nginx backend, access log on"),
        ] {
            if let (Some(a), Some(n)) = (
                run("aoai-proxy", scenario, 32, false),
                run("nginx", scenario, 32, false),
            ) {
                let ratio = a.rps / n.rps;
                out.push(Target {
                    what: format!("req/s at 32 connections ({label})"),
                    goal: ">= 1.0 x nginx (stretch 1.2 x)",
                    today: format!("{ratio:.2} x nginx ({:.0} vs {:.0})", a.rps, n.rps),
                    met: Some(ratio >= 1.0),
                });
                out.push(Target {
                    what: format!("p99 at 32 connections ({label})"),
                    goal: "<= nginx",
                    today: format!("{} us vs {} us", a.p99, n.p99),
                    met: Some(a.p99 <= n.p99),
                });
                if let (Some(ac), Some(nc)) = (a.cpu_per_1k, n.cpu_per_1k) {
                    out.push(Target {
                        what: format!("CPU per request at 32 connections ({label})"),
                        goal: "<= nginx",
                        today: format!("{:.3} vs {:.3} CPU-s per 1,000", ac, nc),
                        met: Some(ac <= nc),
                    });
                }
            }
            if let (Some(a), Some(d)) = (
                run("aoai-proxy", scenario, 1, false),
                run("direct", scenario, 1, false),
            ) {
                let added = i64::from(a.p50) - i64::from(d.p50);
                let nginx = run("nginx", scenario, 1, false)
                    .map(|n| format!(" (nginx {} us)", i64::from(n.p50) - i64::from(d.p50)))
                    .unwrap_or_default();
                out.push(Target {
                    what: format!("p50 added at 1 connection ({label})"),
                    goal: "<= 40 us",
                    today: format!("{added} us{nginx}"),
                    met: Some(added <= 40),
                });
            }
        }
        if let (Some(a), Some(d)) = (
            run("aoai-proxy", "normal", 1, true),
            run("direct", "normal", 1, true),
        ) {
            let added = i64::from(a.ttfb_p50) - i64::from(d.ttfb_p50);
            out.push(Target {
                what: "stream first byte added at 1 connection".into(),
                goal: "<= 200 us",
                today: format!("{added} us"),
                met: Some(added <= 200),
            });
        }
        if let Some(s) = self.streams.iter().find(|s| s.target == "aoai-proxy") {
            out.push(Target {
                what: "RSS with 1,000 open streams".into(),
                goal: "<= 50 MB",
                today: format!("{:.1} MB ({} open)", s.rss_mb, s.open),
                met: Some(s.rss_mb <= 50.0 && s.open == 1000),
            });
        }
        if let (Some(d), Some(a)) = (
            run("direct", "normal", 32, false),
            run("aoai-proxy", "normal", 32, false),
        ) {
            let ratio = d.rps / a.rps;
            out.push(Target {
                what: "simulator headroom at 32 connections".into(),
                goal: ">= 2 x the proxy",
                today: format!("{ratio:.1} x ({:.0} req/s direct)", d.rps),
                met: Some(ratio >= 2.0),
            });
        }
        for scenario in ["one backend 429", "one backend refusing"] {
            if let Some(a) = self.find("aoai-proxy", scenario, 32, false) {
                out.push(Target {
                    what: if scenario == "one backend 429" {
                        "client errors, one backend answering 429".into()
                    } else {
                        "client errors, one backend refusing".into()
                    },
                    goal: "0",
                    today: a.errors.to_string(),
                    met: Some(a.errors == 0),
                });
            }
        }
        out
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "Machine: {} cores ({}), {:.0} GiB, Linux {}; nginx {}. One worker per proxy (two in the \"2 workers\" rows), one thread for the simulator, one worker for nginx as the backend; load from 2 threads in the same box.\n", m.cores, m.cpu, m.memory_gb, m.kernel, m.nginx);
        let _ = writeln!(s, "| target | goal | today | met |\n|---|---|---|---|");
        for t in self.targets() {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            };
            let _ = writeln!(s, "| {} | {} | {} | {met} |", t.what, t.goal, t.today);
        }
        let _ = writeln!(s, "\n| scenario | conns | body | target | req/s | p50 µs | p99 µs | p99.9 µs | p50 added µs | first byte µs | first byte added µs | CPU-s / 1k req | RSS MB | errors |");
        let _ = writeln!(
            s,
            "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &self.runs {
            let direct = self.find("direct", &r.scenario, r.conns, r.streaming);
            let added = |f: fn(&Run) -> u32| match direct {
                Some(d) if r.target != "direct" => (i64::from(f(r)) - i64::from(f(d))).to_string(),
                _ => "".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.conns,
                if r.streaming { "stream" } else { "whole" },
                r.target,
                r.rps,
                r.p50,
                r.p99,
                r.p999,
                added(|r| r.p50),
                r.ttfb_p50,
                added(|r| r.ttfb_p50),
                r.cpu_per_1k.map_or(String::new(), |c| format!("{c:.3}")),
                r.rss_mb.map_or(String::new(), |m| format!("{m:.1}")),
                r.errors
            );
        }
        let _ = writeln!(
            s,
            "\n| {} open streams | open | RSS MB |\n|---|---:|---:|",
            crate::OPEN_STREAMS
        );
        for st in &self.streams {
            let _ = writeln!(s, "| {} | {} | {:.1} |", st.target, st.open, st.rss_mb);
        }
        let peaks: Vec<String> = self
            .peaks
            .iter()
            .map(|(t, p)| format!("{t} {p:.1} MB"))
            .collect();
        let _ = writeln!(s, "\nPeak RSS over the normal runs: {}.", peaks.join(", "));
        s
    }

    pub fn json(&self) -> String {
        let m = &self.machine;
        let targets: Vec<Value> = self
            .targets()
            .iter()
            .map(|t| json!({"what": t.what, "goal": t.goal, "today": t.today, "met": t.met}))
            .collect();
        let v = json!({
            "machine": {"cpu": m.cpu, "cores": m.cores, "memory_gb": m.memory_gb, "kernel": m.kernel, "nginx": m.nginx},
            "targets": targets,
            "runs": self.runs.iter().map(Run::json).collect::<Vec<_>>(),
            "streams": self.streams.iter().map(|s| json!({"target": s.target, "open": s.open, "rss_mb": s.rss_mb})).collect::<Vec<_>>(),
            "peak_rss_mb": self.peaks.iter().map(|(t, p)| json!({"target": t, "mb": p})).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// Two panels: throughput per target and connection count, and the latency distribution
    /// (p50, p99, p99.9) per target at 32 connections.
    pub fn svg(&self) -> String {
        let colors = [
            ("direct", "#9e9e9e"),
            ("aoai-proxy", "#1565c0"),
            ("nginx", "#2e7d32"),
        ];
        let targets: Vec<(&str, &str)> = colors
            .iter()
            .copied()
            .filter(|(t, _)| self.runs.iter().any(|r| r.target == *t))
            .collect();
        let (w, h) = (960.0, 420.0);
        let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
        // Panel 1: req/s, whole answers.
        let rps: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.scenario == "normal" && !r.streaming)
            .map(|r| r.rps)
            .collect();
        let max = rps.iter().cloned().fold(1.0, f64::max);
        let (x0, y0, ph) = (60.0, 360.0, 300.0);
        let _ = writeln!(
            s,
            "<text x=\"{x0}\" y=\"30\" font-size=\"14\">Throughput, whole answers (req/s)</text>"
        );
        let group = 130.0;
        let bar = group / (targets.len() as f64 + 1.0);
        for (gi, conns) in crate::CONNECTIONS.iter().enumerate() {
            let gx = x0 + gi as f64 * (group + 20.0);
            for (ti, (t, color)) in targets.iter().enumerate() {
                if let Some(r) = self.find(t, "normal", *conns, false) {
                    let bh = r.rps / max * ph;
                    let x = gx + ti as f64 * bar;
                    let _ = writeln!(s, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{color}\"/>", y0 - bh, bar - 4.0);
                    let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\">{:.0}k</text>", x + (bar - 4.0) / 2.0, y0 - bh - 3.0, r.rps / 1000.0);
                }
            }
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{conns} conn</text>",
                gx + group / 2.0 - bar / 2.0,
                y0 + 18.0
            );
        }
        // Panel 2: latency percentiles at 32 connections, log scale.
        let (px, pw) = (540.0, 380.0);
        let _ = writeln!(s, "<text x=\"{px}\" y=\"30\" font-size=\"14\">Latency at 32 connections, whole answers (µs, log)</text>");
        let lat: Vec<&Run> = targets
            .iter()
            .filter_map(|(t, _)| self.find(t, "normal", 32, false))
            .collect();
        let hi = lat.iter().map(|r| r.p999).max().unwrap_or(1).max(10) as f64;
        let lo = lat.iter().map(|r| r.p50).min().unwrap_or(1).max(1) as f64 / 2.0;
        let ly = |v: f64| y0 - ((v.max(lo)).ln() - lo.ln()) / (hi.ln() - lo.ln()) * ph;
        let _ = writeln!(
            s,
            "<line x1=\"{px}\" y1=\"{y0}\" x2=\"{}\" y2=\"{y0}\" stroke=\"#444\"/>",
            px + pw
        );
        for (pi, label) in ["p50", "p99", "p99.9"].iter().enumerate() {
            let x = px + 40.0 + pi as f64 * 150.0;
            let _ = writeln!(
                s,
                "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
                y0 + 18.0
            );
        }
        for (t, color) in &targets {
            let Some(r) = self.find(t, "normal", 32, false) else {
                continue;
            };
            let pts: Vec<String> = [r.p50, r.p99, r.p999]
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    format!(
                        "{:.1},{:.1}",
                        px + 40.0 + i as f64 * 150.0,
                        ly(f64::from(*v))
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
                pts.join(" ")
            );
            for (i, v) in [r.p50, r.p99, r.p999].iter().enumerate() {
                let (x, y) = (px + 40.0 + i as f64 * 150.0, ly(f64::from(*v)));
                let _ = writeln!(s, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\">{v}</text>", x + 5.0, y - 4.0);
            }
        }
        for (i, (t, color)) in targets.iter().enumerate() {
            let x = 60.0 + i as f64 * 140.0;
            let _ = writeln!(s, "<rect x=\"{x}\" y=\"395\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"405\">{t}</text>", x + 16.0);
        }
        s.push_str("</svg>\n");
        s
    }
}
