//! The [`ProxyHttp`] implementation: admit the request, read its body once, then try backends
//! until one answers for good or the tries are spent, and stream that answer to the client.
//!
//! NOTE: each try is its own exchange over Pingora's upstream [`Connector`] (pooling, TLS,
//! SNI, verification) rather than Pingora's proxy loop, because that loop cannot replay a
//! body past its fixed 64 KiB retry buffer: on a retry it sends no body at all
//! (pingora-core `BODY_BUF_LIMIT`; pingora-proxy `proxy_h1.rs` `proxy_handle_downstream`), and it
//! has no retry on a response status (https://github.com/cloudflare/pingora/issues/873).

mod admission;
mod forward;
pub mod headers;
mod relay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::config::{ClientKey, CooldownPolicy, EjectionPolicy, Limits, Timeouts};
use crate::deployment;
use crate::errors::ProxyError;
use crate::metrics::{InFlight, Metrics};
use crate::pool::{Backend, BackendAuth, Pool};
use crate::retry::{self, Failure, Outcome, Verdict};
use crate::token::{TokenCache, TokenRef};
use forward::Attempt;
use headers::Credential;

/// How long a request that got a 401 waits for a new token before the 401 goes to the client.
const TOKEN_WAIT: Duration = Duration::from_secs(10);

/// The proxy service: everything a request needs, shared by all requests.
pub struct AoaiProxy {
    pub pool: Arc<Pool>,
    /// `None` with `auth.kind: none`.
    pub tokens: Option<Arc<TokenCache>>,
    pub connector: Arc<Connector>,
    pub max_tries: u32,
    pub clients: Option<Vec<ClientKey>>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub cooldown: CooldownPolicy,
    pub ejection: EjectionPolicy,
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
    _in_flight: InFlight,
}

