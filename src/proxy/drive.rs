//! The one try driver. Every try of every request is made and recorded here, the same way,
//! whatever the policy ([`crate::retry`]) that says what follows it: the exchange, what the
//! balancer and the other replicas learn of it, its time to first byte, a refused token
//! reported, the record for the access log and the metrics; then the policy's verdict carried
//! out (the answer relayed, read whole, or set aside for the next try).

use std::sync::Arc;
use std::time::Instant;

use pingora::proxy::Session;
use pingora::Result;

use super::answers::ProxyError;
use super::exchange::Attempt;
use super::relay::Delivery;
use super::{Gateway, RequestCtx};
use crate::balance::{Backend, Pick};
use crate::config::FallbackCause;
use crate::credentials::TokenRef;
use crate::metrics::Retried;
use crate::outcome::{Failure, Outcome};
use crate::request::Request;
use crate::retry::{End, Policy, Product, Settled, Try, Verdict};
use crate::state::Write;

/// Where a request's tries begin: its first backend, and the token it was chosen with.
pub(super) struct Start {
    pub pick: Pick,
    pub token: Option<TokenRef>,
}

/// How the tries of a request ended.
pub(super) enum Driven {
    /// The client has its answer.
    Answered,
    /// A 429 was put aside: the request waits for capacity, then starts over.
    Wait,
    /// The deployment could not take it: the request goes to its next fallback.
    Fallback(FallbackCause),
}

/// What the driver does after a try, as the policy decided.
enum Step {
    /// Set aside what the try produced (if the policy did not read it) and try `Pick` next.
    Next(Pick, Option<Attempt>),
    /// Relay this try's answer as it comes (or the 502/504 of its failure).
    Deliver(Attempt),
    /// Give the client this, read whole (or the 502/504 of a failure).
    Give(Product),
    /// No backend is left: the policy's end.
    End,
    /// Set aside this try (a 429): the request waits for capacity.
    Wait(Attempt),
    /// Set aside what the try produced (if the policy did not read it): the request goes to
    /// its next fallback.
    Fallback(Option<Attempt>, FallbackCause),
}

impl Gateway {
    /// Makes the tries of `request` from `start` until `policy` settles on an answer, and
    /// gives it to the client.
    pub(super) async fn drive<P: Policy>(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        request: &Request,
        start: &mut Start,
        policy: &mut P,
        delivery: &Delivery<'_>,
    ) -> Result<Driven> {
        // By reference, not by value: an async fn keeps its arguments, and a copy of them, in
        // its future for as long as it runs.
        loop {
            let backend = self.pool.get(start.pick.index);
            let (t, attempt) = self
                .attempt(
                    session,
                    ctx,
                    request,
                    &start.pick,
                    backend,
                    start.token.as_ref(),
                )
                .await?;
            let step = self.step(policy, &t, attempt, &mut start.token).await;
            let retried = match P::RETRIES && matches!(step, Step::Next(..) | Step::Wait(_)) {
                true => Retried::Yes,
                false => Retried::No,
            };
            self.metrics.record_try(&backend.stats, t.outcome, retried);
            if let (Some(trace), false) = (&mut ctx.trace, matches!(step, Step::Deliver(_))) {
                // Put aside (or read whole): its span ends here, a delivered one's with the
                // request.
                trace.end_try(retried == Retried::Yes);
            }
            match step {
                Step::Next(next, attempt) => {
                    if let Some(attempt) = attempt {
                        let then = match P::RETRIES {
                            true => "retrying",
                            false => "asking the next backend",
                        };
                        self.set_aside(backend, &t, attempt, then);
                    }
                    start.pick = next;
                    continue;
                }
                Step::Wait(attempt) => {
                    self.set_aside(backend, &t, attempt, "waiting for capacity");
                    return Ok(Driven::Wait);
                }
                Step::Fallback(attempt, cause) => {
                    if let Some(attempt) = attempt {
                        self.set_aside(backend, &t, attempt, "falling back");
                    }
                    return Ok(Driven::Fallback(cause));
                }
                Step::Deliver(mut attempt) => {
                    if let Attempt::Answered(answer) = &mut attempt {
                        if t.outcome.is_throttled() {
                            shortest_wait(answer, policy);
                        }
                    }
                    self.deliver(session, ctx, backend, attempt, delivery)
                        .await?;
                }
                Step::Give(product) => self.give(session, ctx, product).await?,
                Step::End => match policy.end() {
                    End::Deliver(product) => self.give(session, ctx, product).await?,
                    End::Unavailable(why) => {
                        ctx.first_byte = Some(ctx.started.elapsed());
                        ProxyError::unavailable(why, request.deployment())
                            .respond_to(session, ctx.told())
                            .await?
                    }
                },
            }
            return Ok(Driven::Answered);
        }
    }

