//! Entra ID tokens: the credential chosen by `auth.kind`, a cache the request path reads
//! without waiting, and the background task that fills and refreshes it.
//!
//! Requests never call the credential. One background [`Refresher`] fetches a token at start,
//! again `auth.refresh_before` ahead of expiry, with backoff after a failure (the current
//! token stays in use while it is valid), and at once when a backend rejects it with 401.
//!
//! Each fetch uses a newly built credential: `azure_identity`'s own cache would hand back the
//! token a backend just rejected, and reuses a token until 300 s before expiry whatever margin
//! is asked. Its retries are off too: [`Refresher`] retries on its own schedule.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use azure_core::credentials::{Secret as AzureSecret, TokenCredential};
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use http::HeaderValue;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{watch, Notify};

use crate::config::{Auth, CredentialKind, UserAssigned};

/// Why a credential could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("auth.kind {kind}: {message}")]
    Invalid { kind: &'static str, message: String },
    #[error("auth.kind {kind}: {source}")]
    Azure {
        kind: &'static str,
        source: azure_core::Error,
    },
}

/// Builds the credential `auth` names, as often as a fetch needs one.
#[derive(Clone, Debug)]
pub struct CredentialSource {
    kind: CredentialKind,
    /// The HTTP client for token endpoints when an extra CA is trusted; else the default.
    transport: Option<Transport>,
}

impl CredentialSource {
    /// The source for `auth`, or `None` for `kind: none`. Builds one credential to check that
    /// it can be built (a missing tenant, an unreadable token file, a source the crate does
    /// not support), without any network call.
    pub fn new(
        auth: &Auth,
        extra_ca: Option<&std::path::Path>,
    ) -> Result<Option<Self>, CredentialError> {
        if auth.credential == CredentialKind::None {
            return Ok(None);
        }
        let transport = match extra_ca {
            Some(file) => {
                Some(
                    transport_trusting(file).map_err(|message| CredentialError::Invalid {
                        kind: kind_name(&auth.credential),
                        message,
                    })?,
                )
            }
            None => None,
        };
        let source = CredentialSource {
            kind: auth.credential.clone(),
            transport,
        };
        source.check()?;
        source.build()?;
        Ok(Some(source))
    }

    fn client_options(&self) -> ClientOptions {
        ClientOptions {
            retry: RetryOptions::none(),
            transport: self.transport.clone(),
            ..Default::default()
        }
    }

    /// Start-up checks the crate leaves to the first fetch.
    fn check(&self) -> Result<(), CredentialError> {
        if let CredentialKind::WorkloadIdentity { token_file, .. } = &self.kind {
            let file = token_file
                .clone()
                .or_else(|| std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from))
                .ok_or_else(|| CredentialError::Invalid {
                    kind: "workload_identity",
                    message: "no token file: set auth.token_file or AZURE_FEDERATED_TOKEN_FILE"
                        .into(),
                })?;
            std::fs::read(&file).map_err(|e| CredentialError::Invalid {
                kind: "workload_identity",
                message: format!("cannot read the token file {}: {e}", file.display()),
            })?;
        }
        Ok(())
    }

    /// A new credential.
    pub fn build(&self) -> Result<Arc<dyn TokenCredential>, CredentialError> {
        let kind = kind_name(&self.kind);
        let azure = |source| CredentialError::Azure { kind, source };
        let client_options = self.client_options();
        let credential: Arc<dyn TokenCredential> = match &self.kind {
            CredentialKind::None => {
                return Err(CredentialError::Invalid {
                    kind,
                    message: "no credential to build".into(),
                })
            }
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
                ManagedIdentityCredential::new(Some(options)).map_err(azure)?
            }
            CredentialKind::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => {
                let options = WorkloadIdentityCredentialOptions {
                    credential_options: ClientAssertionCredentialOptions { client_options },
                    client_id: client_id.clone(),
                    tenant_id: tenant_id.clone(),
                    token_file_path: token_file.clone(),
                };
                WorkloadIdentityCredential::new(Some(options)).map_err(azure)?
            }
            CredentialKind::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                AzureSecret::new(secret.expose().to_string()),
                Some(ClientSecretCredentialOptions { client_options }),
            )
            .map_err(azure)?,
            CredentialKind::AzureCli => {
                AzureCliCredential::new(Some(AzureCliCredentialOptions::default()))
                    .map_err(azure)?
            }
        };
        Ok(credential)
    }
}

