//! Relaying the chosen response: the header, then the body chunk by chunk as the backend sends
//! it, bursts joined into one write, never waiting for more than has arrived.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use super::exchange::Answer;
use super::exchange::WholeAnswer;
use super::{headers, AoaiProxy};
use crate::limits::Admitted;
use crate::objects::{CreatedReader, ObjectLocations};
use crate::usage::{Usage, UsageEventFilter, UsageReader};

impl AoaiProxy {
    /// Streams the chosen answer to the client, chunk by chunk as the backend sends it, then
    /// returns its connection to the pool. The usage it reports is read on the way, counted
    /// for `backend`, the request's deployment and client, and returned.
    pub(super) async fn relay(
        &self,
        session: &mut Session,
        answer: Answer,
        peer: Option<Arc<HttpPeer>>,
        labels: Delivery<'_>,
    ) -> Result<Option<Usage>> {
        if answer.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // Boxed, as once per session it can be: it would size every answer's future.
            return Box::pin(self.tunnel(session, answer)).await.map(|()| None);
        }
        let Answer {
            mut head,
            session: mut up,
        } = answer;
        headers::strip_response(&mut head);
        if let Some(left) = &labels.limits {
            headers::set_remaining(&mut head, left.remaining_requests, left.remaining_tokens)?;
        }
        let mut usage = head
            .status
            .is_success()
            .then(|| UsageReader::for_answer(&head.headers))
            .flatten();
        let mut created = match &labels.learning {
            Some(l) if l.created && head.status.is_success() => {
                Some(CreatedReader::for_answer(&head.headers))
            }
            _ => None,
        };
        let learned = labels
            .learning
            .as_ref()
            .is_some_and(|_| head.status.is_success());
        let mut hide = (labels.hide_usage_event && head.status.is_success() && is_stream(&head))
            .then(UsageEventFilter::default);
        session
            .write_response_header(head, false)
            .await
            .map_err(|e| e.into_down())?;
        let idle = self.timeouts.body_idle;
        let body = async {
            loop {
                let chunk = tokio::select! {
                    biased;
                    chunk = tokio::time::timeout(idle, up.read_response_body()) => chunk,
                    // Between chunks, notice a client that left so the backend stops generating.
                    _ = session.downstream_session.read_body_or_idle(true) => {
                        return Err(Error::explain(ErrorType::ConnectionClosed, "client left mid-response").into_down());
                    }
                };
                match chunk {
                    Ok(Ok(Some(bytes))) => {
                        let (bytes, end) = coalesce(&mut up, bytes);
                        if let Some(reader) = usage.as_mut() {
                            reader.feed(&bytes);
                        }
                        if let Some(reader) = created.as_mut() {
                            reader.feed(&bytes);
                            // A stream's response is known from its first event: a follow-up
                            // sent before the stream ends finds it without a search.
                            if let (Some(id), Some(l)) = (reader.take_found(), &labels.learning) {
                                let backend = &self.pool.get(labels.backend).name;
                                l.remember(&*self.objects, backend, &[id]);
                            }
                        }
                        let bytes = match hide.as_mut() {
                            Some(filter) => filter.filter(bytes),
                            None => bytes,
                        };
                        session
                            .write_response_body(Some(bytes), false)
                            .await
                            .map_err(|e| e.into_down())?;
                        if end? {
                            break;
                        }
                    }
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => return Err(e.into_up()),
                    Err(_) => {
                        let why = format!("backend silent for {idle:?} mid-response");
                        return Err(Error::explain(ErrorType::ReadTimedout, why).into_up());
                    }
                }
            }
            Ok::<(), Box<Error>>(())
        };
        let body = body.await;
        // Counted before the client sees the end, so that it is there once the client is done;
        // and also when the body broke off after the backend had reported its usage.
        let usage = usage.and_then(UsageReader::finish);
        if let Some(u) = &usage {
            self.pool
                .get(labels.backend)
                .stats
                .record_usage(labels.deployment, labels.client, u);
        }
        body?;
        if let (true, Some(learning)) = (learned, &labels.learning) {
            let backend = &self.pool.get(labels.backend).name;
            let made = created.map(CreatedReader::finish).unwrap_or_default();
            learning.remember(&*self.objects, backend, &made);
        }
        if let Some(rest) = hide.as_mut().map(UsageEventFilter::finish) {
            if !rest.is_empty() {
                session
                    .write_response_body(Some(rest), false)
                    .await
                    .map_err(|e| e.into_down())?;
            }
        }
        session
            .write_response_body(None, true)
            .await
            .map_err(|e| e.into_down())?;
        if let Some(peer) = peer {
            self.upstream
                .release(*up, &peer, self.timeouts.pool_idle)
                .await;
        }
        Ok(usage)
    }
}

/// How an answer is delivered: whom its tokens are counted for, and what the client is told.
pub(super) struct Delivery<'a> {
    pub backend: usize,
    pub deployment: Option<&'a str>,
    pub client: Option<&'a str>,
    /// The proxy added `stream_options.include_usage` to the request: the usage event is taken
    /// out of the stream the client gets.
    pub hide_usage_event: bool,
    /// What the client has left under its limits, for `x-ratelimit-remaining-*`.
    pub limits: Option<Admitted>,
    /// What a success teaches about where objects live; `None` on paths without objects.
    pub learning: Option<Learning<'a>>,
}

/// What a successful answer says about where objects live.
pub(super) struct Learning<'a> {
    /// The objects the request named: they are on the backend that answered.
    pub named: &'a [String],
    /// The request may have made objects: read their ids from the answer.
    pub created: bool,
    /// The request deleted the object it named.
    pub deleted: bool,
}

impl Learning<'_> {
    /// Records what the answer of `backend` taught, `made` the ids it made.
    fn remember(&self, objects: &dyn ObjectLocations, backend: &str, made: &[String]) {
        match (self.deleted, self.named.first()) {
            (true, Some(gone)) => objects.forget(gone),
            _ => self
                .named
                .iter()
                .chain(made)
                .for_each(|id| objects.learn(id, backend)),
        }
    }
}

impl AoaiProxy {
    /// Gives the client an answer read whole (see [`super::exchange::read_whole`]), as the
    /// backend sent it.
    pub(super) async fn relay_whole(
        &self,
        session: &mut Session,
        whole: WholeAnswer,
        limits: Option<&Admitted>,
    ) -> Result<()> {
        let WholeAnswer { mut head, body } = whole;
        headers::strip_response(&mut head);
        if let Some(left) = limits {
            headers::set_remaining(&mut head, left.remaining_requests, left.remaining_tokens)?;
        }
        let write = async {
            session.write_response_header(head, false).await?;
            session.write_response_body(Some(body), true).await
        };
        write.await.map_err(|e| e.into_down())
    }
}

/// Whether the answer is a stream of server-sent events.
fn is_stream(head: &ResponseHeader) -> bool {
    head.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// Joins to `first` the body chunks the backend has already delivered, so a burst of events
/// goes to the client in one write rather than one each. Never waits: a read that would block
/// ends the batch (the read is cancel-safe: Pingora's own proxy loop drops it in a `select!`).
/// Returns the batch, and whether the body is complete (or the error that ended it).
fn coalesce(up: &mut HttpSession, first: Bytes) -> (Bytes, Result<bool>) {
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
