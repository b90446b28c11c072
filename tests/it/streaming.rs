//! Streamed (`text/event-stream`) answers reach the client chunk by chunk as the backend
//! writes them, and a stream that breaks midway reaches the client broken, never retried.

use std::time::{Duration, Instant};

use aoai_sim::{Backend, BackendOptions, Fault};
use futures_util::StreamExt;

use crate::common::*;

async fn slow_backend(name: &str) -> Backend {
    Backend::start(BackendOptions {
        name: name.into(),
        answer: "one two three four five six".into(),
        chunk_delay: Duration::from_millis(150),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn stream_request() -> serde_json::Value {
    serde_json::json!({"stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "Hi"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_as_the_backend_writes_them() {
    let id = identity().await;
    let b = slow_backend("b0").await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    let started = Instant::now();
    let r = client()
        .post(proxy.url(CHAT))
        .json(&stream_request())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut arrivals = Vec::new();
    let mut text = String::new();
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        arrivals.push(started.elapsed());
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    // 10 events, 150 ms apart: the first must not wait for the last.
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(text.contains("\"usage\""));
    let (first, last) = (arrivals[0], *arrivals.last().unwrap());
    assert!(
        arrivals.len() >= 5,
        "the stream came in {} pieces",
        arrivals.len()
    );
    assert!(
        last - first >= Duration::from_millis(900),
        "first chunk at {first:?}, last at {last:?}: the stream was held back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_broken_midway_reaches_the_client_broken_and_is_not_retried() {
    let id = identity().await;
    let b0 = slow_backend("b0").await;
    let b1 = slow_backend("b1").await;
    b0.push_fault(Fault::BreakStream { after_chunks: 3 });
    let proxy = Proxy::start(&mi_yaml(&[&b0, &b1]), Some(&id));
    let r = client()
        .post(proxy.url(CHAT))
        .json(&stream_request())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let mut broke = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => text.push_str(std::str::from_utf8(&c).unwrap()),
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    assert!(broke, "the client saw a clean end: {text}");
    assert!(!text.contains("[DONE]"));
    assert!(
        text.contains("one"),
        "the first events should have arrived: {text}"
    );
    assert_eq!(b1.requests(), 0, "a started response was retried");
}

/// Polls the proxy's in-flight gauge until it reads 0 (at most `within`).
async fn wait_idle(proxy: &Proxy, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let (_, m) = proxy.admin_get("/metrics");
        if m.contains("aoai_proxy_in_flight 0") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_frees_the_backend() {
    let id = identity().await;
    let b = Backend::start(BackendOptions {
        answer: (0..40).map(|i| format!("w{i} ")).collect(),
        chunk_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap();
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    let r = client()
        .post(proxy.url(CHAT))
        .json(&stream_request())
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    // The whole stream would take 4 s; the proxy lets go well before.
    assert!(
        wait_idle(&proxy, Duration::from_millis(1500)).await,
        "the request stayed in flight after the client left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_waiting_frees_the_backend() {
    let id = identity().await;
    let b = backend("b0").await;
    b.set_fault(Some(Fault::Delay(Duration::from_secs(10))));
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    let waiting = tokio::spawn({
        let url = proxy.url(CHAT);
        async move { client().post(url).json(&chat_body()).send().await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.requests() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    waiting.abort();
    assert!(
        wait_idle(&proxy, Duration::from_secs(2)).await,
        "the request stayed in flight after the client left"
    );
    assert!(!proxy.log().contains("ERROR"), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_stream_unbuffered_and_count_their_tokens() {
    // The Responses API, with the deployment in the body's `model` (`/openai/v1/responses`)
    // or in the path (`/openai/deployments/{d}/responses`): its events are relayed as they come.
    let b = slow_backend("b0").await;
    let yaml = format!(
        "auth: {{kind: none}}\nbackends:\n  - {{url: \"{}\", name: b0, api_key: k, deployments: {{gpt-4o: gpt-4o}}}}\n",
        b.url()
    );
    let proxy = Proxy::start(&yaml, None);
    for (path, body) in [
        (
            "/openai/v1/responses",
            serde_json::json!({"model": "gpt-4o", "input": "Hi", "stream": true}),
        ),
        (
            "/openai/deployments/gpt-4o/responses?api-version=2025-03-01-preview",
            serde_json::json!({"input": "Hi", "stream": true}),
        ),
    ] {
        let started = Instant::now();
        let r = client()
            .post(proxy.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let mut arrivals = Vec::new();
        let mut text = String::new();
        let mut stream = r.bytes_stream();
        while let Some(chunk) = stream.next().await {
            arrivals.push(started.elapsed());
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
        assert!(text.starts_with("event: response.created"), "{text}");
        assert!(text.contains("event: response.completed"), "{text}");
        let (first, last) = (arrivals[0], *arrivals.last().unwrap());
        assert!(
            last - first >= Duration::from_millis(600),
            "{path}: first chunk at {first:?}, last at {last:?}: the stream was held back"
        );
    }
    // A model that no backend serves is refused at once.
    let r = client()
        .post(proxy.url("/openai/v1/responses"))
        .json(&serde_json::json!({"model": "o3", "input": "Hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let m = proxy
        .wait_for_metrics("tokens", |m| m.contains("aoai_proxy_tokens_total{"))
        .await;
    let completion = m
        .lines()
        .find(|l| {
            l.starts_with("aoai_proxy_tokens_total{")
                && l.contains("kind=\"completion\"")
                && l.contains("gpt-4o")
        })
        .unwrap_or_else(|| panic!("no completion tokens counted:\n{m}"));
    assert!(
        completion.ends_with(" 12"),
        "two streams of 6 words: {completion}"
    );
}
