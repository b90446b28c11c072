//! Hostile HTTP over raw sockets: malformed requests, conflicting framing, CR/LF in values, a
//! body slower than `timeouts.client_body`, slowloris. Each gets 4xx or a closed connection,
//! nothing unframed reaches a backend, and everyone else is served meanwhile.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::common::*;

/// Sends `bytes` on a new connection and reads until the proxy closes it (at most `wait`).
fn raw(proxy: &Proxy, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

async fn still_serving(proxy: &Proxy) {
    let (status, _, _) = chat(proxy).await;
    assert_eq!(status, 200, "a normal request failed after the attack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_reach_no_backend() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    let post = "POST /openai/deployments/gpt-4o/chat/completions HTTP/1.1\r\nHost: x\r\n";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a garbage request line", b"GARBAGE\r\n\r\n".to_vec()),
        (
            "binary noise",
            vec![0, 1, 2, 0xff, 0xfe, b'\r', b'\n', b'\r', b'\n'],
        ),
        (
            "a header without a colon",
            format!("{post}NoColonHere\r\n\r\n").into_bytes(),
        ),
        (
            "a bare CR in a header value",
            format!("{post}X-A: a\rb\r\n\r\n").into_bytes(),
        ),
        (
            "a folded header line",
            format!("{post}X-A: a\r\n b\r\n\r\n").into_bytes(),
        ),
        (
            "two different Content-Length",
            format!("{post}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab").into_bytes(),
        ),
        (
            "a NUL in the path",
            b"GET /openai/\0x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
    ];
    for (what, bytes) in cases {
        let answer = raw(&proxy, &bytes, Duration::from_secs(5));
        assert!(
            answer.is_empty()
                || answer.starts_with("HTTP/1.1 400")
                || answer.starts_with("HTTP/1.1 404"),
            "{what}: {answer}"
        );
        if !answer.is_empty() {
            assert!(
                answer.to_ascii_lowercase().contains("connection: close"),
                "{what}: the connection stays open: {answer}"
            );
        }
    }
    assert_eq!(b.requests(), 0, "a malformed request reached the backend");
    still_serving(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_framing_cannot_smuggle_a_request_to_a_backend() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    // Content-Length says 4, Transfer-Encoding says an empty chunked body: what follows would be
    // a second request to a server that trusted the length.
    let smuggle = b"POST /openai/deployments/gpt-4o/chat/completions HTTP/1.1\r\nHost: x\r\n\
Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
POST /openai/deployments/smuggled/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
    let answer = raw(&proxy, smuggle, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "a request with both framings must not keep its connection: {answer}"
    );
    for r in b.recorded() {
        assert!(
            !r.uri.contains("smuggled"),
            "the smuggled request reached the backend"
        );
        assert!(r.headers.get("transfer-encoding").is_none());
        let length: usize = r.headers["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            length,
            r.body.len(),
            "the backend got a body of another length"
        );
    }
    assert!(b.requests() <= 1);
    still_serving(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_client_body_gets_408() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(
        &format!("timeouts: {{client_body: 500ms}}\n{}", mi_yaml(&[&b])),
        Some(&id),
    );
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    s.write_all(b"POST /openai/deployments/gpt-4o/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"messages\"")
        .unwrap();
    // A byte every 200 ms: each read is quick, the whole is too slow.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(200));
        let _ = s.write_all(b" ");
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"RequestTimeout\""), "{answer}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "408 after {took:?}"
    );
    assert_eq!(b.requests(), 0);
    still_serving(&proxy).await;
}

/// The median time of `n` chat requests, each on a new connection.
async fn median_chat(proxy: &Proxy, n: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(proxy.url(CHAT))
            .json(&chat_body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    times[n / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_slowloris_connections_are_cut_off_and_do_not_delay_a_normal_request() {
    let id = identity().await;
    let b = backend("b0").await;
    let yaml = format!("timeouts: {{client_header: 1s}}\n{}", mi_yaml(&[&b]));
    let proxy = Proxy::start(&yaml, Some(&id));
    let before = median_chat(&proxy, 9).await;

    // 200 connections, each dribbling a request header a byte every 50 ms, never ending it:
    // each is given `timeouts.client_header` from its first byte, then cut off.
    let started = Instant::now();
    let mut attackers = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .unwrap();
        attackers.push(tokio::spawn(async move {
            let header =
                b"POST /openai/deployments/gpt-4o/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            for sent in 0usize.. {
                let byte = [*header.get(sent).unwrap_or(&b'a')];
                if s.write_all(&byte).await.is_err() {
                    return Some(started.elapsed());
                }
                if sent > 200 {
                    return None; // 10 s and still open: never cut off.
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = median_chat(&proxy, 9).await;
    assert!(
        during <= before + Duration::from_millis(100),
        "with 200 slowloris connections a request took {during:?} (before: {before:?})"
    );
    for a in attackers {
        let cut = a
            .await
            .unwrap()
            .expect("a slowloris connection was never cut off");
        assert!(
            cut >= Duration::from_millis(900) && cut < Duration::from_secs(6),
            "cut off after {cut:?}, not about 1 s after its first byte"
        );
    }
    proxy
        .wait_for_log("the request header did not arrive within 1s")
        .await;
    assert_eq!(
        b.requests(),
        18,
        "only the normal requests reached the backend"
    );
    still_serving(&proxy).await;
}

/// Reads one response with a `content-length` from `s`: its status line and headers, and body.
fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = s.read(&mut buf).expect("the response header");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a content-length");
    while got.len() < head_end + length {
        let n = s.read(&mut buf).expect("the response body");
        assert!(n > 0, "closed mid-body");
        got.extend_from_slice(&buf[..n]);
    }
    (head, got[head_end..].to_vec())
}

/// `timeouts.client_header` times the header only: a keep-alive connection idle for longer
/// between two requests, and a body that takes longer to arrive, are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_deadline_ends_with_the_header() {
    let id = identity().await;
    let b = backend("b0").await;
    let yaml = format!(
        "timeouts: {{client_header: 500ms, client_body: 10s}}\n{}",
        mi_yaml(&[&b])
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    let body = br#"{"messages":[{"role":"user","content":"Hello"}]}"#;
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    // Two requests on one connection, with three deadlines' worth of quiet between them (the
    // time passing is what is tested).
    for _ in 0..2 {
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let (status, _) = read_response(&mut s);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        std::thread::sleep(Duration::from_millis(1500));
    }

    // A body trickled over about 1.5 s, once its header is whole.
    let started = Instant::now();
    s.write_all(head.as_bytes()).unwrap();
    for piece in body.chunks(body.len().div_ceil(6)) {
        std::thread::sleep(Duration::from_millis(250));
        s.write_all(piece).unwrap();
    }
    let (status, _) = read_response(&mut s);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(started.elapsed() > Duration::from_millis(1000));
    assert_eq!(b.requests(), 3);
}
