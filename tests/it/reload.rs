//! SIGHUP reloads the configuration: new requests use the new backends, a stream in flight
//! finishes on the backend it started with, backend state carries over for backends that stay,
//! and a broken file keeps the running configuration.

use std::time::Duration;

use aoai_sim::{Backend, BackendOptions, Fault};
use futures_util::StreamExt;

use crate::common::*;

const RELOADED: &str = "aoai_proxy_config_reloads_total{result=\"ok\"}";
const NOT_RELOADED: &str = "aoai_proxy_config_reloads_total{result=\"error\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_backends_take_new_requests_and_a_stream_in_flight_finishes() {
    let id = identity().await;
    let old = Backend::start(BackendOptions {
        name: "old".into(),
        answer: "one two three four five six".into(),
        chunk_delay: Duration::from_millis(150),
        record: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let new = backend("new").await;
    let proxy = Proxy::start(&mi_yaml(&[&old]), Some(&id));

    let r = client()
        .post(proxy.url(CHAT))
        .json(&serde_json::json!({"stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let mut text = String::from_utf8(first.to_vec()).unwrap();

    proxy.rewrite_config(&mi_yaml(&[&new]));
    proxy.signal("HUP");
    proxy
        .wait_for_metrics("the reload", |m| metric(m, RELOADED) == 1.0)
        .await;

    // New requests go to the new backend only.
    for _ in 0..4 {
        let (status, headers, _) = chat(&proxy).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-sim-backend"], "new");
    }
    assert_eq!(
        old.requests(),
        1,
        "only the stream reached the removed backend"
    );
    assert_eq!(new.requests(), 4);

    // The stream that began before the reload ends whole, from the old backend.
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.expect("the stream broke on reload")).unwrap());
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // The name stayed, the URL did not: another instance, with counters of its own.
    let (_, m) = proxy.admin_get("/metrics");
    assert!(
        m.contains("aoai_proxy_backend_tries_total{backend=\"b0\",outcome=\"2xx\"} 4"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooldown_carries_over_for_a_backend_that_stays() {
    let id = identity().await;
    let b = backends(3).await;
    b[0].push_fault(Fault::throttle(60));
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    let (status, headers, _) = chat(&proxy).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-sim-backend"], "b1", "b0 throttled, b1 answered");

    // b0 and b1 stay (same names, same URLs); b2 is added.
    proxy.rewrite_config(&mi_yaml(&[&b[0], &b[1], &b[2]]));
    proxy.signal("HUP");
    let m = proxy
        .wait_for_metrics("the reload", |m| metric(m, RELOADED) == 1.0)
        .await;
    assert!(
        m.contains("aoai_proxy_backend_cooling_seconds{backend=\"b0\",deployment=\"gpt-4o\"}"),
        "b0's cooldown was lost:\n{m}"
    );
    assert!(
        m.contains("aoai_proxy_backend_tries_total{backend=\"b0\",outcome=\"429\"} 1"),
        "b0's counters were lost:\n{m}"
    );
    for _ in 0..6 {
        let (status, headers, _) = chat(&proxy).await;
        assert_eq!(status, 200);
        assert_ne!(headers["x-sim-backend"], "b0", "a cooling backend was used");
    }
    assert_eq!(b[0].requests(), 1);
    assert!(b[2].requests() >= 2, "the new backend takes its share");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_keeps_the_running_configuration() {
    let id = identity().await;
    let b = backends(1).await;
    let proxy = Proxy::start(&mi_yaml(&[&b[0]]), Some(&id));

    proxy.rewrite_config("auth: {kind: managed_identity}\nbackends: [{url: \"ftp://nowhere\"}]\n");
    proxy.signal("HUP");
    proxy
        .wait_for_metrics("the failed reload", |m| metric(m, NOT_RELOADED) == 1.0)
        .await;
    let (status, headers, _) = chat(&proxy).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-sim-backend"], "b0");
    let log = proxy.log();
    assert!(
        log.contains("not reloaded") && log.contains("backends[0].url"),
        "the log says why, naming the key:\n{log}"
    );

    // A fixed setting changed: the rest applies, and the log says what needs a restart.
    proxy.rewrite_config(&format!(
        "server: {{grace_period: 5s}}\nretry: {{max_tries: 1}}\n{}",
        mi_yaml(&[&b[0]])
    ));
    proxy.signal("HUP");
    proxy
        .wait_for_metrics("the reload", |m| metric(m, RELOADED) == 1.0)
        .await;
    proxy.wait_for_log("server changed").await;
    let (status, _, _) = chat(&proxy).await;
    assert_eq!(status, 200, "still serving after both reloads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_follow_the_reloaded_backends() {
    let id = identity().await;
    let b = backends(1).await;
    let dead = DeadPort::new();
    let proxy = Proxy::start(&mi_yaml(&[&b[0]]), Some(&id));
    let (_, m) = proxy.admin_get("/metrics");
    assert!(
        !m.contains("aoai_proxy_backend_probe_up{"),
        "no probe configured yet"
    );

    // A backend added with a probe is probed (and found down) without a restart.
    proxy.rewrite_config(&format!(
        "{}  - {{url: \"{}\", name: probed, health_check: {{kind: tcp, interval: 100ms}}}}\n",
        mi_yaml(&[&b[0]]),
        dead.url()
    ));
    proxy.signal("HUP");
    proxy
        .wait_for_metrics("the new backend's probe fails", |m| {
            m.contains("aoai_proxy_backend_probe_up{backend=\"probed\"} 0")
        })
        .await;
    for _ in 0..4 {
        let (status, headers, _) = chat(&proxy).await;
        assert_eq!(status, 200);
        assert_eq!(
            headers["x-sim-backend"], "b0",
            "a backend failing its probe got a request"
        );
    }
}
