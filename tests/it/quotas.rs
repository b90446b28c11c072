//! Token quotas and budgets by period (`clients[].token_quota`, `budget`), the cost of each
//! answer (`prices`, `aoai_proxy_cost_usd_total`, the access log), and `/status`'s `clients`.
//! The period a test sees end is a few seconds long (`per: 4s`), so it does not wait an
//! hour; the calendar periods are the unit tests'.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aoai_sim::Backend;

use crate::common::redis::RedisServer;
use crate::common::*;

/// The proxy's YAML: backend `b` (keyed) for gpt-4o at `prices`, client team-a (key-a) with
/// `limits`, and team-b (key-b) with none.
fn yaml(b: &Backend, limits: &str, extra: &str) -> String {
    format!(
        "auth: {{kind: none}}\n{extra}backends:\n  - {{url: \"{}\", name: b0, api_key: k, deployments: {{gpt-4o: gpt-4o}}}}\nclients:\n  - {{name: team-a, key: key-a, {limits}}}\n  - {{name: team-b, key: key-b}}\nprices:\n  gpt-4o: {{input: 1000, output: 2000, cached_input: 500}}\n",
        b.url()
    )
}

/// A chat request with `key`: status, headers, body.
async fn send(proxy: &Proxy, key: &str) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let r = client()
        .post(proxy.url(CHAT))
        .header("api-key", key)
        .json(&chat_body())
        .send()
        .await
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, headers, body)
}

/// The tokens an answer reported: (prompt, completion).
fn usage(body: &serde_json::Value) -> (u64, u64) {
    let u = &body["usage"];
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    )
}

/// The length of the periods these tests count in (`per: 4s`).
const PERIOD: u64 = 4;

/// Waits until just after a period (counted from the Unix epoch) begins; when it ends. A test
/// that needs what follows within one period checks it still is, and starts again in the next
/// when a slow machine let it end.
async fn start_of_period() -> SystemTime {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let next = Duration::from_secs((now.as_secs() / PERIOD + 1) * PERIOD);
    tokio::time::sleep(next - now + Duration::from_millis(20)).await;
    UNIX_EPOCH + next + Duration::from_secs(PERIOD)
}

/// `/status`'s entry for `client`.
fn status_of(proxy: &Proxy, client: &str) -> serde_json::Value {
    let (_, status) = proxy.admin_get("/status");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let clients = status["clients"].as_array().expect("clients").clone();
    clients
        .into_iter()
        .find(|c| c["name"] == client)
        .unwrap_or_else(|| panic!("no {client} in {status}"))
}

