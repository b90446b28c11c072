//! `aoai_proxy_cost_usd_total{client,deployment}` and `aoai_proxy_fallbacks_total{from,to,cause}`.
//! Their labels come from the configuration (clients, priced deployments, fallbacks), so the
//! series are few; they are kept in maps behind a lock, taken once a request at most.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::proto::MetricFamily;

use super::{Family, Metrics};
use crate::config::{Fallback, FallbackCause};

/// Spend and fallbacks, by label.
#[derive(Default)]
pub(super) struct Spending {
    /// USD, by client, then deployment: looked up by `&str`, so a request whose series
    /// exists allocates nothing.
    cost: Mutex<BTreeMap<String, BTreeMap<String, f64>>>,
    /// By (from, to, cause).
    fallbacks: Mutex<BTreeMap<(String, String, FallbackCause), u64>>,
}

impl Metrics {
    /// Counts `usd` spent by `client` on `deployment`.
    pub fn record_cost(&self, client: &str, deployment: &str, usd: f64) {
        let mut cost = self.spending.cost.lock().unwrap_or_else(|e| e.into_inner());
        let by_deployment = match cost.get_mut(client) {
            Some(by_deployment) => by_deployment,
            None => cost.entry(client.to_string()).or_default(),
        };
        match by_deployment.get_mut(deployment) {
            Some(total) => *total += usd,
            None => _ = by_deployment.insert(deployment.to_string(), usd),
        }
    }

    /// Counts a request for `from` sent on to `to` for `cause`.
    pub fn record_fallback(&self, from: &str, to: &str, cause: FallbackCause) {
        let mut counts = self
            .spending
            .fallbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *counts.entry((from.into(), to.into(), cause)).or_default() += 1;
    }

    /// Gives every fallback a configuration declares its series, at zero until it happens (a
    /// rate over a series that appears only with its first count misses that count).
    pub fn declare_fallbacks(&self, fallbacks: &BTreeMap<String, Fallback>) {
        let mut counts = self
            .spending
            .fallbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (from, f) in fallbacks {
            for (to, cause) in f.to.iter().flat_map(|t| f.on.iter().map(move |c| (t, *c))) {
                counts.entry((from.clone(), to.clone(), cause)).or_default();
            }
        }
    }

    /// The two families.
    pub(super) fn spend_families(&self) -> [MetricFamily; 2] {
        let mut cost = Family::counter(
            "aoai_proxy_cost_usd_total",
            "US dollars spent, by client and deployment: the tokens backends reported, at the deployment's prices.",
        );
        let spent = self.spending.cost.lock().unwrap_or_else(|e| e.into_inner());
        for (client, by_deployment) in spent.iter() {
            for (deployment, usd) in by_deployment {
                cost.add(&[("client", client), ("deployment", deployment)], *usd);
            }
        }
        drop(spent);
        let mut fallbacks = Family::counter(
            "aoai_proxy_fallbacks_total",
            "Requests sent on to a fallback deployment, by the deployment asked for, the one tried next, and why.",
        );
        for ((from, to, cause), n) in self
            .spending
            .fallbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            fallbacks.add(
                &[("from", from), ("to", to), ("cause", cause.as_str())],
                *n as f64,
            );
        }
        [cost.done(), fallbacks.done()]
    }
}
