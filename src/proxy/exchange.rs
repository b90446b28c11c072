//! The upstream exchange of one try: connect to a backend (or reuse an idle connection), send
//! the request and its whole body (in one write, mostly), and wait for the response header.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, OrErr};

use super::headers;
use super::upstream::Upstream;
use crate::balance::Credential;
use crate::retry::{Failure, Outcome};

/// What a try produced.
pub enum Attempt {
    /// The response header arrived; the body is still to be read.
    Answered(Answer),
    /// No response header.
    Failed(Failure, Box<Error>),
}

impl Attempt {
    /// What the retry policy and the balancer see of it.
    pub fn outcome(&self) -> Outcome {
        match self {
            Attempt::Answered(a) => Outcome::Status(a.head.status),
            Attempt::Failed(f, _) => Outcome::Failed(*f),
        }
    }

    /// The response headers, when it answered.
    pub fn headers(&self) -> Option<&HeaderMap> {
        match self {
            Attempt::Answered(a) => Some(&a.head.headers),
            Attempt::Failed(..) => None,
        }
    }
}

/// A backend's answer: its response header, and the session to read the body from.
pub struct Answer {
    pub head: Box<ResponseHeader>,
    pub session: Box<HttpSession>,
}

impl Answer {
    /// The answer in `session`, whose response header has been read.
    fn read(session: Box<HttpSession>) -> Attempt {
        match session.response_header() {
            Some(head) => Attempt::Answered(Answer {
                head: Box::new(head.clone()),
                session,
            }),
            None => Attempt::Failed(
                Failure::Dropped,
                Error::explain(ErrorType::InvalidHTTPHeader, "no response header"),
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.head.status
    }
}

/// Sends `request` to `peer` and waits up to `header_timeout` for the response header.
pub async fn send(
    upstream: &Upstream,
    peer: &HttpPeer,
    request: Request<'_>,
    header_timeout: Duration,
    write_timeout: Duration,
) -> Attempt {
    let deadline = Instant::now() + header_timeout;
    let mut may_retry_stale = true;
    loop {
        // After a pooled connection failed, a new one: the other idle ones may have been
        // closed by the backend just as well (it restarted, or expired them all at once).
        let connected = match may_retry_stale {
            true => upstream.connect(peer).await,
            false => upstream.connect_new(peer).await.map(|s| (s, false)),
        };
        let (stream, reused) = match connected {
            Ok(s) => s,
            Err(e) => return Attempt::Failed(connect_failure(&e), e),
        };
        // A pooled connection may have been closed by the backend a moment ago: that is the
        // pool's doing, not the backend's, so it gets one more go on a new connection.
        let retry_if_stale = reused && may_retry_stale;
        match exchange(stream, peer, &request, write_timeout, deadline).await {
            Ok(session) => return Answer::read(Box::new(session)),
            Err(Exchange::Timeout) => {
                let e = Error::explain(
                    ErrorType::ReadTimedout,
                    format!("no response header within {header_timeout:?}"),
                );
                return Attempt::Failed(Failure::Timeout, e);
            }
            Err(Exchange::Failed(e)) if retry_if_stale => {
                log::debug!("a pooled connection failed ({e}); trying a new one");
                may_retry_stale = false;
            }
            Err(Exchange::Failed(e)) => return Attempt::Failed(Failure::Dropped, e),
        }
    }
}

enum Exchange {
    Timeout,
    Failed(Box<Error>),
}

/// The most of a body sent in the same write as the request head (copied beside it); a larger
/// one follows the head in writes of its own.
const JOINED_BODY: usize = 64 * 1024;

/// A request as it goes to a backend. Most leave in one write, head and body together, so the
/// backend wakes once (Pingora's writer flushes the head on its own); `HEAD` and upgrades go
/// through Pingora's writer, which remembers the request to frame the answer (no body, or a
/// tunnel), as do bodies too large to copy.
pub enum Request<'a> {
    /// Head and body, serialized.
    Joined(Bytes),
    /// Boxed: the rarer kind, and a header map is large.
    Framed(Box<RequestHeader>, &'a Bytes),
}

impl<'a> Request<'a> {
    /// The client's request as backend `host` gets it, with `credential`, the path `path` when
    /// one is given, and `body`.
    pub fn for_backend(
        client: &RequestHeader,
        path: Option<&[u8]>,
        host: &http::HeaderValue,
        credential: Credential,
        body: &'a Bytes,
    ) -> pingora::Result<Request<'a>> {
        if client.method != http::Method::HEAD && body.len() <= JOINED_BODY {
            if let Some(wire) = headers::upstream_wire(client, path, host, &credential, body) {
                return Ok(Request::Joined(wire.freeze()));
            }
        }
        // Pingora's writer refuses a path that cannot stand in a request line, with its error.
        let mut req = headers::upstream_request(client, host, credential, body)?;
        if let Some(path) = path {
            req.set_raw_path(path)?;
        }
        Ok(Request::Framed(Box::new(req), body))
    }
}

/// Writes a serialized request on `stream`.
async fn write_joined(stream: &mut Stream, wire: &[u8]) -> pingora::Result<()> {
    use tokio::io::AsyncWriteExt;
    let written = async {
        stream.write_all(wire).await?;
        stream.flush().await
    };
    written
        .await
        .or_err(ErrorType::WriteError, "while writing the request")
}

/// Writes a request through Pingora's writer.
async fn write_framed(
    session: &mut HttpSession,
    req: &RequestHeader,
    body: &Bytes,
) -> pingora::Result<()> {
    session.write_request_header(Box::new(req.clone())).await?;
    if !body.is_empty() {
        session.write_request_body(body.clone(), true).await?;
    }
    session.finish_request_body().await
}

/// Writes the request on `stream` (to `peer`) and reads the response header, all before
/// `deadline`; the session to read the rest of the answer from.
async fn exchange(
    mut stream: Stream,
    peer: &HttpPeer,
    request: &Request<'_>,
    write_timeout: Duration,
    deadline: Instant,
) -> Result<HttpSession, Exchange> {
    let written = match request {
        Request::Joined(wire) => {
            match tokio::time::timeout_at(deadline, write_joined(&mut stream, wire)).await {
                Err(_) => return Err(Exchange::Timeout),
                Ok(written) => written,
            }
        }
        Request::Framed(..) => Ok(()),
    };
    let mut session = HttpSession::H1(Http1Session::new_with_options(stream, peer));
    session.set_write_timeout(Some(write_timeout));
    let written = match (written, request) {
        (Ok(()), Request::Framed(req, body)) => {
            match tokio::time::timeout_at(deadline, write_framed(&mut session, req, body)).await {
                Err(_) => return Err(Exchange::Timeout),
                Ok(written) => written,
            }
        }
        (written, _) => written,
    };
    if let Err(write_error) = written {
        // A backend may answer before reading the whole body (413, 401) and close: that
        // answer is what the client should get, not a failed try.
        let early = deadline.min(Instant::now() + Duration::from_secs(1));
        return match tokio::time::timeout_at(early, session.read_response_header()).await {
            Ok(Ok(())) => Ok(session),
            _ => Err(Exchange::Failed(write_error)),
        };
    }
    match tokio::time::timeout_at(deadline, session.read_response_header()).await {
        Err(_) => Err(Exchange::Timeout),
        Ok(Err(e)) => Err(Exchange::Failed(e)),
        Ok(Ok(())) => Ok(session),
    }
}

/// Classifies a connection error.
fn connect_failure(e: &Error) -> Failure {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | TLSHandshakeTimedout => Failure::Timeout,
        TLSHandshakeFailure | TLSWantX509Lookup | InvalidCert | HandshakeError => Failure::Tls,
        _ => Failure::Connect,
    }
}

