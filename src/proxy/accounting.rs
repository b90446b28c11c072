//! [`Accounting`]: usage and limits. Whether a client may use the deployment its request names
//! (`deployments`) and has requests and tokens left (`requests_per_minute`,
//! `tokens_per_minute`), admitting it on an estimate; settling that estimate with what the
//! backend reported when the answer ends; and whether streams are asked for their usage
//! (`usage.include_in_streams`).

use std::sync::Arc;
use std::time::Instant;

use super::answers::ProxyError;
use crate::clients::limits::{Admitted, LimitStore};
use crate::clients::Client;
use crate::request::Request;
use crate::usage::Usage;

/// Where clients' limit windows are kept, and the usage option.
pub struct Accounting {
    pub limits: Arc<dyn LimitStore>,
    /// `usage.include_in_streams`.
    pub ask_streams_for_usage: bool,
}

impl Accounting {
    /// Lets `client`'s `request` in: its deployment is one the client may use, and it has
    /// requests and tokens left, counted at once (the tokens on an estimate). What it has left,
    /// when it has limits.
    pub async fn admit(
        &self,
        client: Option<&Client>,
        request: &Request,
    ) -> Result<Option<Admitted>, ProxyError> {
        let Some(client) = client else {
            return Ok(None);
        };
        let limits = &client.limits;
        if let Some(allowed) = &limits.deployments {
            if let Some(d) = request.deployment().filter(|d| !allowed.contains(*d)) {
                return Err(ProxyError::DeploymentNotAllowed {
                    client: client.name.clone(),
                    deployment: d.to_string(),
                });
            }
            if request.model_unreadable() {
                return Err(ProxyError::ModelUnreadable {
                    client: client.name.clone(),
                });
            }
        }
        if limits.requests_per_minute.is_none() && limits.tokens_per_minute.is_none() {
            return Ok(None);
        }
        let estimate = match limits.tokens_per_minute {
            Some(_) => request.estimate_tokens(),
            None => 0,
        };
        let now = Instant::now();
        match self.limits.admit(&client.name, limits, estimate, now).await {
            Ok(admitted) => Ok(Some(admitted)),
            Err(refused) => Err(ProxyError::ClientLimit(refused)),
        }
    }

    /// Replaces the estimate of a request `admitted` for `client` with what it spent: what the
    /// backend reported (`usage`); nothing for an answer that is not a success (`status`); the
    /// estimate for a success that reported nothing.
    pub fn settle(
        &self,
        client: &Client,
        admitted: &Admitted,
        usage: Option<Usage>,
        status: Option<u16>,
    ) {
        let spent = match (usage, status) {
            (Some(u), _) => u.prompt.saturating_add(u.completion),
            (None, Some(200..=299)) => admitted.estimate,
            (None, _) => 0,
        };
        self.limits
            .settle(&client.name, admitted, spent, Instant::now());
    }
}
