//! The request body is re-sent byte for byte on every try, far past Pingora's 64 KiB replay
//! buffer, and bodies over the limit are refused before any backend sees them.

use aoai_sim::Fault;
use sha2::{Digest, Sha256};

use crate::common::*;

fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A JSON chat body of about `size` bytes, with content that varies along its length.
fn body_of(size: usize) -> Vec<u8> {
    let filler: String = (0..size)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    serde_json::to_vec(&serde_json::json!({"messages": [{"role": "user", "content": filler}]}))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_from_1kb_to_8mb_are_replayed_exactly() {
    let id = identity().await;
    let b = backends(3).await;
    let yaml = format!(
        "{}health: {{failures: 100}}\n",
        mi_yaml(&[&b[0], &b[1], &b[2]])
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    for (round, size) in [1_000usize, 64 * 1024 + 1, 300_000, 2_000_000, 8_000_000]
        .into_iter()
        .enumerate()
    {
        let body = body_of(size);
        // Each round starts at b[round % 3]: that one and the next fail, the third answers.
        // (5xx rather than 429, which would leave the backend cooling for the next round.)
        let first = round % 3;
        b[first].push_fault(Fault::Status {
            status: 500,
            headers: vec![],
        });
        b[(first + 1) % 3].push_fault(Fault::Status {
            status: 502,
            headers: vec![],
        });
        let r = client()
            .post(proxy.url(CHAT))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "size {size}");
        let want = sha(&body);
        for (i, backend) in b.iter().enumerate() {
            let got = backend
                .recorded()
                .last()
                .map(|r| sha(&r.body))
                .unwrap_or_default();
            assert_eq!(got, want, "size {size}: backend {i} got a different body");
            assert_eq!(
                backend.recorded().last().unwrap().headers["content-length"],
                body.len().to_string()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_is_replayed_exactly() {
    let id = identity().await;
    let b = backends(2).await;
    b[0].push_fault(Fault::throttle(1));
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    let body = body_of(500_000);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(10_000).map(|c| Ok(c.to_vec())).collect();
    let stream = futures_util::stream::iter(chunks);
    let r = client()
        .post(proxy.url(CHAT))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for backend in &b {
        assert_eq!(sha(&backend.recorded()[0].body), sha(&body));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413_and_reaches_no_backend() {
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(
        &format!("{}limits: {{max_body_bytes: 1MiB}}\n", mi_yaml(&[&b])),
        Some(&id),
    );
    // The proxy answers 413 and closes while the body still arrives: now and then the client's
    // send fails on the reset before it reads the answer (there is no lingering close), so up
    // to three sends; every answer read must be the 413.
    let mut answered = None;
    for _ in 0..3 {
        let sent = client()
            .post(proxy.url(CHAT))
            .body(body_of(2_000_000))
            .send()
            .await;
        if let Ok(r) = sent {
            answered = Some(r);
            break;
        }
    }
    let r = answered.expect("no answer in three sends");
    assert_eq!(r.status(), 413);
    assert_eq!(
        azure_error_code(&r.text().await.unwrap()),
        "RequestEntityTooLarge"
    );
    // Chunked, so the size is only known while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body_of(2_000_000)
        .chunks(50_000)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let r = client()
        .post(proxy.url(CHAT))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    assert_eq!(b.requests(), 0);
    // Just under the limit passes.
    let r = client()
        .post(proxy.url(CHAT))
        .body(body_of(1_000_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_during_the_upload_goes_to_the_client() {
    let id = identity().await;
    let b = backends(2).await;
    b[0].push_fault(Fault::EarlyStatus(413));
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    let r = client()
        .post(proxy.url(CHAT))
        .body(body_of(8_000_000))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        413,
        "the backend's own early 413 must reach the client"
    );
    assert_eq!(b[1].requests(), 0, "a 413 is not retried");
}
