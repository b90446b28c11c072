//! Clients that present their own Microsoft Entra ID token (`Authorization: Bearer <JWT>`,
//! `client_auth.entra`), as API Management's `validate-jwt` lets callers with a managed identity
//! in without a key. A token is accepted when it is signed (RS256) by one of the tenant's keys,
//! carries the configured audience and one of the tenant's issuers, and has not expired; its
//! `oid`, `azp` or `appid` then names the client (`clients[].entra_ids`).
//!
//! The tenant's keys (its JWKS) are fetched in the background, like the proxy's own token: at
//! start, every `refresh`, and at once (at most once a minute) when a token names a key that is
//! not known yet, which is how a key rotation shows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::config::EntraClients;

/// The least time between two fetches that an unknown key asks for.
const UNKNOWN_KEY_REFETCH: Duration = Duration::from_secs(60);

/// Why a token was not accepted (logged at debug; the client gets 401 either way).
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("the tenant's signing keys have not been fetched yet")]
    NoKeys,
    #[error("the token names no key, or one the tenant does not have")]
    UnknownKey,
    #[error("{0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

/// The ids a valid token names its caller by.
#[derive(Debug, Deserialize)]
pub struct Caller {
    pub oid: Option<String>,
    pub azp: Option<String>,
    pub appid: Option<String>,
}

impl Caller {
    /// Its ids, object id first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        [&self.oid, &self.azp, &self.appid]
            .into_iter()
            .filter_map(|id| id.as_deref())
    }
}

/// Checks client tokens against the tenant's current keys.
pub struct EntraVerifier {
    validation: Validation,
    /// By key id; `None` until the first fetch succeeds.
    keys: ArcSwapOption<HashMap<String, DecodingKey>>,
    /// Wakes the fetcher for a token that names an unknown key.
    refetch: Notify,
    last_refetch: std::sync::Mutex<Option<Instant>>,
    config: EntraClients,
}

impl EntraVerifier {
    pub fn new(config: &EntraClients) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&config.audience]);
        validation.set_issuer(&config.issuers);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.leeway = 60;
        EntraVerifier {
            validation,
            keys: ArcSwapOption::empty(),
            refetch: Notify::new(),
            last_refetch: std::sync::Mutex::new(None),
            config: config.clone(),
        }
    }

    /// Whether `value` (a bearer credential) has the shape of a JWT rather than a key.
    pub fn looks_like_token(value: &[u8]) -> bool {
        value.starts_with(b"eyJ") && value.iter().filter(|&&b| b == b'.').count() == 2
    }

    /// The caller named by a valid `token`.
    pub fn verify(&self, token: &str) -> Result<Caller, Rejected> {
        let keys = self.keys.load();
        let keys = keys.as_ref().ok_or(Rejected::NoKeys)?;
        let header = jsonwebtoken::decode_header(token)?;
        let key = header.kid.as_ref().and_then(|kid| keys.get(kid));
        let Some(key) = key else {
            self.ask_refetch();
            return Err(Rejected::UnknownKey);
        };
        Ok(jsonwebtoken::decode::<Caller>(token, key, &self.validation)?.claims)
    }

    fn ask_refetch(&self) {
        let mut last = self.last_refetch.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= UNKNOWN_KEY_REFETCH) {
            *last = Some(Instant::now());
            self.refetch.notify_one();
        }
    }

    /// Replaces the keys with those of `set` that can check RS256 signatures; how many. The
    /// fetcher's job; public for the fuzz target.
    pub fn store(&self, set: &JwkSet) -> usize {
        let keys: HashMap<String, DecodingKey> = set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, DecodingKey::from_jwk(jwk).ok()?)))
            .collect();
        let n = keys.len();
        self.keys.store(Some(Arc::new(keys)));
        n
    }
}

/// Fetches the tenant's keys into the verifier.
pub struct JwksFetcher {
    pub verifier: Arc<EntraVerifier>,
    pub http: reqwest::Client,
}

impl JwksFetcher {
    async fn fetch(&self) -> Result<usize, String> {
        let url = &self.verifier.config.jwks_url;
        let r = self
            .http
            .get(url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("{url} answered {}", r.status()));
        }
        let body = r.bytes().await.map_err(|e| e.to_string())?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
        match self.verifier.store(&set) {
            0 => Err(format!("{url} has no RS256 key with a kid")),
            n => Ok(n),
        }
    }
}

#[async_trait]
impl BackgroundService for JwksFetcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut failures = 0u32;
        loop {
            let wait = match self.fetch().await {
                Ok(n) => {
                    failures = 0;
                    log::info!(
                        "Entra ID signing keys of tenant {}: {n} fetched",
                        self.verifier.config.tenant
                    );
                    self.verifier.config.refresh
                }
                Err(e) => {
                    failures += 1;
                    let wait = crate::credentials::backoff(failures);
                    log::warn!(
                        "cannot fetch the Entra ID signing keys ({e}); retrying in {}s",
                        wait.as_secs()
                    );
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.verifier.refetch.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_told_from_keys_by_their_shape() {
        assert!(EntraVerifier::looks_like_token(b"eyJhbGciOi.eyJzdWIi.c2ln"));
        assert!(!EntraVerifier::looks_like_token(b"sk-123.456"));
        assert!(!EntraVerifier::looks_like_token(b"eyJ-no-dots"));
    }

    #[test]
    fn nothing_is_accepted_before_the_keys_arrive() {
        let v = EntraVerifier::new(&EntraClients {
            tenant: "t".into(),
            audience: "api://x".into(),
            jwks_url: "http://127.0.0.1:1/keys".into(),
            issuers: vec!["https://sts.windows.net/t/".into()],
            refresh: Duration::from_secs(3600),
        });
        assert!(matches!(v.verify("eyJ.eyJ.x"), Err(Rejected::NoKeys)));
        v.store(&JwkSet { keys: vec![] });
        assert!(matches!(
            v.verify("eyJhbGciOiJSUzI1NiJ9.e30.x"),
            Err(Rejected::UnknownKey)
        ));
    }
}
