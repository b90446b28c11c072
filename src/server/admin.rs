//! The admin listener: `/healthz` (the process is up), `/readyz` (it can serve: a token is
//! held, or none is needed) and `/metrics` (Prometheus).

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::balance::Pool;
use crate::credentials::TokenCache;
use crate::metrics::Metrics;

/// The admin endpoints.
pub struct Admin {
    pub tokens: Option<Arc<TokenCache>>,
    pub metrics: Arc<Metrics>,
    pub pool: Arc<Pool>,
}

impl Admin {
    fn ready(&self) -> bool {
        self.tokens.as_ref().is_none_or(|t| t.is_ready())
    }
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
            "/metrics" => {
                let fetches = self.tokens.as_ref().map_or(0, |t| t.fetches());
                let mut text = self.metrics.render(self.ready(), fetches);
                text.push_str(&crate::metrics::render_health(&self.pool));
                (200, "text/plain; version=0.0.4", text)
            }
            _ => (
                404,
                "text/plain",
                "not found: try /healthz, /readyz or /metrics\n".to_string(),
            ),
        };
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("content-length", body.len())
            .body(body.into_bytes())
            .unwrap_or_default()
    }
}
