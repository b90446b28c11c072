//! From [`RawConfig`] to [`Config`]: one small validator a section. Each fills in the defaults
//! named beside the validated types, and reports every problem it finds with its key path, so a
//! file with three mistakes gets three answers at once.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{
    Problems, RawAdmin, RawConfig, RawCooldown, RawHealth, RawLimits, RawRetry, RawServer,
    RawTimeouts, RawTls,
};
use super::values::{EnvString, HumanDuration, ListenAddr};
use super::RedisSettings;
use super::Secret;
use super::{backends, clients, spend};
use super::{
    Config, CooldownPolicy, EjectionPolicy, Problem, ServerSettings, Sizes, Timeouts, TlsListener,
    Waiting,
};

const HOUR: Duration = Duration::from_secs(3600);
/// The least duration that is more than zero.
const POSITIVE: Duration = Duration::from_nanos(1);
pub(super) const DAY: Duration = Duration::from_secs(24 * 3600);

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, Vec<Problem>> {
        let mut p = Problems(Vec::new());
        listeners_are_distinct(&self.listen, self.tls.as_ref(), self.admin.as_ref(), &mut p);
        if self.listen.is_empty() {
            p.add("listen", "give at least one \"host:port\" to listen on");
        }
        clients::client_auth_is_whole(self.clients.as_deref(), self.client_auth.as_ref(), &mut p);
        let prices = spend::prices(self.prices.unwrap_or_default(), &mut p);
        let fallbacks = spend::fallbacks(self.fallbacks.unwrap_or_default(), &mut p);
        let backends = backends::backends(self.backends, &mut p);
        let config = Config {
            cache: self
                .cache
                .map(|c| super::cache::cache(c, &backends, &mut p)),
            backends,
            max_tries: max_tries(self.retry.as_ref(), &mut p),
            waiting: waiting(self.retry.as_ref(), &mut p),
            strategy: self.balance.and_then(|b| b.strategy).unwrap_or_default(),
            entra_clients: self
                .client_auth
                .and_then(|a| a.entra)
                .map(|e| clients::entra_clients(e, &mut p)),
            clients: self.clients.map(|c| clients::clients(c, &mut p)),
            auth: self.auth.validate(&mut p),
            timeouts: timeouts(self.timeouts, &mut p),
            sizes: sizes(self.limits, &mut p),
            server: server(self.server, &mut p),
            cooldown: cooldown(self.cooldown, &mut p),
            ejection: ejection(self.health, &mut p),
            paths: paths(self.paths, &mut p),
            include_stream_usage: self
                .usage
                .and_then(|u| u.include_in_streams)
                .unwrap_or(false),
            log_format: self.log.and_then(|l| l.format).unwrap_or_default(),
            redis: self.state.and_then(|s| s.redis).map(|r| redis(r, &mut p)),
            objects_remembered: self
                .objects
                .and_then(|o| o.remember)
                .unwrap_or(Config::DEFAULT_OBJECTS_REMEMBERED),
            listen: self.listen.into_iter().map(|l| l.0).collect(),
            tls: self.tls.map(tls),
            admin: self.admin.map(|a| a.listen.0),
            upstream_ca_file: self
                .upstream_tls
                .and_then(|u| u.ca_file)
                .map(|f| PathBuf::from(f.0)),
            prices,
            fallbacks,
            telemetry: self
                .telemetry
                .map(|t| super::telemetry::telemetry(t, &mut p)),
        };
        if let Some(clients) = &config.clients {
            spend::budgets_are_priced(clients, &config.backends, &config.prices, &mut p);
        }
        if p.0.is_empty() {
            Ok(config)
        } else {
            Err(p.0)
        }
    }
}

fn tls(t: RawTls) -> TlsListener {
    TlsListener {
        listen: t.listen.0,
        cert: PathBuf::from(t.cert.0),
        key: PathBuf::from(t.key.0),
    }
}

