//! [`Relay`]: the upstream side of a request. It makes each try's exchange (the request as a
//! backend gets it, sent over one of the worker's connections) and relays the chosen answer:
//! the header, then the body chunk by chunk as the backend sends it, bursts joined into one
//! write, never waiting for more than has arrived; the tokens and objects it reports are read
//! on the way ([`Readers`]).

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::exchange::{self, Answer, Attempt};
use super::headers::{self, Told};
use super::realtime;
use super::upstream::Upstream;
use crate::balance::{Backend, Credential, Naming};
use crate::cache::{Capture, Entry};
use crate::clients::limits::Admitted;
use crate::clients::Client;
use crate::config::Timeouts;
use crate::objects::{CreatedReader, ObjectLocations};
use crate::outcome::{Failure, WholeAnswer};
use crate::request::Request;
use crate::retry::Product;
use crate::usage::{Usage, UsageEventFilter, UsageReader};

/// Connections to backends, the timeouts of an exchange, and where the objects answers make
/// are remembered.
pub struct Relay {
    pub upstream: Arc<Upstream>,
    pub timeouts: Timeouts,
    pub objects: Arc<dyn ObjectLocations>,
}

/// How an answer is delivered: whom its tokens are counted for, and what the client is told.
pub struct Delivery<'a> {
    pub deployment: Option<&'a str>,
    pub client: Option<Arc<Client>>,
    /// The proxy asked the stream for its usage: the usage event is taken out of what the
    /// client gets.
    pub hide_usage_event: bool,
    /// What the client has left under its limits, for `x-ratelimit-remaining-*`.
    pub limits: Option<Admitted>,
    /// Read the model the answer names (a traced request's `gen_ai.response.model`).
    pub read_model: bool,
    /// The fallback deployment that answers, when not the one asked for.
    pub fallback: Option<&'a str>,
    /// What the response cache did (`x-aoai-proxy-cache`), and the most of a 200 it keeps.
    pub cache: Option<(&'static str, Option<usize>)>,
    /// What a success teaches about where objects live; `None` on paths without objects.
    pub learning: Option<Learning<'a>>,
}

/// What an answer relayed reported: its usage, and the model it named (where it was read).
#[derive(Debug, Default)]
pub struct Reported {
    pub usage: Option<Usage>,
    pub model: Option<Box<str>>,
    /// The answer as the response cache keeps it, where it asked for it and may.
    pub captured: Option<Box<Entry>>,
}

/// What a successful answer says about where objects live.
#[derive(Clone, Copy, Default)]
pub struct Learning<'a> {
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

impl Relay {
    /// One try of `request` on `backend` with `credential`, abandoned (with an error) if the
    /// client leaves meanwhile, so the backend stops generating for nobody. A backend that
    /// knows the deployment by another name gets that name.
    pub async fn try_once(
        &self,
        session: &mut Session,
        backend: &Backend,
        request: &Request,
        credential: &Credential,
        traceparent: Option<(&str, bool)>,
    ) -> Result<Attempt> {
        let Some(peer) = backend.peer() else {
            let e = Error::explain(
                ErrorType::ConnectError,
                "the backend's host name has not resolved",
            );
            return Ok(Attempt::Failed(Failure::Connect, e));
        };
        let head = session.req_header();
        let renamed = match backend.naming(request.deployment()) {
            Some(Naming::Renamed(own)) => request.for_backend(own, head.raw_path()),
            _ => Default::default(),
        };
        let path = renamed.path.as_deref().unwrap_or(head.raw_path());
        let body = renamed.body.as_ref().unwrap_or(request.body());
        let added = headers::Added {
            host: &backend.host_header,
            credential,
            traceparent: traceparent.map(|(value, _)| value),
            continues: traceparent.is_some_and(|(_, continues)| continues),
        };
        let wire = exchange::Request::for_backend(head, path, added, body)?;
        let t = &self.timeouts;
        let send = exchange::send(&self.upstream, &peer, &wire, t.response_header, t.body_idle);
        tokio::select! {
            attempt = send => Ok(attempt),
            _ = session.downstream_session.read_body_or_idle(true) => {
                let e = Error::explain(ErrorType::ConnectionClosed, "client closed the connection while waiting for a backend");
                Err(e.into_down())
            }
        }
    }

