//! [`TokenCache`]: the current Entra ID token, read by every request without locks or waiting,
//! and the one place a refused token is reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::{watch, Notify};

/// The least time between two fetches forced by 401s.
pub const FORCED_REFRESH_EVERY: Duration = Duration::from_secs(10);

/// A token ready to send: the `Authorization` value, when it stops being valid, and which
/// fetch produced it.
struct CachedToken {
    header: HeaderValue,
    /// Unix seconds.
    expires_at: u64,
    generation: u64,
}

/// The token a request used: its header and its generation (to report a 401 against).
#[derive(Clone, Debug)]
pub struct TokenRef {
    /// `Bearer <token>`, marked sensitive.
    pub header: HeaderValue,
    pub generation: u64,
}

/// Why a token could not be cached.
#[derive(Debug, thiserror::Error)]
#[error("the token has characters a header cannot carry")]
pub struct UnusableToken;

/// Where the refresher is with its fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fetch {
    /// One is on its way (the first is, from the start).
    InFlight,
    /// The last one failed; the next waits for its backoff.
    Failed,
    /// The last one brought a token.
    Succeeded,
}

/// The current token.
pub struct TokenCache {
    current: ArcSwapOption<CachedToken>,
    fetches: AtomicU64,
    failed_fetches: AtomicU64,
    fetch: watch::Sender<Fetch>,
    /// Wakes the refresher for an immediate fetch.
    pub(super) refresh_now: Notify,
    /// The generation of the newest token.
    newest: watch::Sender<u64>,
    /// The last fetch a 401 forced: when, and for which generation.
    forced: Mutex<Option<(Instant, u64)>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            current: ArcSwapOption::empty(),
            fetches: AtomicU64::new(0),
            failed_fetches: AtomicU64::new(0),
            fetch: watch::Sender::new(Fetch::InFlight),
            refresh_now: Notify::new(),
            newest: watch::Sender::new(0),
            forced: Mutex::new(None),
        }
    }
}

impl TokenCache {
    /// The current token, or `None` when no unexpired token is held.
    pub fn token(&self) -> Option<TokenRef> {
        let guard = self.current.load();
        let token = guard.as_ref()?;
        (now_secs() < token.expires_at).then(|| TokenRef {
            header: token.header.clone(),
            generation: token.generation,
        })
    }

    /// The current token or, while none is held and a fetch is on its way (the first one at
    /// start, or one after an outage), the token that fetch brings: waits for it up to
    /// `within`. `None` at once when the last fetch failed and the next has not begun.
    pub async fn token_or_wait(&self, within: Duration) -> Option<TokenRef> {
        if let Some(token) = self.token() {
            return Some(token);
        }
        let mut fetch = self.fetch.subscribe();
        let _ = tokio::time::timeout(within, fetch.wait_for(|f| *f != Fetch::InFlight)).await;
        self.token()
    }

    /// The refresher began a fetch.
    pub(super) fn fetch_started(&self) {
        self.fetch.send_replace(Fetch::InFlight);
    }

    /// The refresher's fetch failed.
    pub(super) fn fetch_failed(&self) {
        self.failed_fetches.fetch_add(1, Ordering::Relaxed);
        self.fetch.send_replace(Fetch::Failed);
    }

