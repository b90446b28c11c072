//! The backend pool: each backend's address, TLS and credentials, and the round robin that
//! picks where a request goes first and where its retries go next.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use http::HeaderValue;
use pingora::lb::selection::{algorithms::RoundRobin, SelectionAlgorithm};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::tls::x509::X509;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{BackendConfig, Config, CooldownPolicy, EjectionPolicy, Scheme};
use crate::health::BackendHealth;
use crate::retry::Outcome;
use crate::throttle;

/// How a backend is authenticated.
#[derive(Debug)]
pub enum BackendAuth {
    /// `Authorization: Bearer <Entra token>` from the token cache (or nothing with `auth.kind: none`).
    Token,
    /// `api-key: <key>` (the header value is marked sensitive).
    ApiKey(HeaderValue),
}

/// One Azure OpenAI instance.
pub struct Backend {
    /// The name used in logs and metrics.
    pub name: String,
    /// `Host` for the requests sent to it.
    pub host_header: HeaderValue,
    pub auth: BackendAuth,
    /// Cooldowns, ejection and probe results.
    pub health: BackendHealth,
    pub(crate) config: BackendConfig,
    peer_options: PeerTemplate,
    /// The peer for the current address; `None` until the host name resolves.
    peer: ArcSwapOption<HttpPeer>,
}

/// What every peer of a backend shares.
#[derive(Debug, Clone)]
struct PeerTemplate {
    connect_timeout: Duration,
    pool_idle: Duration,
    ca: Option<Arc<Box<[X509]>>>,
}

impl Backend {
    fn new(config: &BackendConfig, template: PeerTemplate) -> Result<Self, String> {
        let host_header = HeaderValue::from_str(&config.url.authority()).map_err(|_| {
            format!(
                "backend {}: the host is not a valid header value",
                config.name
            )
        })?;
        let auth = match &config.api_key {
            Some(key) => {
                let mut v = HeaderValue::from_str(key.expose()).map_err(|_| {
                    format!(
                        "backend {}: api_key has characters a header cannot carry",
                        config.name
                    )
                })?;
                v.set_sensitive(true);
                BackendAuth::ApiKey(v)
            }
            None => BackendAuth::Token,
        };
        let backend = Backend {
            name: config.name.clone(),
            host_header,
            auth,
            health: BackendHealth::new(&config.name),
            config: config.clone(),
            peer_options: template,
            peer: ArcSwapOption::empty(),
        };
        // IP literals need no resolving: their peer exists from the start.
        if let Ok(ip) = config.url.host.parse::<std::net::IpAddr>() {
            backend.set_addr(SocketAddr::new(ip, config.url.port));
        }
        Ok(backend)
    }

    /// Its own name for the client's `deployment`, or `None` when it does not serve it.
    pub fn deployment_name<'a>(&'a self, deployment: Option<&'a str>) -> Option<&'a str> {
        match (&self.config.deployments, deployment) {
            (None, d) => Some(d.unwrap_or("")),
            (Some(map), Some(d)) => map.get(d).map(String::as_str),
            (Some(_), None) => Some(""),
        }
    }

    /// Whether it serves `deployment` (a backend with a `deployments` map serves only those).
    pub fn serves(&self, deployment: Option<&str>) -> bool {
        self.deployment_name(deployment).is_some()
    }

    /// Whether it has a `deployments` map that renames `deployment`.
    pub fn renames<'a>(&'a self, deployment: Option<&'a str>) -> Option<&'a str> {
        let own = self.deployment_name(deployment)?;
        (self.config.deployments.is_some() && Some(own) != deployment && !own.is_empty())
            .then_some(own)
    }

