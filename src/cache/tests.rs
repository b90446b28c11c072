use std::collections::BTreeSet;

use super::local::LocalEntries;
use super::*;
use crate::config::Semantic;

fn cache(scope: CacheScope, semantic: bool) -> ResponseCache {
    ResponseCache::new(
        Cache {
            ttl: Duration::from_secs(60),
            max_bytes: 1 << 20,
            max_entry_bytes: 1 << 16,
            scope,
            deployments: Some(BTreeSet::from(["gpt-4o".to_string()])),
            semantic: semantic.then(|| Semantic {
                embeddings_deployment: "emb".into(),
                threshold: 0.9,
                deadline: Duration::from_millis(100),
                max_entries: 10,
            }),
        },
        Arc::new(LocalEntries::new(1 << 20)),
        semantic.then(|| {
            Arc::new(semantic::SemanticIndex::new(
                10,
                Duration::from_secs(60),
                "emb",
            ))
        }),
    )
}

fn head(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut h = RequestHeader::build(method, target.as_bytes(), None).unwrap();
    for (k, v) in headers {
        h.append_header(k.to_string(), *v).unwrap();
    }
    h
}

/// Whether `body` sent as `method target` with `headers` is cacheable, and how.
fn look(
    c: &ResponseCache,
    method: &str,
    target: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Option<Cacheable> {
    let h = head(method, target, headers);
    let request = Request::read(&h, Bytes::from(body.to_string()), false).unwrap();
    c.cacheable(&h, &request, Some("team-a"))
}

const CHAT: &str = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
const ASK: &str = r#"{"messages":[{"role":"user","content":"Capital of France?"}]}"#;

#[test]
fn what_is_cacheable() {
    let c = cache(CacheScope::Client, false);
    assert!(look(&c, "POST", CHAT, ASK, &[]).is_some());
    for (method, target, body) in [
        ("GET", CHAT, ASK),
        (
            "POST",
            "/openai/deployments/gpt-4o-mini/chat/completions?api-version=1",
            ASK,
        ),
        ("POST", "/openai/files", ASK),
        ("POST", CHAT, "not json"),
        ("POST", CHAT, r#"{"messages":[],"file_id":"file-abc"}"#),
        (
            "POST",
            "/openai/v1/responses",
            r#"{"model":"gpt-4o","input":"hi"}"#,
        ),
        (
            "POST",
            "/openai/v1/responses",
            r#"{"model":"gpt-4o","input":"hi","store":true}"#,
        ),
        (
            "POST",
            "/openai/v1/responses",
            r#"{"model":"gpt-4o","input":"hi","store":false,"previous_response_id":"resp_1"}"#,
        ),
    ] {
        assert!(
            look(&c, method, target, body, &[]).is_none(),
            "{method} {target} {body}"
        );
    }
    let stateless = r#"{"model":"gpt-4o","input":"hi","store":false}"#;
    assert!(look(&c, "POST", "/openai/v1/responses", stateless, &[]).is_some());
    for path in ["completions", "embeddings"] {
        let target = format!("/openai/deployments/gpt-4o/{path}?api-version=1");
        assert!(
            look(&c, "POST", &target, r#"{"input":"x"}"#, &[]).is_some(),
            "{path}"
        );
    }
}

#[test]
fn the_key_is_the_scope_the_api_version_and_the_canonical_body() {
    let c = cache(CacheScope::Client, false);
    let key = |target: &str, body: &str| look(&c, "POST", target, body, &[]).unwrap().key;
    let spaced =
        "{ \"messages\" : [ { \"content\" : \"Capital of France?\", \"role\" : \"user\" } ] }";
    assert_eq!(key(CHAT, ASK), key(CHAT, spaced));
    let other_version = "/openai/deployments/gpt-4o/chat/completions?api-version=2025-01-01";
    assert_ne!(key(CHAT, ASK), key(other_version, ASK));
    let h = head("POST", CHAT, &[]);
    let request = Request::read(&h, Bytes::from(ASK), false).unwrap();
    let (a, b) = (
        c.cacheable(&h, &request, Some("team-a")),
        c.cacheable(&h, &request, Some("team-b")),
    );
    assert_ne!(a.unwrap().key, b.unwrap().key, "scope: client");
    let g = cache(CacheScope::Global, false);
    let (a, b) = (
        g.cacheable(&h, &request, Some("team-a")),
        g.cacheable(&h, &request, Some("team-b")),
    );
    assert_eq!(a.unwrap().key, b.unwrap().key, "scope: global");
}

#[test]
fn cache_control_says_whether_to_look_up_and_to_store() {
    let c = cache(CacheScope::Client, true);
    let plain = look(&c, "POST", CHAT, ASK, &[]).unwrap();
    assert!(plain.look_up && plain.store && plain.semantic.is_some());
    let no_cache = look(&c, "POST", CHAT, ASK, &[("cache-control", "no-cache")]).unwrap();
    assert!(!no_cache.look_up && no_cache.store);
    let no_store = look(
        &c,
        "POST",
        CHAT,
        ASK,
        &[("Cache-Control", "max-age=0, No-Store")],
    )
    .unwrap();
    assert!(no_store.look_up && !no_store.store);
    let completions = "/openai/deployments/gpt-4o/completions?api-version=1";
    let prompt = look(&c, "POST", completions, r#"{"prompt":"hi"}"#, &[]).unwrap();
    assert!(
        prompt.semantic.is_none(),
        "only chat is looked up by meaning"
    );
}

fn entry(content_type: &str, body: &str, stored_ms: u64) -> Entry {
    Entry {
        headers: vec![("content-type".into(), content_type.into())],
        body: Bytes::from(body.to_string()),
        usage: None,
        stored_ms,
    }
}

#[test]
fn a_stream_is_replayed_in_whole_events_and_an_answer_whole() {
    let sse = "data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n";
    let stream = entry("text/event-stream; charset=utf-8", sse, 0);
    let one: Vec<Bytes> = stream.pieces(1).collect();
    assert_eq!(
        one,
        [
            "data: {\"a\":1}\n\n",
            "data: {\"b\":2}\n\n",
            "data: [DONE]\n\n"
        ]
    );
    let two: Vec<Bytes> = stream.pieces(32).collect();
    assert_eq!(
        two,
        ["data: {\"a\":1}\n\ndata: {\"b\":2}\n\n", "data: [DONE]\n\n"]
    );
    assert_eq!(
        stream.pieces(64 << 10).collect::<Vec<_>>(),
        [sse],
        "byte for byte"
    );
    let json = entry("application/json", "{\"a\":\"\\n\\n\"}\n\n{}", 0);
    assert_eq!(json.pieces(1).count(), 1);
    assert_eq!(entry("application/json", "", 0).pieces(1).count(), 0);
}

#[test]
fn a_capture_keeps_a_whole_200_only() {
    let mut ok = ResponseHeader::build(200, None).unwrap();
    ok.insert_header("content-type", "application/json")
        .unwrap();
    ok.insert_header("x-request-id", "req-1").unwrap();
    ok.insert_header("x-ratelimit-remaining-tokens", "99")
        .unwrap();
    let mut c = Capture::begin(&ok, 8).unwrap();
    c.feed(b"{\"a\":");
    c.feed(b"1}");
    let e = c.finish(None, 5).unwrap();
    assert_eq!(&e.body[..], b"{\"a\":1}");
    let names: Vec<&str> = e.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["content-type", "x-request-id"]);
    let mut big = Capture::begin(&ok, 8).unwrap();
    big.feed(b"0123456789");
    assert!(big.finish(None, 5).is_none(), "over the bound");
    assert!(Capture::begin(&ResponseHeader::build(500, None).unwrap(), 8).is_none());
    ok.insert_header("content-encoding", "gzip").unwrap();
    assert!(Capture::begin(&ok, 8).is_none(), "compressed");
}

#[tokio::test]
async fn local_entries_expire_and_the_least_recently_used_go_first() {
    let ttl = Duration::from_secs(60);
    let now = unix_now_ms();
    let one = entry("application/json", &"x".repeat(400), now);
    let local = LocalEntries::new((one.size() * 2) as u64);
    local.put([1; 32], Arc::new(one.clone()), ttl).await;
    local.put([2; 32], Arc::new(one.clone()), ttl).await;
    assert!(
        local.get(&[1; 32], ttl).await.is_some(),
        "used: 2 is now the oldest"
    );
    local.put([3; 32], Arc::new(one.clone()), ttl).await;
    assert!(local.get(&[2; 32], ttl).await.is_none());
    assert!(local.get(&[1; 32], ttl).await.is_some());
    assert_eq!(local.held(), (2, one.size() * 2));
    let old = entry("application/json", "{}", now - 61_000);
    local.put([4; 32], Arc::new(old), ttl).await;
    assert!(
        local.get(&[4; 32], ttl).await.is_none(),
        "older than the TTL"
    );
}

#[test]
fn a_stream_is_kept_only_when_it_ended_as_a_whole_answer_does() {
    let mut sse = ResponseHeader::build(200, None).unwrap();
    sse.insert_header("content-type", "text/event-stream")
        .unwrap();
    let kept = |body: &str| {
        let mut c = Capture::begin(&sse, 1 << 16).unwrap();
        c.feed(body.as_bytes());
        c.finish(None, 0).is_some()
    };
    assert!(kept("data: {\"a\":1}\n\ndata: [DONE]\n\n"));
    assert!(kept(
        "event: response.created\ndata: {}\n\nevent: response.completed\ndata: {}\n\n"
    ));
    assert!(!kept("data: {\"a\":1}\n\n"), "broke off before its end");
    assert!(!kept(
        "data: {\"error\":{\"code\":\"500\"}}\n\ndata: [DONE]\n\n"
    ));
    assert!(!kept(
        "event: error\ndata: {}\n\nevent: response.completed\ndata: {}\n\n"
    ));
}
