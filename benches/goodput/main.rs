//! The goodput benchmark (issue 23, item 6): how much of three deployments' uneven quotas
//! reaches clients, with each balancing strategy, with and without waiting for capacity.
//!
//! Three simulated Azure OpenAI deployments, in one `aoai-proxy simulate`: 120k tokens a
//! minute provisioned (priority 0), 30k and 60k pay-as-you-go (priority 1), 210k in all. In
//! front, the proxy with `balance.strategy` round_robin or headroom, and
//! `retry.wait_for_capacity` 0s or 10s; with `GOODPUT_BASELINE=PATH`, also that (older)
//! binary with its defaults. Paced clients offer 1.5 and 0.8 times the quota in estimated
//! tokens and retry a 429 twice, as the `openai` SDK does. Each run starts fresh processes
//! (quotas full), warms up for
//! `GOODPUT_WARMUP` seconds (default 20; halfway through it the quotas the load would have
//! spent are spent down, see `procs::spend_down`), then measures for `GOODPUT_SECONDS`
//! (default 120).
//!
//! Run it with `scripts/bench goodput`, or:
//!
//! ```text
//! GOODPUT_SECONDS=20 GOODPUT_BASELINE=/path/to/old/aoai-proxy cargo bench --bench goodput
//! ```
//!
//! It writes `benches/results/goodput.md`, `.json` and `.svg` and prints the table. Ten runs
//! (twelve with the baseline) of warm-up and measurement, each bounded in time; everything on
//! 127.0.0.1.

mod client;
#[path = "../common/mod.rs"]
mod common;
mod procs;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use client::Pace;
use procs::{Proxy, Simulator};
use report::{Report, Run, Settings};

/// A simulated deployment: its backend's name in the proxy, its quota and kind.
pub struct Deployment {
    pub name: &'static str,
    pub tokens_per_minute: u64,
    /// Provisioned (PTU): the proxy's priority 0; the others are priority 1.
    pub provisioned: bool,
}

pub const DEPLOYMENTS: [Deployment; 3] = [
    Deployment {
        name: "ptu-120k",
        tokens_per_minute: 120_000,
        provisioned: true,
    },
    Deployment {
        name: "paygo-30k",
        tokens_per_minute: 30_000,
        provisioned: false,
    },
    Deployment {
        name: "paygo-60k",
        tokens_per_minute: 60_000,
        provisioned: false,
    },
];

/// The loads, as multiples of the aggregate quota.
const LOADS: [f64; 2] = [1.5, 0.8];
/// Concurrent clients, each with its own connection: at 1.5 times the quota each starts a
/// request about every 20 s, so a wait of up to 10 s seldom delays its next one.
const CLIENTS: usize = 64;
/// Not measured, at the start of each run, unless `GOODPUT_WARMUP` says otherwise.
const WARMUP: f64 = 20.0;

/// The proxy's `balance.strategy`.
#[derive(Clone, Copy)]
pub enum Strategy {
    RoundRobin,
    Headroom,
}

/// A configuration under test.
pub struct Setup {
    pub binary: PathBuf,
    /// `None`: a baseline binary, given neither `balance` nor the waiting keys.
    pub strategy: Option<Strategy>,
    /// `retry.wait_for_capacity: 10s` (else `0s`).
    pub wait: bool,
}

impl Setup {
    /// How the report names it.
    pub fn label(&self) -> String {
        let strategy = match self.strategy {
            None => return "baseline, round robin".into(),
            Some(Strategy::RoundRobin) => "round_robin",
            Some(Strategy::Headroom) => "headroom",
        };
        let wait = if self.wait { "wait 10s" } else { "no wait" };
        format!("{strategy}, {wait}")
    }

    /// Its label as a file name.
    pub fn slug(&self) -> String {
        self.label()
            .replace([' ', ','], "-")
            .replace(['(', ')'], "")
    }
}

/// The aggregate quota of the [`DEPLOYMENTS`].
pub fn quota() -> u64 {
    DEPLOYMENTS.iter().map(|d| d.tokens_per_minute).sum()
}

