//! The response cache (`cache`): a repeated request (the same body in any key order or spacing)
//! is answered from the cache with no backend contacted and `x-aoai-proxy-cache: hit`, its
//! stored headers and body (a stream's events byte for byte); `no-cache`, `no-store`, non-200
//! answers, Responses that store, scopes, the TTL; a hit charges no client limit; two replicas
//! share entries through a real Redis, and Redis down means misses; with `cache.semantic`, a
//! near-duplicate chat prompt is answered from the simulator's embeddings.

use std::time::{Duration, Instant};

use aoai_sim::{Backend, Fault};
use serde_json::json;

use crate::common::redis::RedisServer;
use crate::common::*;

const STORE: &str = "aoai_proxy_cache_total{result=\"store\"}";
const HIT: &str = "aoai_proxy_cache_total{result=\"hit\"}";

/// What a client got: status, `x-aoai-proxy-cache`, `x-request-id`, body.
#[derive(Debug)]
struct Got {
    status: u16,
    cache: Option<String>,
    id: Option<String>,
    body: String,
}

/// POSTs `body` (raw JSON text) to `path` with `headers`.
async fn post(proxy: &Proxy, path: &str, body: &str, headers: &[(&str, &str)]) -> Got {
    let mut r = client()
        .post(proxy.url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.expect("request");
    let header = |name: &str| {
        let v = r.headers().get(name);
        v.map(|v| v.to_str().unwrap().to_string())
    };
    let (status, cache, id) = (
        r.status().as_u16(),
        header("x-aoai-proxy-cache"),
        header("x-request-id"),
    );
    Got {
        status,
        cache,
        id,
        body: r.text().await.expect("body"),
    }
}

/// What the cache said of `body` POSTed to `path` with `headers` (`x-aoai-proxy-cache`).
async fn said(proxy: &Proxy, path: &str, body: &str, headers: &[(&str, &str)]) -> Option<String> {
    post(proxy, path, body, headers).await.cache
}

/// Waits until `proxy` has stored `n` answers (a store is made after the client has the answer).
async fn wait_stored(proxy: &Proxy, n: f64) {
    proxy
        .wait_for_metrics("the answer stored", |m| metric(m, STORE) >= n)
        .await;
}

/// `backends` keyed, with `extra` YAML (the `cache` section, clients, state).
fn yaml(backends: &[&Backend], extra: &str) -> String {
    let mut y = format!("auth: {{kind: none}}\n{extra}backends:\n");
    for (i, b) in backends.iter().enumerate() {
        y.push_str(&format!(
            "  - {{url: \"{}\", name: b{i}, api_key: k}}\n",
            b.url()
        ));
    }
    y
}

/// Two replicas in front of `b`, sharing `redis`, with `cache` (YAML), each once it uses Redis.
async fn replicas(b: &Backend, redis: &RedisServer, cache: &str) -> (Proxy, Proxy) {
    let state = format!(
        "state: {{redis: {{url: \"{}\", timeout: 200ms}}}}\n{cache}",
        redis.url()
    );
    let (one, two) = (
        Proxy::start(&yaml(&[b], &state), None),
        Proxy::start(&yaml(&[b], &state), None),
    );
    for p in [&one, &two] {
        p.wait_for_metrics("redis up", |m| {
            metric(m, "aoai_proxy_state_store_up") == 1.0
        })
        .await;
    }
    (one, two)
}

const ASK: &str =
    r#"{"messages":[{"role":"user","content":"Capital of France?"}],"temperature":0}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_is_answered_from_the_cache_and_what_never_is() {
    let b = backend("b0").await;
    let proxy = Proxy::start(&yaml(&[&b], "cache: {ttl: 1h}\n"), None);

    let first = post(&proxy, CHAT, ASK, &[]).await;
    assert_eq!(
        (first.status, first.cache.as_deref()),
        (200, Some("miss")),
        "{first:?}"
    );
    wait_stored(&proxy, 1.0).await;
    // The same body, keys reordered and spaced: the stored answer, its id, no backend.
    let same = "{ \"temperature\": 0,\n  \"messages\": [ {\"content\": \"Capital of France?\", \"role\": \"user\"} ] }";
    let hit = post(&proxy, CHAT, same, &[]).await;
    assert_eq!(
        (hit.status, hit.cache.as_deref()),
        (200, Some("hit")),
        "{hit:?}"
    );
    assert_eq!((&hit.body, &hit.id), (&first.body, &first.id));
    assert!(first.id.is_some());
    assert_eq!(b.requests(), 1, "a hit contacts no backend");
    let log = proxy.wait_for_log(" cache=hit").await;
    assert!(log.contains(" cache=miss"), "{log}");

    // Another prompt misses; no-cache skips the lookup (and stores again); no-store keeps nothing.
    let other = r#"{"messages":[{"role":"user","content":"Capital of Spain?"}]}"#;
    assert_eq!(
        said(&proxy, CHAT, other, &[("cache-control", "no-store")])
            .await
            .as_deref(),
        Some("miss")
    );
    assert_eq!(
        said(&proxy, CHAT, other, &[]).await.as_deref(),
        Some("miss"),
        "not stored"
    );
    let again = post(&proxy, CHAT, ASK, &[("cache-control", "no-cache")]).await;
    assert_eq!(again.cache.as_deref(), Some("miss"));
    assert_ne!(again.id, first.id, "a backend answered");
    assert_eq!(b.requests(), 4);

    // Not a 200: never stored.
    b.set_fault(Some(Fault::Status {
        status: 400,
        headers: Vec::new(),
    }));
    let broken = r#"{"messages":[{"role":"user","content":"Capital of Italy?"}]}"#;
    for _ in 0..2 {
        let got = post(&proxy, CHAT, broken, &[]).await;
        assert_eq!(
            (got.status, got.cache.as_deref()),
            (400, Some("miss")),
            "{got:?}"
        );
    }
    b.set_fault(None);
    let requests = b.requests();
    assert_eq!(
        said(&proxy, CHAT, broken, &[]).await.as_deref(),
        Some("miss")
    );
    assert_eq!(b.requests(), requests + 1);

    // Not cacheable at all: no header. A GET, another path.
    let r = client()
        .get(proxy.url("/openai/models?api-version=2024-10-21"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-aoai-proxy-cache").is_none());

    // A miss is counted as its request ends, a moment after the client has its answer.
    let miss = "aoai_proxy_cache_total{result=\"miss\"}";
    let m = proxy
        .wait_for_metrics("counts", |m| {
            metric(m, STORE) >= 3.0 && metric(m, miss) >= 7.0
        })
        .await;
    assert_eq!(metric(&m, HIT), 1.0);
    assert_eq!(metric(&m, miss), 7.0);
    assert!(
        metric(&m, "aoai_proxy_cache_saved_tokens_total") > 0.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_is_replayed_byte_for_byte() {
    let b = backend("b0").await;
    let proxy = Proxy::start(&yaml(&[&b], "cache: {}\n"), None);
    let ask = r#"{"messages":[{"role":"user","content":"Tell me a story"}],"stream":true}"#;
    let send = || {
        client()
            .post(proxy.url(CHAT))
            .header("content-type", "application/json")
            .body(ask)
            .send()
    };
    let get = || async {
        let r = send().await.unwrap();
        let cache = r.headers()["x-aoai-proxy-cache"]
            .to_str()
            .unwrap()
            .to_string();
        let kind = r.headers()["content-type"].to_str().unwrap().to_string();
        (cache, kind, r.bytes().await.unwrap())
    };
    // A stream that breaks off is not kept.
    b.set_fault(Some(Fault::BreakStream { after_chunks: 2 }));
    let broken = send().await.unwrap();
    let cut = broken
        .bytes()
        .await
        .map_or(true, |b| !b.ends_with(b"data: [DONE]\n\n"));
    assert!(cut, "the stream broke off before its end");
    b.set_fault(None);
    let (cache, kind, streamed) = get().await;
    assert_eq!(cache, "miss", "the broken stream was not stored");
    let forwarded = b.requests();
    assert!(kind.starts_with("text/event-stream"));
    assert!(streamed.ends_with(b"data: [DONE]\n\n"));
    wait_stored(&proxy, 1.0).await;
    let (cache, kind, replayed) = get().await;
    assert_eq!(cache, "hit");
    assert!(kind.starts_with("text/event-stream"));
    assert_eq!(replayed, streamed, "byte for byte");
    assert_eq!(b.requests(), forwarded, "the hit reached no backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_cached_only_when_they_store_nothing() {
    let b = backend("b0").await;
    let proxy = Proxy::start(&yaml(&[&b], "cache: {}\n"), None);
    let path = "/openai/v1/responses";
    let stateless = r#"{"model":"gpt-4o","input":"Say hi","store":false}"#;
    assert_eq!(
        said(&proxy, path, stateless, &[]).await.as_deref(),
        Some("miss")
    );
    wait_stored(&proxy, 1.0).await;
    let hit = post(&proxy, path, stateless, &[]).await;
    assert_eq!(
        (hit.status, hit.cache.as_deref()),
        (200, Some("hit")),
        "{hit:?}"
    );
    for body in [
        r#"{"model":"gpt-4o","input":"Say hi","store":true}"#,
        r#"{"model":"gpt-4o","input":"Say hi"}"#,
    ] {
        for _ in 0..2 {
            let got = post(&proxy, path, body, &[]).await;
            assert_eq!((got.status, got.cache), (200, None), "{body}");
        }
    }
    assert_eq!(b.requests(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_keep_clients_apart_or_share_and_a_hit_charges_no_limit() {
    let b = backend("b0").await;
    let clients = "clients:\n  - {name: team-a, key: ka, requests_per_minute: 2}\n  - {name: team-b, key: kb}\n  - {name: team-c, key: kc, deployments: [gpt-4o-mini]}\n";
    let proxy = Proxy::start(
        &yaml(&[&b], &format!("{clients}cache: {{scope: client}}\n")),
        None,
    );
    let a = [("api-key", "ka")];
    assert_eq!(said(&proxy, CHAT, ASK, &a).await.as_deref(), Some("miss"));
    wait_stored(&proxy, 1.0).await;
    // team-a's two requests a minute: hits spend none of them.
    for _ in 0..3 {
        let got = post(&proxy, CHAT, ASK, &a).await;
        assert_eq!(
            (got.status, got.cache.as_deref()),
            (200, Some("hit")),
            "{got:?}"
        );
    }
    let other = r#"{"messages":[{"role":"user","content":"Capital of Peru?"}]}"#;
    assert_eq!(
        post(&proxy, CHAT, other, &a).await.status,
        200,
        "its second request"
    );
    assert_eq!(
        post(&proxy, CHAT, ASK, &a).await.status,
        200,
        "a hit, over the limit"
    );
    assert_eq!(
        said(&proxy, CHAT, ASK, &[("api-key", "kb")])
            .await
            .as_deref(),
        Some("miss"),
        "scope: client"
    );
    drop(proxy);

    let shared = Proxy::start(
        &yaml(&[&b], &format!("{clients}cache: {{scope: global}}\n")),
        None,
    );
    assert_eq!(said(&shared, CHAT, ASK, &a).await.as_deref(), Some("miss"));
    wait_stored(&shared, 1.0).await;
    assert_eq!(
        said(&shared, CHAT, ASK, &[("api-key", "kb")])
            .await
            .as_deref(),
        Some("hit"),
        "scope: global"
    );
    // A client that may not use the deployment gets its 403, never the entry.
    let refused = post(&shared, CHAT, ASK, &[("api-key", "kc")]).await;
    assert_eq!(
        (refused.status, refused.cache),
        (403, None),
        "{}",
        refused.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_with_the_ttl() {
    let b = backend("b0").await;
    let proxy = Proxy::start(&yaml(&[&b], "cache: {ttl: 2s}\n"), None);
    post(&proxy, CHAT, ASK, &[]).await;
    let stored = Instant::now();
    wait_stored(&proxy, 1.0).await;
    assert_eq!(
        said(&proxy, CHAT, ASK, &[("cache-control", "no-store")])
            .await
            .as_deref(),
        Some("hit")
    );
    let expired = loop {
        let got = post(&proxy, CHAT, ASK, &[("cache-control", "no-store")]).await;
        if got.cache.as_deref() == Some("miss") {
            break stored.elapsed();
        }
        assert!(
            stored.elapsed() < Duration::from_secs(6),
            "still a hit after 6 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        expired >= Duration::from_millis(1900),
        "expired after {expired:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_hits_through_redis_and_redis_down_means_misses() {
    let b = backend("b0").await;
    let mut redis = RedisServer::start();
    let (one, two) = replicas(&b, &redis, "cache: {}\n").await;
    let first = post(&one, CHAT, ASK, &[]).await;
    assert_eq!(first.cache.as_deref(), Some("miss"));
    wait_stored(&one, 1.0).await;
    let hit = post(&two, CHAT, ASK, &[]).await;
    assert_eq!(
        (hit.cache.as_deref(), &hit.body, &hit.id),
        (Some("hit"), &first.body, &first.id)
    );
    assert_eq!(b.requests(), 1, "the other replica's entry, from Redis");

    redis.kill();
    for p in [&one, &two] {
        let got = post(p, CHAT, ASK, &[]).await;
        assert_eq!(
            (got.status, got.cache.as_deref()),
            (200, Some("miss")),
            "{got:?}"
        );
    }
    assert_eq!(b.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_duplicate_prompt_is_a_semantic_hit() {
    let b = backend("b0").await;
    let semantic =
        "cache:\n  semantic: {embeddings_deployment: emb, threshold: 0.9, deadline: 5s}\n";
    let proxy = Proxy::start(&yaml(&[&b], semantic), None);
    let ask = |text: &str, system: &str| {
        json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]}).to_string()
    };
    let first = post(
        &proxy,
        CHAT,
        &ask("What is the capital of France?", "Be brief."),
        &[],
    )
    .await;
    assert_eq!(first.cache.as_deref(), Some("miss"));
    wait_stored(&proxy, 1.0).await;
    let embedded = b
        .recorded()
        .iter()
        .filter(|r| r.uri.starts_with("/openai/deployments/emb/embeddings"))
        .count();
    assert_eq!(embedded, 1, "the prompt was embedded through the backends");

    let near = post(
        &proxy,
        CHAT,
        &ask("what is the capital of France", "Be brief."),
        &[],
    )
    .await;
    assert_eq!(
        (near.cache.as_deref(), &near.body, &near.id),
        (Some("semantic-hit"), &first.body, &first.id)
    );
    let far = post(
        &proxy,
        CHAT,
        &ask("Write a haiku about autumn leaves", "Be brief."),
        &[],
    )
    .await;
    assert_eq!(far.cache.as_deref(), Some("miss"), "unrelated");
    let other_system = post(
        &proxy,
        CHAT,
        &ask("What is the capital of France?", "Be long."),
        &[],
    )
    .await;
    assert_eq!(
        other_system.cache.as_deref(),
        Some("miss"),
        "another system prompt"
    );
    let chats = b
        .recorded()
        .iter()
        .filter(|r| r.uri.contains("/chat/completions"))
        .count();
    assert_eq!(chats, 3);
    let miss = "aoai_proxy_cache_total{result=\"miss\"}";
    let m = proxy
        .wait_for_metrics("counts", |m| {
            metric(m, STORE) >= 3.0 && metric(m, miss) >= 3.0
        })
        .await;
    assert_eq!(
        metric(&m, "aoai_proxy_cache_total{result=\"semantic_hit\"}"),
        1.0
    );
    assert_eq!(metric(&m, miss), 3.0, "a semantic hit is not also a miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_embedding_makes_a_miss_at_the_deadline_and_still_indexes_the_answer() {
    let (chat, embed) = (backend("chat").await, backend("embed").await);
    let y = format!(
        "auth: {{kind: none}}\ncache:\n  semantic: {{embeddings_deployment: emb, threshold: 0.9, deadline: 100ms}}\nbackends:\n  - {{url: \"{}\", name: chat, api_key: k, deployments: {{gpt-4o: gpt-4o}}}}\n  - {{url: \"{}\", name: embed, api_key: k, deployments: {{emb: emb}}}}\n",
        chat.url(),
        embed.url()
    );
    let proxy = Proxy::start(&y, None);
    let ask = |text: &str| json!({"messages": [{"role": "user", "content": text}]}).to_string();
    embed.set_fault(Some(Fault::Delay(Duration::from_millis(1500))));
    let sent = Instant::now();
    let first = post(&proxy, CHAT, &ask("What is the capital of France?"), &[]).await;
    let took = sent.elapsed();
    assert_eq!((first.status, first.cache.as_deref()), (200, Some("miss")));
    assert!(
        took < Duration::from_millis(1200),
        "the answer waited for the embedding: {took:?}"
    );
    // Stored once the embedding came, after the answer.
    wait_stored(&proxy, 1.0).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        sent.elapsed()
    );
    embed.set_fault(None);
    let near = post(&proxy, CHAT, &ask("what is the capital of France"), &[]).await;
    assert_eq!(
        (near.cache.as_deref(), &near.body),
        (Some("semantic-hit"), &first.body)
    );
    assert_eq!(chat.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_indexed_by_one_replica_is_a_semantic_hit_on_the_other() {
    let b = backend("b0").await;
    let redis = RedisServer::start();
    let semantic =
        "cache:\n  semantic: {embeddings_deployment: emb, threshold: 0.9, deadline: 5s}\n";
    let (one, two) = replicas(&b, &redis, semantic).await;
    let ask = |text: &str| json!({"messages": [{"role": "user", "content": text}]}).to_string();
    let first = post(&one, CHAT, &ask("What is the capital of France?"), &[]).await;
    assert_eq!(first.cache.as_deref(), Some("miss"));
    wait_stored(&one, 1.0).await;
    // The prompt reaches the other replica's index by pub/sub, within milliseconds: poll with
    // requests that store nothing, each a miss until it is there (bounded).
    let near = ask("what is the capital of France");
    let started = Instant::now();
    let hit = loop {
        let got = post(&two, CHAT, &near, &[("cache-control", "no-store")]).await;
        if got.cache.as_deref() == Some("semantic-hit") {
            break got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no semantic hit: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((&hit.body, &hit.id), (&first.body, &first.id));
}
