//! The try loop: pick a backend, make the try, let the balancer take in what it produced, and
//! carry out what the retry policy ([`crate::retry::decide`]) says follows. Nothing is decided
//! here that the policy or the balancer could decide.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use super::answers::ProxyError;
use super::exchange::{self, Attempt};
use super::realtime;
use super::relay::{Delivery, Learning};
use super::{AoaiProxy, RequestCtx};
use crate::balance::{deployment, Backend, Credential, Naming, Pick, Selection, Unavailable};
use crate::credentials::TokenRef;
use crate::limits::Admitted;
use crate::metrics::Retried;
use crate::objects;
use crate::retry::{self, Failure, Outcome, Sent, Tries, Verdict};
use crate::usage::{self, StreamUsage, Usage};

/// The `x-ratelimit-remaining-*` headers of what a client has left.
pub(super) fn remaining(left: Option<&Admitted>) -> Vec<(&'static str, String)> {
    let Some(left) = left else { return Vec::new() };
    let mut headers = Vec::new();
    if let Some(n) = left.remaining_requests {
        headers.push(("x-ratelimit-remaining-requests", n.to_string()));
    }
    if let Some(n) = left.remaining_tokens {
        headers.push(("x-ratelimit-remaining-tokens", n.to_string()));
    }
    headers
}

/// How long a request that got a 401 waits for a new token before the 401 goes to the client.
const TOKEN_WAIT: Duration = Duration::from_secs(10);

