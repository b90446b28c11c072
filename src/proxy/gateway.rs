//! [`Gateway`]: everything a request uses, built from one configuration and shared by the
//! requests that arrive while it is in force, as parts with a small surface each: who is let in
//! ([`Admission`]), the backends and how they are chosen ([`Pool`]), the proxy's tokens
//! ([`Tokens`]), usage and limits ([`Accounting`]), and the upstream side ([`Relay`]). Its
//! [`Gateway::serve`] is the request path's first step; the tries are driven in `drive`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pingora::proxy::Session;
use pingora::Result;

use super::access::AccessLine;
use super::accounting::{Accounting, Ended, LetIn};
use super::admission::Admission;
use super::answers::ProxyError;
use super::relay::Relay;
use super::upstream::Upstream;
use super::RequestCtx;
use crate::balance::spread::Spread;
use crate::balance::{Pool, WaitingRoom};
use crate::cache::ResponseCache;
use crate::clients::entra::EntraVerifier;
use crate::clients::limits::LimitStore;
use crate::clients::quota::QuotaStore;
use crate::clients::quota::Standing;
use crate::clients::{Client, Clients};
use crate::config::{Config, Fallback, LogFormat};
use crate::credentials::{TokenCache, Tokens};
use crate::metrics::Metrics;
use crate::objects::ObjectLocations;
use crate::request::{AmbiguousDeployment, Request};
use crate::state::{unix_now, SharedState};
use crate::telemetry::{spans, Trace, Tracing};

/// The parts that live as long as the process, whatever the configuration in force.
pub struct Lasting {
    /// `None` when no backend takes the proxy's Entra ID token.
    pub tokens: Option<Arc<TokenCache>>,
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<Metrics>,
    /// Client limit windows: kept across reloads, by client name.
    pub limits: Arc<dyn LimitStore>,
    /// Client quota and budget counts: kept across reloads, by client name.
    pub quotas: Arc<dyn QuotaStore>,
    /// Checks clients' Entra ID tokens, with the signing keys fetched at start.
    pub entra: Option<Arc<EntraVerifier>>,
    /// Where stateful objects live: kept across reloads, by backend name.
    pub objects: Arc<dyn ObjectLocations>,
    /// The state shared with other replicas (`state.redis`).
    pub state: Option<Arc<SharedState>>,
    /// Where requests wait for capacity: kept across reloads, so that those waiting keep
    /// their places and `retry.max_waiting` counts them all.
    pub waiting: Arc<WaitingRoom>,
    /// The moments the proxy's own throttling 429s told clients to come back, kept across
    /// reloads likewise.
    pub spread: Arc<Spread>,
    /// Traces (`telemetry`, fixed at start).
    pub tracing: Option<Arc<Tracing>>,
    /// The response cache (`cache`, fixed at start): its entries outlive reloads.
    pub cache: Option<Arc<ResponseCache>>,
}

/// The request path as one configuration builds it.
pub struct Gateway {
    pub(super) admission: Admission,
    pub(super) pool: Arc<Pool>,
    pub(super) tokens: Tokens,
    pub(super) accounting: Accounting,
    pub(super) relay: Relay,
    /// Cooldowns and ejections seen here are published through it (`state.redis`).
    pub(super) state: Option<Arc<SharedState>>,
    pub(super) metrics: Arc<Metrics>,
    /// `retry.max_tries`.
    pub(super) max_tries: u32,
    /// Where requests wait for capacity, with `retry.wait_for_capacity` above zero; and that
    /// budget.
    pub(super) waiting: Option<(Arc<WaitingRoom>, Duration)>,
    /// The moments the proxy's own throttling 429s have told clients to come back.
    pub(super) spread: Arc<Spread>,
    /// Where a deployment's requests go when it cannot take them (`fallbacks`).
    pub(super) fallbacks: BTreeMap<String, Fallback>,
    /// Traces (`telemetry`).
    pub(super) tracing: Option<Arc<Tracing>>,
    /// The response cache (`cache`).
    pub(super) cache: Option<Arc<ResponseCache>>,
    /// `log.format`.
    log_format: LogFormat,
    /// When this configuration was loaded (for the status page).
    loaded_at: SystemTime,
}