impl AoaiProxy {
    /// The credential for backend `index`, or `None` when it needs a token and none is held.
    fn credential<'a>(
        &'a self,
        index: usize,
        token: Option<&'a TokenRef>,
    ) -> Option<Credential<'a>> {
        match (&self.pool.get(index).auth, &self.tokens) {
            (BackendAuth::ApiKey(key), _) => Some(Credential::ApiKey(key)),
            (BackendAuth::Token, None) => Some(Credential::None),
            (BackendAuth::Token, Some(_)) => token.map(|t| Credential::Bearer(&t.header)),
        }
    }

    /// Whether backend `index` may take a try of this request: it serves the deployment, has
    /// credentials, is not cooling for it and, when `healthy_only`, is neither ejected nor
    /// failing its probes.
    fn available(
        &self,
        index: usize,
        deployment: Option<&str>,
        token: Option<&TokenRef>,
        healthy_only: bool,
    ) -> bool {
        let b = self.pool.get(index);
        let now = Instant::now();
        b.serves(deployment)
            && self.credential(index, token).is_some()
            && b.health.cooling_left(deployment, now).is_none()
            && (!healthy_only || !(b.health.is_ejected(now) || b.health.is_probe_down()))
    }

    /// Why no backend can take this request: no backend serves the deployment (404), none has
    /// credentials (503), or every one that could is cooling (429 for the shortest cooldown).
    fn unavailable(&self, deployment: Option<&str>, token: Option<&TokenRef>) -> ProxyError {
        let serving: Vec<usize> = (0..self.pool.backends().len())
            .filter(|&i| self.pool.get(i).serves(deployment))
            .collect();
        if serving.is_empty() {
            return ProxyError::DeploymentNotFound {
                deployment: deployment.unwrap_or_default().to_string(),
            };
        }
        let with_credentials: Vec<usize> = serving
            .into_iter()
            .filter(|&i| self.credential(i, token).is_some())
            .collect();
        if with_credentials.is_empty() {
            return ProxyError::NoToken;
        }
        // A cooldown may have ended a moment ago: then the shortest wait is (almost) none.
        let now = Instant::now();
        let left = with_credentials
            .iter()
            .filter_map(|&i| self.pool.get(i).health.cooling_left(deployment, now))
            .min()
            .unwrap_or(std::time::Duration::from_millis(1));
        ProxyError::AllCooling {
            deployment: deployment.map(str::to_string),
            left,
        }
    }

    /// Tries backends until one answers for good, then streams that answer to the client.
    async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        body: Bytes,
    ) -> Result<()> {
        let deployment = deployment::requested(session.req_header().uri.path(), &body);
        let dep = deployment.as_deref();
        let mut token = self.tokens.as_ref().and_then(|t| t.token());
        // Ejected or probe-failing backends sit out, unless nothing else could serve at all.
        let n = self.pool.backends().len();
        let healthy_only = (0..n).any(|i| self.available(i, dep, token.as_ref(), true));
        let mut plan = self.pool.plan();
        let Some(mut index) = plan.next(|i| self.available(i, dep, token.as_ref(), healthy_only))
        else {
            return self.unavailable(dep, token.as_ref()).respond(session).await;
        };
        let mut token_replaced = false;
        loop {
            let credential = self
                .credential(index, token.as_ref())
                .unwrap_or(Credential::None);
            let backend = self.pool.get(index).clone();
            ctx.tries += 1;
            ctx.backend = Some(index);
            let peer = backend.peer();
            let attempt = self
                .try_once(session, &backend, peer.as_deref(), credential, &body, dep)
                .await?;
            let (outcome, headers) = match &attempt {
                Attempt::Response(up) => match up.response_header() {
                    Some(r) => (Outcome::Status(r.status.as_u16()), Some(&r.headers)),
                    None => (Outcome::Status(0), None),
                },
                Attempt::Failed(f, _) => (Outcome::Failed(*f), None),
            };
            backend.observe(outcome, headers, dep, &self.cooldown, &self.ejection);
            let mut verdict = retry::decide(outcome, ctx.tries, self.max_tries);
            let mut next = None;

            // A 401 to our token: the token may have been revoked or rotated. Fetch a new one
            // and try this backend once more; a second 401 goes to the client.
            let bearer = matches!(credential, Credential::Bearer(_));
            if let (Outcome::Status(401), true, Some(cache), Some(used)) =
                (outcome, bearer, &self.tokens, &token)
            {
                if token_replaced || ctx.tries >= self.max_tries {
                    // No try left to use a new token: still have one fetched for the requests to come.
                    cache.report_refused(used.generation);
                } else {
                    token_replaced = true;
                    if let Some(fresh) = cache.replace(used.generation, TOKEN_WAIT).await {
                        // The backend may have started cooling while we waited.
                        if self.available(index, dep, Some(&fresh), false) {
                            next = Some(index);
                            verdict = Verdict::Retry;
                        }
                        token = Some(fresh);
                    }
                }
            }
            if verdict == Verdict::Retry && next.is_none() {
                next = plan.next(|i| self.available(i, dep, token.as_ref(), healthy_only));
                if next.is_none() {
                    // Everything else is cooling or already spent: this answer is the last.
                    verdict = match outcome {
                        Outcome::Status(_) => Verdict::Deliver,
                        Outcome::Failed(f) => Verdict::GiveUp(f),
                    };
                }
            }

            self.metrics
                .record_try(index, outcome, verdict == Verdict::Retry);
            match (attempt, verdict) {
                (Attempt::Response(up), Verdict::Deliver) => {
                    return self.relay(session, up, peer).await;
                }
                (Attempt::Response(up), _) => {
                    log::info!(
                        "backend {} answered {outcome:?} (try {}/{}): retrying",
                        backend.name,
                        ctx.tries,
                        self.max_tries
                    );
                    if let Some(peer) = peer {
                        forward::discard(self.connector.clone(), peer, up, self.timeouts.pool_idle);
                    }
                }
                (Attempt::Failed(f, e), Verdict::GiveUp(_)) => {
                    log::warn!(
                        "backend {}: {} ({e}); no tries left",
                        backend.name,
                        f.as_str()
                    );
                    let detail = give_up_message(f, &backend.name, ctx.tries);
                    return ProxyError::Upstream {
                        status: f.status(),
                        detail,
                    }
                    .respond(session)
                    .await;
                }
                (Attempt::Failed(f, e), _) => {
                    log::info!(
                        "backend {}: {} ({e}) (try {}/{}): retrying",
                        backend.name,
                        f.as_str(),
                        ctx.tries,
                        self.max_tries
                    );
                }
            }
            let Some(n) = next else {
                return Error::e_explain(ErrorType::InternalError, "retry without a next backend");
            };
            index = n;
        }
    }

    /// One try on `backend`, abandoned (with an error) if the client leaves meanwhile, so the
    /// backend stops generating for nobody.
    async fn try_once(
        &self,
        session: &mut Session,
        backend: &Backend,
        peer: Option<&HttpPeer>,
        credential: Credential<'_>,
        body: &Bytes,
        deployment: Option<&str>,
    ) -> Result<Attempt> {
        let Some(peer) = peer else {
            let e = Error::explain(
                ErrorType::ConnectError,
                "the backend's host name has not resolved",
            );
            return Ok(Attempt::Failed(Failure::Connect, e));
        };
        // A backend that knows the deployment by another name gets that name.
        let renamed = backend.renames(deployment);
        let in_path = renamed
            .and_then(|own| deployment::rename_in_path(session.req_header().raw_path(), own));
        let renamed_body = match (renamed, &in_path) {
            (Some(own), None) => deployment::rename_in_body(body, own),
            _ => None,
        };
        let body = renamed_body.as_ref().unwrap_or(body);
        let mut req = headers::upstream_request(
            session.req_header(),
            &backend.host_header,
            credential,
            body,
        )?;
        if let Some(path) = in_path {
            req.set_raw_path(&path)?;
        }
        let send = forward::send(
            &self.connector,
            peer,
            req,
            body,
            self.timeouts.response_header,
            self.timeouts.body_idle,
        );
        tokio::select! {
            attempt = send => Ok(attempt),
            _ = session.downstream_session.read_body_or_idle(true) => {
                let e = Error::explain(ErrorType::ConnectionClosed, "client closed the connection while waiting for a backend");
                Err(e.into_down())
            }
        }
    }
}

