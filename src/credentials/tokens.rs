//! [`Tokens`]: what a request needs of the proxy's Entra ID tokens: the one held, a bounded
//! wait for the one on its way when none is held yet, and a fresh one after a backend refused
//! it. Requests never fetch: the [`super::Refresher`] does, and this only reads [`TokenCache`].

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::{TokenCache, TokenRef};

/// How long a request that got a 401 waits for a new token before the 401 goes to the client.
const REPLACEMENT_WAIT: Duration = Duration::from_secs(10);

/// The proxy's tokens as requests use them.
pub struct Tokens {
    /// `None` when no backend takes the proxy's Entra ID token.
    cache: Option<Arc<TokenCache>>,
    /// `auth.startup_wait`.
    startup_wait: Duration,
}

impl Tokens {
    pub fn new(cache: Option<Arc<TokenCache>>, startup_wait: Duration) -> Self {
        Tokens {
            cache,
            startup_wait,
        }
    }

    /// The token held now.
    pub fn current(&self) -> Option<TokenRef> {
        self.cache.as_ref()?.token()
    }

    /// Runs `choose` with the header of `token`, the one held. When it finds no backend only
    /// because none is held (`for_want_of_token` says so of its error), the token may be on its
    /// way (the first fetch at start, or one after an outage): waits for it, at most
    /// `auth.startup_wait`, keeps it in `token`, and runs `choose` again.
    pub async fn choose<T, E>(
        &self,
        token: &mut Option<TokenRef>,
        for_want_of_token: impl Fn(&E) -> bool,
        choose: impl Fn(Option<HeaderValue>) -> Result<T, E>,
    ) -> Result<T, E> {
        let header = |t: &Option<TokenRef>| t.as_ref().map(|t| t.header.clone());
        match (choose(header(token)), &self.cache) {
            (Err(e), Some(cache)) if for_want_of_token(&e) => {
                *token = cache.token_or_wait(self.startup_wait).await;
                choose(header(token))
            }
            (chosen, _) => chosen,
        }
    }

    /// A backend refused `used` (401): whatever this request does next, the requests to come
    /// need a new one.
    pub fn refused(&self, used: &TokenRef) {
        if let Some(cache) = &self.cache {
            cache.report_refused(used.generation);
        }
    }

    /// A token to replace `token`, which a backend refused: waits for the fetch that the
    /// refusal asked for, at most 10 s, and keeps it in `token`. Its header, or `None` when none
    /// came.
    pub async fn replace(&self, token: &mut Option<TokenRef>) -> Option<HeaderValue> {
        let (cache, used) = (self.cache.as_ref()?, token.as_ref()?);
        let fresh = cache.replace(used.generation, REPLACEMENT_WAIT).await?;
        let header = fresh.header.clone();
        *token = Some(fresh);
        Some(header)
    }
}
