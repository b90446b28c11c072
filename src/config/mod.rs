//! Configuration: the YAML file as serde reads it ([`raw`]), and the validated [`Config`]
//! that the rest of the program uses.
//!
//! Unknown keys are errors, `${NAME}` is replaced from the environment, and every error names
//! the file, the key path and, where YAML gives it, the line.

mod auth;
mod raw;
pub mod values;

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::health::EjectionPolicy;
use crate::secret::Secret;
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
    /// Client keys; `None` when the proxy is open.
    pub clients: Option<Vec<ClientKey>>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub server: ServerSettings,
    /// How throttled backends are left alone.
    pub cooldown: CooldownPolicy,
    /// When failing backends are ejected.
    pub ejection: EjectionPolicy,
}

/// Cooldowns after a 429 or 503.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CooldownPolicy {
    /// When the answer says nothing usable about how long. Default 10 s.
    pub default: Duration,
    /// The longest cooldown honoured, whatever the backend says. Default 1 h.
    pub max: Duration,
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        CooldownPolicy {
            default: Duration::from_secs(10),
            max: Duration::from_secs(3600),
        }
    }
}

/// An active health check of one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub interval: Duration,
}

/// What an active health check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// Opens a connection (and the TLS handshake, for https).
    Tcp,
    /// `GET path`: any answer below 500 counts as up (Azure answers 401 without credentials).
    Http { path: String },
}

/// The HTTPS listener.
#[derive(Clone, Debug)]
pub struct TlsListener {
    pub listen: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which Entra ID credential the proxy uses, and for what scope.
#[derive(Clone, Debug)]
pub struct Auth {
    pub credential: CredentialKind,
    /// The token scope, by default `https://cognitiveservices.azure.com/.default`.
    pub scope: String,
    /// How long before expiry a token is replaced. Default 10 minutes.
    pub refresh_before: Duration,
}

/// The default Entra ID scope for Azure OpenAI.
pub const DEFAULT_SCOPE: &str = "https://cognitiveservices.azure.com/.default";

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
    pub weight: u16,
    /// When set, this backend gets `api-key` instead of a bearer token.
    pub api_key: Option<Secret>,
    /// Lower goes first: higher groups get traffic only while every backend of the lower ones
    /// is cooling or unhealthy. Default 0.
    pub priority: u8,
    /// When set, the only deployments this backend serves, each mapped to its own name.
    pub deployments: Option<std::collections::BTreeMap<String, String>>,
    /// An optional active health check.
    pub health_check: Option<HealthCheck>,
}

/// A client allowed in when `clients` is configured.
#[derive(Clone, Debug)]
pub struct ClientKey {
    pub name: String,
    pub key: Secret,
}

/// Upstream timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (and TLS handshake) to a backend. Default 5 s.
    pub connect: Duration,
    /// From the request sent to the response header received. Default 300 s.
    pub response_header: Duration,
    /// Longest silence between two reads of a response body. Default 300 s.
    pub body_idle: Duration,
    /// How long an idle upstream connection is kept for reuse. Default 60 s.
    pub pool_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(300),
            body_idle: Duration::from_secs(300),
            pool_idle: Duration::from_secs(60),
        }
    }
}

/// Request size limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest request body accepted (and replayed on retries). Default 32 MiB.
    pub max_body_bytes: u64,
    /// The largest total size of request headers. Default 32 KiB.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 32 << 20,
            max_header_bytes: 32 << 10,
        }
    }
}

/// Process settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// Worker threads of the proxy service. Default: the number of CPUs.
    pub threads: usize,
    /// How long in-flight requests may take to finish after SIGTERM. Default 60 s.
    pub grace_period: Duration,
}

/// A configuration that could not be loaded: every problem found, with where it is.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, such as `backends[1].url`; empty for the whole document.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            if p.path.is_empty() {
                write!(f, ": {}", p.message)?;
            } else {
                write!(f, ": {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// Reads, substitutes and validates the YAML file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            problems: vec![Problem {
                path: String::new(),
                line: None,
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Self::from_yaml(&text).map_err(|problems| ConfigError {
            file: path.to_owned(),
            problems,
        })
    }

    /// Parses and validates a YAML document.
    pub fn from_yaml(text: &str) -> Result<Config, Vec<Problem>> {
        let raw = raw::parse(text)?;
        raw.validate()
    }

    /// Checks what the file names on disk: certificates and keys exist and parse.
    pub fn check_files(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut check = |path: &str, file: &Path, what: PemKind| {
            if let Err(message) = what.check(file) {
                problems.push(Problem {
                    path: path.into(),
                    line: None,
                    message: format!("{}: {message}", file.display()),
                });
            }
        };
        if let Some(tls) = &self.tls {
            check("tls.cert", &tls.cert, PemKind::Certificates);
            check("tls.key", &tls.key, PemKind::PrivateKey);
        }
        if let Some(ca) = &self.upstream_ca_file {
            check("upstream_tls.ca_file", ca, PemKind::Certificates);
        }
        if let CredentialKind::WorkloadIdentity {
            token_file: Some(f),
            ..
        } = &self.auth.credential
        {
            if let Err(e) = std::fs::read(f) {
                problems.push(Problem {
                    path: "auth.token_file".into(),
                    line: None,
                    message: format!("{}: {e}", f.display()),
                });
            }
        }
        problems
    }
}

#[derive(Clone, Copy)]
enum PemKind {
    Certificates,
    PrivateKey,
}

impl PemKind {
    fn check(self, file: &Path) -> Result<(), String> {
        use pingora::tls::pkey::PKey;
        use pingora::tls::x509::X509;
        let pem = std::fs::read(file).map_err(|e| e.to_string())?;
        match self {
            PemKind::Certificates => match X509::stack_from_pem(&pem) {
                Ok(certs) if !certs.is_empty() => Ok(()),
                Ok(_) => Err("no PEM certificate in the file".into()),
                Err(e) => Err(format!("not a PEM certificate: {e}")),
            },
            PemKind::PrivateKey => PKey::private_key_from_pem(&pem)
                .map(|_| ())
                .map_err(|e| format!("not a PEM private key: {e}")),
        }
    }
}

/// Names must be unique: they label logs and metrics.
fn duplicates<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    names.filter(|n| !seen.insert(*n)).collect()
}

#[cfg(test)]
mod tests;
