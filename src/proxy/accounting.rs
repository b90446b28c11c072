//! [`Accounting`]: usage, limits, quotas and cost. Whether a client may use the deployment its
//! request names (`deployments`), has quota and budget left in the period (`token_quota`,
//! `budget`), and requests and tokens left in the minute (`requests_per_minute`,
//! `tokens_per_minute`), charging it an estimate; settling that estimate with what the backend
//! reported when the answer ends, and counting what it cost (`prices`); and whether streams are
//! asked for their usage (`usage.include_in_streams`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::answers::ProxyError;
use crate::clients::limits::{Admitted, LimitStore};
use crate::clients::quota::{Charged, QuotaStore, Spend};
use crate::clients::Client;
use crate::config::Price;
use crate::metrics::Metrics;
use crate::request::Request;
use crate::state::unix_now;
use crate::usage::{cost, Usage};

/// Where clients' counts are kept, the prices, and the usage option.
pub struct Accounting {
    pub limits: Arc<dyn LimitStore>,
    pub quotas: Arc<dyn QuotaStore>,
    /// `prices`, by deployment.
    pub prices: BTreeMap<String, Price>,
    /// `usage.include_in_streams`.
    pub ask_streams_for_usage: bool,
}

/// What a request was let in with: its place in its client's minute windows, and what its
/// quota and budget were charged.
#[derive(Clone, Copy, Debug, Default)]
pub struct LetIn {
    pub limits: Option<Admitted>,
    pub charged: Option<Charged>,
}

/// How a request ended, for its settling: the deployment that answered (a fallback's, or the
/// one asked for), the status the client got, and the tokens the backend reported.
pub struct Ended<'a> {
    pub deployment: Option<&'a str>,
    pub status: Option<u16>,
    pub usage: Option<Usage>,
}

impl Accounting {
    /// Lets `client`'s `request` in: its deployment is one the client may use, it has quota and
    /// budget left in the period, and requests and tokens in the minute, each charged at once
    /// (on an estimate).
    pub async fn admit(
        &self,
        client: Option<&Client>,
        request: &Request,
    ) -> Result<LetIn, ProxyError> {
        let Some(client) = client else {
            return Ok(LetIn::default());
        };
        let limits = &client.limits;
        self.may_use(client, request.deployment())?;
        if limits.deployments.is_some() && request.model_unreadable() {
            return Err(ProxyError::ModelUnreadable {
                client: client.name.clone(),
            });
        }
        let charged = match limits.counts_spend() {
            true => {
                let estimate = self.estimate(request);
                let charged = self
                    .quotas
                    .charge(&client.name, limits, estimate, unix_now())
                    .await;
                Some(charged.map_err(|over| ProxyError::OverQuota {
                    client: client.name.clone(),
                    over,
                })?)
            }
            false => None,
        };
        if limits.requests_per_minute.is_none() && limits.tokens_per_minute.is_none() {
            return Ok(LetIn {
                limits: None,
                charged,
            });
        }
        let estimate = match limits.tokens_per_minute {
            Some(_) => request.estimate_tokens(),
            None => 0,
        };
        let now = Instant::now();
        match self.limits.admit(&client.name, limits, estimate, now).await {
            Ok(admitted) => Ok(LetIn {
                limits: Some(admitted),
                charged,
            }),
            Err(refused) => {
                // Kept out after all: it spends nothing of the period's quota.
                if let Some(charged) = &charged {
                    let (name, spent) = (&client.name, Spend::default());
                    self.quotas.settle(name, limits, charged, spent, unix_now());
                }
                Err(ProxyError::ClientLimit(refused))
            }
        }
    }

    /// Whether `client` may use `deployment` (its `deployments`, when it has them).
    pub fn may_use(&self, client: &Client, deployment: Option<&str>) -> Result<(), ProxyError> {
        let allowed = client.limits.deployments.as_ref();
        match deployment.filter(|d| allowed.is_some_and(|a| !a.contains(*d))) {
            Some(d) => Err(ProxyError::DeploymentNotAllowed {
                client: client.name.clone(),
                deployment: d.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// What `request` is expected to spend: its token estimate, and that at its deployment's
    /// prices (the prompt at the input price, the completion cap at the output price).
    fn estimate(&self, request: &Request) -> Spend {
        let (prompt, completion) = request.estimate_parts();
        let price = request.deployment().and_then(|d| self.prices.get(d));
        let usage = Usage {
            prompt,
            completion,
            ..Usage::default()
        };
        Spend {
            tokens: prompt.saturating_add(completion),
            nanos: price.map_or(0, |p| cost::nanos(cost::usd(p, &usage))),
        }
    }

    /// Settles what `client`'s request was charged (`let_in`) with what it spent: what the
    /// backend reported; nothing for an answer that is not a success; the estimate for a
    /// success that reported nothing. Counts its cost in `metrics`, and says it (in US dollars,
    /// where the deployment has a price and the backend reported usage).
    pub fn settle(
        &self,
        client: Option<&Client>,
        let_in: &LetIn,
        ended: Ended,
        metrics: &Metrics,
    ) -> Option<f64> {
        let price = ended
            .deployment
            .and_then(|d| Some((d, self.prices.get(d)?)));
        let usd = match (price, &ended.usage) {
            (Some((deployment, price)), Some(usage)) => {
                let usd = cost::usd(price, usage);
                let name = client.map_or(crate::config::NO_CLIENT, |c| c.name.as_str());
                metrics.record_cost(name, deployment, usd);
                Some(usd)
            }
            _ => None,
        };
        let Some(client) = client else {
            return usd;
        };
        let success = matches!(ended.status, Some(200..=299));
        if let Some(admitted) = &let_in.limits {
            let spent = match (ended.usage, success) {
                (Some(u), _) => u.prompt.saturating_add(u.completion),
                (None, true) => admitted.estimate,
                (None, false) => 0,
            };
            self.limits
                .settle(&client.name, admitted, spent, Instant::now());
        }
        if let Some(charged) = &let_in.charged {
            let spent = match (ended.usage, success) {
                (Some(u), _) => Spend {
                    tokens: u.prompt.saturating_add(u.completion),
                    nanos: usd.map_or(0, cost::nanos),
                },
                (None, true) => charged.estimate,
                (None, false) => Spend::default(),
            };
            let limits = &client.limits;
            self.quotas
                .settle(&client.name, limits, charged, spent, unix_now());
        }
        usd
    }
}