    /// Updates cooldowns and passive health with what a try produced: a 429 or 503 cools the
    /// deployment for the time the backend asked (or the default); connection failures,
    /// timeouts and 5xx count towards ejection; any other answer shows it alive.
    pub fn observe(
        &self,
        outcome: Outcome,
        headers: Option<&http::HeaderMap>,
        deployment: Option<&str>,
        cooldown: &CooldownPolicy,
        ejection: &EjectionPolicy,
    ) {
        match outcome {
            Outcome::Status(status @ (429 | 503)) => {
                let asked =
                    headers.and_then(|h| throttle::requested_cooldown(h, SystemTime::now()));
                let (period, why) = match asked {
                    Some(d) if d > cooldown.max => (
                        cooldown.max,
                        "the time it asked for, capped by cooldown.max",
                    ),
                    Some(d) => (d, "the time it asked for"),
                    None => (cooldown.default, "no usable retry-after: cooldown.default"),
                };
                self.health
                    .cool(deployment, period, &format!("{status}, {why}"));
                if status == 503 {
                    self.health.record_failure(ejection);
                } else {
                    self.health.record_success();
                }
            }
            Outcome::Status(status) if status >= 500 => self.health.record_failure(ejection),
            Outcome::Status(_) => self.health.record_success(),
            Outcome::Failed(_) => self.health.record_failure(ejection),
        }
    }

    /// The extra trusted CAs (with the system roots) for this backend's TLS, if configured.
    pub fn trusted_cas(&self) -> Option<Arc<Box<[X509]>>> {
        self.peer_options.ca.clone()
    }

    /// The peer to connect to, or `None` while the host name has not resolved.
    pub fn peer(&self) -> Option<Arc<HttpPeer>> {
        self.peer.load_full()
    }

    /// Whether the host is a name that needs resolving.
    fn needs_dns(&self) -> bool {
        self.config.url.host.parse::<std::net::IpAddr>().is_err()
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
        o.connection_timeout = Some(self.peer_options.connect_timeout);
        o.total_connection_timeout = Some(self.peer_options.connect_timeout.saturating_mul(2));
        o.idle_timeout = Some(self.peer_options.pool_idle);
        o.verify_cert = true;
        o.verify_hostname = true;
        o.ca = self.peer_options.ca.clone();
        self.peer.store(Some(Arc::new(peer)));
        log::info!("backend {} is at {addr}", self.name);
    }

    /// Resolves the host name once; keeps the old address when resolution fails.
    fn resolve(&self) {
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

/// The backends and their rotation.
pub struct Pool {
    backends: Box<[Arc<Backend>]>,
    /// Priority groups, lowest priority first.
    groups: Box<[Group]>,
    /// For each backend, the index of its group.
    group_of: Box<[usize]>,
}

/// Backends of one priority, with their own rotation.
struct Group {
    /// One round of the smooth weighted rotation: backend indexes, each as often as its weight.
    rotation: Box<[usize]>,
    counter: RoundRobin,
}

/// Where one request goes, and where its retries go next.
pub struct Plan<'a> {
    pool: &'a Pool,
    /// This request's turn in each group's rotation, taken when the group is first used.
    turns: Vec<Option<usize>>,
    /// Tries made so far on each backend.
    tries: Vec<u16>,
}

impl Plan<'_> {
    /// The next backend for this request among those `usable` accepts: the least tried, then
    /// the lowest priority, then the nearest in that group's rotation. So a request stays in
    /// the first group while it has a usable backend, and every backend is tried once before
    /// any is tried twice.
    pub fn next(&mut self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.tries.len()).filter(|&i| usable(i)).collect();
        let fewest = candidates.iter().map(|&i| self.tries[i]).min()?;
        let group = candidates
            .iter()
            .filter(|&&i| self.tries[i] == fewest)
            .map(|&i| self.pool.group_of[i])
            .min()?;
        let g = &self.pool.groups[group];
        let turn = *self.turns[group].get_or_insert_with(|| g.counter.next(&[]) as usize);
        let len = g.rotation.len();
        let chosen = (0..len)
            .map(|k| g.rotation[(turn + k) % len])
            .find(|&i| self.tries[i] == fewest && candidates.contains(&i))?;
        self.tries[chosen] = self.tries[chosen].saturating_add(1);
        Some(chosen)
    }
}

