//! `backends` as validated: each backend's name, weight, priority, deployment names and
//! active health check.

use std::collections::BTreeMap;
use std::time::Duration;

use super::raw::{Problems, RawBackend, RawCheckKind, RawHealthCheck};
use super::validate::{duplicates, duration};
use super::values::EnvString;
use super::{BackendConfig, HealthCheck, HealthCheckKind};

pub(super) fn backends(raw: Vec<RawBackend>, p: &mut Problems) -> Vec<BackendConfig> {
    if raw.is_empty() {
        p.add("backends", "give at least one backend");
    }
    let backends: Vec<BackendConfig> = raw
        .into_iter()
        .enumerate()
        .map(|(i, b)| backend(&format!("backends[{i}]"), b, p))
        .collect();
    for name in duplicates(backends.iter().map(|b| b.name.as_str())) {
        p.add(
            "backends",
            format!("two backends are named {name:?}: give each a distinct `name`"),
        );
    }
    backends
}

fn backend(key: &str, b: RawBackend, p: &mut Problems) -> BackendConfig {
    let weight = b.weight.unwrap_or(BackendConfig::DEFAULT_WEIGHT);
    if weight == 0 {
        p.add(format!("{key}.weight"), "must be at least 1");
    }
    BackendConfig {
        name: b.name.map_or_else(|| b.url.authority(), |n| n.0),
        url: b.url,
        weight: weight.max(1),
        api_key: b.api_key.map(|k| k.0),
        priority: b.priority.unwrap_or(BackendConfig::DEFAULT_PRIORITY),
        deployments: b
            .deployments
            .map(|map| deployments(&format!("{key}.deployments"), map, p)),
        health_check: b
            .health_check
            .map(|h| health_check(&format!("{key}.health_check"), h, p)),
    }
}

/// Whether `name` can be an Azure OpenAI deployment's: letters, digits, `-`, `_` and `.`,
/// beginning with a letter or digit, at most 64 characters. (The metrics' sentinels, `-` and
/// `(other)`, cannot be one.)
pub fn is_deployment_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn deployments(
    key: &str,
    map: BTreeMap<String, EnvString>,
    p: &mut Problems,
) -> BTreeMap<String, String> {
    if map.is_empty() {
        p.add(
            key,
            "an empty map would serve nothing: remove it to serve every deployment",
        );
    }
    map.into_iter()
        .map(|(from, EnvString(to))| {
            for name in [&from, &to] {
                if !is_deployment_name(name) {
                    p.add(
                        format!("{key}.{from}"),
                        format!(
                            "{name:?} is not a deployment name (letters, digits, - _ ., \
                             beginning with a letter or digit, at most 64)"
                        ),
                    );
                }
            }
            (from, to)
        })
        .collect()
}

fn health_check(key: &str, h: RawHealthCheck, p: &mut Problems) -> HealthCheck {
    let interval = duration(
        p,
        &format!("{key}.interval"),
        h.interval,
        HealthCheck::DEFAULT_INTERVAL,
        Duration::from_millis(100)..=Duration::MAX,
    );
    let kind = match (h.kind, h.path) {
        (RawCheckKind::Tcp, None) => HealthCheckKind::Tcp,
        (RawCheckKind::Tcp, Some(_)) => {
            p.add(format!("{key}.path"), "is used only with kind http");
            HealthCheckKind::Tcp
        }
        (RawCheckKind::Http, path) => {
            let path = path.map_or_else(|| HealthCheck::DEFAULT_PATH.to_string(), |p| p.0);
            if !path.starts_with('/') {
                p.add(format!("{key}.path"), "must start with /");
            }
            HealthCheckKind::Http { path }
        }
    };
    HealthCheck { kind, interval }
}
