//! The Realtime API: `GET /openai/realtime` and `/openai/v1/realtime` upgraded to a WebSocket.
//! The upgrade request is an ordinary request to the try loop (a backend picked for the
//! deployment in its query, the client's key taken off and the backend's credential put on,
//! retried on a failure before the backend's `101`); after the `101`, the bytes of both
//! directions are copied as they come, frames untouched, until one side closes.
//!
//! NOTE: the tunnel copies bytes and parses no frame: Pingora's HTTP/1 sessions switch both
//! sides to pass-through on a `101` (`was_upgraded`), and a WebSocket needs nothing else from
//! a proxy (pings, pongs and closes are frames like any other).

use http::header;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::exchange::Answer;
use super::AoaiProxy;

/// Whether `path` is the Realtime API's.
pub fn is_realtime(path: &str) -> bool {
    matches!(path, "/openai/realtime" | "/openai/v1/realtime")
}

/// The deployment a Realtime request names: its query's `deployment=` (the preview API's) or
/// `model=` (the GA API's).
pub fn deployment(query: Option<&str>) -> Option<String> {
    let params = || query.into_iter().flat_map(|q| q.split('&'));
    let find = |name: &str| {
        params().find_map(|kv| {
            let v = kv.strip_prefix(name)?.strip_prefix('=')?;
            (!v.is_empty()).then(|| v.to_string())
        })
    };
    find("deployment").or_else(|| find("model"))
}

/// The subprotocol prefix by which browsers, which cannot set headers on a WebSocket, send a
/// key (`Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.KEY`).
const KEY_PROTOCOL: &str = "openai-insecure-api-key.";

/// The client key a Realtime upgrade carries where a browser puts it: the query's `api-key=`,
/// or a `openai-insecure-api-key.` subprotocol.
pub fn client_key(req: &RequestHeader) -> Option<&[u8]> {
    if let Some(query) = req.uri.query() {
        if let Some(key) = query.split('&').find_map(|kv| kv.strip_prefix("api-key=")) {
            return Some(key.as_bytes());
        }
    }
    let protocols = req
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)?
        .to_str()
        .ok()?;
    protocols
        .split(',')
        .find_map(|p| p.trim().strip_prefix(KEY_PROTOCOL))
        .map(str::as_bytes)
}

/// Takes the client's key out of a Realtime upgrade (the query's `api-key=` and the key
/// subprotocol), so that it never reaches a backend.
pub fn strip_client_key(req: &mut RequestHeader) -> Result<()> {
    if let Some(query) = req.uri.query() {
        if query.split('&').any(|kv| kv.starts_with("api-key=")) {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| !kv.starts_with("api-key="))
                .collect();
            let mut target = req.uri.path().to_string();
            if !kept.is_empty() {
                target.push('?');
                target.push_str(&kept.join("&"));
            }
            req.set_raw_path(target.as_bytes())?;
        }
    }
    let protocols = req
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    if let Some(protocols) = protocols.filter(|p| p.contains(KEY_PROTOCOL)) {
        let kept: Vec<String> = protocols
            .split(',')
            .map(str::trim)
            .filter(|p| !p.starts_with(KEY_PROTOCOL))
            .map(str::to_string)
            .collect();
        match kept.is_empty() {
            true => {
                req.remove_header(&header::SEC_WEBSOCKET_PROTOCOL);
            }
            false => req.insert_header(header::SEC_WEBSOCKET_PROTOCOL, kept.join(", "))?,
        }
    }
    Ok(())
}

impl AoaiProxy {
    /// Gives the client the backend's `101` and copies bytes both ways until a side closes;
    /// a side that closes closes the other.
    pub(super) async fn tunnel(&self, session: &mut Session, answer: Answer) -> Result<()> {
        let Answer { head, session: up } = answer;
        let mut up = up;
        if let HttpSession::H1(h1) = &mut *up {
            h1.maybe_upgrade_body_writer();
        } else {
            return Error::e_explain(ErrorType::InternalError, "an upgrade over HTTP/2");
        }
        session
            .write_response_header(head, false)
            .await
            .map_err(|e| e.into_down())?;
        // A session may stay quiet for minutes (a voice call on hold); the peers ping.
        session.set_read_timeout(None);
        session.set_write_timeout(None);
        up.set_read_timeout(None);
        up.set_write_timeout(None);
        loop {
            tokio::select! {
                from_client = session.read_request_body() => {
                    match from_client.map_err(|e| e.into_down())? {
                        Some(bytes) => up.write_request_body(bytes, false).await.map_err(|e| e.into_up())?,
                        None => {
                            // The client closed: close the backend's side too.
                            let _ = up.finish_request_body().await;
                            up.shutdown().await;
                            break;
                        }
                    }
                }
                from_backend = up.read_response_body() => {
                    match from_backend.map_err(|e| e.into_up())? {
                        Some(bytes) => session
                            .write_response_body(Some(bytes), false)
                            .await
                            .map_err(|e| e.into_down())?,
                        None => {
                            let _ = session.write_response_body(None, true).await;
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployment_comes_from_the_query() {
        assert_eq!(
            deployment(Some("api-version=2025-04-01-preview&deployment=gpt-4o-rt")).as_deref(),
            Some("gpt-4o-rt")
        );
        assert_eq!(
            deployment(Some("model=gpt-realtime")).as_deref(),
            Some("gpt-realtime")
        );
        assert_eq!(deployment(Some("api-version=1")), None);
        assert_eq!(deployment(None), None);
    }

    #[test]
    fn a_browsers_key_is_read_and_taken_off() {
        let mut req = RequestHeader::build(
            "GET",
            b"/openai/realtime?api-version=1&api-key=secret&deployment=d",
            None,
        )
        .unwrap();
        req.insert_header(
            "sec-websocket-protocol",
            "realtime, openai-insecure-api-key.other",
        )
        .unwrap();
        assert_eq!(client_key(&req), Some(&b"secret"[..]));
        strip_client_key(&mut req).unwrap();
        assert_eq!(
            req.raw_path(),
            b"/openai/realtime?api-version=1&deployment=d"
        );
        assert_eq!(req.headers["sec-websocket-protocol"], "realtime");
        assert_eq!(client_key(&req), None);
    }
}