impl Pool {
    /// Builds the pool from the configuration (no network: names resolve in [`Resolver`]).
    pub fn new(config: &Config) -> Result<Self, String> {
        let ca = match &config.upstream_ca_file {
            Some(file) => Some(Arc::new(trust_store_with(file)?)),
            None => None,
        };
        let template = PeerTemplate {
            connect_timeout: config.timeouts.connect,
            pool_idle: config.timeouts.pool_idle,
            ca,
        };
        let backends = config
            .backends
            .iter()
            .map(|b| Backend::new(b, template.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut priorities: Vec<u8> = config.backends.iter().map(|b| b.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let group_of: Box<[usize]> = config
            .backends
            .iter()
            .map(|b| {
                priorities
                    .iter()
                    .position(|&p| p == b.priority)
                    .unwrap_or(0)
            })
            .collect();
        let groups = (0..priorities.len())
            .map(|g| {
                let members: Vec<usize> =
                    (0..backends.len()).filter(|&i| group_of[i] == g).collect();
                let weights: Vec<u16> =
                    members.iter().map(|&i| config.backends[i].weight).collect();
                Group {
                    rotation: smooth_rotation(&weights)
                        .into_iter()
                        .map(|k| members[k])
                        .collect(),
                    counter: RoundRobin::new(),
                }
            })
            .collect();
        Ok(Pool {
            backends: backends.into(),
            groups,
            group_of,
        })
    }

    /// The backends in configuration order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// A new plan: one per request, so each group's rotation advances once per request served.
    pub fn plan(&self) -> Plan<'_> {
        Plan {
            pool: self,
            turns: vec![None; self.groups.len()],
            tries: vec![0; self.backends.len()],
        }
    }

    /// The backend at `index`.
    pub fn get(&self, index: usize) -> &Arc<Backend> {
        &self.backends[index]
    }

    /// Resolves every backend's host name once (at start-up, before serving).
    pub fn resolve_all(&self) {
        for b in self.backends.iter().filter(|b| b.needs_dns()) {
            b.resolve();
        }
    }
}

/// The order of one round of weighted round robin, spread out as nginx's smooth weighted
/// round robin does (weights 3:1 give `a a b a`, not `a a a b`).
fn smooth_rotation(weights: &[u16]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, &w) in current.iter_mut().zip(weights) {
                *c += i64::from(w);
            }
            let best = (0..current.len())
                .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
                .unwrap_or(0);
            current[best] -= total;
            best
        })
        .collect()
}

/// The system's trusted roots plus the CAs in `extra`: `upstream_tls.ca_file` adds trust,
/// it never replaces the public roots real Azure endpoints need.
fn trust_store_with(extra: &std::path::Path) -> Result<Box<[X509]>, String> {
    let pem = std::fs::read(extra)
        .map_err(|e| format!("upstream_tls.ca_file {}: {e}", extra.display()))?;
    let mut certs = X509::stack_from_pem(&pem).map_err(|e| {
        format!(
            "upstream_tls.ca_file {}: not PEM certificates: {e}",
            extra.display()
        )
    })?;
    if certs.is_empty() {
        return Err(format!(
            "upstream_tls.ca_file {}: no certificate in the file",
            extra.display()
        ));
    }
    let probe = openssl_probe::probe();
    let system = probe
        .cert_file
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|pem| X509::stack_from_pem(&pem).ok())
        .unwrap_or_default();
    if system.is_empty() {
        log::warn!(
            "no system CA bundle found: upstream HTTPS trusts only {}",
            extra.display()
        );
    }
    certs.extend(system);
    Ok(certs.into_boxed_slice())
}

/// Re-resolves backend host names in the background (Azure endpoints move).
pub struct Resolver {
    pub pool: Arc<Pool>,
    pub interval: Duration,
}

