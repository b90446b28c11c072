//! [`Resolver`]: backend host names, resolved at start and again in the background, because
//! Azure endpoints move and Pingora's peers take a socket address.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::watch;

use super::Pool;

/// How often backend host names are resolved again.
pub const DNS_INTERVAL: Duration = Duration::from_secs(30);

/// Re-resolves backend host names every [`DNS_INTERVAL`].
pub struct Resolver {
    /// The pool in force.
    pub pools: watch::Receiver<Arc<Pool>>,
}

impl Pool {
    /// Resolves every backend's host name once (blocking: at start-up, before serving, or off
    /// the runtime's workers).
    pub fn resolve_all(&self) {
        for b in self.backends.iter().filter(|b| b.needs_dns()) {
            b.resolve();
        }
    }
}

#[async_trait]
impl BackgroundService for Resolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(DNS_INTERVAL) => {}
            }
            let pool = self.pools.borrow().clone();
            if !pool.backends.iter().any(|b| b.needs_dns()) {
                continue;
            }
            // getaddrinfo blocks: keep it off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || pool.resolve_all()).await;
        }
    }
}
