//! The quota: the buckets' arithmetic on an injected clock, then a backend's answers over a real
//! socket.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use crate::{Backend, BackendOptions, Fault};

/// A chat completion of `tokens` to `deployment`.
fn charge(deployment: &str, tokens: u64) -> Charge {
    Charge {
        operation: Operation::ChatCompletions,
        deployment: deployment.into(),
        tokens,
        api_version: "2024-10-21".into(),
    }
}

/// A quota of `tpm` tokens and `rpm` requests a minute.
fn quota(tpm: u64, rpm: u64) -> Quota {
    Quota {
        tokens_per_minute: tpm,
        requests_per_minute: rpm,
        ..Quota::tokens_per_minute(tpm)
    }
}

#[test]
fn azure_gives_6_requests_a_minute_per_1000_tokens() {
    assert_eq!(Quota::tokens_per_minute(1_000).requests_per_minute, 6);
    assert_eq!(Quota::tokens_per_minute(150_000).requests_per_minute, 900);
    assert_eq!(Quota::tokens_per_minute(2_980).requests_per_minute, 17);
    assert_eq!(Quota::tokens_per_minute(100).requests_per_minute, 1);
    assert!(!Quota::tokens_per_minute(1).provisioned);
}

#[test]
fn a_bucket_refills_a_sixtieth_of_its_size_a_second_up_to_its_size() {
    let t0 = Instant::now();
    let mut b = Bucket::full(600, t0);
    b.take(600);
    assert_eq!(b.remaining(), 0);
    assert_eq!(b.utilization(), 100.0);
    assert_eq!(b.wait(10), Duration::from_secs(1));
    b.refill(t0 + Duration::from_millis(500));
    assert_eq!(b.remaining(), 5);
    assert!((b.utilization() - 595.0 / 6.0).abs() < 1e-9);
    assert_eq!(b.wait(10), Duration::from_millis(500));
    b.refill(t0 + Duration::from_millis(400));
    assert_eq!(b.remaining(), 5, "a clock read earlier adds nothing");
    b.refill(t0 + Duration::from_secs(3_600));
    assert_eq!(b.remaining(), 600, "never more than its size");
    assert_eq!(b.utilization(), 0.0);
}

#[test]
fn a_wait_rounds_up_to_the_nanosecond() {
    let t0 = Instant::now();
    // 7 a minute: one every 8.571428... s.
    let mut b = Bucket::full(7, t0);
    b.take(7);
    assert_eq!(b.wait(1), Duration::from_nanos(8_571_428_572));
    b.refill(t0 + b.wait(1));
    assert_eq!(b.remaining(), 1, "after the wait it holds enough");
}

#[test]
fn a_charge_is_all_or_nothing_and_waits_for_the_slower_bucket() {
    let t0 = Instant::now();
    // 100 tokens a second, requests aplenty.
    let limiter = Limiter::new(quota(6_000, 6_000));
    let standing = limiter.take(&charge("a", 5_000), t0).unwrap();
    assert_eq!((standing.tokens, standing.requests), (1_000, 5_999));
    let refused = limiter.take(&charge("a", 1_500), t0).unwrap_err();
    assert_eq!(refused.wait, Duration::from_secs(5), "500 tokens short");
    assert!(refused.by_tokens);
    assert_eq!(refused.standing.tokens, 1_000, "a refusal charges nothing");
    assert_eq!(refused.standing.requests, 5_999);
    let later = limiter.take(&charge("a", 1_500), t0 + Duration::from_secs(5));
    assert_eq!(later.unwrap().tokens, 0);
    assert_eq!(limiter.throttled(), 1);
    assert_eq!(limiter.tokens_charged(), 6_500);
}

#[test]
fn the_request_bucket_refuses_too() {
    let t0 = Instant::now();
    // 6 requests a minute: one every 10 s.
    let limiter = Limiter::new(Quota::tokens_per_minute(1_000));
    for left in (0..6).rev() {
        assert_eq!(limiter.take(&charge("a", 1), t0).unwrap().requests, left);
    }
    let refused = limiter.take(&charge("a", 1), t0).unwrap_err();
    assert_eq!(refused.wait, Duration::from_secs(10));
    assert!(!refused.by_tokens);
    assert!(limiter
        .take(&charge("a", 1), t0 + Duration::from_secs(10))
        .is_ok());
}

