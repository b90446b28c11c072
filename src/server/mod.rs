//! Start-up, once: [`Proxy::build`] reads the files the configuration names and builds every
//! part (the backend pool, the credential, the proxy service, the admin listener, the background
//! tasks) without touching the network; `--test` runs exactly that. [`Proxy::run`] then resolves
//! the backends, listens, and serves until a signal ([`shutdown`]).

mod admin;
mod files;
mod shutdown;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::balance::{BackendError, Pool, Prober, Resolver};
use crate::clients::Clients;
use crate::config::{Config, ConfigError, CredentialKind, Problem};
use crate::credentials::{CredentialError, CredentialSource, Refresher, TokenCache};
use crate::metrics::Metrics;
use crate::proxy::AoaiProxy;
use admin::Admin;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Files the configuration names are missing or unusable.
    #[error("{} file(s) named by the configuration cannot be used", .0.len())]
    Files(Vec<Problem>),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

impl StartError {
    /// What to print for a start-up from the configuration file `file`: one line a problem,
    /// each naming the file (and the key, where there is one).
    pub fn report(&self, file: &Path) -> String {
        match self {
            StartError::Files(problems) => ConfigError {
                file: file.to_owned(),
                problems: problems.clone(),
            }
            .to_string(),
            e => format!("{}: {e}", file.display()),
        }
    }
}

/// Upstream connections kept per backend address, idle, for reuse.
const POOLED_CONNECTIONS: usize = 1024;

/// The server, built and ready to run.
pub struct Proxy {
    server: Server,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    drained: shutdown::Drained,
}

impl Proxy {
    /// Builds every part from the validated configuration, each once. No network, and nothing
    /// listens yet.
    pub fn build(config: &Config) -> Result<Proxy, StartError> {
        let files = files::read(config).map_err(StartError::Files)?;
        let ca = files.upstream_ca.as_ref();
        let pool = Arc::new(Pool::new(config, ca.map(|c| c.trust.clone()))?);
        let source = CredentialSource::new(&config.auth.credential, ca.map(|c| &c.pem[..]))?;
        let metrics = Arc::new(Metrics::new(
            pool.backends().iter().map(|b| b.name.clone()).collect(),
        ));

        let conf = ServerConf {
            threads: config.server.threads,
            grace_period_seconds: Some(config.server.grace_period.as_secs()),
            graceful_shutdown_timeout_seconds: Some(5),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);

        // No backend that takes the token means no token to fetch (and nothing to wait for).
        let tokens = match source {
            Some(source) if pool.needs_token() => {
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
                Some(cache)
            }
            _ => {
                if config.auth.credential != CredentialKind::None {
                    log::info!("every backend has an api_key: no Entra ID token is fetched");
                }
                None
            }
        };
        server.add_service(background_service(
            "health-checks",
            Prober { pool: pool.clone() },
        ));
        server.add_service(background_service("dns", Resolver { pool: pool.clone() }));
        let drained = shutdown::Drained::new();
        server.add_service(background_service(
            "drain",
            drained.watcher(metrics.clone()),
        ));

        let proxy = AoaiProxy {
            pool: pool.clone(),
            tokens: tokens.clone(),
            connector: Arc::new(Connector::new(Some(ConnectorOptions::new(
                POOLED_CONNECTIONS,
            )))),
            max_tries: config.max_tries.get(),
            startup_wait: config.auth.startup_wait,
            clients: config
                .clients
                .as_ref()
                .map(|list| Clients::new(list.iter().map(|c| (c.name.as_str(), c.digest)))),
            timeouts: config.timeouts.clone(),
            limits: config.limits.clone(),
            paths: config.paths.clone(),
            metrics: metrics.clone(),
        };
        let mut service = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            proxy,
            "aoai-proxy",
        );
        for addr in &config.listen {
            service.add_tcp(addr);
        }
        if let (Some(tls), Some(settings)) = (&config.tls, files.listener) {
            service.add_tls_with_settings(&tls.listen, None, settings);
        }
        server.add_service(service);

        if let Some(addr) = &config.admin {
            let app = Admin {
                tokens,
                metrics: metrics.clone(),
                pool: pool.clone(),
            };
            let mut admin = Service::new(
                "admin".to_string(),
                pingora::apps::http_app::HttpServer::new_app(app),
            );
            admin.add_tcp(addr);
            server.add_service(admin);
        }

        Ok(Proxy {
            server,
            pool,
            metrics,
            drained,
        })
    }

    /// Resolves the backends, listens and serves until SIGTERM or SIGINT; then stops accepting,
    /// lets in-flight requests finish (at most `server.grace_period`) and returns.
    pub fn run(self) -> ExitCode {
        self.pool.resolve_all();
        shutdown::run(self.server, self.metrics, self.drained)
    }
}
