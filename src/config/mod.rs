//! Configuration: the YAML file as serde reads it ([`raw`]), and the validated [`Config`]
//! ([`validate`]) that the rest of the program uses and serde never sees; reading a file into
//! it, and the problems reported when that fails ([`load`]).
//!
//! Unknown keys are errors, `${NAME}` is replaced from the environment ([`env`]), and every
//! error names the file, the key path and, where YAML gives it, the line. Each default is
//! named once, here, beside the setting it belongs to.

mod auth;
mod backends;
mod cache;
mod clients;
mod env;
mod load;
mod raw;
mod secret;
mod settings;
mod spend;
mod telemetry;
mod validate;
pub mod values;

use std::collections::{BTreeMap, BTreeSet};
use std::num::{NonZeroU32, NonZeroU64};
use std::path::PathBuf;
use std::time::Duration;

pub use backends::is_deployment_name;
pub use cache::{Cache, CacheScope, Semantic};
pub use clients::NO_CLIENT;
pub use load::{ConfigError, Problem};
pub use secret::{KeyDigest, Secret};
pub use settings::{
    CooldownPolicy, EjectionPolicy, ServerSettings, Sizes, Strategy, Timeouts, Waiting,
};
pub use spend::{
    Allowance, Fallback, FallbackCause, Period, Price, MAX_BUDGET_NANOS, NANOS_PER_USD,
};
pub use telemetry::Telemetry;
pub use values::{BackendUrl, Scheme};

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Plain HTTP listening addresses (at least one).
    pub listen: Vec<String>,
    /// The optional HTTPS listener.
    pub tls: Option<TlsListener>,
    /// The optional admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: Option<String>,
    /// An extra CA trusted for upstream HTTPS, on top of the system roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// How the proxy proves itself to Azure OpenAI.
    pub auth: Auth,
    /// The backends, in file order (at least one).
    pub backends: Vec<BackendConfig>,
    /// Total tries per request, the first included.
    pub max_tries: NonZeroU32,
    /// Holding a request that would get the throttling 429 until a backend frees up.
    pub waiting: Waiting,
    /// How a backend is chosen within a priority group.
    pub strategy: Strategy,
    /// Client keys; `None` when the proxy is open.
    pub clients: Option<Vec<ClientKey>>,
    /// How clients with Entra ID tokens are checked (`client_auth.entra`).
    pub entra_clients: Option<EntraClients>,
    pub timeouts: Timeouts,
    /// Request sizes (`limits`).
    pub sizes: Sizes,
    pub server: ServerSettings,
    /// How throttled backends are left alone.
    pub cooldown: CooldownPolicy,
    /// When failing backends are ejected.
    pub ejection: EjectionPolicy,
    /// The path prefixes forwarded to backends (each begins and ends with `/`); anything else
    /// is answered 404.
    pub paths: Vec<String>,
    /// `usage.include_in_streams`: add `stream_options.include_usage` to streamed completions
    /// that lack it, so their tokens are counted, and take the usage event out of what the
    /// client gets.
    pub include_stream_usage: bool,
    /// How access-log lines are written (`log.format`).
    pub log_format: LogFormat,
    /// How many stateful objects' locations are remembered (`objects.remember`).
    pub objects_remembered: std::num::NonZeroUsize,
    /// Shared state across replicas (`state.redis`); `None`: each process keeps its own.
    pub redis: Option<RedisSettings>,
    /// What each deployment's tokens cost (`prices`), by deployment name.
    pub prices: BTreeMap<String, Price>,
    /// Where a deployment's requests go when it cannot take them (`fallbacks`), by deployment.
    pub fallbacks: BTreeMap<String, Fallback>,
    /// Traces (`telemetry`); `None`: no span is made or exported. Fixed at start.
    pub telemetry: Option<Telemetry>,
    /// The response cache (`cache`); `None`: every request goes to a backend. Fixed at start.
    pub cache: Option<Cache>,
}

/// `state.redis`: where replicas share backend cooldowns, client limits and object locations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port/db`, `rediss://` for TLS (Azure Cache for Redis).
    pub url: Secret,
    /// The longest any Redis call may take before the proxy carries on without it.
    pub timeout: Duration,
    /// Every key and channel the proxy uses begins with this and `:`.
    pub prefix: String,
    /// PEM certificates trusted for the Redis server's TLS instead of the public roots (a
    /// Redis whose certificate a private CA signed); `rediss://` only.
    pub ca_file: Option<PathBuf>,
}

impl RedisSettings {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);
    pub const DEFAULT_PREFIX: &'static str = "aoai-proxy";
}

/// The access log's line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `GET /openai/... 200 backend=... tries=1 ...`, after the logger's time and level.
    #[default]
    Text,
    /// One JSON object a line, nothing around it.
    Json,
}

impl Config {
    /// `retry.max_tries` when the file does not say.
    pub const DEFAULT_MAX_TRIES: NonZeroU32 = NonZeroU32::new(3).expect("3 is not zero");
    /// `objects.remember` when the file does not say.
    pub const DEFAULT_OBJECTS_REMEMBERED: std::num::NonZeroUsize =
        std::num::NonZeroUsize::new(100_000).expect("not zero");
    /// `paths` when the file does not say: Azure OpenAI's.
    pub const DEFAULT_PATHS: [&'static str; 1] = ["/openai/"];
}

/// The HTTPS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsListener {
    pub listen: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which Entra ID credential the proxy uses, and for what scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    pub credential: CredentialKind,
    /// The token scope.
    pub scope: String,
    /// How long before expiry a token is replaced.
    pub refresh_before: Duration,
    /// How long a request that arrives while no token is held waits for the fetch on its way
    /// (the first one at start, or one after an outage) before it gets a 503.
    pub startup_wait: Duration,
}

