//! A simulated Entra ID signing-key endpoint (`GET /{tenant}/discovery/v2.0/keys`): serves the
//! JSON Web Key Set it is given, for checking tokens that clients present. The keys, and the
//! tokens signed with them, are made by whoever starts it.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{json, lock, serve, Server};

struct State {
    keys: Mutex<serde_json::Value>,
    fetches: AtomicU64,
}

/// A running key endpoint on 127.0.0.1 (plain HTTP); stops when dropped.
pub struct JwksEndpoint {
    server: Server,
    state: Arc<State>,
}

impl JwksEndpoint {
    /// Starts one serving `keys` (a JWKS document: `{"keys": [...]}`) on every path.
    pub async fn start(keys: serde_json::Value) -> io::Result<JwksEndpoint> {
        let state = Arc::new(State {
            keys: Mutex::new(keys),
            fetches: AtomicU64::new(0),
        });
        let s = state.clone();
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = serve(addr.into(), None, move |_req| {
            let s = s.clone();
            Box::pin(async move {
                s.fetches.fetch_add(1, Ordering::SeqCst);
                Ok(json(200, &lock(&s.keys)))
            })
        })
        .await?;
        Ok(JwksEndpoint { server, state })
    }

    /// The `jwks_url` for `tenant`.
    pub fn url(&self, tenant: &str) -> String {
        format!("http://{}/{tenant}/discovery/v2.0/keys", self.server.addr)
    }

    /// Serves `keys` from now on (a key rotation).
    pub fn set_keys(&self, keys: serde_json::Value) {
        *lock(&self.state.keys) = keys;
    }

    /// Requests answered so far.
    pub fn fetches(&self) -> u64 {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

/// An RSA signing key made on the spot, as a tenant's would be: its private key (DER, for
/// signing tokens) and its public half as a JWK.
pub struct SigningKey {
    pub kid: String,
    /// The private key, PKCS#1 DER.
    pub private_der: Vec<u8>,
    pub jwk: serde_json::Value,
}

impl SigningKey {
    /// A new 2048-bit key named `kid`.
    pub fn generate(kid: &str) -> io::Result<SigningKey> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let rsa = openssl::rsa::Rsa::generate(2048).map_err(io::Error::other)?;
        let private_der = rsa.private_key_to_der().map_err(io::Error::other)?;
        let jwk = serde_json::json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(rsa.n().to_vec()),
            "e": URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
        });
        Ok(SigningKey {
            kid: kid.to_string(),
            private_der,
            jwk,
        })
    }
}