/// One address cannot serve two listeners (but port 0 is a port picked for each).
fn listeners_are_distinct(
    listen: &[ListenAddr],
    tls: Option<&RawTls>,
    admin: Option<&RawAdmin>,
    p: &mut Problems,
) {
    let mut addresses: Vec<(&str, &str)> =
        listen.iter().map(|l| ("listen", l.0.as_str())).collect();
    addresses.extend(tls.map(|t| ("tls.listen", t.listen.0.as_str())));
    addresses.extend(admin.map(|a| ("admin.listen", a.listen.0.as_str())));
    // Each port 0 is a port of its own, picked at start.
    addresses.retain(|(_, a)| !a.ends_with(":0"));
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
}

fn paths(raw: Option<Vec<EnvString>>, p: &mut Problems) -> Vec<String> {
    let Some(list) = raw else {
        return Config::DEFAULT_PATHS.map(String::from).to_vec();
    };
    if list.is_empty() {
        p.add(
            "paths",
            "an empty list would forward nothing: remove it to forward /openai/",
        );
    }
    list.into_iter()
        .enumerate()
        .map(|(i, EnvString(prefix))| {
            let shaped = prefix.starts_with('/') && prefix.ends_with('/');
            let climbs = prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains('%');
            if !shaped || climbs {
                p.add(
                    format!("paths[{i}]"),
                    format!("{prefix:?} is not a path prefix: give one like /openai/ (with both slashes)"),
                );
            }
            prefix
        })
        .collect()
}

fn max_tries(raw: Option<&RawRetry>, p: &mut Problems) -> NonZeroU32 {
    match raw.and_then(|r| r.max_tries) {
        None => Config::DEFAULT_MAX_TRIES,
        Some(n) => NonZeroU32::new(n).unwrap_or_else(|| {
            p.add(
                "retry.max_tries",
                "must be at least 1 (the first try counts)",
            );
            NonZeroU32::MIN
        }),
    }
}

/// `retry.wait_for_capacity` (zero: off) and `retry.max_waiting`.
fn waiting(raw: Option<&RawRetry>, p: &mut Problems) -> Waiting {
    let d = Waiting::default();
    let budget = duration(
        p,
        "retry.wait_for_capacity",
        raw.and_then(|r| r.wait_for_capacity),
        d.budget,
        Duration::ZERO..=Waiting::MAX_BUDGET,
    );
    let max = raw
        .and_then(|r| r.max_waiting)
        .map_or(d.max, |n| n as usize);
    if max == 0 {
        p.add(
            "retry.max_waiting",
            "must be at least 1 (to hold none, leave retry.wait_for_capacity at 0s)",
        );
    }
    Waiting { budget, max }
}

fn timeouts(raw: Option<RawTimeouts>, p: &mut Problems) -> Timeouts {
    let d = Timeouts::default();
    let t = raw.unwrap_or_default();
    let positive = |max| POSITIVE..=max;
    Timeouts {
        connect: duration(
            p,
            "timeouts.connect",
            t.connect,
            d.connect,
            positive(HOUR / 6),
        ),
        response_header: duration(
            p,
            "timeouts.response_header",
            t.response_header,
            d.response_header,
            positive(DAY),
        ),
        body_idle: duration(
            p,
            "timeouts.body_idle",
            t.body_idle,
            d.body_idle,
            positive(DAY),
        ),
        // Zero keeps no idle connection.
        pool_idle: duration(
            p,
            "timeouts.pool_idle",
            t.pool_idle,
            d.pool_idle,
            Duration::ZERO..=DAY,
        ),
        client_body: duration(
            p,
            "timeouts.client_body",
            t.client_body,
            d.client_body,
            positive(HOUR),
        ),
        client_header: duration(
            p,
            "timeouts.client_header",
            t.client_header,
            d.client_header,
            positive(HOUR),
        ),
    }
}

fn sizes(raw: Option<RawLimits>, p: &mut Problems) -> Sizes {
    let d = Sizes::default();
    let l = raw.unwrap_or_default();
    let max_body_bytes = l.max_body_bytes.map_or(d.max_body_bytes, |v| v.0);
    if !(1 << 10..=1 << 30).contains(&max_body_bytes) {
        p.add("limits.max_body_bytes", "must be between 1KiB and 1GiB");
    }
    let max_header_bytes = l
        .max_header_bytes
        .map_or(d.max_header_bytes as u64, |v| v.0);
    if !(1 << 10..=96 << 10).contains(&max_header_bytes) {
        p.add("limits.max_header_bytes", "must be between 1KiB and 96KiB");
    }
    Sizes {
        max_body_bytes,
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
    }
}

