//! A simulated App Service managed identity endpoint (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`),
//! the source `azure_identity`'s `ManagedIdentityCredential` uses when those are set.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::json;

use super::{azure_error, json, lock, serve, Bind, Body, Server};

struct State {
    secret: String,
    lifetime_secs: AtomicU64,
    /// How long each answer waits, in milliseconds.
    delay_ms: AtomicU64,
    failing: AtomicBool,
    fetches: AtomicU64,
    queries: Mutex<Vec<String>>,
}

/// A running token endpoint on 127.0.0.1; stops when dropped.
pub struct IdentityEndpoint {
    server: Server,
    state: Arc<State>,
}

impl IdentityEndpoint {
    /// Starts one that hands out tokens valid for `lifetime` to callers sending `secret` as
    /// `x-identity-header`.
    pub async fn start(secret: &str, lifetime: Duration) -> io::Result<IdentityEndpoint> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), secret, lifetime).await
    }

    /// Starts one on `bind` (an address, or a socket bound already).
    pub async fn start_on(
        bind: impl Into<Bind>,
        secret: &str,
        lifetime: Duration,
    ) -> io::Result<IdentityEndpoint> {
        let state = Arc::new(State {
            secret: secret.to_string(),
            lifetime_secs: AtomicU64::new(lifetime.as_secs()),
            delay_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            fetches: AtomicU64::new(0),
            queries: Mutex::default(),
        });
        let s = state.clone();
        let server = serve(bind.into(), None, move |req| {
            let s = s.clone();
            Box::pin(async move {
                let delay = Duration::from_millis(s.delay_ms.load(Ordering::SeqCst));
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(token(&s, req))
            })
        })
        .await?;
        Ok(IdentityEndpoint { server, state })
    }

    /// The value for `IDENTITY_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/msi/token", self.server.addr)
    }

    /// Token requests answered with a token.
    pub fn fetches(&self) -> u64 {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// The query strings of all requests received.
    pub fn queries(&self) -> Vec<String> {
        lock(&self.state.queries).clone()
    }

    /// While `true`, every request gets a 500 (an outage).
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Every answer from now on comes `delay` late (a slow token endpoint).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// The lifetime of tokens handed out from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.state
            .lifetime_secs
            .store(lifetime.as_secs(), Ordering::SeqCst);
    }
}

fn token(state: &State, req: Request<Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or("").to_string();
    lock(&state.queries).push(query.clone());
    let header_ok = req
        .headers()
        .get("x-identity-header")
        .is_some_and(|v| v.as_bytes() == state.secret.as_bytes());
    if !header_ok {
        return azure_error(401, "Unauthorized", "missing or wrong x-identity-header");
    }
    if state.failing.load(Ordering::SeqCst) {
        return azure_error(
            500,
            "InternalServerError",
            "simulated identity endpoint outage",
        );
    }
    let resource = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("resource="))
        .unwrap_or("https://cognitiveservices.azure.com");
    let n = state.fetches.fetch_add(1, Ordering::SeqCst) + 1;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires_on = now + state.lifetime_secs.load(Ordering::SeqCst);
    json(
        200,
        &json!({
            "access_token": format!("sim-token-{n}"),
            "expires_on": expires_on.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}