    /// What `attempt` on `backend` produced, read to its end (at most `max` bytes of body).
    pub async fn read(&self, backend: usize, attempt: Attempt, max: usize) -> Product {
        let t = &self.timeouts;
        let read = exchange::read_whole(&self.upstream, attempt, max, (t.body_idle, t.pool_idle));
        match read.await {
            Ok(whole) => Product::Whole(whole),
            Err((failure, error)) => Product::Failed {
                backend,
                failure,
                error,
            },
        }
    }

    /// Puts aside what a try produced before the next one: an answer is drained so its
    /// connection goes back to the pool.
    pub fn set_aside(&self, attempt: Attempt) {
        if let Attempt::Answered(answer) = attempt {
            exchange::discard(self.upstream.clone(), answer, self.timeouts.pool_idle);
        }
    }

    /// Streams the chosen answer of `backend` to the client, chunk by chunk as the backend
    /// sends it, then returns its connection to the pool. The usage it reports is read on the
    /// way, counted for `backend`, the request's deployment and client, and returned.
    pub async fn relay(
        &self,
        session: &mut Session,
        answer: Answer,
        backend: &Backend,
        delivery: &Delivery<'_>,
    ) -> Result<Reported> {
        if answer.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // Boxed, as once per session it can be: it would size every answer's future.
            let tunnel = realtime::tunnel(session, answer, self.timeouts.body_idle);
            return Box::pin(tunnel).await.map(|()| Reported::default());
        }
        let Answer {
            mut head,
            session: mut up,
            peer,
        } = answer;
        let told = Told {
            left: delivery.limits.as_ref(),
            fallback: delivery.fallback,
            cache: delivery.cache.map(|(said, _)| said),
        };
        for_client(&mut head, told)?;
        let mut readers = Readers::for_answer(&head, delivery);
        session
            .write_response_header(head, false)
            .await
            .map_err(|e| e.into_down())?;
        let copied = self
            .copy_body(session, &mut up, &mut readers, (backend, delivery))
            .await;
        // Counted also when the body broke off after the backend had reported its usage.
        readers.end(backend, delivery, &*self.objects, copied.is_ok());
        copied?;
        if let Some(rest) = readers.rest() {
            let write = session.write_response_body(Some(rest), false);
            write.await.map_err(|e| e.into_down())?;
        }
        let end = session.write_response_body(None, true);
        end.await.map_err(|e| e.into_down())?;
        self.upstream
            .release(*up, &peer, self.timeouts.pool_idle)
            .await;
        let captured = readers.capture.take().and_then(|c| {
            let now = crate::cache::unix_now_ms();
            c.finish(readers.counted, now).map(Box::new)
        });
        Ok(Reported {
            usage: readers.counted,
            model: readers.model,
            captured,
        })
    }

    /// Copies the body of `up` to the client through `readers`, until it ends. What the answer
    /// reported is counted before its last bytes go out, so it is there once the client has them.
    async fn copy_body(
        &self,
        session: &mut Session,
        up: &mut HttpSession,
        readers: &mut Readers<'_>,
        (backend, delivery): (&Backend, &Delivery<'_>),
    ) -> Result<()> {
        let idle = self.timeouts.body_idle;
        loop {
            let chunk = tokio::select! {
                biased;
                chunk = tokio::time::timeout(idle, up.read_response_body()) => chunk,
                // Between chunks, notice a client that left so the backend stops generating.
                _ = session.downstream_session.read_body_or_idle(true) => {
                    return Err(Error::explain(ErrorType::ConnectionClosed, "client left mid-response").into_down());
                }
            };
            let bytes = match chunk {
                Ok(Ok(Some(bytes))) => bytes,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(e)) => return Err(e.into_up()),
                Err(_) => {
                    let why = format!("backend silent for {idle:?} mid-response");
                    return Err(Error::explain(ErrorType::ReadTimedout, why).into_up());
                }
            };
            let (bytes, end) = exchange::coalesce(up, bytes);
            let bytes = readers.feed(bytes, backend, &*self.objects);
            if matches!(end, Ok(true)) {
                readers.end(backend, delivery, &*self.objects, true);
            }
            let write = session.write_response_body(Some(bytes), false);
            write.await.map_err(|e| e.into_down())?;
            if end? {
                return Ok(());
            }
        }
    }

    /// Gives the client an answer read whole, as the backend sent it.
    pub async fn relay_whole(
        &self,
        session: &mut Session,
        whole: WholeAnswer,
        told: Told<'_>,
    ) -> Result<()> {
        let WholeAnswer { mut head, body } = whole;
        for_client(&mut head, told)?;
        let write = async {
            session.write_response_header(head, false).await?;
            session.write_response_body(Some(body), true).await
        };
        write.await.map_err(|e| e.into_down())
    }
}

