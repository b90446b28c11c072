//! Active health checks: backends with a `health_check` are probed on their interval with
//! pingora-load-balancing's TCP or HTTP checks, and the results feed the same state passive
//! health uses ([`super::standing::BackendStanding`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::lb::health_check::{HealthCheck as _, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend as LbBackend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::watch;

use super::{Backend, Pool};
use crate::config::{HealthCheckKind, Scheme};

/// Consecutive failed probes that take a backend out; one success brings it back.
const PROBE_FAILURES: u32 = 2;

/// Runs every configured health check of the pool in force (and those of the next one after a
/// reload).
pub struct Prober {
    pub pools: watch::Receiver<Arc<Pool>>,
}

/// A check ready to run against one backend.
enum Check {
    Tcp(Box<TcpHealthCheck>),
    Http(Box<HttpHealthCheck>),
}

impl Check {
    fn for_backend(b: &Backend, kind: &HealthCheckKind) -> Check {
        let tls = b.config.url.scheme == Scheme::Https;
        let host = b.config.url.host.clone();
        let ca = b.trusted_cas();
        match kind {
            HealthCheckKind::Tcp => {
                let mut check = if tls {
                    TcpHealthCheck::new_tls(&host)
                } else {
                    TcpHealthCheck::new()
                };
                check.peer_template.options.ca = ca;
                Check::Tcp(check)
            }
            HealthCheckKind::Http { path } => {
                let mut check = HttpHealthCheck::new(&b.config.url.authority(), tls);
                if tls {
                    check.peer_template.sni = host;
                }
                check.peer_template.options.ca = ca;
                let _ = check.req.set_raw_path(path.as_bytes());
                // Azure answers 401 without credentials: any answer below 500 means it is up.
                check.validator = Some(Box::new(|resp: &ResponseHeader| {
                    if resp.status.as_u16() < 500 {
                        Ok(())
                    } else {
                        pingora::Error::e_explain(
                            pingora::ErrorType::Custom("health check"),
                            format!("status {}", resp.status),
                        )
                    }
                }));
                Check::Http(Box::new(check))
            }
        }
    }

    async fn run(&self, target: &LbBackend) -> bool {
        match self {
            Check::Tcp(c) => c.check(target).await.is_ok(),
            Check::Http(c) => c.check(target).await.is_ok(),
        }
    }
}

async fn probe_forever(backend: Arc<Backend>, kind: HealthCheckKind, interval: Duration) {
    let check = Check::for_backend(&backend, &kind);
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(interval).await;
        let Some(peer) = backend.peer() else { continue };
        let target = LbBackend {
            addr: peer._address.clone(),
            weight: 1,
            ext: Default::default(),
        };
        if check.run(&target).await {
            failures = 0;
            backend.standing.set_probe(true);
        } else {
            failures += 1;
            if failures >= PROBE_FAILURES {
                backend.standing.set_probe(false);
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut pools = self.pools.clone();
        loop {
            let pool = pools.borrow_and_update().clone();
            let tasks: Vec<_> = pool
                .backends()
                .iter()
                .filter_map(|b| {
                    let hc = b.config.health_check.clone()?;
                    Some(tokio::spawn(probe_forever(b.clone(), hc.kind, hc.interval)))
                })
                .collect();
            let reloaded = tokio::select! {
                _ = shutdown.changed() => false,
                changed = pools.changed() => changed.is_ok(),
            };
            for t in tasks {
                t.abort();
            }
            if !reloaded {
                return;
            }
        }
    }
}
