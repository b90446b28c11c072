//! One try: connect to a backend (or reuse a pooled connection), send the request and its
//! whole body, and wait for the response header.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use crate::retry::Failure;

/// What a try produced.
pub enum Attempt {
    /// The response header arrived; the body is still to be read from the session.
    Response(Box<HttpSession>),
    /// No response header.
    Failed(Failure, Box<Error>),
}

/// Sends `req` with `body` to `peer` and waits up to `header_timeout` for the response header.
pub async fn send(
    connector: &Connector,
    peer: &HttpPeer,
    req: RequestHeader,
    body: &Bytes,
    header_timeout: Duration,
    write_timeout: Duration,
) -> Attempt {
    let (mut session, _reused) = match connector.get_http_session(peer).await {
        Ok(s) => s,
        Err(e) => return Attempt::Failed(connect_failure(&e), e),
    };
    session.set_write_timeout(Some(write_timeout));
    let exchange = async {
        session.write_request_header(Box::new(req)).await?;
        if !body.is_empty() {
            session.write_request_body(body.clone(), true).await?;
        }
        session.finish_request_body().await?;
        session.read_response_header().await
    };
    match tokio::time::timeout(header_timeout, exchange).await {
        Ok(Ok(())) => Attempt::Response(Box::new(session)),
        Ok(Err(e)) => Attempt::Failed(Failure::Dropped, e),
        Err(_) => Attempt::Failed(
            Failure::Timeout,
            Error::explain(
                ErrorType::ReadTimedout,
                format!("no response header within {header_timeout:?}"),
            ),
        ),
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

/// Reads and discards a response that will not be delivered (a retried 429 or 5xx) so its
/// connection can go back to the pool; closes it instead when that takes too long.
pub fn discard(
    connector: Arc<Connector>,
    peer: Arc<HttpPeer>,
    mut session: Box<HttpSession>,
    idle: Duration,
) {
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
            connector
                .release_http_session(*session, &*peer, Some(idle))
                .await;
        }
    });
}