fn setups(baseline: Option<PathBuf>) -> Vec<Setup> {
    let this = PathBuf::from(env!("CARGO_BIN_EXE_aoai-proxy"));
    let mut setups = Vec::new();
    for strategy in [Strategy::RoundRobin, Strategy::Headroom] {
        for wait in [false, true] {
            setups.push(Setup {
                binary: this.clone(),
                strategy: Some(strategy),
                wait,
            });
        }
    }
    // `GOODPUT_ONLY=TEXT`: only the configurations whose label has it (a part of a run again).
    if let Ok(only) = std::env::var("GOODPUT_ONLY") {
        setups.retain(|s| s.label().contains(&only));
    }
    if let Some(binary) = baseline {
        assert!(binary.is_file(), "GOODPUT_BASELINE: no file at {binary:?}");
        setups.push(Setup {
            binary,
            strategy: None,
            wait: false,
        });
    }
    setups
}

/// How long each run warms up and then measures, in seconds.
#[derive(Clone, Copy)]
struct Times {
    warmup: f64,
    seconds: f64,
}

/// The number of seconds in the environment variable `name`, else `default`.
fn seconds_from(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().map_or(default, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("{name}: a number of seconds, not {s:?}"))
    })
}

/// One run: fresh simulator and proxy, the clients at `load` times the quota for the warm-up
/// and the measurement of `times`, the proxy read at both ends of the measurement.
fn run(rt: &tokio::runtime::Runtime, setup: &Setup, load: f64, times: Times, dir: &Path) -> Run {
    let sim = Simulator::start(dir);
    let proxy = Proxy::start(setup, &sim.ports, dir);
    let start = Instant::now();
    let from = start + Duration::from_secs_f64(times.warmup);
    let pace = Pace {
        clients: CLIENTS,
        tokens_per_minute: load * quota() as f64,
        start,
        until: from + Duration::from_secs_f64(times.seconds),
    };
    let (samples, before, after) = rt.block_on(async {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| tokio::spawn(client::run(proxy.port, id, pace)))
            .collect();
        // Halfway through the warm-up, the proxy has seen the quotas full: spend down those the
        // load would have spent by then.
        tokio::time::sleep_until((start + (from - start) / 2).into()).await;
        // What the load spends in its steady state: at 0.8× the provisioned deployment, which
        // takes the traffic first and is offered more than it has; above 1× every one.
        let spent = (sim.ports.iter().zip(&DEPLOYMENTS))
            .filter(|(_, d)| d.provisioned || load > 1.0)
            .map(|(&port, d)| procs::spend_down(port, d.tokens_per_minute));
        futures_util::future::join_all(spent).await;
        tokio::time::sleep_until(from.into()).await;
        let before = proxy.snapshot().await;
        tokio::time::sleep_until(pace.until.into()).await;
        let after = proxy.snapshot().await;
        let mut samples = Vec::new();
        for c in clients {
            samples.extend(c.await.expect("a client"));
        }
        (samples, before, after)
    });
    drop((proxy, sim));
    let run = Run::new(
        setup.label(),
        load,
        (from, pace.until),
        &samples,
        &before,
        &after,
    );
    eprintln!("{}", run.line());
    run
}

fn main() {
    // `cargo bench` passes --bench; no argument selects anything here.
    let times = Times {
        warmup: seconds_from("GOODPUT_WARMUP", WARMUP),
        seconds: seconds_from("GOODPUT_SECONDS", 120.0),
    };
    let setups = setups(std::env::var_os("GOODPUT_BASELINE").map(PathBuf::from));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("aoai-proxy-goodput-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut runs = Vec::new();
    for setup in &setups {
        for load in LOADS {
            runs.push(run(&rt, setup, load, times, &dir));
        }
    }
    let settings = Settings {
        seconds: times.seconds,
        warmup: times.warmup,
        clients: CLIENTS,
        latency_ms: procs::LATENCY_MS,
        baseline: setups
            .iter()
            .find(|s| s.strategy.is_none())
            .map(|s| s.binary.display().to_string()),
    };
    let report = Report::new(settings, runs);
    let out = root.join("benches/results");
    std::fs::create_dir_all(&out).expect("results dir");
    std::fs::write(out.join("goodput.json"), report.json()).expect("json");
    std::fs::write(out.join("goodput.md"), report.markdown()).expect("markdown");
    std::fs::write(out.join("goodput.svg"), report.svg()).expect("svg");
    println!("{}", report.markdown());
    println!("written: {}/goodput.{{md,json,svg}}", out.display());
    let _ = std::fs::remove_dir_all(&dir);
}
