//! The test harness: the real `aoai-proxy` binary on ephemeral ports of 127.0.0.1, in front of
//! the project's simulated backends and managed identity endpoint.

#![allow(dead_code)]

pub mod certs;
pub mod otlp;
pub mod redis;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aoai_sim::{Backend, BackendOptions, IdentityEndpoint};
use serde_json::{json, Value};

/// The header secret of the simulated identity endpoint.
pub const IDENTITY_HEADER: &str = "test-identity-header";
/// The chat path every test uses.
pub const CHAT: &str = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";

/// A port on 127.0.0.1 that refuses every connection for as long as this lives: its socket is
/// bound, so no other test can be given the port, but it never listens.
pub struct DeadPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("a port on 127.0.0.1");
        let port = socket.local_addr().expect("its address").port();
        DeadPort {
            _socket: socket,
            port,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A port that was free a moment ago, for a peer that cannot report the port it binds (the
/// simulator's `--listen`, redis-server). The proxy binds port 0 and says which it got.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// A fresh scratch directory for one test.
pub fn scratch_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "aoai-proxy-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("cannot create a scratch directory");
    dir
}

/// A running `aoai-proxy` process; killed when dropped. It listens on ports it picked itself
/// (`127.0.0.1:0`) and logged.
pub struct Proxy {
    child: Child,
    pub port: u16,
    pub admin: u16,
    /// The HTTPS port, when the configuration has a `tls` listener.
    pub tls_port: Option<u16>,
    pub dir: PathBuf,
}

/// The configuration's first lines: every listener on a port the proxy picks.
const LISTENERS: &str = "listen: [\"127.0.0.1:0\"]\nadmin: {listen: \"127.0.0.1:0\"}\n";

/// How to start the proxy.
pub struct Start<'a> {
    /// YAML after `listen` and `admin` (auth, backends, ...).
    pub yaml: String,
    /// The identity endpoint its managed identity uses.
    pub identity: Option<&'a IdentityEndpoint>,
    /// Wait for `/readyz` (a token is held) rather than `/healthz`.
    pub wait_ready: bool,
    /// More environment for the process.
    pub env: Vec<(String, String)>,
}

impl Proxy {
    /// Starts the proxy with `yaml` and waits until it is ready.
    pub fn start(yaml: &str, identity: Option<&IdentityEndpoint>) -> Proxy {
        Self::start_with(Start {
            yaml: yaml.to_string(),
            identity,
            wait_ready: true,
            env: Vec::new(),
        })
    }

    /// Starts the proxy with `yaml` and waits only for the process to be up (`/healthz`), not
    /// for a token.
    pub fn start_not_ready(yaml: &str, identity: Option<&IdentityEndpoint>) -> Proxy {
        Self::start_with(Start {
            yaml: yaml.to_string(),
            identity,
            wait_ready: false,
            env: Vec::new(),
        })
    }

