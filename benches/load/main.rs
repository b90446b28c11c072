//! The load benchmark: the backends directly (the limit), aoai-proxy and nginx doing the same
//! job, side by side on 127.0.0.1, one worker each (and two each in one set of runs), in front
//! of the simulator and in front of nginx as a fast fixed backend.
//!
//! Run it with `scripts/bench` (installs nginx when Debian has it), or `cargo bench --bench load`.
//! It writes `benches/results/latest.md`, `.json` and `.svg` and prints the table. A full run
//! takes about five minutes; every load loop is bounded in time.

mod client;
#[path = "../common/mod.rs"]
mod common;
mod report;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{cpu_seconds, free_port, Proc};
use report::{Machine, Run, Streams};

/// How long each measurement lasts (after a warm-up of [`WARMUP`]).
const SECONDS: f64 = 1.5;
/// Each comparison runs this many rounds, the targets taking turns, and each target's figure is
/// its median round by req/s. This VM's speed moves by a third within minutes; one window per
/// target measured the minute it ran, not the proxy.
const ROUNDS: usize = 3;
const WARMUP: Duration = Duration::from_millis(500);
const CONNECTIONS: [usize; 3] = [1, 32, 256];
/// The scenarios with nginx as the backends: one worker per proxy, two, and one with the access
/// log on (aoai-proxy's at its default level, nginx's buffered to a file).
const NGINX_BACKEND: &str = "nginx backend";
const NGINX_BACKEND_2: &str = "nginx backend, 2 workers";
const NGINX_BACKEND_LOG: &str = "nginx backend, access log";

/// One setup of both proxies.
struct Scenario {
    name: &'static str,
    backends: Vec<u16>,
    /// Workers of each proxy.
    threads: usize,
    access_log: bool,
}

impl Scenario {
    fn new(name: &'static str, backends: Vec<u16>, threads: usize) -> Scenario {
        Scenario {
            name,
            backends,
            threads,
            access_log: false,
        }
    }
}
const OPEN_STREAMS: usize = 1000;
const CHAT: &str = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
const BODY: &str = r#"{"messages":[{"role":"user","content":"Hello"}]}"#;
const STREAM_BODY: &str = r#"{"stream":true,"messages":[{"role":"user","content":"Hello"}]}"#;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until `port` accepts connections (at most 20 s).
fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr(port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process of the run, sent SIGTERM when dropped: an nginx master then stops its workers,
/// which `Proc`'s SIGKILL alone leaves behind, orphaned and still listening. Whatever is still
/// there after 5 s gets the SIGKILL.
struct Stopped(Proc);

impl Stopped {
    fn id(&self) -> u32 {
        self.0 .0.id()
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let child = &mut self.0 .0;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn spawn(cmd: &mut Command, dir: &Path, name: &str) -> Stopped {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let child = cmd
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Stopped(Proc(child))
}

/// A `/proc/PID/status` size in MB (VmRSS now, VmHWM the peak).
fn memory_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Something to send load to.
#[derive(Clone)]
struct Target {
    name: &'static str,
    port: u16,
    /// The processes whose CPU and memory count (none for a backend itself): nginx with more
    /// than one worker is a master and its workers.
    pids: Vec<u32>,
}

impl Target {
    fn cpu_seconds(&self) -> Option<f64> {
        (!self.pids.is_empty()).then(|| self.pids.iter().map(|&p| cpu_seconds(p)).sum())
    }

    fn memory_mb(&self, field: &str) -> Option<f64> {
        (!self.pids.is_empty()).then(|| self.pids.iter().map(|&p| memory_mb(p, field)).sum())
    }
}

/// `pid` and its child processes (nginx's master and its workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        // The parent is the second field after the command name.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        if after.split_whitespace().nth(1) == Some(&pid.to_string()) {
            pids.push(child);
        }
    }
    pids
}

/// Runs `conns` connections against `target` for [`SECONDS`].
async fn measure(target: &Target, scenario: &str, conns: usize, streaming: bool) -> Run {
    let req = client::request(CHAT, if streaming { STREAM_BODY } else { BODY });
    let cpu_before = target.cpu_seconds();
    let record_from = Instant::now() + WARMUP;
    let until = record_from + Duration::from_secs_f64(SECONDS);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let req = req.clone();
            let a = addr(target.port);
            tokio::spawn(async move { client::hammer(a, &req, record_from, until).await })
        })
        .collect();
    let mut samples = client::Samples::default();
    for t in tasks {
        samples.merge(t.await.expect("load task"));
    }
    let cpu = target
        .cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    Run::from_samples(
        target.name,
        scenario,
        conns,
        streaming,
        SECONDS,
        samples,
        cpu,
        target.memory_mb("VmRSS:"),
    )
}

