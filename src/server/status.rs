//! The `/status` document: each backend's standing, its tries and tokens, the token's expiry,
//! the configuration's age, and the addresses the proxy listens on, as [`Serialize`] types (the
//! names are the contract's; more may be added).

use std::time::{Instant, SystemTime};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::balance::Backend;
use crate::clients::quota::Standing;
use crate::config::NANOS_PER_USD;
use crate::credentials::TokenCache;
use crate::metrics::{Metrics, TokenKind, TryLabel};
use crate::proxy::Gateway;

/// `/status`.
#[derive(Serialize)]
pub struct Status<'a> {
    pub ready: bool,
    pub in_flight: usize,
    /// Requests waiting for capacity now (`retry.wait_for_capacity`).
    pub waiting: usize,
    /// The addresses plain HTTP is served on (a port 0 in the file is the one picked).
    pub listen: &'a [String],
    pub backends: Vec<BackendStatus>,
    /// `None` when no backend takes the proxy's token.
    pub token: Option<TokenStatus>,
    pub config: ConfigStatus,
    /// Each configured client's token quota and budget (`clients`).
    pub clients: Vec<ClientStatus>,
}

/// One client: how much of its token quota and budget it has used in the current period.
#[derive(Serialize)]
pub struct ClientStatus {
    name: String,
    quota: Option<QuotaStatus>,
    budget: Option<BudgetStatus>,
}

#[derive(Serialize)]
struct QuotaStatus {
    used: u64,
    limit: u64,
    resets_in_seconds: u64,
}

#[derive(Serialize)]
struct BudgetStatus {
    used_usd: f64,
    limit_usd: f64,
    resets_in_seconds: u64,
}

impl ClientStatus {
    /// `name`'s status, from its standing in each allowance (by [`Kind`]).
    pub fn of(name: &str, [tokens, usd]: [Option<Standing>; 2]) -> ClientStatus {
        let secs = |s: &Standing| s.resets_in.as_secs() + u64::from(s.resets_in.subsec_nanos() > 0);
        ClientStatus {
            name: name.to_string(),
            quota: tokens.map(|s| QuotaStatus {
                used: s.used,
                limit: s.limit,
                resets_in_seconds: secs(&s),
            }),
            budget: usd.map(|s| BudgetStatus {
                used_usd: s.used as f64 / NANOS_PER_USD,
                limit_usd: s.limit as f64 / NANOS_PER_USD,
                resets_in_seconds: secs(&s),
            }),
        }
    }
}

/// One backend.
#[derive(Serialize)]
pub struct BackendStatus {
    name: String,
    url: String,
    priority: u8,
    weight: u16,
    state: State,
    ejected_seconds_left: Option<f64>,
    probe: Option<Probe>,
    cooling: Vec<Cooling>,
    /// The tokens it said it has left, per deployment (`balance.strategy: headroom` only).
    capacity: Vec<Left>,
    tries: Counts,
    tokens: Counts,
}

/// The tokens a backend said a deployment has left, refilled to now, and its per-minute limit
/// as known.
#[derive(Serialize)]
struct Left {
    deployment: String,
    tokens_left: u64,
    tokens_per_minute: u64,
}

