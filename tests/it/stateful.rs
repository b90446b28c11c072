//! Stateful objects stay where they were made: files and batches, Responses chained with
//! `previous_response_id`, assistants and threads; objects made elsewhere (before a restart,
//! by another replica) are found by asking each backend, without spending `retry.max_tries`;
//! lists merge every backend's objects.

use serde_json::{json, Value};

use aoai_sim::Backend;

use crate::common::*;

const V: &str = "?api-version=2025-03-01-preview";

/// `auth: none` with three keyed backends named b0..b2, and `extra` YAML.
fn three(b: &[Backend], extra: &str) -> String {
    let mut y = format!("auth: {{kind: none}}\n{extra}backends:\n");
    for (i, b) in b.iter().enumerate() {
        y.push_str(&format!(
            "  - {{url: \"{}\", name: b{i}, api_key: k}}\n",
            b.url()
        ));
    }
    y
}

/// A multipart upload of `content` as a batch input file.
fn upload_body(content: &str) -> (String, String) {
    let boundary = "aoaiproxytestboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n{content}\r\n--{boundary}--\r\n"
    );
    (format!("multipart/form-data; boundary={boundary}"), body)
}

const BATCH_LINE: &str = r#"{"custom_id":"r1","method":"POST","url":"/chat/completions","body":{"model":"gpt-4o-batch","messages":[{"role":"user","content":"Hi"}]}}"#;

async fn upload(base: &str) -> String {
    let (content_type, body) = upload_body(BATCH_LINE);
    let r = client()
        .post(format!("{base}/openai/files{V}"))
        .header("content-type", content_type)
        .header("api-key", "k")
        .body(body)
        .send()
        .await
        .expect("upload");
    let status = r.status();
    let v: Value = r.json().await.expect("json");
    assert_eq!(status, 200, "{v}");
    v["id"].as_str().expect("file id").to_string()
}