    /// Whether a valid token is held (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.token().is_some()
    }

    /// Token fetches that succeeded since start.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Token fetches that failed since start.
    pub fn failed_fetches(&self) -> u64 {
        self.failed_fetches.load(Ordering::Relaxed)
    }

    /// Seconds until the current token expires; `None` when none is held.
    pub fn expires_in(&self) -> Option<u64> {
        let guard = self.current.load();
        let left = guard.as_ref()?.expires_at.checked_sub(now_secs())?;
        (left > 0).then_some(left)
    }

    /// Waits up to `within` for a token newer than `generation`, after
    /// [`Self::report_refused`]. However many requests wait for the same token, one fetch is
    /// made. `None` when no fetch may be made now or none arrived in time.
    pub async fn replace(&self, generation: u64, within: Duration) -> Option<TokenRef> {
        let mut newest = self.newest.subscribe();
        if *newest.borrow() <= generation {
            if !self.report_refused(generation) {
                return None;
            }
            let waited = tokio::time::timeout(within, newest.wait_for(|g| *g > generation)).await;
            if !matches!(waited, Ok(Ok(_))) {
                return None;
            }
        }
        self.token().filter(|t| t.generation > generation)
    }

    /// A backend refused the token of `generation` (401): wakes the refresher for a new one, at
    /// most once every [`FORCED_REFRESH_EVERY`] (a backend missing its role assignment must not
    /// turn every request into a token fetch). Whether a new token is on its way.
    pub fn report_refused(&self, generation: u64) -> bool {
        if *self.newest.borrow() > generation {
            return true; // Already replaced.
        }
        let now = Instant::now();
        let mut forced = self.forced.lock().unwrap_or_else(|e| e.into_inner());
        match *forced {
            Some((_, g)) if g == generation => return true, // A fetch for it is under way.
            Some((at, _)) if now.duration_since(at) < FORCED_REFRESH_EVERY => return false,
            _ => {}
        }
        *forced = Some((now, generation));
        drop(forced);
        log::warn!("a backend refused the Entra ID token (401): fetching a new one");
        self.refresh_now.notify_one();
        true
    }

    /// Puts a token (valid until `expires_at`, Unix seconds) in the cache. The refresher's job;
    /// public for benchmarks and tests.
    pub fn store(&self, secret: &str, expires_at: u64) -> Result<(), UnusableToken> {
        let mut header =
            HeaderValue::try_from(format!("Bearer {secret}")).map_err(|_| UnusableToken)?;
        header.set_sensitive(true);
        let generation = self.fetches.fetch_add(1, Ordering::AcqRel) + 1;
        self.current.store(Some(Arc::new(CachedToken {
            header,
            expires_at,
            generation,
        })));
        self.newest.send_replace(generation);
        self.fetch.send_replace(Fetch::Succeeded);
        Ok(())
    }
}

/// Seconds since the Unix epoch.
pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_tokens_are_not_served() {
        let cache = TokenCache::default();
        assert!(cache.token().is_none());
        cache.store("t", now_secs() + 100).unwrap();
        let t = cache.token().unwrap();
        assert!(t.header.is_sensitive());
        assert_eq!(t.header.to_str().unwrap(), "Bearer t");
        assert_eq!(t.generation, 1);
        cache.store("t", now_secs().saturating_sub(1)).unwrap();
        assert!(cache.token().is_none());
    }

    #[test]
    fn forced_refreshes_are_rate_limited() {
        let cache = TokenCache::default();
        cache.store("t", now_secs() + 100).unwrap();
        assert!(cache.report_refused(1), "the first report asks for a fetch");
        assert!(
            cache.report_refused(1),
            "a report of the same token waits for that fetch"
        );
        cache.store("t2", now_secs() + 100).unwrap();
        assert!(
            cache.report_refused(1),
            "a token already replaced needs no fetch"
        );
        // The new token refused too, within 10 s: no second forced fetch.
        assert!(!cache.report_refused(2));
    }

    #[tokio::test]
    async fn a_request_waits_for_the_token_on_its_way_but_not_for_a_failed_fetch() {
        let cache = Arc::new(TokenCache::default());
        let waiter = tokio::spawn({
            let c = cache.clone();
            async move { c.token_or_wait(Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the first fetch is on its way");
        cache.store("first", now_secs() + 100).unwrap();
        let t = waiter.await.unwrap().expect("the first token");
        assert_eq!(t.header.to_str().unwrap(), "Bearer first");

        let cache = TokenCache::default();
        cache.fetch_failed();
        let started = std::time::Instant::now();
        assert!(cache.token_or_wait(Duration::from_secs(5)).await.is_none());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited for a failed fetch"
        );
        cache.fetch_started();
        let started = std::time::Instant::now();
        assert!(cache
            .token_or_wait(Duration::from_millis(100))
            .await
            .is_none());
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "the wait is bounded"
        );
    }

    #[tokio::test]
    async fn a_refused_token_is_replaced_once_for_all_who_report_it() {
        let cache = Arc::new(TokenCache::default());
        cache.store("old", now_secs() + 100).unwrap();
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.replace(1, Duration::from_secs(5)).await })
            })
            .collect();
        // The refresher: one fetch, whatever the number of waiters.
        cache.refresh_now.notified().await;
        cache.store("new", now_secs() + 100).unwrap();
        for w in waiters {
            let t = w.await.unwrap().expect("a new token");
            assert_eq!(t.header.to_str().unwrap(), "Bearer new");
        }
        assert_eq!(cache.fetches(), 2);
        // No new token in time: None (the caller delivers the backend's 401).
        assert!(cache.replace(2, Duration::from_millis(50)).await.is_none());
    }
}
