//! The response cache's benchmark: what a hit costs against a miss, on one worker, on
//! 127.0.0.1. Three aoai-proxy processes in front of the same backends (nginx answering a fixed
//! chat completion when it is installed, else the simulator): `off` (no `cache` section: the
//! request path as it was), `miss` (a cache, every request sent with `Cache-Control: no-cache`:
//! looked up nowhere, forwarded, its answer read into an entry and stored again) and `hit` (a
//! cache, the same request again: answered from memory). Whole and streamed answers, at 1 and
//! 32 connections; req/s, latency, and the proxy's CPU per request.
//!
//! Run it with `cargo bench --bench cache` (after `scripts/bench` has installed nginx, or with
//! the simulator). About a minute; every load loop is bounded in time. It prints a Markdown
//! table and writes it to `benches/results/cache.md`.

#[path = "../load/client.rs"]
mod client;
#[path = "../common/mod.rs"]
mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{cpu_info, cpu_seconds, free_port, Proc};

const SECONDS: f64 = 2.0;
const WARMUP: Duration = Duration::from_millis(500);
/// Each figure is the median of this many rounds, the targets taking turns.
const ROUNDS: usize = 3;
const CHAT: &str = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
const BODY: &str = r#"{"messages":[{"role":"user","content":"Hello"}]}"#;
const STREAM_BODY: &str = r#"{"stream":true,"messages":[{"role":"user","content":"Hello"}]}"#;
/// A chat completion of about 500 bytes, as the load benchmark's nginx backend answers.
const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1733000000,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This fixed answer is served by nginx standing in for an Azure OpenAI backend, so that the proxy, not the backend, is what the benchmark measures. It is about as long as the simulator answer."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":41,"total_tokens":50}}"#;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr(port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(cmd: &mut Command, dir: &Path, name: &str) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let child = cmd.stdout(Stdio::null()).stderr(log).spawn();
    Proc(child.unwrap_or_else(|e| panic!("cannot start {name}: {e}")))
}

/// nginx answering [`ANSWER`] on two ports, when it is installed.
fn nginx(dir: &Path) -> Option<(Proc, Vec<u16>)> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let d = dir.display();
    let mut conf = format!("worker_processes 1;\nmaster_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\nevents {{ worker_connections 8192; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n");
    for p in &ports {
        conf.push_str(&format!("  server {{\n    listen 127.0.0.1:{p};\n    location / {{\n      default_type application/json;\n      return 200 '{ANSWER}';\n    }}\n  }}\n"));
    }
    conf.push_str("}\n");
    let file = dir.join("nginx.conf");
    std::fs::write(&file, conf).expect("nginx.conf");
    let proc = spawn(
        Command::new(nginx).arg("-p").arg(dir).arg("-c").arg(&file),
        dir,
        "nginx",
    );
    ports.iter().for_each(|p| wait_port(*p));
    Some((proc, ports))
}

/// The simulator on two ports (its streams are real server-sent events, 500 bytes of answer).
fn simulator(dir: &Path, bin: &str) -> (Proc, Vec<u16>) {
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let mut cmd = Command::new(bin);
    cmd.args(["simulate", "--threads", "1", "--answer-bytes", "500"]);
    for p in &ports {
        cmd.args(["--listen", &format!("127.0.0.1:{p}")]);
    }
    let proc = spawn(&mut cmd, dir, "simulator");
    ports.iter().for_each(|p| wait_port(*p));
    (proc, ports)
}

/// An aoai-proxy with one worker in front of `backends`, with `extra` YAML; its pid and port.
fn proxy(dir: &Path, bin: &str, name: &str, backends: &[u16], extra: &str) -> (Proc, u16) {
    let port = free_port();
    let mut yaml = format!("listen: [\"127.0.0.1:{port}\"]\nauth: {{kind: none}}\nserver: {{threads: 1}}\n{extra}backends:\n");
    for p in backends {
        yaml.push_str(&format!(
            "  - {{url: \"http://127.0.0.1:{p}\", api_key: k}}\n"
        ));
    }
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).expect("config");
    let p = spawn(
        Command::new(bin)
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", "warn"),
        dir,
        name,
    );
    wait_port(port);
    (p, port)
}

/// One measurement: req/s, p50 and p99 in microseconds, CPU microseconds a request, errors.
struct Figures {
    rps: f64,
    p50: u32,
    p99: u32,
    cpu_us: f64,
    errors: u64,
}

