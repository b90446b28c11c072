//! `clients`: a request without a valid key gets 401 and reaches no backend.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configured_keys_get_through() {
    let id = identity().await;
    let b = backend("b0").await;
    let yaml = format!(
        "{}clients:\n  - {{name: team-a, key: key-a}}\n  - {{name: team-b, key: key-b}}\n",
        mi_yaml(&[&b])
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    let send = |header: Option<(&'static str, &'static str)>| {
        let mut req = client().post(proxy.url(CHAT)).json(&chat_body());
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for bad in [
        None,
        Some(("api-key", "nope")),
        Some(("authorization", "Bearer nope")),
        Some(("authorization", "Basic a2V5LWE=")),
    ] {
        let (status, body) = send(bad).await;
        assert_eq!(status, 401, "{bad:?}");
        assert_eq!(azure_error_code(&body), "401");
    }
    assert_eq!(b.requests(), 0);
    assert_eq!(send(Some(("api-key", "key-a"))).await.0, 200);
    assert_eq!(send(Some(("authorization", "Bearer key-b"))).await.0, 200);
    assert_eq!(b.requests(), 2);
    // The client's key is not forwarded; the backend gets the proxy's token.
    for r in b.recorded() {
        assert_eq!(r.headers["authorization"], "Bearer sim-token-1");
    }
    proxy.wait_for_log("client=team-a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_can_be_given_by_the_sha256_of_its_key() {
    use sha2::{Digest, Sha256};
    let id = identity().await;
    let b = backend("b0").await;
    let digest: String = Sha256::digest(b"key-c")
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    let yaml = format!(
        "{}clients:\n  - {{name: team-c, key_sha256: {digest}}}\n",
        mi_yaml(&[&b])
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    let send = |key: &str| {
        let req = client()
            .post(proxy.url(CHAT))
            .header("api-key", key)
            .json(&chat_body());
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send("key-c").await, 200);
    // Someone who read the configuration, and sends what it holds.
    assert_eq!(send(&digest).await, 401, "the digest is not the key");
    assert_eq!(send("key-d").await, 401);
    assert_eq!(b.requests(), 1);
    proxy.wait_for_log("client=team-c").await;
}
