//! The managed identity token: fetched off the request path, cached, refreshed in the
//! background, attached as `Authorization: Bearer`; `kind: none` and per-backend `api_key`.

use std::time::{Duration, Instant};

use aoai_sim::IdentityEndpoint;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_requests_cost_one_token_fetch() {
    let id = identity().await;
    let b = backends(2).await;
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    for _ in 0..30 {
        assert_eq!(chat(&proxy).await.0, 200);
    }
    assert_eq!(id.fetches(), 1);
    for r in b[0].recorded().iter().chain(b[1].recorded().iter()) {
        assert_eq!(r.headers["authorization"], "Bearer sim-token-1");
        assert!(r.headers.get("api-key").is_none());
    }
    // The token is for Azure OpenAI's resource, asked the App Service way.
    let q = &id.queries()[0];
    assert!(
        q.contains("resource=https%3A%2F%2Fcognitiveservices.azure.com"),
        "{q}"
    );
    assert!(q.contains("api-version=2019-08-01"), "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_assigned_client_id_reaches_the_endpoint() {
    let id = identity().await;
    let b = backend("b0").await;
    let yaml = format!(
        "auth: {{kind: managed_identity, client_id: 11111111-2222-3333-4444-555555555555}}\n{}",
        backends_yaml(&[&b])
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    assert_eq!(chat(&proxy).await.0, 200);
    let q = &id.queries()[0];
    assert!(
        q.contains("client_id=11111111-2222-3333-4444-555555555555"),
        "{q}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_token_is_refreshed_before_it_expires() {
    // Tokens live 4 s: the proxy refreshes at half-life, with no failed request between.
    let id = IdentityEndpoint::start(IDENTITY_HEADER, Duration::from_secs(4))
        .await
        .unwrap();
    let b = backend("b0").await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    let deadline = Instant::now() + Duration::from_secs(20);
    while id.fetches() < 3 && Instant::now() < deadline {
        assert_eq!(
            chat(&proxy).await.0,
            200,
            "a request failed around a refresh"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(id.fetches() >= 3, "only {} fetches in 20 s", id.fetches());
    let tokens: std::collections::BTreeSet<String> = b
        .recorded()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_string())
        .collect();
    assert!(
        tokens.len() >= 2,
        "requests never used a refreshed token: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_means_a_prompt_503_then_recovery() {
    let id = identity().await;
    id.set_failing(true);
    let b = backend("b0").await;
    let proxy = Proxy::start_not_ready(&mi_yaml(&[&b]), Some(&id));
    assert_eq!(proxy.admin_get("/readyz").0, 503);
    let started = Instant::now();
    let (status, headers, body) = chat(&proxy).await;
    assert_eq!(status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the 503 took {:?}",
        started.elapsed()
    );
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(azure_error_code(&body), "ServiceUnavailable");
    assert_eq!(b.requests(), 0, "a backend was called without credentials");

    id.set_failing(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.admin_get("/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "the proxy did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(chat(&proxy).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_backends_get_their_key_and_no_token() {
    let id = identity().await;
    let b = backends(2).await;
    let yaml = format!(
        "auth: {{kind: managed_identity}}\nbackends:\n  - {{url: \"{}\", api_key: key-zero}}\n  - {{url: \"{}\"}}\n",
        b[0].url(),
        b[1].url()
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    for _ in 0..2 {
        assert_eq!(chat(&proxy).await.0, 200);
    }
    let r0 = &b[0].recorded()[0];
    assert_eq!(r0.headers["api-key"], "key-zero");
    assert!(r0.headers.get("authorization").is_none());
    assert_eq!(
        b[1].recorded()[0].headers["authorization"],
        "Bearer sim-token-1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_none_sends_no_token() {
    let b = aoai_sim::Backend::start(aoai_sim::BackendOptions {
        record: true,
        require_auth: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let proxy = Proxy::start(
        &format!("auth: {{kind: none}}\n{}", backends_yaml(&[&b])),
        None,
    );
    assert_eq!(chat(&proxy).await.0, 200);
    let r = &b.recorded()[0];
    assert!(r.headers.get("authorization").is_none() && r.headers.get("api-key").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_logs_or_metrics() {
    let id = identity().await;
    let b = backend("b0").await;
    // One backend takes the proxy's token, the other (the same simulator, by another name) its
    // own key: both secrets go out, and neither may come back in a log line or a metric.
    let yaml = format!("auth: {{kind: managed_identity}}\nbackends:\n  - {{url: \"{}\", name: token-backend}}\n  - {{url: \"{}\", name: key-backend, api_key: backend-secret-key}}\nclients: [{{name: c, key: client-secret-key}}]\n", b.url(), b.url().replace("127.0.0.1", "localhost"));
    let proxy = Proxy::start(&yaml, Some(&id));
    for key in ["client-secret-key", "client-secret-key", "wrong-key"] {
        client()
            .post(proxy.url(CHAT))
            .header("api-key", key)
            .json(&chat_body())
            .send()
            .await
            .unwrap();
    }
    // What is searched was written: each request's access line, and a backend of each kind
    // was sent its secret.
    proxy.wait_for_log("backend=key-backend").await;
    proxy.wait_for_log("backend=token-backend").await;
    let log = proxy.wait_for_log(" 401 backend=- tries=0 client=-").await;
    let sent: Vec<String> = b
        .recorded()
        .iter()
        .map(|r| format!("{:?}", r.headers))
        .collect();
    assert!(
        sent.iter().any(|h| h.contains("backend-secret-key")),
        "{sent:?}"
    );
    assert!(sent.iter().any(|h| h.contains("sim-token-1")), "{sent:?}");
    let (_, metrics) = proxy.admin_get("/metrics");
    assert!(
        metrics.contains("aoai_proxy_token_fetches_total 1"),
        "{metrics}"
    );
    let everything = format!("{log}{metrics}");
    for secret in [
        "sim-token-1",
        "backend-secret-key",
        "client-secret-key",
        IDENTITY_HEADER,
    ] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked:\n{everything}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_while_the_token_is_valid_fails_no_request() {
    // 8 s tokens are refreshed at half-life: from 4 s on, every refresh fails, and the token
    // fetched first stays valid until 8 s.
    let id = IdentityEndpoint::start(IDENTITY_HEADER, Duration::from_secs(8))
        .await
        .unwrap();
    let b = backend("b0").await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    id.set_failing(true);
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(6) {
        let (status, _, body) = chat(&proxy).await;
        assert_eq!(status, 200, "a request failed during the outage: {body}");
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served > 20);
    assert!(
        id.queries().len() >= 2,
        "no refresh was attempted during the outage"
    );
    assert_eq!(id.fetches(), 1, "only the first fetch succeeded");
    assert!(
        proxy.log().contains("the current token stays in use"),
        "{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_first_requests_cost_one_fetch() {
    let id = identity().await;
    let b = backends(2).await;
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    let all = (0..64).map(|_| chat(&proxy));
    for (status, _, _) in futures_util::future::join_all(all).await {
        assert_eq!(status, 200);
    }
    assert_eq!(id.fetches(), 1);
    assert_eq!(id.queries().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_never_call_the_token_endpoint() {
    // No token at all: 64 concurrent requests are answered 503 and cause no fetch of their own.
    let id = identity().await;
    id.set_failing(true);
    let b = backend("b0").await;
    let proxy = Proxy::start_not_ready(&mi_yaml(&[&b]), Some(&id));
    let before = id.queries().len();
    let all = (0..64).map(|_| chat(&proxy));
    for (status, _, _) in futures_util::future::join_all(all).await {
        assert_eq!(status, 503);
    }
    // The refresher keeps to its own backoff (1 s, 2 s, 4 s, ...), whatever the requests do.
    assert!(
        id.queries().len() < before + 8,
        "{} fetch attempts for 64 requests",
        id.queries().len() - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_brings_a_fresh_token_and_one_more_try() {
    use aoai_sim::Fault;
    let id = identity().await;
    let b = backends(2).await;
    b[0].push_fault(Fault::Status {
        status: 401,
        headers: vec![],
    });
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    let (status, headers, _) = chat(&proxy).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["x-sim-backend"], "b0",
        "the retry goes to the same backend with the new token"
    );
    assert_eq!(id.fetches(), 2);
    let seen: Vec<String> = b[0]
        .recorded()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, vec!["Bearer sim-token-1", "Bearer sim-token-2"]);
    assert_eq!(b[1].requests(), 0);
    // Later requests use the new token.
    assert_eq!(chat(&proxy).await.0, 200);
    assert_eq!(
        b[1].recorded()[0].headers["authorization"],
        "Bearer sim-token-2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_401_goes_to_the_client() {
    use aoai_sim::Fault;
    let id = identity().await;
    let b = backends(2).await;
    b[0].set_fault(Some(Fault::Status {
        status: 401,
        headers: vec![],
    }));
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    let (status, _, body) = chat(&proxy).await;
    assert_eq!(status, 401);
    assert_eq!(azure_error_code(&body), "401");
    assert_eq!(
        b[0].requests(),
        2,
        "one try with the old token, one with the new"
    );
    assert_eq!(b[1].requests(), 0, "a 401 is not sent to other backends");
    assert_eq!(id.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_from_an_api_key_backend_is_not_retried() {
    use aoai_sim::Fault;
    let id = identity().await;
    let b = backends(2).await;
    b[0].push_fault(Fault::Status {
        status: 401,
        headers: vec![],
    });
    let yaml = format!("auth: {{kind: managed_identity}}\nbackends:\n  - {{url: \"{}\", api_key: wrong}}\n  - {{url: \"{}\"}}\n", b[0].url(), b[1].url());
    let proxy = Proxy::start(&yaml, Some(&id));
    assert_eq!(chat(&proxy).await.0, 401);
    assert_eq!(counts(&[&b[0], &b[1]]), vec![1, 0]);
    assert_eq!(id.fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_margin_is_configurable() {
    // 12 s tokens replaced 2 s ahead: the second fetch comes about 10 s after the first, not
    // at half-life (6 s) as with the default margin.
    let id = IdentityEndpoint::start(IDENTITY_HEADER, Duration::from_secs(12))
        .await
        .unwrap();
    let b = backend("b0").await;
    let yaml = mi_yaml(&[&b]).replace(
        "kind: managed_identity",
        "kind: managed_identity, refresh_before: 2s",
    );
    let _proxy = Proxy::start(&yaml, Some(&id));
    let first = Instant::now();
    while id.fetches() < 2 {
        assert!(
            first.elapsed() < Duration::from_secs(12),
            "no refresh before the token expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = first.elapsed();
    assert!(
        after >= Duration::from_secs(8),
        "refreshed after {after:?}: the margin was not used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_with_no_try_left_still_gets_a_new_token_for_later_requests() {
    use aoai_sim::Fault;
    let id = identity().await;
    let b = backend("b0").await;
    b.push_fault(Fault::Status {
        status: 401,
        headers: vec![],
    });
    let proxy = Proxy::start(
        &format!("{}retry: {{max_tries: 1}}\n", mi_yaml(&[&b])),
        Some(&id),
    );
    assert_eq!(chat(&proxy).await.0, 401);
    let deadline = Instant::now() + Duration::from_secs(5);
    while id.fetches() < 2 {
        assert!(
            Instant::now() < deadline,
            "the refused token was never replaced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(chat(&proxy).await.0, 200);
    assert_eq!(
        b.recorded()[1].headers["authorization"],
        "Bearer sim-token-2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_waits_for_the_first_token() {
    // The token endpoint takes 1.5 s; the request comes the moment the port accepts.
    let id = identity().await;
    id.set_delay(Duration::from_millis(1500));
    let b = backend("b0").await;
    let proxy = Proxy::start_not_ready(&mi_yaml(&[&b]), Some(&id));
    assert_eq!(
        proxy.admin_get("/readyz").0,
        503,
        "/readyz says 503 until a token is held"
    );
    let (status, _, body) = chat(&proxy).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(id.fetches(), 1);
    assert_eq!(
        b.recorded()[0].headers["authorization"],
        "Bearer sim-token-1"
    );
    assert_eq!(proxy.admin_get("/readyz").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_a_token_is_bounded_by_startup_wait() {
    let id = identity().await;
    id.set_delay(Duration::from_secs(3));
    let b = backend("b0").await;
    let yaml = mi_yaml(&[&b]).replace(
        "kind: managed_identity",
        "kind: managed_identity, startup_wait: 400ms",
    );
    let proxy = Proxy::start_not_ready(&yaml, Some(&id));
    let started = Instant::now();
    let (status, headers, body) = chat(&proxy).await;
    let waited = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(2),
        "answered after {waited:?}"
    );
    assert_eq!(b.requests(), 0, "a backend was called without credentials");
    // Once the token has come, requests are served.
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.admin_get("/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "the token never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(chat(&proxy).await.0, 200);
}
