//! A simulated Microsoft Entra ID token endpoint (`POST /{tenant}/oauth2/v2.0/token`), served
//! over HTTPS as `azure_identity` insists, for the client secret and workload identity
//! credentials. Point them at it with `AZURE_AUTHORITY_HOST=https://localhost:PORT`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::json;

use super::{json, lock, serve, Body, Server, TlsIdentity};

/// A token request as received: the tenant from the path and the form fields.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub tenant: String,
    pub form: HashMap<String, String>,
}

struct State {
    lifetime_secs: AtomicU64,
    failing: AtomicBool,
    issued: AtomicU64,
    requests: Mutex<Vec<TokenRequest>>,
}

/// A running token endpoint on 127.0.0.1 (HTTPS); stops when dropped.
pub struct EntraEndpoint {
    server: Server,
    state: Arc<State>,
}

impl EntraEndpoint {
    /// Starts one serving `tls`, handing out tokens valid for `lifetime`.
    pub async fn start(tls: TlsIdentity, lifetime: Duration) -> io::Result<EntraEndpoint> {
        let state = Arc::new(State {
            lifetime_secs: AtomicU64::new(lifetime.as_secs()),
            failing: AtomicBool::new(false),
            issued: AtomicU64::new(0),
            requests: Mutex::default(),
        });
        let s = state.clone();
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = serve(addr.into(), Some(tls), move |req| {
            let s = s.clone();
            Box::pin(async move { token(&s, req).await })
        })
        .await?;
        Ok(EntraEndpoint { server, state })
    }

    /// The value for `AZURE_AUTHORITY_HOST`.
    pub fn authority_host(&self) -> String {
        format!("https://localhost:{}", self.server.addr.port())
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// Every token request received.
    pub fn requests(&self) -> Vec<TokenRequest> {
        lock(&self.state.requests).clone()
    }

    /// While `true`, every request gets a 500.
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response<Body> {
    json(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

async fn token(state: &State, req: Request<Incoming>) -> Result<Response<Body>, io::Error> {
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let Some(tenant) = path
        .strip_suffix("/oauth2/v2.0/token")
        .map(|t| t.trim_start_matches('/').to_string())
    else {
        return Ok(oauth_error(404, "not_found", "unknown path"));
    };
    lock(&state.requests).push(TokenRequest {
        tenant,
        form: form.clone(),
    });
    if state.failing.load(Ordering::SeqCst) {
        return Ok(oauth_error(
            500,
            "temporarily_unavailable",
            "simulated outage",
        ));
    }
    let proves = form.contains_key("client_secret")
        || form.get("client_assertion_type").map(String::as_str)
            == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || !form.contains_key("client_id")
        || !proves
    {
        return Ok(oauth_error(
            400,
            "invalid_request",
            "client_credentials with a client_id and a secret or assertion expected",
        ));
    }
    let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let lifetime = state.lifetime_secs.load(Ordering::SeqCst);
    Ok(json(
        200,
        &json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": format!("entra-token-{n}"),
        }),
    ))
}