/// Whether a backend takes requests (a cooling backend is `up`, with `cooling` entries).
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum State {
    Up,
    Ejected,
    ProbeDown,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Probe {
    Up,
    Down,
}

/// A deployment cooling on a backend (`*`: the requests that name none).
#[derive(Serialize)]
struct Cooling {
    deployment: String,
    seconds_left: f64,
}

/// Counts by label, as a JSON object in the labels' order.
struct Counts(Vec<(&'static str, u64)>);

impl Serialize for Counts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (label, n) in &self.0 {
            map.serialize_entry(label, n)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
pub struct TokenStatus {
    seconds_left: Option<u64>,
    fetches: u64,
    failed_fetches: u64,
}

#[derive(Serialize)]
pub struct ConfigStatus {
    loaded_at: Option<String>,
    loaded_seconds_ago: u64,
    reloads: Reloads,
}

#[derive(Serialize)]
struct Reloads {
    ok: u64,
    error: u64,
}

impl<'a> Status<'a> {
    /// The status of `gateway` now, `ready` or not, listening on `listen`.
    pub fn of(
        gateway: &Gateway,
        (ready, tokens): (bool, Option<&TokenCache>),
        metrics: &Metrics,
        listen: &'a [String],
    ) -> Status<'a> {
        let now = Instant::now();
        let (ok, error) = metrics.reloads();
        let loaded = gateway.loaded_at();
        Status {
            ready,
            in_flight: metrics.in_flight(),
            waiting: metrics.waiting(),
            listen,
            backends: gateway
                .pool()
                .backends()
                .iter()
                .map(|b| BackendStatus::of(b, now))
                .collect(),
            token: tokens.map(|t| TokenStatus {
                seconds_left: t.expires_in(),
                fetches: t.fetches(),
                failed_fetches: t.failed_fetches(),
            }),
            config: ConfigStatus {
                loaded_at: loaded
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .and_then(|d| jiff::Timestamp::from_second(d.as_secs() as i64).ok())
                    .map(|t| t.to_string()),
                loaded_seconds_ago: SystemTime::now()
                    .duration_since(loaded)
                    .map_or(0, |d| d.as_secs()),
                reloads: Reloads { ok, error },
            },
            clients: Vec::new(),
        }
    }
}

impl BackendStatus {
    fn of(b: &Backend, now: Instant) -> BackendStatus {
        let s = b.standing.snapshot(now);
        let state = match (s.ejected, s.probe_up) {
            (Some(_), _) => State::Ejected,
            (None, Some(false)) => State::ProbeDown,
            _ => State::Up,
        };
        BackendStatus {
            name: b.name.clone(),
            url: b.config.url.to_string(),
            priority: b.config.priority,
            weight: b.config.weight,
            state,
            ejected_seconds_left: s.ejected.map(|d| round(d.as_secs_f64())),
            probe: s
                .probe_up
                .map(|up| if up { Probe::Up } else { Probe::Down }),
            cooling: s
                .cooling
                .iter()
                .map(|(deployment, left)| Cooling {
                    deployment: deployment.as_deref().unwrap_or("*").to_string(),
                    seconds_left: round(left.as_secs_f64()),
                })
                .collect(),
            capacity: (b.capacity.token_levels(now).into_iter())
                .map(|(deployment, left, limit)| Left {
                    deployment: deployment.unwrap_or_else(|| "*".into()),
                    tokens_left: left,
                    tokens_per_minute: limit,
                })
                .collect(),
            tries: Counts(
                (TryLabel::ALL.into_iter().map(TryLabel::as_str))
                    .zip(b.stats.tries())
                    .collect(),
            ),
            tokens: Counts(
                (TokenKind::ALL.into_iter().map(TokenKind::as_str))
                    .zip(b.stats.token_totals())
                    .collect(),
            ),
        }
    }
}

/// Seconds to the millisecond: what an operator reads.
fn round(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_reads_as_the_contract_names_it() {
        let pool = crate::balance::test_pool(&[(0, 1)]);
        let b = pool.get(0);
        b.standing
            .cool(Some("gpt-4o"), std::time::Duration::from_secs(30), "test");
        let v = serde_json::to_value(BackendStatus::of(b, Instant::now())).unwrap();
        assert_eq!(v["state"], "up");
        assert_eq!(v["cooling"][0]["deployment"], "gpt-4o");
        assert!(v["cooling"][0]["seconds_left"].as_f64().unwrap() > 29.0);
        assert_eq!(v["probe"], serde_json::Value::Null);
        let tries: Vec<&String> = v["tries"].as_object().unwrap().keys().collect();
        assert_eq!(tries[..3], ["2xx", "3xx", "4xx"], "in the labels' order");
        assert_eq!(v["tokens"]["prompt"], 0);
        b.standing.set_probe(false);
        let v = serde_json::to_value(BackendStatus::of(b, Instant::now())).unwrap();
        assert_eq!(
            (&v["state"], &v["probe"]),
            (&"probe_down".into(), &"down".into())
        );
    }
}
