//! What the response cache keys a request body by (`cache::key`): a JSON object's canonical
//! form (strings and numbers kept as written) reads back as the same value and is its own
//! canonical form, so spacing never changes the exact key, nor key order (checked on the
//! object written by serde_json with every object's keys reversed), nor the tree form's (the
//! semantic bucket's); a semantic bucket comes with user text and is never an
//! exact key; and `ResponseCache::cacheable` never panics, and keys what it accepts as
//! `Prefix` keys the body.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

use aoai_proxy::cache::key::{canonical, write_canonical, Prefix};
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
static CACHE: LazyLock<ResponseCache> = LazyLock::new(|| {
    ResponseCache::new(
        Cache {
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
        Arc::new(LocalEntries::new(1 << 20)),
        Some(Arc::new(SemanticIndex::new(
            10,
            Duration::from_secs(60),
            "emb",
        ))),
    )
});

/// The canonical form and the keys of `body`, a JSON object (`value` as read).
fn check_key(body: &[u8], value: &Value) {
    // None: a key given twice, or nested too deep; then nothing is cacheable (checked below).
    let Some(bytes) = canonical(body) else {
        return;
    };
    let back: Value = serde_json::from_slice(&bytes).expect("the canonical form is JSON");
    // Strings and numbers are kept as written, so they read back as the body's did.
    assert_eq!(
        &back, value,
        "the canonical form reads back as the same value"
    );
    assert_eq!(
        canonical(&bytes).as_ref(),
        Some(&bytes),
        "the canonical form is its own"
    );
    let key = AT.exact(body).expect("a canonical form has a key");
    assert_eq!(AT.exact(&bytes), Some(key), "spacing changed the key");
    // The same object written with every object's keys reversed (by serde_json, both).
    let (written, turned) = (to_vec(value), to_vec(&reversed(value)));
    assert_eq!(
        AT.exact(&written),
        AT.exact(&turned),
        "key order changed the key"
    );
    if let Some((bucket, text)) = AT.semantic(value, "emb") {
        assert!(!text.trim().is_empty(), "a bucket without user text");
        assert_ne!(bucket, key, "a bucket is an exact key");
    }
    // The tree form (the semantic bucket's) does not depend on key order either.
    let (mut tree, mut turned_tree) = (Vec::new(), Vec::new());
    write_canonical(value, &mut tree);
    write_canonical(&reversed(value), &mut turned_tree);
    assert_eq!(tree, turned_tree, "key order changed the tree's form");
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a value is written")
}

/// `v` with every object's keys in the reverse of their order (serde_json keeps the order
/// read: `preserve_order`).
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
    // A body serde_json cannot read into a tree (a number out of range) is still JSON, read raw.
    let raw: &serde_json::value::RawValue =
        serde_json::from_slice(body).expect("a cacheable body is JSON");
    assert!(
        raw.get().trim_start().starts_with('{'),
        "a cacheable body is a JSON object"
    );
    let api_version = query::param(head.uri.query(), "api-version");
    let prefix = Prefix {
        scope: "team-a",
        deployment: request
            .deployment()
            .expect("a cacheable request names its deployment"),
        path: head.uri.path(),
        api_version: api_version.as_deref().unwrap_or_default(),
    };
    assert_eq!(Some(found.key), prefix.exact(body), "{target}");
    let chat = head.uri.path().ends_with("/chat/completions");
    let semantic = match (chat, value) {
        (true, Some(value)) => prefix.semantic(value, "emb"),
        _ => None,
    };
    assert_eq!(found.semantic, semantic, "{target}");
    assert!(found.look_up && found.store, "no Cache-Control was sent");
}

fuzz_target!(|body: &[u8]| {
    let value = serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object);
    if let Some(value) = &value {
        check_key(body, value);
    }
    for target in TARGETS {
        check_cacheable(target, body, value.as_ref());
    }
});
