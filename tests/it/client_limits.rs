//! Per-client limits: `requests_per_minute` and `tokens_per_minute` over a sliding minute, with
//! 429 + `retry-after` when spent and `x-ratelimit-remaining-*` on every answer; `deployments`,
//! the only deployments a client may use (403). Nothing refused reaches a backend.

use crate::common::*;

fn limited_yaml(b: &aoai_sim::Backend, client: &str) -> String {
    format!(
        "{}clients:\n  - {{name: team-a, key: key-a, {client}}}\n  - {{name: team-b, key: key-b}}\n",
        mi_yaml(&[b])
    )
}

async fn send(
    proxy: &Proxy,
    key: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let r = client()
        .post(proxy.url(path))
        .header("api-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_are_counted_per_client() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&limited_yaml(&b, "requests_per_minute: 3"), Some(&id));
    for left in ["2", "1", "0"] {
        let (status, headers, _) = send(&proxy, "key-a", CHAT, chat_body()).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-ratelimit-remaining-requests"], left);
    }
    let (status, headers, body) = send(&proxy, "key-a", CHAT, chat_body()).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "429");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("requests per minute"));
    let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    let ms: u64 = headers["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!((50..=60).contains(&secs), "retry-after {secs}");
    assert!((50_000..=60_000).contains(&ms), "retry-after-ms {ms}");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(b.requests(), 3, "the refused request reached no backend");

    // Another client has its own window, and no limit means no header.
    let (status, headers, _) = send(&proxy, "key-b", CHAT, chat_body()).await;
    assert_eq!(status, 200);
    assert!(headers.get("x-ratelimit-remaining-requests").is_none());
    assert_eq!(b.requests(), 4);
}

/// Sends requests with `key` (streamed or not) until one is refused; the tokens the backend
/// reported for those admitted, and how many were. Each admitted one had tokens left.
async fn spend_until_refused(proxy: &Proxy, key: &str, stream: bool, limit: u64) -> (u64, u64) {
    let mut spent = 0u64;
    let mut admitted = 0;
    loop {
        let body = match stream {
            true => serde_json::json!({"stream": true, "stream_options": {"include_usage": true},
                                        "messages": [{"role": "user", "content": "Hello"}]}),
            false => chat_body(),
        };
        let (status, headers, body) = send(proxy, key, CHAT, body).await;
        if status == 429 {
            assert!(body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("tokens per minute"));
            assert_eq!(headers["x-ratelimit-remaining-tokens"], "0");
            assert!(headers.contains_key("retry-after-ms"));
            return (spent, admitted);
        }
        assert_eq!(status, 200);
        assert!(
            spent < limit,
            "admitted with {spent} of {limit} tokens spent"
        );
        let left: u64 = headers["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(left < limit, "the estimate is counted on admission");
        let usage = match &body {
            serde_json::Value::String(events) => events
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .find(|v| v["usage"].is_object())
                .map(|v| v["usage"].clone())
                .expect("a usage event"),
            json => json["usage"].clone(),
        };
        spent +=
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap();
        admitted += 1;
        assert!(admitted < 100, "never refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_minute_settle_on_what_the_backend_reported() {
    let id = identity().await;
    let b = backend("b0").await;
    let limit = 150u64;
    let proxy = Proxy::start(
        &format!(
            "{}clients:\n  - {{name: team-a, key: key-a, tokens_per_minute: {limit}}}\n  - {{name: team-s, key: key-s, tokens_per_minute: {limit}}}\n  - {{name: team-b, key: key-b}}\n",
            mi_yaml(&[&b])
        ),
        Some(&id),
    );
    // Whole answers: admitted while tokens were left, refused once they were spent.
    let (spent, admitted) = spend_until_refused(&proxy, "key-a", false, limit).await;
    assert!(spent >= limit, "refused with only {spent} of {limit} spent");
    assert!(admitted >= 2);
    assert_eq!(b.requests(), admitted);
    // Streams: the usage event settles them the same way.
    let (spent, streams) = spend_until_refused(&proxy, "key-s", true, limit).await;
    assert!(
        spent >= limit,
        "streams refused with only {spent} of {limit} spent"
    );
    assert_eq!(b.requests(), admitted + streams);
    // No limit, no refusal.
    let (status, _, _) = send(&proxy, "key-b", CHAT, chat_body()).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_not_listed_gets_403_and_reaches_no_backend() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&limited_yaml(&b, "deployments: [gpt-4o, embed]"), Some(&id));
    let (status, _, _) = send(&proxy, "key-a", CHAT, chat_body()).await;
    assert_eq!(status, 200);
    let other = "/openai/deployments/gpt-4-turbo/chat/completions?api-version=2024-10-21";
    let (status, _, body) = send(&proxy, "key-a", other, chat_body()).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "PermissionDenied");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("gpt-4-turbo"));
    // The deployment named by the body's `model` on the v1 path is checked too.
    let (status, _, _) = send(
        &proxy,
        "key-a",
        "/openai/v1/chat/completions",
        serde_json::json!({"model": "gpt-4-turbo", "messages": []}),
    )
    .await;
    assert_eq!(status, 403);
    // A body whose model cannot be read (a duplicate key) could still name one to a backend.
    let r = client()
        .post(proxy.url("/openai/v1/chat/completions"))
        .header("api-key", "key-a")
        .header("content-type", "application/json")
        .body(r#"{"model": "gpt-4o", "model": "gpt-4-turbo", "messages": []}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(b.requests(), 1, "refused requests reached no backend");
    let (status, _, _) = send(&proxy, "key-b", other, chat_body()).await;
    assert_eq!(status, 200, "team-b may use every deployment");
}
