//! The upstream exchange of one try: connect to a backend (or reuse an idle connection), send
//! the request and its whole body (in one write, mostly), and wait for the response header;
//! and what becomes of an answer that is not relayed as it comes (read whole, or drained).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, OrErr};
use tokio::time::Instant;

use super::upstream::Upstream;
use crate::outcome::{Failure, Outcome, WholeAnswer};

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

/// A backend's answer: its response header, the session to read the body from, and the peer
/// its connection goes back to.
pub struct Answer {
    pub head: Box<pingora::http::ResponseHeader>,
    pub session: Box<HttpSession>,
    pub peer: Arc<HttpPeer>,
}

impl Answer {
    pub fn status(&self) -> StatusCode {
        self.head.status
    }
}

/// The most of a body sent in the same write as the request head (copied beside it); a larger
/// one follows the head in a write of its own.
const JOINED_BODY: usize = 64 * 1024;

/// A request as it goes to a backend.
pub enum Request {
    /// Written as it is: the head, with the body when it is small, then the rest of the body.
    /// Most requests leave in one write, so the backend wakes once.
    Wire { head: Bytes, rest: Option<Bytes> },
    /// Through Pingora's writer, which remembers the request to frame the answer: a `HEAD` (no
    /// body) or an upgrade (a tunnel).
    Framed(Box<RequestHeader>, Bytes),
}

impl Request {
    /// The client's request `client` as a backend gets it, with what the proxy `added`, the
    /// target `path` and `body`.
    pub fn for_backend(
        client: &RequestHeader,
        path: &[u8],
        added: super::headers::Added<'_>,
        body: &Bytes,
    ) -> pingora::Result<Request> {
        // `wire` leaves an upgrade to `framed`.
        if client.method != http::Method::HEAD {
            let joined = body.len() <= JOINED_BODY;
            let extra = if joined { body.len() } else { 0 };
            if let Some(mut head) = super::headers::wire(client, path, added, body.len(), extra) {
                let rest = match joined {
                    true => {
                        head.extend_from_slice(body);
                        None
                    }
                    false => Some(body.clone()),
                };
                return Ok(Request::Wire {
                    head: head.freeze(),
                    rest,
                });
            }
        }
        // Pingora's writer refuses a target that cannot stand in a request line, with its error.
        let req = super::headers::framed(client, path, added, body.len())?;
        Ok(Request::Framed(Box::new(req), body.clone()))
    }
}

/// Sends `request` to `peer` and waits up to `header_timeout` for the response header; each
/// write may take up to `write_timeout`.
pub async fn send(
    upstream: &Upstream,
    peer: &Arc<HttpPeer>,
    request: &Request,
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
        match exchange(stream, peer, request, write_timeout, deadline).await {
            Ok(session) => return answered(session, peer.clone()),
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

/// The answer in `session`, whose response header has been read.
fn answered(session: HttpSession, peer: Arc<HttpPeer>) -> Attempt {
    match session.response_header() {
        Some(head) => Attempt::Answered(Answer {
            head: Box::new(head.clone()),
            session: Box::new(session),
            peer,
        }),
        None => Attempt::Failed(
            Failure::Dropped,
            Error::explain(ErrorType::InvalidHTTPHeader, "no response header"),
        ),
    }
}

enum Exchange {
    Timeout,
    Failed(Box<Error>),
}

/// Writes `request` on `stream` (to `peer`) and reads the response header, all before
/// `deadline`; the session to read the rest of the answer from.
async fn exchange(
    mut stream: Stream,
    peer: &HttpPeer,
    request: &Request,
    write_timeout: Duration,
    deadline: Instant,
) -> Result<HttpSession, Exchange> {
    let written = match request {
        Request::Wire { head, rest } => {
            let wire = write_wire(&mut stream, head, rest.as_ref());
            match tokio::time::timeout_at(deadline, wire).await {
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
            let framed = write_framed(&mut session, req, body);
            match tokio::time::timeout_at(deadline, framed).await {
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

/// Writes a serialized request on `stream`.
async fn write_wire(stream: &mut Stream, head: &[u8], rest: Option<&Bytes>) -> pingora::Result<()> {
    use tokio::io::AsyncWriteExt;
    let written = async {
        stream.write_all(head).await?;
        if let Some(rest) = rest {
            stream.write_all(rest).await?;
        }
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
pub fn discard(upstream: Arc<Upstream>, answer: Answer, idle: Duration) {
    let Answer {
        mut session, peer, ..
    } = answer;
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

/// Reads what `attempt` produced to its end (at most `max` bytes of body, each read within
/// `idle`), putting its connection back in the pool (kept `pool_idle`); or why it cannot be.
pub async fn read_whole(
    upstream: &Upstream,
    attempt: Attempt,
    max: usize,
    (idle, pool_idle): (Duration, Duration),
) -> Result<WholeAnswer, (Failure, String)> {
    let answer = match attempt {
        Attempt::Answered(answer) => answer,
        Attempt::Failed(f, e) => return Err((f, e.to_string())),
    };
    let Answer {
        head,
        mut session,
        peer,
    } = answer;
    let mut body = BytesMut::new();
    loop {
        let chunk = match tokio::time::timeout(idle, session.read_response_body()).await {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => return Err((Failure::Dropped, e.to_string())),
            Err(_) => return Err((Failure::Dropped, "backend silent mid-answer".into())),
        };
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > max {
            return Err((Failure::Dropped, "answer too large to hold".into()));
        }
        body.extend_from_slice(&chunk);
    }
    upstream.release(*session, &peer, pool_idle).await;
    Ok(WholeAnswer {
        head,
        body: body.freeze(),
    })
}

/// Joins to `first` the body chunks the backend has already delivered, so a burst of events
/// goes to the client in one write rather than one each. Never waits: a read that would block
/// ends the batch (the read is cancel-safe: Pingora's own proxy loop drops it in a `select!`).
/// Returns the batch, and whether the body is complete (or the error that ended it).
pub(super) fn coalesce(up: &mut HttpSession, first: Bytes) -> (Bytes, pingora::Result<bool>) {
    use futures_util::FutureExt;
    const MAX_BATCH: usize = 64 * 1024;
    let mut batch: Option<BytesMut> = None;
    let mut end = Ok(false);
    while batch.as_ref().map_or(first.len(), |b| b.len()) < MAX_BATCH {
        match up.read_response_body().now_or_never() {
            Some(Ok(Some(more))) => batch
                .get_or_insert_with(|| BytesMut::from(&first[..]))
                .extend_from_slice(&more),
            Some(Ok(None)) => {
                end = Ok(true);
                break;
            }
            // What arrived before the error still goes to the client; then the stream breaks.
            Some(Err(e)) => {
                end = Err(e.into_up());
                break;
            }
            None => break,
        }
    }
    (batch.map_or(first, BytesMut::freeze), end)
}
