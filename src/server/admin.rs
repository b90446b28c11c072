//! The admin listener: `/healthz` (the process is up), `/readyz` (it can serve: a token is
//! held, or none is needed), `/metrics` (Prometheus text), `/status` (each backend's standing,
//! as JSON, see [`Status`]) and `/` (a page that shows `/status`).

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::proto::MetricFamily;

use super::status::{ClientStatus, Status};
use crate::credentials::TokenCache;
use crate::metrics::{self, Family, Metrics};
use crate::proxy::Gateway;

/// The status page: one self-contained file (no external assets) that fetches `/status` and
/// renders it, every few seconds.
const STATUS_PAGE: &str = include_str!("status.html");

/// The admin endpoints.
pub struct Admin {
    pub tokens: Option<Arc<TokenCache>>,
    pub metrics: Arc<Metrics>,
    /// The gateway in force.
    pub current: Arc<ArcSwap<Gateway>>,
    /// The addresses plain HTTP is served on.
    pub listen: Vec<String>,
}

impl Admin {
    fn ready(&self) -> bool {
        self.tokens.as_ref().is_none_or(|t| t.is_ready())
    }

    /// The `/metrics` page: the process's families, the pool's, and the token's.
    fn metrics_page(&self) -> String {
        let gateway = self.current.load();
        let mut families = self.metrics.families();
        families.extend(token_families(self.ready(), self.tokens.as_deref()));
        families.extend(gateway.pool().families());
        metrics::encode(families)
    }

    async fn status(&self) -> String {
        let gateway = self.current.load_full();
        let tokens = (self.ready(), self.tokens.as_deref());
        let mut status = Status::of(&gateway, tokens, &self.metrics, &self.listen);
        status.clients = gateway
            .standings()
            .await
            .iter()
            .map(|(client, standing)| ClientStatus::of(&client.name, *standing))
            .collect();
        serde_json::to_string(&status).unwrap_or_default()
    }
}

/// Readiness and the Entra ID token's fetches and expiry (`tokens`: `None` when none is needed).
fn token_families(ready: bool, tokens: Option<&TokenCache>) -> Vec<MetricFamily> {
    let mut out = Vec::with_capacity(4);
    let mut r = Family::gauge("aoai_proxy_ready", "1 while /readyz answers 200.");
    r.add(&[], f64::from(u8::from(ready)));
    out.push(r.done());
    let (ok, failed) = tokens.map_or((0, 0), |t| (t.fetches(), t.failed_fetches()));
    let mut fetches = Family::counter("aoai_proxy_token_fetches_total", "Entra ID tokens fetched.");
    fetches.add(&[], ok as f64);
    out.push(fetches.done());
    let mut refreshes = Family::counter(
        "aoai_proxy_token_refreshes_total",
        "Entra ID token fetches by result.",
    );
    refreshes.add(&[("result", "ok")], ok as f64);
    refreshes.add(&[("result", "error")], failed as f64);
    out.push(refreshes.done());
    if let Some(left) = tokens.and_then(TokenCache::expires_in) {
        let mut expiry = Family::gauge(
            "aoai_proxy_token_expires_in_seconds",
            "Seconds until the Entra ID token held expires.",
        );
        expiry.add(&[], left as f64);
        out.push(expiry.done());
    }
    out
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, ctype, body) = match session.req_header().uri.path() {
            "/healthz" => (200, "text/plain", "ok\n".to_string()),
            "/readyz" if self.ready() => (200, "text/plain", "ready\n".to_string()),
            "/readyz" => (
                503,
                "text/plain",
                "not ready: no valid Entra ID token yet\n".to_string(),
            ),
            "/metrics" => (200, prometheus::TEXT_FORMAT, self.metrics_page()),
            "/status" => (200, "application/json", self.status().await),
            "/" => (200, "text/html; charset=utf-8", STATUS_PAGE.to_string()),
            _ => (
                404,
                "text/plain",
                "not found: try /, /status, /healthz, /readyz or /metrics\n".to_string(),
            ),
        };
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("content-length", body.len())
            .header("cache-control", "no-store")
            .body(body.into_bytes())
            .unwrap_or_default()
    }
}
