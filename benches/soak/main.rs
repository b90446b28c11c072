//! The soak: two proxy replicas sharing one Redis, in front of three simulated backends, under
//! mixed load for a while (five minutes unless `SOAK_SECONDS` says otherwise), with trouble:
//! some 429s all along, one backend killed (SIGKILL) and restarted every 10 s, Redis restarted
//! once half way.
//!
//! Run it with `scripts/soak [SECONDS]`. It prints the report and writes it to
//! `benches/results/soak-latest.md`: requests by kind, client-visible failures (those that came
//! while no backend was being killed are the ones that count: every such request had a healthy
//! backend), and each replica's RSS and open file descriptors at the start and the end.
//!
//! Everything runs on 127.0.0.1; every loop is bounded by the run's time.

#[path = "../common/mod.rs"]
mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use common::{free_port, Proc};

const CHAT: &str = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
/// Concurrent clients.
const CLIENTS: usize = 12;
/// A backend is killed this often, and started again after [`DOWN_FOR`].
const KILL_EVERY: Duration = Duration::from_secs(10);
const DOWN_FOR: Duration = Duration::from_secs(3);

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("log file");
    Proc(
        cmd.stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("cannot start a process"),
    )
}

fn proxy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aoai-proxy"))
}

/// Backend `i`'s simulator: a 429 (retry after 500 ms) every [`throttle_every`]`(i)`.
fn simulator(i: usize, port: u16, dir: &Path) -> Proc {
    let every = throttle_every(i).as_millis().to_string();
    let p = spawn(
        Command::new(proxy_bin())
            .arg("simulate")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--throttle-every-ms", &every, "--retry-after-ms", "500"])
            .args(["--chunk-delay-ms", "20"]),
        &dir.join(format!("sim-{port}.log")),
    );
    wait_port(port, "a simulator");
    p
}

/// How often backend `i` answers a 429: 3 s, 3.7 s, 4.4 s, so that the three are seldom all
/// cooling at once (when they are, the client's 429 is the right answer: no backend can serve).
fn throttle_every(i: usize) -> Duration {
    Duration::from_millis(3000 + 700 * i as u64)
}

fn redis_server(port: u16, dir: &Path) -> Proc {
    let p = spawn(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir),
        &dir.join("redis.log"),
    );
    wait_port(port, "redis-server");
    p
}

/// RSS (KiB) and open file descriptors of process `pid`.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    chat: AtomicU64,
    streams: AtomicU64,
    chains: AtomicU64,
    /// Failures while a backend was down or being restarted (a stream on the killed backend
    /// breaks; an object made on it is gone with it).
    failed_near_kill: AtomicU64,
    /// Failures with every backend up: the ones that count.
    failed: AtomicU64,
    /// 429s: every backend that could serve was cooling at that moment (no healthy backend).
    throttled: AtomicU64,
    /// The first few failures of each kind: with every backend up, near a kill.
    examples: Mutex<[Vec<String>; 2]>,
    /// Failures near a kill, by what they were ([`what_failed`]).
    near_kill_kinds: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

/// What a failure was, from the client's error.
fn what_failed(e: &str) -> &'static str {
    if e.contains("body broke") || e.contains("without [DONE]") {
        "an answer broken off midway (its backend was killed)"
    } else if e.contains("previous_response_not_found") || e.starts_with("404") {
        "an object lost with the killed backend"
    } else if e.starts_with("502") || e.starts_with("504") {
        "502/504: no answer from the killed backend, the others cooling"
    } else {
        "other"
    }
}

/// When a backend was down: from its kill to its restart (`None` while it is down), since the
/// start, padded by a second each side.
#[derive(Default)]
struct Troubles(Mutex<Vec<(Duration, Option<Duration>)>>);

impl Troubles {
    fn begin(&self, at: Duration) {
        self.0.lock().unwrap().push((at, None));
    }

    fn end(&self, at: Duration) {
        if let Some(last) = self.0.lock().unwrap().last_mut() {
            last.1 = Some(at);
        }
    }

    fn overlaps(&self, from: Duration, to: Duration) -> bool {
        let pad = Duration::from_secs(1);
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|&(a, b)| b.is_none_or(|b| from < b + pad) && to + pad > a)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let run_for = Duration::from_secs(seconds);
    let dir = std::env::temp_dir().join(format!("aoai-proxy-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");

    let redis_port = free_port();
    let mut redis = Some(redis_server(redis_port, &dir));
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut sims: Vec<Option<Proc>> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| Some(simulator(i, p, &dir)))
        .collect();

