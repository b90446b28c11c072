//! `balance.strategy: headroom`: each request goes, within the best priority group that can
//! serve it, to the backend whose answers say it has the most tokens left; a backend with too
//! little left is passed over (and its group, when all are), with no 429 first; replicas on one
//! Redis share what the backends said.

use std::time::{Duration, Instant};

use aoai_sim::{Backend, BackendOptions, Quota};
use serde_json::Value;

use crate::common::redis::RedisServer;
use crate::common::*;

/// A backend named `name` with `tpm` tokens a minute for each deployment.
async fn with_quota(name: &str, tpm: u64) -> Backend {
    Backend::start(BackendOptions {
        name: name.into(),
        record: true,
        quota: Some(Quota::tokens_per_minute(tpm)),
        ..Default::default()
    })
    .await
    .expect("backend")
}

/// `strategy` over `backends` given as (backend, priority), with `extra` YAML.
fn yaml(strategy: &str, backends: &[(&Backend, u8)], extra: &str) -> String {
    let mut y =
        format!("auth: {{kind: none}}\nbalance: {{strategy: {strategy}}}\n{extra}backends:\n");
    for (i, (b, priority)) in backends.iter().enumerate() {
        y.push_str(&format!(
            "  - {{url: \"{}\", name: b{i}, api_key: k, priority: {priority}}}\n",
            b.url()
        ));
    }
    y
}

async fn chats(proxy: &Proxy, n: usize) {
    for _ in 0..n {
        let (status, _, body) = chat(proxy).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_goes_where_the_most_tokens_are_left() {
    let small = with_quota("small", 20_000).await;
    let big = with_quota("big", 200_000).await;
    let proxy = Proxy::start(&yaml("headroom", &[(&small, 0), (&big, 0)], ""), None);
    chats(&proxy, 10).await;
    // Each has room until it answers once; then the big one has ten times as much left.
    assert_eq!(counts(&[&small, &big]), vec![1, 9]);
    let (_, status) = proxy.admin_get("/status");
    let v: Value = serde_json::from_str(&status).unwrap();
    let left = &v["backends"][1]["capacity"][0];
    assert_eq!(left["deployment"], "gpt-4o");
    let tokens = left["tokens_left"].as_u64().unwrap();
    assert!((180_000..200_000).contains(&tokens), "{left}");

    // Round robin, the default, takes turns whatever is left.
    let small = with_quota("small", 20_000).await;
    let big = with_quota("big", 200_000).await;
    let proxy = Proxy::start(&yaml("round_robin", &[(&small, 0), (&big, 0)], ""), None);
    chats(&proxy, 10).await;
    assert_eq!(counts(&[&small, &big]), vec![5, 5]);
    let (_, status) = proxy.admin_get("/status");
    let v: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["backends"][1]["capacity"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_group_is_passed_over_before_it_answers_429() {
    // Provisioned first, with room for two requests of about 1,000 tokens; pay-as-you-go
    // behind it.
    for (strategy, first_group, throttled) in [("headroom", 2, 0), ("round_robin", 3, 1)] {
        let first = with_quota("first", 2_500).await;
        let spill = with_quota("spill", 100_000).await;
        let proxy = Proxy::start(&yaml(strategy, &[(&first, 0), (&spill, 1)], ""), None);
        chats(&proxy, 7).await;
        assert_eq!(
            (first.requests(), first.throttled()),
            (first_group, throttled),
            "{strategy}: requests to the first group, and its 429s"
        );
        assert_eq!(spill.requests(), 5, "{strategy}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_redis_share_what_the_backends_said() {
    let redis = RedisServer::start();
    let b = with_quota("b0", 60_000).await;
    let extra = format!(
        "state: {{redis: {{url: \"{}\", timeout: 200ms}}}}\n",
        redis.url()
    );
    let config = yaml("headroom", &[(&b, 0)], &extra);
    let (one, two) = (Proxy::start(&config, None), Proxy::start(&config, None));
    for p in [&one, &two] {
        p.wait_for_metrics("redis up", |m| {
            metric(m, "aoai_proxy_state_store_up") == 1.0
        })
        .await;
    }
    chats(&one, 1).await;
    // Replica two has sent nothing, and knows what b0 said.
    let started = Instant::now();
    loop {
        let (_, status) = two.admin_get("/status");
        let v: Value = serde_json::from_str(&status).unwrap();
        let left = &v["backends"][0]["capacity"][0];
        if let Some(tokens) = left["tokens_left"].as_u64() {
            assert!((55_000..60_000).contains(&tokens), "{left}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "replica two never heard: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.requests(), 1);
}