impl Gateway {
    /// The gateway of `config`, with its `pool` built and the process's `lasting` parts.
    pub fn new(config: &Config, pool: Arc<Pool>, lasting: &Lasting) -> Gateway {
        Gateway {
            admission: Admission {
                sizes: config.sizes.clone(),
                client_body: config.timeouts.client_body,
                paths: config.paths.clone(),
                clients: config.clients.as_deref().map(Clients::new),
                entra: lasting.entra.clone(),
            },
            pool,
            tokens: Tokens::new(lasting.tokens.clone(), config.auth.startup_wait),
            accounting: Accounting {
                limits: lasting.limits.clone(),
                quotas: lasting.quotas.clone(),
                prices: config.prices.clone(),
                ask_streams_for_usage: config.include_stream_usage,
            },
            fallbacks: {
                lasting.metrics.declare_fallbacks(&config.fallbacks);
                config.fallbacks.clone()
            },
            relay: Relay {
                upstream: lasting.upstream.clone(),
                timeouts: config.timeouts.clone(),
                objects: lasting.objects.clone(),
            },
            state: lasting.state.clone(),
            metrics: lasting.metrics.clone(),
            max_tries: config.max_tries.get(),
            waiting: (!config.waiting.budget.is_zero()).then(|| {
                lasting.waiting.set_max(config.waiting.max);
                (lasting.waiting.clone(), config.waiting.budget)
            }),
            spread: lasting.spread.clone(),
            tracing: lasting.tracing.clone(),
            cache: lasting.cache.clone(),
            log_format: config.log_format,
            loaded_at: SystemTime::now(),
        }
    }

    /// The backends in force.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// When this configuration was loaded.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Each configured client, with how much of its token quota and budget it has used in
    /// the current period (by [`crate::clients::quota::Kind`]).
    pub async fn standings(&self) -> Vec<(Arc<Client>, [Option<Standing>; 2])> {
        let clients = self.admission.clients.iter().flat_map(Clients::all);
        let mut out = Vec::new();
        for client in clients {
            let limits = &client.limits;
            let standing = match limits.counts_spend() {
                true => {
                    let quotas = &self.accounting.quotas;
                    quotas.standing(&client.name, limits, unix_now()).await
                }
                false => [None, None],
            };
            out.push((client.clone(), standing));
        }
        out
    }

    /// Serves the whole request: admission, its body, its typed view, the client's limits,
    /// then its tries and the answer ([`Self::route`]).
    pub(super) async fn serve(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        // A client that stops reading must not hold a backend stream forever.
        session.set_write_timeout(Some(self.relay.timeouts.body_idle));
        if let Some(tracing) = &self.tracing {
            ctx.trace = Some(Box::new(tracing.begin(session.req_header())));
        }
        let read = match self.admission.admit(session) {
            Ok(client) => {
                ctx.client = client;
                self.admission.read_body(session).await?
            }
            Err(refused) => Err(refused),
        };
        let body = match read {
            Ok(body) => body,
            Err(refused) => {
                // The body is left unread: close afterwards rather than drain it.
                session.set_keepalive(None);
                return refused.respond(session).await;
            }
        };
        let ask = self.accounting.ask_streams_for_usage;
        let mut request = match Request::read(session.req_header(), body, ask) {
            Ok(request) => request,
            Err(AmbiguousDeployment) => {
                return ProxyError::AmbiguousDeployment.respond(session).await
            }
        };
        let cached = match &self.cache {
            // Boxed: inline, its lookups would size every request's future.
            Some(_) => Box::pin(self.answer_from_cache(session, ctx, &request)).await,
            None => Ok(false),
        };
        let served = match cached {
            Ok(true) => Ok(()),
            Err(e) => Err(e),
            Ok(false) => match self.accounting.admit(ctx.client.as_deref(), &request).await {
                Ok(let_in) => {
                    ctx.admitted = let_in.limits;
                    ctx.charged = let_in.charged.map(Box::new);
                    let near = match self.looks_near(ctx) {
                        // Boxed, as the exact lookup is.
                        true => Box::pin(self.answer_semantically(session, ctx, &let_in)).await,
                        false => Ok(false),
                    };
                    match near {
                        Ok(false) => self.route(session, ctx, &request).await,
                        done => done.map(drop),
                    }
                }
                Err(refused) => refused.respond_to(session, ctx.told()).await,
            },
        };
        // Read once it is answered, and only for a sampled request's span: the body is not
        // parsed on the way for it (most bodies are never parsed otherwise).
        if let Some(trace) = ctx.trace.as_mut().filter(|t| t.sampled) {
            let facts = request.facts();
            trace.asked.max_tokens = facts.and_then(|f| f.completion_cap());
            trace.asked.stream = facts.is_some_and(|f| f.stream);
        }
        ctx.deployment = request.take_deployment();
        served
    }