#[test]
fn each_deployment_has_its_own_buckets() {
    let t0 = Instant::now();
    let limiter = Limiter::new(quota(1_000, 1_000));
    limiter.take(&charge("a", 1_000), t0).unwrap();
    assert!(limiter.take(&charge("a", 1), t0).is_err());
    assert_eq!(limiter.take(&charge("b", 1), t0).unwrap().tokens, 999);
}

#[test]
fn a_request_over_the_whole_quota_waits_for_a_full_bucket_and_empties_it() {
    let t0 = Instant::now();
    // 10 tokens a second.
    let limiter = Limiter::new(quota(600, 600));
    limiter.take(&charge("a", 100), t0).unwrap();
    let refused = limiter.take(&charge("a", 10_000), t0).unwrap_err();
    assert_eq!(refused.wait, Duration::from_secs(10));
    let full = t0 + Duration::from_secs(10);
    assert_eq!(limiter.take(&charge("a", 10_000), full).unwrap().tokens, 0);
    assert_eq!(limiter.tokens_charged(), 700);
}

#[test]
fn azure_estimates_the_prompt_and_the_most_it_may_write() {
    let messages = json!([{"role": "user", "content": "one two three"}]);
    let chat = Operation::ChatCompletions;
    assert_eq!(
        chat.estimate(&json!({"messages": messages, "max_tokens": 50})),
        3 + 50
    );
    assert_eq!(
        chat.estimate(&json!({"messages": messages, "max_completion_tokens": 7})),
        3 + 7
    );
    assert_eq!(
        chat.estimate(&json!({"messages": messages})),
        3 + Quota::DEFAULT_MAX_TOKENS
    );
    let completion = json!({"prompt": "say this", "max_tokens": 5});
    assert_eq!(Operation::Completions.estimate(&completion), 2 + 5);
    // Words of the JSON, as `usage` counts them: `["a`, `b","c`, `d"]`.
    let embedding = json!({"input": ["a b", "c d"], "max_tokens": 99});
    assert_eq!(Operation::Embeddings.estimate(&embedding), 3);
    let response = json!({"input": "four words of input", "instructions": "be brief", "max_output_tokens": 20});
    assert_eq!(Operation::Responses.estimate(&response), 4 + 2 + 20);
    let huge = json!({"messages": messages, "max_tokens": u64::MAX});
    assert_eq!(chat.estimate(&huge), u64::MAX);
}

#[test]
fn the_operations_a_quota_charges_and_the_deployments_they_name() {
    let post = |path| Operation::of(&Method::POST, path);
    use Operation::*;
    assert_eq!(
        post("/openai/deployments/d/chat/completions"),
        Some(ChatCompletions)
    );
    assert_eq!(post("/openai/v1/chat/completions"), Some(ChatCompletions));
    assert_eq!(post("/openai/deployments/d/completions"), Some(Completions));
    assert_eq!(post("/openai/v1/embeddings"), Some(Embeddings));
    assert_eq!(post("/openai/responses"), Some(Responses));
    assert_eq!(post("/openai/v1/responses"), Some(Responses));
    assert_eq!(post("/openai/deployments/d/responses"), Some(Responses));
    assert_eq!(post("/openai/v1/responses/resp_1/cancel"), None);
    assert_eq!(post("/openai/v1/files"), None);
    let get = Operation::of(&Method::GET, "/openai/deployments/d/chat/completions");
    assert_eq!(get, None);
    assert_eq!(
        deployment("/openai/deployments/gpt/embeddings"),
        Some("gpt")
    );
    assert_eq!(deployment("/openai/deployments//embeddings"), None);
    assert_eq!(deployment("/openai/v1/embeddings"), None);
}

