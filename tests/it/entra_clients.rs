//! Clients with their own Entra ID token (`client_auth.entra`): accepted when signed by the
//! tenant's keys (fetched from a local JWKS endpoint, keys made in the test), for the audience,
//! from the tenant's issuer and unexpired, and when their `oid`/`azp`/`appid` names a client.
//! The token never reaches a backend.

use std::time::{SystemTime, UNIX_EPOCH};

use aoai_sim::{JwksEndpoint, SigningKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::common::*;

const TENANT: &str = "7f0c5d6e-0000-4000-8000-000000000001";
const AUDIENCE: &str = "api://aoai-proxy";
const ISSUER: &str = "https://sts.windows.net/7f0c5d6e-0000-4000-8000-000000000001/";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with `key`, with these claims over a valid default.
fn token(key: &SigningKey, claims: serde_json::Value) -> String {
    let mut all = json!({"aud": AUDIENCE, "iss": ISSUER, "exp": now() + 3600, "iat": now(),
                         "oid": "11111111-aaaa-4000-8000-000000000001"});
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &all, &EncodingKey::from_rsa_der(&key.private_der)).unwrap()
}

async fn chat_with(proxy: &Proxy, bearer: &str) -> u16 {
    client()
        .post(proxy.url(CHAT))
        .bearer_auth(bearer)
        .json(&chat_body())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_of_a_known_identity_is_let_in_and_nothing_else() {
    let id = identity().await;
    let b = backend("b0").await;
    let key = SigningKey::generate("key-1").unwrap();
    let stranger = SigningKey::generate("key-1").unwrap();
    let jwks = JwksEndpoint::start(json!({"keys": [key.jwk]}))
        .await
        .unwrap();
    let proxy = Proxy::start(
        &format!(
            "{}client_auth:\n  entra: {{tenant: {TENANT}, audience: \"{AUDIENCE}\", jwks_url: \"{}\"}}\nclients:\n  - {{name: batch-job, entra_ids: [11111111-AAAA-4000-8000-000000000001]}}\n  - {{name: app-two, entra_ids: [22222222-bbbb-4000-8000-000000000002]}}\n  - {{name: team-a, key: key-a}}\n",
            mi_yaml(&[&b]),
            jwks.url(TENANT)
        ),
        Some(&id),
    );
    // The keys are fetched at start; wait for that before the first token.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while jwks.fetches() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the keys were never fetched"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let good = token(&key, json!({}));
    let mut accepted = chat_with(&proxy, &good).await;
    for _ in 0..50 {
        if accepted != 503 {
            break; // 503 only until the fetched keys are in place
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        accepted = chat_with(&proxy, &good).await;
    }
    assert_eq!(accepted, 200);
    let seen = b.recorded();
    let sent = &seen.last().unwrap().headers;
    assert_ne!(
        sent["authorization"].to_str().unwrap(),
        format!("Bearer {good}"),
        "the client's token reached the backend"
    );
    proxy.wait_for_log("client=batch-job").await;

    // An application (azp / appid) is named the same way.
    let app = token(
        &key,
        json!({"oid": null, "azp": "22222222-bbbb-4000-8000-000000000002"}),
    );
    assert_eq!(chat_with(&proxy, &app).await, 200);
    proxy.wait_for_log("client=app-two").await;
    // Keys still work beside tokens.
    let r = client()
        .post(proxy.url(CHAT))
        .header("api-key", "key-a")
        .json(&chat_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let served = b.requests();

    for (why, bad) in [
        ("expired", token(&key, json!({"exp": now() - 3600}))),
        (
            "another audience",
            token(&key, json!({"aud": "api://something-else"})),
        ),
        (
            "another issuer",
            token(&key, json!({"iss": "https://sts.windows.net/other/"})),
        ),
        (
            "an identity no client has",
            token(&key, json!({"oid": "33333333-cccc-4000-8000-000000000003"})),
        ),
        (
            "signed by another key with the same kid",
            token(&stranger, json!({})),
        ),
        ("tampered", {
            let mut parts: Vec<String> = good.split('.').map(String::from).collect();
            parts[1] = token(&key, json!({"oid": "22222222-bbbb-4000-8000-000000000002"}))
                .split('.')
                .nth(1)
                .unwrap()
                .to_string();
            parts.join(".")
        }),
    ] {
        assert_eq!(
            chat_with(&proxy, &bad).await,
            401,
            "a token {why} was let in"
        );
    }
    assert_eq!(b.requests(), served, "a refused token reached a backend");

    // A token naming a key the proxy has not seen makes it fetch the keys again (a rotation).
    let rotated = SigningKey::generate("key-2").unwrap();
    jwks.set_keys(json!({"keys": [key.jwk, rotated.jwk]}));
    let fetches = jwks.fetches();
    let new = token(&rotated, json!({}));
    assert_eq!(chat_with(&proxy, &new).await, 401, "unknown until fetched");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if jwks.fetches() > fetches && chat_with(&proxy, &new).await == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated key was never fetched"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!proxy.log().contains(&good), "a client token is in the log");
}
