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
    matches!(
        path.trim_end_matches('/'),
        "/openai/realtime" | "/openai/v1/realtime"
    )
}

/// The query parameter that names the deployment on `path`: `model` on the GA path
/// (`/openai/v1/realtime`), `deployment` on the preview one.
fn parameter(path: &str) -> &'static str {
    match path.starts_with("/openai/v1/") {
        true => "model",
        false => "deployment",
    }
}

/// The deployment a Realtime request on `path` names in its query. `Err` when it names one
/// twice, or names one under both parameters: a backend might read another than the proxy
/// checked against a client's `deployments`.
pub fn deployment(path: &str, query: Option<&str>) -> Result<Option<String>, ()> {
    let named: Vec<(&str, &str)> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "deployment" || *k == "model")
        .collect();
    match named.as_slice() {
        [] => Ok(None),
        [(k, v)] if *k == parameter(path) => Ok((!v.is_empty()).then(|| v.to_string())),
        _ => Err(()),
    }
}

/// `path_and_query` with its deployment parameter set to `to`, for a backend that knows the
/// deployment by another name.
pub fn rename_in_query(path_and_query: &[u8], to: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(path_and_query).ok()?;
    let (path, query) = text.split_once('?')?;
    let name = parameter(path);
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k == name => format!("{name}={to}"),
            _ => kv.to_string(),
        })
        .collect();
    Some(format!("{path}?{}", query.join("&")).into_bytes())
}

/// How long the backend's side is relayed after the client's side has closed.
const CLOSING: std::time::Duration = std::time::Duration::from_secs(5);

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
        // A session may stay quiet for minutes (a voice call on hold; the peers ping), but a
        // side that stops reading is given up after `timeouts.body_idle`.
        session.set_read_timeout(None);
        up.set_read_timeout(None);
        session.set_write_timeout(Some(self.timeouts.body_idle));
        up.set_write_timeout(Some(self.timeouts.body_idle));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployment_comes_from_the_querys_one_parameter() {
        let preview = "/openai/realtime";
        let ga = "/openai/v1/realtime";
        assert_eq!(
            deployment(
                preview,
                Some("api-version=2025-04-01-preview&deployment=gpt-4o-rt")
            ),
            Ok(Some("gpt-4o-rt".into()))
        );
        assert_eq!(
            deployment(ga, Some("model=gpt-realtime")),
            Ok(Some("gpt-realtime".into()))
        );
        assert_eq!(deployment(preview, Some("api-version=1")), Ok(None));
        assert_eq!(deployment(preview, None), Ok(None));
        // Two names, or the other path's parameter: a backend might read another one.
        assert_eq!(deployment(ga, Some("deployment=a&model=b")), Err(()));
        assert_eq!(deployment(ga, Some("model=a&model=b")), Err(()));
        assert_eq!(deployment(ga, Some("deployment=a")), Err(()));
    }

    #[test]
    fn a_renamed_deployment_is_renamed_in_the_query() {
        assert_eq!(
            rename_in_query(b"/openai/realtime?api-version=1&deployment=rt", "rt-east").unwrap(),
            b"/openai/realtime?api-version=1&deployment=rt-east".to_vec()
        );
    }

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
