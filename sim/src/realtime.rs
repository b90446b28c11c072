//! The Realtime API's WebSocket (`/openai/realtime?deployment=D`, `/openai/v1/realtime?model=D`):
//! a session that announces itself (`session.created`, naming the backend), echoes each text
//! message as JSON and each binary message as it is, and closes when the client or the test
//! ([`Sessions::close_all`]) says so.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::request::Parts;
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use hyper::Response;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::objects::new_id;
use super::{azure_error, Body};

/// How long a session that closes waits for the client's Close before it ends anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The Realtime sessions of one backend: how many are open, and a signal that closes them.
pub(crate) struct Sessions {
    open: AtomicUsize,
    /// Bumped by [`Sessions::close_all`]; each session watches it.
    close: watch::Sender<u64>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            open: AtomicUsize::new(0),
            close: watch::Sender::new(0),
        }
    }
}

impl Sessions {
    /// Sessions open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Makes every open session send a Close (1000) and end.
    pub(crate) fn close_all(&self) {
        self.close.send_modify(|n| *n += 1);
    }
}

/// Counts a session open while it lives.
struct Open(Arc<Sessions>);

impl Open {
    fn new(sessions: Arc<Sessions>) -> Open {
        sessions.open.fetch_add(1, Ordering::SeqCst);
        Open(sessions)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether `path` is the Realtime endpoint.
pub(crate) fn is_realtime(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "/openai/realtime" | "/openai/v1/realtime"
    )
}

/// Answers a WebSocket upgrade with 101 and starts the session on the upgraded connection;
/// a request that is no upgrade gets a 400.
pub(crate) fn accept(sessions: &Arc<Sessions>, backend: &str, parts: &mut Parts) -> Response<Body> {
    let upgrade = parts
        .headers
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = parts.headers.get("sec-websocket-key");
    let (true, Some(key)) = (upgrade, key) else {
        return azure_error(400, "400", "The Realtime API needs a WebSocket upgrade.");
    };
    let accept = derive_accept_key(key.as_bytes());
    let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        return azure_error(400, "400", "This connection cannot be upgraded.");
    };
    let query = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes());
    let model = query
        .filter(|(k, _)| k == "deployment" || k == "model")
        .map(|(_, v)| v.into_owned())
        .next()
        .unwrap_or_else(|| "gpt-4o-realtime-preview".into());
    tokio::spawn(session(
        on_upgrade,
        sessions.clone(),
        backend.to_string(),
        model,
    ));
    Response::builder()
        .status(101)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
        .unwrap_or_default()
}

