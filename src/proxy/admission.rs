//! Admission: what a request must pass before any backend is tried (header size, path, client
//! key), and reading its body once, whole, so every try can send it again.

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::answers::ProxyError;
use super::paths::{self, Refused};
use super::{headers, realtime, AoaiProxy, RequestCtx};
use crate::clients::entra::{EntraVerifier, Rejected};

impl AoaiProxy {
    /// Checks the header size, the shape of the path, the client key and that the path is one
    /// that is forwarded, in that order; `Err` is the answer to send. An absolute-form target
    /// is rewritten to origin form.
    pub(super) fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), ProxyError> {
        let req = session.req_header();
        let size = headers::header_bytes(req);
        if size > self.limits.max_header_bytes {
            return Err(ProxyError::HeadersTooLarge {
                limit: self.limits.max_header_bytes,
            });
        }
        let target = paths::forwarded(req.raw_path(), &self.paths);
        let realtime = realtime::is_realtime(req.uri.path());
        if target == Err(Refused::Malformed) {
            return Err(ProxyError::BadPath);
        }
        if let Some(clients) = &self.clients {
            let key = headers::client_key(req)
                .or_else(|| realtime.then(|| realtime::client_key(req)).flatten())
                .ok_or(ProxyError::Unauthorized)?;
            let client = match &self.entra {
                Some(entra) if EntraVerifier::looks_like_token(key) => {
                    let token = std::str::from_utf8(key).map_err(|_| ProxyError::Unauthorized)?;
                    match entra.verify(token) {
                        Ok(caller) => clients.find_entra(caller.ids()),
                        Err(Rejected::NoKeys) => return Err(ProxyError::NoClientKeys),
                        Err(why) => {
                            log::debug!("a client's Entra ID token was refused: {why}");
                            None
                        }
                    }
                }
                _ => clients.find(key),
            };
            ctx.client = Some(client.ok_or(ProxyError::Unauthorized)?.clone());
        }
        let target = target.map_err(|_| ProxyError::PathNotForwarded)?;
        if target.len() != req.raw_path().len() {
            let origin = target.to_vec();
            session
                .req_header_mut()
                .set_raw_path(&origin)
                .map_err(|_| ProxyError::BadPath)?;
        }
        if realtime {
            // Checked or not, a key in the query or a subprotocol never reaches a backend.
            realtime::strip_client_key(session.req_header_mut())
                .map_err(|_| ProxyError::BadPath)?;
        }
        Ok(())
    }

    /// Reads the whole request body (it is re-sent on every try), up to the limit.
    pub(super) async fn read_body(
        &self,
        session: &mut Session,
    ) -> Result<Result<Bytes, ProxyError>> {
        let limit = self.limits.max_body_bytes;
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
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        // The whole body within `timeouts.client_body`: a client that trickles it holds a
        // connection no longer than that.
        let deadline = tokio::time::Instant::now() + self.timeouts.client_body;
        session.set_read_timeout(Some(self.timeouts.client_body));
        loop {
            let chunk = match tokio::time::timeout_at(deadline, session.read_request_body()).await {
                Err(_) => return Ok(Err(ProxyError::BodyTimeout(self.timeouts.client_body))),
                Ok(Err(e)) if e.etype() == &pingora::ErrorType::ReadTimedout => {
                    return Ok(Err(ProxyError::BodyTimeout(self.timeouts.client_body)))
                }
                Ok(read) => read.map_err(|e| e.into_down())?,
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
}