/// [`ROUNDS`] rounds of [`measure`] over `targets` in turn; each target's median round.
async fn compare(targets: &[Target], scenario: &str, conns: usize, streaming: bool) -> Vec<Run> {
    let mut rounds: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (target, runs) in targets.iter().zip(&mut rounds) {
            runs.push(measure(target, scenario, conns, streaming).await);
        }
    }
    rounds
        .into_iter()
        .map(|mut runs| {
            runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            let median = runs.swap_remove(runs.len() / 2);
            eprintln!("{}", median.line());
            median
        })
        .collect()
}

/// Opens [`OPEN_STREAMS`] slow streams at once through `target` and reads its memory while
/// they are all open.
async fn open_streams(target: &Target) -> Streams {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = client::request(CHAT, STREAM_BODY);
    let tasks: Vec<_> = (0..OPEN_STREAMS)
        .map(|_| {
            let req = req.clone();
            let a = addr(target.port);
            tokio::spawn(async move {
                let opened = async {
                    let mut s = tokio::net::TcpStream::connect(a).await.ok()?;
                    s.write_all(&req).await.ok()?;
                    let mut buf = [0u8; 4096];
                    let n = s.read(&mut buf).await.ok()?;
                    (n > 0 && buf[..n].starts_with(b"HTTP/1.1 200")).then_some(s)
                };
                tokio::time::timeout(Duration::from_secs(20), opened)
                    .await
                    .ok()
                    .flatten()
            })
        })
        .collect();
    // Hold every stream that opened while the proxy's memory is read.
    let mut held = Vec::new();
    for t in tasks {
        if let Ok(Some(stream)) = t.await {
            held.push(stream);
        }
    }
    let rss = target.memory_mb("VmRSS:").expect("a proxy");
    let open = held.len();
    drop(held);
    Streams {
        target: target.name.to_string(),
        open,
        rss_mb: rss,
    }
}

fn aoai_config(dir: &Path, name: &str, port: u16, backends: &[u16], threads: usize) -> PathBuf {
    let mut yaml = format!(
        "listen: [\"127.0.0.1:{port}\"]\nauth: {{kind: none}}\nserver: {{threads: {threads}}}\nbackends:\n"
    );
    for p in backends {
        yaml.push_str(&format!(
            "  - {{url: \"http://127.0.0.1:{p}\", api_key: bench-backend-key}}\n"
        ));
    }
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).expect("config");
    file
}

/// nginx doing the same job: round robin, the next upstream on errors, timeouts, 429 and 5xx
/// (up to 3 tries, POST included), the same header rewrite, no buffering of streams.
fn nginx_config(dir: &Path, name: &str, workers: usize, servers: &[(u16, &Scenario)]) -> PathBuf {
    let mut conf = nginx_head(dir, name, workers);
    for (i, (listen, sc)) in servers.iter().enumerate() {
        conf.push_str(&format!("  upstream u{i} {{\n"));
        for p in &sc.backends {
            conf.push_str(&format!("    server 127.0.0.1:{p};\n"));
        }
        conf.push_str("    keepalive 256;\n    keepalive_requests 1000000;\n  }\n");
        let log = match sc.access_log {
            true => format!(
                "    access_log {}/nginx-access.log combined buffer=64k flush=1s;\n",
                dir.display()
            ),
            false => String::new(),
        };
        conf.push_str(&format!(
            "  server {{\n    listen 127.0.0.1:{listen};\n{log}    location / {{\n      proxy_pass http://u{i};\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Authorization \"\";\n      proxy_set_header api-key \"bench-backend-key\";\n      proxy_next_upstream error timeout http_429 http_500 http_502 http_503 http_504 non_idempotent;\n      proxy_next_upstream_tries 3;\n      proxy_buffering off;\n    }}\n  }}\n"
        ));
    }
    conf.push_str("}\n");
    let file = dir.join(format!("{name}.conf"));
    std::fs::write(&file, conf).expect("nginx.conf");
    file
}

