//! What clients may spend and where a request goes when its deployment cannot take it, as
//! validated: `clients[].token_quota` and `clients[].budget` (an amount per period), `prices`
//! (USD per 1M tokens, by deployment) and `fallbacks`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

use super::raw::{Problems, RawBudget, RawFallback, RawPrice, RawTokenQuota};
use super::validate::duplicates;
use super::{is_deployment_name, BackendConfig, ClientKey};

/// When the counts of a quota or a budget start again: a UTC calendar period (weeks start on
/// Monday), or a fixed span counted from the Unix epoch (`per: 10m`; short spans are for tests
/// and demos).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
    Every(Duration),
}

impl std::str::FromStr for Period {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "hour" => Ok(Period::Hour),
            "day" => Ok(Period::Day),
            "week" => Ok(Period::Week),
            "month" => Ok(Period::Month),
            other => match other.parse::<super::values::HumanDuration>() {
                Ok(d) if d.0.as_secs() >= 1 && d.0.subsec_nanos() == 0 => Ok(Period::Every(d.0)),
                _ => Err(format!(
                    "{s:?} is not a period: use hour, day, week or month (UTC), or whole seconds such as 30s or 10m"
                )),
            },
        }
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::values::EnvString::deserialize(d)?
            .0
            .parse()
            .map_err(de::Error::custom)
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Period::Hour => f.write_str("hour"),
            Period::Day => f.write_str("day"),
            Period::Week => f.write_str("week"),
            Period::Month => f.write_str("month"),
            Period::Every(d) => write!(f, "{} s", d.as_secs()),
        }
    }
}

/// An amount a client may spend per period: tokens (`token_quota`), or billionths of a US
/// dollar (`budget`: integers add up exactly, in this process and in Redis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    pub limit: u64,
    pub per: Period,
}

/// Billionths of a dollar in one.
pub const NANOS_PER_USD: f64 = 1e9;

/// The largest budget, in billionths of a dollar (about $4.5M): Redis's Lua counts exactly to
/// 2^53, and a count may go past its budget by a request's cost.
pub const MAX_BUDGET_NANOS: u64 = 1 << 52;

/// A deployment's prices, in USD per 1M tokens (so: millionths of a dollar per token).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Prompt tokens served from the prompt cache; `input` when not given.
    pub cached_input: f64,
}

/// Why a request may go to a fallback deployment (`fallbacks[].on`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackCause {
    /// No backend could serve it: the throttling 429, or its tries spent on failures.
    Unavailable,
    /// A backend answered 400 with code `context_length_exceeded`.
    ContextLengthExceeded,
    /// A backend answered 400 with code `content_filter` (a filtered prompt).
    ContentFilter,
}

impl FallbackCause {
    pub const ALL: [FallbackCause; 3] = [
        FallbackCause::Unavailable,
        FallbackCause::ContextLengthExceeded,
        FallbackCause::ContentFilter,
    ];

    /// Its name in the file, the metrics and the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackCause::Unavailable => "unavailable",
            FallbackCause::ContextLengthExceeded => "context_length_exceeded",
            FallbackCause::ContentFilter => "content_filter",
        }
    }
}

/// Where the requests for one deployment go when it cannot take them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fallback {
    /// Tried in order.
    pub to: Vec<String>,
    pub on: BTreeSet<FallbackCause>,
}

pub(super) fn token_quota(key: &str, raw: RawTokenQuota, p: &mut Problems) -> Allowance {
    if raw.tokens == 0 {
        p.add(
            format!("{key}.token_quota.tokens"),
            "must be at least 1 (leave token_quota out for no quota)",
        );
    }
    Allowance {
        limit: raw.tokens,
        per: raw.per,
    }
}

pub(super) fn budget(key: &str, raw: RawBudget, p: &mut Problems) -> Allowance {
    let nanos = raw.usd * NANOS_PER_USD;
    if !(raw.usd > 0.0 && nanos <= MAX_BUDGET_NANOS as f64) {
        p.add(
            format!("{key}.budget.usd"),
            "must be more than 0 and at most 4,500,000 (leave budget out for no budget)",
        );
    }
    Allowance {
        limit: nanos.round().max(0.0) as u64,
        per: raw.per,
    }
}

