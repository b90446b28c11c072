//! [`Refresher`]: the one background task that fills the [`TokenCache`] and keeps it fresh.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::cache::now_secs;
use super::{CredentialSource, TokenCache};

/// The longest a single token fetch may take (the Azure CLI credential has no timeout of its own).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Fetches a token at start, again `margin` ahead of expiry, with backoff after a failure (the
/// current token stays in use while it is valid), and at once when a backend refuses it.
pub struct Refresher {
    pub source: CredentialSource,
    pub scope: String,
    pub cache: Arc<TokenCache>,
    /// How long before expiry a token is replaced.
    pub margin: Duration,
}

impl Refresher {
    /// Fetches one token into the cache; returns how long it is valid.
    async fn fetch(&self) -> Result<Duration, String> {
        let credential = self.source.build().map_err(|e| e.to_string())?;
        let token = tokio::time::timeout(
            FETCH_TIMEOUT,
            credential.get_token(&[self.scope.as_str()], None),
        )
        .await
        .map_err(|_| format!("no answer within {}s", FETCH_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
        let expires_at = u64::try_from(token.expires_on.unix_timestamp()).unwrap_or(0);
        let lifetime = Duration::from_secs(expires_at.saturating_sub(now_secs()));
        if lifetime.is_zero() {
            return Err("the token endpoint returned an expired token".into());
        }
        self.cache
            .store(token.token.secret(), expires_at)
            .map_err(|e| e.to_string())?;
        Ok(lifetime)
    }
}

#[async_trait]
impl BackgroundService for Refresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut failures = 0u32;
        loop {
            self.cache.fetch_started();
            let wait = match self.fetch().await {
                Ok(lifetime) => {
                    failures = 0;
                    let wait = refresh_after(lifetime, self.margin);
                    log::info!(
                        "Entra ID token fetched for {}: valid {}s, next refresh in {}s",
                        self.scope,
                        lifetime.as_secs(),
                        wait.as_secs()
                    );
                    wait
                }
                Err(e) => {
                    self.cache.fetch_failed();
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
                _ = self.cache.refresh_now.notified() => {}
            }
        }
    }
}

/// When to refresh a token that is valid for `lifetime` more: `margin` before it expires, or
/// at half its remaining life for a token too short-lived for that; never in less than 1 s.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_before_expiry() {
        let m = Duration::from_secs(600);
        let after = |s| refresh_after(Duration::from_secs(s), m).as_secs();
        assert_eq!(after(86_400), 85_800);
        assert_eq!(after(3600), 3000);
        // Short-lived tokens refresh at half-life, still well before they lapse.
        assert_eq!(after(1000), 500);
        assert_eq!(after(60), 30);
        assert_eq!(after(1), 1);
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let s: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(s, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
