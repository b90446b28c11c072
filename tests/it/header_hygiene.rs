//! What a backend receives: the client's path, query, body and headers as sent, never the
//! client's `api-key` or `Authorization`, and `Host` set to its own host.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_never_reach_a_backend() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    let path = "/openai/deployments/my-gpt/embeddings?api-version=2024-10-21&x=a%20b&y=%E2%9C%93";
    let body = br#"{"input": ["one", "two"]}"#;
    let r = client()
        .post(proxy.url(path))
        .header("api-key", "client-api-key")
        .header("authorization", "Bearer client-bearer")
        .header("x-ms-client-request-id", "req-123")
        .header("content-type", "application/json")
        .header("x-custom", "Mixed Case Value")
        .body(&body[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = &b.recorded()[0];
    assert_eq!(got.uri, path);
    assert_eq!(got.method, "POST");
    assert_eq!(&got.body[..], &body[..]);
    assert_eq!(got.headers["authorization"], "Bearer sim-token-1");
    assert!(got.headers.get("api-key").is_none());
    assert_eq!(
        got.headers["host"],
        format!("127.0.0.1:{}", b.addr().port())
    );
    assert_eq!(got.headers["x-ms-client-request-id"], "req-123");
    assert_eq!(got.headers["x-custom"], "Mixed Case Value");
    assert_eq!(got.headers["content-type"], "application/json");
    let all: String = got
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {v:?}\n"))
        .collect();
    assert!(
        !all.contains("client-api-key") && !all.contains("client-bearer"),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_requests_and_v1_paths_pass_unchanged() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    let r = client()
        .get(proxy.url("/openai/models?api-version=2024-10-21"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the simulator has no /openai/models");
    let r = client()
        .post(proxy.url("/openai/v1/chat/completions"))
        .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["model"], "gpt-4o-mini");
    let rec = b.recorded();
    assert_eq!(rec[0].method, "GET");
    assert_eq!(rec[0].uri, "/openai/models?api-version=2024-10-21");
    assert!(rec[0].body.is_empty());
    assert_eq!(rec[1].uri, "/openai/v1/chat/completions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_reach_no_backend() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    let r = client()
        .post(proxy.url(CHAT))
        .header("x-big", "v".repeat(40_000))
        .json(&chat_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(
        azure_error_code(&r.text().await.unwrap()),
        "RequestHeaderFieldsTooLarge"
    );
    assert_eq!(b.requests(), 0);
    // The proxy keeps serving.
    assert_eq!(chat(&proxy).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_in_the_query_never_reaches_a_backend_in_any_spelling_on_any_path() {
    let id = identity().await;
    let b = backend("b0").await;
    let yaml = format!("{}clients: [{{name: c, key: CLIENTKEY}}]\n", mi_yaml(&[&b]));
    let proxy = Proxy::start(&yaml, Some(&id));
    let spellings = [
        "api-key",
        "API-KEY",
        "Api-Key",
        "api%2Dkey",
        "%61pi-key",
        "api%2dKEY",
    ];
    // Forwarded, asked of every backend (a list), searched for (a named object), Realtime.
    let paths = [
        (
            "POST",
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21&{K}=CLIENTKEY",
        ),
        ("POST", "/openai/v1/chat/completions?{K}=CLIENTKEY"),
        ("GET", "/openai/files?{K}=CLIENTKEY&api-version=2024-10-21"),
        (
            "GET",
            "/openai/files/file-nowhere?api-version=2024-10-21&{K}=CLIENTKEY",
        ),
        (
            "GET",
            "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-4o&{K}=CLIENTKEY",
        ),
    ];
    let mut sent = 0;
    for spelling in spellings {
        for (method, path) in paths {
            let path = path.replace("{K}", spelling);
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut r = client()
                .request(method.clone(), proxy.url(&path))
                .header("api-key", "CLIENTKEY");
            if method == reqwest::Method::POST {
                r = r.json(&serde_json::json!({"model": "gpt-4o", "messages": []}));
            }
            let status = r.send().await.unwrap().status().as_u16();
            assert!(status < 500, "{path}: {status}");
            sent += 1;
        }
    }
    // An absolute-form target (`POST http://host/path?query`) loses its key as well.
    {
        use std::io::{Read, Write};
        let body = br#"{"messages":[]}"#;
        let target = "http://elsewhere.example/openai/deployments/gpt-4o/chat/completions\
                      ?api-version=2024-10-21&API-KEY=CLIENTKEY";
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: elsewhere.example\r\napi-key: CLIENTKEY\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        sent += 1;
    }
    let recorded = b.recorded();
    assert!(
        recorded.len() >= sent,
        "{} of {sent} reached the backend",
        recorded.len()
    );
    for r in &recorded {
        let all = format!(
            "{} {:?} {}",
            r.uri,
            r.headers,
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            !all.contains("CLIENTKEY"),
            "the client's key reached the backend: {all}"
        );
        assert!(
            r.uri.contains("api-version=") || r.uri.starts_with("/openai/v1/"),
            "the rest of the query went too: {}",
            r.uri
        );
    }
}
