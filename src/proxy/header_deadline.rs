//! `timeouts.client_header`: a request's whole header within a deadline, as nginx's
//! `client_header_timeout`, so a client that dribbles a header a byte at a time holds its
//! connection no longer than that.
//!
//! NOTE: Pingora 0.9 times each read of a request header (60 s between two reads), never the
//! whole header, and offers no setting for one (pingora-core `protocols/http/v1/server.rs`,
//! `read_request`). So the deadline is kept on the connection's stream, which Pingora reads the
//! header from: [`Timed`] starts it with the first byte of a request and ends it when the proxy
//! has the header whole ([`header_read`], from `early_request_filter`); a read still waiting
//! past it fails and the connection closes. The next request's deadline starts with its first
//! byte ([`await_next_header`], from `logging`); between requests Pingora's keep-alive timeout
//! applies as before. [`Deadlined`] is the listening app that gives each connection a [`Timed`]
//! stream; it runs Pingora's HTTP/1 keep-alive loop (pingora-core `apps/mod.rs`,
//! `impl ServerApp for T: HttpServerApp`) as Pingora does, with that stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown};
use pingora::protocols::{Ssl, Stream, UniqueID, ALPN};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Waiting for the first byte of a request header: no deadline.
const AWAITING: u8 = 0;
/// Reading a request header: the deadline runs.
const IN_HEADER: u8 = 1;
/// The header is read: the request's own timeouts apply.
const PAST_HEADER: u8 = 2;

/// A client connection's stream, with the deadline of the request header being read.
#[derive(Debug)]
pub struct Timed {
    inner: Stream,
    within: Duration,
    state: AtomicU8,
    /// When the header being read must be whole (see [`Timed::expired`]).
    deadline: Option<Instant>,
    /// Made the first time a header is slow to come (never, for most connections).
    timer: Option<Pin<Box<Sleep>>>,
}

impl Timed {
    pub fn new(inner: Stream, within: Duration) -> Timed {
        Timed {
            inner,
            within,
            state: AtomicU8::new(AWAITING),
            deadline: None,
            timer: None,
        }
    }

    /// Whether the deadline has passed, registering to be woken when it does. It is set the
    /// first time a header's read waits (a header that arrives in one read, as nearly all do,
    /// never reads the clock): a moment after its first byte.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let within = self.within;
        let deadline = *self.deadline.get_or_insert_with(|| Instant::now() + within);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for Timed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let state = self.state.load(Ordering::Relaxed);
        if state == PAST_HEADER {
            return Pin::new(&mut *self.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut *self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if state == AWAITING && buf.filled().len() > before => {
                self.deadline = None;
                self.state.store(IN_HEADER, Ordering::Relaxed);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if state == IN_HEADER && self.expired(cx) => {
                let why = format!("the request header did not arrive within {:?}", self.within);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
            }
            read => read,
        }
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Timed {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Timed {
    fn id(&self) -> pingora::protocols::UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Timed {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Timed {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Timed {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Timed {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Timed {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The [`Timed`] stream under `session`, if it is one.
fn timed(session: &Session) -> Option<&Timed> {
    session
        .downstream_session
        .stream()?
        .as_any()
        .downcast_ref::<Timed>()
}

/// The request header of `session` is whole: its deadline is over.
pub fn header_read(session: &Session) {
    if let Some(t) = timed(session) {
        t.state.store(PAST_HEADER, Ordering::Relaxed);
    }
}

/// The request of `session` is done: the next header's deadline starts with its first byte.
pub fn await_next_header(session: &Session) {
    if let Some(t) = timed(session) {
        t.state.store(AWAITING, Ordering::Relaxed);
    }
}

/// The listening app: `app` (Pingora's HTTP proxy) with each connection's stream [`Timed`].
pub struct Deadlined<A> {
    pub app: Arc<A>,
    /// `timeouts.client_header`.
    pub within: Duration,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Deadlined<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // HTTP/2 is not offered (no `h2` in ALPN, no h2c); were it negotiated, Pingora's own.
        if stream.selected_alpn_proto() == Some(ALPN::H2) {
            return self.app.process_new(stream, shutdown).await;
        }
        let stream: Stream = Box::new(Timed::new(stream, self.within));
        let mut session = ServerSession::new_http1(stream);
        // As Pingora's loop: 60 s of keep-alive, none once shutting down.
        session.set_keepalive((!*shutdown.borrow()).then_some(60));
        let limit = self
            .app
            .server_options()
            .and_then(|o| o.keepalive_request_limit);
        session.set_keepalive_reuses_remaining(limit);
        let mut result = self.app.process_new_http(session, shutdown).await;
        while let Some((stream, persistent)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(persistent) = persistent {
                persistent.apply_to_session(&mut session);
            }
            result = self.app.process_new_http(session, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        // Pingora's: wakes the keep-alive connections waiting for a request, so they close.
        ServerApp::cleanup(self.app.as_ref()).await
    }
}
