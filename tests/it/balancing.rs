//! Smart balancing: cooldowns from the backend's own Retry-After (each header form), an
//! immediate 429 when everything is cooling, priority groups, per-backend deployment names,
//! passive ejection and active health checks.

use std::time::{Duration, Instant, SystemTime};

use aoai_sim::Fault;

use crate::common::*;

fn throttled(headers: &[(&str, &str)]) -> Fault {
    Fault::Status {
        status: 429,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// Once the proxy is up, b0 answers one 429 with the headers `headers()` gives at that moment;
/// requests keep coming. Returns how long b0 got no request after its 429 (b1 served them).
async fn silence_after_429(
    headers: impl Fn() -> Vec<(String, String)>,
    extra_yaml: &str,
    at_most: Duration,
) -> Duration {
    let id = identity().await;
    let b = backends(2).await;
    let proxy = Proxy::start(
        &format!("{}{extra_yaml}", mi_yaml(&[&b[0], &b[1]])),
        Some(&id),
    );
    b[0].push_fault(Fault::Status {
        status: 429,
        headers: headers(),
    });
    let started = Instant::now();
    while b[0].requests() < 2 && started.elapsed() < at_most + Duration::from_secs(5) {
        let (status, _, body) = chat(&proxy).await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = b[0].recorded();
    assert_eq!(seen.len(), 2, "b0 never came back");
    seen[1].at - seen[0].at
}

fn fixed(pairs: &'static [(&'static str, &'static str)]) -> impl Fn() -> Vec<(String, String)> {
    move || {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_ms_is_honoured() {
    let gap = silence_after_429(
        fixed(&[("retry-after-ms", "1200"), ("retry-after", "9")]),
        "",
        Duration::from_millis(1200),
    )
    .await;
    assert!(
        gap >= Duration::from_millis(1150) && gap < Duration::from_millis(2700),
        "{gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_seconds_is_honoured() {
    let gap = silence_after_429(fixed(&[("retry-after", "1")]), "", Duration::from_secs(1)).await;
    assert!(
        gap >= Duration::from_millis(950) && gap < Duration::from_millis(2500),
        "{gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_as_a_date_is_honoured() {
    // Two seconds ahead, in whole seconds: the cooldown is between 1 and 2 s.
    let date = || {
        vec![(
            "retry-after".to_string(),
            httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2)),
        )]
    };
    let gap = silence_after_429(date, "", Duration::from_secs(2)).await;
    assert!(
        gap >= Duration::from_millis(950) && gap < Duration::from_millis(3500),
        "{gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_reset_headers_are_honoured() {
    let headers = fixed(&[
        ("x-ratelimit-reset-requests", "1s"),
        ("x-ratelimit-reset-tokens", "1.3s"),
    ]);
    let gap = silence_after_429(headers, "", Duration::from_millis(1300)).await;
    assert!(
        gap >= Duration::from_millis(1250) && gap < Duration::from_millis(2800),
        "{gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_headers_get_the_configured_default() {
    let headers = fixed(&[("retry-after-ms", "-1"), ("retry-after", "soon")]);
    let gap = silence_after_429(
        headers,
        "cooldown: {default: 800ms}\n",
        Duration::from_millis(800),
    )
    .await;
    assert!(
        gap >= Duration::from_millis(750) && gap < Duration::from_millis(2300),
        "{gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_429_storm_the_throttled_backend_gets_nothing_while_cooling() {
    let id = identity().await;
    let b = backends(3).await;
    b[1].set_fault(Some(throttled(&[("retry-after-ms", "700")])));
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1], &b[2]]), Some(&id));
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let (status, _, body) = chat(&proxy).await;
        assert_eq!(status, 200, "a client saw an error: {body}");
        served += 1;
    }
    let times: Vec<Instant> = b[1].recorded().iter().map(|r| r.at).collect();
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(690),
            "b1 got a request while cooling: {:?}",
            pair[1] - pair[0]
        );
    }
    assert!(
        times.len() <= 4,
        "{} requests reached the throttled backend",
        times.len()
    );
    assert_eq!(
        b[0].requests() + b[2].requests() + b[1].requests(),
        served + times.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_cooling_is_an_immediate_429_and_every_429_tells_the_shortest_wait() {
    let id = identity().await;
    let b = backends(2).await;
    b[0].set_fault(Some(throttled(&[("retry-after-ms", "3000")])));
    b[1].set_fault(Some(throttled(&[("retry-after-ms", "5000")])));
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    // The first request meets both 429s and gets the last one, its body as it was, but
    // telling the shortest wait of the two (b0's 3 s, not b1's own 5 s).
    let (status, headers, body) = chat(&proxy).await;
    assert_eq!(status, 429);
    assert_eq!(headers["x-sim-backend"], "b1");
    let ms: u64 = headers["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!((2500..=3000).contains(&ms), "retry-after-ms {ms}");
    assert_eq!(headers["retry-after"], "3");
    assert_eq!(azure_error_code(&body), "429");
    // Now every backend is cooling: the proxy answers by itself, at once.
    let started = Instant::now();
    let (status, headers, body) = chat(&proxy).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the 429 took {:?}",
        started.elapsed()
    );
    assert_eq!(status, 429);
    assert!(headers.get("x-sim-backend").is_none(), "a backend answered");
    let ms: u64 = headers["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!((2000..=3000).contains(&ms), "retry-after-ms {ms}");
    assert_eq!(headers["retry-after"], "3");
    assert_eq!(azure_error_code(&body), "429");
    assert_eq!(
        counts(&[&b[0], &b[1]]),
        vec![1, 1],
        "a cooling backend was contacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_priority_group_takes_traffic_until_it_cools_then_gets_it_back() {
    let id = identity().await;
    let b = backends(3).await;
    let yaml = format!(
        "auth: {{kind: managed_identity}}\nbackends:\n  - {{url: \"{}\", name: ptu, priority: 0}}\n  - {{url: \"{}\", name: paygo1, priority: 1}}\n  - {{url: \"{}\", name: paygo2, priority: 1}}\n",
        b[0].url(), b[1].url(), b[2].url()
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    for _ in 0..4 {
        assert_eq!(chat(&proxy).await.0, 200);
    }
    assert_eq!(counts(&[&b[0], &b[1], &b[2]]), vec![4, 0, 0]);
    b[0].push_fault(throttled(&[("retry-after-ms", "800")]));
    for _ in 0..4 {
        assert_eq!(chat(&proxy).await.0, 200);
    }
    assert_eq!(
        counts(&[&b[0], &b[1], &b[2]]),
        vec![5, 2, 2],
        "spilled round robin over the second group"
    );
    proxy
        .wait_for_metrics("the cooldown of ptu ends", |m| {
            !m.contains("aoai_proxy_backend_cooling_seconds{backend=\"ptu\"")
        })
        .await;
    for _ in 0..3 {
        assert_eq!(chat(&proxy).await.0, 200);
    }
    assert_eq!(
        counts(&[&b[0], &b[1], &b[2]]),
        vec![8, 2, 2],
        "traffic returned to the first group"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_get_the_deployment_under_their_own_name() {
    let id = identity().await;
    let b = backends(2).await;
    let yaml = format!(
        "auth: {{kind: managed_identity}}\nbackends:\n  - {{url: \"{}\", deployments: {{gpt-4o: gpt-4o-eastus}}}}\n  - {{url: \"{}\", deployments: {{gpt-4o: gpt-4o-westus, o3: o3-west}}}}\n",
        b[0].url(),
        b[1].url()
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    for _ in 0..2 {
        assert_eq!(chat(&proxy).await.0, 200);
    }
    assert_eq!(
        b[0].recorded()[0].uri,
        "/openai/deployments/gpt-4o-eastus/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(
        b[1].recorded()[0].uri,
        "/openai/deployments/gpt-4o-westus/chat/completions?api-version=2024-10-21"
    );
    // Only b1 has o3.
    for _ in 0..2 {
        let r = client()
            .post(proxy.url("/openai/deployments/o3/chat/completions?api-version=2024-10-21"))
            .json(&chat_body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(counts(&[&b[0], &b[1]]), vec![1, 3]);
    assert_eq!(
        b[1].recorded()[2].uri,
        "/openai/deployments/o3-west/chat/completions?api-version=2024-10-21"
    );
    // /openai/v1 carries the deployment as `model` in the body: renamed there.
    let r = client()
        .post(proxy.url("/openai/v1/chat/completions"))
        .json(&serde_json::json!({"model": "o3", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v1: serde_json::Value = serde_json::from_slice(&b[1].recorded()[3].body).unwrap();
    assert_eq!(v1["model"], "o3-west");
    // Nobody has it: 404 in Azure's shape, no backend contacted.
    let r = client()
        .post(proxy.url("/openai/deployments/nope/chat/completions"))
        .json(&chat_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        azure_error_code(&r.text().await.unwrap()),
        "DeploymentNotFound"
    );
    assert_eq!(counts(&[&b[0], &b[1]]), vec![1, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldowns_are_per_deployment() {
    let id = identity().await;
    let b = backends(2).await;
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    b[0].push_fault(throttled(&[("retry-after", "30")]));
    assert_eq!(chat(&proxy).await.0, 200); // gpt-4o: b0 429 -> b1
                                           // Another deployment on b0 is not cooling: it goes there in turn.
    let other = "/openai/deployments/embed/embeddings?api-version=2024-10-21";
    for _ in 0..2 {
        let r = client()
            .post(proxy.url(other))
            .json(&serde_json::json!({"input": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(
        b[0].recorded().iter().any(|r| r.uri == other),
        "b0 was left out for every deployment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_ejected_then_restored_by_one_success() {
    let id = identity().await;
    let b = backends(2).await;
    b[0].set_fault(Some(Fault::Status {
        status: 500,
        headers: vec![],
    }));
    let proxy = Proxy::start(
        &format!(
            "{}health: {{failures: 2, ejection: 1s}}\n",
            mi_yaml(&[&b[0], &b[1]])
        ),
        Some(&id),
    );
    // Each request that starts on b0 fails there and is retried on b1.
    for _ in 0..4 {
        assert_eq!(chat(&proxy).await.0, 200);
    }
    assert_eq!(
        b[0].requests(),
        2,
        "b0 should be ejected after two failures"
    );
    let (_, metrics) = proxy.admin_get("/metrics");
    assert!(
        !metrics.contains("aoai_proxy_backend_ejected_seconds{backend=\"b0\"} 0\n"),
        "{metrics}"
    );
    for _ in 0..6 {
        assert_eq!(chat(&proxy).await.0, 200);
    }
    assert_eq!(b[0].requests(), 2, "an ejected backend got traffic");
    b[0].set_fault(None);
    proxy
        .wait_for_metrics("the ejection of b0 ends", |m| {
            m.contains("aoai_proxy_backend_ejected_seconds{backend=\"b0\"} 0\n")
        })
        .await;
    for _ in 0..4 {
        assert_eq!(chat(&proxy).await.0, 200);
    }
    assert_eq!(
        b[0].requests(),
        4,
        "b0 is back in the rotation after one success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_dead_backend_out_before_any_request_fails() {
    let id = identity().await;
    let live = crate::common::backend("live").await;
    let dead = DeadPort::new();
    let yaml = format!(
        "auth: {{kind: managed_identity}}\nbackends:\n  - {{url: \"{}\", name: dead, health_check: {{kind: tcp, interval: 100ms}}}}\n  - {{url: \"{}\", name: live, health_check: {{kind: http, path: /, interval: 100ms}}}}\n",
        dead.url(),
        live.url()
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, m) = proxy.admin_get("/metrics");
        if m.contains("aoai_proxy_backend_probe_up{backend=\"dead\"} 0")
            && m.contains("aoai_proxy_backend_probe_up{backend=\"live\"} 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "probes did not report: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let probes = live.requests();
    for _ in 0..6 {
        assert_eq!(chat(&proxy).await.0, 200);
    }
    let (_, m) = proxy.admin_get("/metrics");
    assert!(
        m.contains("aoai_proxy_backend_tries_total{backend=\"dead\",outcome=\"connect\"} 0"),
        "{m}"
    );
    assert!(live.requests() >= probes + 6);
}

/// One backend cooling, the other refusing connections and then ejected: a request tries the
/// dead one once, not `max_tries` times (the cooling one says when it is back), and gets the 502
/// of a try with no answer; the cooling one is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_backend_beside_a_cooling_one_is_tried_once_a_request() {
    let id = identity().await;
    let b = backends(1).await;
    let dead = DeadPort::new();
    b[0].set_fault(Some(throttled(&[("retry-after-ms", "30000")])));
    let yaml = format!(
        "auth: {{kind: managed_identity}}\nhealth: {{failures: 2}}\nbackends:\n  - {{url: \"{}\", name: b0}}\n  - {{url: \"{}\", name: dead}}\n",
        b[0].url(),
        dead.url()
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    let refused = |metrics: &str| {
        metric(
            metrics,
            "aoai_proxy_backend_tries_total{backend=\"dead\",outcome=\"connect\"}",
        )
    };
    for request in 1..=3 {
        let before = refused(&proxy.admin_get("/metrics").1);
        let (status, _, body) = chat(&proxy).await;
        assert_eq!(status, 502, "request {request}: {body}");
        let tries = refused(&proxy.admin_get("/metrics").1) - before;
        // The first request: three tries in all, one of them b0's 429, and the dead backend
        // ejected after its second failure. Then b0 is cooling and the dead one ejected: one try.
        let expected = if request == 1 { 2.0 } else { 1.0 };
        assert_eq!(
            tries, expected,
            "request {request}: tries on the dead backend"
        );
    }
    assert_eq!(b[0].requests(), 1, "a cooling backend was contacted");
}
