//! The configuration file exactly as serde reads it: every key optional where the file may
//! leave it out, unknown keys refused. [`super::validate`] turns it into a [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;

use super::auth::RawAuth;
use super::values::{BackendUrl, ByteSize, EnvString, HumanDuration, ListenAddr, SecretValue};
use super::Problem;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Vec<ListenAddr>,
    pub(super) tls: Option<RawTls>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) upstream_tls: Option<RawUpstreamTls>,
    pub(super) auth: RawAuth,
    pub(super) backends: Vec<RawBackend>,
    pub(super) retry: Option<RawRetry>,
    pub(super) balance: Option<RawBalance>,
    pub(super) clients: Option<Vec<RawClient>>,
    pub(super) client_auth: Option<RawClientAuth>,
    pub(super) timeouts: Option<RawTimeouts>,
    pub(super) limits: Option<RawLimits>,
    pub(super) server: Option<RawServer>,
    pub(super) cooldown: Option<RawCooldown>,
    pub(super) health: Option<RawHealth>,
    pub(super) paths: Option<Vec<EnvString>>,
    pub(super) log: Option<RawLog>,
    pub(super) usage: Option<RawUsage>,
    pub(super) objects: Option<RawObjects>,
    pub(super) state: Option<RawState>,
    pub(super) prices: Option<BTreeMap<String, RawPrice>>,
    pub(super) fallbacks: Option<Vec<RawFallback>>,
    pub(super) telemetry: Option<RawTelemetry>,
    pub(super) cache: Option<RawCache>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub(super) otlp: RawOtlp,
    pub(super) service_name: Option<EnvString>,
    pub(super) resource: Option<BTreeMap<String, EnvString>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOtlp {
    pub(super) endpoint: EnvString,
    pub(super) sample_ratio: Option<f64>,
    pub(super) headers: Option<BTreeMap<String, SecretValue>>,
    pub(super) batch_delay: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) ttl: Option<HumanDuration>,
    pub(super) max_bytes: Option<ByteSize>,
    pub(super) max_entry_bytes: Option<ByteSize>,
    pub(super) scope: Option<super::CacheScope>,
    pub(super) deployments: Option<Vec<EnvString>>,
    pub(super) semantic: Option<RawSemantic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSemantic {
    pub(super) embeddings_deployment: EnvString,
    pub(super) threshold: Option<f64>,
    pub(super) deadline: Option<HumanDuration>,
    pub(super) max_entries: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrice {
    pub(super) input: f64,
    pub(super) output: f64,
    pub(super) cached_input: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFallback {
    pub(super) deployment: EnvString,
    pub(super) to: Vec<EnvString>,
    pub(super) on: Option<Vec<super::FallbackCause>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokenQuota {
    pub(super) tokens: u64,
    pub(super) per: super::Period,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    pub(super) usd: f64,
    pub(super) per: super::Period,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) redis: Option<RawRedis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    pub(super) url: EnvString,
    pub(super) timeout: Option<HumanDuration>,
    pub(super) prefix: Option<EnvString>,
    pub(super) ca_file: Option<EnvString>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObjects {
    pub(super) remember: Option<std::num::NonZeroUsize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUsage {
    pub(super) include_in_streams: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<super::LogFormat>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCooldown {
    pub(super) default: Option<HumanDuration>,
    pub(super) max: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) failures: Option<u32>,
    pub(super) ejection: Option<HumanDuration>,
    pub(super) max_ejection: Option<HumanDuration>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawCheckKind {
    Tcp,
    Http,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    pub(super) kind: RawCheckKind,
    pub(super) path: Option<EnvString>,
    pub(super) interval: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) listen: ListenAddr,
    pub(super) cert: EnvString,
    pub(super) key: EnvString,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: ListenAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    pub(super) ca_file: Option<EnvString>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) url: BackendUrl,
    pub(super) name: Option<EnvString>,
    pub(super) weight: Option<u16>,
    pub(super) api_key: Option<SecretValue>,
    pub(super) priority: Option<u8>,
    pub(super) deployments: Option<BTreeMap<String, EnvString>>,
    pub(super) health_check: Option<RawHealthCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) max_tries: Option<u32>,
    pub(super) wait_for_capacity: Option<HumanDuration>,
    pub(super) max_waiting: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBalance {
    pub(super) strategy: Option<super::Strategy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) name: EnvString,
    pub(super) key: Option<SecretValue>,
    pub(super) key_sha256: Option<EnvString>,
    pub(super) entra_ids: Option<Vec<EnvString>>,
    pub(super) requests_per_minute: Option<u32>,
    pub(super) tokens_per_minute: Option<u64>,
    pub(super) deployments: Option<Vec<EnvString>>,
    pub(super) token_quota: Option<RawTokenQuota>,
    pub(super) budget: Option<RawBudget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientAuth {
    pub(super) entra: Option<RawEntraClients>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntraClients {
    pub(super) tenant: EnvString,
    pub(super) audience: EnvString,
    pub(super) jwks_url: Option<EnvString>,
    pub(super) issuers: Option<Vec<EnvString>>,
    pub(super) refresh: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) connect: Option<HumanDuration>,
    pub(super) response_header: Option<HumanDuration>,
    pub(super) body_idle: Option<HumanDuration>,
    pub(super) pool_idle: Option<HumanDuration>,
    pub(super) client_body: Option<HumanDuration>,
    pub(super) client_header: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_body_bytes: Option<ByteSize>,
    pub(super) max_header_bytes: Option<ByteSize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) threads: Option<usize>,
    pub(super) work_stealing: Option<bool>,
    pub(super) grace_period: Option<HumanDuration>,
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