#[test]
fn a_charge_names_the_path_s_deployment_else_the_body_s_model() {
    let parts = |uri: &str| {
        let req = http::Request::post(uri).body(()).unwrap();
        req.into_parts().0
    };
    let chat = Operation::ChatCompletions;
    let body = json!({"model": "m", "messages": []});
    let on_path = parts("/openai/deployments/d/chat/completions?api-version=2024-10-21");
    let c = Charge::of(chat, &on_path, &body).unwrap();
    assert_eq!(
        (c.deployment.as_str(), c.api_version.as_str()),
        ("d", "2024-10-21")
    );
    let v1 = parts("/openai/v1/chat/completions");
    let c = Charge::of(chat, &v1, &body).unwrap();
    assert_eq!((c.deployment.as_str(), c.api_version.as_str()), ("m", "v1"));
    assert!(Charge::of(chat, &v1, &json!({"messages": []})).is_none());
}

// ---- Over a real socket.

async fn backend(quota: Quota) -> Backend {
    Backend::start(BackendOptions {
        quota: Some(quota),
        ..Default::default()
    })
    .await
    .expect("the simulator binds 127.0.0.1:0")
}

/// A chat completion to `deployment` of `b` with a one-token prompt and `max_tokens`.
async fn chat(b: &Backend, deployment: &str, max_tokens: u64, stream: bool) -> reqwest::Response {
    let url = format!(
        "{}/openai/deployments/{deployment}/chat/completions?api-version=2024-10-21",
        b.url()
    );
    let body = json!({"messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": max_tokens, "stream": stream});
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a client")
        .post(url)
        .header("api-key", "k")
        .json(&body)
        .send()
        .await
        .expect("answered")
}

/// The header `name` of `r` as a number.
fn number(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.parse().ok()
}

#[tokio::test]
async fn a_deployment_over_its_tokens_waits_as_long_as_the_bucket_needs() {
    // 2,980 tokens a minute (49.7 a second); each request costs 1 + 999 = 1,000 tokens, so the
    // third finds some 980 left and waits for about 20 more: 0.4 s.
    let b = backend(Quota {
        limit_headers: true,
        ..Quota::tokens_per_minute(2_980)
    })
    .await;
    let first = chat(&b, "gpt", 999, false).await;
    assert_eq!(first.status(), 200);
    assert_eq!(number(&first, "x-ratelimit-remaining-tokens"), Some(1_980));
    assert_eq!(number(&first, "x-ratelimit-remaining-requests"), Some(16));
    assert_eq!(number(&first, "x-ratelimit-limit-tokens"), Some(2_980));
    assert_eq!(number(&first, "x-ratelimit-limit-requests"), Some(17));
    let second = chat(&b, "gpt", 999, true).await;
    assert_eq!(second.status(), 200, "a stream is charged alike");
    let left = number(&second, "x-ratelimit-remaining-tokens").unwrap();
    assert!((980..1_000).contains(&left), "{left} tokens left");
    assert_eq!(number(&second, "x-ratelimit-remaining-requests"), Some(15));
    assert!(second.text().await.unwrap().ends_with("data: [DONE]\n\n"));

    let refused = chat(&b, "gpt", 999, false).await;
    assert_eq!(refused.status(), 429);
    let wait_ms = number(&refused, "retry-after-ms").unwrap();
    let needed_ms = (1_000 - left) as f64 / (2_980.0 / 60.0) * 1_000.0;
    assert!(
        (needed_ms - 300.0..=needed_ms + 50.0).contains(&(wait_ms as f64)),
        "retry-after-ms {wait_ms}, the bucket needs about {needed_ms:.0} ms"
    );
    assert_eq!(
        number(&refused, "retry-after"),
        Some(wait_ms.div_ceil(1_000))
    );
    assert!(number(&refused, "x-ratelimit-remaining-tokens").unwrap() >= left);
    assert_eq!(number(&refused, "x-ratelimit-remaining-requests"), Some(15));
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "429");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit"),
        "{message}"
    );
    assert!(
        message.contains("Please retry after 1 second."),
        "{message}"
    );
    assert_eq!((b.throttled(), b.tokens_charged()), (1, 2_000));

    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    let again = chat(&b, "gpt", 999, false).await;
    assert_eq!(
        again.status(),
        200,
        "after retry-after-ms the bucket holds enough"
    );
    assert_eq!(b.tokens_charged(), 3_000);
}

