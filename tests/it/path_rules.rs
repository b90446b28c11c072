//! Only Azure OpenAI paths are forwarded (`paths`, by default `/openai/`), none can climb out of
//! them, and nothing in a request steers it anywhere but the configured backends.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::*;

/// Sends `head` (a request line and headers, without the blank line) and `body` on a raw
/// socket, as written, with `connection: close`: (status, whole response).
fn raw(proxy: &Proxy, head: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_azure_openai_paths_reach_a_backend() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    for path in [
        "/",
        "/healthz",
        "/metrics",
        "/v1/chat/completions",
        "/openaix/deployments",
    ] {
        let r = client()
            .post(proxy.url(path))
            .json(&chat_body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(azure_error_code(&r.text().await.unwrap()), "404", "{path}");
    }
    assert_eq!(b.requests(), 0, "a path outside /openai/ reached a backend");
    assert_eq!(chat(&proxy).await.0, 200);
    assert_eq!(b.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_climbs_out_of_openai() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    for target in [
        "/openai/../healthz",
        "/openai/deployments/gpt-4o/../../../x",
        "/openai/%2e%2e/x",
        "/openai/.%2E/x",
        "/openai/deployments%2fgpt-4o%2fchat/completions",
        "/openai/deployments%5Cx",
    ] {
        let (status, response) = raw(&proxy, &format!("POST {target} HTTP/1.1\r\nhost: p"), "{}");
        assert_eq!(status, 400, "{target}:\n{response}");
        assert_eq!(
            azure_error_code(body_of(&response)),
            "BadRequest",
            "{target}"
        );
    }
    // Backslashes do not even parse as a request target: refused all the same.
    let (status, _) = raw(&proxy, "POST /openai\\..\\x HTTP/1.1\r\nhost: p", "{}");
    assert_eq!(status, 400);
    assert_eq!(b.requests(), 0, "a climbing path reached a backend");
    assert_eq!(chat(&proxy).await.0, 200, "the proxy keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_in_a_request_steers_it_to_another_host() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    let body = r#"{"messages":[{"role":"user","content":"Hi"}]}"#;
    let (status, response) = raw(
        &proxy,
        "POST http://evil.example:9/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21 HTTP/1.1\r\nhost: evil.example:9\r\nx-forwarded-host: evil.example\r\nx-forwarded-proto: https\r\nx-forwarded-for: 203.0.113.9\r\ncontent-type: application/json",
        body,
    );
    assert_eq!(status, 200, "{response}");
    let got = &b.recorded()[0];
    assert_eq!(
        got.uri, "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        "the backend gets the target in origin form"
    );
    assert_eq!(
        got.headers["host"],
        format!("127.0.0.1:{}", b.addr().port())
    );
    assert_eq!(&got.body[..], body.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_prefixes_can_be_forwarded() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(
        &format!("{}paths: [/openai/, /models/]\n", mi_yaml(&[&b])),
        Some(&id),
    );
    let r = client()
        .post(proxy.url("/models/chat/completions?api-version=2024-05-01-preview"))
        .json(&chat_body())
        .send()
        .await
        .unwrap();
    // The simulator serves no /models/ path: its own 404, after the proxy forwarded it.
    assert_eq!(r.headers()["x-sim-backend"], "b0");
    assert_eq!(b.requests(), 1);
    assert_eq!(chat(&proxy).await.0, 200);
    let r = client().get(proxy.url("/other/x")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(b.requests(), 2);
}
