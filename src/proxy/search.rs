//! Requests that name a stateful object (a file, a batch, a stored response, ...): they go to
//! the backend known to hold it, else to each backend in turn until one does not say "not
//! found". Asking is not retrying: it does not count against `retry.max_tries`, and a backend's
//! health does not keep it out (see [`Pool::search_order`](crate::balance::Pool)).
//!
//! What the client gets: the answer of the backend that has the object; when none says it
//! has it, the answer of one that could not say (a 429 from a throttled backend, which may be
//! the holder: the client waits it out rather than hear a false "not found"); only when every
//! backend said "not found", that.

use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use pingora::proxy::Session;
use pingora::Result;

use super::answers::ProxyError;
use super::exchange::{self, Attempt, WholeAnswer};
use super::relay::{Delivery, Learning};
use super::tries::remaining;
use super::{AoaiProxy, RequestCtx};
use crate::balance::{Pick, Unavailable};
use crate::credentials::TokenRef;
use crate::metrics::Retried;
use crate::objects::{self, Named};
use crate::retry::{Failure, Outcome, Sent};

/// What a backend that could not say whether it has the object produced.
enum Unsure {
    Answered(WholeAnswer),
    Failed(Failure, String),
}

impl AoaiProxy {
    /// Serves a request that names the objects in `named`.
    pub(super) async fn search(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        body: Bytes,
        named: &Named,
    ) -> Result<()> {
        let dep = ctx.deployment.clone();
        let dep = dep.as_deref();
        let mut holder = None;
        for id in &named.ids {
            if let Some(name) = self.objects.find(id).await {
                holder = self.pool.index_of(&name);
                break;
            }
        }
        let mut token = self.tokens.as_ref().and_then(|t| t.token());
        let order = match self.search_order(dep, holder, &mut token).await {
            Ok(order) => order,
            Err(why) => {
                return ProxyError::unavailable(why, dep)
                    .respond_with(session, &remaining(ctx.admitted.as_ref()))
                    .await
            }
        };
        // Only `DELETE {collection}/{id}` deletes the object named; a message or a vector
        // store's file goes, and its thread or store stays.
        let deleting = session.req_header().method == Method::DELETE
            && objects::deletes_named(session.req_header().uri.path());
        let mut unsure: Option<(usize, Unsure)> = None;
        let mut not_found: Option<(usize, WholeAnswer)> = None;
        for Pick { index, credential } in order {
            let backend = self.pool.get(index);
            // The token in force now: an earlier backend may have had it replaced.
            let current = token.as_ref().map(|t| t.header.clone());
            let mut credential = backend.credential(current.as_ref()).unwrap_or(credential);
            let peer = backend.peer();
            let mut refreshed = false;
            let attempt = loop {
                ctx.tries += 1;
                let sent = credential.sent();
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
                self.metrics
                    .record_try(&backend.stats, outcome, Retried::No);
                // A refused token: once more on the same backend with a fresh one.
                let refused = outcome == Outcome::Status(StatusCode::UNAUTHORIZED)
                    && sent == Sent::EntraToken;
                if !refused || refreshed {
                    break attempt;
                }
                refreshed = true;
                let fresh = match (&self.tokens, &token) {
                    (Some(cache), Some(used)) => {
                        cache.report_refused(used.generation);
                        self.fresh_token(&mut token).await
                    }
                    _ => None,
                };
                match fresh.and_then(|t| backend.credential(Some(&t))) {
                    Some(c) => {
                        self.set_aside(attempt, peer.clone(), backend, ctx.tries);
                        credential = c;
                    }
                    None => break attempt,
                }
            };
            let answer = match attempt {
                Attempt::Failed(f, e) => {
                    log::info!(
                        "backend {} could not be asked: {} ({e})",
                        backend.name,
                        f.as_str()
                    );
                    if Some(index) == holder {
                        return self
                            .deliver_unsure(session, ctx, index, Unsure::Failed(f, e.to_string()))
                            .await;
                    }
                    unsure.get_or_insert((index, Unsure::Failed(f, e.to_string())));
                    continue;
                }
                Attempt::Answered(answer) => answer,
            };
            let status = answer.status();
            let look_inside = status == StatusCode::NOT_FOUND
                || status == StatusCode::BAD_REQUEST
                || Outcome::Status(status).is_failure();
            if !look_inside {
                // This backend has it.
                ctx.first_byte = Some(ctx.started.elapsed());
                // A body names objects for a backend to use (and check) only when it makes
                // something; elsewhere only the path's object is taken as found there.
                let posted = session.req_header().method == Method::POST;
                let learning = Learning {
                    named: if posted {
                        &named.ids
                    } else {
                        &named.ids[..named.ids.len().min(named.in_path.into())]
                    },
                    created: session.req_header().method == Method::POST,
                    deleted: deleting,
                };
                let labels = self.delivery(ctx, index, dep, Some(learning));
                ctx.usage = self.relay(session, answer, peer, labels).await?;
                return Ok(());
            }
            let whole = exchange::read_whole(
                &self.upstream,
                peer.as_deref(),
                answer,
                exchange::MAX_WHOLE,
                (self.timeouts.body_idle, self.timeouts.pool_idle),
            )
            .await;
            let whole = match whole {
                Ok(whole) => whole,
                Err(e) => {
                    unsure.get_or_insert((index, Unsure::Failed(Failure::Dropped, e.to_string())));
                    continue;
                }
            };
            if whole.is_not_found() {
                log::debug!("backend {} does not hold {:?}", backend.name, named.ids);
                not_found = Some((index, whole));
            } else if Outcome::Status(status).is_failure() {
                if Some(index) == holder {
                    return self
                        .deliver_unsure(session, ctx, index, Unsure::Answered(whole))
                        .await;
                }
                unsure.get_or_insert((index, Unsure::Answered(whole)));
            } else {
                // A 400 about something else: the object is here, the request is wrong.
                ctx.first_byte = Some(ctx.started.elapsed());
                return self
                    .relay_whole(session, whole, ctx.admitted.as_ref())
                    .await;
            }
        }
        if let Some((index, why)) = unsure {
            return self.deliver_unsure(session, ctx, index, why).await;
        }
        // Every backend said it does not have the object. What is remembered stays: one of
        // several objects named may not exist while the others do.
        ctx.first_byte = Some(ctx.started.elapsed());
        match not_found {
            Some((_, whole)) => {
                self.relay_whole(session, whole, ctx.admitted.as_ref())
                    .await
            }
            None => {
                ProxyError::unavailable(Unavailable::UnknownDeployment, dep)
                    .respond(session)
                    .await
            }
        }
    }

