//! The admin listener: `/healthz` (the process is up), `/readyz` (it can serve: a token is
//! held, or none is needed), `/metrics` (Prometheus), `/status` (each backend's state, as JSON)
//! and `/` (a page that shows `/status`).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

use crate::credentials::TokenCache;
use crate::metrics::{Metrics, TokenKind, TryLabel};
use crate::proxy::AoaiProxy;

/// The status page: one self-contained file (no external assets) that fetches `/status` and
/// renders it, every few seconds.
const STATUS_PAGE: &str = include_str!("status.html");

/// The admin endpoints.
pub struct Admin {
    pub tokens: Option<Arc<TokenCache>>,
    pub metrics: Arc<Metrics>,
    /// The configuration in force.
    pub current: Arc<ArcSwap<AoaiProxy>>,
}

impl Admin {
    fn ready(&self) -> bool {
        self.tokens.as_ref().is_none_or(|t| t.is_ready())
    }

    /// The `/status` document.
    fn status(&self) -> Value {
        let proxy = self.current.load();
        let now = Instant::now();
        let backends: Vec<Value> = proxy
            .pool
            .backends()
            .iter()
            .map(|b| {
                let s = b.health.snapshot(now);
                let state = if s.ejected.is_some() {
                    "ejected"
                } else if s.probe_up == Some(false) {
                    "probe_down"
                } else {
                    "up"
                };
                let cooling: Vec<Value> = s
                    .cooling
                    .iter()
                    .map(|(deployment, left)| {
                        json!({
                            "deployment": deployment.as_deref().unwrap_or("*"),
                            "seconds_left": round(left.as_secs_f64()),
                        })
                    })
                    .collect();
                let tries: serde_json::Map<String, Value> = TryLabel::ALL
                    .iter()
                    .zip(b.stats.tries())
                    .map(|(l, n)| (l.as_str().to_string(), n.into()))
                    .collect();
                let tokens: serde_json::Map<String, Value> = TokenKind::ALL
                    .iter()
                    .zip(b.stats.token_totals())
                    .map(|(k, n)| (k.as_str().to_string(), n.into()))
                    .collect();
                json!({
                    "name": b.name,
                    "url": format!("{}://{}", b.config.url.scheme.as_str(), b.config.url.authority()),
                    "priority": b.config.priority,
                    "weight": b.config.weight,
                    "state": state,
                    "ejected_seconds_left": s.ejected.map(|d| round(d.as_secs_f64())),
                    "probe": s.probe_up.map(|up| if up { "up" } else { "down" }),
                    "cooling": cooling,
                    "tries": tries,
                    "tokens": tokens,
                })
            })
            .collect();
        let token = self.tokens.as_ref().map(|t| {
            json!({
                "seconds_left": t.expires_in(),
                "fetches": t.fetches(),
                "failed_fetches": t.failed_fetches(),
            })
        });
        let (ok, error) = self.metrics.reloads();
        let loaded = proxy.loaded_at;
        json!({
            "ready": self.ready(),
            "in_flight": self.metrics.in_flight(),
            "backends": backends,
            "token": token,
            "config": {
                "loaded_at": loaded
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .and_then(|d| jiff::Timestamp::from_second(d.as_secs() as i64).ok())
                    .map(|t| t.to_string()),
                "loaded_seconds_ago": SystemTime::now()
                    .duration_since(loaded)
                    .map_or(0, |d| d.as_secs()),
                "reloads": {"ok": ok, "error": error},
            },
        })
    }
}

/// Seconds to the millisecond: what an operator reads.
fn round(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
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
                let pool = self.current.load().pool.clone();
                let text = self.metrics.render(&pool, self.tokens.as_deref());
                (200, "text/plain; version=0.0.4", text)
            }
            "/status" => (200, "application/json", self.status().to_string()),
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
