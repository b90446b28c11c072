//! The Realtime API: `GET /openai/realtime` and `/openai/v1/realtime` upgraded to a WebSocket.
//! The upgrade request is an ordinary request to the try loop (a backend picked for the
//! deployment in its query, the client's key taken off and the backend's credential put on,
//! retried on a failure before the backend's `101`); after the `101`, the bytes of both
//! directions are copied as they come, frames untouched, until one side closes.
//!
//! NOTE: the tunnel copies bytes and parses no frame: Pingora's HTTP/1 sessions switch both
//! sides to pass-through on a `101` (`was_upgraded`), and a WebSocket needs nothing else from
//! a proxy (pings, pongs and closes are frames like any other).

use std::time::Duration;

use http::header;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::exchange::Answer;

/// How long the backend's side is relayed after the client's side has closed.
const CLOSING: Duration = Duration::from_secs(5);

/// The subprotocol prefix by which browsers, which cannot set headers on a WebSocket, send a
/// key (`Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.KEY`).
const KEY_PROTOCOL: &str = "openai-insecure-api-key.";

/// The client key a browser puts in a Realtime upgrade's `openai-insecure-api-key.`
/// subprotocol (the query's `api-key=` is read by [`crate::request::query::client_key`]).
pub fn subprotocol_key(req: &RequestHeader) -> Option<&[u8]> {
    req.headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(KEY_PROTOCOL))
        .map(str::as_bytes)
}

/// Takes the client's key out of a Realtime upgrade's subprotocols, so that it never reaches a
/// backend (the query's is taken out of every request, see `admission`).
pub fn strip_subprotocol_key(req: &mut RequestHeader) -> Result<()> {
    // Every `Sec-WebSocket-Protocol` line, joined into one without the key; a value that is
    // not plain text cannot be looked into, and is refused.
    let values = req.headers.get_all(header::SEC_WEBSOCKET_PROTOCOL);
    if values.iter().next().is_some() {
        let mut kept = Vec::new();
        for v in values {
            let v = v.to_str().map_err(|_| {
                Error::explain(ErrorType::InvalidHTTPHeader, "a non-ASCII subprotocol")
            })?;
            kept.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty() && !p.starts_with(KEY_PROTOCOL))
                    .map(str::to_string),
            );
        }
        req.remove_header(&header::SEC_WEBSOCKET_PROTOCOL);
        if !kept.is_empty() {
            req.insert_header(header::SEC_WEBSOCKET_PROTOCOL, kept.join(", "))?;
        }
    }
    Ok(())
}

/// Gives the client the backend's `101` and copies bytes both ways until a side closes; a side
/// that closes closes the other. A side that stops reading is given up after `stalled`.
pub async fn tunnel(session: &mut Session, answer: Answer, stalled: Duration) -> Result<()> {
    let Answer {
        head, session: up, ..
    } = answer;
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
    // A session may stay quiet for minutes (a voice call on hold; the peers ping), but a
    // side that stops reading is given up after `timeouts.body_idle`.
    session.set_read_timeout(None);
    up.set_read_timeout(None);
    session.set_write_timeout(Some(stalled));
    up.set_write_timeout(Some(stalled));
    loop {
        tokio::select! {
            from_client = session.read_request_body() => {
                match from_client.map_err(|e| e.into_down())? {
                    Some(bytes) => up.write_request_body(bytes, false).await.map_err(|e| e.into_up())?,
                    None => {
                        // The client is done sending: the backend's last frames (its
                        // answer to a Close) still go to the client, for a while.
                        let _ = up.finish_request_body().await;
                        let rest = async {
                            while let Some(bytes) = up.read_response_body().await? {
                                session.write_response_body(Some(bytes), false).await?;
                            }
                            Ok::<(), Box<Error>>(())
                        };
                        let _ = tokio::time::timeout(CLOSING, rest).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browsers_key_is_read_and_taken_off() {
        let mut req = RequestHeader::build(
            "GET",
            b"/openai/realtime?api-version=1&api-key=secret&deployment=d",
            None,
        )
        .unwrap();
        req.append_header("sec-websocket-protocol", "realtime")
            .unwrap();
        req.append_header("sec-websocket-protocol", "openai-insecure-api-key.other")
            .unwrap();
        assert_eq!(subprotocol_key(&req), Some(&b"other"[..]), "on any line");
        strip_subprotocol_key(&mut req).unwrap();
        assert_eq!(req.headers["sec-websocket-protocol"], "realtime");
        let mut one = RequestHeader::build("GET", b"/openai/realtime", None).unwrap();
        one.insert_header(
            "sec-websocket-protocol",
            "realtime, openai-insecure-api-key.k",
        )
        .unwrap();
        assert_eq!(subprotocol_key(&one), Some(&b"k"[..]));
        strip_subprotocol_key(&mut one).unwrap();
        assert_eq!(one.headers["sec-websocket-protocol"], "realtime");
    }
}
