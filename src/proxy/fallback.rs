//! Fallbacks (`fallbacks`): a request its deployment cannot take (no backend could serve it, or
//! a backend's 400 `context_length_exceeded` or `content_filter`) goes, as it was sent, to the
//! next deployment of the list, renamed in its path and its body's `model`; each deployment
//! has its own tries. Nothing has reached the client before a fallback (a stream falls back
//! only before its first byte), and the answer that ends it says which deployment gave it
//! (`x-aoai-proxy-fallback`).

use std::collections::BTreeSet;

use pingora::proxy::Session;
use pingora::Result;

use super::answers::ProxyError;
use super::route::Forwarded;
use super::{Gateway, RequestCtx};
use crate::config::FallbackCause;
use crate::request::Request;
use crate::retry::NO_FALLBACK;

impl Gateway {
    /// Forwards `request` to its deployment, then, while one cannot take it, to the next of
    /// its fallbacks (see [`Self::forward_to`]).
    pub(super) async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        request: &Request,
    ) -> Result<()> {
        let (on, chain) = self.fallbacks_of(ctx, request);
        if chain.is_empty() {
            return self
                .forward_to(session, ctx, request, &NO_FALLBACK, None)
                .await
                .map(drop);
        }
        // Boxed: inline, the chain's state would size every request's future.
        Box::pin(self.forward_along(session, ctx, request, on, chain)).await
    }

    /// Forwards `request` to its deployment, then down `chain`, its fallbacks, while one
    /// cannot take it for one of the causes `on`.
    async fn forward_along(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        request: &Request,
        on: &BTreeSet<FallbackCause>,
        chain: Vec<&str>,
    ) -> Result<()> {
        let target = session.req_header().raw_path().to_vec();
        let mut next = chain.into_iter();
        // The request as the fallback in force gets it, and that fallback's name.
        let mut fallen: Option<(Request, &str)> = None;
        let served = loop {
            let (current, answering) = match &fallen {
                Some((r, to)) => (r, Some(*to)),
                None => (request, None),
            };
            let causes = if next.len() > 0 { on } else { &NO_FALLBACK };
            let cause = match self
                .forward_to(session, ctx, current, causes, answering)
                .await
            {
                Ok(Forwarded::Fallback(cause)) => cause,
                done => break done.map(drop),
            };
            let Some(to) = next.next() else {
                // Not reached: a cause is given only while a fallback is left.
                let detail = "no fallback deployment is left".into();
                let gave_up = ProxyError::Upstream {
                    status: 502,
                    detail,
                };
                break gave_up.respond_to(session, ctx.told()).await;
            };
            // By the deployment asked for: the series declared at load.
            let asked = request.deployment().unwrap_or_default();
            self.metrics.record_fallback(asked, to, cause);
            log::info!(
                "deployment {} cannot take the request ({}): falling back to {to}",
                current.deployment().unwrap_or_default(),
                cause.as_str()
            );
            match self.renamed(session, current, to) {
                Ok(renamed) => fallen = Some((renamed, to)),
                Err(refused) => break refused.respond(session).await,
            }
            ctx.fallback = Some(to.into());
        };
        // The access log names the path the client asked for.
        let _ = session.req_header_mut().set_raw_path(&target);
        served
    }

    /// The causes of `request`'s fallbacks, and the deployments it may fall back to in order:
    /// those its client may use (a client may not reach through a fallback what it may not
    /// ask for).
    fn fallbacks_of<'g>(
        &'g self,
        ctx: &RequestCtx,
        request: &Request,
    ) -> (&'g BTreeSet<FallbackCause>, Vec<&'g str>) {
        let Some(fallback) = request.deployment().and_then(|d| self.fallbacks.get(d)) else {
            return (&NO_FALLBACK, Vec::new());
        };
        let client = ctx.client.as_deref();
        let allowed = |d: &&String| {
            client.is_none_or(|c| self.accounting.may_use(c, Some(d.as_str())).is_ok())
        };
        let chain = fallback.to.iter().filter(allowed).map(String::as_str);
        (&fallback.on, chain.collect())
    }

    /// `request` as deployment `to` gets it: the session's target renamed where it names the
    /// deployment, the body's `model` where it has one, read again.
    fn renamed(
        &self,
        session: &mut Session,
        request: &Request,
        to: &str,
    ) -> Result<Request, ProxyError> {
        let (target, body) = request.renamed_to(to, session.req_header().raw_path());
        if let Some(target) = target {
            let head = session.req_header_mut();
            head.set_raw_path(&target)
                .map_err(|_| ProxyError::BadPath)?;
        }
        let ask = self.accounting.ask_streams_for_usage;
        Request::read(session.req_header(), body, ask).map_err(|_| ProxyError::AmbiguousDeployment)
    }
}