    /// One try of `request` on `pick`'s `backend`, and everything recorded of it: the balancer
    /// and the other replicas see its outcome, its first byte is timed, a refused `token` is
    /// reported, and it is kept for the access log.
    async fn attempt(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        request: &Request,
        pick: &Pick,
        backend: &Backend,
        token: Option<&TokenRef>,
    ) -> Result<(Try, Attempt)> {
        ctx.tries += 1;
        let sent = pick.credential.sent();
        let traceparent = match (&mut ctx.trace, &self.tracing) {
            (Some(trace), Some(tracing)) => {
                Some((trace.begin_try(tracing, pick.index), trace.parent.is_some()))
            }
            _ => None,
        };
        let sent_at = Instant::now();
        let attempt = self
            .relay
            .try_once(
                session,
                backend,
                request,
                &pick.credential,
                traceparent
                    .as_ref()
                    .map(|(t, continues)| (t.as_str(), *continues)),
            )
            .await?;
        let outcome = attempt.outcome();
        if let Attempt::Answered(_) = attempt {
            backend.stats.record_first_byte(sent_at.elapsed());
        }
        ctx.tried.push((pick.index, outcome));
        self.observe(pick.index, outcome, sent_at, &attempt, request.deployment());
        if let Some(ticket) = ctx.ticket.take() {
            // The first answer after a wait: it says whether the next in line may go.
            ticket.answered(outcome.is_success(), outcome.is_throttled());
        }
        if let (true, Some(used)) = (outcome.refuses_token(sent), token) {
            // Whatever this request does next, the requests to come need a new token.
            self.tokens.refused(used);
        }
        let t = Try {
            backend: pick.index,
            made: ctx.tries,
            sent,
            outcome,
        };
        Ok((t, attempt))
    }

    /// Lets the balancer take in what a try on backend `index`, sent at `sent_at`, produced
    /// (and, with `balance.strategy: headroom`, the quota it says is left), and tells the other
    /// replicas of a cooldown or ejection it began, and of that quota now and then.
    pub(super) fn observe(
        &self,
        index: usize,
        outcome: Outcome,
        sent_at: Instant,
        attempt: &Attempt,
        deployment: Option<&str>,
    ) {
        let headers = attempt.headers();
        let change = self.pool.observe(index, outcome, headers, deployment);
        // Only a deployment that exists answers 2xx or 429: a name made up by a client (404)
        // leaves nothing behind.
        let report = headers
            .filter(|_| outcome.is_success() || outcome.is_throttled())
            .and_then(|h| self.pool.remember(index, h, deployment, sent_at));
        let Some(state) = &self.state else {
            return;
        };
        let backend = || self.pool.get(index).name.clone();
        if let Some(change) = change {
            let backend = backend();
            state.send(Write::Standing { backend, change });
        }
        if let Some(report) = report {
            let deployment = deployment.map(str::to_string);
            let backend = backend();
            state.send(Write::Capacity {
                backend,
                deployment,
                report,
            });
        }
    }

