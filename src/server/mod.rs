//! Start-up, once: [`Process::build`] reads the files the configuration names and builds every
//! part (the backend pool, the credential, the gateway, the background tasks) without touching
//! the network; `--test` runs exactly that. [`Process::listen`] then settles the addresses
//! ([`listen`]) and adds the listeners (a service per worker, [`workers`], and the admin
//! listener), and [`Process::run`] resolves the backends and serves until a signal
//! ([`shutdown`]), reloading on SIGHUP ([`reload`]).

mod admin;
mod cache;
mod files;
mod listen;
mod reload;
mod shutdown;
mod status;
mod workers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TcpSocketOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora::tls::x509::X509;
use tokio::sync::watch;

use crate::balance::{BackendError, Pool, Prober, Resolver, WaitingRoom};
use crate::cache::semantic::SemanticIndex;
use crate::clients::entra::{EntraVerifier, JwksFetcher};
use crate::clients::limits::{LimitStore, LocalLimits};
use crate::clients::quota::{LocalQuotas, QuotaStore};
use crate::config::{Config, ConfigError, CredentialKind, Problem};
use crate::credentials::{http_client, CredentialError, CredentialSource, HttpClientError};
use crate::credentials::{Refresher, TokenCache};
use crate::metrics::Metrics;
use crate::objects::{LocalLocations, ObjectLocations};
use crate::proxy::header_deadline::Deadlined;
use crate::proxy::upstream::Upstream;
use crate::proxy::{Gateway, Lasting, Proxy};
use crate::state::limits::SharedLimits;
use crate::state::objects::SharedLocations;
use crate::state::quotas::SharedQuotas;
use crate::state::{SharedState, StateTask};
use crate::telemetry::Tracing;
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
    EntraClient(#[from] HttpClientError),
    /// The crate's message does not repeat the URL (which may hold a password).
    #[error("state.redis: {0}")]
    State(#[from] redis::RedisError),
    #[error("telemetry: the span exporter could not start: {0}")]
    Telemetry(std::io::Error),
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

/// The process: every part built once, ready to listen and run.
pub struct Process {
    server: Server,
    config: Config,
    current: Arc<ArcSwap<Gateway>>,
    pools: watch::Sender<Arc<Pool>>,
    lasting: Lasting,
    /// The trust store for upstream TLS, when `upstream_tls.ca_file` adds to the system roots.
    ca: Option<Arc<Box<[X509]>>>,
    /// The HTTPS listener's TLS settings, one a worker, until the listeners are added.
    tls: Vec<TlsSettings>,
    reload_from: Option<PathBuf>,
    drained: shutdown::Drained,
    /// The addresses settled by [`Process::listen`].
    addresses: Option<listen::Addresses>,
}

impl Process {
    /// Builds every part from the validated configuration, each once. No network, and nothing
    /// listens yet.
    pub fn build(config: &Config) -> Result<Process, StartError> {
        let files = files::read(config).map_err(StartError::Files)?;
        let (pem, ca) = match &files.upstream_ca {
            Some(c) => (Some(&c.pem[..]), Some(c.trust.clone())),
            None => (None, None),
        };
        let pool = Arc::new(Pool::new(config, ca.clone())?);
        let source = CredentialSource::new(&config.auth.credential, pem)?;
        let metrics = Arc::new(Metrics::default());
        let mut server = Server::new_with_opt_and_conf(None, server_conf(config));
        let tokens = token_refresher(&mut server, config, source, &pool);
        let entra = match &config.entra_clients {
            Some(e) => Some(entra_keys(&mut server, e, pem)?),
            None => None,
        };
        let (pools, _) = watch::channel(pool.clone());
        let probes = Prober {
            pools: pools.subscribe(),
        };
        server.add_service(background_service("health-checks", probes));
        let dns = Resolver {
            pools: pools.subscribe(),
        };
        server.add_service(background_service("dns", dns));
        let prompts = config.cache.as_ref().and_then(cache::prompt_index);
        let shared = shared_state(
            &mut server,
            config,
            (files.redis_ca.as_deref(), prompts.clone()),
            &metrics,
            &pools,
        )?;
        let drained = shutdown::Drained::new();
        server.add_service(background_service(
            "drain",
            drained.watcher(metrics.clone()),
        ));
        let tracing = match &config.telemetry {
            Some(settings) => {
                let dropped = metrics.spans_dropped();
                let tracing = Tracing::start(settings, dropped).map_err(StartError::Telemetry)?;
                Some(Arc::new(tracing))
            }
            None => None,
        };
        let cache = config
            .cache
            .as_ref()
            .map(|c| cache::response_cache(c, shared.state.as_ref(), prompts, &metrics));
        let lasting = Lasting {
            cache,
            tokens,
            upstream: Arc::new(Upstream::new(POOLED_CONNECTIONS)),
            metrics,
            limits: shared.limits,
            quotas: shared.quotas,
            entra,
            objects: shared.objects,
            state: shared.state,
            waiting: WaitingRoom::new(config.waiting.max),
            spread: Arc::default(),
            tracing,
        };
        let current = Arc::new(ArcSwap::from_pointee(Gateway::new(config, pool, &lasting)));
        Ok(Process {
            server,
            config: config.clone(),
            current,
            pools,
            lasting,
            ca,
            tls: files.listener,
            reload_from: None,
            drained,
            addresses: None,
        })
    }

    /// Reloads the configuration from `path` on SIGHUP (see [`reload`]).
    pub fn reload_from(mut self, path: &Path) -> Process {
        self.reload_from = Some(path.to_owned());
        self
    }

    /// Settles the addresses (each given one free, each port 0 picked and held) and adds the
    /// listeners: a service per worker and the admin listener. What is wrong, by key and
    /// address.
    pub fn listen(mut self) -> Result<Process, String> {
        let addresses = listen::settle(&self.config)?;
        let workers = workers::count(&self.config.server);
        let mut tls = std::mem::take(&mut self.tls).into_iter();
        for index in 0..workers {
            let proxy = Proxy {
                current: self.current.clone(),
            };
            let app = Deadlined {
                app: Arc::new(pingora::proxy::http_proxy(
                    &self.server.configuration,
                    proxy,
                )),
                within: self.config.timeouts.client_header,
            };
            let worker = workers::worker(index, workers, &addresses, app, tls.next());
            self.server.add_service(worker);
        }
        if let Some(address) = &addresses.admin {
            let app = Admin {
                tokens: self.lasting.tokens.clone(),
                metrics: self.lasting.metrics.clone(),
                current: self.current.clone(),
                listen: addresses.listen.iter().map(|a| a.addr.clone()).collect(),
            };
            let app = pingora::apps::http_app::HttpServer::new_app(app);
            let mut admin = Service::new("admin".to_string(), app);
            let mut options = TcpSocketOptions::default();
            options.so_reuseport = address.picked.then_some(true);
            admin.add_tcp_with_settings(&address.addr, options);
            self.server.add_service(admin);
        }
        self.addresses = Some(addresses);
        Ok(self)
    }

    /// The first plain HTTP address and the admin address listened on (a port 0 of the file
    /// is the one picked), once [`Self::listen`] has settled them.
    pub fn listening(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let Some(a) = &self.addresses else {
            return (None, None);
        };
        (
            a.listen.first().map(|l| l.resolved),
            a.admin.as_ref().map(|l| l.resolved),
        )
    }

    /// Resolves the backends, and serves until SIGTERM or SIGINT; then stops accepting, lets
    /// in-flight requests finish (at most `server.grace_period`) and returns.
    pub fn run(self) -> ExitCode {
        self.current.load().pool().resolve_all();
        let metrics = self.lasting.metrics.clone();
        let tracing = self.lasting.tracing.clone();
        let _held = self.addresses;
        let reloader = self.reload_from.map(|path| Reloader {
            path,
            started: self.config,
            current: self.current,
            pools: self.pools,
            lasting: self.lasting,
            ca: self.ca,
        });
        let code = shutdown::run(self.server, metrics, self.drained, reloader);
        // The last requests' spans leave before the process does.
        if let Some(tracing) = tracing {
            tracing.flush(std::time::Duration::from_secs(2));
        }
        code
    }
}

/// Pingora's settings for `config`.
fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.server.threads,
        // By default one current-thread runtime per worker, like nginx's workers: a request
        // and its backend connections stay on one thread, with no cross-thread wake-ups.
        work_stealing: config.server.work_stealing,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    }
}

