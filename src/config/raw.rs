//! The configuration file as serde reads it, and its conversion into [`Config`].

use std::num::NonZeroU32;
use std::path::PathBuf;

use serde::Deserialize;

use super::auth::RawAuth;
use super::values::{BackendUrl, ByteSize, EnvString, HumanDuration, ListenAddr, SecretValue};
use super::{
    duplicates, Auth, BackendConfig, ClientKey, Config, CooldownPolicy, CredentialKind,
    EjectionPolicy, HealthCheck, HealthCheckKind, Limits, Problem, ServerSettings, Timeouts,
    TlsListener, DEFAULT_SCOPE,
};

/// Azure OpenAI deployment names: letters, digits, `-`, `_` and `.`.
fn valid_deployment(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    listen: Vec<ListenAddr>,
    tls: Option<RawTls>,
    admin: Option<RawAdmin>,
    upstream_tls: Option<RawUpstreamTls>,
    auth: RawAuth,
    backends: Vec<RawBackend>,
    retry: Option<RawRetry>,
    clients: Option<Vec<RawClient>>,
    timeouts: Option<RawTimeouts>,
    limits: Option<RawLimits>,
    server: Option<RawServer>,
    cooldown: Option<RawCooldown>,
    health: Option<RawHealth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCooldown {
    default: Option<HumanDuration>,
    max: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    failures: Option<u32>,
    ejection: Option<HumanDuration>,
    max_ejection: Option<HumanDuration>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum RawCheckKind {
    Tcp,
    Http,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    kind: RawCheckKind,
    path: Option<EnvString>,
    interval: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    listen: ListenAddr,
    cert: EnvString,
    key: EnvString,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: ListenAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca_file: Option<EnvString>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    url: BackendUrl,
    name: Option<EnvString>,
    weight: Option<u16>,
    api_key: Option<SecretValue>,
    priority: Option<u8>,
    deployments: Option<std::collections::BTreeMap<String, EnvString>>,
    health_check: Option<RawHealthCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_tries: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: EnvString,
    key: SecretValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<HumanDuration>,
    response_header: Option<HumanDuration>,
    body_idle: Option<HumanDuration>,
    pool_idle: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body_bytes: Option<ByteSize>,
    max_header_bytes: Option<ByteSize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    threads: Option<usize>,
    grace_period: Option<HumanDuration>,
}

/// Reads the document, reporting the first serde error with its key path and line.
pub(super) fn parse(text: &str) -> Result<RawConfig, Vec<Problem>> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_yaml appends " at line L column C"; the line is reported separately.
        let mut message = inner.to_string();
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        // It may also prefix part of the path; ours is the complete one.
        if let Some((prefix, rest)) = message.split_once(": ") {
            if path.starts_with(prefix) {
                message = rest.to_string();
            }
        }
        let key = path
            .rsplit(['.', ']'])
            .find(|s| !s.is_empty() && !s.starts_with('['));
        let line = inner.location().map(|l| key_line(text, l.line(), key));
        let path = if path == "." { String::new() } else { path };
        vec![Problem {
            path,
            line,
            message,
        }]
    })
}

/// serde_yaml reports a value's error at the start of the mapping holding it: look from there
/// for the line that holds `key` itself.
fn key_line(text: &str, from: usize, key: Option<&str>) -> usize {
    let Some(key) = key else { return from };
    let pattern = format!("{key}:");
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .take(64)
        .find(|(_, l)| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&pattern)
                || l.contains(&format!("{{{pattern}"))
                || l.contains(&format!(" {pattern}"))
        })
        .map_or(from, |(i, _)| i + 1)
}