/// One session, from the upgrade to the close.
async fn session(on_upgrade: OnUpgrade, sessions: Arc<Sessions>, backend: String, model: String) {
    let Ok(upgraded) = on_upgrade.await else {
        return;
    };
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    let mut close = sessions.close.subscribe();
    let _open = Open::new(sessions);
    let created = json!({
        "type": "session.created", "event_id": new_id("event_"),
        "session": {"id": new_id("sess_"), "object": "realtime.session", "model": model,
                    "backend": backend},
    });
    if ws.send(Message::text(created.to_string())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            _ = close.changed() => {
                let frame = CloseFrame { code: CloseCode::Normal, reason: "closed by the backend".into() };
                if ws.close(Some(frame)).await.is_ok() {
                    // Read until the client's Close arrives (or it goes away), bounded.
                    let _ = tokio::time::timeout(CLOSE_WAIT, async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                }
                return;
            }
            message = ws.next() => {
                let sent = match message {
                    None | Some(Err(_)) => return,
                    Some(Ok(Message::Text(text))) => {
                        let received = serde_json::from_str::<Value>(text.as_str())
                            .unwrap_or_else(|_| Value::String(text.to_string()));
                        let echo = json!({"type": "echo", "backend": backend, "received": received});
                        ws.send(Message::text(echo.to_string())).await
                    }
                    Some(Ok(Message::Binary(bytes))) => ws.send(Message::Binary(bytes)).await,
                    // Tungstenite queued the Pong (or the Close's answer): send it now.
                    Some(Ok(Message::Ping(_))) => ws.flush().await,
                    Some(Ok(Message::Close(_))) => {
                        let _ = ws.flush().await;
                        return;
                    }
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => Ok(()),
                };
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, BackendOptions, Fault};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error as WsError;

    async fn backend() -> Backend {
        Backend::start(BackendOptions {
            name: "rt-a".into(),
            ..Default::default()
        })
        .await
        .expect("the simulator binds 127.0.0.1:0")
    }

    /// A WebSocket request to `b`'s Realtime endpoint, with a key unless `key` is false.
    fn request(
        b: &Backend,
        path: &str,
        key: bool,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        let mut req = format!("ws://{}{path}", b.addr())
            .into_client_request()
            .expect("a valid ws URL");
        if key {
            req.headers_mut()
                .insert("api-key", http::HeaderValue::from_static("k"));
        }
        req
    }

    async fn next_json<S>(ws: &mut S) -> Value
    where
        S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
    {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).expect("JSON text"),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Polls `f` until it holds, for at most five seconds.
    async fn eventually(f: impl Fn() -> bool) -> bool {
        for _ in 0..500 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f()
    }

    #[tokio::test]
    async fn session_echoes_pings_and_closes() {
        let b = backend().await;
        let req = request(
            &b,
            "/openai/realtime?api-version=2024-10-01-preview&deployment=gpt-4o-rt",
            true,
        );
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("101");
        assert_eq!(resp.headers()["x-sim-backend"], "rt-a");
        let created = next_json(&mut ws).await;
        assert_eq!(created["type"], "session.created");
        assert_eq!(created["session"]["model"], "gpt-4o-rt");
        assert_eq!(created["session"]["backend"], "rt-a");
        assert!(created["session"]["id"]
            .as_str()
            .unwrap()
            .starts_with("sess_"));
        assert_eq!(b.realtime_sessions(), 1);

        ws.send(Message::text(r#"{"type":"session.update"}"#))
            .await
            .unwrap();
        let echo = next_json(&mut ws).await;
        assert_eq!(echo["type"], "echo");
        assert_eq!(echo["backend"], "rt-a");
        assert_eq!(echo["received"]["type"], "session.update");
        ws.send(Message::text("not json")).await.unwrap();
        assert_eq!(next_json(&mut ws).await["received"], "not json");

        ws.send(Message::Binary(vec![1u8, 2, 3].into()))
            .await
            .unwrap();
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &[1, 2, 3]),
            other => panic!("expected the binary echo, got {other:?}"),
        }
        ws.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"hi"),
            other => panic!("expected a pong, got {other:?}"),
        }

        ws.close(None).await.unwrap();
        while let Some(Ok(m)) = ws.next().await {
            assert!(m.is_close(), "only the close's answer is left: {m:?}");
        }
        assert!(eventually(|| b.realtime_sessions() == 0).await);
    }

    #[tokio::test]
    async fn backend_close_reaches_the_client() {
        let b = backend().await;
        let req = request(&b, "/openai/v1/realtime?model=gpt-realtime", true);
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("101");
        assert_eq!(next_json(&mut ws).await["session"]["model"], "gpt-realtime");
        b.close_realtime();
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("expected a close, got {other:?}"),
        }
        while ws.next().await.is_some() {}
        assert!(eventually(|| b.realtime_sessions() == 0).await);
    }

    #[tokio::test]
    async fn faults_and_auth_answer_before_the_upgrade() {
        let b = backend().await;
        let path = "/openai/realtime?api-version=2024-10-01-preview&deployment=d";
        b.push_fault(Fault::throttle(2));
        match tokio_tungstenite::connect_async(request(&b, path, true)).await {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status(), 429);
                assert_eq!(resp.headers()["retry-after"], "2");
            }
            other => panic!("expected a 429, got {other:?}"),
        }
        match tokio_tungstenite::connect_async(request(&b, path, false)).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("expected a 401, got {other:?}"),
        }
        assert_eq!(b.realtime_sessions(), 0);
    }
}
