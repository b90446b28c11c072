//! Fallbacks (`fallbacks`): a request its deployment cannot take — no backend could serve it, or
//! a backend's 400 `context_length_exceeded` or `content_filter` — goes to the next deployment,
//! renamed in its path and body, with its own tries; the answer names the deployment that gave
//! it (`x-aoai-proxy-fallback`), the access log and `aoai_proxy_fallbacks_total` record it; a
//! client's `deployments` and the fallback's `on` limit it.

use std::time::Duration;

use aoai_sim::{Backend, BackendOptions, Fault};
use serde_json::json;

use crate::common::*;

const MINI: &str = "/openai/deployments/gpt-4o-mini-eu/chat/completions";
const PHRASE: &str = "forbidden words";

/// A backend that serves a model with a small context window (64 tokens) and a content filter
/// (`PHRASE`), or, with `roomy`, neither.
async fn model(name: &str, roomy: bool) -> Backend {
    Backend::start(BackendOptions {
        name: name.into(),
        record: true,
        context_window: (!roomy).then_some(64),
        blocked_phrase: (!roomy).then(|| PHRASE.to_string()),
        ..Default::default()
    })
    .await
    .expect("backend")
}

/// gpt-4o on `small` (keyed), gpt-4o-mini on `large` (which knows it as gpt-4o-mini-eu), with
/// `extra` YAML (fallbacks, clients, retry).
fn yaml(small: &[&Backend], large: &[&Backend], extra: &str) -> String {
    let mut y = format!("auth: {{kind: none}}\n{extra}backends:\n");
    for (i, b) in small.iter().enumerate() {
        y.push_str(&format!(
            "  - {{url: \"{}\", name: s{i}, api_key: k, deployments: {{gpt-4o: gpt-4o}}}}\n",
            b.url()
        ));
    }
    for (i, b) in large.iter().enumerate() {
        y.push_str(&format!(
            "  - {{url: \"{}\", name: l{i}, api_key: k, deployments: {{gpt-4o-mini: gpt-4o-mini-eu}}}}\n",
            b.url()
        ));
    }
    y
}

const FALLBACK: &str = "fallbacks:\n  - {deployment: gpt-4o, to: [gpt-4o-mini]}\n";

/// POSTs `body` to `path` (with `key`): status, the fallback header, the body.
async fn post(
    proxy: &Proxy,
    path: &str,
    key: Option<&str>,
    body: serde_json::Value,
) -> (u16, Option<String>, String) {
    let mut r = client().post(proxy.url(path)).json(&body);
    if let Some(key) = key {
        r = r.header("api-key", key);
    }
    let r = r.send().await.expect("request");
    let fallback = r
        .headers()
        .get("x-aoai-proxy-fallback")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), fallback, r.text().await.unwrap())
}

fn messages(content: &str) -> serde_json::Value {
    json!([{"role": "user", "content": content}])
}

fn long() -> serde_json::Value {
    json!({"messages": messages(&"many words ".repeat(40))})
}

