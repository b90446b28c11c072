//! Waiting for capacity (`retry.wait_for_capacity`): a request that would get the throttling
//! 429 waits, contacting no backend, until the first cooldown ends, then goes on; waiting
//! requests go in arrival order and at the backend's pace; the 429 still comes at once past the
//! budget or `retry.max_waiting`; a client that leaves stops waiting. Without it, nothing waits
//! and the proxy's own 429s are spread.

use std::time::{Duration, Instant};

use aoai_sim::{Backend, BackendOptions, Fault};
use serde_json::json;

use crate::common::*;

/// A 429 asking for `ms` milliseconds.
fn throttle_ms(ms: u64) -> Fault {
    Fault::Status {
        status: 429,
        headers: vec![("retry-after-ms".into(), ms.to_string())],
    }
}

/// One backend, b0, behind a proxy with `retry` settings.
async fn one_backend(retry: &str) -> (Backend, Proxy) {
    let b = backend("b0").await;
    let yaml = format!(
        "auth: {{kind: none}}\nretry: {{{retry}}}\nbackends:\n  - {{url: \"{}\", name: b0, api_key: k}}\n",
        b.url()
    );
    let proxy = Proxy::start(&yaml, None);
    (b, proxy)
}

/// POSTs a chat request whose message is `text`; (status, retry-after-ms, time taken).
async fn chat_saying(proxy: &Proxy, text: &str) -> (u16, Option<u64>, Duration) {
    let started = Instant::now();
    let r = client()
        .post(proxy.url(CHAT))
        .json(&json!({"messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .expect("request");
    let ms = r
        .headers()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (r.status().as_u16(), ms, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_request_waits_for_the_cooldown_and_is_served() {
    let (b, proxy) = one_backend("wait_for_capacity: 5s").await;
    b.push_fault(throttle_ms(600));
    let (status, _, took) = chat_saying(&proxy, "hello").await;
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(550), "served after {took:?}");
    assert_eq!(b.requests(), 2, "the 429, then the try after the wait");
    let log = proxy.wait_for_log(" wait=").await;
    let line = log.lines().find(|l| l.contains(" wait=")).unwrap();
    assert!(line.contains("tried=b0:429,b0:2xx"), "{line}");
    let (_, m) = proxy.admin_get("/metrics");
    assert_eq!(metric(&m, "aoai_proxy_wait_seconds_count"), 1.0);
    assert_eq!(metric(&m, "aoai_proxy_waiting"), 0.0);
    assert!(metric(&m, "aoai_proxy_wait_seconds_sum") >= 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_contact_no_backend_and_go_in_arrival_order_at_the_backends_pace() {
    let b = Backend::start(BackendOptions {
        name: "b0".into(),
        record: true,
        // Each answer takes a while: requests let go together reach it before either answers.
        latency: Duration::from_millis(150),
        ..Default::default()
    })
    .await
    .unwrap();
    let yaml = format!(
        "auth: {{kind: none}}\nretry: {{wait_for_capacity: 20s}}\nbackends:\n  - {{url: \"{}\", name: b0, api_key: k}}\n",
        b.url()
    );
    let proxy = std::sync::Arc::new(Proxy::start(&yaml, None));
    // Still out of quota for a while: every try is answered 429, 400 ms.
    b.set_fault(Some(throttle_ms(400)));
    let mut clients = Vec::new();
    for i in 0..5 {
        let proxy = proxy.clone();
        clients.push(tokio::spawn(async move {
            chat_saying(&proxy, &format!("request {i}")).await
        }));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // A second and more: each cooldown's end lets one request go, not five.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let throttled = b.requests();
    assert!(
        (2..=5).contains(&throttled),
        "{throttled} tries in 1.4 s of 400 ms cooldowns (five requests waiting)"
    );
    b.set_fault(None);
    for c in clients {
        let (status, _, _) = c.await.unwrap();
        assert_eq!(status, 200);
    }
    // The first to reach the backend after the quota came back was the first to arrive; the
    // two let go by its answer were the next two.
    let order: Vec<String> = b
        .recorded()
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            body["messages"][0]["content"].as_str().unwrap().to_string()
        })
        .collect();
    let first_served = order.len() - 5;
    assert_eq!(order[first_served], "request 0", "{order:?}");
    let mut next_two = order[first_served + 1..first_served + 3].to_vec();
    next_two.sort();
    assert_eq!(next_two, ["request 1", "request 2"], "{order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_budget_or_max_waiting_the_429_comes_at_once() {
    let (b, proxy) = one_backend("wait_for_capacity: 1s, max_waiting: 1").await;
    // A cooldown longer than the budget: no wait.
    b.push_fault(throttle_ms(3000));
    let (status, ms, took) = chat_saying(&proxy, "a").await;
    assert_eq!(status, 429);
    assert!(took < Duration::from_millis(900), "{took:?}");
    let ms = ms.expect("retry-after-ms");
    assert!((2000..=3000).contains(&ms), "retry-after-ms {ms}");
    assert_eq!(b.requests(), 1);
    let (status, _, took) = chat_saying(&proxy, "b").await;
    assert_eq!(status, 429);
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert_eq!(b.requests(), 1, "a cooling backend was contacted");

    let (b, proxy) = one_backend("wait_for_capacity: 10s, max_waiting: 1").await;
    b.push_fault(throttle_ms(1000));
    let proxy = std::sync::Arc::new(proxy);
    let waiting = {
        let proxy = proxy.clone();
        tokio::spawn(async move { chat_saying(&proxy, "waits").await })
    };
    proxy
        .wait_for_metrics("one waiting", |m| metric(m, "aoai_proxy_waiting") == 1.0)
        .await;
    let (status, _, took) = chat_saying(&proxy, "one too many").await;
    assert_eq!(status, 429);
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert_eq!(waiting.await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_stops_waiting_at_once() {
    let (b, proxy) = one_backend("wait_for_capacity: 20s").await;
    b.push_fault(throttle_ms(10_000));
    let gave_up = client()
        .post(proxy.url(CHAT))
        .json(&chat_body())
        .timeout(Duration::from_millis(400))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client was answered: {gave_up:?}");
    let left = Instant::now();
    let m = proxy
        .wait_for_metrics("nobody waiting", |m| {
            metric(m, "aoai_proxy_waiting") == 0.0
                && metric(m, "aoai_proxy_wait_seconds_count") == 1.0
        })
        .await;
    assert!(left.elapsed() < Duration::from_secs(2));
    assert!(metric(&m, "aoai_proxy_wait_seconds_sum") < 2.0);
    assert_eq!(b.requests(), 1, "a backend was contacted while it waited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_waiting_nothing_waits_and_the_proxys_429s_are_spread() {
    let b = backends(2).await;
    for backend in &b {
        backend.push_fault(throttle_ms(4000));
    }
    let id = identity().await;
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    // The tries meet both 429s: the client gets the last, as it was.
    assert_eq!(chat_saying(&proxy, "a").await.0, 429);
    let mut waits = Vec::new();
    for i in 0..3 {
        let (status, ms, took) = chat_saying(&proxy, &format!("{i}")).await;
        assert_eq!(status, 429);
        assert!(took < Duration::from_millis(500), "{took:?}");
        waits.push(ms.expect("retry-after-ms"));
    }
    assert_eq!(counts(&[&b[0], &b[1]]), vec![1, 1]);
    // Each client is told to come back a little later than the one before it (100 ms apart
    // when no backend has said its quota), never sooner than the cooldown.
    assert!((3000..=4000).contains(&waits[0]), "{waits:?}");
    // (Each step is 100 ms less the time between the two answers.)
    for pair in waits.windows(2) {
        let step = pair[1] as i64 - pair[0] as i64;
        assert!((20..=110).contains(&step), "{waits:?}");
    }
    let (_, m) = proxy.admin_get("/metrics");
    assert_eq!(metric(&m, "aoai_proxy_wait_seconds_count"), 0.0);
}