    /// What `policy` says follows try `t`, carried out as far as it needs the network: a fresh
    /// token fetched, an answer read whole.
    async fn step<P: Policy>(
        &self,
        policy: &mut P,
        t: &Try,
        attempt: Attempt,
        token: &mut Option<TokenRef>,
    ) -> Step {
        match policy.decide(t) {
            Verdict::Deliver => Step::Deliver(attempt),
            Verdict::Wait => Step::Wait(attempt),
            Verdict::Fallback(cause) => Step::Fallback(Some(attempt), cause),
            Verdict::Next(pick) => Step::Next(pick, Some(attempt)),
            Verdict::RefreshToken => {
                let fresh = self.tokens.replace(token).await;
                match fresh.and_then(|header| policy.again(t.backend, header)) {
                    Some(pick) => Step::Next(pick, Some(attempt)),
                    None => Step::Deliver(attempt),
                }
            }
            Verdict::Read(max) => {
                let product = self.relay.read(t.backend, attempt, max).await;
                match policy.settle(t, product) {
                    Settled::Deliver(product) => Step::Give(product),
                    Settled::Next(pick) => Step::Next(pick, None),
                    Settled::End => Step::End,
                    Settled::Fallback(cause) => Step::Fallback(None, cause),
                }
            }
        }
    }

    /// Puts aside what try `t` produced before the next one, or a wait (an answer is drained
    /// so its connection goes back to the pool), and logs it.
    fn set_aside(&self, backend: &Backend, t: &Try, attempt: Attempt, then: &str) {
        let tries = (t.made, self.max_tries);
        match &attempt {
            Attempt::Answered(answer) => log::info!(
                "backend {} answered {} (try {}/{}): {then}",
                backend.name,
                answer.status().as_u16(),
                tries.0,
                tries.1
            ),
            Attempt::Failed(f, e) => log::info!(
                "backend {}: {} ({e}) (try {}/{}): {then}",
                backend.name,
                f.as_str(),
                tries.0,
                tries.1
            ),
        }
        self.relay.set_aside(attempt);
    }

    /// Gives the client what the last try produced: the backend's answer as it comes, or a
    /// 502/504 when it got none.
    async fn deliver(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        backend: &Arc<Backend>,
        attempt: Attempt,
        delivery: &Delivery<'_>,
    ) -> Result<()> {
        ctx.first_byte = Some(ctx.started.elapsed());
        match attempt {
            Attempt::Answered(answer) => {
                let reported = self.relay.relay(session, answer, backend, delivery).await?;
                ctx.usage = reported.usage;
                if let (Some(entry), Some(fill)) = (reported.captured, ctx.fill.as_mut()) {
                    fill.captured = Some(entry);
                }
                if let (Some(trace), Some(model)) = (&mut ctx.trace, reported.model) {
                    trace.response_model = Some(model);
                }
                Ok(())
            }
            Attempt::Failed(failure, e) => {
                self.gave_up(session, ctx, backend, failure, &e.to_string())
                    .await
            }
        }
    }

    /// Gives the client an answer read whole, or the 502/504 of a backend that gave none.
    async fn give(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        product: Product,
    ) -> Result<()> {
        ctx.first_byte = Some(ctx.started.elapsed());
        match product {
            Product::Whole(whole) => self.relay.relay_whole(session, whole, ctx.told()).await,
            Product::Failed {
                backend,
                failure,
                error,
            } => {
                let backend = self.pool.get(backend).clone();
                self.gave_up(session, ctx, &backend, failure, &error).await
            }
        }
    }

    /// The client's answer when `backend` gave none (`failure`, `error`) and no try is left.
    async fn gave_up(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        backend: &Backend,
        failure: Failure,
        error: &str,
    ) -> Result<()> {
        let tries = ctx.tries;
        log::warn!(
            "backend {}: {} ({error}); giving up after {tries} tries",
            backend.name,
            failure.as_str()
        );
        ProxyError::gave_up(failure, &backend.name, tries)
            .respond_to(session, ctx.told())
            .await
    }
}

/// Makes a throttling 429 passed through to the client say the shortest wait among the
/// backends that could serve the request (`policy` knows it), when the backend's own says
/// longer.
fn shortest_wait<P: Policy>(answer: &mut super::exchange::Answer, policy: &P) {
    let Some(wait) = policy.shortest_wait() else {
        return;
    };
    let asked = crate::balance::cooldown::requested_cooldown(
        &answer.head.headers,
        std::time::SystemTime::now(),
    );
    if asked.is_some_and(|asked| asked <= wait) {
        return;
    }
    let (secs, ms) = (
        super::answers::retry_after_secs(wait),
        super::answers::retry_after_ms(wait),
    );
    let _ = answer.head.insert_header("retry-after", secs.to_string());
    let _ = answer.head.insert_header("retry-after-ms", ms.to_string());
}
