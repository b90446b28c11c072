//! The three ways a request uses its backends, each set up here and driven by the one try
//! driver (`drive`) with its [`retry`] policy: the round robin with retries ([`Gateway::forward`]),
//! the search for a stateful object's backend ([`Gateway::search`]), and a list merged from
//! every backend's part ([`Gateway::list`]).

use std::time::Instant;

use pingora::proxy::Session;
use pingora::Result;

use super::answers::ProxyError;
use super::drive::Start;
use super::relay::{Delivery, Learning};
use super::{Gateway, RequestCtx};
use crate::balance::{Pick, Unavailable};
use crate::credentials::TokenRef;
use crate::objects::Named;
use crate::request::{query, Request};
use crate::retry::{self, Page};
use smallvec::SmallVec;

impl Gateway {
    /// Forwards `request`: its turn of the round robin, and retries (see [`retry::Forward`]).
    pub(super) async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        request: &Request,
    ) -> Result<()> {
        let deployment = request.deployment();
        let (mut policy, mut start) = match self.forward_plan(deployment).await {
            Ok(plan) => plan,
            Err(why) => return self.unavailable(session, ctx, why, deployment).await,
        };
        let learning = request.may_create().then(|| Learning {
            created: true,
            ..Learning::default()
        });
        let delivery = self.delivery(ctx, request, learning);
        self.drive(session, ctx, request, &mut start, &mut policy, &delivery)
            .await
    }

    /// The first backend of a request for `deployment` (its turn of the round robin), the
    /// token it is sent with, and the policy of its retries. In a function of its own, so that
    /// what choosing takes is not kept in the request's future while it is forwarded.
    async fn forward_plan<'a>(
        &'a self,
        deployment: Option<&'a str>,
    ) -> Result<(retry::Forward<'a>, Start), Unavailable> {
        let mut token = self.tokens.current();
        let (selection, pick) = self
            .tokens
            .choose(&mut token, no_token, |t| {
                self.pool.select(deployment, t, Instant::now())
            })
            .await?;
        let policy = retry::Forward::new(selection, self.max_tries);
        Ok((policy, Start { pick, token }))
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
        served
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
            .respond_to(session, ctx.admitted.as_ref())
            .await
    }
}

/// Whether a backend could not be chosen only for want of the proxy's token.
fn no_token(why: &Unavailable) -> bool {
    *why == Unavailable::NoToken
}
