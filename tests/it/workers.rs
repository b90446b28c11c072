//! Workers: with `server.threads: N` each of N worker threads listens on its own sockets and
//! serves the connections it accepts (the kernel spreads new connections over them).

use futures_util::future::join_all;

use crate::common::certs::TestCa;
use crate::common::*;

/// CPU time (clock ticks) of each of the proxy's threads named `aoai-proxy-*`, by name.
fn worker_ticks(pid: u32) -> Vec<(String, u64)> {
    let mut workers = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap();
        let name = name.trim();
        if !name.starts_with("aoai-proxy-") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // After the name in parentheses: field 3 is the state; utime and stime are 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        workers.push((name.to_string(), ticks));
    }
    workers.sort();
    workers
}

/// Sockets listening on `port` of 127.0.0.1 (`/proc/net/tcp`, state `0A`): one per worker when
/// each has its own, one in all when they share it.
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields[1] == local && fields[3] == "0A"
        })
        .count()
}

/// Starts a proxy with `server` settings and sends it 300 requests, each on a connection of its
/// own, 20 at a time; `workers` threads named `aoai-proxy-N` must each have served some, each
/// on a socket of its own.
async fn every_worker_serves(server: &str, workers: usize) {
    let b = backend("b0").await;
    let yaml = format!(
        "auth: {{kind: none}}\n{server}backends:\n  - {{url: \"{}\", api_key: k}}\n",
        b.url()
    );
    let proxy = Proxy::start(&yaml, None);
    assert_eq!(listening_sockets(proxy.port), workers);
    for _ in 0..15 {
        let answers = join_all((0..20).map(|_| chat(&proxy))).await;
        assert!(answers.iter().all(|(status, _, _)| *status == 200));
    }
    assert_eq!(b.requests(), 300);
    let ticks = worker_ticks(proxy.pid());
    let names: Vec<&str> = ticks.iter().map(|(n, _)| n.as_str()).collect();
    let expected: Vec<String> = (0..workers).map(|i| format!("aoai-proxy-{i}")).collect();
    assert_eq!(names, expected, "{ticks:?}");
    assert!(
        ticks.iter().all(|(_, ticks)| *ticks > 0),
        "a worker served nothing: {ticks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_listens_and_serves_connections() {
    every_worker_serves("server: {threads: 2}\n", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_there_is_a_worker_per_cpu() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    if cpus == 1 {
        // One worker is a plain `aoai-proxy` thread on a socket of its own: nothing to spread.
        eprintln!("one CPU: the default runs a single worker");
        return;
    }
    every_worker_serves("", cpus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_serves_https() {
    let ca = TestCa::new("listener CA");
    let leaf = ca.leaf();
    let dir = scratch_dir();
    std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &leaf.key_pem).unwrap();
    let b = backend("b0").await;
    let yaml = format!(
        "tls: {{listen: \"127.0.0.1:0\", cert: \"{}\", key: \"{}\"}}\nserver: {{threads: 2}}\nauth: {{kind: none}}\nbackends:\n  - {{url: \"{}\", api_key: k}}\n",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display(),
        b.url()
    );
    let proxy = Proxy::start(&yaml, None);
    let port = proxy.tls_port.expect("the HTTPS port");
    let https = || {
        reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap()])
            .build()
            .unwrap()
    };
    // 60 connections, each with its TLS handshake, 20 at a time.
    for _ in 0..3 {
        let answers = join_all((0..20).map(|_| async {
            let r = https()
                .post(format!("https://localhost:{port}{CHAT}"))
                .json(&chat_body())
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }))
        .await;
        assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    }
    assert_eq!(b.requests(), 60);
    assert_eq!(listening_sockets(port), 2);
    let workers = worker_ticks(proxy.pid());
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert!(
        workers.iter().all(|(_, ticks)| *ticks > 0),
        "a worker served nothing: {workers:?}"
    );
}