#[async_trait]
impl BackgroundService for Resolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !self.pool.backends.iter().any(|b| b.needs_dns()) {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            let pool = self.pool.clone();
            // getaddrinfo blocks: keep it off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || pool.resolve_all()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_rotate_exactly() {
        assert_eq!(smooth_rotation(&[1, 1, 1]), vec![0, 1, 2]);
    }

    #[test]
    fn weights_are_spread_out() {
        assert_eq!(smooth_rotation(&[3, 1]), vec![0, 0, 1, 0]);
        let r = smooth_rotation(&[5, 1, 1]);
        assert_eq!(r.len(), 7);
        assert_eq!(r.iter().filter(|&&i| i == 0).count(), 5);
        assert_ne!(
            &r[..5],
            &[0, 0, 0, 0, 0],
            "heavy backend not bunched: {r:?}"
        );
    }

    fn pool(backends: &[(u8, u16)]) -> Pool {
        let mut yaml = String::from("listen: [\"127.0.0.1:1\"]\nauth: {kind: none}\nbackends:\n");
        for (i, (priority, weight)) in backends.iter().enumerate() {
            yaml.push_str(&format!(
                "  - {{url: \"http://127.0.0.1:{}\", priority: {priority}, weight: {weight}}}\n",
                1000 + i
            ));
        }
        Pool::new(&Config::from_yaml(&yaml).unwrap()).unwrap()
    }

    #[test]
    fn a_plan_visits_every_backend_before_repeating() {
        let p = pool(&[(0, 1), (0, 1), (0, 1)]);
        let mut plan = p.plan();
        let order: Vec<_> = (0..5).map(|_| plan.next(|_| true).unwrap()).collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1]);
        // The next request starts one further along.
        assert_eq!(p.plan().next(|_| true), Some(1));
    }

    #[test]
    fn a_plan_skips_unusable_backends() {
        let p = pool(&[(0, 1), (0, 1), (0, 1)]);
        let mut plan = p.plan();
        let order: Vec<_> = (0..3).map(|_| plan.next(|i| i != 1).unwrap()).collect();
        assert_eq!(order, vec![0, 2, 0]);
        assert_eq!(p.plan().next(|_| false), None);
    }

    #[test]
    fn a_throttled_answer_cools_the_deployment_for_as_long_as_allowed() {
        use std::time::Instant;
        let p = pool(&[(0, 1), (0, 1)]);
        let cooldown = CooldownPolicy {
            default: Duration::from_secs(10),
            max: Duration::from_secs(3600),
        };
        let eject_at_once = EjectionPolicy {
            failures: 1,
            ..Default::default()
        };
        let mut asks_two_hours = http::HeaderMap::new();
        asks_two_hours.insert("retry-after", "7200".parse().unwrap());
        let b = p.get(0);
        b.observe(
            Outcome::Status(429),
            Some(&asks_two_hours),
            Some("gpt-4o"),
            &cooldown,
            &eject_at_once,
        );
        let left = b
            .health
            .cooling_left(Some("gpt-4o"), Instant::now())
            .unwrap();
        assert!(
            left <= Duration::from_secs(3600) && left > Duration::from_secs(3590),
            "capped by cooldown.max: {left:?}"
        );
        assert!(
            !b.health.is_ejected(Instant::now()),
            "a 429 shows the backend alive"
        );
        // A 503 with nothing usable: the default cooldown, and it counts towards ejection.
        let b = p.get(1);
        b.observe(
            Outcome::Status(503),
            Some(&http::HeaderMap::new()),
            None,
            &cooldown,
            &eject_at_once,
        );
        let left = b.health.cooling_left(None, Instant::now()).unwrap();
        assert!(
            left <= Duration::from_secs(10) && left > Duration::from_secs(9),
            "{left:?}"
        );
        assert!(b.health.is_ejected(Instant::now()));
    }

    #[test]
    fn lower_priority_groups_go_first_and_spill_in_order() {
        let p = pool(&[(1, 1), (0, 1), (0, 1), (2, 1)]);
        let mut plan = p.plan();
        let order: Vec<_> = (0..4).map(|_| plan.next(|_| true).unwrap()).collect();
        assert_eq!(order, vec![1, 2, 0, 3]);
        // The first group unusable: the second takes the traffic, round robin within itself.
        let firsts: Vec<_> = (0..2)
            .map(|_| p.plan().next(|i| i == 0 || i == 3).unwrap())
            .collect();
        assert_eq!(firsts, vec![0, 0]);
        // An unused group's rotation did not move.
        let firsts: Vec<_> = (0..2).map(|_| p.plan().next(|_| true).unwrap()).collect();
        assert_eq!(firsts, vec![2, 1]);
    }
}