    let mut yaml = format!(
        "auth: {{kind: none}}\nstate: {{redis: {{url: \"redis://127.0.0.1:{redis_port}/0\"}}}}\n\
         clients:\n  - {{name: soak, key: soak-key, requests_per_minute: 1000000}}\n\
         timeouts: {{connect: 1s, response_header: 10s}}\nbackends:\n"
    );
    for (i, p) in ports.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{url: \"http://127.0.0.1:{p}\", name: b{i}, api_key: k}}\n"
        ));
    }
    let mut replicas = Vec::new();
    let mut urls = Vec::new();
    for r in 0..2 {
        let (port, admin) = (free_port(), free_port());
        let file = dir.join(format!("replica-{r}.yaml"));
        std::fs::write(
            &file,
            format!("listen: [\"127.0.0.1:{port}\"]\nadmin: {{listen: \"127.0.0.1:{admin}\"}}\nserver: {{threads: 1}}\n{yaml}"),
        )
        .expect("config");
        let p = spawn(
            Command::new(proxy_bin())
                .arg("--config")
                .arg(&file)
                .env("RUST_LOG", "warn")
                .env("NO_PROXY", "127.0.0.1,localhost"),
            &dir.join(format!("replica-{r}.log")),
        );
        wait_port(port, "a replica");
        urls.push(format!("http://127.0.0.1:{port}"));
        replicas.push(p);
    }
    let pids: Vec<u32> = replicas.iter().map(|p| p.0.id()).collect();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");

    // Warm up, then measure the start.
    for i in 0..50 {
        let _ = chat(&client, &urls[i % 2], false).await;
    }
    let at_start: Vec<(u64, usize)> = pids.iter().map(|&p| footprint(p)).collect();

    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let troubles = Arc::new(Troubles::default());
    let deadline = started + run_for;
    let mut load = Vec::new();
    for c in 0..CLIENTS {
        let (client, urls, tally, troubles) = (
            client.clone(),
            urls.clone(),
            tally.clone(),
            troubles.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = c;
            while Instant::now() < deadline {
                n += 1;
                let from = started.elapsed();
                let (kind, result) = match n % 10 {
                    0 => (
                        &tally.chains,
                        chain(&client, &urls[n % 2], &urls[(n + 1) % 2]).await,
                    ),
                    1..=3 => (&tally.streams, chat(&client, &urls[n % 2], true).await),
                    _ => (&tally.chat, chat(&client, &urls[n % 2], false).await),
                };
                kind.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = &result {
                    if e.starts_with("429") {
                        // As a client would: wait a little before the next.
                        tally.throttled.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
                if let Err(e) = result {
                    let near = troubles.overlaps(from, started.elapsed());
                    let counter = if near {
                        &tally.failed_near_kill
                    } else {
                        &tally.failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if near {
                        *tally
                            .near_kill_kinds
                            .lock()
                            .unwrap()
                            .entry(what_failed(&e))
                            .or_default() += 1;
                    }
                    {
                        let mut examples = tally.examples.lock().unwrap();
                        let ex = &mut examples[usize::from(near)];
                        if ex.len() < 10 {
                            ex.push(format!("{:.1}s: {e}", from.as_secs_f64()));
                        }
                    }
                    // As an SDK would, after a failure: back off a little.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }

    // The trouble: a backend killed and restarted every 10 s; Redis restarted half way.
    let mut next_kill = started + KILL_EVERY;
    let mut redis_restarted = false;
    let mut kills = 0usize;
    // Each replica's footprint every tenth of the run, to see that it stays flat.
    let sample_every = (run_for / 10).max(Duration::from_secs(1));
    let mut next_sample = started + sample_every;
    let mut samples: Vec<(Duration, Vec<(u64, usize)>)> = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if Instant::now() >= next_sample {
            samples.push((
                started.elapsed(),
                pids.iter().map(|&p| footprint(p)).collect(),
            ));
            next_sample += sample_every;
        }
        if !redis_restarted && started.elapsed() >= run_for / 2 {
            drop(redis.take());
            tokio::time::sleep(Duration::from_secs(1)).await;
            redis = Some(redis_server(redis_port, &dir));
            redis_restarted = true;
        }
        if Instant::now() >= next_kill && Instant::now() + DOWN_FOR < deadline {
            let i = kills % sims.len();
            kills += 1;
            troubles.begin(started.elapsed());
            sims[i] = None; // SIGKILL
            tokio::time::sleep(DOWN_FOR).await;
            sims[i] = Some(simulator(i, ports[i], &dir));
            troubles.end(started.elapsed());
            next_kill += KILL_EVERY;
        }
    }
    for l in load {
        let _ = l.await;
    }
    let at_end: Vec<(u64, usize)> = pids.iter().map(|&p| footprint(p)).collect();
    let took = started.elapsed();
    drop(redis);

    let total = tally.chat.load(Ordering::Relaxed)
        + tally.streams.load(Ordering::Relaxed)
        + tally.chains.load(Ordering::Relaxed);
    let mut report = String::new();
    report.push_str(&format!(
        "# Soak run\n\n{:.0} s, {CLIENTS} clients, 2 replicas (1 thread each) sharing one Redis, 3 simulated backends.\n\
         Trouble: a 429 every 3, 3.7 and 4.4 s from the three backends (retry-after-ms 500), one backend SIGKILLed for {} s every {} s ({kills} kills), Redis restarted once at {:.0} s.\n\n",
        took.as_secs_f64(),
        DOWN_FOR.as_secs(),
        KILL_EVERY.as_secs(),
        (run_for / 2).as_secs_f64()
    ));
    report.push_str("| requests | chat | streamed | responses chained across replicas | failed with every backend up | failed near a kill | 429, every backend cooling |\n|---|---|---|---|---|---|---|\n");
    report.push_str(&format!(
        "| {total} | {} | {} | {} | **{}** | {} | {} |\n\n",
        tally.chat.load(Ordering::Relaxed),
        tally.streams.load(Ordering::Relaxed),
        tally.chains.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.failed_near_kill.load(Ordering::Relaxed),
        tally.throttled.load(Ordering::Relaxed),
    ));
    report.push_str("| replica | RSS at start | RSS at end | open fds at start | open fds at end |\n|---|---|---|---|---|\n");
    for r in 0..2 {
        report.push_str(&format!(
            "| {r} | {:.1} MB | {:.1} MB | {} | {} |\n",
            at_start[r].0 as f64 / 1024.0,
            at_end[r].0 as f64 / 1024.0,
            at_start[r].1,
            at_end[r].1
        ));
    }
    report.push_str(
        "\nOver the run (RSS, open fds):\n\n| at | replica 0 | replica 1 |\n|---:|---|---|\n",
    );
    for (at, each) in &samples {
        report.push_str(&format!(
            "| {:.0} s | {:.1} MB, {} | {:.1} MB, {} |\n",
            at.as_secs_f64(),
            each[0].0 as f64 / 1024.0,
            each[0].1,
            each[1].0 as f64 / 1024.0,
            each[1].1
        ));
    }
    let kinds = tally.near_kill_kinds.lock().unwrap();
    if !kinds.is_empty() {
        report.push_str("\nFailures near a kill, by kind:\n\n| kind | requests |\n|---|---:|\n");
        for (kind, n) in kinds.iter() {
            report.push_str(&format!("| {kind} | {n} |\n"));
        }
    }
    let examples = tally.examples.lock().unwrap();
    for (kind, list) in ["with every backend up", "near a kill"]
        .iter()
        .zip(examples.iter())
    {
        if !list.is_empty() {
            report.push_str(&format!("\nFirst failures {kind}:\n\n"));
            for e in list {
                report.push_str(&format!("- {e}\n"));
            }
        }
    }
    println!("{report}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/soak-latest.md");
    let _ = std::fs::create_dir_all(out.parent().unwrap());
    std::fs::write(&out, &report).expect("cannot write the report");
    println!("written to {}; logs in {}", out.display(), dir.display());
    drop(sims);
    drop(replicas);
}

/// One chat completion, whole or streamed, read to its end. An error begins with the status.
async fn chat(client: &reqwest::Client, base: &str, stream: bool) -> Result<(), String> {
    let body = json!({"stream": stream, "messages": [{"role": "user", "content": "Hello"}]});
    let r = client
        .post(format!("{base}{CHAT}"))
        .header("api-key", "soak-key")
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let mut text = Vec::new();
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        text.extend_from_slice(&chunk.map_err(|e| format!("{status}, body broke: {e}"))?);
    }
    if status != 200 {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&text)));
    }
    if stream && !text.ends_with(b"data: [DONE]\n\n") {
        return Err("a stream ended without [DONE]".into());
    }
    Ok(())
}

/// A stored response made through one replica and continued through the other.
async fn chain(client: &reqwest::Client, one: &str, other: &str) -> Result<(), String> {
    let send = |base: &str, body: Value| {
        client
            .post(format!("{base}/openai/v1/responses"))
            .header("api-key", "soak-key")
            .json(&body)
            .send()
    };
    let r = send(one, json!({"model": "gpt-4o", "input": "Hello"}))
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("{} (creating)", r.status()));
    }
    let made: Value = r.json().await.map_err(|e| e.to_string())?;
    let id = made["id"].as_str().unwrap_or_default().to_string();
    let r = send(
        other,
        json!({"model": "gpt-4o", "input": "More", "previous_response_id": id}),
    )
    .await
    .map_err(|e| e.to_string())?;
    match r.status().as_u16() {
        200 => Ok(()),
        s => Err(format!(
            "{s} (continuing {id}): {}",
            r.text().await.unwrap_or_default()
        )),
    }
}
