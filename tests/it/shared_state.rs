//! Two replicas on one real `redis-server` behave as one: a 429 seen by one keeps the other
//! away from that backend, a client's limit spent through one is enforced by the other, an
//! object made through one is found by the other without a search; and Redis killed, frozen or
//! restarted mid-run costs no request, with sharing resumed once it is back.

use std::time::{Duration, Instant};

use aoai_sim::{Backend, Fault};
use serde_json::Value;

use crate::common::certs::TestCa;
use crate::common::redis::RedisServer;
use crate::common::*;

/// Two keyed backends b0, b1, and the shared state in `redis` (with `extra` YAML).
fn replica_yaml(b: &[Backend], redis: &RedisServer, extra: &str) -> String {
    let mut y = format!(
        "auth: {{kind: none}}\nstate: {{redis: {{url: \"{}\", timeout: 200ms}}}}\n{extra}backends:\n",
        redis.url()
    );
    for (i, b) in b.iter().enumerate() {
        y.push_str(&format!(
            "  - {{url: \"{}\", name: b{i}, api_key: k}}\n",
            b.url()
        ));
    }
    y
}

const UP: &str = "aoai_proxy_state_store_up";

async fn wait_up(proxy: &Proxy, up: bool) {
    let want = if up { 1.0 } else { 0.0 };
    proxy
        .wait_for_metrics(UP, |m| m.contains(UP) && metric(m, UP) == want)
        .await;
}

/// Two replicas on `yaml`, each once it uses Redis.
async fn two_replicas(yaml: &str) -> (Proxy, Proxy) {
    let (one, two) = (Proxy::start(yaml, None), Proxy::start(yaml, None));
    wait_up(&one, true).await;
    wait_up(&two, true).await;
    (one, two)
}

async fn chat_with(proxy: &Proxy, key: Option<&str>) -> (u16, reqwest::header::HeaderMap) {
    let mut r = client().post(proxy.url(CHAT)).json(&chat_body());
    if let Some(key) = key {
        r = r.header("api-key", key);
    }
    let r = r.send().await.expect("request");
    (r.status().as_u16(), r.headers().clone())
}