fn kind_name(kind: &CredentialKind) -> &'static str {
    match kind {
        CredentialKind::ManagedIdentity { .. } => "managed_identity",
        CredentialKind::WorkloadIdentity { .. } => "workload_identity",
        CredentialKind::ClientSecret { .. } => "client_secret",
        CredentialKind::AzureCli => "azure_cli",
        CredentialKind::None => "none",
    }
}

/// An HTTP client for token endpoints that also trusts the CAs in `file`.
fn transport_trusting(file: &std::path::Path) -> Result<Transport, String> {
    let pem = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_merge(certs)
        .build()
        .map_err(|e| format!("cannot build the token endpoint client: {e}"))?;
    Ok(Transport::new(Arc::new(client)))
}

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
    pub header: HeaderValue,
    pub generation: u64,
}

/// The current token, read by every request without locks or waiting.
pub struct TokenCache {
    current: ArcSwapOption<CachedToken>,
    fetches: AtomicU64,
    /// Wakes the refresher for an immediate fetch.
    refresh_now: Notify,
    /// The generation of the newest token.
    newest: watch::Sender<u64>,
    /// When a 401 last forced a fetch ([`crate::health::nanos`]; 0: never).
    last_forced: AtomicU64,
    /// The generation whose refusal forced that fetch.
    forced_for: AtomicU64,
}

/// The least time between two fetches forced by 401s.
pub const FORCED_REFRESH_EVERY: Duration = Duration::from_secs(10);

/// The longest a single token fetch may take (the Azure CLI credential has no timeout of its own).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            current: ArcSwapOption::empty(),
            fetches: AtomicU64::new(0),
            refresh_now: Notify::new(),
            newest: watch::Sender::new(0),
            last_forced: AtomicU64::new(0),
            forced_for: AtomicU64::new(0),
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

    /// Whether a valid token is held (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.token().is_some()
    }

    /// Token fetches that succeeded since start.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// A backend refused the token of `generation` (401): asks for a new one (see
    /// [`Self::report_refused`]) and waits up to `within` for it. However many requests report
    /// the same token, one fetch is made.
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

    /// A backend refused the token of `generation`: wakes the refresher for a new one, at most
    /// once every [`FORCED_REFRESH_EVERY`] (a backend missing its role assignment must not turn
    /// every request into a token fetch). Whether a fetch was asked for.
    pub fn report_refused(&self, generation: u64) -> bool {
        if *self.newest.borrow() > generation
            || self.forced_for.load(Ordering::Acquire) == generation
        {
            // Already replaced, or a fetch for this very token is under way.
            return true;
        }
        let now = crate::health::nanos(std::time::Instant::now());
        let last = self.last_forced.load(Ordering::Acquire);
        let due = last == 0 || now.saturating_sub(last) >= FORCED_REFRESH_EVERY.as_nanos() as u64;
        if !due
            || self
                .last_forced
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return false;
        }
        self.forced_for.store(generation, Ordering::Release);
        log::warn!("a backend refused the Entra ID token (401): fetching a new one");
        self.refresh_now.notify_one();
        true
    }

    /// Puts a token (valid until `expires_at`, Unix seconds) in the cache. The refresher's job;
    /// public for benchmarks.
    pub fn store(&self, secret: &str, expires_at: u64) -> Result<(), String> {
        let mut header = HeaderValue::try_from(format!("Bearer {secret}"))
            .map_err(|_| "the token has characters a header cannot carry".to_string())?;
        header.set_sensitive(true);
        let generation = self.fetches.fetch_add(1, Ordering::AcqRel) + 1;
        self.current.store(Some(Arc::new(CachedToken {
            header,
            expires_at,
            generation,
        })));
        self.newest.send_replace(generation);
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
                        "Entra ID token fetched for {}: valid {}s, next refresh in {}s",
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
                _ = self.cache.refresh_now.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_before_expiry() {
        let m = Duration::from_secs(600);
        assert_eq!(
            refresh_after(Duration::from_secs(86_400), m),
            Duration::from_secs(85_800)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(3600), m),
            Duration::from_secs(3000)
        );
        // Short-lived tokens refresh at half-life, still well before they lapse.
        assert_eq!(
            refresh_after(Duration::from_secs(1000), m),
            Duration::from_secs(500)
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
