//! What the response cache keys a request body by (`cache::key`): key order and spacing never
//! change a JSON object's exact key, and its canonical form reads back as the same value and is
//! its own canonical form (where serde_json reads its floats back: [`floats_round_trip`]); a
//! semantic bucket comes with user text and is never an exact key; and
//! `ResponseCache::cacheable` never panics, and keys what it accepts by the body as parsed.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

use aoai_proxy::cache::key::{write_canonical, Prefix};
use aoai_proxy::cache::local::LocalEntries;
use aoai_proxy::cache::semantic::SemanticIndex;
use aoai_proxy::cache::ResponseCache;
use aoai_proxy::config::{Cache, CacheScope, Semantic};
use aoai_proxy::request::{query, Request};

/// The prefix the key properties are checked under (any would do: it is hashed, not parsed).
const AT: Prefix = Prefix {
    scope: "team-a",
    deployment: "gpt-4o",
    path: "/openai/deployments/gpt-4o/chat/completions",
    api_version: "2024-10-21",
};

/// Every body is sent to each: one of every operation cached, the `/openai/v1/` ones naming
/// their deployment in the body's `model`.
const TARGETS: [&str; 6] = [
    "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
    "/openai/v1/chat/completions",
    "/openai/deployments/gpt-4o/completions?api-version=2024-10-21",
    "/openai/deployments/gpt-4o/embeddings?api-version=2024-10-21",
    "/openai/v1/responses",
    "/openai/responses?api-version=preview",
];

/// A cache of every deployment, with the semantic lookup on (so chat requests get a bucket),
/// made once: `cacheable` only reads it.
static CACHE: LazyLock<ResponseCache> = LazyLock::new(|| ResponseCache {
    config: Cache {
        ttl: Duration::from_secs(60),
        max_bytes: 1 << 20,
        max_entry_bytes: 1 << 16,
        scope: CacheScope::Client,
        deployments: None,
        semantic: Some(Semantic {
            embeddings_deployment: "emb".into(),
            threshold: 0.9,
            deadline: Duration::from_millis(100),
            max_entries: 10,
        }),
    },
    entries: Arc::new(LocalEntries::new(1 << 20)),
    index: Some(SemanticIndex::new(10, Duration::from_secs(60))),
});

/// `v` in canonical form.
fn canonical(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    out
}

/// The canonical form and the keys of a body that is a JSON object.
fn check_key(value: &Value) {
    let key = AT.exact(value);
    assert_eq!(AT.exact(&reversed(value)), key, "key order changed the key");
    if let Some((bucket, text)) = AT.semantic(value) {
        assert!(!text.trim().is_empty(), "a bucket without user text");
        assert_ne!(bucket, key, "a bucket is an exact key");
    }
    if !floats_round_trip(value) {
        return;
    }
    let bytes = canonical(value);
    let back: Value = serde_json::from_slice(&bytes).expect("the canonical form is JSON");
    assert_eq!(
        &back, value,
        "the canonical form reads back as the same value"
    );
    assert_eq!(canonical(&back), bytes, "the canonical form is its own");
    assert_eq!(AT.exact(&back), key, "key order or spacing changed the key");
}

/// `v` with every object's keys in the reverse of their order (serde_json keeps the order
/// read: `preserve_order`), built in memory so that no number is read again.
fn reversed(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .rev()
                .map(|(k, x)| (k.clone(), reversed(x)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(reversed).collect()),
        scalar => scalar.clone(),
    }
}

/// Whether every float in `v` reads back as itself from serde_json's own writing of it.
///
/// NOTE: without its `float_roundtrip` feature (off in this crate tree), serde_json reads a
/// float to within one ULP, not correctly rounded: the 95-digit integer `111...1128` reads as
/// 1.1111111111111109e94, is written `1.1111111111111109e94`, and that reads as
/// 1.1111111111111107e94 (correctly rounded, both are 1.111111111111111e94). No writer's output
/// reads back as such a value, so the canonical form is checked only where every float can;
/// with `float_roundtrip` on, that is every value.
fn floats_round_trip(v: &Value) -> bool {
    match v {
        Value::Number(n) if n.is_f64() => {
            serde_json::from_str::<Value>(&n.to_string()).is_ok_and(|back| back == *v)
        }
        Value::Array(items) => items.iter().all(floats_round_trip),
        Value::Object(map) => map.values().all(floats_round_trip),
        _ => true,
    }
}

/// `body` sent to `target`: whatever `cacheable` says, it does not panic, and a request it
/// accepts is a JSON object keyed as [`Prefix`] keys that object.
fn check_cacheable(target: &str, body: &[u8], value: Option<&Value>) {
    let Ok(head) = pingora_http::RequestHeader::build("POST", target.as_bytes(), None) else {
        return;
    };
    let Ok(request) = Request::read(&head, Bytes::copy_from_slice(body), false) else {
        return;
    };
    let Some(found) = CACHE.cacheable(&head, &request, Some("team-a")) else {
        return;
    };
    let value = value.expect("a cacheable body is a JSON object");
    let api_version = query::param(head.uri.query(), "api-version");
    let prefix = Prefix {
        scope: "team-a",
        deployment: request
            .deployment()
            .expect("a cacheable request names its deployment"),
        path: head.uri.path(),
        api_version: api_version.as_deref().unwrap_or_default(),
    };
    assert_eq!(found.key, prefix.exact(value), "{target}");
    let chat = head.uri.path().ends_with("/chat/completions");
    let semantic = if chat { prefix.semantic(value) } else { None };
    assert_eq!(found.semantic, semantic, "{target}");
    assert!(found.look_up && found.store, "no Cache-Control was sent");
}

fuzz_target!(|body: &[u8]| {
    let value = serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object);
    if let Some(value) = &value {
        check_key(value);
    }
    for target in TARGETS {
        check_cacheable(target, body, value.as_ref());
    }
});
