//! Micro-benchmarks of the pure code on the request path: backend selection (the real
//! `Pool::select_costing`, with cooling and ejected backends), the token read and header rewrite, the
//! retry decision, Retry-After parsing, and reading a request (its typed view).
//!
//! Run: `cargo bench --bench micro`.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use aoai_proxy::balance::{cooldown, Credential, Pool};
use aoai_proxy::config::Config;
use aoai_proxy::credentials::TokenCache;
use aoai_proxy::outcome::{Failure, Outcome, Sent};
use aoai_proxy::proxy::headers;
use aoai_proxy::request::Request;
use aoai_proxy::retry::{self, Tries};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderValue, StatusCode};
use pingora::http::RequestHeader;

/// Four backends in two priority groups, taking the proxy's token.
fn pool() -> Pool {
    let yaml = "listen: [\"127.0.0.1:1\"]\nauth: {kind: managed_identity}\nbackends:\n  - {url: \"http://127.0.0.1:1001\", weight: 2}\n  - {url: \"http://127.0.0.1:1002\"}\n  - {url: \"http://127.0.0.1:1003\"}\n  - {url: \"http://127.0.0.1:1004\", priority: 1}\n";
    Pool::new(&Config::from_yaml(yaml).expect("config"), None).expect("pool")
}

fn selection(c: &mut Criterion) {
    let p = pool();
    let token = Some(HeaderValue::from_static("Bearer e30.e30.sig"));
    let gpt = Some("gpt-4o");
    c.bench_function("select: first try, all healthy", |b| {
        b.iter(|| {
            black_box(
                p.select_costing(gpt, 0, token.clone(), Instant::now())
                    .map(|(_, pick)| pick),
            )
        })
    });
    p.get(0)
        .standing
        .cool(gpt, Duration::from_secs(3600), "bench");
    for _ in 0..3 {
        p.observe(1, Outcome::Failed(Failure::Connect), None, gpt);
    }
    c.bench_function("select: first try, one cooling, one ejected", |b| {
        b.iter(|| {
            black_box(
                p.select_costing(gpt, 0, token.clone(), Instant::now())
                    .map(|(_, pick)| pick),
            )
        })
    });
    c.bench_function("select: three tries", |b| {
        b.iter(|| {
            let (mut s, first) = p
                .select_costing(gpt, 0, token.clone(), Instant::now())
                .expect("a backend");
            black_box(first);
            for _ in 0..2 {
                black_box(s.next(Instant::now()));
            }
        })
    });
}

fn token_and_headers(c: &mut Criterion) {
    let cache = TokenCache::default();
    let far = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    cache.store(&"e".repeat(1500), far).expect("token");
    c.bench_function("token: read the cached header", |b| {
        b.iter(|| black_box(cache.token()))
    });
    let mut client = RequestHeader::build(
        "POST",
        b"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        None,
    )
    .expect("request");
    for (k, v) in [
        ("host", "proxy"),
        ("api-key", "client-key"),
        ("content-type", "application/json"),
        ("user-agent", "AzureOpenAI/Python 1.0"),
        ("x-stainless-lang", "python"),
        ("content-length", "64"),
    ] {
        client.insert_header(k, v).expect("header");
    }
    let host = http::HeaderValue::from_static("aoai-eastus.openai.azure.com");
    let body = Bytes::from_static(br#"{"messages":[{"role":"user","content":"Hello"}]}"#);
    let token = cache.token().expect("token");
    let path = client.raw_path().to_vec();
    c.bench_function("headers: build the upstream request (framed)", |b| {
        b.iter(|| {
            let credential = Credential::EntraToken(token.header.clone());
            let added = headers::Added {
                host: &host,
                credential: &credential,
                traceparent: None,
                continues: false,
            };
            black_box(headers::framed(&client, &path, added, body.len()))
        })
    });
    c.bench_function(
        "headers: serialize the upstream request with its body",
        |b| {
            b.iter(|| {
                let credential = Credential::EntraToken(token.header.clone());
                let added = headers::Added {
                    host: &host,
                    credential: &credential,
                    traceparent: None,
                    continues: false,
                };
                let mut wire = headers::wire(&client, &path, added, body.len(), body.len());
                if let Some(w) = wire.as_mut() {
                    w.extend_from_slice(&body);
                }
                black_box(wire)
            })
        },
    );
}

fn decisions(c: &mut Criterion) {
    let tries = |made| Tries {
        made,
        max: 3,
        sent: Sent::EntraToken,
        token_refreshed: false,
    };
    c.bench_function("retry: decide", |b| {
        b.iter(|| {
            let throttled = black_box(Outcome::Status(StatusCode::TOO_MANY_REQUESTS));
            black_box(retry::decide(tries(1), throttled, || Some(1usize)));
            let failed = black_box(Outcome::Failed(Failure::Connect));
            black_box(retry::decide(tries(3), failed, || Some(1usize)));
        })
    });
    let mut h = http::HeaderMap::new();
    h.insert("retry-after-ms", "1500".parse().expect("value"));
    let now = SystemTime::now();
    c.bench_function("retry-after: retry-after-ms", |b| {
        b.iter(|| black_box(cooldown::requested_cooldown(&h, now)))
    });
    let mut h = http::HeaderMap::new();
    h.insert(
        "retry-after",
        "Tue, 14 Nov 2023 22:13:50 GMT".parse().expect("value"),
    );
    h.insert("x-ratelimit-reset-tokens", "6m0s".parse().expect("value"));
    c.bench_function("retry-after: http date", |b| {
        b.iter(|| black_box(cooldown::requested_cooldown(&h, now)))
    });
    let body =
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}],"stream":true}"#;
    let in_path = RequestHeader::build(
        "POST",
        b"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        None,
    )
    .expect("request");
    let chat = Bytes::from_static(br#"{"messages":[{"role":"user","content":"Hello"}]}"#);
    c.bench_function("request: read, deployment in the path", |b| {
        b.iter(|| {
            let r = Request::read(&in_path, chat.clone(), false).expect("a request");
            black_box((r.objects(), r.deployment().map(str::len)))
        })
    });
    let v1 = RequestHeader::build("POST", b"/openai/v1/chat/completions", None).expect("request");
    let body = Bytes::from_static(body);
    c.bench_function("request: read, model in a /openai/v1 body", |b| {
        b.iter(|| {
            let r = Request::read(&v1, body.clone(), false).expect("a request");
            black_box((r.estimate_tokens(), r.deployment().map(str::len)))
        })
    });
}

criterion_group!(benches, selection, token_and_headers, decisions);
criterion_main!(benches);