fn give_up_message(f: Failure, backend: &str, tries: u32) -> String {
    let what = match f {
        Failure::Connect => "could not connect to",
        Failure::Tls => "could not establish TLS with",
        Failure::Timeout => "timed out waiting for",
        Failure::Dropped => "lost the connection to",
    };
    format!("The proxy {what} the Azure OpenAI backend {backend:?} after {tries} tries.")
}

#[async_trait]
impl ProxyHttp for AoaiProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            tries: 0,
            backend: None,
            client: None,
            _in_flight: self.metrics.start_request(),
        }
    }

    /// Serves the whole request: admission, body, tries and the streamed answer. Returns
    /// `true` (answered), so Pingora's own upstream phases never run.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // A client that stops reading must not hold a backend stream forever.
        session.set_write_timeout(Some(self.timeouts.body_idle));
        if let Err(e) = self.admit(session, ctx) {
            // The body is left unread: close afterwards rather than drain it.
            session.set_keepalive(None);
            e.respond(session).await?;
            return Ok(true);
        }
        let body = match self.read_body(session).await? {
            Ok(body) => body,
            Err(e) => {
                session.set_keepalive(None);
                e.respond(session).await?;
                return Ok(true);
            }
        };
        self.forward(session, ctx, body).await?;
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
    /// (the client sees the stream break, never a clean end), else an Azure-shaped 502.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        use ErrorType::*;
        let answer = if session.response_written().is_some() {
            None
        } else if e.esource() == &pingora::ErrorSource::Downstream {
            match e.etype() {
                // The client is gone or stalled: nobody to answer.
                ConnectionClosed | ReadError | WriteError | ReadTimedout | WriteTimedout => None,
                // It sent something unreadable (a malformed chunked body).
                _ => Some(ProxyError::BadRequestBody),
            }
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
        use ErrorType::*;
        e.esource() == &pingora::ErrorSource::Downstream
            && matches!(
                e.etype(),
                ConnectionClosed | ReadError | WriteError | ReadTimedout | WriteTimedout
            )
    }

    /// Writes one access-log line per request.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let backend = ctx.backend.map_or("-", |i| self.pool.get(i).name.as_str());
        let took: Duration = ctx.started.elapsed();
        let req = session.req_header();
        log::info!(
            target: "aoai_proxy::access",
            "{} {} {status} backend={backend} tries={} client={} {}ms{}",
            req.method,
            req.uri.path(),
            ctx.tries,
            ctx.client.as_deref().unwrap_or("-"),
            took.as_millis(),
            e.map(|e| format!(" error={e}")).unwrap_or_default(),
        );
    }
}