pub(super) fn prices(raw: BTreeMap<String, RawPrice>, p: &mut Problems) -> BTreeMap<String, Price> {
    let mut prices = BTreeMap::new();
    for (deployment, price) in raw {
        let key = format!("prices.{deployment}");
        if !is_deployment_name(&deployment) {
            p.add(&key, "is not a deployment name");
        }
        let fine = |v: f64| v.is_finite() && (0.0..=1e6).contains(&v);
        let cached_input = price.cached_input.unwrap_or(price.input);
        for (name, v) in [
            ("input", price.input),
            ("output", price.output),
            ("cached_input", cached_input),
        ] {
            if !fine(v) {
                p.add(
                    format!("{key}.{name}"),
                    "must be a number of US dollars per 1M tokens, from 0 to 1000000",
                );
            }
        }
        let price = Price {
            input: price.input,
            output: price.output,
            cached_input,
        };
        prices.insert(deployment, price);
    }
    prices
}

pub(super) fn fallbacks(raw: Vec<RawFallback>, p: &mut Problems) -> BTreeMap<String, Fallback> {
    let mut fallbacks = BTreeMap::new();
    for name in duplicates(raw.iter().map(|f| f.deployment.0.as_str())) {
        p.add(
            "fallbacks",
            format!("two entries are for deployment {name:?}: give it one list `to`"),
        );
    }
    for (i, f) in raw.into_iter().enumerate() {
        let key = format!("fallbacks[{i}]");
        let from = f.deployment.0;
        if !is_deployment_name(&from) {
            p.add(format!("{key}.deployment"), "give a deployment name");
        }
        let to: Vec<String> = f.to.into_iter().map(|t| t.0).collect();
        if to.is_empty() {
            p.add(
                format!("{key}.to"),
                "give at least one deployment to fall back to",
            );
        }
        for t in &to {
            if !is_deployment_name(t) || *t == from {
                p.add(
                    format!("{key}.to"),
                    format!("{t:?} is not another deployment's name"),
                );
            }
        }
        for t in duplicates(to.iter().map(String::as_str)) {
            p.add(format!("{key}.to"), format!("{t:?} is listed twice"));
        }
        let on: BTreeSet<_> = match f.on {
            Some(on) if on.is_empty() => {
                p.add(
                    format!("{key}.on"),
                    "give at least one cause, or leave `on` out for all three",
                );
                BTreeSet::new()
            }
            Some(on) => on.into_iter().collect(),
            None => FallbackCause::ALL.into_iter().collect(),
        };
        fallbacks.insert(from, Fallback { to, on });
    }
    fallbacks
}

/// A client with a budget must have a price for every deployment it may use: its own
/// `deployments`, or, without them, every deployment the backends list (a backend that lists
/// none serves any name, which no table of prices covers).
pub(super) fn budgets_are_priced(
    clients: &[ClientKey],
    backends: &[BackendConfig],
    prices: &BTreeMap<String, Price>,
    p: &mut Problems,
) {
    for (i, c) in clients.iter().enumerate() {
        if c.limits.budget.is_none() {
            continue;
        }
        let key = format!("clients[{i}].budget");
        let usable: BTreeSet<&str> = match &c.limits.deployments {
            Some(allowed) => allowed.iter().map(String::as_str).collect(),
            None if backends.iter().any(|b| b.deployments.is_none()) => {
                p.add(
                    key,
                    "the client may use any deployment, and a backend without `deployments` serves any name: give the client `deployments` (each with a price in `prices`)",
                );
                continue;
            }
            None => backends
                .iter()
                .flat_map(|b| b.deployments.iter().flatten().map(|(d, _)| d.as_str()))
                .collect(),
        };
        let unpriced: Vec<&str> = usable
            .into_iter()
            .filter(|d| !prices.contains_key(*d))
            .collect();
        if !unpriced.is_empty() {
            p.add(
                key,
                format!(
                    "needs a price for every deployment the client may use; none in `prices` for {}",
                    unpriced.join(", ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests;
