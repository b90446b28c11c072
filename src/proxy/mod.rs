//! The Pingora [`ProxyHttp`] of aoai-proxy. Its phases are thin: `request_filter` admits the
//! request ([`admission`]), reads its body once, and hands it to the try loop ([`tries`]), which
//! runs each try as an upstream exchange ([`exchange`]), rewrites headers on the way
//! ([`headers`]), and relays the chosen answer ([`relay`], counting the tokens it reports) or
//! makes the proxy's own ([`answers`]).
//!
//! NOTE: each try is its own exchange over a connection from [`upstream`] (Pingora's transport
//! connector for TCP, TLS, SNI and verification; our own idle lists) rather than Pingora's proxy
//! loop, because that loop cannot replay a
//! body past its fixed 64 KiB retry buffer: on a retry it sends no body at all
//! (pingora-core `BODY_BUF_LIMIT`; pingora-proxy `proxy_h1.rs` `proxy_handle_downstream`), and it
//! has no retry on a response status (https://github.com/cloudflare/pingora/issues/873).

mod access;
mod admission;
mod answers;
mod exchange;
pub mod headers;
mod lists;
pub mod paths;
mod realtime;
mod relay;
mod search;
mod tries;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

pub use access::JSON_TARGET as ACCESS_JSON_TARGET;
pub use answers::ProxyError;

use crate::balance::Pool;
use crate::clients::entra::EntraVerifier;
use crate::clients::{Client, Clients};
use crate::config::{Limits, LogFormat, Timeouts};
use crate::credentials::TokenCache;
use crate::limits::{Admitted, LimitStore};
use crate::metrics::{InFlight, Metrics};
use crate::objects::ObjectLocations;
use crate::retry::Outcome;
use crate::state::SharedState;
use crate::usage::Usage;
use smallvec::SmallVec;

/// The Pingora service: the configuration in force, replaced whole on a reload. Each request
/// takes the one current when it arrives and keeps it to its end, so a reload never changes
/// the backends, clients or limits of a request (or stream) in flight.
pub struct ProxyService {
    pub current: Arc<ArcSwap<AoaiProxy>>,
}

/// Everything a request needs, built from one configuration and shared by the requests that
/// arrive while it is current.
pub struct AoaiProxy {
    pub pool: Arc<Pool>,
    /// `None` when no backend takes the proxy's Entra ID token.
    pub tokens: Option<Arc<TokenCache>>,
    pub upstream: Arc<upstream::Upstream>,
    pub max_tries: u32,
    /// How long a request waits for a token on its way (`auth.startup_wait`).
    pub startup_wait: std::time::Duration,
    /// The clients allowed in; `None` when the proxy is open.
    pub clients: Option<Clients>,
    /// Checks clients' Entra ID tokens (`client_auth.entra`).
    pub entra: Option<Arc<EntraVerifier>>,
    /// Where stateful objects live.
    pub objects: Arc<dyn ObjectLocations>,
    /// The state shared with other replicas (`state.redis`): cooldowns and ejections seen here
    /// are published through it.
    pub state: Option<Arc<SharedState>>,
    /// Where the clients' limit windows are kept.
    pub limit_store: Arc<dyn LimitStore>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// The path prefixes forwarded (`paths`).
    pub paths: Vec<String>,
    pub metrics: Arc<Metrics>,
    /// `usage.include_in_streams`: ask streamed completions for their usage.
    pub include_stream_usage: bool,
    /// `log.format`.
    pub log_format: LogFormat,
    /// When this configuration was loaded (for the status page).
    pub loaded_at: SystemTime,
}

