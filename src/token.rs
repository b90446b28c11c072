//! Entra ID tokens: the credential chosen by `auth.kind`, a cache the request path reads
//! without waiting, and the background task that fills and refreshes it.
//!
//! `azure_identity`'s own cache returns an error on a failed refresh even while the old token
//! is valid, and its retry loop can take over a minute. So the credential is only ever called
//! here, in the background, with its retries off; requests read [`TokenCache`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions};
use azure_identity::{ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId};
use http::HeaderValue;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{Auth, CredentialKind, UserAssigned};

/// Why a credential could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("auth.kind {kind}: {message}")]
    Unsupported { kind: &'static str, message: String },
    #[error("auth: cannot create the credential: {0}")]
    Azure(#[from] azure_core::Error),
}

/// Builds the `azure_identity` credential for `auth`; `None` for `kind: none`.
///
/// The credential's own retries are off: [`Refresher`] retries with its own backoff.
pub fn credential(auth: &Auth) -> Result<Option<Arc<dyn TokenCredential>>, CredentialError> {
    let client_options = ClientOptions {
        retry: RetryOptions::none(),
        ..Default::default()
    };
    match &auth.credential {
        CredentialKind::None => Ok(None),
        CredentialKind::ManagedIdentity { user_assigned } => {
            let user_assigned_id = user_assigned.clone().map(|id| match id {
                UserAssigned::ClientId(v) => UserAssignedId::ClientId(v),
                UserAssigned::ObjectId(v) => UserAssignedId::ObjectId(v),
                UserAssigned::ResourceId(v) => UserAssignedId::ResourceId(v),
            });
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id,
                client_options,
            };
            Ok(Some(ManagedIdentityCredential::new(Some(options))?))
        }
        CredentialKind::WorkloadIdentity { .. } => Err(CredentialError::Unsupported {
            kind: "workload_identity",
            message: "not available in this version; use managed_identity or api_key".into(),
        }),
        CredentialKind::ClientSecret { .. } => Err(CredentialError::Unsupported {
            kind: "client_secret",
            message: "not available in this version; use managed_identity or api_key".into(),
        }),
        CredentialKind::AzureCli => Err(CredentialError::Unsupported {
            kind: "azure_cli",
            message: "not available in this version; use managed_identity or api_key".into(),
        }),
    }
}

/// A token ready to send: the `Authorization` value and when it stops being valid.
struct CachedToken {
    header: HeaderValue,
    /// Unix seconds.
    expires_at: u64,
}

/// The current token, read by every request without locks or waiting.
#[derive(Default)]
pub struct TokenCache {
    current: ArcSwapOption<CachedToken>,
    fetches: AtomicU64,
}

impl TokenCache {
    /// The `Authorization: Bearer` value, or `None` when no unexpired token is held.
    pub fn header(&self) -> Option<HeaderValue> {
        let guard = self.current.load();
        let token = guard.as_ref()?;
        (now_secs() < token.expires_at).then(|| token.header.clone())
    }

    /// Whether a valid token is held (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.header().is_some()
    }

    /// Token fetches that succeeded since start.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn store(&self, secret: &str, expires_at: u64) -> Result<(), String> {
        let mut header = HeaderValue::try_from(format!("Bearer {secret}"))
            .map_err(|_| "the token has characters a header cannot carry".to_string())?;
        header.set_sensitive(true);
        self.current
            .store(Some(Arc::new(CachedToken { header, expires_at })));
        self.fetches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// When to refresh a token that is valid for `lifetime` more: `margin` before it expires, or
/// at half its remaining life for a token too short-lived for that; never in less than 1 s.
///
/// The margin must not exceed 300 s: `azure_identity`'s own cache hands back the same token
/// until 300 s before it expires.
pub fn refresh_after(lifetime: Duration, margin: Duration) -> Duration {
    let wait = if lifetime > margin * 2 {
        lifetime - margin
    } else {
        lifetime / 2
    };
    wait.max(Duration::from_secs(1))
}

/// The delay before retry `attempt` (1-based) after a failed fetch: 1 s doubling to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// Fills [`TokenCache`] and keeps it fresh, off the request path.
pub struct Refresher {
    pub credential: Arc<dyn TokenCredential>,
    pub scope: String,
    pub cache: Arc<TokenCache>,
    /// How long before expiry a token is replaced.
    pub margin: Duration,
}

impl Refresher {
    /// Fetches one token into the cache; returns how long it is valid.
    async fn fetch(&self) -> Result<Duration, String> {
        let token = self
            .credential
            .get_token(&[self.scope.as_str()], None)
            .await
            .map_err(|e| e.to_string())?;
        let expires_at = u64::try_from(token.expires_on.unix_timestamp()).unwrap_or(0);
        let lifetime = Duration::from_secs(expires_at.saturating_sub(now_secs()));
        if lifetime.is_zero() {
            return Err("the token endpoint returned an expired token".into());
        }
        self.cache.store(token.token.secret(), expires_at)?;
        Ok(lifetime)
    }
}

#[async_trait]
impl BackgroundService for Refresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut failures = 0u32;
        loop {
            let wait = match self.fetch().await {
                Ok(lifetime) => {
                    failures = 0;
                    let wait = refresh_after(lifetime, self.margin);
                    log::info!(
                        "Entra ID token fetched for {}: valid {}s, refresh in {}s",
                        self.scope,
                        lifetime.as_secs(),
                        wait.as_secs()
                    );
                    wait
                }
                Err(e) => {
                    failures += 1;
                    let wait = backoff(failures);
                    let state = if self.cache.is_ready() {
                        "the current token stays in use"
                    } else {
                        "no valid token: requests get 503"
                    };
                    log::warn!(
                        "Entra ID token fetch failed ({e}); {state}; retrying in {}s",
                        wait.as_secs()
                    );
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_before_expiry() {
        let m = Duration::from_secs(300);
        assert_eq!(
            refresh_after(Duration::from_secs(86_400), m),
            Duration::from_secs(86_100)
        );
        // Short-lived tokens refresh at half-life, still well before they lapse.
        assert_eq!(
            refresh_after(Duration::from_secs(3600), m),
            Duration::from_secs(3300)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(400), m),
            Duration::from_secs(200)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(60), m),
            Duration::from_secs(30)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(1), m),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let s: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(s, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn expired_tokens_are_not_served() {
        let cache = TokenCache::default();
        assert!(cache.header().is_none());
        cache.store("t", now_secs() + 100).unwrap();
        let h = cache.header().unwrap();
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().unwrap(), "Bearer t");
        cache.store("t", now_secs().saturating_sub(1)).unwrap();
        assert!(cache.header().is_none());
    }
}