async fn measure(pid: u32, port: u16, req: &[u8], conns: usize) -> Figures {
    let before = cpu_seconds(pid);
    let record_from = Instant::now() + WARMUP;
    let until = record_from + Duration::from_secs_f64(SECONDS);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let req = req.to_vec();
            tokio::spawn(async move { client::hammer(addr(port), &req, record_from, until).await })
        })
        .collect();
    let mut s = client::Samples::default();
    for t in tasks {
        s.merge(t.await.expect("load task"));
    }
    let cpu = cpu_seconds(pid) - before;
    s.latency_us.sort_unstable();
    let at = |q: f64| {
        s.latency_us
            .get(((s.latency_us.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    let n = s.latency_us.len().max(1) as f64;
    Figures {
        rps: s.latency_us.len() as f64 / SECONDS,
        p50: at(0.5),
        p99: at(0.99),
        // The CPU of the warm-up too, over the requests recorded: a slight overestimate, the
        // same for every target.
        cpu_us: cpu / (n * (1.0 + WARMUP.as_secs_f64() / SECONDS)) * 1e6,
        errors: s.errors,
    }
}

/// A request of `body`, with `cache-control: no-cache` when `no_cache`.
fn request(body: &str, no_cache: bool) -> Vec<u8> {
    let req = String::from_utf8(client::request(CHAT, body)).expect("ASCII");
    match no_cache {
        true => req.replacen("\r\n", "\r\ncache-control: no-cache\r\n", 1),
        false => req,
    }
    .into_bytes()
}

/// Measures `off`, `miss` and `hit` on the proxies `(off, cached)` with `body`: each row's
/// median round, as Markdown table rows.
async fn compare(label: &str, proxies: [&(Proc, u16); 2], body: &str) -> String {
    let [(off, off_port), (cached, cached_port)] = proxies;
    let targets = [
        ("off", off.0.id(), *off_port, false),
        ("miss", cached.0.id(), *cached_port, true),
        ("hit", cached.0.id(), *cached_port, false),
    ];
    let mut rows = String::new();
    for conns in [1, 32] {
        let mut rounds: Vec<Vec<Figures>> = targets.iter().map(|_| Vec::new()).collect();
        for _ in 0..ROUNDS {
            for (t, runs) in targets.iter().zip(&mut rounds) {
                runs.push(measure(t.1, t.2, &request(body, t.3), conns).await);
            }
        }
        for (t, mut runs) in targets.iter().zip(rounds) {
            runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            let f = runs.swap_remove(ROUNDS / 2);
            let row = format!(
                "| {label} | {conns} | {} | {:.0} | {} | {} | {:.1} | {} |\n",
                t.0, f.rps, f.p50, f.p99, f.cpu_us, f.errors
            );
            eprint!("{row}");
            rows.push_str(&row);
        }
    }
    rows
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("aoai-proxy-cache-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let bin = env!("CARGO_BIN_EXE_aoai-proxy");
    let nginx = nginx(&dir);
    let sim = simulator(&dir, bin);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut table = String::from("| answer (backend) | conns | cache | req/s | p50 µs | p99 µs | CPU µs/request | errors |\n|---|---|---|---|---|---|---|---|\n");
    let mut runs: Vec<(&str, Vec<u16>, &str)> = Vec::new();
    if let Some((_, ports)) = &nginx {
        runs.push(("whole (nginx)", ports.clone(), BODY));
    }
    runs.push(("whole (simulator)", sim.1.clone(), BODY));
    runs.push(("streamed (simulator)", sim.1.clone(), STREAM_BODY));
    for (label, ports, body) in runs {
        let off = proxy(&dir, bin, "off", &ports, "");
        let cached = proxy(&dir, bin, "cached", &ports, "cache: {}\n");
        table.push_str(&rt.block_on(compare(label, [&off, &cached], body)));
    }
    let (cpu, cpus) = cpu_info();
    let report = format!("Machine: {cpu}, {cpus} CPUs. One aoai-proxy worker; {ROUNDS} rounds of {SECONDS} s, the median. `miss`: every request `Cache-Control: no-cache` (forwarded, read into an entry, stored again); `hit`: the same request again.\n\n{table}");
    let out = root.join("benches/results");
    std::fs::create_dir_all(&out).expect("results dir");
    std::fs::write(out.join("cache.md"), &report).expect("cache.md");
    println!("{report}");
    drop((nginx, sim));
    let _ = std::fs::remove_dir_all(&dir);
}