/// A backend's response header made the client's: its hop-by-hop headers taken off, and what
/// the client is `told` on every answer put on.
fn for_client(head: &mut ResponseHeader, told: Told<'_>) -> Result<()> {
    headers::strip_response(head);
    told.put_on(head)
}

/// What reads an answer's body as it passes: its usage, the objects it made, and the usage
/// event the client did not ask for.
struct Readers<'a> {
    usage: Option<UsageReader>,
    created: Option<CreatedReader>,
    hide: Option<UsageEventFilter>,
    /// A success on a path with objects: what it taught is learned at its end.
    learning: Option<Learning<'a>>,
    /// The usage reported, once the answer has ended.
    counted: Option<Usage>,
    /// The model it named, where it was read for.
    model: Option<Box<str>>,
    /// What the client gets of it, for the response cache.
    capture: Option<Capture>,
}

impl<'a> Readers<'a> {
    fn for_answer(head: &ResponseHeader, delivery: &Delivery<'a>) -> Self {
        let success = head.status.is_success();
        let learning = delivery.learning.filter(|_| success);
        let stream = || {
            head.headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
        };
        Readers {
            usage: success
                .then(|| UsageReader::for_answer(&head.headers))
                .flatten()
                .map(|r| match delivery.read_model {
                    true => r.reading_model(),
                    false => r,
                }),
            created: learning
                .filter(|l| l.created)
                .map(|_| CreatedReader::for_answer(&head.headers)),
            hide: (delivery.hide_usage_event && success && stream())
                .then(UsageEventFilter::default),
            learning,
            counted: None,
            model: None,
            capture: delivery
                .cache
                .and_then(|(_, max)| Capture::begin(head, max?)),
        }
    }

    /// Reads `bytes` on their way; what the client gets of them.
    fn feed(&mut self, bytes: Bytes, backend: &Backend, objects: &dyn ObjectLocations) -> Bytes {
        if let Some(reader) = self.usage.as_mut() {
            reader.feed(&bytes);
        }
        if let Some(reader) = self.created.as_mut() {
            reader.feed(&bytes);
            // A stream's response is known from its first event: a follow-up sent before the
            // stream ends finds it without a search.
            if let (Some(id), Some(l)) = (reader.take_found(), &self.learning) {
                l.remember(objects, &backend.name, &[id]);
            }
        }
        let bytes = match self.hide.as_mut() {
            Some(filter) => filter.filter(bytes),
            None => bytes,
        };
        if let Some(capture) = self.capture.as_mut() {
            capture.feed(&bytes);
        }
        bytes
    }

    /// What the usage event's filter held back at the end, if anything: the client gets it.
    fn rest(&mut self) -> Option<Bytes> {
        let rest = self.hide.as_mut().map(UsageEventFilter::finish)?;
        if let Some(capture) = self.capture.as_mut() {
            capture.feed(&rest);
        }
        (!rest.is_empty()).then_some(rest)
    }

    /// The answer ended (`complete`, or broke off): the usage it reported is counted for
    /// `backend` (and kept in `counted`), and what a complete answer taught is learned. Once.
    fn end(
        &mut self,
        backend: &Backend,
        delivery: &Delivery<'_>,
        objects: &dyn ObjectLocations,
        complete: bool,
    ) {
        if let Some(reader) = self.usage.take() {
            (self.counted, self.model) = reader.finish_with_model();
            if let Some(u) = &self.counted {
                let client = delivery.client.as_deref().map(|c| c.name.as_str());
                backend.stats.record_usage(delivery.deployment, client, u);
            }
        }
        if let (true, Some(learning)) = (complete, self.learning.take()) {
            let made = self.created.take().map(CreatedReader::finish);
            learning.remember(objects, &backend.name, &made.unwrap_or_default());
        }
    }
}