/// Per-request state.
pub struct RequestCtx {
    /// The configuration the request is served by, from its arrival to its end.
    proxy: Arc<AoaiProxy>,
    started: Instant,
    /// Tries made so far.
    tries: u32,
    /// The deployment the request names (in its path, or its body's `model`).
    deployment: Option<String>,
    /// Each try's backend and what it produced.
    tried: SmallVec<[(usize, Outcome); 3]>,
    /// From arrival to the answer's header (the backend's, or the proxy's own after tries).
    first_byte: Option<Duration>,
    /// The authenticated client, when `clients` is configured.
    client: Option<Arc<Client>>,
    /// How it was admitted to its limits, when it has some.
    admitted: Option<Admitted>,
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

impl AoaiProxy {
    /// Lets the balancer take in what a try on backend `index` produced, and tells the other
    /// replicas of a cooldown or ejection it began.
    fn observe(
        &self,
        index: usize,
        outcome: Outcome,
        headers: Option<&http::HeaderMap>,
        deployment: Option<&str>,
    ) {
        let change = self.pool.observe(index, outcome, headers, deployment);
        if let (Some(change), Some(state)) = (change, &self.state) {
            state.send(crate::state::Write::Health {
                backend: self.pool.get(index).name.clone(),
                change,
            });
        }
    }

    /// Serves the whole request: admission, body, tries and the streamed answer.
    async fn serve(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        // A client that stops reading must not hold a backend stream forever.
        session.set_write_timeout(Some(self.timeouts.body_idle));
        let admitted = match self.admit(session, ctx) {
            Ok(()) => self.read_body(session).await?,
            Err(refused) => Err(refused),
        };
        match admitted {
            Ok(body) => self.forward(session, ctx, body).await,
            Err(refused) => {
                // The body is left unread: close afterwards rather than drain it.
                session.set_keepalive(None);
                refused.respond(session).await
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for ProxyService {
    type CTX = RequestCtx;

    /// No downstream modules: Pingora's default is a response compression module, disabled,
    /// that would still be built for every request. Answers pass through as the backend
    /// encoded them.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// Starts a request's state; it counts as in flight until the state is dropped.
    fn new_ctx(&self) -> RequestCtx {
        let proxy = self.current.load_full();
        RequestCtx {
            started: Instant::now(),
            tries: 0,
            deployment: None,
            tried: SmallVec::new(),
            first_byte: None,
            client: None,
            admitted: None,
            usage: None,
            _in_flight: proxy.metrics.start_request(),
            proxy,
        }
    }

    /// Serves the whole request: admission, body, tries and the streamed answer. Returns
    /// `true` (answered), so Pingora's own upstream phases never run.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let proxy = ctx.proxy.clone();
        proxy.serve(session, ctx).await?;
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
        let duration = ctx.started.elapsed();
        let status = session.response_written().map(|r| r.status.as_u16());
        let proxy = &ctx.proxy;
        proxy.metrics.record_end(status, duration, ctx.tries);
        if let (Some(client), Some(admitted)) = (&ctx.client, &ctx.admitted) {
            // What the backend reported replaces the estimate; an answer that is not a success
            // spent nothing; a success that reported nothing keeps its estimate.
            let spent = match (ctx.usage, status) {
                (Some(u), _) => u.prompt.saturating_add(u.completion),
                (None, Some(200..=299)) => admitted.estimate,
                (None, _) => 0,
            };
            proxy
                .limit_store
                .settle(&client.name, admitted, spent, Instant::now());
        }
        if !log::log_enabled!(target: access::TARGET, log::Level::Info) {
            return;
        }
        let req = session.req_header();
        access::AccessLine {
            client_addr: session.client_addr().map(|a| a.to_string()),
            client: ctx.client.as_deref().map(|c| c.name.as_str()),
            method: req.method.as_str(),
            path: req.uri.path(),
            deployment: ctx.deployment.as_deref(),
            status,
            tries: ctx
                .tried
                .iter()
                .map(|&(i, outcome)| (proxy.pool.get(i).name.as_str(), outcome))
                .collect(),
            first_byte: ctx.first_byte,
            duration,
            usage: ctx.usage,
            error: e.map(|e| e.to_string()),
        }
        .write(proxy.log_format);
    }
}
