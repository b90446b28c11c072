//! The quota backends say they have left, shared by replicas (`balance.strategy: headroom`):
//! a replica publishes what a backend's answer said on `{prefix}:capacity`, at most every
//! [`crate::balance::capacity::SHARE_EVERY`] per backend and deployment, and every replica
//! subscribed takes it in as if that backend had answered it. Nothing is kept: a level is
//! only worth what it says now, and the next answer says it again.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::SharedState;
use crate::balance::{Pool, Report};

/// A report on the wire, as JSON, with short names like the cooldowns' messages.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) struct Message {
    /// The replica that saw it, which skips its own messages.
    #[serde(rename = "r")]
    pub replica: String,
    #[serde(rename = "b")]
    pub backend: String,
    #[serde(rename = "d", default)]
    pub deployment: Option<String>,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(rename = "q", default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(rename = "lt", default, skip_serializing_if = "Option::is_none")]
    pub token_limit: Option<u64>,
    #[serde(rename = "lq", default, skip_serializing_if = "Option::is_none")]
    pub request_limit: Option<u64>,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
}

impl Message {
    pub(crate) fn new(
        replica: &str,
        backend: &str,
        deployment: Option<String>,
        r: &Report,
    ) -> Message {
        Message {
            replica: replica.to_string(),
            backend: backend.to_string(),
            deployment,
            tokens: r.tokens,
            requests: r.requests,
            token_limit: r.token_limit,
            request_limit: r.request_limit,
            utilization: r.utilization,
        }
    }

    /// Takes it in: the backend of that name remembers the report for the deployment. `false`
    /// when no backend here has that name.
    pub(crate) fn apply(&self, pool: &Pool) -> bool {
        let Some(index) = pool.index_of(&self.backend) else {
            return false;
        };
        let report = Report {
            tokens: self.tokens,
            requests: self.requests,
            token_limit: self.token_limit,
            request_limit: self.request_limit,
            utilization: self.utilization,
        };
        let capacity = &pool.get(index).capacity;
        capacity.apply_shared(self.deployment.as_deref(), &report, Instant::now());
        true
    }
}

/// Publishes what `backend` said of `deployment`'s quota.
pub(crate) async fn publish(
    state: &SharedState,
    backend: &str,
    deployment: Option<String>,
    report: &Report,
) -> Option<i64> {
    let m = Message::new(&state.replica, backend, deployment, report);
    let wire = serde_json::to_string(&m).unwrap_or_default();
    state.publish("capacity", wire).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_crosses_the_wire_and_reaches_the_backend_of_that_name() {
        let pool = crate::balance::test_pool(&[(0, 1), (0, 1)]);
        let report = Report {
            tokens: Some(1200),
            requests: Some(7),
            ..Report::default()
        };
        let name = pool.get(1).name.clone();
        let m = Message::new("a", &name, Some("gpt-4o".into()), &report);
        let wire = serde_json::to_string(&m).unwrap();
        assert_eq!(
            wire,
            format!(r#"{{"r":"a","b":"{name}","d":"gpt-4o","t":1200,"q":7}}"#)
        );
        let back: Message = serde_json::from_str(&wire).unwrap();
        assert!(back.apply(&pool));
        let tokens = pool.get(1).capacity.tokens(Some("gpt-4o"), Instant::now());
        assert_eq!(tokens.map(|t| t.0), Some(1200));
        assert_eq!(
            pool.get(0).capacity.tokens(Some("gpt-4o"), Instant::now()),
            None
        );
        let stranger = Message::new("a", "nobody", None, &report);
        assert!(!stranger.apply(&pool));
    }
}
