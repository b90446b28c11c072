//! The processes of one run: the simulator with the three deployments' quotas, and the proxy
//! under test in front of them, with what its `/metrics` and `/proc` say about it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{cpu_seconds, free_port, Proc};
use crate::{Setup, Strategy, DEPLOYMENTS};

/// How long a process may take to listen.
const START_WITHIN: Duration = Duration::from_secs(30);
/// How long the simulator takes before an answer's header, as a model before its first token.
pub const LATENCY_MS: u64 = 500;

/// A process of the run, with its log.
struct Spawned {
    proc: Proc,
    log: PathBuf,
}

impl Spawned {
    fn start(cmd: &mut Command, dir: &Path, name: &str) -> Spawned {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("a log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Spawned {
            proc: Proc(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log when the process has exited, or when `deadline` has passed.
    fn check(&mut self, deadline: Instant, waiting_for: &str) {
        if let Ok(Some(status)) = self.proc.0.try_wait() {
            panic!(
                "{} exited with {status}:\n{}",
                self.log.display(),
                self.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{waiting_for} within {START_WITHIN:?}:\n{}",
            self.log()
        );
    }

    /// Waits (at most [`START_WITHIN`]) until `port` accepts connections.
    fn wait_port(&mut self, port: u16) {
        let deadline = Instant::now() + START_WITHIN;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            self.check(deadline, &format!("nothing listened on {port}"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One `aoai-proxy simulate` serving the [`DEPLOYMENTS`], their quotas full.
pub struct Simulator {
    _process: Spawned,
    /// The port of each of the [`DEPLOYMENTS`], in order.
    pub ports: Vec<u16>,
}

impl Simulator {
    pub fn start(dir: &Path) -> Simulator {
        let ports: Vec<u16> = DEPLOYMENTS.iter().map(|_| free_port()).collect();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aoai-proxy"));
        cmd.args(["simulate", "--threads", "1"])
            .args(["--latency-ms", &LATENCY_MS.to_string()]);
        for (d, port) in DEPLOYMENTS.iter().zip(&ports) {
            let quota = if d.provisioned {
                "--provisioned"
            } else {
                "--quota"
            };
            cmd.args(["--listen", &format!("127.0.0.1:{port}")])
                .args([quota, &format!("127.0.0.1:{port}={}", d.tokens_per_minute)]);
        }
        let mut process = Spawned::start(&mut cmd, dir, "simulator");
        for port in &ports {
            process.wait_port(*port);
        }
        Simulator {
            _process: process,
            ports,
        }
    }
}

/// The proxy under test, started and accepting.
pub struct Proxy {
    process: Spawned,
    pub port: u16,
    admin: u16,
}

/// What the proxy said at one moment.
#[derive(Clone, Default)]
pub struct Snapshot {
    /// Its CPU seconds so far.
    pub cpu: f64,
    /// `aoai_proxy_backend_tries_total`: each backend's tries by outcome.
    pub tries: Vec<(String, String, f64)>,
    /// `aoai_proxy_wait_seconds`: its sum and count, when the proxy has it.
    pub wait: Option<(f64, f64)>,
}

impl Proxy {
    /// Starts `setup`'s binary in front of `backends` (the ports of the [`DEPLOYMENTS`]).
    pub fn start(setup: &Setup, backends: &[u16], dir: &Path) -> Proxy {
        let file = dir.join(format!("{}.yaml", setup.slug()));
        std::fs::write(&file, config(setup, backends)).expect("the proxy's configuration");
        let mut cmd = Command::new(&setup.binary);
        cmd.arg("--config").arg(&file);
        // The ports it picked, and nothing per request.
        cmd.env("RUST_LOG", "warn,aoai_proxy::server::listen=info");
        let mut process = Spawned::start(&mut cmd, dir, &setup.slug());
        let deadline = Instant::now() + START_WITHIN;
        let (port, admin) = loop {
            let log = process.log();
            if let (Some(p), Some(a)) = (
                logged_port(&log, "listen"),
                logged_port(&log, "admin.listen"),
            ) {
                break (p, a);
            }
            process.check(deadline, "the proxy did not log its ports");
            std::thread::sleep(Duration::from_millis(20));
        };
        process.wait_port(port);
        Proxy {
            process,
            port,
            admin,
        }
    }

    /// Its CPU time and metrics now.
    pub async fn snapshot(&self) -> Snapshot {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        let text = match http.get(&url).send().await {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(e) => panic!("{url}: {e}"),
        };
        let mut snapshot = parse_metrics(&text);
        snapshot.cpu = cpu_seconds(self.process.proc.0.id());
        snapshot
    }
}

/// The port of the listener `key` from `listening on ADDR (KEY)` in the proxy's log.
fn logged_port(log: &str, key: &str) -> Option<u16> {
    log.lines()
        .filter(|l| l.ends_with(&format!(" ({key})")))
        .find_map(|l| l.split("listening on ").nth(1)?.split(' ').next())
        .and_then(|addr| addr.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port())
}

/// The proxy's YAML for `setup`: the provisioned deployment first (priority 0), the others
/// after it. A baseline binary (no [`Setup::strategy`]) gets neither `balance` nor the
/// waiting keys, which it does not know.
fn config(setup: &Setup, backends: &[u16]) -> String {
    let mut yaml = String::from(
        "listen: [\"127.0.0.1:0\"]\nadmin: {listen: \"127.0.0.1:0\"}\nauth: {kind: none}\nserver: {threads: 1}\nbackends:\n",
    );
    for (d, port) in DEPLOYMENTS.iter().zip(backends) {
        yaml.push_str(&format!(
            "  - {{name: {}, url: \"http://127.0.0.1:{port}\", api_key: bench-backend-key, priority: {}}}\n",
            d.name,
            u8::from(!d.provisioned)
        ));
    }
    if let Some(strategy) = setup.strategy {
        let strategy = match strategy {
            Strategy::RoundRobin => "round_robin",
            Strategy::Headroom => "headroom",
        };
        yaml.push_str(&format!("balance: {{strategy: {strategy}}}\n"));
        yaml.push_str(match setup.wait {
            true => "retry: {wait_for_capacity: 10s, max_waiting: 1000}\n",
            false => "retry: {wait_for_capacity: 0s}\n",
        });
    }
    yaml
}

/// The series the benchmark reads from a Prometheus text page.
fn parse_metrics(text: &str) -> Snapshot {
    let mut s = Snapshot::default();
    let (mut sum, mut count) = (None, None);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        match name {
            "aoai_proxy_backend_tries_total" => s.tries.push((
                label(labels, "backend").to_string(),
                label(labels, "outcome").to_string(),
                value,
            )),
            "aoai_proxy_wait_seconds_sum" => sum = Some(value),
            "aoai_proxy_wait_seconds_count" => count = Some(value),
            _ => {}
        }
    }
    s.wait = sum.zip(count);
    s
}

/// The value of `name` in `a="x",b="y"}` (the benchmark's names and values need no escapes).
fn label<'a>(labels: &'a str, name: &str) -> &'a str {
    labels
        .split_once(&format!("{name}=\""))
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or("", |(value, _)| value)
}

/// Spends the quota of the simulated deployment at `port` (`tokens_per_minute`) down to a few
/// hundred tokens, with requests straight to it (its other users, in a busy deployment): each
/// asks for as many tokens as may be left, half as many after a 429, until a few hundred; at
/// most [`SPEND_WITHIN`] (a request larger than the quota would wait for a full one).
pub async fn spend_down(port: u16, tokens_per_minute: u64) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let url = format!(
        "http://127.0.0.1:{port}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    );
    let spend = async {
        let mut ask = tokens_per_minute * 9 / 10;
        while ask >= 300 {
            let body = serde_json::json!({"messages": [{"role": "user", "content": "spend"}], "max_tokens": ask});
            let status = http
                .post(&url)
                .header("api-key", "other-users")
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16());
            match status {
                Ok(200) => {}
                Ok(429) => ask /= 2,
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(SPEND_WITHIN, spend).await;
}

/// The longest a deployment's quota is spent down for.
const SPEND_WITHIN: Duration = Duration::from_secs(8);