async fn send(method: &str, url: String, body: Option<Value>) -> (u16, Value) {
    let mut r = client()
        .request(method.parse().unwrap(), url)
        .header("api-key", "k");
    if let Some(body) = body {
        r = r.json(&body);
    }
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The ids of a list's `data`, in order.
fn listed(list: &Value) -> Vec<&str> {
    let data = list["data"].as_array().expect("a list");
    data.iter().map(|f| f["id"].as_str().unwrap()).collect()
}

/// Which of `b` holds `id` (exactly one must).
fn holder(b: &[Backend], id: &str) -> usize {
    let holders: Vec<usize> = (0..b.len()).filter(|&i| b[i].holds(id)).collect();
    assert_eq!(holders.len(), 1, "{id} is held by {holders:?}");
    holders[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_on_the_backend_that_holds_its_file() {
    let b = backends(3).await;
    let proxy = Proxy::start(&three(&b, ""), None);
    let base = proxy.url("");
    for _ in 0..3 {
        let file = upload(&base).await;
        let at = holder(&b, &file);
        let before = counts(&[&b[0], &b[1], &b[2]]);
        let (status, batch) = send(
            "POST",
            format!("{base}/openai/batches{V}"),
            Some(json!({"input_file_id": file, "endpoint": "/chat/completions", "completion_window": "24h"})),
        )
        .await;
        assert_eq!(status, 200, "{batch}");
        let batch_id = batch["id"].as_str().unwrap();
        assert_eq!(
            holder(&b, batch_id),
            at,
            "the batch is made where its file is"
        );
        // Its status and its output file are read from there too.
        let (status, got) = send("GET", format!("{base}/openai/batches/{batch_id}{V}"), None).await;
        assert_eq!((status, got["status"].as_str()), (200, Some("completed")));
        let output = batch["output_file_id"].as_str().unwrap();
        let (status, content) = send(
            "GET",
            format!("{base}/openai/files/{output}/content{V}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{content}");
        assert!(content.to_string().contains("r1"), "{content}");
        let after = counts(&[&b[0], &b[1], &b[2]]);
        for i in 0..3 {
            let expected = if i == at { 3 } else { 0 };
            assert_eq!(
                after[i] - before[i],
                expected,
                "backend b{i}: {before:?} -> {after:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_made_elsewhere_is_found_without_spending_tries() {
    // The file is made on b2 directly (as before a restart, or through another replica);
    // with one try allowed, the proxy still finds it by asking b0, b1 and then b2.
    let b = backends(3).await;
    let proxy = Proxy::start(&three(&b, "retry: {max_tries: 1}\n"), None);
    let file = upload(&b[2].url()).await;
    let (status, got) = send("GET", proxy.url(&format!("/openai/files/{file}{V}")), None).await;
    assert_eq!(status, 200, "{got} {}", proxy.log());
    assert_eq!(got["id"], file.as_str());
    assert_eq!(counts(&[&b[0], &b[1], &b[2]]), [1, 1, 2], "each asked once");
    // Now it is known: straight to b2.
    let (status, _) = send("GET", proxy.url(&format!("/openai/files/{file}{V}")), None).await;
    assert_eq!(status, 200);
    assert_eq!(counts(&[&b[0], &b[1], &b[2]]), [1, 1, 3]);
    // An object no backend has: the client gets the 404 once every backend said so.
    let (status, body) = send(
        "GET",
        proxy.url(&format!("/openai/files/file-none{V}")),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(counts(&[&b[0], &b[1], &b[2]]), [2, 2, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_found_again_after_a_restart_of_the_proxy() {
    let b = backends(3).await;
    let yaml = three(&b, "");
    let mut first = Proxy::start(&yaml, None);
    let file = upload(&first.url("")).await;
    let (_, resp) = send(
        "POST",
        first.url(&format!("/openai/responses{V}")),
        Some(json!({"model": "gpt-4o", "input": "Hello"})),
    )
    .await;
    let resp_id = resp["id"].as_str().expect("response id").to_string();
    first.signal("TERM");
    assert_eq!(first.wait_exit(std::time::Duration::from_secs(20)), Some(0));
    drop(first);

    let second = Proxy::start(&yaml, None);
    let base = second.url("");
    let (status, batch) = send(
        "POST",
        format!("{base}/openai/batches{V}"),
        Some(json!({"input_file_id": file, "endpoint": "/chat/completions", "completion_window": "24h"})),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(holder(&b, batch["id"].as_str().unwrap()), holder(&b, &file));
    let (status, next) = send(
        "POST",
        format!("{base}/openai/v1/responses"),
        Some(json!({"model": "gpt-4o", "input": "And then?", "previous_response_id": resp_id})),
    )
    .await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(
        holder(&b, next["id"].as_str().unwrap()),
        holder(&b, &resp_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_chain_on_one_backend_streamed_or_not() {
    let b = backends(3).await;
    let proxy = Proxy::start(&three(&b, ""), None);
    // A streamed response: its id comes in the `response.created` event.
    let r = client()
        .post(proxy.url(&format!("/openai/deployments/gpt-4o/responses{V}")))
        .header("api-key", "k")
        .json(&json!({"input": "Hello", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = r.text().await.unwrap();
    let created = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|e| e["type"] == "response.created")
        .expect("a response.created event");
    assert!(events.contains("response.completed"), "{events}");
    let mut previous = created["response"]["id"].as_str().unwrap().to_string();
    let at = holder(&b, &previous);
    let before = counts(&[&b[0], &b[1], &b[2]]);
    for _ in 0..4 {
        let (status, next) = send(
            "POST",
            proxy.url("/openai/v1/responses"),
            Some(json!({"model": "gpt-4o", "input": "More", "previous_response_id": previous})),
        )
        .await;
        assert_eq!(status, 200, "{next}");
        previous = next["id"].as_str().unwrap().to_string();
        assert_eq!(holder(&b, &previous), at);
    }
    let after = counts(&[&b[0], &b[1], &b[2]]);
    assert_eq!(
        after[at] - before[at],
        4,
        "no search: the chain's place was learned"
    );
    // An unknown previous response: every backend is asked, then the client gets the 400.
    let (status, body) = send(
        "POST",
        proxy.url("/openai/v1/responses"),
        Some(json!({"model": "gpt-4o", "input": "?", "previous_response_id": "resp_unknown"})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "previous_response_not_found");
    let last = counts(&[&b[0], &b[1], &b[2]]);
    assert_eq!(
        (0..3).map(|i| last[i] - after[i]).collect::<Vec<_>>(),
        [1, 1, 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_holder_answers_429_rather_than_a_false_404() {
    let b = backends(3).await;
    let proxy = Proxy::start(&three(&b, ""), None);
    let file = upload(&b[1].url()).await;
    // Unknown location, and the holder is throttled: the others say 404, the client gets 429.
    b[1].push_fault(aoai_sim::Fault::throttle(7));
    let (status, body) = send("GET", proxy.url(&format!("/openai/files/{file}{V}")), None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(counts(&[&b[0], &b[1], &b[2]]), [1, 2, 1]);
    // b1 is now cooling, yet it is still the one asked for its own file.
    let r = client()
        .get(proxy.url(&format!("/openai/files/{file}{V}")))
        .header("api-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sim-backend"], "b1");
    // Known now: a throttled holder answers for itself, and no other backend is asked.
    b[1].push_fault(aoai_sim::Fault::throttle(7));
    let before = counts(&[&b[0], &b[1], &b[2]]);
    let r = client()
        .get(proxy.url(&format!("/openai/files/{file}{V}")))
        .header("api-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let after = counts(&[&b[0], &b[1], &b[2]]);
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ],
        [0, 1, 0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assistants_threads_and_runs_stay_together() {
    let b = backends(3).await;
    let proxy = Proxy::start(&three(&b, ""), None);
    let url = |p: &str| proxy.url(&format!("/openai/{p}{V}"));
    let (status, asst) = send(
        "POST",
        url("assistants"),
        Some(json!({"model": "gpt-4o", "name": "helper"})),
    )
    .await;
    assert_eq!(status, 200, "{asst}");
    let asst = asst["id"].as_str().unwrap().to_string();
    let at = holder(&b, &asst);
    // A thread made with its first run goes where the assistant is.
    let (status, run) = send(
        "POST",
        url("threads/runs"),
        Some(json!({"assistant_id": asst, "thread": {"messages": [{"role": "user", "content": "Hi"}]}})),
    )
    .await;
    assert_eq!(status, 200, "{run}");
    let thread = run["thread_id"].as_str().unwrap().to_string();
    assert_eq!(holder(&b, &thread), at);
    for _ in 0..3 {
        let (status, msg) = send(
            "POST",
            url(&format!("threads/{thread}/messages")),
            Some(json!({"role": "user", "content": "Again"})),
        )
        .await;
        assert_eq!(status, 200, "{msg}");
        let (status, run) = send(
            "POST",
            url(&format!("threads/{thread}/runs")),
            Some(json!({"assistant_id": asst})),
        )
        .await;
        assert_eq!(status, 200, "{run}");
        assert_eq!(run["status"], "completed");
    }
    let (status, messages) = send("GET", url(&format!("threads/{thread}/messages")), None).await;
    assert_eq!(status, 200);
    assert_eq!(messages["data"].as_array().unwrap().len(), 8, "{messages}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_merge_every_backends_objects_newest_first() {
    let b = backends(3).await;
    let proxy = Proxy::start(&three(&b, ""), None);
    let mut made = Vec::new();
    for round in 0..2 {
        for backend in &b {
            made.push(upload(&backend.url()).await);
            let _ = round;
        }
    }
    let (status, list) = send("GET", proxy.url(&format!("/openai/files{V}")), None).await;
    assert_eq!(status, 200, "{list}");
    let ids = listed(&list);
    let mut expected = made.clone();
    expected.sort();
    let mut got: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, expected, "every backend's files, once each");
    let times: Vec<i64> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["created_at"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    assert_eq!(list["has_more"], false);
    let (status, page) = send("GET", proxy.url(&format!("/openai/files{V}&limit=4")), None).await;
    assert_eq!(status, 200);
    assert_eq!(page["data"].as_array().unwrap().len(), 4);
    assert_eq!(page["has_more"], true);
    // Every listed file is known where it lives: no search.
    let before = counts(&[&b[0], &b[1], &b[2]]);
    for id in &made {
        let (status, _) = send("GET", proxy.url(&format!("/openai/files/{id}{V}")), None).await;
        assert_eq!(status, 200);
    }
    let after = counts(&[&b[0], &b[1], &b[2]]);
    assert_eq!((0..3).map(|i| after[i] - before[i]).sum::<u64>(), 6);
}

/// A backend that refuses the proxy's token (401) while a search or a list asks it gets one
/// fresh token and is asked again, as a forwarded request's would be; every try of a list is
/// timed to its first byte like any other. (A proxy each: a second forced refresh within
/// seconds of the first waits, by design.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_and_lists_bring_a_fresh_token_after_a_401() {
    use aoai_sim::Fault;
    let refused = || Fault::Status {
        status: 401,
        headers: vec![],
    };
    // The token each backend was sent with a GET of `path`, in order.
    let tokens = |backend: &Backend, path: &str| -> Vec<String> {
        let recorded = backend.recorded();
        let on_path = recorded
            .iter()
            .filter(|r| r.method == "GET" && r.uri.split('?').next() == Some(path));
        on_path
            .map(|r| r.headers["authorization"].to_str().unwrap().to_string())
            .collect()
    };

    // The search: whichever backend is asked first, the holder refuses once, then answers.
    let id = identity().await;
    let b = backends(2).await;
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    let file = upload(&b[1].url()).await;
    b[1].push_fault(refused());
    let (status, got) = send("GET", proxy.url(&format!("/openai/files/{file}{V}")), None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["id"], file.as_str());
    assert_eq!(id.fetches(), 2);
    assert_eq!(
        tokens(&b[1], &format!("/openai/files/{file}")),
        ["Bearer sim-token-1", "Bearer sim-token-2"]
    );

    // The list: b0 refuses once; it is asked again with a fresh token, and the list is whole.
    let id = identity().await;
    let b = backends(2).await;
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    let file = upload(&b[1].url()).await;
    b[0].push_fault(refused());
    let (status, list) = send("GET", proxy.url(&format!("/openai/files{V}")), None).await;
    assert_eq!(status, 200, "{list}");
    let ids = listed(&list);
    assert_eq!(ids, [file.as_str()]);
    assert_eq!(id.fetches(), 2);
    assert_eq!(
        tokens(&b[0], "/openai/files"),
        ["Bearer sim-token-1", "Bearer sim-token-2"]
    );
    let (_, metrics) = proxy.admin_get("/metrics");
    let timed = |b: &str| {
        let name = format!("aoai_proxy_upstream_first_byte_seconds_count{{backend=\"{b}\"}}");
        metric(&metrics, &name)
    };
    // Each of the list's three tries (b0 twice, b1 once) was timed.
    assert_eq!((timed("b0"), timed("b1")), (2.0, 1.0), "{metrics}");
}
