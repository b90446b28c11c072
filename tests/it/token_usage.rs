//! `aoai_proxy_tokens_total`: the tokens each answer reports, by backend, deployment, client
//! and kind, read from JSON answers and from streams as they pass.

use crate::common::*;

/// The value of the `aoai_proxy_tokens_total` series with these labels (0 when absent).
fn tokens(metrics: &str, deployment: &str, client: &str, kind: &str) -> u64 {
    let series = format!(
        "aoai_proxy_tokens_total{{backend=\"b0\",deployment=\"{deployment}\",client=\"{client}\",kind=\"{kind}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.parse().expect("a count"))
}

/// Polls `/metrics` until the series has `expected` tokens (bounded); the metrics text.
async fn until_tokens(
    proxy: &Proxy,
    (deployment, client, kind): (&str, &str, &str),
    expected: u64,
) -> String {
    proxy
        .wait_for_metrics(&format!("{expected} {kind} tokens"), |m| {
            tokens(m, deployment, client, kind) == expected
        })
        .await
}

/// The `usage` the last `data:` event with one carried.
fn streamed_usage(text: &str) -> serde_json::Value {
    text.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .map(|v| v["usage"].clone())
        .expect("no usage in the stream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_counted_as_the_backend_reported_them() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(
        &format!(
            "{}clients: [{{name: team-a, key: key-a}}]\n",
            mi_yaml(&[&b])
        ),
        Some(&id),
    );
    let (_, before) = proxy.admin_get("/metrics");
    assert_eq!(tokens(&before, "gpt-4o", "team-a", "prompt"), 0);

    // A JSON answer.
    let r = client()
        .post(proxy.url(CHAT))
        .header("api-key", "key-a")
        .json(&serde_json::json!({"messages": [{"role": "user", "content": "one two three four"}]}))
        .send()
        .await
        .unwrap();
    let answer: serde_json::Value = r.json().await.unwrap();
    let (prompt, completion) = (
        answer["usage"]["prompt_tokens"].as_u64().unwrap(),
        answer["usage"]["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 0 && completion > 0);
    let m = until_tokens(&proxy, ("gpt-4o", "team-a", "prompt"), prompt).await;
    assert_eq!(tokens(&m, "gpt-4o", "team-a", "completion"), completion);

    // A stream with the usage chunk adds exactly what that chunk said.
    let r = client()
        .post(proxy.url(CHAT))
        .header("api-key", "key-a")
        .json(
            &serde_json::json!({"stream": true, "stream_options": {"include_usage": true},
                                  "messages": [{"role": "user", "content": "a b"}]}),
        )
        .send()
        .await
        .unwrap();
    let streamed = streamed_usage(&r.text().await.unwrap());
    let m = until_tokens(
        &proxy,
        ("gpt-4o", "team-a", "prompt"),
        prompt + streamed["prompt_tokens"].as_u64().unwrap(),
    )
    .await;
    assert_eq!(
        tokens(&m, "gpt-4o", "team-a", "completion"),
        completion + streamed["completion_tokens"].as_u64().unwrap()
    );

    // A stream without it reports nothing, and counts nothing.
    let r = client()
        .post(proxy.url(CHAT))
        .header("api-key", "key-a")
        .json(&serde_json::json!({"stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    let (_, after) = proxy.admin_get("/metrics");
    assert_eq!(
        tokens(&after, "gpt-4o", "team-a", "prompt"),
        tokens(&m, "gpt-4o", "team-a", "prompt")
    );
    // The access log has the tokens of each request.
    proxy
        .wait_for_log(&format!("client=team-a tokens={prompt}/{completion}"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_counted_per_deployment_and_without_clients() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    let r = client()
        .post(proxy.url("/openai/deployments/embed/embeddings?api-version=2024-10-21"))
        .json(&serde_json::json!({"input": ["x", "y", "z"]}))
        .send()
        .await
        .unwrap();
    let answer: serde_json::Value = r.json().await.unwrap();
    let prompt = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    let m = until_tokens(&proxy, ("embed", "-", "prompt"), prompt).await;
    assert_eq!(tokens(&m, "embed", "-", "completion"), 0);
    assert_eq!(tokens(&m, "gpt-4o", "-", "prompt"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_asked_for_their_usage_when_configured_and_the_client_sees_none() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(
        &format!("usage: {{include_in_streams: true}}\n{}", mi_yaml(&[&b])),
        Some(&id),
    );
    let request = |extra: serde_json::Value| {
        let mut body =
            serde_json::json!({"stream": true, "messages": [{"role": "user", "content": "a b c"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        client().post(proxy.url(CHAT)).json(&body).send()
    };

    // A client that asks for usage gets it, as it came.
    let asked = request(serde_json::json!({"stream_options": {"include_usage": true}}))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let usage = streamed_usage(&asked);
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    until_tokens(&proxy, ("gpt-4o", "-", "prompt"), prompt).await;

    // One that does not: the backend is asked, the tokens are counted, the client sees no
    // usage event, and the rest of the stream is what it would have been.
    let plain = request(serde_json::json!({}))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let m = until_tokens(&proxy, ("gpt-4o", "-", "prompt"), 2 * prompt).await;
    assert_eq!(tokens(&m, "gpt-4o", "-", "completion"), 2 * completion);
    assert!(
        !plain.contains("\"usage\":{"),
        "the client got a usage event:\n{plain}"
    );
    assert!(plain.ends_with("data: [DONE]\n\n"), "{plain}");
    let without_usage: String = asked
        .split_inclusive("\n\n")
        .filter(|event| !event.contains("\"choices\":[]"))
        .collect();
    let strip_ids = |s: &str| {
        s.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .map(|v| v["choices"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip_ids(&plain),
        strip_ids(&without_usage),
        "the same content"
    );
    let recorded = b.recorded();
    let sent: serde_json::Value = serde_json::from_slice(&recorded.last().unwrap().body).unwrap();
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "the backend was asked"
    );

    // Not streamed: sent as it came.
    let r = client()
        .post(proxy.url(CHAT))
        .json(&chat_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent: serde_json::Value =
        serde_json::from_slice(&b.recorded().last().unwrap().body).unwrap();
    assert!(sent.get("stream_options").is_none(), "{sent}");
}