impl Auth {
    /// The Entra ID scope of Azure OpenAI.
    pub const DEFAULT_SCOPE: &'static str = "https://cognitiveservices.azure.com/.default";
    pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(600);
    pub const DEFAULT_STARTUP_WAIT: Duration = Duration::from_secs(10);
}

/// The credential kinds of `auth.kind`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// Managed identity: system-assigned, or the user-assigned identity named.
    ManagedIdentity { user_assigned: Option<UserAssigned> },
    /// AKS workload identity (federated token file).
    WorkloadIdentity {
        tenant_id: Option<String>,
        client_id: Option<String>,
        token_file: Option<PathBuf>,
    },
    /// A service principal with a client secret.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: Secret,
    },
    /// The local Azure CLI login (`az account get-access-token`).
    AzureCli,
    /// No Entra ID token: every backend uses its `api_key`, or nothing.
    None,
}

impl CredentialKind {
    /// Its name in `auth.kind`.
    pub fn name(&self) -> &'static str {
        match self {
            CredentialKind::ManagedIdentity { .. } => "managed_identity",
            CredentialKind::WorkloadIdentity { .. } => "workload_identity",
            CredentialKind::ClientSecret { .. } => "client_secret",
            CredentialKind::AzureCli => "azure_cli",
            CredentialKind::None => "none",
        }
    }
}

/// A user-assigned managed identity, by one of its ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserAssigned {
    ClientId(String),
    ObjectId(String),
    ResourceId(String),
}

/// One backend (an Azure OpenAI instance).
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// Used in logs and metrics; defaults to the URL's host (and port, when one is given).
    pub name: String,
    pub url: BackendUrl,
    /// Its share of the rotation within its priority group.
    pub weight: u16,
    /// When set, this backend gets `api-key` instead of a bearer token.
    pub api_key: Option<Secret>,
    /// Lower goes first: higher groups get traffic only while every backend of the lower ones
    /// is cooling or unhealthy.
    pub priority: u8,
    /// When set, the only deployments this backend serves, each mapped to its own name.
    pub deployments: Option<BTreeMap<String, String>>,
    /// An optional active health check.
    pub health_check: Option<HealthCheck>,
}

impl BackendConfig {
    pub const DEFAULT_WEIGHT: u16 = 1;
    pub const DEFAULT_PRIORITY: u8 = 0;
}

/// An active health check of one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub interval: Duration,
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    /// The path an `http` check asks for when none is given.
    pub const DEFAULT_PATH: &'static str = "/";
}

/// What an active health check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// Opens a connection (and the TLS handshake, for https).
    Tcp,
    /// `GET path`: any answer below 500 counts as up (Azure answers 401 without credentials).
    Http { path: String },
}

/// A client allowed in when `clients` is configured.
#[derive(Clone, Debug)]
pub struct ClientKey {
    pub name: String,
    /// The SHA-256 of its key (`key` is hashed at load, `key_sha256` given); `None` for a
    /// client known only by its Entra ID.
    pub digest: Option<KeyDigest>,
    /// The Entra ID object or application ids it is known by (`entra_ids`): a token's `oid`,
    /// `azp` or `appid`.
    pub entra_ids: Vec<String>,
    pub limits: ClientLimits,
}

/// What one client may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientLimits {
    pub requests_per_minute: Option<NonZeroU32>,
    /// Prompt and completion tokens, as backends report them.
    pub tokens_per_minute: Option<NonZeroU64>,
    /// The only deployments it may use; `None`: any.
    pub deployments: Option<BTreeSet<String>>,
    /// Tokens per period (`token_quota`).
    pub token_quota: Option<Allowance>,
    /// Billionths of a dollar per period (`budget`).
    pub budget: Option<Allowance>,
}

impl ClientLimits {
    /// Whether its spend is counted by period: it has a `token_quota` or a `budget`.
    pub fn counts_spend(&self) -> bool {
        self.token_quota.is_some() || self.budget.is_some()
    }
}

/// Clients that present their own Entra ID token (`client_auth.entra`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntraClients {
    pub tenant: String,
    /// The `aud` the tokens must carry.
    pub audience: String,
    /// Where the tenant's signing keys are.
    pub jwks_url: String,
    /// The `iss` values accepted.
    pub issuers: Vec<String>,
    /// How often the keys are fetched again.
    pub refresh: Duration,
}

impl EntraClients {
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);

    /// The tenant's signing keys on the public cloud's login endpoint.
    pub fn default_jwks_url(tenant: &str) -> String {
        format!("https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys")
    }

    /// The issuers of the tenant's v2.0 and v1.0 access tokens.
    pub fn default_issuers(tenant: &str) -> Vec<String> {
        vec![
            format!("https://login.microsoftonline.com/{tenant}/v2.0"),
            format!("https://sts.windows.net/{tenant}/"),
        ]
    }
}

#[cfg(test)]
mod tests;