fn server(raw: Option<RawServer>, p: &mut Problems) -> ServerSettings {
    let d = ServerSettings::default();
    let s = raw.unwrap_or_default();
    let threads = s.threads.unwrap_or(d.threads);
    if threads == 0 {
        p.add("server.threads", "must be at least 1");
    }
    ServerSettings {
        threads: threads.max(1),
        work_stealing: s.work_stealing.unwrap_or(d.work_stealing),
        grace_period: duration(
            p,
            "server.grace_period",
            s.grace_period,
            d.grace_period,
            Duration::ZERO..=Duration::MAX,
        ),
    }
}

fn cooldown(raw: Option<RawCooldown>, p: &mut Problems) -> CooldownPolicy {
    let d = CooldownPolicy::default();
    let c = raw.unwrap_or_default();
    let max = duration(p, "cooldown.max", c.max, d.max, POSITIVE..=DAY * 7);
    let default = duration(p, "cooldown.default", c.default, d.default, POSITIVE..=max);
    CooldownPolicy { default, max }
}

fn ejection(raw: Option<RawHealth>, p: &mut Problems) -> EjectionPolicy {
    let d = EjectionPolicy::default();
    let h = raw.unwrap_or_default();
    let failures = h.failures.unwrap_or(d.failures);
    if failures == 0 {
        p.add("health.failures", "must be at least 1");
    }
    let max = duration(
        p,
        "health.max_ejection",
        h.max_ejection,
        d.max,
        POSITIVE..=DAY,
    );
    let base = duration(p, "health.ejection", h.ejection, d.base, POSITIVE..=max);
    EjectionPolicy {
        failures,
        base,
        max,
    }
}

/// A duration setting: the file's value or `default`, which must lie in `range`.
pub(super) fn duration(
    p: &mut Problems,
    key: &str,
    value: Option<HumanDuration>,
    default: Duration,
    range: RangeInclusive<Duration>,
) -> Duration {
    let v = value.map_or(default, |v| v.0);
    if !range.contains(&v) {
        let (min, max) = (human(*range.start()), human(*range.end()));
        let message = match *range.start() {
            Duration::ZERO => format!("must be at most {max}"),
            POSITIVE => format!("must be more than zero and at most {max}"),
            _ if *range.end() == Duration::MAX => format!("must be at least {min}"),
            _ => format!("must be between {min} and {max}"),
        };
        p.add(key, message);
    }
    v
}

/// `state.redis`: the URL must parse (its password is never printed), the timeout is short.
fn redis(raw: super::raw::RawRedis, p: &mut Problems) -> RedisSettings {
    if let Err(e) = redis::Client::open(raw.url.0.as_str()) {
        // The crate's message does not repeat the URL.
        p.add(
            "state.redis.url",
            format!("not a Redis URL (redis://, rediss:// or unix://): {e}"),
        );
    }
    let prefix = raw
        .prefix
        .map_or_else(|| RedisSettings::DEFAULT_PREFIX.to_string(), |p| p.0);
    if prefix.is_empty() {
        p.add(
            "state.redis.prefix",
            "give a prefix for the proxy's keys, such as aoai-proxy",
        );
    }
    let ca_file = raw.ca_file.map(|f| PathBuf::from(f.0));
    if ca_file.is_some() && !raw.url.0.starts_with("rediss://") {
        p.add(
            "state.redis.ca_file",
            "a CA is for TLS: give state.redis.url as rediss://",
        );
    }
    RedisSettings {
        ca_file,
        url: Secret::new(raw.url.0),
        timeout: duration(
            p,
            "state.redis.timeout",
            raw.timeout,
            RedisSettings::DEFAULT_TIMEOUT,
            POSITIVE..=Duration::from_secs(5),
        ),
        prefix,
    }
}

/// `d` as the file would write it: `250ms`, `10s`, `5m`, `12h`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (d.subsec_nanos(), s) {
        (0, s) if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        (0, s) if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        (0, s) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

/// Names must be unique: they label logs and metrics.
pub(super) fn duplicates<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    names.filter(|n| !seen.insert(*n)).collect()
}
