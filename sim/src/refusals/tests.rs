//! The refused prompts: the estimate and the phrase's search, then a backend's answers over a
//! real socket.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use crate::{Backend, BackendOptions, Quota};

#[test]
fn the_estimate_is_a_token_for_4_bytes_rounded_up_plus_the_most_it_may_write() {
    assert_eq!(estimate(b"", &Value::Null), 0);
    assert_eq!(estimate(b"1234", &Value::Null), 1);
    assert_eq!(estimate(b"12345", &Value::Null), 2);
    let body = br#"{"max_tokens":50}"#;
    assert_eq!(estimate(body, &json!({"max_tokens": 50})), 5 + 50);
    let request = json!({"max_completion_tokens": 7});
    assert_eq!(estimate(&[b' '; 40], &request), 10 + 7);
    let request = json!({"max_output_tokens": 9});
    assert_eq!(estimate(&[b' '; 40], &request), 10 + 9);
    let huge = json!({"max_tokens": u64::MAX});
    assert_eq!(estimate(b"{}", &huge), u64::MAX);
}

#[test]
fn the_phrase_is_found_whatever_its_case_and_once_unescaped() {
    let phrase = "forbidden café";
    let plain = r#"{"prompt":"A FORBIDDEN Café here"}"#;
    let request: Value = serde_json::from_str(plain).unwrap();
    assert!(contains(plain.as_bytes(), &request, phrase));
    let escaped = r#"{"prompt":"a Forbidden caf\u00e9"}"#;
    let request: Value = serde_json::from_str(escaped).unwrap();
    assert!(contains(escaped.as_bytes(), &request, phrase));
    let other = r#"{"prompt":"a forbidden cafe"}"#;
    let request: Value = serde_json::from_str(other).unwrap();
    assert!(!contains(other.as_bytes(), &request, phrase));
}

// ---- Over a real socket.

async fn backend(options: BackendOptions) -> Backend {
    Backend::start(BackendOptions {
        name: "refusing".into(),
        ..options
    })
    .await
    .expect("the simulator binds 127.0.0.1:0")
}

/// Posts `body` (as these very bytes) to `path` of `b`.
async fn post(b: &Backend, path: &str, body: &[u8]) -> reqwest::Response {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a client")
        .post(format!("{}{path}?api-version=2024-10-21", b.url()))
        .header("api-key", "k")
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .expect("answered")
}

const CHAT: &str = "/openai/deployments/gpt-4o/chat/completions";

/// A chat completion's body saying `content`.
fn chat(content: &str, max_tokens: u64, stream: bool) -> Vec<u8> {
    let body = json!({"messages": [{"role": "user", "content": content}],
                      "max_tokens": max_tokens, "stream": stream});
    serde_json::to_vec(&body).unwrap()
}

/// The status, content type, `x-sim-backend` and JSON body of `r`.
async fn answer(r: reqwest::Response) -> (u16, String, String, Value) {
    let header = |name: &str| r.headers()[name].to_str().unwrap().to_string();
    let (content_type, backend) = (header("content-type"), header("x-sim-backend"));
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, content_type, backend, body)
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_window_is_refused_with_azure_s_400() {
    let b = backend(BackendOptions {
        context_window: Some(100),
        ..Default::default()
    })
    .await;
    let short = chat("hi", 50, false);
    let (status, _, _, body) = answer(post(&b, CHAT, &short).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");

    for stream in [false, true] {
        let long = chat(&"word ".repeat(60), 50, stream);
        let tokens = long.len().div_ceil(4) as u64 + 50;
        assert!(tokens > 100, "{tokens}");
        let (status, content_type, backend, body) = answer(post(&b, CHAT, &long).await).await;
        assert_eq!(
            (status, content_type.as_str(), backend.as_str()),
            (400, "application/json", "refusing"),
            "a stream is refused alike"
        );
        let message = format!(
            "This model's maximum context length is 100 tokens. However, your messages \
             resulted in {tokens} tokens. Please reduce the length of the messages."
        );
        let expected = json!({"error": {"message": message, "type": "invalid_request_error",
                                         "param": "messages", "code": "context_length_exceeded"}});
        assert_eq!(body, expected);
    }
    // The prompt fits, the prompt and the most it may write do not.
    let (status, _, _, body) = answer(post(&b, CHAT, &chat("hi", 90, false)).await).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("context_length_exceeded"))
    );
    assert_eq!(b.refused_prompts(), 3);
}