/// The start of an nginx configuration: `workers` worker processes (one runs without a master
/// process), no access log, keep-alive connections never closed for their request count.
fn nginx_head(dir: &Path, name: &str, workers: usize) -> String {
    let d = dir.display();
    let master = if workers == 1 { "off" } else { "on" };
    format!(
        "worker_processes {workers};\nmaster_process {master};\ndaemon off;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log warn;\nevents {{ worker_connections 8192; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n"
    )
}

/// A chat completion of about 500 bytes, with its usage, as the simulator answers.
const NGINX_ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1733000000,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This fixed answer is served by nginx standing in for an Azure OpenAI backend, so that the proxy, not the backend, is what the benchmark measures. It is about as long as the simulator answer."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":41,"total_tokens":50}}"#;

/// nginx as three fast backends: one worker, a fixed chat completion on every port.
fn nginx_backend_config(dir: &Path, ports: &[u16]) -> PathBuf {
    let mut conf = nginx_head(dir, "nginx-backend", 1);
    for p in ports {
        conf.push_str(&format!(
            "  server {{\n    listen 127.0.0.1:{p};\n    location / {{\n      default_type application/json;\n      return 200 '{NGINX_ANSWER}';\n    }}\n  }}\n"
        ));
    }
    conf.push_str("}\n");
    let file = dir.join("nginx-backend.conf");
    std::fs::write(&file, conf).expect("nginx-backend.conf");
    file
}

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn main() {
    // `cargo bench` passes --bench; any other argument filters nothing here.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("aoai-proxy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let bin = env!("CARGO_BIN_EXE_aoai-proxy");

    let sims: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let (throttled, slow) = (free_port(), free_port());
    // The refusing backend: a socket bound (so nothing else takes its port) that never listens.
    let refusing = tokio::net::TcpSocket::new_v4().expect("a socket");
    refusing
        .bind(addr(0))
        .expect("a port for the refusing backend");
    let refused = refusing.local_addr().expect("its address").port();
    let mut sim_cmd = Command::new(bin);
    sim_cmd.args(["simulate", "--threads", "1", "--answer-bytes", "500"]);
    for p in &sims {
        sim_cmd.args(["--listen", &format!("127.0.0.1:{p}")]);
    }
    sim_cmd.args([
        "--throttled",
        &format!("127.0.0.1:{throttled}"),
        "--retry-after-ms",
        "2000",
    ]);
    let sim = spawn(&mut sim_cmd, &dir, "simulator");
    let slow_sim = spawn(
        Command::new(bin).args([
            "simulate",
            "--threads",
            "1",
            "--answer-bytes",
            "100",
            "--chunk-delay-ms",
            "100",
            "--listen",
            &format!("127.0.0.1:{slow}"),
        ]),
        &dir,
        "slow-simulator",
    );
    for p in sims.iter().chain([&throttled, &slow]) {
        wait_port(*p, "the simulator");
    }

    // nginx as the backends too (fast and fixed), so the proxy, not the backend, is measured.
    let nginx_bin = nginx_binary();
    let fast: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let nginx_backend = nginx_bin.as_ref().map(|bin| {
        let conf = nginx_backend_config(&dir, &fast);
        let p = spawn(
            Command::new(bin).arg("-p").arg(&dir).arg("-c").arg(&conf),
            &dir,
            "nginx-backend",
        );
        wait_port(fast[0], "nginx as the backend");
        p
    });

    // Each scenario: its backends and the worker count of both proxies.
    let mut scenarios = vec![
        Scenario::new("normal", sims.clone(), 1),
        Scenario::new("one backend 429", vec![sims[0], sims[1], throttled], 1),
        Scenario::new("one backend refusing", vec![sims[0], sims[1], refused], 1),
        Scenario::new("1000 streams", vec![slow], 1),
    ];
    if nginx_backend.is_some() {
        scenarios.push(Scenario::new(NGINX_BACKEND, fast.clone(), 1));
        scenarios.push(Scenario::new(NGINX_BACKEND_2, fast.clone(), 2));
        scenarios.push(Scenario {
            access_log: true,
            ..Scenario::new(NGINX_BACKEND_LOG, fast.clone(), 1)
        });
    }
    let mut proxies = Vec::new();
    let mut aoai_ports = Vec::new();
    for sc in &scenarios {
        let port = free_port();
        let slug = sc.name.replace([' ', ','], "-");
        let file = aoai_config(&dir, &slug, port, &sc.backends, sc.threads);
        let mut cmd = Command::new(bin);
        let level = if sc.access_log { "info" } else { "warn" };
        cmd.arg("--config").arg(&file).env("RUST_LOG", level);
        proxies.push(spawn(&mut cmd, &dir, &format!("aoai-{slug}")));
        wait_port(port, "aoai-proxy");
        aoai_ports.push(port);
    }
    let nginx_ports: Vec<u16> = scenarios.iter().map(|_| free_port()).collect();
    // One nginx per worker count, each serving the scenarios of that count.
    let nginx: Vec<(usize, Stopped)> = match &nginx_bin {
        None => Vec::new(),
        Some(bin) => [1, 2]
            .into_iter()
            .filter_map(|workers| {
                let servers: Vec<(u16, &Scenario)> = nginx_ports
                    .iter()
                    .zip(&scenarios)
                    .filter(|(_, sc)| sc.threads == workers)
                    .map(|(p, sc)| (*p, sc))
                    .collect();
                let first = servers.first()?.0;
                let name = format!("nginx-{workers}");
                let conf = nginx_config(&dir, &name, workers, &servers);
                let p = spawn(
                    Command::new(bin).arg("-p").arg(&dir).arg("-c").arg(&conf),
                    &dir,
                    &name,
                );
                wait_port(first, "nginx");
                Some((workers, p))
            })
            .collect(),
    };
    if nginx.is_empty() {
        eprintln!("nginx not found: measuring aoai-proxy against the simulator only (scripts/bench installs nginx)");
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let direct = |port| Target {
        name: "direct",
        port,
        pids: Vec::new(),
    };
    let at = |i: usize| {
        let workers = scenarios[i].threads;
        let mut t = vec![Target {
            name: "aoai-proxy",
            port: aoai_ports[i],
            pids: vec![proxies[i].id()],
        }];
        if let Some((_, n)) = nginx.iter().find(|(w, _)| *w == workers) {
            t.push(Target {
                name: "nginx",
                port: nginx_ports[i],
                pids: with_children(n.id()),
            });
        }
        t
    };
    let mut runs = Vec::new();
    rt.block_on(async {
        for streaming in [false, true] {
            for conns in CONNECTIONS {
                let targets: Vec<Target> = std::iter::once(direct(sims[0])).chain(at(0)).collect();
                runs.extend(compare(&targets, "normal", conns, streaming).await);
            }
        }
        for (i, sc) in scenarios.iter().enumerate().skip(4) {
            // The access log's cost is read at 32 connections only.
            let conns: &[usize] = if sc.access_log { &[32] } else { &CONNECTIONS };
            for &conns in conns {
                let direct = (!sc.access_log).then(|| direct(fast[0]));
                let targets: Vec<Target> = direct.into_iter().chain(at(i)).collect();
                runs.extend(compare(&targets, sc.name, conns, false).await);
            }
        }
        for (i, sc) in scenarios.iter().enumerate().take(3).skip(1) {
            runs.extend(compare(&at(i), sc.name, 32, false).await);
        }
    });
    let streams: Vec<Streams> = rt.block_on(async {
        let mut v = Vec::new();
        for target in at(3) {
            let s = open_streams(&target).await;
            eprintln!(
                "{}: {} streams open, RSS {:.1} MB",
                s.target, s.open, s.rss_mb
            );
            v.push(s);
        }
        v
    });
    let peaks: Vec<(String, f64)> = at(0)
        .iter()
        .map(|t| (t.name.to_string(), t.memory_mb("VmHWM:").unwrap_or(0.0)))
        .collect();

    let machine = Machine::read(nginx_binary().as_deref());
    let report = report::Report::new(machine, runs, streams, peaks);
    let out = root.join("benches/results");
    std::fs::create_dir_all(&out).expect("results dir");
    std::fs::write(out.join("latest.json"), report.json()).expect("json");
    std::fs::write(out.join("latest.md"), report.markdown()).expect("markdown");
    std::fs::write(out.join("latest.svg"), report.svg()).expect("svg");
    println!("{}", report.markdown());
    println!("written: {}/latest.{{md,json,svg}}", out.display());
    drop((sim, slow_sim, proxies, nginx, nginx_backend));
    let _ = std::fs::remove_dir_all(&dir);
}