/// The token cache and the task that keeps it filled, when a backend takes the proxy's token
/// (otherwise no token is fetched, and nothing waits for one).
fn token_refresher(
    server: &mut Server,
    config: &Config,
    source: Option<CredentialSource>,
    pool: &Pool,
) -> Option<Arc<TokenCache>> {
    match source {
        Some(source) if pool.needs_token() => {
            let cache = Arc::new(TokenCache::default());
            let refresher = Refresher {
                source,
                scope: config.auth.scope.clone(),
                cache: cache.clone(),
                margin: config.auth.refresh_before,
            };
            server.add_service(background_service("entra-token", refresher));
            Some(cache)
        }
        _ => {
            if config.auth.credential != CredentialKind::None {
                log::info!("every backend has an api_key: no Entra ID token is fetched");
            }
            None
        }
    }
}

/// The check of clients' Entra ID tokens, and the task that fetches the tenant's keys.
fn entra_keys(
    server: &mut Server,
    clients: &crate::config::EntraClients,
    extra_ca: Option<&[u8]>,
) -> Result<Arc<EntraVerifier>, StartError> {
    let verifier = Arc::new(EntraVerifier::new(clients));
    let fetcher = JwksFetcher {
        verifier: verifier.clone(),
        http: http_client(extra_ca)?,
    };
    server.add_service(background_service("entra-client-keys", fetcher));
    Ok(verifier)
}

