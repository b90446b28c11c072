//! Backend connections: kept and reused between requests, and never used for a request once the
//! backend has closed them.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_share_one_backend_connection() {
    let b = backend("b0").await;
    let yaml = format!(
        "auth: {{kind: none}}\nserver: {{threads: 1}}\nbackends:\n  - {{url: \"{}\", api_key: k}}\n",
        b.url()
    );
    let proxy = Proxy::start(&yaml, None);
    for _ in 0..30 {
        assert_eq!(chat(&proxy).await.0, 200);
    }
    assert_eq!(b.requests(), 30);
    assert_eq!(b.connections(), 1, "each request after the first reuses it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_backend_closed_after_answering_is_never_used() {
    // A backend that closes each connection right after its answer (as one whose keep-alive
    // timeout is shorter than the proxy's does, at the worst moment). With one try a request,
    // a request sent on such a connection would fail: none may.
    let backend = ClosingBackend::start();
    let yaml = format!(
        "auth: {{kind: none}}\nserver: {{threads: 1}}\nretry: {{max_tries: 1}}\nbackends:\n  - {{url: \"http://{}\", api_key: k}}\n",
        backend.addr
    );
    let proxy = Proxy::start(&yaml, None);
    for i in 0..20 {
        let (status, _, body) = chat(&proxy).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 20);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_the_backend_drops_on_use_cost_no_request() {
    // A backend that answers one request a connection and drops the connection, unanswered,
    // when a second one comes on it: every idle connection fails when used, and no probe can
    // tell beforehand. With three of them idle and one try a request, each request must go
    // out on a new connection after the first failure, not on the next idle one.
    let backend = OneShotBackend::start();
    let yaml = format!(
        "auth: {{kind: none}}\nserver: {{threads: 1}}\nretry: {{max_tries: 1}}\nbackends:\n  - {{url: \"http://{}\", api_key: k}}\n",
        backend.addr
    );
    let proxy = Proxy::start(&yaml, None);
    let (a, b, c) = tokio::join!(chat(&proxy), chat(&proxy), chat(&proxy));
    assert_eq!((a.0, b.0, c.0), (200, 200, 200));
    let opened = backend.connections.load(Ordering::SeqCst);
    assert_eq!(opened, 3, "three requests at once, three connections");
    for i in 0..5 {
        let (status, _, body) = chat(&proxy).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_have_no_body_and_keep_the_connection() {
    // A HEAD answer carries the length of the body it does not send: read as a body, it would
    // hold the request until the idle timeout and spoil the connection.
    let b = backend("b0").await;
    let yaml = format!(
        "auth: {{kind: none}}\nserver: {{threads: 1}}\nbackends:\n  - {{url: \"{}\", api_key: k}}\n",
        b.url()
    );
    let proxy = Proxy::start(&yaml, None);
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let get = client.get(proxy.url(CHAT)).send().await.unwrap();
    let (status, length) = (get.status(), get.headers().get("content-length").cloned());
    assert!(length.is_some(), "the backend's GET answer has a length");
    for _ in 0..3 {
        let head = client
            .head(proxy.url(CHAT))
            .send()
            .await
            .expect("a prompt HEAD answer");
        assert_eq!(head.status(), status);
        assert_eq!(head.headers().get("content-length"), length.as_ref());
        assert!(head.bytes().await.unwrap().is_empty());
    }
    assert_eq!(chat(&proxy).await.0, 200);
    assert_eq!(b.requests(), 5);
    assert_eq!(
        b.connections(),
        1,
        "HEAD answers leave the connection reusable"
    );
}

/// A raw HTTP/1.1 backend that answers one request a connection, keep-alive in its headers,
/// and then closes the connection.
struct ClosingBackend {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl ClosingBackend {
    fn start() -> ClosingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let addr = listener.local_addr().expect("its address");
        let (connections, requests) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (c, r) = (connections.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                if read_request(&mut stream) {
                    r.fetch_add(1, Ordering::SeqCst);
                    let body = r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes());
                }
                // Dropped: closed, though the answer did not say so.
            }
        });
        ClosingBackend {
            addr,
            connections,
            requests,
        }
    }
}

/// A raw HTTP/1.1 backend that answers the first request of each connection (after 100 ms, so
/// that requests sent together overlap) and drops the connection at the second.
struct OneShotBackend {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl OneShotBackend {
    fn start() -> OneShotBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let addr = listener.local_addr().expect("its address");
        let (connections, requests) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (c, r) = (connections.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                std::thread::spawn(move || {
                    if !read_request(&mut stream) {
                        return;
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    let body = r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes());
                    // The next request on this connection is read and dropped unanswered.
                    let _ = read_request(&mut stream);
                });
            }
        });
        OneShotBackend {
            addr,
            connections,
            requests,
        }
    }
}

/// Reads one request (head and `content-length` body); whether a whole one came.
fn read_request(stream: &mut std::net::TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return true;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