/// Waits (at most 5 s) until `proxy`'s status page shows backend `name` cooling for gpt-4o;
/// how long it took.
async fn wait_cooling(proxy: &Proxy, name: &str) -> Duration {
    let started = Instant::now();
    loop {
        let (_, body) = proxy.admin_get("/status");
        let v: Value = serde_json::from_str(&body).expect("status json");
        let cooling = v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .is_some_and(|b| b["cooling"].as_array().is_some_and(|c| !c.is_empty()));
        if cooling {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} never cooled here: {body}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends requests through `proxy` until one reaches b0 (which then answers 429): at most 4.
async fn throttle_b0_through(proxy: &Proxy, b: &[Backend], key: Option<&str>) {
    b[0].push_fault(Fault::throttle(30));
    let before = b[0].requests();
    for _ in 0..4 {
        assert_eq!(
            chat_with(proxy, key).await.0,
            200,
            "the 429 was retried on b1"
        );
        if b[0].requests() > before {
            return;
        }
    }
    panic!("no request reached b0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_replica_keeps_the_other_away() {
    let redis = RedisServer::start();
    let b = backends(2).await;
    let yaml = replica_yaml(&b, &redis, "");
    let (one, two) = two_replicas(&yaml).await;
    throttle_b0_through(&one, &b, None).await;
    let took = wait_cooling(&two, "b0").await;
    eprintln!("the cooldown reached the other replica in {took:?}");
    let before = b[0].requests();
    for _ in 0..10 {
        assert_eq!(chat_with(&two, None).await.0, 200);
    }
    assert_eq!(
        b[0].requests(),
        before,
        "the other replica sent b0 requests while it cooled"
    );
    // A replica that starts later learns it from the hash, not from a message it missed.
    let three = Proxy::start(&yaml, None);
    wait_cooling(&three, "b0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_limit_spent_through_one_is_enforced_by_the_other() {
    let redis = RedisServer::start();
    let b = backends(2).await;
    let clients = "clients:\n  - {name: app, key: ck, requests_per_minute: 3}\n";
    let yaml = replica_yaml(&b, &redis, clients);
    let (one, two) = two_replicas(&yaml).await;
    assert_eq!(chat_with(&one, Some("ck")).await.0, 200);
    assert_eq!(chat_with(&two, Some("ck")).await.0, 200);
    let (status, headers) = chat_with(&one, Some("ck")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    for proxy in [&two, &one] {
        let (status, headers) = chat_with(proxy, Some("ck")).await;
        assert_eq!(status, 429, "three a minute in all, whichever replica");
        let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "retry-after {wait}");
    }
    assert_eq!(b[0].requests() + b[1].requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_made_through_one_is_found_by_the_other_without_a_search() {
    let redis = RedisServer::start();
    let b = backends(2).await;
    let yaml = replica_yaml(&b, &redis, "");
    let (one, two) = two_replicas(&yaml).await;
    let made: Value = client()
        .post(one.url("/openai/v1/responses"))
        .json(&serde_json::json!({"model": "gpt-4o", "input": "Hello"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = made["id"].as_str().unwrap().to_string();
    let at = usize::from(b[1].holds(&id));
    // The place is written behind the answer: wait until Redis has it.
    let mut conn = redis.conn().expect("redis");
    let deadline = Instant::now() + Duration::from_secs(5);
    while ::redis::cmd("HGET")
        .arg("aoai-proxy:objects")
        .arg(&id)
        .query::<Option<String>>(&mut conn)
        .unwrap()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the object's place never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = counts(&[&b[0], &b[1]]);
    for _ in 0..3 {
        let r = client()
            .post(two.url("/openai/v1/responses"))
            .json(&serde_json::json!({"model": "gpt-4o", "input": "More", "previous_response_id": id}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let after = counts(&[&b[0], &b[1]]);
    assert_eq!(after[at] - before[at], 3);
    assert_eq!(after[1 - at], before[1 - at], "the other replica searched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_or_frozen_mid_run_costs_no_request_and_sharing_resumes() {
    let mut redis = RedisServer::start();
    let b = backends(2).await;
    let clients = "clients:\n  - {name: app, key: ck, requests_per_minute: 100000}\n";
    let yaml = replica_yaml(&b, &redis, clients);
    let (one, two) = two_replicas(&yaml).await;
    let burst = |n: usize| {
        let (one, two) = (&one, &two);
        async move {
            let all = (0..n).map(|i| chat_with(if i % 2 == 0 { one } else { two }, Some("ck")));
            futures_util::future::join_all(all)
                .await
                .into_iter()
                .filter(|(status, _)| *status != 200)
                .count()
        }
    };
    assert_eq!(burst(40).await, 0);
    redis.kill();
    assert_eq!(burst(40).await, 0, "requests failed with Redis gone");
    wait_up(&one, false).await;
    wait_up(&two, false).await;
    assert_eq!(burst(40).await, 0);
    // Frozen: connections stay open and nothing answers; each call gives up at the timeout.
    redis.restart();
    wait_up(&one, true).await;
    wait_up(&two, true).await;
    redis.signal("STOP");
    let started = Instant::now();
    assert_eq!(burst(20).await, 0, "requests failed with Redis frozen");
    let took = started.elapsed();
    redis.signal("CONT");
    assert!(
        took < Duration::from_secs(10),
        "20 requests took {took:?} with Redis frozen"
    );
    wait_up(&one, true).await;
    wait_up(&two, true).await;
    // Shared again: a 429 through one keeps the other away.
    throttle_b0_through(&one, &b, Some("ck")).await;
    wait_cooling(&two, "b0").await;
    assert!(
        one.log().contains("state store unreachable"),
        "{}",
        one.log()
    );
    assert!(one.log().contains("state store up"));
}

/// `redis://:PASSWORD@`: replicas that give the password share state; one that gives a wrong
/// one serves every request with its own state, says Redis is down, and never logs either
/// password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_redis_is_shared_and_a_wrong_password_costs_no_request() {
    let redis = RedisServer::start_with_password("s3cret-redis-pass");
    let b = backends(2).await;
    let yaml = replica_yaml(&b, &redis, "");
    let (one, two) = two_replicas(&yaml).await;
    throttle_b0_through(&one, &b, None).await;
    wait_cooling(&two, "b0").await;

    let wrong = Proxy::start(&yaml.replace("s3cret-redis-pass", "wrong-redis-pass"), None);
    wrong.wait_for_log("state store unreachable").await;
    wait_up(&wrong, false).await;
    for _ in 0..4 {
        assert_eq!(chat_with(&wrong, None).await.0, 200);
    }
    for proxy in [&one, &two, &wrong] {
        let log = proxy.log();
        assert!(
            !log.contains("s3cret-redis-pass") && !log.contains("wrong-redis-pass"),
            "a Redis password in the log:\n{log}"
        );
    }
}

/// `rediss://` with `state.redis.ca_file`: real TLS to a Redis whose certificate a private CA
/// signed, and state shared over it; a replica that does not trust that CA cannot use that
/// Redis, says so, and serves every request on its own state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_its_ca_is_shared_and_an_untrusted_certificate_costs_no_request() {
    let ca = TestCa::new("redis test CA");
    let redis = RedisServer::start_tls(&ca);
    assert!(redis.url().starts_with("rediss://"));
    let ca_file = scratch_dir().join("redis-ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let b = backends(2).await;
    let plain = replica_yaml(&b, &redis, "");
    let trusted = plain.replace(
        ", timeout: 200ms}",
        &format!(", timeout: 200ms, ca_file: \"{}\"}}", ca_file.display()),
    );
    assert_ne!(plain, trusted);
    let (one, two) = two_replicas(&trusted).await;
    throttle_b0_through(&one, &b, None).await;
    wait_cooling(&two, "b0").await;

    // Without the CA, the public roots do not know the certificate.
    let untrusted = Proxy::start(&plain, None);
    let log = untrusted.wait_for_log("state store unreachable").await;
    assert!(
        log.to_lowercase().contains("certificate"),
        "not refused for its certificate:\n{log}"
    );
    wait_up(&untrusted, false).await;
    for _ in 0..4 {
        assert_eq!(chat_with(&untrusted, None).await.0, 200);
    }
}
