//! What operators read: the latency, tries and retry metrics, the JSON access log, the status
//! JSON and page (rendered in headless Chromium), and the `health` command.

use std::process::Command;

use aoai_sim::Fault;
use serde_json::Value;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_tries_and_retry_metrics_count_each_request() {
    let id = identity().await;
    let b = backends(2).await;
    b[0].push_fault(Fault::throttle(30));
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    let (status, headers, _) = chat(&proxy).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-sim-backend"], "b1");
    let (status, _, _) = chat(&proxy).await;
    assert_eq!(status, 200);

    let m = proxy
        .wait_for_metrics("two requests ended", |m| {
            metric(m, "aoai_proxy_request_duration_seconds_count") == 2.0
        })
        .await;
    for (series, expected) in [
        // One request took two tries, the other one.
        ("aoai_proxy_request_tries_bucket{le=\"1\"}", 1.0),
        ("aoai_proxy_request_tries_bucket{le=\"2\"}", 2.0),
        ("aoai_proxy_request_tries_count", 2.0),
        ("aoai_proxy_request_tries_sum", 3.0),
        (
            "aoai_proxy_request_duration_seconds_bucket{le=\"+Inf\"}",
            2.0,
        ),
        ("aoai_proxy_retries_by_cause_total{cause=\"429\"}", 1.0),
        ("aoai_proxy_retries_by_cause_total{cause=\"5xx\"}", 0.0),
        ("aoai_proxy_retries_total", 1.0),
        ("aoai_proxy_responses_total{class=\"2xx\"}", 2.0),
        ("aoai_proxy_responses_total{class=\"429\"}", 0.0),
        // Every try that got an answer is timed on its backend.
        (
            "aoai_proxy_upstream_first_byte_seconds_count{backend=\"b0\"}",
            1.0,
        ),
        (
            "aoai_proxy_upstream_first_byte_seconds_count{backend=\"b1\"}",
            2.0,
        ),
        ("aoai_proxy_token_refreshes_total{result=\"ok\"}", 1.0),
        ("aoai_proxy_token_refreshes_total{result=\"error\"}", 0.0),
    ] {
        assert_eq!(metric(&m, series), expected, "{series} in\n{m}");
    }
    let left = metric(&m, "aoai_proxy_token_expires_in_seconds");
    assert!(
        (86_000.0..=86_400.0).contains(&left),
        "the day-long token expires in {left} s"
    );
    // The simulator answers at once: both requests fall in the low buckets.
    assert_eq!(
        metric(&m, "aoai_proxy_request_duration_seconds_bucket{le=\"1\"}"),
        2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_access_log_has_one_object_a_request_and_no_secret() {
    let id = identity().await;
    let b = backends(2).await;
    b[0].push_fault(Fault::throttle(30));
    let proxy = Proxy::start(
        &format!(
            "log: {{format: json}}\nclients: [{{name: team-a, key: secret-key-a}}]\n{}",
            mi_yaml(&[&b[0], &b[1]])
        ),
        Some(&id),
    );
    let r = client()
        .post(proxy.url(CHAT))
        .header("api-key", "secret-key-a")
        .json(&chat_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let line = loop {
        let log = proxy.log();
        if let Some(line) = log.lines().find(|l| l.starts_with('{')) {
            break line.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no JSON line:\n{log}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let v: Value = serde_json::from_str(&line).expect("the line is one JSON object");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/openai/deployments/gpt-4o/chat/completions");
    assert_eq!(v["deployment"], "gpt-4o");
    assert_eq!(v["client"], "team-a");
    assert_eq!(v["status"], 200);
    assert_eq!(v["tries"], 2);
    assert_eq!(v["attempts"][0]["backend"], "b0");
    assert_eq!(v["attempts"][0]["outcome"], "429");
    assert_eq!(v["attempts"][1]["backend"], "b1");
    assert_eq!(v["attempts"][1]["status"], 200);
    assert_eq!(v["tokens"]["prompt"], answer["usage"]["prompt_tokens"]);
    assert_eq!(
        v["tokens"]["completion"],
        answer["usage"]["completion_tokens"]
    );
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    assert!(v["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    let (ttfb, duration) = (
        v["ttfb_ms"].as_f64().unwrap(),
        v["duration_ms"].as_f64().unwrap(),
    );
    assert!(
        ttfb > 0.0 && ttfb <= duration,
        "ttfb {ttfb} ms, duration {duration} ms"
    );
    let log = proxy.log();
    assert!(
        !log.contains("secret-key-a"),
        "the client's key is in the log"
    );
    assert!(!log.contains("Bearer"), "a token is in the log");
}

/// A proxy in front of b0 (throttled for 60 s by its first answer), b1 (nothing listens:
/// ejected after one failure) and b2 (healthy), after one request that met all three.
async fn one_cooling_one_ejected() -> (
    Proxy,
    Vec<aoai_sim::Backend>,
    DeadPort,
    aoai_sim::IdentityEndpoint,
) {
    let id = identity().await;
    let b = backends(2).await;
    b[0].push_fault(Fault::throttle(60));
    let dead = DeadPort::new();
    let yaml = format!(
        "auth: {{kind: managed_identity}}\nhealth: {{failures: 1, ejection: 60s}}\nbackends:\n  - {{url: \"{}\", name: b0}}\n  - {{url: \"{}\", name: b1}}\n  - {{url: \"{}\", name: b2}}\n",
        b[0].url(),
        dead.url(),
        b[1].url()
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    let (status, headers, _) = chat(&proxy).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["x-sim-backend"], "b1",
        "the third backend (sim b1) answered"
    );
    (proxy, b, dead, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_json_shows_who_is_cooling_and_who_is_ejected() {
    let (proxy, _b, _dead, _id) = one_cooling_one_ejected().await;
    let (status, body) = proxy.admin_get("/status");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let backend = |name: &str| {
        v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {v}"))
            .clone()
    };
    let b0 = backend("b0");
    assert_eq!(b0["state"], "up");
    assert_eq!(b0["priority"], 0);
    assert_eq!(b0["weight"], 1);
    assert_eq!(b0["cooling"][0]["deployment"], "gpt-4o");
    let left = b0["cooling"][0]["seconds_left"].as_f64().unwrap();
    assert!((50.0..=60.0).contains(&left), "cooling for {left} s more");
    assert_eq!(b0["tries"]["429"], 1);
    let b1 = backend("b1");
    assert_eq!(b1["state"], "ejected");
    assert!(b1["ejected_seconds_left"].as_f64().unwrap() > 50.0);
    assert_eq!(b1["tries"]["connect"], 1);
    assert!(b1["cooling"].as_array().unwrap().is_empty());
    let b2 = backend("b2");
    assert_eq!(b2["state"], "up");
    assert_eq!(b2["tries"]["2xx"], 1);
    assert!(b2["tokens"]["prompt"].as_u64().unwrap() > 0);
    let token = v["token"]["seconds_left"].as_u64().unwrap();
    assert!(token > 86_000, "token seconds left: {token}");
    assert_eq!(v["ready"], true);
    assert_eq!(v["config"]["reloads"]["ok"], 0);
    assert!(v["config"]["loaded_at"].as_str().unwrap().ends_with('Z'));
    // Every name the README and the page read is there (more may be added).
    let has = |object: &Value, keys: &[&str]| {
        for key in keys {
            assert!(object.get(key).is_some(), "no {key:?} in {object}");
        }
    };
    has(
        &v,
        &[
            "ready",
            "in_flight",
            "waiting",
            "listen",
            "backends",
            "token",
            "config",
        ],
    );
    has(
        &b0,
        &[
            "name",
            "url",
            "priority",
            "weight",
            "state",
            "ejected_seconds_left",
            "probe",
            "cooling",
            "capacity",
            "tries",
            "tokens",
        ],
    );
    has(&v["token"], &["seconds_left", "fetches", "failed_fetches"]);
    has(
        &v["config"],
        &["loaded_at", "loaded_seconds_ago", "reloads"],
    );
    has(&v["config"]["reloads"], &["ok", "error"]);
    assert_eq!(v["token"]["fetches"], 1);
    assert_eq!(
        v["listen"],
        serde_json::json!([format!("127.0.0.1:{}", proxy.port)])
    );
    assert!(
        b0["url"].as_str().unwrap().starts_with("http://127.0.0.1:"),
        "{b0}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_in_a_headless_browser() {
    let (proxy, _b, _dead, _id) = one_cooling_one_ejected().await;
    let (status, page) = proxy.admin_get("/");
    assert_eq!(status, 200);
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "the page loads nothing from elsewhere"
    );
    let dom = rendered_status_page(&proxy);
    let row = |name: &str| page_row(&dom, "data-backend", name);
    let b0 = row("b0");
    assert!(b0.contains("data-state=\"cooling\""), "{b0}");
    assert!(
        b0.contains("gpt-4o: 5"),
        "b0 shows the deployment and its seconds: {b0}"
    );
    let b1 = row("b1");
    assert!(b1.contains("data-state=\"ejected\""), "{b1}");
    assert!(
        b1.contains("ejected 5"),
        "b1 shows how long it stays out: {b1}"
    );
    assert!(row("b2").contains("data-state=\"up\""));
    assert!(
        dom.contains("id=\"token\">expires in"),
        "the token's expiry is shown"
    );
    assert!(
        dom.contains("id=\"waiting\">0<"),
        "the requests waiting for capacity are shown"
    );
    assert!(
        dom.contains("<div id=\"error\"></div>"),
        "the page shows an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_command_exits_by_the_answer() {
    let id = identity().await;
    let b = backends(1).await;
    let proxy = Proxy::start(&mi_yaml(&[&b[0]]), Some(&id));
    let health = |url: String| {
        Command::new(env!("CARGO_BIN_EXE_aoai-proxy"))
            .args(["health", "--timeout", "2", "--url", &url])
            .env("NO_PROXY", "127.0.0.1")
            .output()
            .unwrap()
            .status
            .code()
    };
    let admin = format!("http://127.0.0.1:{}", proxy.admin);
    assert_eq!(health(format!("{admin}/readyz")), Some(0));
    assert_eq!(health(format!("{admin}/nothing-here")), Some(1), "404");
    let dead = DeadPort::new();
    assert_eq!(
        health(format!("{}/readyz", dead.url())),
        Some(1),
        "nothing listens"
    );
}