/// Whether `/status` comes to say `client` has used `want` tokens of its quota before `end`.
async fn quota_used_reaches(proxy: &Proxy, client: &str, want: u64, end: SystemTime) -> bool {
    while SystemTime::now() < end {
        if status_of(proxy, client)["quota"]["used"].as_u64() == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Waits (at most 5 s: a settled count reaches Redis from a queue) until `/status` says
/// `client` has used `want` tokens of its quota.
async fn wait_quota_used(proxy: &Proxy, client: &str, want: u64) {
    let deadline = SystemTime::now() + Duration::from_secs(5);
    if !quota_used_reaches(proxy, client, want, deadline).await {
        let used = status_of(proxy, client)["quota"]["used"].as_u64();
        panic!("{client} used {used:?}, not {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_quota_refuses_with_403_at_its_count_and_starts_again_with_its_period() {
    let b = backend("b0").await;
    let (_, _, first) = {
        let proxy = Proxy::start(&yaml(&b, "", ""), None);
        send(&proxy, "key-a").await
    };
    let (prompt, completion) = usage(&first);
    let per_request = prompt + completion;
    // Room for three and a half requests: the fourth is admitted (the count is under the
    // quota when it arrives), the fifth is not.
    let quota = per_request * 7 / 2;
    let limits = format!("token_quota: {{tokens: {quota}, per: {PERIOD}s}}");
    let proxy = Proxy::start(&yaml(&b, &limits, ""), None);
    let mut periods = 0;
    let (admitted, (status, headers, body), reached, standing) = loop {
        let end = start_of_period().await;
        let before = b.requests();
        let mut admitted = Vec::new();
        let mut settled = true;
        for k in 1..=4 {
            admitted.push(send(&proxy, "key-a").await.0);
            // A request is settled as its answer ends, a moment after the client has it: the
            // next one is sent once the count says what was reported.
            settled &= quota_used_reaches(&proxy, "team-a", k * per_request, end).await;
        }
        let refused = send(&proxy, "key-a").await;
        let standing = status_of(&proxy, "team-a");
        if settled && SystemTime::now() < end {
            break (admitted, refused, b.requests() - before, standing);
        }
        periods += 1;
        assert!(periods < 3, "three periods ended before five requests did");
    };
    assert_eq!(admitted, [200; 4]);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "TokenQuotaExceeded");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("token quota of {quota} tokens per {PERIOD} s"))
            && message.contains(&format!("({} used)", 4 * per_request)),
        "{message}"
    );
    let ms: u64 = headers["retry-after-ms"].to_str().unwrap().parse().unwrap();
    let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=PERIOD * 1000).contains(&ms) && secs == ms.div_ceil(1000),
        "{ms} ms, {secs} s"
    );
    assert_eq!(reached, 4, "the refused request reached no backend");
    assert_eq!(standing["quota"]["used"], 4 * per_request);
    assert_eq!(standing["quota"]["limit"], quota);
    assert!(standing["quota"]["resets_in_seconds"].as_u64().unwrap() <= PERIOD);
    assert!(standing["budget"].is_null());
    // Another client has no quota.
    assert_eq!(send(&proxy, "key-b").await.0, 200);
    assert!(status_of(&proxy, "team-b")["quota"].is_null());

    // When the period ends, the count starts again.
    tokio::time::sleep(Duration::from_millis(ms + 20)).await;
    let (status, _, body) = send(&proxy, "key-a").await;
    assert_eq!(status, 200, "{body}");
    // Settled a moment after the answer (until then the count is the estimate): waited for.
    let within = SystemTime::now() + Duration::from_secs(2);
    let settled = quota_used_reaches(&proxy, "team-a", per_request, within).await;
    let used = status_of(&proxy, "team-a")["quota"]["used"].as_u64();
    assert!(
        settled || used == Some(0),
        "the new period counts only the new request (or nothing, if it ended too): {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_is_counted_at_the_deployments_prices_and_a_budget_refuses_once_spent() {
    let b = backend("b0").await;
    // USD per 1M tokens: 1000 in, 2000 out (cached_input 500; the simulator reports none).
    let price = |(prompt, completion): (u64, u64)| {
        (prompt as f64 * 1000.0 + completion as f64 * 2000.0) / 1e6
    };
    let probe = Proxy::start(&yaml(&b, "", ""), None);
    let one = price(usage(&send(&probe, "key-a").await.2));
    drop(probe);
    // Room for two and a half answers.
    let budget = one * 2.5;
    let limits = format!("budget: {{usd: {budget}, per: hour}}");
    let proxy = Proxy::start(&yaml(&b, &limits, ""), None);
    let mut spent = 0.0;
    for _ in 0..3 {
        let (status, _, body) = send(&proxy, "key-a").await;
        assert_eq!(status, 200, "{body}");
        spent += price(usage(&body));
        // Settled as its answer ends, a moment after the client has it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while (status_of(&proxy, "team-a")["budget"]["used_usd"]
            .as_f64()
            .unwrap()
            - spent)
            .abs()
            > 1e-6
        {
            assert!(Instant::now() < deadline, "not settled within 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (status, headers, body) = send(&proxy, "key-a").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "BudgetExceeded");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("has spent its budget of $"), "{message}");
    assert!(headers.contains_key("retry-after"));
    // team-b has no budget, and its spend is counted too.
    let (status, _, body) = send(&proxy, "key-b").await;
    assert_eq!(status, 200);
    let spent_b = price(usage(&body));

    let metrics = proxy
        .wait_for_metrics("aoai_proxy_cost_usd_total", |m| {
            m.contains("client=\"team-b\"")
        })
        .await;
    let cost = |client: &str| {
        metric(
            &metrics,
            &format!("aoai_proxy_cost_usd_total{{client=\"{client}\",deployment=\"gpt-4o\"}}"),
        )
    };
    assert!((cost("team-a") - spent).abs() < 1e-9, "{metrics}");
    assert!((cost("team-b") - spent_b).abs() < 1e-9, "{metrics}");
    let status = status_of(&proxy, "team-a");
    let used = status["budget"]["used_usd"].as_f64().unwrap();
    assert!((used - spent).abs() < 1e-6, "{status}");
    assert!((status["budget"]["limit_usd"].as_f64().unwrap() - budget).abs() < 1e-6);
    let log = proxy.wait_for_log("client=team-b").await;
    assert!(log.contains(&format!("cost=${spent_b:.6}")), "{log}");
}

/// Two replicas on one Redis share a quota, a replica started again keeps it, and what one
/// counts while Redis is frozen reaches the other once Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_quota_through_redis_and_a_restart_keeps_it() {
    let redis = RedisServer::start();
    let b = backend("b0").await;
    let probe = Proxy::start(&yaml(&b, "", ""), None);
    let (prompt, completion) = usage(&send(&probe, "key-a").await.2);
    drop(probe);
    let per_request = prompt + completion;
    let quota = per_request * 6 - 1;
    let state = format!(
        "state: {{redis: {{url: \"{}\", timeout: 200ms}}}}\n",
        redis.url()
    );
    let yaml = yaml(
        &b,
        &format!("token_quota: {{tokens: {quota}, per: day}}"),
        &state,
    );
    let one = Proxy::start(&yaml, None);
    let mut two = Proxy::start(&yaml, None);
    for p in [&one, &two] {
        p.wait_for_metrics("aoai_proxy_state_store_up", |m| {
            metric(m, "aoai_proxy_state_store_up") == 1.0
        })
        .await;
    }
    // Two through each replica, the counts in Redis.
    for p in [&one, &one, &two, &two] {
        assert_eq!(send(p, "key-a").await.0, 200);
    }
    wait_quota_used(&one, "team-a", 4 * per_request).await;

    // Redis frozen: replica two counts one more on its own...
    redis.signal("STOP");
    assert_eq!(
        send(&two, "key-a").await.0,
        200,
        "Redis frozen costs no request"
    );
    redis.signal("CONT");
    two.wait_for_metrics("aoai_proxy_state_store_up", |m| {
        metric(m, "aoai_proxy_state_store_up") == 1.0
    })
    .await;
    // ...and tells Redis when it is back, though the client sends nothing more through it.
    wait_quota_used(&one, "team-a", 5 * per_request).await;
    // The sixth, through the other replica, fills the quota.
    assert_eq!(send(&one, "key-a").await.0, 200);
    wait_quota_used(&two, "team-a", 6 * per_request).await;
    let (status, _, body) = send(&two, "key-a").await;
    assert_eq!(status, 403, "the other replica sees all six: {body}");

    // A replica started again keeps the count.
    two.signal("TERM");
    assert!(two.wait_exit(Duration::from_secs(10)).is_some());
    let again = Proxy::start(&yaml, None);
    again
        .wait_for_metrics("aoai_proxy_state_store_up", |m| {
            metric(m, "aoai_proxy_state_store_up") == 1.0
        })
        .await;
    assert_eq!(send(&again, "key-a").await.0, 403);
    assert_eq!(
        status_of(&again, "team-a")["quota"]["used"],
        6 * per_request
    );

    // Its status page marks the client at its limit.
    let dom = rendered_status_page(&again);
    let row = |client: &str| page_row(&dom, "data-client", client);
    let a = row("team-a");
    let shown = format!("{} of {}", thousands(6 * per_request), thousands(quota));
    assert!(
        a.contains("data-state=\"over\"") && a.contains(&shown),
        "{a}"
    );
    assert!(row("team-b").contains("data-state=\"ok\""));
}

/// `n` as the page writes it: `5,000,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
