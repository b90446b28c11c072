//! The three ways a request uses its backends, each set up here and driven by the one try
//! driver (`drive`) with its [`retry`] policy: the pick (round robin, or headroom) with retries
//! and the waits for capacity (`retry.wait_for_capacity`) between them ([`Gateway::forward`]),
//! the search for a stateful object's backend ([`Gateway::search`]), and a list merged from
//! every backend's part ([`Gateway::list`]).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pingora::proxy::Session;
use pingora::Result;

use super::answers::ProxyError;
use super::drive::{Driven, Start};
use super::relay::{Delivery, Learning};
use super::{Gateway, RequestCtx};
use crate::balance::{spread, Pick, Turn, Unavailable};
use crate::config::FallbackCause;
use crate::config::Strategy;
use crate::credentials::TokenRef;
use crate::objects::Named;
use crate::request::{query, Request};
use crate::retry::{self, Page};
use smallvec::SmallVec;

/// What became of a request's tries on one deployment.
pub(super) enum Forwarded {
    /// The client has its answer.
    Answered,
    /// The deployment could not take it: it goes to the next fallback.
    Fallback(FallbackCause),
}

impl Gateway {
    /// Forwards `request` to its deployment: its turn of the round robin (or the most
    /// headroom), and retries (see [`retry::Forward`]); with `retry.wait_for_capacity`, the
    /// waits for capacity between them ([`Self::wait`]). Where the deployment cannot take it
    /// for one of the causes `on`, it is not answered: it goes to the next fallback. A
    /// fallback deployment forwards it as the one `answering`.
    pub(super) async fn forward_to(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        request: &Request,
        on: &BTreeSet<FallbackCause>,
        answering: Option<&str>,
    ) -> Result<Forwarded> {
        let deployment = request.deployment();
        // Read only where it is used: it parses the body.
        let estimate = match self.pool.strategy() {
            Strategy::Headroom => request.capacity_estimate(),
            Strategy::RoundRobin => 0,
        };
        let learning = request.may_create().then(|| Learning {
            created: true,
            ..Learning::default()
        });
        let mut delivery = self.delivery(ctx, request, learning);
        delivery.fallback = answering;
        let wait_until = self
            .waiting
            .as_ref()
            .map(|(_, budget)| ctx.started + *budget);
        // Tries answered 429 while the request could still wait: not counted.
        let mut forgiven = 0;
        let earlier = ctx.tries;
        let mut newcomer = true;
        // Each way out of the loop but an answer or a fallback: no backend can take it now.
        let why = loop {
            // With waiting, a newcomer queues behind the requests waiting for its deployment,
            // and a request that no backend has room for waits before it is sent (every
            // backend cooling, or, with headroom, all too full for it).
            let must_wait = self.waiting.as_ref().is_some_and(|(room, _)| {
                (newcomer && room.busy(deployment)) || self.free_in(deployment, estimate).is_some()
            });
            newcomer = false;
            if must_wait {
                if self.wait(session, ctx, deployment, estimate, false).await? {
                    continue;
                }
                break None;
            }
            let (policy, mut start) = match self.forward_plan(deployment, estimate).await {
                Ok(plan) => plan,
                Err(Unavailable::Cooling { shortest }) if self.waiting.is_some() => {
                    if self.free_in(deployment, estimate).is_none() {
                        // The pick and the waiting room disagree (a cooldown began between
                        // the two looks): never loop back without a pause.
                        tokio::time::sleep(shortest.min(Duration::from_millis(20))).await;
                    }
                    if self.wait(session, ctx, deployment, estimate, false).await? {
                        continue;
                    }
                    break None;
                }
                Err(why) => break Some(why),
            };
            let mut policy = policy
                .waiting_until(wait_until, forgiven)
                .falling_back_on(on, earlier);
            let driven = self
                .drive(session, ctx, request, &mut start, &mut policy, &delivery)
                .await?;
            match driven {
                Driven::Answered => return Ok(Forwarded::Answered),
                Driven::Fallback(cause) => return Ok(Forwarded::Fallback(cause)),
                // Its turn was answered 429: back to the front of the line.
                Driven::Wait if self.wait(session, ctx, deployment, estimate, true).await? => {
                    forgiven = policy.forgiven();
                }
                Driven::Wait => break None,
            }
        };
        self.cannot_serve(session, ctx, why, (deployment, estimate), on)
            .await
    }

