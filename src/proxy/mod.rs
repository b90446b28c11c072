//! The Pingora [`ProxyHttp`] of aoai-proxy. Its phases are thin: `request_filter` admits the
//! request ([`admission`]), reads its body once, and hands it to the try loop ([`tries`]), which
//! runs each try as an upstream exchange ([`exchange`]), rewrites headers on the way
//! ([`headers`]), and relays the chosen answer ([`relay`], counting the tokens it reports) or
//! makes the proxy's own ([`answers`]).
//!
//! NOTE: each try is its own exchange over Pingora's upstream [`Connector`] (pooling, TLS,
//! SNI, verification) rather than Pingora's proxy loop, because that loop cannot replay a
//! body past its fixed 64 KiB retry buffer: on a retry it sends no body at all
//! (pingora-core `BODY_BUF_LIMIT`; pingora-proxy `proxy_h1.rs` `proxy_handle_downstream`), and it
//! has no retry on a response status (https://github.com/cloudflare/pingora/issues/873).

mod admission;
mod answers;
mod exchange;
pub mod headers;
pub mod paths;
mod relay;
mod tries;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

pub use answers::ProxyError;

use crate::balance::Pool;
use crate::clients::Clients;
use crate::config::{Limits, Timeouts};
use crate::credentials::TokenCache;
use crate::metrics::{InFlight, Metrics};
use crate::usage::Usage;

/// The proxy service: everything a request needs, shared by all requests.
pub struct AoaiProxy {
    pub pool: Arc<Pool>,
    /// `None` when no backend takes the proxy's Entra ID token.
    pub tokens: Option<Arc<TokenCache>>,
    pub connector: Arc<Connector>,
    pub max_tries: u32,
    /// How long a request waits for a token on its way (`auth.startup_wait`).
    pub startup_wait: std::time::Duration,
    /// The clients allowed in; `None` when the proxy is open.
    pub clients: Option<Clients>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// The path prefixes forwarded (`paths`).
    pub paths: Vec<String>,
    pub metrics: Arc<Metrics>,
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    /// Tries made so far.
    tries: u32,
    /// The backend of the last try.
    backend: Option<usize>,
    /// The authenticated client, when `clients` is configured.
    client: Option<String>,
    /// The tokens the delivered answer reported.
    usage: Option<Usage>,
    _in_flight: InFlight,
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
impl ProxyHttp for AoaiProxy {
    type CTX = RequestCtx;

    /// Starts a request's state; it counts as in flight until the state is dropped.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            tries: 0,
            backend: None,
            client: None,
            usage: None,
            _in_flight: self.metrics.start_request(),
        }
    }

    /// Serves the whole request: admission, body, tries and the streamed answer. Returns
    /// `true` (answered), so Pingora's own upstream phases never run.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // A client that stops reading must not hold a backend stream forever.
        session.set_write_timeout(Some(self.timeouts.body_idle));
        let admitted = match self.admit(session, ctx) {
            Ok(()) => self.read_body(session).await?,
            Err(refused) => Err(refused),
        };
        match admitted {
            Ok(body) => self.forward(session, ctx, body).await?,
            Err(refused) => {
                // The body is left unread: close afterwards rather than drain it.
                session.set_keepalive(None);
                refused.respond(session).await?;
            }
        }
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

    /// Writes one access-log line per request.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map_or_else(|| "-".to_string(), |r| r.status.as_u16().to_string());
        let backend = ctx.backend.map_or("-", |i| self.pool.get(i).name.as_str());
        let req = session.req_header();
        let tokens = ctx.usage.map_or_else(
            || "-".to_string(),
            |u| format!("{}/{}", u.prompt, u.completion),
        );
        log::info!(
            target: "aoai_proxy::access",
            "{} {} {status} backend={backend} tries={} client={} tokens={tokens} {}ms{}",
            req.method,
            req.uri.path(),
            ctx.tries,
            ctx.client.as_deref().unwrap_or("-"),
            ctx.started.elapsed().as_millis(),
            e.map(|e| format!(" error={e}")).unwrap_or_default(),
        );
    }
}
