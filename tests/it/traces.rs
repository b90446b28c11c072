//! Traces (`telemetry`): a server span a request and a client span a try, exported as OTLP over
//! HTTP to a receiver standing in for a collector; the W3C trace context continued from the
//! client and sent to each backend; sampling; a collector that is down.

use aoai_sim::Fault;
use serde_json::json;

use crate::common::otlp::{Received, Receiver};
use crate::common::*;

/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

fn traced_yaml(backends: &[&aoai_sim::Backend], endpoint: &str, extra: &str) -> String {
    format!(
        "telemetry: {{otlp: {{endpoint: \"{endpoint}\"{extra}}}}}\n{}",
        mi_yaml(backends)
    )
}

/// The request span and the try spans of the trace `trace_id`, tries in order.
fn tree(spans: &[Received], trace_id: &str) -> (Received, Vec<Received>) {
    let mine: Vec<_> = spans.iter().filter(|s| s.trace_id() == trace_id).collect();
    let server = mine
        .iter()
        .find(|s| s.span.kind == SERVER)
        .map(|s| (*s).clone())
        .unwrap_or_else(|| panic!("no server span in {mine:#?}"));
    let mut tries: Vec<Received> = mine
        .iter()
        .filter(|s| s.span.kind == CLIENT)
        .map(|s| (*s).clone())
        .collect();
    tries.sort_by_key(|s| s.span.start_time_unix_nano);
    for t in &tries {
        assert_eq!(
            t.parent_id(),
            server.span_id(),
            "a try's parent is the request"
        );
    }
    (server, tries)
}

