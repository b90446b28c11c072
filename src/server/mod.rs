//! Start-up, once: [`Proxy::build`] reads the files the configuration names and builds every
//! part (the backend pool, the credential, the proxy service, the admin listener, the background
//! tasks) without touching the network; `--test` runs exactly that. [`Proxy::run`] then resolves
//! the backends, listens, and serves until a signal ([`shutdown`]).

mod admin;
mod files;
mod reload;
mod shutdown;
mod workers;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use pingora::tls::x509::X509;
use tokio::sync::watch;

use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::balance::{BackendError, Pool, Prober, Resolver};
use crate::clients::entra::{EntraVerifier, JwksFetcher};
use crate::clients::Clients;
use crate::config::{Config, ConfigError, CredentialKind, Problem};
use crate::credentials::{http_client, CredentialError, CredentialSource, Refresher, TokenCache};
use crate::limits::{LimitStore, LocalLimits};
use crate::metrics::Metrics;
use crate::objects::{LocalLocations, ObjectLocations};
use crate::proxy::upstream::Upstream;
use crate::proxy::{AoaiProxy, ProxyService};
use crate::state::limits::SharedLimits;
use crate::state::objects::SharedLocations;
use crate::state::{SharedState, StateTask};
use admin::Admin;
use reload::Reloader;

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
    #[error("client_auth.entra: {0}")]
    Client(String),
    #[error("state.redis: {0}")]
    State(String),
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

/// Upstream connections kept idle for reuse, per backend address on each worker thread.
const POOLED_CONNECTIONS: usize = 1024;

/// The parts that live as long as the process, whatever the configuration in force.
pub(crate) struct Shared {
    /// `None` when no backend takes the proxy's Entra ID token.
    tokens: Option<Arc<TokenCache>>,
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    /// The trust store for upstream TLS, when `upstream_tls.ca_file` adds to the system roots.
    ca: Option<Arc<Box<[X509]>>>,
    /// Client limit windows: kept across reloads, by client name.
    limit_store: Arc<dyn LimitStore>,
    /// Checks clients' Entra ID tokens, with the signing keys fetched at start.
    entra: Option<Arc<EntraVerifier>>,
    /// Where stateful objects live: kept across reloads, by backend name.
    objects: Arc<dyn ObjectLocations>,
    /// The state shared with other replicas (`state.redis`).
    state: Option<Arc<SharedState>>,
}

impl Shared {
    /// The proxy service for `config`, with its `pool` built.
    fn service(&self, config: &Config, pool: Arc<Pool>) -> AoaiProxy {
        AoaiProxy {
            pool,
            tokens: self.tokens.clone(),
            upstream: self.upstream.clone(),
            max_tries: config.max_tries.get(),
            startup_wait: config.auth.startup_wait,
            clients: config.clients.as_deref().map(Clients::new),
            limit_store: self.limit_store.clone(),
            objects: self.objects.clone(),
            state: self.state.clone(),
            entra: self.entra.clone(),
            timeouts: config.timeouts.clone(),
            limits: config.limits.clone(),
            paths: config.paths.clone(),
            metrics: self.metrics.clone(),
            log_format: config.log_format,
            include_stream_usage: config.include_stream_usage,
            loaded_at: SystemTime::now(),
        }
    }
}

/// The server, built and ready to run.
pub struct Proxy {
    server: Server,
    config: Config,
    current: Arc<ArcSwap<AoaiProxy>>,
    pools: watch::Sender<Arc<Pool>>,
    shared: Shared,
    reload_from: Option<PathBuf>,
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
        let metrics = Arc::new(Metrics::default());

        let conf = ServerConf {
            threads: config.server.threads,
            // By default one current-thread runtime per worker, like nginx's workers: a request
            // and its backend connections stay on one thread, with no cross-thread wake-ups.
            work_stealing: config.server.work_stealing,
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
        let entra = match &config.entra_clients {
            Some(e) => {
                let verifier = Arc::new(EntraVerifier::new(e));
                let http = http_client(ca.map(|c| &c.pem[..])).map_err(StartError::Client)?;
                server.add_service(background_service(
                    "entra-client-keys",
                    JwksFetcher {
                        verifier: verifier.clone(),
                        http,
                    },
                ));
                Some(verifier)
            }
            None => None,
        };
        let (pools, _) = watch::channel(pool.clone());
        server.add_service(background_service(
            "health-checks",
            Prober {
                pools: pools.subscribe(),
            },
        ));
        server.add_service(background_service(
            "dns",
            Resolver {
                pools: pools.subscribe(),
            },
        ));
        // Shared state (`state.redis`): the stores that use it, and the task that keeps it up.
        let local_objects = LocalLocations::new(config.objects_remembered);
        let (limit_store, objects, state): (Arc<dyn LimitStore>, Arc<dyn ObjectLocations>, _) =
            match &config.redis {
                None => (
                    Arc::new(LocalLimits::default()),
                    Arc::new(local_objects),
                    None,
                ),
                Some(settings) => {
                    let (state, writes) = SharedState::new(
                        settings,
                        files.redis_ca.as_deref(),
                        config.objects_remembered.get(),
                        metrics.clone(),
                    )
                    .map_err(|e| StartError::State(e.to_string()))?;
                    server.add_service(background_service(
                        "shared-state",
                        StateTask {
                            state: state.clone(),
                            pools: pools.subscribe(),
                            writes: tokio::sync::Mutex::new(Some(writes)),
                        },
                    ));
                    (
                        Arc::new(SharedLimits::new(state.clone())),
                        Arc::new(SharedLocations::new(state.clone(), local_objects)),
                        Some(state),
                    )
                }
            };
        let drained = shutdown::Drained::new();
        server.add_service(background_service(
            "drain",
            drained.watcher(metrics.clone()),
        ));

        let shared = Shared {
            tokens: tokens.clone(),
            upstream: Arc::new(Upstream::new(POOLED_CONNECTIONS)),
            metrics: metrics.clone(),
            ca: ca.map(|c| c.trust.clone()),
            limit_store,
            objects,
            state,
            entra,
        };
        let current = Arc::new(ArcSwap::from_pointee(shared.service(config, pool)));
        let mut tls = files.listener.into_iter();
        for index in 0..workers::count(&config.server) {
            let app = pingora::proxy::http_proxy(
                &server.configuration,
                ProxyService {
                    current: current.clone(),
                },
            );
            server.add_service(workers::worker(index, config, app, tls.next()));
        }

        if let Some(addr) = &config.admin {
            let app = Admin {
                tokens,
                metrics,
                current: current.clone(),
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
            config: config.clone(),
            current,
            pools,
            shared,
            reload_from: None,
            drained,
        })
    }

    /// Reloads the configuration from `path` on SIGHUP (see [`reload`]).
    pub fn reload_from(mut self, path: &Path) -> Proxy {
        self.reload_from = Some(path.to_owned());
        self
    }

    /// Whether every address to listen on is free; what is not, by key and address.
    pub fn check_listen(&self) -> Result<(), String> {
        workers::check_free(&self.config)
    }

    /// Resolves the backends, listens and serves until SIGTERM or SIGINT; then stops accepting,
    /// lets in-flight requests finish (at most `server.grace_period`) and returns.
    pub fn run(self) -> ExitCode {
        self.current.load().pool.resolve_all();
        let metrics = self.shared.metrics.clone();
        let reloader = self.reload_from.map(|path| Reloader {
            path,
            started: self.config,
            current: self.current,
            pools: self.pools,
            shared: self.shared,
        });
        shutdown::run(self.server, metrics, self.drained, reloader)
    }
}