    /// The end of a request no backend of its deployment can take now (`why`; `None`: it
    /// could not wait longer): its fallback, with `unavailable` among the causes `on`; else
    /// the client's answer, the throttling 429 with the shortest wait spread.
    async fn cannot_serve(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        why: Option<Unavailable>,
        (deployment, estimate): (Option<&str>, u64),
        on: &BTreeSet<FallbackCause>,
    ) -> Result<Forwarded> {
        if on.contains(&FallbackCause::Unavailable) {
            return Ok(Forwarded::Fallback(FallbackCause::Unavailable));
        }
        let why = match why {
            None => {
                let shortest = self.free_in(deployment, estimate);
                let shortest = shortest.unwrap_or(Duration::from_millis(1));
                self.spread(shortest, deployment, estimate)
            }
            Some(Unavailable::Cooling { shortest }) => self.spread(shortest, deployment, estimate),
            Some(why) => why,
        };
        self.unavailable(session, ctx, why, deployment).await?;
        Ok(Forwarded::Answered)
    }

    /// The first backend of a request for `deployment` estimated at `estimate` tokens (its turn
    /// of the round robin), the token it is sent with, and the policy of its retries. In a
    /// function of its own, so that what choosing takes is not kept in the request's future
    /// while it is forwarded.
    pub(super) async fn forward_plan<'a>(
        &'a self,
        deployment: Option<&'a str>,
        estimate: u64,
    ) -> Result<(retry::Forward<'a>, Start), Unavailable> {
        let mut token = self.tokens.current();
        let (selection, pick) = self
            .tokens
            .choose(&mut token, no_token, |t| {
                self.pool
                    .select_costing(deployment, estimate, t, Instant::now())
            })
            .await?;
        let policy = retry::Forward::new(selection, self.max_tries);
        Ok((policy, Start { pick, token }))
    }

    /// Holds the request in the waiting room until a backend for `deployment` is free and its
    /// turn comes (`true`), at the `front` of the line for a request whose turn was just
    /// answered 429. `false`, at once, when the first backend frees up only after the wait
    /// budget, or `retry.max_waiting` requests wait already; or when the budget runs out.
    async fn wait(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        deployment: Option<&str>,
        estimate: u64,
        front: bool,
    ) -> Result<bool> {
        let Some((room, budget)) = &self.waiting else {
            return Ok(false);
        };
        let front = match ctx.ticket.take() {
            // Let go, and no backend was free after all (another replica's cooldown began):
            // its turn lets nobody else go, and it keeps its place at the front.
            Some(turn) => {
                turn.answered(false, true);
                true
            }
            None => front,
        };
        let deadline = ctx.started + *budget;
        let free_in = || self.free_in(deployment, estimate);
        let now = Instant::now();
        if free_in().is_some_and(|left| now + left > deadline) {
            return Ok(false);
        }
        let Some(mut ticket) = room.enter(deployment, front) else {
            return Ok(false);
        };
        let counted = self.metrics.start_waiting();
        let turn = tokio::select! {
            turn = ticket.turn(free_in, deadline) => turn,
            _ = session.downstream_session.read_body_or_idle(true) => {
                ctx.waited += now.elapsed();
                let e = pingora::Error::explain(
                    pingora::ErrorType::ConnectionClosed,
                    "client closed the connection while waiting for capacity",
                );
                return Err(e.into_down());
            }
        };
        drop(counted);
        ctx.waited += now.elapsed();
        match turn {
            Turn::Go => {
                ctx.ticket = Some(Box::new(ticket));
                Ok(true)
            }
            Turn::TimedOut => Ok(false),
        }
    }

    /// How long until a backend for `deployment` is free for a request of `estimate` tokens
    /// (see [`crate::balance::Pool::free_in`]), with the token in force now.
    fn free_in(&self, deployment: Option<&str>, estimate: u64) -> Option<Duration> {
        let token = self.tokens.current().is_some();
        self.pool
            .free_in(deployment, estimate, token, Instant::now())
    }

    /// Why a request for `deployment` is throttled when the first backend is free in
    /// `shortest`: the wait it is told spread (see [`crate::balance::spread`]), so that clients
    /// told to come back do not all come back at the same instant.
    fn spread(&self, shortest: Duration, deployment: Option<&str>, estimate: u64) -> Unavailable {
        let now = Instant::now();
        // Only headroom remembers what backends said of their limits.
        let limit = match self.pool.strategy() {
            Strategy::Headroom => self
                .pool
                .backends()
                .iter()
                .filter_map(|b| b.capacity.tokens(deployment, now))
                .map(|(_, per_minute)| per_minute as f64)
                .fold(0.0, f64::max),
            Strategy::RoundRobin => 0.0,
        };
        let spacing = spread::spacing(estimate, limit);
        let shortest = self.spread.wait(deployment, shortest, spacing, now);
        Unavailable::Cooling { shortest }
    }

    /// Serves `request`, which names the objects in `named` (see [`retry::Search`]).
    pub(super) async fn search(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        request: &Request,
        named: Named,
    ) -> Result<()> {
        let deployment = request.deployment();
        let mut holder = None;
        for id in &named.ids {
            if let Some(name) = self.relay.objects.find(id).await {
                holder = self.pool.index_of(&name);
                break;
            }
        }
        let (order, token) = match self.in_turn(deployment, holder).await {
            Ok(chosen) => chosen,
            Err(why) => return self.unavailable(session, ctx, why, deployment).await,
        };
        let header = token.as_ref().map(|t| t.header.clone());
        let (mut policy, first) = retry::Search::new(&self.pool, order, holder, header);
        let Some(first) = first else {
            let why = Unavailable::UnknownDeployment;
            return self.unavailable(session, ctx, why, deployment).await;
        };
        // A body names objects for a backend to use (and check) only when it makes something;
        // elsewhere only the path's object is taken as found there.
        let posted = request.is_post();
        let named_here = match posted {
            true => &named.ids[..],
            false => &named.ids[..named.ids.len().min(named.in_path.into())],
        };
        let learning = Learning {
            named: named_here,
            created: posted,
            deleted: request.deletes(),
        };
        let delivery = self.delivery(ctx, request, Some(learning));
        let mut start = Start { pick: first, token };
        self.drive(session, ctx, request, &mut start, &mut policy, &delivery)
            .await
            .map(drop)
    }

    /// Serves a list of `collection` from every backend (see [`retry::List`]); every object
    /// listed is remembered where it lives.
    pub(super) async fn list(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        request: &Request,
        collection: &'static str,
    ) -> Result<()> {
        let (order, token) = match self.in_turn(None, None).await {
            Ok(chosen) => chosen,
            Err(why) => return self.unavailable(session, ctx, why, None).await,
        };
        let q = session.req_header().uri.query();
        let page = Page {
            limit: query::param(q, "limit").and_then(|l| l.parse().ok()),
            oldest_first: query::param(q, "order").as_deref() == Some("asc"),
        };
        let header = token.as_ref().map(|t| t.header.clone());
        let (mut policy, first) = retry::List::new(&self.pool, order, header, page);
        let Some(first) = first else {
            return self
                .unavailable(session, ctx, Unavailable::UnknownDeployment, None)
                .await;
        };
        let delivery = self.delivery(ctx, request, None);
        let mut start = Start { pick: first, token };
        let served = self
            .drive(session, ctx, request, &mut start, &mut policy, &delivery)
            .await;
        for (id, backend) in policy.listed() {
            self.relay.objects.learn(id, &self.pool.get(*backend).name);
        }
        log::debug!("listed {collection} from every backend");
        served.map(drop)
    }

    /// The backends a search or a list asks in turn, for `deployment` (`holder` first), and the
    /// token they are asked with (waited for, when only backends that need one could be asked).
    async fn in_turn(
        &self,
        deployment: Option<&str>,
        holder: Option<usize>,
    ) -> Result<(SmallVec<[Pick; 4]>, Option<TokenRef>), Unavailable> {
        let mut token = self.tokens.current();
        let order = self
            .tokens
            .choose(&mut token, no_token, |t| {
                self.pool
                    .search_order(deployment, t.as_ref(), holder, Instant::now())
            })
            .await?;
        Ok((order, token))
    }

    /// How an answer to `request` is delivered to `ctx`'s client.
    fn delivery<'a>(
        &self,
        ctx: &RequestCtx,
        request: &'a Request,
        learning: Option<Learning<'a>>,
    ) -> Delivery<'a> {
        Delivery {
            deployment: request.deployment(),
            client: ctx.client.clone(),
            hide_usage_event: request.hides_usage_event(),
            limits: ctx.admitted,
            read_model: ctx.trace.as_ref().is_some_and(|t| t.sampled),
            fallback: None,
            cache: self.cache_told(ctx),
            learning,
        }
    }

    /// Tells the client why no backend can take its request for `deployment`.
    async fn unavailable(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        why: Unavailable,
        deployment: Option<&str>,
    ) -> Result<()> {
        ProxyError::unavailable(why, deployment)
            .respond_to(session, ctx.told())
            .await
    }
}

/// Whether a backend could not be chosen only for want of the proxy's token.
fn no_token(why: &Unavailable) -> bool {
    *why == Unavailable::NoToken
}