/// Collects problems that need more than one value to see.
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }
}

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, Vec<Problem>> {
        let mut p = Problems(Vec::new());

        if self.listen.is_empty() {
            p.add("listen", "give at least one \"host:port\" to listen on");
        }
        if self.backends.is_empty() {
            p.add("backends", "give at least one backend");
        }

        let backends: Vec<BackendConfig> = self
            .backends
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                let weight = b.weight.unwrap_or(1);
                if weight == 0 {
                    p.add(format!("backends[{i}].weight"), "must be at least 1");
                }
                let deployments = b.deployments.map(|map| {
                    if map.is_empty() {
                        p.add(format!("backends[{i}].deployments"), "an empty map would serve nothing: remove it to serve every deployment");
                    }
                    map.into_iter()
                        .map(|(from, to)| {
                            for name in [&from, &to.0] {
                                if !valid_deployment(name) {
                                    p.add(format!("backends[{i}].deployments.{from}"), format!("{name:?} is not a deployment name (letters, digits, - _ .)"));
                                }
                            }
                            (from, to.0)
                        })
                        .collect()
                });
                let health_check = b.health_check.map(|h| {
                    let interval = h.interval.map_or(std::time::Duration::from_secs(10), |d| d.0);
                    if interval < std::time::Duration::from_millis(100) {
                        p.add(format!("backends[{i}].health_check.interval"), "must be at least 100ms");
                    }
                    let kind = match (h.kind, h.path) {
                        (RawCheckKind::Tcp, None) => HealthCheckKind::Tcp,
                        (RawCheckKind::Tcp, Some(_)) => {
                            p.add(format!("backends[{i}].health_check.path"), "is used only with kind http");
                            HealthCheckKind::Tcp
                        }
                        (RawCheckKind::Http, path) => {
                            let path = path.map_or_else(|| "/".to_string(), |p| p.0);
                            if !path.starts_with('/') {
                                p.add(format!("backends[{i}].health_check.path"), "must start with /");
                            }
                            HealthCheckKind::Http { path }
                        }
                    };
                    HealthCheck { kind, interval }
                });
                BackendConfig {
                    name: b.name.map(|n| n.0).unwrap_or_else(|| b.url.authority()),
                    url: b.url,
                    weight: weight.max(1),
                    api_key: b.api_key.map(|k| k.0),
                    priority: b.priority.unwrap_or(0),
                    deployments,
                    health_check,
                }
            })
            .collect();
        for name in duplicates(backends.iter().map(|b| b.name.as_str())) {
            p.add(
                "backends",
                format!("two backends are named {name:?}: give each a distinct `name`"),
            );
        }

        let max_tries = self.retry.and_then(|r| r.max_tries).unwrap_or(3);
        let max_tries = NonZeroU32::new(max_tries).unwrap_or_else(|| {
            p.add(
                "retry.max_tries",
                "must be at least 1 (the first try counts)",
            );
            NonZeroU32::MIN
        });

        let clients = self.clients.map(|list| {
            if list.is_empty() {
                p.add(
                    "clients",
                    "an empty list would refuse every request: remove `clients` to let everyone in, or add a key",
                );
            }
            let keys: Vec<ClientKey> = list
                .into_iter()
                .map(|c| ClientKey {
                    name: c.name.0,
                    key: c.key.0,
                })
                .collect();
            for name in duplicates(keys.iter().map(|c| c.name.as_str())) {
                p.add("clients", format!("two clients are named {name:?}"));
            }
            keys
        });

        let credential = self.auth.credential(&mut p);
        let refresh_before = self
            .auth
            .refresh_before
            .map_or(std::time::Duration::from_secs(600), |d| d.0);
        if refresh_before < std::time::Duration::from_secs(1)
            || refresh_before > std::time::Duration::from_secs(12 * 3600)
        {
            p.add("auth.refresh_before", "must be between 1s and 12h");
        }
        let uses_token = backends.iter().any(|b| b.api_key.is_none());
        if credential == CredentialKind::None && uses_token {
            log::debug!("auth.kind none: backends without api_key get no credentials");
        }

        let d = Timeouts::default();
        let timeouts = match self.timeouts {
            None => d,
            Some(t) => Timeouts {
                connect: t.connect.map_or(d.connect, |v| v.0),
                response_header: t.response_header.map_or(d.response_header, |v| v.0),
                body_idle: t.body_idle.map_or(d.body_idle, |v| v.0),
                pool_idle: t.pool_idle.map_or(d.pool_idle, |v| v.0),
            },
        };
        let hour = std::time::Duration::from_secs(3600);
        for (key, v, max) in [
            ("timeouts.connect", timeouts.connect, hour / 6),
            (
                "timeouts.response_header",
                timeouts.response_header,
                hour * 24,
            ),
            ("timeouts.body_idle", timeouts.body_idle, hour * 24),
            ("timeouts.pool_idle", timeouts.pool_idle, hour * 24),
        ] {
            if v.is_zero() && key != "timeouts.pool_idle" {
                p.add(key, "must be more than zero");
            }
            if v > max {
                p.add(key, format!("must be at most {}s", max.as_secs()));
            }
        }

        let d = Limits::default();
        let limits = match self.limits {
            None => d,
            Some(l) => Limits {
                max_body_bytes: l.max_body_bytes.map_or(d.max_body_bytes, |v| v.0),
                max_header_bytes: l
                    .max_header_bytes
                    .map_or(d.max_header_bytes, |v| v.0 as usize),
            },
        };
        if limits.max_header_bytes < 1024 || limits.max_header_bytes > 96 << 10 {
            p.add("limits.max_header_bytes", "must be between 1KiB and 96KiB");
        }
        if limits.max_body_bytes < 1024 || limits.max_body_bytes > 1 << 30 {
            p.add("limits.max_body_bytes", "must be between 1KiB and 1GiB");
        }

        let threads = self
            .server
            .as_ref()
            .and_then(|s| s.threads)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 {
            p.add("server.threads", "must be at least 1");
        }
        let grace_period = self
            .server
            .and_then(|s| s.grace_period)
            .map_or(std::time::Duration::from_secs(60), |g| g.0);

        let mut addresses: Vec<(&str, &str)> = self
            .listen
            .iter()
            .map(|l| ("listen", l.0.as_str()))
            .collect();
        addresses.extend(
            self.tls
                .as_ref()
                .map(|t| ("tls.listen", t.listen.0.as_str())),
        );
        addresses.extend(
            self.admin
                .as_ref()
                .map(|a| ("admin.listen", a.listen.0.as_str())),
        );
        for addr in duplicates(addresses.iter().map(|(_, a)| *a)) {
            let keys: Vec<&str> = addresses
                .iter()
                .filter(|(_, a)| *a == addr)
                .map(|(k, _)| *k)
                .collect();
            p.add(
                keys[0],
                format!("{addr} is given more than once ({})", keys.join(", ")),
            );
        }

        let dc = CooldownPolicy::default();
        let cooldown = CooldownPolicy {
            default: self
                .cooldown
                .as_ref()
                .and_then(|c| c.default)
                .map_or(dc.default, |d| d.0),
            max: self
                .cooldown
                .as_ref()
                .and_then(|c| c.max)
                .map_or(dc.max, |d| d.0),
        };
        if cooldown.default.is_zero() || cooldown.default > cooldown.max {
            p.add(
                "cooldown.default",
                "must be more than zero and at most cooldown.max",
            );
        }
        if cooldown.max > std::time::Duration::from_secs(7 * 24 * 3600) {
            p.add("cooldown.max", "must be at most 7 days");
        }
        let de = EjectionPolicy::default();
        let ejection = EjectionPolicy {
            failures: self
                .health
                .as_ref()
                .and_then(|h| h.failures)
                .unwrap_or(de.failures),
            base: self
                .health
                .as_ref()
                .and_then(|h| h.ejection)
                .map_or(de.base, |d| d.0),
            max: self
                .health
                .as_ref()
                .and_then(|h| h.max_ejection)
                .map_or(de.max, |d| d.0),
        };
        if ejection.failures == 0 {
            p.add("health.failures", "must be at least 1");
        }
        if ejection.base.is_zero() || ejection.base > ejection.max {
            p.add(
                "health.ejection",
                "must be more than zero and at most health.max_ejection",
            );
        }
        if ejection.max > std::time::Duration::from_secs(24 * 3600) {
            p.add("health.max_ejection", "must be at most 1 day");
        }

        if !p.0.is_empty() {
            return Err(p.0);
        }
        Ok(Config {
            listen: self.listen.into_iter().map(|l| l.0).collect(),
            tls: self.tls.map(|t| TlsListener {
                listen: t.listen.0,
                cert: PathBuf::from(t.cert.0),
                key: PathBuf::from(t.key.0),
            }),
            admin: self.admin.map(|a| a.listen.0),
            upstream_ca_file: self
                .upstream_tls
                .and_then(|u| u.ca_file)
                .map(|f| PathBuf::from(f.0)),
            auth: Auth {
                credential,
                scope: self
                    .auth
                    .scope
                    .map_or_else(|| DEFAULT_SCOPE.to_string(), |s| s.0),
                refresh_before,
            },
            backends,
            max_tries,
            clients,
            timeouts,
            limits,
            server: ServerSettings {
                threads: threads.max(1),
                grace_period,
            },
            cooldown,
            ejection,
        })
    }
}