    /// Sends the request where it goes: every backend for a list, the backends in turn for a
    /// request that names an object, else the round robin.
    async fn route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        request: &Request,
    ) -> Result<()> {
        // Boxed: a list or a search asks several backends and its future is large; inline, it
        // would size every request's future, and every request's copy of it, by that.
        if let Some(collection) = request.list() {
            return Box::pin(self.list(session, ctx, request, collection)).await;
        }
        {
            // Not held while forwarding: a future keeps what lives across its awaits.
            let named = request.objects();
            if !named.is_empty() {
                return Box::pin(self.search(session, ctx, request, named)).await;
            }
        }
        self.forward(session, ctx, request).await
    }

    /// The request's end: counts it, settles its client's limits, and writes its access line.
    pub(super) fn finish(
        &self,
        session: &Session,
        error: Option<&pingora::Error>,
        ctx: &RequestCtx,
    ) {
        let duration = ctx.started.elapsed();
        let status = session.response_written().map(|r| r.status.as_u16());
        self.metrics.record_end(status, duration, ctx.tries);
        let let_in = LetIn {
            limits: ctx.admitted,
            charged: ctx.charged.as_deref().copied(),
        };
        let ended = Ended {
            deployment: ctx.fallback.as_deref().or(ctx.deployment.as_deref()),
            status,
            usage: ctx.usage,
        };
        let client = ctx.client.as_deref();
        let cost_usd = self
            .accounting
            .settle(client, &let_in, ended, &self.metrics);
        if let (Some(trace), Some(tracing)) = (&ctx.trace, &self.tracing) {
            if trace.sampled {
                let error = error.map(|e| e.etype().as_str());
                tracing.finish(self.spans(session, ctx, trace, (status, error)));
            }
        }
        if !log::log_enabled!(target: super::access::TARGET, log::Level::Info) {
            return;
        }
        let req = session.req_header();
        AccessLine {
            client_addr: session.client_addr().map(|a| a as &dyn std::fmt::Display),
            client: ctx.client.as_deref().map(|c| c.name.as_str()),
            method: req.method.as_str(),
            path: req.uri.path(),
            deployment: ctx.deployment.as_deref(),
            status,
            tries: ctx
                .tried
                .iter()
                .map(|&(i, outcome)| (self.pool.get(i).name.as_str(), outcome))
                .collect(),
            first_byte: ctx.first_byte,
            duration,
            usage: ctx.usage,
            waited: (!ctx.waited.is_zero()).then_some(ctx.waited),
            fallback: ctx.fallback.as_deref(),
            cost_usd,
            cache: ctx.looked.map(crate::cache::Looked::as_str),
            trace_id: ctx.trace.as_ref().map(|t| t.trace_id),
            error: error.map(|e| e.to_string()),
        }
        .write(self.log_format);
    }

    /// The spans of `ctx`'s request, which ended with `status` (and `error`), in `trace`.
    fn spans(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        trace: &Trace,
        (status, error): (Option<u16>, Option<&str>),
    ) -> Vec<opentelemetry_sdk::trace::SpanData> {
        let req = session.req_header();
        let tries = trace.tries.iter().enumerate().map(|(n, t)| {
            let backend = self.pool.get(t.backend);
            let url = &backend.config.url;
            spans::TryEnd {
                backend: &backend.name,
                host: &url.host,
                port: url.port,
                outcome: ctx.tried.get(n).map(|&(_, outcome)| outcome),
            }
        });
        let end = spans::RequestEnd {
            asked: trace.asked,
            method: req.method.as_str(),
            path: req.uri.path(),
            deployment: ctx.deployment.as_deref(),
            status,
            client: ctx.client.as_deref().map(|c| c.name.as_str()),
            usage: ctx.usage,
            first_byte: ctx.first_byte,
            waited: (!ctx.waited.is_zero()).then_some(ctx.waited),
            fallback: ctx.fallback.as_deref(),
            cache: ctx.looked.map(crate::cache::Looked::as_str),
            tries: tries.collect(),
            error,
        };
        spans::build(trace, &end, SystemTime::now())
    }
}