impl AoaiProxy {
    /// Tries backends until one answers for good, then streams that answer to the client.
    pub(super) async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        body: Bytes,
    ) -> Result<()> {
        let path = session.req_header().uri.path();
        let realtime = realtime::is_realtime(path);
        ctx.deployment = match realtime {
            true => match realtime::deployment(path, session.req_header().uri.query()) {
                Ok(d) => d,
                Err(()) => return ProxyError::AmbiguousDeployment.respond(session).await,
            },
            false => deployment::requested(path, &body),
        };
        if let Err(refused) = self.within_limits(ctx, path, &body).await {
            return refused.respond(session).await;
        }
        let method = &session.req_header().method;
        // Boxed: a list or a search asks several backends and its future is 4 KB; inline, it
        // would size every request's future, and every request's copy of it, by that.
        if let Some(collection) = objects::list_of(method, path) {
            return Box::pin(self.list(session, ctx, collection)).await;
        }
        let named = objects::names(path, &body);
        if !named.is_empty() {
            return Box::pin(self.search(session, ctx, body, &named)).await;
        }
        // A success may have made an object: learn where it lives.
        let makes_objects = method == Method::POST && objects::collection(path).is_some();
        let dep = ctx.deployment.as_deref();
        // With `usage.include_in_streams`, a stream that would not report its tokens is asked to.
        let (body, hide_usage_event) = match self.include_stream_usage {
            true => {
                match usage::ask_for_stream_usage(path, session.req_header().uri.query(), &body) {
                    StreamUsage::Added(with) => (with, true),
                    StreamUsage::AsSent => (body, false),
                }
            }
            false => (body, false),
        };
        let mut token = self.tokens.as_ref().and_then(|t| t.token());
        let (mut selection, mut pick) = match self.first_pick(dep, &mut token).await {
            Ok(first) => first,
            Err(why) => {
                return ProxyError::unavailable(why, dep)
                    .respond_with(session, &remaining(ctx.admitted.as_ref()))
                    .await
            }
        };
        let mut token_refreshed = false;
        loop {
            ctx.tries += 1;
            let Pick { index, credential } = pick;
            let sent = credential.sent();
            let backend = self.pool.get(index);
            let peer = backend.peer();
            let sent_at = Instant::now();
            let attempt = self
                .try_once(session, backend, peer.as_deref(), credential, &body, dep)
                .await?;
            let outcome = attempt.outcome();
            if let Attempt::Answered(_) = attempt {
                backend.stats.record_first_byte(sent_at.elapsed());
            }
            ctx.tried.push((index, outcome));
            self.observe(index, outcome, attempt.headers(), dep);
            if let (Outcome::Status(StatusCode::UNAUTHORIZED), Sent::EntraToken) = (outcome, sent) {
                // The token was refused: whatever this request does next, the requests to
                // come need a new one.
                if let (Some(cache), Some(used)) = (&self.tokens, &token) {
                    cache.report_refused(used.generation);
                }
            }

            let tries = Tries {
                made: ctx.tries,
                max: self.max_tries,
                sent,
                token_refreshed,
            };
            let next = match retry::decide(tries, outcome, || selection.next(Instant::now())) {
                Verdict::Deliver => None,
                Verdict::Retry(next) => Some(next),
                Verdict::RetryWithFreshToken => {
                    token_refreshed = true;
                    self.fresh_token(&mut token)
                        .await
                        .and_then(|fresh| selection.again(index, fresh, Instant::now()))
                }
            };
            let retried = match next {
                Some(_) => Retried::Yes,
                None => Retried::No,
            };
            self.metrics.record_try(&backend.stats, outcome, retried);
            let Some(next) = next else {
                ctx.first_byte = Some(ctx.started.elapsed());
                let labels = Delivery {
                    backend: index,
                    deployment: dep,
                    client: ctx.client.as_deref().map(|c| c.name.as_str()),
                    hide_usage_event,
                    limits: ctx.admitted,
                    learning: makes_objects.then_some(Learning {
                        named: &[],
                        created: true,
                        deleted: false,
                    }),
                };
                let usage = self
                    .deliver(session, attempt, peer, backend, ctx.tries, labels)
                    .await?;
                ctx.usage = usage;
                return Ok(());
            };
            self.set_aside(attempt, peer, backend, ctx.tries);
            pick = next;
        }
    }

    /// Whether the request's client may use its deployment (`deployments`) and has requests and
    /// tokens left (`requests_per_minute`, `tokens_per_minute`); admits it to its limits.
    async fn within_limits(
        &self,
        ctx: &mut RequestCtx,
        path: &str,
        body: &[u8],
    ) -> Result<(), ProxyError> {
        let Some(client) = &ctx.client else {
            return Ok(());
        };
        let limits = &client.limits;
        if let Some(allowed) = &limits.deployments {
            let refused = |deployment: &str| ProxyError::DeploymentNotAllowed {
                client: client.name.clone(),
                deployment: deployment.to_string(),
            };
            match ctx.deployment.as_deref() {
                Some(d) if !allowed.contains(d) => return Err(refused(d)),
                Some(_) => {}
                // A body that should name the deployment but cannot be read for it (duplicate
                // keys, a form): a backend might still find one in it.
                None if !body.is_empty() && deployment::named_in_body(path) => {
                    return Err(refused("(unreadable model)"))
                }
                None => {}
            }
        }
        if limits.requests_per_minute.is_none() && limits.tokens_per_minute.is_none() {
            return Ok(());
        }
        let estimate = match limits.tokens_per_minute {
            Some(_) => crate::limits::estimate_tokens(body),
            None => 0,
        };
        match self
            .limit_store
            .admit(&client.name, limits, estimate, Instant::now())
            .await
        {
            Ok(admitted) => {
                ctx.admitted = Some(admitted);
                Ok(())
            }
            Err(refused) => Err(ProxyError::ClientLimit(refused)),
        }
    }

    /// The first backend for a request naming `deployment`, with `token` the one held. When only
    /// backends that need a token could serve it and none is held, the token may be on its way
    /// (the first fetch at start, or one after an outage): waits for it, at most
    /// `auth.startup_wait`, then looks again.
    async fn first_pick<'a>(
        &'a self,
        deployment: Option<&'a str>,
        token: &mut Option<TokenRef>,
    ) -> Result<(Selection<'a>, Pick), Unavailable> {
        let header = |t: &Option<TokenRef>| t.as_ref().map(|t| t.header.clone());
        match (
            self.pool.select(deployment, header(token), Instant::now()),
            &self.tokens,
        ) {
            (Err(Unavailable::NoToken), Some(cache)) => {
                *token = cache.token_or_wait(self.startup_wait).await;
                self.pool.select(deployment, header(token), Instant::now())
            }
            (first, _) => first,
        }
    }

    /// A token to replace `token`, which a backend refused: waits for the fetch that the refusal
    /// asked for, at most [`TOKEN_WAIT`]. Its header, or `None` when none came.
    pub(super) async fn fresh_token(&self, token: &mut Option<TokenRef>) -> Option<HeaderValue> {
        let (cache, used) = (self.tokens.as_ref()?, token.as_ref()?);
        let fresh = cache.replace(used.generation, TOKEN_WAIT).await?;
        let header = fresh.header.clone();
        *token = Some(fresh);
        Some(header)
    }

    /// Puts aside what a try produced before the next one: an answer is drained so its
    /// connection goes back to the pool; either is logged.
    pub(super) fn set_aside(
        &self,
        attempt: Attempt,
        peer: Option<Arc<HttpPeer>>,
        backend: &Backend,
        tries: u32,
    ) {
        match attempt {
            Attempt::Answered(answer) => {
                log::info!(
                    "backend {} answered {} (try {tries}/{}): retrying",
                    backend.name,
                    answer.status().as_u16(),
                    self.max_tries
                );
                if let Some(peer) = peer {
                    exchange::discard(self.upstream.clone(), peer, answer, self.timeouts.pool_idle);
                }
            }
            Attempt::Failed(f, e) => log::info!(
                "backend {}: {} ({e}) (try {tries}/{}): retrying",
                backend.name,
                f.as_str(),
                self.max_tries
            ),
        }
    }

    /// Gives the client what the last try produced: the backend's answer as it was, or a
    /// 502/504 when it got none.
    async fn deliver(
        &self,
        session: &mut Session,
        attempt: Attempt,
        peer: Option<Arc<HttpPeer>>,
        backend: &Backend,
        tries: u32,
        labels: Delivery<'_>,
    ) -> Result<Option<Usage>> {
        match attempt {
            Attempt::Answered(answer) => self.relay(session, answer, peer, labels).await,
            Attempt::Failed(f, e) => {
                log::warn!(
                    "backend {}: {} ({e}); giving up after {tries} tries",
                    backend.name,
                    f.as_str()
                );
                ProxyError::gave_up(f, &backend.name, tries)
                    .respond_with(session, &remaining(labels.limits.as_ref()))
                    .await?;
                Ok(None)
            }
        }
    }

    /// One try on `backend`, abandoned (with an error) if the client leaves meanwhile, so the
    /// backend stops generating for nobody.
    pub(super) async fn try_once(
        &self,
        session: &mut Session,
        backend: &Backend,
        peer: Option<&HttpPeer>,
        credential: Credential,
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
        // A backend that knows the deployment by another name gets that name: in the path
        // when the path names it, else as the body's `model`.
        let renamed = match backend.naming(deployment) {
            Some(Naming::Renamed(own)) => Some(own),
            _ => None,
        };
        let raw_path = session.req_header().raw_path();
        let in_path =
            renamed.and_then(
                |own| match realtime::is_realtime(session.req_header().uri.path()) {
                    true => realtime::rename_in_query(raw_path, own),
                    false => deployment::rename_in_path(raw_path, own),
                },
            );
        let renamed_body = match (renamed, &in_path) {
            (Some(own), None) => deployment::rename_in_body(body, own),
            _ => None,
        };
        let body = renamed_body.as_ref().unwrap_or(body);
        let request = exchange::Request::for_backend(
            session.req_header(),
            in_path.as_deref(),
            &backend.host_header,
            credential,
            body,
        )?;
        let send = exchange::send(
            &self.upstream,
            peer,
            request,
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