/// The `traceparent` of each request backend `b` received.
fn traceparents(b: &aoai_sim::Backend) -> Vec<String> {
    b.recorded()
        .iter()
        .filter_map(|r| Some(r.headers.get("traceparent")?.to_str().ok()?.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_a_server_span_with_a_client_span_a_try_and_its_backend_gets_that_try() {
    let collector = Receiver::start().await;
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&traced_yaml(&[&b], &collector.url(), ""), Some(&id));
    let (status, _, body) = chat(&proxy).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let spans = collector.wait_for(2).await;
    let (server, tries) = tree(&spans, &spans[0].trace_id());
    assert_eq!(server.span.name, "chat gpt-4o");
    assert_eq!(server.service, "aoai-proxy");
    for (key, want) in [
        ("gen_ai.operation.name", "chat".to_string()),
        ("gen_ai.provider.name", "azure.ai.openai".into()),
        ("gen_ai.request.model", "gpt-4o".into()),
        (
            "gen_ai.response.model",
            answer["model"].as_str().unwrap().to_string(),
        ),
        (
            "gen_ai.usage.input_tokens",
            answer["usage"]["prompt_tokens"].to_string(),
        ),
        (
            "gen_ai.usage.output_tokens",
            answer["usage"]["completion_tokens"].to_string(),
        ),
        ("http.response.status_code", "200".into()),
        ("http.request.method", "POST".into()),
    ] {
        assert_eq!(server.attr(key).as_deref(), Some(want.as_str()), "{key}");
    }
    assert!(server.span.events.iter().any(|e| e.name == "first_byte"));
    assert_eq!(tries.len(), 1);
    let try_span = &tries[0];
    assert_eq!(try_span.attr("aoai_proxy.backend").as_deref(), Some("b0"));
    assert_eq!(
        try_span.attr("server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        try_span.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    // The backend can join its logs to this try.
    let want = format!("00-{}-{}-01", server.trace_id(), try_span.span_id());
    assert_eq!(traceparents(&b), [want]);
    // And the access line to the trace.
    proxy
        .wait_for_log(&format!("trace={}", server.trace_id()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_has_a_span_a_try_on_distinct_backends_with_the_cause() {
    let collector = Receiver::start().await;
    let id = identity().await;
    let b = backends(2).await;
    b[0].push_fault(Fault::throttle(30));
    let proxy = Proxy::start(
        &traced_yaml(&[&b[0], &b[1]], &collector.url(), ""),
        Some(&id),
    );
    let (status, _, body) = chat(&proxy).await;
    assert_eq!(status, 200, "{body}");
    let spans = collector.wait_for(3).await;
    let (server, tries) = tree(&spans, &spans[0].trace_id());
    assert_eq!(server.attr("aoai_proxy.tries").as_deref(), Some("2"));
    let backends: Vec<_> = tries.iter().map(|t| t.attr("aoai_proxy.backend")).collect();
    assert_eq!(backends, [Some("b0".into()), Some("b1".into())]);
    assert_eq!(
        tries[0].attr("http.response.status_code").as_deref(),
        Some("429")
    );
    assert_eq!(
        tries[0].attr("aoai_proxy.retry_cause").as_deref(),
        Some("429")
    );
    assert_eq!(
        tries[1].attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(tries[1].attr("aoai_proxy.retry_cause"), None);
    assert!(tries[0].span.end_time_unix_nano <= tries[1].span.start_time_unix_nano);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_usage_lands_on_its_span_and_a_clients_trace_is_continued() {
    let collector = Receiver::start().await;
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&traced_yaml(&[&b], &collector.url(), ""), Some(&id));
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let body = json!({"stream": true, "stream_options": {"include_usage": true},
                      "max_tokens": 50, "messages": [{"role": "user", "content": "Hello"}]});
    let r = client()
        .post(proxy.url(CHAT))
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("\"usage\""), "{text}");
    let spans = collector.wait_for(2).await;
    let (server, tries) = tree(&spans, trace);
    assert_eq!(
        server.parent_id(),
        parent,
        "the client's span is the parent"
    );
    assert_eq!(
        server.attr("gen_ai.request.stream").as_deref(),
        Some("true")
    );
    assert_eq!(
        server.attr("gen_ai.request.max_tokens").as_deref(),
        Some("50")
    );
    let output: u64 = server
        .attr("gen_ai.usage.output_tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(output > 0, "the stream's usage is on the span");
    let sent = traceparents(&b);
    assert_eq!(sent, [format!("00-{trace}-{}-01", tries[0].span_id())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ratio_of_zero_only_requests_whose_parent_is_sampled_are_exported() {
    let collector = Receiver::start().await;
    let id = identity().await;
    let b = backend("b0").await;
    let yaml = traced_yaml(&[&b], &collector.url(), ", sample_ratio: 0");
    let proxy = Proxy::start(&yaml, Some(&id));
    for _ in 0..3 {
        assert_eq!(chat(&proxy).await.0, 200);
    }
    // Not sampled: the backends still get the context, marked so.
    let sent = traceparents(&b);
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|t| t.ends_with("-00")), "{sent:?}");
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let r = client()
        .post(proxy.url(CHAT))
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .json(&chat_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Spans leave in order: once the sampled request's are in, any of the three's would be.
    let spans = collector.wait_for(2).await;
    assert!(
        spans.iter().all(|s| s.trace_id() == trace),
        "only the sampled request: {spans:#?}"
    );
    assert_eq!(spans.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_no_request_and_its_spans_are_counted_dropped() {
    let down = DeadPort::new();
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&traced_yaml(&[&b], &down.url(), ""), Some(&id));
    for _ in 0..5 {
        let (status, _, body) = chat(&proxy).await;
        assert_eq!(status, 200, "{body}");
    }
    let name = "aoai_proxy_spans_dropped_total";
    let m = proxy
        .wait_for_metrics(name, |m| metric(m, name) >= 10.0)
        .await;
    assert_eq!(metric(&m, name), 10.0, "two spans a request, none sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_the_client_left_during_keeps_its_span() {
    let collector = Receiver::start().await;
    let id = identity().await;
    let b = backend("b0").await;
    b.push_fault(Fault::Delay(std::time::Duration::from_secs(3)));
    let proxy = Proxy::start(&traced_yaml(&[&b], &collector.url(), ""), Some(&id));
    let left = client()
        .post(proxy.url(CHAT))
        .json(&chat_body())
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(left.is_err(), "the client gave up first");
    let spans = collector.wait_for(2).await;
    let (server, tries) = tree(&spans, &spans[0].trace_id());
    assert_eq!(tries.len(), 1);
    assert_eq!(
        tries[0].attr("error.type").as_deref(),
        Some("client_closed")
    );
    // The span its backend was told of is there.
    let want = format!("00-{}-{}-01", server.trace_id(), tries[0].span_id());
    assert_eq!(traceparents(&b), [want]);
}

/// Spans held for their batch (here for 10 s) still leave when the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_spans_leave_before_the_process_exits() {
    let collector = Receiver::start().await;
    let id = identity().await;
    let b = backend("b0").await;
    let yaml = traced_yaml(&[&b], &collector.url(), ", batch_delay: 10s");
    let mut proxy = Proxy::start(&yaml, Some(&id));
    assert_eq!(chat(&proxy).await.0, 200);
    assert!(collector.spans().is_empty(), "held for their batch");
    proxy.signal("TERM");
    let code = tokio::task::spawn_blocking(move || {
        let code = proxy.wait_exit(std::time::Duration::from_secs(20));
        (code, proxy)
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0));
    assert_eq!(collector.spans().len(), 2, "sent at exit");
}

/// The process's resource (`service_name`, `resource`) is on its spans, the configured headers
/// reach the collector (and no log), and the request span names the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resource_headers_and_client_are_the_configured_ones() {
    let collector = Receiver::start().await;
    let id = identity().await;
    let b = backend("b0").await;
    let yaml = format!(
        "telemetry:\n  otlp: {{endpoint: \"{}\", headers: {{x-collector-key: s3cret-collector}}}}\n  service_name: gateway-eu\n  resource: {{deployment.environment: test}}\nclients:\n  - {{name: team-a, key: key-a}}\n{}",
        collector.url(),
        mi_yaml(&[&b])
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    let r = client()
        .post(proxy.url(CHAT))
        .header("api-key", "key-a")
        .json(&chat_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spans = collector.wait_for(2).await;
    let (server, _) = tree(&spans, &spans[0].trace_id());
    assert_eq!(server.service, "gateway-eu");
    assert!(server
        .resource
        .contains(&("deployment.environment".into(), "test".into())));
    assert_eq!(server.attr("aoai_proxy.client").as_deref(), Some("team-a"));
    assert!(collector
        .header_lines()
        .contains(&"x-collector-key: s3cret-collector".to_string()));
    assert!(
        !proxy.log().contains("s3cret-collector"),
        "a header value is a secret"
    );
}
