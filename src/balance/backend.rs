//! [`Backend`]: one Azure OpenAI instance — where it is (its peer, re-resolved by [`super::dns`]),
//! how it is authenticated, the deployments it serves under which names, and its standing
//! (cooldowns, ejection, probes).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use pingora::tls::x509::X509;
use pingora::upstreams::peer::HttpPeer;

use super::capacity::Capacity;
use super::standing::BackendStanding;
use crate::config::{BackendConfig, Scheme};
use crate::metrics::BackendStats;
use crate::outcome::Sent;

/// How a backend is authenticated, fixed at start.
#[derive(Debug)]
pub enum BackendAuth {
    /// `Authorization: Bearer <Entra token>` from the token cache.
    EntraToken,
    /// `api-key: <key>` (the header value is marked sensitive).
    ApiKey(HeaderValue),
    /// Nothing: `auth.kind: none` and no `api_key`.
    Nothing,
}

/// What a backend is sent to prove the proxy may call it, for one try.
#[derive(Clone, Debug)]
pub enum Credential {
    /// `Authorization: Bearer <Entra token>`.
    EntraToken(HeaderValue),
    /// `api-key`.
    ApiKey(HeaderValue),
    /// No credential header.
    Nothing,
}

impl Credential {
    /// What the retry policy needs to know of it.
    pub fn sent(&self) -> Sent {
        match self {
            Credential::EntraToken(_) => Sent::EntraToken,
            Credential::ApiKey(_) => Sent::ApiKey,
            Credential::Nothing => Sent::Nothing,
        }
    }
}

/// How a backend knows a deployment it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming<'a> {
    /// By the name the client used (or the request names no deployment).
    AsIs,
    /// By its own name, from its `deployments` map.
    Renamed(&'a str),
}

/// Why a backend could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {0}: the host is not a valid header value")]
    Host(String),
    #[error("backend {0}: api_key has characters a header cannot carry")]
    ApiKey(String),
}

/// What every peer of a backend shares.
#[derive(Debug, Clone)]
pub(super) struct PeerTemplate {
    pub(super) connect_timeout: Duration,
    pub(super) pool_idle: Duration,
    /// The trusted CAs when `upstream_tls.ca_file` adds some (with the system roots).
    pub(super) ca: Option<Arc<Box<[X509]>>>,
}

/// One Azure OpenAI instance.
pub struct Backend {
    /// The name used in logs and metrics.
    pub name: String,
    /// `Host` for the requests sent to it.
    pub host_header: HeaderValue,
    pub auth: BackendAuth,
    /// Cooldowns, ejection and probe results.
    pub standing: Arc<BackendStanding>,
    /// The quota its answers say it has left (`balance.strategy: headroom`).
    pub capacity: Arc<Capacity>,
    /// Its tries, tokens and timings.
    pub stats: Arc<BackendStats>,
    pub(crate) config: BackendConfig,
    template: PeerTemplate,
    /// The peer for the current address; `None` until the host name resolves.
    peer: ArcSwapOption<HttpPeer>,
}

impl Backend {
    /// `uses_tokens`: whether the proxy has an Entra ID credential (`auth.kind` is not `none`).
    /// `previous`: the backend of the same name in the configuration this one replaces (on a
    /// reload). When it is at the same URL it is the same instance: its standing (cooldowns,
    /// ejection, probes), the quota it said it has left, its counters and its resolved address
    /// carry over.
    pub(super) fn new(
        config: &BackendConfig,
        uses_tokens: bool,
        template: PeerTemplate,
        previous: Option<&Backend>,
    ) -> Result<Self, BackendError> {
        let host_header = HeaderValue::from_str(&config.url.authority())
            .map_err(|_| BackendError::Host(config.name.clone()))?;
        let auth = match &config.api_key {
            Some(key) => {
                let mut v = HeaderValue::from_str(key.expose())
                    .map_err(|_| BackendError::ApiKey(config.name.clone()))?;
                v.set_sensitive(true);
                BackendAuth::ApiKey(v)
            }
            None if uses_tokens => BackendAuth::EntraToken,
            None => BackendAuth::Nothing,
        };
        let same = previous.filter(|p| p.config.url == config.url);
        let backend = Backend {
            name: config.name.clone(),
            host_header,
            auth,
            standing: same.map_or_else(
                || Arc::new(BackendStanding::new(&config.name)),
                |p| p.standing.clone(),
            ),
            capacity: same.map_or_else(Arc::default, |p| p.capacity.clone()),
            stats: same.map_or_else(Arc::default, |p| p.stats.clone()),
            config: config.clone(),
            template,
            peer: ArcSwapOption::empty(),
        };
        // IP literals need no resolving: their peer exists from the start. A name keeps the
        // address it had resolved to (in a peer with this configuration's options).
        let known = same
            .and_then(|p| p.peer())
            .and_then(|p| p._address.as_inet().copied());
        if let Ok(ip) = config.url.host.parse::<IpAddr>() {
            backend.set_addr(SocketAddr::new(ip, config.url.port));
        } else if let Some(addr) = known {
            backend.set_addr(addr);
        }
        Ok(backend)
    }

