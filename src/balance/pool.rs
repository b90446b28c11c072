//! [`Pool`]: the backends, their priority groups and each group's [`Rotation`], and the
//! policies that say how a try's outcome changes a backend's standing.

use std::sync::Arc;

use http::HeaderMap;
use pingora::tls::x509::X509;

use super::backend::{Backend, BackendError, PeerTemplate};
use super::capacity::Report;
use super::rotation::Rotation;
use super::standing::StandingChange;
use crate::config::{Config, CooldownPolicy, CredentialKind, EjectionPolicy, Strategy};
use crate::outcome::Outcome;

/// The backends and their rotation.
pub struct Pool {
    pub(super) backends: Box<[Arc<Backend>]>,
    /// Priority groups' rotations, lowest priority first.
    pub(super) groups: Box<[Rotation]>,
    /// For each backend, the index of its group.
    pub(super) group_of: Box<[usize]>,
    cooldown: CooldownPolicy,
    ejection: EjectionPolicy,
    /// `balance.strategy`.
    pub(super) strategy: Strategy,
}

impl Pool {
    /// Builds the pool from the configuration, without any network (host names resolve in
    /// [`super::Resolver`]). `ca` is the trust store for upstream TLS when
    /// `upstream_tls.ca_file` adds to the system roots.
    pub fn new(config: &Config, ca: Option<Arc<Box<[X509]>>>) -> Result<Self, BackendError> {
        Pool::replacing(config, ca, None)
    }

    /// The pool of a reloaded `config`, replacing `previous`: a backend of the same name and
    /// URL keeps its state (see [`Backend::new`]).
    pub fn replacing(
        config: &Config,
        ca: Option<Arc<Box<[X509]>>>,
        previous: Option<&Pool>,
    ) -> Result<Self, BackendError> {
        let template = PeerTemplate {
            connect_timeout: config.timeouts.connect,
            pool_idle: config.timeouts.pool_idle,
            ca,
        };
        let uses_tokens = config.auth.credential != CredentialKind::None;
        let backends = config
            .backends
            .iter()
            .map(|b| {
                let before = previous.and_then(|p| p.backends.iter().find(|o| o.name == b.name));
                Backend::new(b, uses_tokens, template.clone(), before.map(|o| &**o)).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut priorities: Vec<u8> = config.backends.iter().map(|b| b.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let group_of: Box<[usize]> = config
            .backends
            .iter()
            .map(|b| priorities.partition_point(|&p| p < b.priority))
            .collect();
        let groups = (0..priorities.len())
            .map(|g| {
                let members: Vec<usize> =
                    (0..backends.len()).filter(|&i| group_of[i] == g).collect();
                let weights: Vec<u16> =
                    members.iter().map(|&i| config.backends[i].weight).collect();
                Rotation::new(&members, &weights)
            })
            .collect();
        Ok(Pool {
            backends: backends.into(),
            groups,
            group_of,
            cooldown: config.cooldown.clone(),
            ejection: config.ejection.clone(),
            strategy: config.strategy,
        })
    }

    /// The backends in configuration order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// The backend at `index`.
    pub fn get(&self, index: usize) -> &Arc<Backend> {
        &self.backends[index]
    }

    /// Whether any backend is called with the proxy's Entra ID token (else no token is fetched).
    pub fn needs_token(&self) -> bool {
        self.backends.iter().any(|b| b.needs_token())
    }

    /// Takes in what a try on backend `index` produced, with the response headers when it
    /// answered (see [`super::standing::BackendStanding::observe`]).
    pub fn observe(
        &self,
        index: usize,
        outcome: Outcome,
        headers: Option<&HeaderMap>,
        deployment: Option<&str>,
    ) -> Option<StandingChange> {
        self.backends[index].standing.observe(
            outcome,
            headers,
            deployment,
            &self.cooldown,
            &self.ejection,
        )
    }
}

impl Pool {
    /// `balance.strategy`.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// With `balance.strategy: headroom`, takes in what an answer of backend `index` for
    /// `deployment`, to a request sent at `sent_at`, said of the quota it has left; the report
    /// when it is time to share it with the other replicas. The default strategy keeps nothing.
    pub fn remember(
        &self,
        index: usize,
        headers: &HeaderMap,
        deployment: Option<&str>,
        sent_at: std::time::Instant,
    ) -> Option<Report> {
        if self.strategy != Strategy::Headroom {
            return None;
        }
        let report = Report::read(headers)?;
        let capacity = &self.backends[index].capacity;
        capacity
            .report(deployment, &report, sent_at, std::time::Instant::now())
            .then_some(report)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A pool of backends on 127.0.0.1 with these (priority, weight) pairs and `extra` YAML.
    pub(crate) fn pool_with(backends: &[(u8, u16)], extra: &str) -> Pool {
        let mut yaml = format!("listen: [\"127.0.0.1:1\"]\n{extra}backends:\n");
        for (i, (priority, weight)) in backends.iter().enumerate() {
            yaml.push_str(&format!(
                "  - {{url: \"http://127.0.0.1:{}\", priority: {priority}, weight: {weight}}}\n",
                1000 + i
            ));
        }
        Pool::new(&Config::from_yaml(&yaml).unwrap(), None).unwrap()
    }

    /// Such a pool with `auth.kind: none`.
    pub(crate) fn pool(backends: &[(u8, u16)]) -> Pool {
        pool_with(backends, "auth: {kind: none}\n")
    }

    #[test]
    fn groups_follow_priority() {
        let p = pool(&[(5, 1), (0, 1), (5, 1), (2, 1)]);
        assert_eq!(&*p.group_of, &[2, 0, 2, 1]);
        assert_eq!(p.groups[2].order(), &[0, 2]);
    }

    #[test]
    fn only_backends_without_a_key_need_a_token() {
        let p = pool_with(&[(0, 1)], "auth: {kind: managed_identity}\n");
        assert!(p.needs_token());
        assert!(!pool(&[(0, 1)]).needs_token(), "kind none: no token");
    }
}