/// Where limit windows, quota counts and object places are kept: in this process, or
/// (`state.redis`) in Redis with the task that keeps it connected.
struct Stores {
    limits: Arc<dyn LimitStore>,
    quotas: Arc<dyn QuotaStore>,
    objects: Arc<dyn ObjectLocations>,
    state: Option<Arc<SharedState>>,
}

/// The stores of limits, quotas and object places: in Redis with `state.redis` (whose CA is
/// `redis_ca`; its task also feeds other replicas' prompts into `prompts`), else in memory.
fn shared_state(
    server: &mut Server,
    config: &Config,
    (redis_ca, prompts): (Option<&[u8]>, Option<Arc<SemanticIndex>>),
    metrics: &Arc<Metrics>,
    pools: &watch::Sender<Arc<Pool>>,
) -> Result<Stores, StartError> {
    let local_objects = LocalLocations::new(config.objects_remembered);
    let Some(settings) = &config.redis else {
        return Ok(Stores {
            limits: Arc::new(LocalLimits::default()),
            quotas: Arc::new(LocalQuotas::default()),
            objects: Arc::new(local_objects),
            state: None,
        });
    };
    let remember = config.objects_remembered.get();
    let (state, writes) = SharedState::new(settings, redis_ca, remember, metrics.clone())?;
    let quotas = Arc::new(SharedQuotas::new(state.clone()));
    let task = StateTask {
        state: state.clone(),
        quotas: quotas.clone(),
        pools: pools.subscribe(),
        writes: tokio::sync::Mutex::new(Some(writes)),
        prompts,
    };
    server.add_service(background_service("shared-state", task));
    Ok(Stores {
        limits: Arc::new(SharedLimits::new(state.clone())),
        quotas,
        objects: Arc::new(SharedLocations::new(state.clone(), local_objects)),
        state: Some(state),
    })
}