#[tokio::test]
async fn a_prompt_holding_the_blocked_phrase_is_filtered_in_any_case() {
    let b = backend(BackendOptions {
        blocked_phrase: Some("Open The Pod Bay Doors".into()),
        ..Default::default()
    })
    .await;
    let (status, _, _, _) = answer(post(&b, CHAT, &chat("open the doors", 5, false)).await).await;
    assert_eq!(status, 200);
    let blocked = chat("Please OPEN the pod bay DOORS, HAL.", 5, true);
    let (status, content_type, backend, body) = answer(post(&b, CHAT, &blocked).await).await;
    assert_eq!(
        (status, content_type.as_str(), backend.as_str()),
        (400, "application/json", "refusing")
    );
    assert_eq!(body["error"]["code"], "content_filter");
    assert_eq!(body["error"]["param"], "prompt");
    assert_eq!(body["error"]["type"], Value::Null);
    assert_eq!(body["error"]["status"], 400);
    let inner = &body["error"]["innererror"];
    assert_eq!(inner["code"], "ResponsibleAIPolicyViolation");
    assert_eq!(
        inner["content_filter_result"]["violence"],
        json!({"filtered": true, "severity": "medium"})
    );
    assert_eq!(
        inner["content_filter_result"]["jailbreak"],
        json!({"filtered": false, "detected": false})
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("The response was filtered due to the prompt triggering Azure OpenAI's content management policy.")
            && message.ends_with("https://go.microsoft.com/fwlink/?linkid=2198766"),
        "{message}"
    );

    // Completions and the Responses API alike; embeddings are not filtered.
    let completion = br#"{"prompt": "open the pod bay doors"}"#;
    let r = post(&b, "/openai/deployments/gpt-4o/completions", completion).await;
    assert_eq!(r.status(), 400);
    let response = br#"{"model": "gpt-4o", "input": "Open the pod bay doors"}"#;
    let (status, _, _, body) = answer(post(&b, "/openai/v1/responses", response).await).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("content_filter"))
    );
    let embedding = br#"{"input": "open the pod bay doors"}"#;
    let r = post(&b, "/openai/deployments/emb/embeddings", embedding).await;
    assert_eq!(r.status(), 200);
    assert_eq!(b.refused_prompts(), 3);
}

#[tokio::test]
async fn a_refused_prompt_charges_no_quota_and_waits_no_latency() {
    let latency = Duration::from_millis(1_500);
    let b = backend(BackendOptions {
        context_window: Some(50),
        blocked_phrase: Some("blocked".into()),
        quota: Some(Quota::tokens_per_minute(10_000)),
        latency,
        ..Default::default()
    })
    .await;
    let start = Instant::now();
    let long = post(&b, CHAT, &chat(&"word ".repeat(100), 10, false)).await;
    assert_eq!(long.status(), 400);
    assert!(long.headers().get("x-ratelimit-remaining-tokens").is_none());
    let blocked = post(&b, CHAT, &chat("BLOCKED", 10, false)).await;
    assert_eq!(blocked.status(), 400);
    assert!(
        start.elapsed() < latency,
        "refused after {:?}",
        start.elapsed()
    );
    assert_eq!(
        (b.refused_prompts(), b.tokens_charged(), b.throttled()),
        (2, 0, 0)
    );

    let taken = post(&b, CHAT, &chat("hi", 10, false)).await;
    assert_eq!(taken.status(), 200);
    assert!(start.elapsed() >= latency);
    // "hi" as a word of the messages' JSON, and its `max_tokens`.
    assert_eq!(b.tokens_charged(), 1 + 10);
    assert_eq!(b.refused_prompts(), 2);
}
