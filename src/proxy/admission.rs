//! [`Admission`]: what a request must pass before any backend is tried (header size, the shape
//! of its path, the client's key or Entra ID token, a forwarded prefix), the target a backend
//! gets (origin form, without a client key in any spelling), and its body, read once, whole,
//! so every try can send it again.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::Result;

use super::answers::ProxyError;
use super::paths::{self, Refused};
use super::{headers, realtime};
use crate::clients::entra::{EntraVerifier, Rejected};
use crate::clients::{Client, Clients};
use crate::config::Sizes;
use crate::request::{self, query};

/// Who and what is let in.
pub struct Admission {
    pub sizes: Sizes,
    /// `timeouts.client_body`.
    pub client_body: Duration,
    /// The path prefixes forwarded (`paths`).
    pub paths: Vec<String>,
    /// The clients allowed in; `None` when the proxy is open.
    pub clients: Option<Clients>,
    /// Checks clients' Entra ID tokens (`client_auth.entra`).
    pub entra: Option<Arc<EntraVerifier>>,
}

impl Admission {
    /// Checks the header size, the shape of the path, the client and that the path is one that
    /// is forwarded, in that order; the client, when `clients` is configured. Then makes the
    /// target the one a backend gets: origin form, and no client key in its query (nor, for
    /// Realtime, in its subprotocols), however spelled. `Err` is the answer to send.
    pub fn admit(&self, session: &mut Session) -> Result<Option<Arc<Client>>, ProxyError> {
        let req = session.req_header();
        if headers::header_bytes(req) > self.sizes.max_header_bytes {
            return Err(ProxyError::HeadersTooLarge {
                limit: self.sizes.max_header_bytes,
            });
        }
        let target = paths::forwarded(req.raw_path(), &self.paths);
        if target == Err(Refused::Malformed) {
            return Err(ProxyError::BadPath);
        }
        let client = match &self.clients {
            Some(clients) => Some(self.identify(clients, req)?),
            None => None,
        };
        let target = target.map_err(|_| ProxyError::PathNotForwarded)?;
        // Owned only when it changes (an absolute-form target, a key in the query).
        let absolute = target.len() != req.raw_path().len();
        let query = match absolute {
            false => req.uri.query(),
            true => std::str::from_utf8(target)
                .ok()
                .and_then(|t| Some(t.split_once('?')?.1)),
        };
        let new = match query.and_then(query::without_client_key) {
            Some(kept) => Some(with_query(target, &kept)),
            None if absolute => Some(target.to_vec()),
            None => None,
        };
        let req = session.req_header_mut();
        if let Some(new) = new {
            req.set_raw_path(&new).map_err(|_| ProxyError::BadPath)?;
        }
        if request::realtime_parameter(req.uri.path()).is_some() {
            realtime::strip_subprotocol_key(req).map_err(|_| ProxyError::BadPath)?;
        }
        Ok(client)
    }

    /// The client a request comes from: by its key (`api-key`, `Authorization: Bearer`, or for
    /// a Realtime upgrade from a browser, the query's `api-key` or the key subprotocol), or by
    /// its Entra ID token.
    fn identify(&self, clients: &Clients, req: &RequestHeader) -> Result<Arc<Client>, ProxyError> {
        let realtime = request::realtime_parameter(req.uri.path()).is_some();
        let in_query = || query::client_key(req.uri.query());
        let key = match headers::client_key(req) {
            Some(key) => std::borrow::Cow::Borrowed(key),
            None if realtime => match in_query() {
                Some(key) => std::borrow::Cow::Owned(key.into_owned().into_bytes()),
                None => realtime::subprotocol_key(req)
                    .map(std::borrow::Cow::Borrowed)
                    .ok_or(ProxyError::Unauthorized)?,
            },
            None => return Err(ProxyError::Unauthorized),
        };
        let client = match &self.entra {
            Some(entra) if EntraVerifier::looks_like_token(&key) => {
                let token = std::str::from_utf8(&key).map_err(|_| ProxyError::Unauthorized)?;
                match entra.verify(token) {
                    Ok(caller) => clients.find_entra(caller.ids()),
                    Err(Rejected::NoKeys) => return Err(ProxyError::NoClientKeys),
                    Err(why) => {
                        log::debug!("a client's Entra ID token was refused: {why}");
                        None
                    }
                }
            }
            _ => clients.find(&key),
        };
        client.cloned().ok_or(ProxyError::Unauthorized)
    }

    /// Reads the whole request body (it is re-sent on every try), up to the limit.
    pub async fn read_body(&self, session: &mut Session) -> Result<Result<Bytes, ProxyError>> {
        let limit = self.sizes.max_body_bytes;
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Ok(Err(ProxyError::BodyTooLarge { limit }));
        }
        let expects_continue = session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue && !session.is_body_done() {
            let cont = ResponseHeader::build(100, Some(0))?;
            session.write_response_header(Box::new(cont), false).await?;
        }
        // The whole body within `timeouts.client_body`: a client that trickles it holds a
        // connection no longer than that.
        session.set_read_timeout(Some(self.client_body));
        let whole = read_all(session, limit, declared, self.client_body);
        match tokio::time::timeout(self.client_body, whole).await {
            Err(_) => Ok(Err(ProxyError::BodyTimeout(self.client_body))),
            Ok(read) => read,
        }
    }
}

/// `target` (a path in origin form) with its query replaced by `query` (none when empty).
fn with_query(target: &[u8], query: &str) -> Vec<u8> {
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let mut rewritten = path.to_vec();
    if !query.is_empty() {
        rewritten.push(b'?');
        rewritten.extend_from_slice(query.as_bytes());
    }
    rewritten
}

/// Reads the body to its end, at most `limit` bytes (`declared` is its `Content-Length`), each
/// read within `within`.
async fn read_all(
    session: &mut Session,
    limit: u64,
    declared: Option<u64>,
    within: Duration,
) -> Result<Result<Bytes, ProxyError>> {
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        let chunk = match session.read_request_body().await {
            Err(e) if e.etype() == &pingora::ErrorType::ReadTimedout => {
                return Ok(Err(ProxyError::BodyTimeout(within)))
            }
            read => read.map_err(|e| e.into_down())?,
        };
        let Some(chunk) = chunk else { break };
        let total = first.as_ref().map_or(0, |f| f.len()) + buf.len() + chunk.len();
        if total as u64 > limit {
            return Ok(Err(ProxyError::BodyTooLarge { limit }));
        }
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            taken => {
                if let Some(f) = taken {
                    // Grow with what arrives; trust the declared length only up to 1 MiB.
                    buf.reserve(declared.unwrap_or(0).min(1 << 20) as usize);
                    buf.extend_from_slice(&f);
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(Ok(first.unwrap_or_else(|| buf.freeze())))
}