    pub fn start_with(s: Start<'_>) -> Proxy {
        let dir = scratch_dir();
        let file = dir.join("aoai-proxy.yaml");
        let tls = s.yaml.lines().any(|l| l.starts_with("tls:"));
        let yaml = format!("{LISTENERS}{}", s.yaml);
        std::fs::write(&file, yaml).expect("cannot write the configuration");
        let log = std::fs::File::create(dir.join("proxy.log")).expect("cannot create the log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aoai-proxy"));
        cmd.arg("--config")
            .arg(&file)
            .env("RUST_LOG", "info")
            .env("NO_PROXY", "127.0.0.1,localhost")
            // Never let a managed identity fall back to the instance metadata service.
            .env("IDENTITY_ENDPOINT", "http://127.0.0.1:9/unset")
            .env("IDENTITY_HEADER", "unset")
            .stdout(Stdio::null())
            .stderr(log.try_clone().expect("log handle"));
        if let Some(id) = s.identity {
            cmd.env("IDENTITY_ENDPOINT", id.endpoint())
                .env("IDENTITY_HEADER", IDENTITY_HEADER);
        }
        cmd.envs(s.env);
        let child = cmd.spawn().expect("cannot start aoai-proxy");
        let mut proxy = Proxy {
            child,
            port: 0,
            admin: 0,
            tls_port: None,
            dir,
        };
        proxy.wait_for_ports(tls);
        let path = if s.wait_ready { "/readyz" } else { "/healthz" };
        proxy.wait_for(path);
        // The admin listener can answer before the workers' sockets listen on the picked
        // port (held, bound, not listening until then): a connection now would be refused.
        for port in std::iter::once(proxy.port).chain(proxy.tls_port) {
            proxy.wait_for_accept(port);
        }
        proxy
    }

    /// Polls (at most 30 s) until a connection to `port` is accepted.
    fn wait_for_accept(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("aoai-proxy exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "aoai-proxy did not accept on port {port} within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls the log (at most 30 s) for the ports the proxy picked: `listening on ADDR (KEY)`.
    fn wait_for_ports(&mut self, tls: bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("aoai-proxy exited with {status}:\n{}", self.log());
            }
            let log = self.log();
            let port = |key: &str| {
                log.lines()
                    .filter(|l| l.ends_with(&format!(" ({key})")))
                    .find_map(|l| l.split("listening on ").nth(1)?.split(' ').next())
                    .and_then(|addr| addr.parse::<std::net::SocketAddr>().ok())
                    .map(|a| a.port())
            };
            if let (Some(p), Some(a)) = (port("listen"), port("admin.listen")) {
                if !tls || port("tls.listen").is_some() {
                    (self.port, self.admin) = (p, a);
                    self.tls_port = port("tls.listen");
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "aoai-proxy did not log its ports within 30 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls the admin listener until `path` answers 200 (at most 30 s).
    fn wait_for(&mut self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("aoai-proxy exited with {status}:\n{}", self.log());
            }
            if admin_get(self.admin, path).is_some_and(|(status, _)| status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "aoai-proxy did not answer 200 on {path} within 30 s:\n{}",
            self.log()
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What the proxy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }

    /// Polls the log (every 20 ms, at most 10 s) until it contains `what`; the log. An access
    /// line is written as the request ends, a moment after the client has its answer.
    pub async fn wait_for_log(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(what) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{what:?} not logged within 10 s:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        admin_get(self.admin, path).expect("the admin listener does not answer")
    }

    /// Polls `/metrics` (every 20 ms, at most 10 s) until `ready` holds for its text; the text.
    pub async fn wait_for_metrics(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, metrics) = self.admin_get("/metrics");
            if ready(&metrics) {
                return metrics;
            }
            assert!(Instant::now() < deadline, "{what} within 10 s:\n{metrics}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the process `signal` (`"HUP"`, `"TERM"`, ...).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Replaces the configuration file with `yaml` after the same `listen` and `admin`, as
    /// [`Proxy::start`] wrote it (the proxy reads it again on SIGHUP).
    pub fn rewrite_config(&self, yaml: &str) {
        let yaml = format!("{LISTENERS}{yaml}");
        std::fs::write(self.dir.join("aoai-proxy.yaml"), yaml)
            .expect("cannot rewrite the configuration");
    }

    /// Waits (at most `within`) for the process to exit; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking HTTP/1.1 GET (keeps the harness free of a second client).
fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of the Prometheus series `name` (exactly, labels included) in `metrics`, or 0.
pub fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().expect("a number"))
}

/// An HTTP client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// Simulated backends named b0, b1, ... that record what they receive.
pub async fn backends(n: usize) -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(backend(&format!("b{i}")).await);
    }
    v
}

pub async fn backend(name: &str) -> Backend {
    Backend::start(BackendOptions {
        name: name.into(),
        record: true,
        ..Default::default()
    })
    .await
    .expect("backend")
}

/// A managed identity endpoint handing out day-long tokens.
pub async fn identity() -> IdentityEndpoint {
    IdentityEndpoint::start(IDENTITY_HEADER, Duration::from_secs(24 * 3600))
        .await
        .expect("identity endpoint")
}

/// `auth` for a managed identity plus a `backends` list for `urls`.
pub fn mi_yaml(backends: &[&Backend]) -> String {
    format!(
        "auth: {{kind: managed_identity}}\n{}",
        backends_yaml(backends)
    )
}

pub fn backends_yaml(backends: &[&Backend]) -> String {
    let mut y = String::from("backends:\n");
    for (i, b) in backends.iter().enumerate() {
        y.push_str(&format!("  - {{url: \"{}\", name: b{i}}}\n", b.url()));
    }
    y
}

/// A small chat request.
pub fn chat_body() -> Value {
    json!({"messages": [{"role": "user", "content": "Hello"}]})
}

/// POSTs a chat request; (status, headers, body).
pub async fn chat(proxy: &Proxy) -> (u16, reqwest::header::HeaderMap, String) {
    let r = client()
        .post(proxy.url(CHAT))
        .json(&chat_body())
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.expect("body"))
}

/// Request counts of each backend.
pub fn counts(backends: &[&Backend]) -> Vec<u64> {
    backends.iter().map(|b| b.requests()).collect()
}

/// Asserts `body` is an Azure-shaped error and returns its code.
pub fn azure_error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(
        v["error"]["message"].is_string(),
        "no error.message in {body}"
    );
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code in {body}"))
        .to_string()
}

/// The table row of a rendered page whose `attribute` is `value` (`data-backend="b0"`).
pub fn page_row(dom: &str, attribute: &str, value: &str) -> String {
    let start = dom
        .find(&format!("{attribute}=\"{value}\""))
        .unwrap_or_else(|| {
            panic!("no row with {attribute}={value:?} in the rendered page:\n{dom}")
        });
    let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
    dom[start..end].to_string()
}

/// The status page of `proxy` as headless Chromium renders it (after its first refresh).
pub fn rendered_status_page(proxy: &Proxy) -> String {
    let profile = scratch_dir();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://127.0.0.1:{}/", proxy.admin))
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .expect("chromium is not installed (scripts/deps installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
