//! The Pingora [`ProxyHttp`] of aoai-proxy: [`Proxy`]. Its phases hand each request to the
//! [`Gateway`] in force, and a request follows one file per step:
//!
//! 1. `request_filter` ([`Proxy`], here) → [`Gateway::serve`] (`gateway`): admission
//!    (`admission`), the body read once, the typed view ([`crate::request`]), the client's
//!    limits (`accounting`), and the route (`route`);
//! 2. the tries, made and recorded by one driver (`drive`) and decided by a pure policy
//!    ([`crate::retry`]), with the waits for capacity between them (`route`);
//! 3. each try's exchange with a backend (`relay`, `exchange`, `headers`, `upstream`);
//! 4. the answer relayed (`relay`, or `realtime` for a WebSocket), or the proxy's own
//!    (`answers`);
//! 5. `logging`: the access line (`access`), the client's limits settled, and a cacheable
//!    answer kept (`cache`).
//!
//! NOTE: `request_filter` answers every request itself, and `upstream_peer` is never reached:
//! each try is its own exchange over a connection from `upstream` (Pingora's transport
//! connector for TCP, TLS, SNI and verification; our own idle lists) rather than Pingora's
//! proxy loop, because that loop cannot replay a body past its fixed 64 KiB retry buffer (on a
//! retry it sends no body at all: pingora-core `BODY_BUF_LIMIT`, pingora-proxy `proxy_h1.rs`)
//! and has no retry on a response status (https://github.com/cloudflare/pingora/issues/873).

mod access;
mod accounting;
mod admission;
mod answers;
mod cache;
mod drive;
mod embed;
mod exchange;
mod fallback;
mod gateway;
pub mod header_deadline;
pub mod headers;
pub mod paths;
mod realtime;
mod relay;
mod route;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use smallvec::SmallVec;

pub use access::JSON_TARGET as ACCESS_JSON_TARGET;
pub use answers::ProxyError;
pub use gateway::{Gateway, Lasting};

use crate::balance::Ticket;
use crate::cache::Looked;
use crate::clients::limits::Admitted;
use crate::clients::quota::Charged;
use crate::clients::Client;
use crate::metrics::InFlight;
use crate::outcome::Outcome;
use crate::telemetry::Trace;
use crate::usage::Usage;

/// The Pingora service: the [`Gateway`] in force, replaced whole on a reload. Each request
/// takes the one current when it arrives and keeps it to its end, so a reload never changes
/// the backends, clients or limits of a request (or stream) in flight.
pub struct Proxy {
    pub current: Arc<ArcSwap<Gateway>>,
}

/// Per-request state.
pub struct RequestCtx {
    /// The gateway the request is served by, from its arrival to its end.
    gateway: Arc<Gateway>,
    started: Instant,
    /// Tries made so far: one more than `tried` holds when the client left during a try,
    /// which then has no outcome.
    tries: u32,
    /// The deployment the request names (in its path, its query or its body's `model`).
    deployment: Option<String>,
    /// Each try's backend and what it produced.
    tried: SmallVec<[(usize, Outcome); 3]>,
    /// From arrival to the answer's header (the backend's, or the proxy's own after tries).
    first_byte: Option<Duration>,
    /// The authenticated client, when `clients` is configured.
    client: Option<Arc<Client>>,
    /// How it was admitted to its limits, when it has some.
    admitted: Option<Admitted>,
    /// What its quota and budget were charged, when it has some (boxed: few clients have
    /// them, and this state lives as long as the request).
    charged: Option<Box<Charged>>,
    /// The fallback deployment that answered it (`fallbacks`), when not the one asked for.
    fallback: Option<Box<str>>,
    /// Its place in a trace (`telemetry`).
    trace: Option<Box<Trace>>,
    /// What the response cache did for it, when it is cacheable (`cache`).
    looked: Option<Looked>,
    /// A cacheable request that missed: its answer is kept (boxed: only with a cache).
    fill: Option<Box<cache::Fill>>,
    /// The tokens the delivered answer reported.
    usage: Option<Usage>,
    /// How long it waited for capacity, in all.
    waited: Duration,
    /// Its place in the waiting room, when it was let go and its try's answer is not yet in
    /// (boxed: few requests ever wait).
    ticket: Option<Box<Ticket>>,
    _in_flight: InFlight,
}

impl RequestCtx {
    /// What the client is told on every answer: what it has left, the fallback that answered.
    fn told(&self) -> headers::Told<'_> {
        headers::Told {
            left: self.admitted.as_ref(),
            fallback: self.fallback.as_deref(),
            cache: self.looked.map(Looked::as_str),
        }
    }
}

/// Errors that mean the client is gone or stalled: nobody to answer, nothing to log as ours.
fn client_went_away(e: &Error) -> bool {
    use ErrorType::*;
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            ConnectionClosed | ReadError | WriteError | ReadTimedout | WriteTimedout
        )
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    /// No downstream modules: Pingora's default is a response compression module, disabled,
    /// that would still be built for every request. Answers pass through as the backend
    /// encoded them.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// Starts a request's state; it counts as in flight until the state is dropped.
    fn new_ctx(&self) -> RequestCtx {
        let gateway = self.current.load_full();
        RequestCtx {
            started: Instant::now(),
            tries: 0,
            deployment: None,
            tried: SmallVec::new(),
            first_byte: None,
            client: None,
            admitted: None,
            charged: None,
            fallback: None,
            trace: None,
            looked: None,
            fill: None,
            usage: None,
            waited: Duration::ZERO,
            ticket: None,
            _in_flight: gateway.metrics.start_request(),
            gateway,
        }
    }

    /// The request header is complete: its connection's header deadline
    /// (`timeouts.client_header`) is over.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        header_deadline::header_read(session);
        Ok(())
    }

    /// Serves the whole request (see [`Gateway::serve`]). Returns `true` (answered), so
    /// Pingora's own upstream phases never run.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let gateway = ctx.gateway.clone();
        gateway.serve(session, ctx).await?;
        Ok(true)
    }

    /// Never reached: [`Self::request_filter`] answers every request.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        Error::e_explain(
            ErrorType::InternalError,
            "requests are answered in request_filter",
        )
    }

    /// Answers an error that escaped the request: nothing if the response had started
    /// (the client sees the stream break, never a clean end) or the client is gone, 400 for a
    /// body it could not send, else an Azure-shaped 502.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let answer = if session.response_written().is_some() || client_went_away(e) {
            None
        } else if e.esource() == &ErrorSource::Downstream {
            Some(ProxyError::BadRequestBody)
        } else {
            Some(ProxyError::Upstream {
                status: 502,
                detail: "The proxy failed while handling the request.".into(),
            })
        };
        let error_code = match answer {
            None => 0,
            Some(err) => {
                let _ = err.respond(session).await;
                err.status()
            }
        };
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }

    /// Keeps a client that leaves out of the error log (the access log records it); a backend
    /// that fails mid-response is still logged as an error.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        client_went_away(e)
    }

    /// Ends the request: counts it, settles its client's limits, writes its access line, and
    /// starts its connection's header deadline for the next request.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let fill = ctx.fill.take();
        ctx.gateway.finish(session, e, ctx);
        if let Some(fill) = fill {
            let status = session.response_written().map(|r| r.status.as_u16());
            ctx.gateway.keep(*fill, status, ctx.fallback.is_some());
        }
        header_deadline::await_next_header(session);
    }
}