/// Reads and discards an answer that will not be delivered (a retried 429 or 5xx) so its
/// connection can go back to the pool; closes it instead when that takes too long.
pub fn discard(upstream: Arc<Upstream>, peer: Arc<HttpPeer>, answer: Answer, idle: Duration) {
    let mut session = answer.session;
    tokio::spawn(async move {
        let drained = tokio::time::timeout(Duration::from_secs(2), async {
            let mut read = 0usize;
            while let Some(chunk) = session.read_response_body().await? {
                read += chunk.len();
                if read > 1 << 20 {
                    return Error::e_explain(ErrorType::InternalError, "too large to drain");
                }
            }
            Ok::<_, Box<Error>>(())
        })
        .await;
        if matches!(drained, Ok(Ok(()))) {
            upstream.release(*session, &peer, idle).await;
        }
    });
}

/// The most of an answer read whole: one the proxy must look into (a 400 that may say "not
/// found") or keep while it asks other backends.
pub const MAX_WHOLE: usize = 1 << 20;

/// An answer read to its end: its header and body.
pub struct WholeAnswer {
    pub head: Box<ResponseHeader>,
    pub body: Bytes,
}

/// Reads `answer` to its end (at most `max` bytes, each read within `idle`) and puts its
/// connection back in the pool (kept `pool_idle`).
pub async fn read_whole(
    upstream: &Upstream,
    peer: Option<&HttpPeer>,
    answer: Answer,
    max: usize,
    (idle, pool_idle): (Duration, Duration),
) -> pingora::Result<WholeAnswer> {
    let Answer { head, mut session } = answer;
    let mut body = bytes::BytesMut::new();
    loop {
        let chunk = tokio::time::timeout(idle, session.read_response_body())
            .await
            .map_err(|_| Error::explain(ErrorType::ReadTimedout, "backend silent mid-answer"))??;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > max {
            return Error::e_explain(ErrorType::InternalError, "answer too large to hold");
        }
        body.extend_from_slice(&chunk);
    }
    if let Some(peer) = peer {
        upstream.release(*session, peer, pool_idle).await;
    }
    Ok(WholeAnswer {
        head,
        body: body.freeze(),
    })
}

impl WholeAnswer {
    /// Whether it says the object it was asked for is not on this backend: a 404, or a 400
    /// with code `previous_response_not_found` (the Responses API's).
    pub fn is_not_found(&self) -> bool {
        match self.head.status.as_u16() {
            404 => true,
            400 => {
                #[derive(serde::Deserialize)]
                struct Body {
                    error: Inner,
                }
                #[derive(serde::Deserialize)]
                struct Inner {
                    code: Option<String>,
                }
                serde_json::from_slice::<Body>(&self.body)
                    .is_ok_and(|b| b.error.code.as_deref() == Some("previous_response_not_found"))
            }
            _ => false,
        }
    }
}
