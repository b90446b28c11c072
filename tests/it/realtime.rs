//! The Realtime API over WebSocket: the upgrade is picked, credentialed and retried like any
//! request; after the 101 frames pass both ways untouched, and a close on either side closes
//! the other; the session counts as one request.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const REALTIME: &str = "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-4o-realtime";

/// Opens a Realtime session through the proxy with `key` as `api-key`; or the HTTP status
/// that refused it.
async fn open(proxy: &Proxy, path: &str, key: Option<&str>) -> Result<Socket, u16> {
    let url = format!("ws://127.0.0.1:{}{path}", proxy.port);
    let mut req = url.into_client_request().unwrap();
    if let Some(key) = key {
        req.headers_mut().insert("api-key", key.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((socket, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(socket)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    }
}

/// The next message, within 10 s.
async fn next(socket: &mut Socket) -> Message {
    tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("no message within 10 s")
        .expect("the socket ended")
        .expect("a websocket error")
}

async fn next_json(socket: &mut Socket) -> Value {
    match next(socket).await {
        Message::Text(t) => serde_json::from_str(&t).expect("json"),
        other => panic!("not text: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_passes_frames_both_ways_with_the_proxys_credential() {
    let id = identity().await;
    let b = backends(2).await;
    let yaml = format!(
        "{}clients:\n  - {{name: app, key: client-key}}\n",
        mi_yaml(&[&b[0], &b[1]])
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    assert_eq!(
        open(&proxy, REALTIME, None).await.err(),
        Some(401),
        "no key, no session"
    );
    let mut s = open(&proxy, REALTIME, Some("client-key"))
        .await
        .expect("session");
    let hello = next_json(&mut s).await;
    assert_eq!(hello["type"], "session.created");
    assert_eq!(hello["session"]["model"], "gpt-4o-realtime");
    let name = hello["session"]["backend"].as_str().unwrap().to_string();
    let used = &b[if name == "b0" { 0 } else { 1 }];
    // The backend got the proxy's token, not the client's key.
    let upgrade = used.recorded().into_iter().last().unwrap();
    assert_eq!(upgrade.headers["authorization"], "Bearer sim-token-1");
    assert!(upgrade.headers.get("api-key").is_none());

    s.send(Message::text(
        r#"{"type":"input_audio_buffer.append","audio":"AAAA"}"#,
    ))
    .await
    .unwrap();
    let echo = next_json(&mut s).await;
    assert_eq!(echo["received"]["audio"], "AAAA");
    assert_eq!(echo["backend"], name.as_str());
    let audio: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    s.send(Message::binary(audio.clone())).await.unwrap();
    assert_eq!(
        next(&mut s).await,
        Message::binary(audio),
        "70 KB each way, untouched"
    );
    s.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut s).await,
        Message::Pong(b"are you there".to_vec().into())
    );

    // The client closes: the close reaches the backend, which closes back.
    s.close(None).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("close")
        {
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{e}"),
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while used.realtime_sessions() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the backend's side stayed open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One request, logged with its 101 and counted as a success (the 401 before it as not).
    let line = proxy.wait_for_log("GET /openai/realtime 101").await;
    assert!(line.contains(&format!("backend={name}")), "{line}");
    let ok = "aoai_proxy_responses_total{class=\"2xx\"}";
    let m = proxy.wait_for_metrics(ok, |m| metric(m, ok) >= 1.0).await;
    assert_eq!(metric(&m, ok), 1.0);
    assert_eq!(metric(&m, "aoai_proxy_requests_total"), 2.0);
    assert_eq!(metric(&m, "aoai_proxy_responses_total{class=\"4xx\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_upgrade_is_retried_on_the_next_backend() {
    let b = backends(2).await;
    let yaml = format!(
        "auth: {{kind: none}}\nbackends:\n  - {{url: \"{}\", name: b0, api_key: k}}\n  - {{url: \"{}\", name: b1, api_key: k}}\n",
        b[0].url(),
        b[1].url()
    );
    let proxy = Proxy::start(&yaml, None);
    b[0].push_fault(aoai_sim::Fault::throttle(30));
    b[1].push_fault(aoai_sim::Fault::throttle(30));
    // Both throttled: the client gets the last 429 as it was.
    assert_eq!(open(&proxy, REALTIME, None).await.err(), Some(429));
    let proxy = Proxy::start(&yaml, None);
    b[0].push_fault(aoai_sim::Fault::Drop);
    let mut s = open(&proxy, "/openai/v1/realtime?model=gpt-realtime", None)
        .await
        .expect("the second backend's session");
    let hello = next_json(&mut s).await;
    assert_eq!(hello["session"]["backend"], "b1");
    assert_eq!(hello["session"]["model"], "gpt-realtime");
    assert_eq!(b[1].recorded().last().unwrap().headers["api-key"], "k");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_closes_closes_the_client_and_a_browser_key_is_taken_off() {
    let b = backend("b0").await;
    let yaml = format!(
        "auth: {{kind: none}}\nbackends:\n  - {{url: \"{}\", name: b0, api_key: backend-key}}\nclients:\n  - {{name: web, key: browser-key}}\n",
        b.url()
    );
    let proxy = Proxy::start(&yaml, None);
    // A browser cannot set headers: its key comes in the query.
    let mut s = open(&proxy, &format!("{REALTIME}&api-key=browser-key"), None)
        .await
        .expect("session");
    let upgrade = b.recorded().into_iter().last().unwrap();
    assert!(!upgrade.uri.contains("browser-key"), "{}", upgrade.uri);
    assert!(
        upgrade.uri.contains("deployment=gpt-4o-realtime"),
        "{}",
        upgrade.uri
    );
    assert_eq!(upgrade.headers["api-key"], "backend-key");
    assert_eq!(next_json(&mut s).await["type"], "session.created");
    b.close_realtime();
    match next(&mut s).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected the backend's close, got {other:?}"),
    }
    assert!(!proxy.log().contains("browser-key"), "the key was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_is_named_once_and_renamed_for_the_backend() {
    let b = backend("b0").await;
    let yaml = format!(
        "auth: {{kind: none}}\nbackends:\n  - {{url: \"{}\", name: b0, api_key: k, deployments: {{gpt-realtime: rt-eastus}}}}\n",
        b.url()
    );
    let proxy = Proxy::start(&yaml, None);
    // Two names: which one would the backend read? Refused, and no backend asked.
    for path in [
        "/openai/v1/realtime?model=gpt-realtime&deployment=other",
        "/openai/v1/realtime?model=gpt-realtime&model=other",
    ] {
        assert_eq!(open(&proxy, path, None).await.err(), Some(400), "{path}");
    }
    assert_eq!(b.requests(), 0);
    let mut s = open(&proxy, "/openai/v1/realtime?model=gpt-realtime", None)
        .await
        .expect("session");
    assert_eq!(next_json(&mut s).await["session"]["model"], "rt-eastus");
    assert!(
        b.recorded()[0].uri.ends_with("?model=rt-eastus"),
        "{}",
        b.recorded()[0].uri
    );
}