    /// The backends to ask, waiting (at most `auth.startup_wait`) for a token on its way when
    /// only backends that need one could be asked.
    pub(super) async fn search_order(
        &self,
        deployment: Option<&str>,
        holder: Option<usize>,
        token: &mut Option<TokenRef>,
    ) -> Result<smallvec::SmallVec<[Pick; 4]>, Unavailable> {
        let header = |t: &Option<TokenRef>| t.as_ref().map(|t| t.header.clone());
        match (
            self.pool
                .search_order(deployment, header(token).as_ref(), holder, Instant::now()),
            &self.tokens,
        ) {
            (Err(Unavailable::NoToken), Some(cache)) => {
                *token = cache.token_or_wait(self.startup_wait).await;
                self.pool
                    .search_order(deployment, header(token).as_ref(), holder, Instant::now())
            }
            (order, _) => order,
        }
    }

    /// Gives the client what a backend that could not say produced: its answer, or a 502/504.
    async fn deliver_unsure(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        index: usize,
        unsure: Unsure,
    ) -> Result<()> {
        ctx.first_byte = Some(ctx.started.elapsed());
        match unsure {
            Unsure::Answered(whole) => {
                self.relay_whole(session, whole, ctx.admitted.as_ref())
                    .await
            }
            Unsure::Failed(f, e) => {
                let backend = &self.pool.get(index).name;
                log::warn!(
                    "backend {backend}: {} ({e}); it may hold the object",
                    f.as_str()
                );
                ProxyError::gave_up(f, backend, ctx.tries)
                    .respond_with(session, &remaining(ctx.admitted.as_ref()))
                    .await
            }
        }
    }

    /// How an answer from `backend` is delivered to this request's client.
    pub(super) fn delivery<'a>(
        &self,
        ctx: &'a RequestCtx,
        backend: usize,
        deployment: Option<&'a str>,
        learning: Option<Learning<'a>>,
    ) -> Delivery<'a> {
        Delivery {
            backend,
            deployment,
            client: ctx.client.as_deref().map(|c| c.name.as_str()),
            hide_usage_event: false,
            limits: ctx.admitted,
            learning,
        }
    }
}
