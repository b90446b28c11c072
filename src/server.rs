//! Builds the Pingora server from a validated [`Config`] and runs it until a signal.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::{Pool, Resolver};
use crate::probe::Prober;
use crate::proxy::AoaiProxy;
use crate::token::{self, Refresher, TokenCache};

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Pool(String),
    #[error(transparent)]
    Credential(#[from] token::CredentialError),
    #[error("tls: {0}")]
    Tls(String),
}

/// How often backend host names are resolved again.
const DNS_INTERVAL: Duration = Duration::from_secs(30);

/// A server ready to run, with what the shutdown watcher needs.
pub struct Proxy {
    pub server: Server,
    metrics: Arc<Metrics>,
    grace_period: Duration,
}

/// Builds every service: the proxy listeners, the token refresher, the resolver, the admin listener.
pub fn build(config: &Config) -> Result<Proxy, StartError> {
    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);

    let pool = Arc::new(Pool::new(config).map_err(StartError::Pool)?);
    pool.resolve_all();
    let metrics = Arc::new(Metrics::new(
        pool.backends().iter().map(|b| b.name.clone()).collect(),
    ));

    // No backend without an api_key means no token to fetch (and nothing to wait for).
    let needs_token = config.backends.iter().any(|b| b.api_key.is_none());
    let source = token::CredentialSource::new(&config.auth, config.upstream_ca_file.as_deref())?
        .filter(|_| needs_token);
    if !needs_token && config.auth.credential != crate::config::CredentialKind::None {
        log::info!("every backend has an api_key: no Entra ID token is fetched");
    }
    let tokens = source.map(|source| {
        let cache = Arc::new(TokenCache::default());
        server.add_service(background_service(
            "entra-token",
            Refresher {
                source,
                scope: config.auth.scope.clone(),
                cache: cache.clone(),
                margin: config.auth.refresh_before,
            },
        ));
        cache
    });
    server.add_service(background_service(
        "health-checks",
        Prober { pool: pool.clone() },
    ));
    server.add_service(background_service(
        "dns",
        Resolver {
            pool: pool.clone(),
            interval: DNS_INTERVAL,
        },
    ));

    let pool_options = ConnectorOptions::new(1024);
    let proxy = AoaiProxy {
        pool: pool.clone(),
        tokens: tokens.clone(),
        connector: Arc::new(Connector::new(Some(pool_options))),
        max_tries: config.max_tries.get(),
        clients: config.clients.clone(),
        timeouts: config.timeouts.clone(),
        limits: config.limits.clone(),
        metrics: metrics.clone(),
        cooldown: config.cooldown.clone(),
        ejection: config.ejection.clone(),
    };
    let mut service =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, proxy, "aoai-proxy");
    for addr in &config.listen {
        service.add_tcp(addr);
    }
    if let Some(tls) = &config.tls {
        service
            .add_tls(
                &tls.listen,
                &tls.cert.to_string_lossy(),
                &tls.key.to_string_lossy(),
            )
            .map_err(|e| StartError::Tls(e.to_string()))?;
    }
    server.add_service(service);

    if let Some(addr) = &config.admin {
        let mut admin = Service::new(
            "admin".to_string(),
            pingora::apps::http_app::HttpServer::new_app(Admin {
                tokens,
                metrics: metrics.clone(),
                pool,
            }),
        );
        admin.add_tcp(addr);
        server.add_service(admin);
    }

    Ok(Proxy {
        server,
        metrics,
        grace_period: config.server.grace_period,
    })
}

impl Proxy {
    /// Runs until SIGTERM or SIGINT, then stops accepting, lets in-flight requests finish
    /// (at most the grace period) and exits 0.
    pub fn run_forever(mut self) -> ! {
        self.server.bootstrap();
        let signal = GracefulSignal {
            metrics: self.metrics,
            grace_period: self.grace_period,
        };
        self.server.run(RunArgs {
            shutdown_signal: Box::new(signal),
        });
        std::process::exit(0)
    }
}

/// SIGTERM and SIGINT both start a graceful shutdown. Pingora then waits the whole grace
/// period; this exits as soon as nothing is in flight instead.
struct GracefulSignal {
    metrics: Arc<Metrics>,
    grace_period: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for GracefulSignal {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot install signal handlers: shutting down");
            return ShutdownSignal::FastShutdown;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        log::info!(
            "{name}: no new connections; waiting up to {}s for {} request(s) in flight",
            self.grace_period.as_secs(),
            self.metrics.in_flight()
        );
        let metrics = self.metrics.clone();
        std::thread::spawn(move || {
            // Exit once nothing has been in flight for a whole second: a request whose header
            // was still arriving on a kept-alive connection gets counted in that time.
            let mut idle_since = None;
            loop {
                std::thread::sleep(Duration::from_millis(50));
                if metrics.in_flight() > 0 {
                    idle_since = None;
                } else if idle_since
                    .get_or_insert_with(std::time::Instant::now)
                    .elapsed()
                    >= Duration::from_secs(1)
                {
                    break;
                }
            }
            log::info!("all requests finished: exiting");
            std::process::exit(0);
        });
        ShutdownSignal::GracefulTerminate
    }
}