    /// How it knows the client's `deployment`, or `None` when it does not serve it (a backend
    /// with a `deployments` map serves only those).
    pub fn naming<'a>(&'a self, deployment: Option<&str>) -> Option<Naming<'a>> {
        match (&self.config.deployments, deployment) {
            (None, _) | (Some(_), None) => Some(Naming::AsIs),
            (Some(map), Some(d)) => map.get(d).map(|own| {
                if own == d {
                    Naming::AsIs
                } else {
                    Naming::Renamed(own)
                }
            }),
        }
    }

    /// Whether it is called with the proxy's Entra ID token (and so cannot be without one).
    pub fn needs_token(&self) -> bool {
        matches!(self.auth, BackendAuth::EntraToken)
    }

    /// The credential for a try, with `token` the proxy's current Entra ID token header; `None`
    /// when it needs a token and none is held.
    pub fn credential(&self, token: Option<&HeaderValue>) -> Option<Credential> {
        match &self.auth {
            BackendAuth::EntraToken => token.cloned().map(Credential::EntraToken),
            BackendAuth::ApiKey(key) => Some(Credential::ApiKey(key.clone())),
            BackendAuth::Nothing => Some(Credential::Nothing),
        }
    }

    /// The trusted CAs for this backend's TLS, when `upstream_tls.ca_file` adds some.
    pub fn trusted_cas(&self) -> Option<Arc<Box<[X509]>>> {
        self.template.ca.clone()
    }

    /// The peer to connect to, or `None` while the host name has not resolved.
    pub fn peer(&self) -> Option<Arc<HttpPeer>> {
        self.peer.load_full()
    }

    /// Whether the host is a name that needs resolving.
    pub(super) fn needs_dns(&self) -> bool {
        self.config.url.host.parse::<IpAddr>().is_err()
    }

    fn set_addr(&self, addr: SocketAddr) {
        if self
            .peer
            .load()
            .as_ref()
            .is_some_and(|p| p._address == addr.into())
        {
            return;
        }
        let tls = self.config.url.scheme == Scheme::Https;
        let mut peer = HttpPeer::new(addr, tls, self.config.url.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.template.connect_timeout);
        o.total_connection_timeout = Some(self.template.connect_timeout.saturating_mul(2));
        o.idle_timeout = Some(self.template.pool_idle);
        o.verify_cert = true;
        o.verify_hostname = true;
        o.ca = self.template.ca.clone();
        self.peer.store(Some(Arc::new(peer)));
        log::info!("backend {} is at {addr}", self.name);
    }

    /// Resolves the host name once (blocking); keeps the old address when resolution fails.
    pub(super) fn resolve(&self) {
        let target = (self.config.url.host.as_str(), self.config.url.port);
        match target.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => self.set_addr(addr),
            Ok(None) => log::warn!(
                "backend {}: {} has no address",
                self.name,
                self.config.url.host
            ),
            Err(e) => log::warn!(
                "backend {}: cannot resolve {}: {e}",
                self.name,
                self.config.url.host
            ),
        }
    }
}