#[tokio::test]
async fn deployments_of_one_backend_count_apart() {
    let b = backend(Quota::tokens_per_minute(1_000)).await;
    assert_eq!(chat(&b, "a", 999, false).await.status(), 200);
    assert_eq!(chat(&b, "a", 999, false).await.status(), 429);
    let other = chat(&b, "b", 499, false).await;
    assert_eq!(other.status(), 200);
    assert_eq!(number(&other, "x-ratelimit-remaining-tokens"), Some(500));
    assert_eq!(number(&other, "x-ratelimit-remaining-requests"), Some(5));
    assert!(other.headers().get("x-ratelimit-limit-tokens").is_none());
}

#[tokio::test]
async fn max_tokens_is_charged_on_arrival_however_short_the_answer() {
    let b = backend(Quota::tokens_per_minute(100_000)).await;
    let r = chat(&b, "gpt", 40_000, false).await;
    let answer: Value = r.json().await.unwrap();
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() < 20);
    assert_eq!(b.tokens_charged(), 40_001);
    let r = chat(&b, "gpt", 40_000, false).await;
    let left = number(&r, "x-ratelimit-remaining-tokens").unwrap();
    assert!((19_998..21_000).contains(&left), "{left} tokens left");
}

#[tokio::test]
async fn a_provisioned_deployment_tells_its_utilization_and_throttles_in_milliseconds() {
    let b = backend(Quota {
        provisioned: true,
        limit_headers: true,
        ..quota(8_000, 8_000)
    })
    .await;
    let r = chat(&b, "ptu", 2_999, false).await;
    assert_eq!(r.status(), 200);
    let utilization = r.headers()["azure-openai-deployment-utilization"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(utilization.ends_with('%'), "{utilization}");
    let percent: f64 = utilization.trim_end_matches('%').parse().unwrap();
    assert!((37.0..=37.5).contains(&percent), "{utilization}");
    for absent in [
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-tokens",
    ] {
        assert!(r.headers().get(absent).is_none(), "{absent}");
    }
    let refused = chat(&b, "ptu", 9_999, false).await;
    assert_eq!(refused.status(), 429);
    assert!(number(&refused, "retry-after-ms").unwrap() > 1_000);
    assert!(refused.headers().get("retry-after").is_none());
    assert!(refused
        .headers()
        .get("x-ratelimit-remaining-tokens")
        .is_none());
    assert!(refused.headers()["azure-openai-deployment-utilization"]
        .to_str()
        .unwrap()
        .ends_with('%'));
}

#[tokio::test]
async fn faults_come_before_the_quota_and_are_not_counted() {
    let b = backend(Quota::tokens_per_minute(1_000)).await;
    b.push_fault(Fault::throttle(3));
    let r = chat(&b, "gpt", 1, false).await;
    assert_eq!(r.status(), 429);
    assert_eq!(number(&r, "retry-after"), Some(3));
    assert!(r.headers().get("x-ratelimit-remaining-tokens").is_none());
    assert_eq!((b.throttled(), b.tokens_charged()), (0, 0));
}

#[tokio::test]
async fn a_request_is_charged_on_arrival_and_answered_after_the_latency() {
    let latency = Duration::from_millis(400);
    let b = Backend::start(BackendOptions {
        latency,
        quota: Some(Quota::tokens_per_minute(100_000)),
        ..Default::default()
    })
    .await
    .expect("the simulator binds 127.0.0.1:0");
    for stream in [false, true] {
        let start = Instant::now();
        let before = b.tokens_charged();
        let charged = async {
            for _ in 0..1_000 {
                if b.tokens_charged() > before {
                    return start.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            panic!("never charged");
        };
        let (r, charged_after) = tokio::join!(chat(&b, "gpt", 9, stream), charged);
        assert!(charged_after < latency, "charged after {charged_after:?}");
        assert!(start.elapsed() >= latency, "answered before the latency");
        assert_eq!(r.status(), 200);
        assert_eq!(
            number(&r, "x-ratelimit-remaining-tokens").map(|t| t < 100_000),
            Some(true)
        );
    }
}