fn filtered() -> serde_json::Value {
    json!({"messages": messages(&format!("please say {}", PHRASE.to_uppercase()))})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cause_sends_the_request_on_to_the_fallback_renamed() {
    let (small, large) = (model("s0", false).await, model("l0", true).await);
    let proxy = Proxy::start(&yaml(&[&small], &[&large], FALLBACK), None);

    // A request the deployment takes: no fallback, no header.
    let (status, fallback, body) = post(&proxy, CHAT, None, chat_body()).await;
    assert_eq!((status, fallback), (200, None), "{body}");
    assert_eq!(large.requests(), 0);

    // Too long for gpt-4o's window: gpt-4o-mini answers, under its backend's own name.
    let (status, fallback, body) = post(&proxy, CHAT, None, long()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fallback.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(small.refused_prompts(), 1);
    let sent = large.recorded().pop().unwrap();
    assert!(sent.uri.starts_with(MINI), "{}", sent.uri);

    // A filtered prompt on the /openai/v1/ path, where the body's model names the deployment.
    let mut body = filtered();
    body["model"] = json!("gpt-4o");
    let (status, fallback, text) = post(&proxy, "/openai/v1/chat/completions", None, body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(fallback.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(small.refused_prompts(), 2);
    let sent = large.recorded().pop().unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini-eu");

    // Every backend of gpt-4o throttled: gpt-4o-mini, and then gpt-4o cooling sends the next
    // request there without a try.
    small.set_fault(Some(Fault::throttle(30)));
    for _ in 0..2 {
        let (status, fallback, body) = post(&proxy, CHAT, None, chat_body()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(fallback.as_deref(), Some("gpt-4o-mini"));
    }
    assert_eq!(
        small.requests(),
        4,
        "one 429, then cooling: the second went straight to the fallback"
    );

    let m = proxy
        .wait_for_metrics("aoai_proxy_fallbacks_total", |m| {
            m.contains("cause=\"unavailable\"} 2")
        })
        .await;
    for (cause, n) in [
        ("context_length_exceeded", 1.0),
        ("content_filter", 1.0),
        ("unavailable", 2.0),
    ] {
        let series = format!(
            "aoai_proxy_fallbacks_total{{from=\"gpt-4o\",to=\"gpt-4o-mini\",cause=\"{cause}\"}}"
        );
        assert_eq!(metric(&m, &series), n, "{series}\n{m}");
    }
    let log = proxy.wait_for_log("fallback=gpt-4o-mini").await;
    let line = log.lines().find(|l| l.contains("fallback=")).unwrap();
    assert!(
        line.contains("/openai/deployments/gpt-4o/chat/completions")
            && line.contains("deployment=gpt-4o "),
        "the access line names what the client asked for: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_deployment_gets_its_own_tries_and_the_last_answer_ends_it() {
    let small = [model("s0", true).await, model("s1", true).await];
    let large = [model("l0", true).await, model("l1", true).await];
    let unavailable = Fault::Status {
        status: 503,
        headers: vec![],
    };
    for b in small.iter().chain(&large) {
        b.set_fault(Some(unavailable.clone()));
    }
    let extra = format!("retry: {{max_tries: 2}}\n{FALLBACK}");
    let proxy = Proxy::start(
        &yaml(&[&small[0], &small[1]], &[&large[0], &large[1]], &extra),
        None,
    );
    let (status, fallback, body) = post(&proxy, CHAT, None, chat_body()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        fallback.as_deref(),
        Some("gpt-4o-mini"),
        "the last deployment's answer"
    );
    assert_eq!(
        counts(&[&small[0], &small[1]]),
        [1, 1],
        "two tries on gpt-4o"
    );
    assert_eq!(
        counts(&[&large[0], &large[1]]),
        [1, 1],
        "and two more on gpt-4o-mini"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_reach_through_a_fallback_what_it_may_not_use_and_on_limits_the_causes() {
    let (small, large) = (model("s0", false).await, model("l0", true).await);
    let extra = "clients:\n  - {name: team-a, key: key-a, deployments: [gpt-4o]}\n  - {name: team-b, key: key-b}\nfallbacks:\n  - {deployment: gpt-4o, to: [gpt-4o-mini], on: [context_length_exceeded]}\n";
    let proxy = Proxy::start(&yaml(&[&small], &[&large], extra), None);

    let (status, fallback, body) = post(&proxy, CHAT, Some("key-a"), long()).await;
    assert_eq!((status, fallback), (400, None), "{body}");
    assert_eq!(azure_error_code(&body), "context_length_exceeded");
    let (status, fallback, body) = post(&proxy, CHAT, Some("key-b"), filtered()).await;
    assert_eq!((status, fallback), (400, None), "{body}");
    assert_eq!(azure_error_code(&body), "content_filter");
    assert_eq!(large.requests(), 0, "no fallback for either");

    let (status, fallback, body) = post(&proxy, CHAT, Some("key-b"), long()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fallback.as_deref(), Some("gpt-4o-mini"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_falls_back_before_its_first_byte() {
    let (small, large) = (model("s0", false).await, model("l0", true).await);
    let proxy = Proxy::start(&yaml(&[&small], &[&large], FALLBACK), None);
    let mut body = filtered();
    body["stream"] = json!(true);
    let r = client()
        .post(proxy.url(CHAT))
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-aoai-proxy-fallback"], "gpt-4o-mini");
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    let text = r.text().await.unwrap();
    assert!(
        text.contains("data: ") && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    assert_eq!((small.refused_prompts(), large.requests()), (1, 1));
}
