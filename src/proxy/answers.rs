//! The answers the proxy makes itself, in Azure OpenAI's error shape:
//! `{"error":{"code":"...","message":"..."}}` with `Content-Type: application/json`.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::headers::Told;
use crate::balance::Unavailable;
use crate::clients::limits::{Limit, Refused};
use crate::clients::quota::{Kind, OverQuota};
use crate::config::NANOS_PER_USD;
use crate::outcome::Failure;

/// An answer made by the proxy rather than a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// `clients` is configured and the request has no valid key.
    Unauthorized,
    /// The request headers are larger than `limits.max_header_bytes`.
    HeadersTooLarge { limit: usize },
    /// The request body is larger than `limits.max_body_bytes`.
    BodyTooLarge { limit: u64 },
    /// The client sent a body that could not be read.
    BadRequestBody,
    /// The client's body did not arrive within `timeouts.client_body`.
    BodyTimeout(std::time::Duration),
    /// The request path could climb out of the forwarded prefixes (`..`, an encoded `/`).
    BadPath,
    /// A Realtime upgrade that names its deployment twice, or under the other path's parameter.
    AmbiguousDeployment,
    /// The request path is not under a forwarded prefix (`paths`).
    PathNotForwarded,
    /// No Entra ID token is available (not fetched yet, or expired during an outage).
    NoToken,
    /// A client presented an Entra ID token before the tenant's signing keys were fetched.
    NoClientKeys,
    /// The last try got no response header.
    Upstream { status: u16, detail: String },
    /// Every backend that serves the deployment is cooling after a 429/503.
    AllCooling {
        deployment: Option<String>,
        left: std::time::Duration,
    },
    /// No backend serves this deployment (every backend has a `deployments` map without it).
    DeploymentNotFound { deployment: String },
    /// The client's `deployments` does not list the deployment.
    DeploymentNotAllowed { client: String, deployment: String },
    /// The client has `deployments`, and the body's `model` cannot be read (given twice, or a
    /// form): a backend might find another deployment in it than the proxy would check.
    ModelUnreadable { client: String },
    /// The client spent its `requests_per_minute` or `tokens_per_minute`.
    ClientLimit(Refused),
    /// The client spent its `token_quota` or `budget` for the period.
    OverQuota { client: String, over: OverQuota },
}

impl ProxyError {
    /// The answer when a request's last try got no response header, after `tries` tries that
    /// ended on backend `backend`.
    pub fn gave_up(f: Failure, backend: &str, tries: u32) -> ProxyError {
        let what = match f {
            Failure::Connect => "could not connect to",
            Failure::Tls => "could not establish TLS with",
            Failure::Timeout => "timed out waiting for",
            Failure::Dropped => "lost the connection to",
        };
        ProxyError::Upstream {
            status: f.status(),
            detail: format!(
                "The proxy {what} the Azure OpenAI backend {backend:?} after {tries} tries."
            ),
        }
    }

    /// Why no backend can take a request for `deployment`, as the client is told.
    pub fn unavailable(why: Unavailable, deployment: Option<&str>) -> ProxyError {
        match why {
            Unavailable::UnknownDeployment => ProxyError::DeploymentNotFound {
                deployment: deployment.unwrap_or_default().to_string(),
            },
            Unavailable::NoToken => ProxyError::NoToken,
            Unavailable::Cooling { shortest } => ProxyError::AllCooling {
                deployment: deployment.map(str::to_string),
                left: shortest,
            },
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::Unauthorized => 401,
            ProxyError::HeadersTooLarge { .. } => 431,
            ProxyError::BodyTooLarge { .. } => 413,
            ProxyError::BadRequestBody | ProxyError::BadPath | ProxyError::AmbiguousDeployment => {
                400
            }
            ProxyError::BodyTimeout(_) => 408,
            ProxyError::PathNotForwarded => 404,
            ProxyError::NoToken | ProxyError::NoClientKeys => 503,
            ProxyError::Upstream { status, .. } => *status,
            ProxyError::AllCooling { .. } => 429,
            ProxyError::DeploymentNotFound { .. } => 404,
            ProxyError::DeploymentNotAllowed { .. }
            | ProxyError::ModelUnreadable { .. }
            | ProxyError::OverQuota { .. } => 403,
            ProxyError::ClientLimit(_) => 429,
        }
    }

    /// Azure's error `code`.
    fn code(&self) -> &'static str {
        match self {
            ProxyError::Unauthorized => "401",
            ProxyError::PathNotForwarded => "404",
            ProxyError::HeadersTooLarge { .. } => "RequestHeaderFieldsTooLarge",
            ProxyError::BodyTooLarge { .. } => "RequestEntityTooLarge",
            ProxyError::BadRequestBody | ProxyError::BadPath | ProxyError::AmbiguousDeployment => {
                "BadRequest"
            }
            ProxyError::BodyTimeout(_) => "RequestTimeout",
            ProxyError::NoToken | ProxyError::NoClientKeys => "ServiceUnavailable",
            ProxyError::Upstream { status: 504, .. } => "GatewayTimeout",
            ProxyError::Upstream { .. } => "BadGateway",
            ProxyError::AllCooling { .. } | ProxyError::ClientLimit(_) => "429",
            ProxyError::DeploymentNotFound { .. } => "DeploymentNotFound",
            ProxyError::DeploymentNotAllowed { .. } | ProxyError::ModelUnreadable { .. } => {
                "PermissionDenied"
            }
            ProxyError::OverQuota { over, .. } => match over.kind {
                Kind::Tokens => "TokenQuotaExceeded",
                Kind::Usd => "BudgetExceeded",
            },
        }
    }

    /// What the client is told.
    fn message(&self) -> String {
        match self {
            ProxyError::Unauthorized => "Access denied: a valid key is required in the api-key header or as Authorization: Bearer.".into(),
            ProxyError::HeadersTooLarge { limit } => format!("The request headers are larger than the proxy's limit of {limit} bytes."),
            ProxyError::BodyTooLarge { limit } => format!("The request body is larger than the proxy's limit of {limit} bytes."),
            ProxyError::BadRequestBody => "The request body could not be read.".into(),
            ProxyError::BodyTimeout(limit) => format!("The request body did not arrive within {} seconds.", limit.as_secs_f64()),
            ProxyError::BadPath => "The request path has a `.` or `..` segment, or an encoded `/` or `\\`: the proxy does not forward it.".into(),
            ProxyError::AmbiguousDeployment => "Name the deployment once: `deployment=` on /openai/realtime, `model=` on /openai/v1/realtime.".into(),
            ProxyError::PathNotForwarded => "Resource not found.".into(),
            ProxyError::NoToken => "The proxy has no valid Entra ID token for Azure OpenAI: the token endpoint has not given one. Try again shortly.".into(),
            ProxyError::NoClientKeys => "The proxy cannot check Entra ID tokens yet: the tenant's signing keys have not been fetched. Try again shortly.".into(),
            ProxyError::Upstream { detail, .. } => detail.clone(),
            ProxyError::AllCooling { deployment, left } => format!(
                "Every backend{} is throttled. Please retry after {} seconds.",
                deployment.as_ref().map(|d| format!(" for deployment {d}")).unwrap_or_default(),
                retry_after_secs(*left)
            ),
            ProxyError::DeploymentNotFound { deployment } => format!("No backend serves the deployment {deployment:?}."),
            ProxyError::DeploymentNotAllowed { client, deployment } => format!("The client {client:?} may not use the deployment {deployment:?}."),
            ProxyError::ModelUnreadable { client } => format!("The client {client:?} may use only some deployments, and the request's model cannot be read: give `model` once, in a JSON body."),
            ProxyError::ClientLimit(r) => format!(
                "Requests to this proxy have exceeded the client's {} per minute limit. Please retry after {} seconds.",
                match r.limit {
                    Limit::Requests => "requests",
                    Limit::Tokens => "tokens",
                },
                retry_after_secs(r.retry_after)
            ),
            ProxyError::OverQuota { client, over } => over_quota(client, over),
        }
    }

    /// The JSON body, in Azure's shape.
    pub fn body(&self) -> String {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(serde::Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: &'a str,
        }
        let message = self.message();
        let error = Inner {
            code: self.code(),
            message: &message,
        };
        serde_json::to_string(&Body { error }).unwrap_or_default()
    }

    /// Writes this error to the client as a complete response.
    pub async fn respond(&self, session: &mut Session) -> pingora::Result<()> {
        self.respond_to(session, Told::default()).await
    }

    /// Writes this error to a client, with what it is `told` on every answer.
    pub async fn respond_to(&self, session: &mut Session, told: Told<'_>) -> pingora::Result<()> {
        let body = Bytes::from(self.body());
        let mut resp = ResponseHeader::build(self.status(), Some(6))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        let retry_after = |resp: &mut ResponseHeader, left| -> pingora::Result<()> {
            resp.insert_header("retry-after", retry_after_secs(left).to_string())?;
            resp.insert_header("retry-after-ms", retry_after_ms(left).to_string())
        };
        match self {
            ProxyError::NoToken | ProxyError::NoClientKeys => {
                resp.insert_header("retry-after", "1")?
            }
            ProxyError::AllCooling { left, .. } => retry_after(&mut resp, *left)?,
            ProxyError::OverQuota { over, .. } => retry_after(&mut resp, over.resets_in)?,
            ProxyError::ClientLimit(r) => {
                retry_after(&mut resp, r.retry_after)?;
                super::headers::set_remaining(&mut resp, r.remaining_requests, r.remaining_tokens)?;
            }
            _ => {}
        }
        told.put_on(&mut resp)?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }
}

/// What a client over its token quota or budget is told: which, how much is used, and when
/// the period starts again.
fn over_quota(client: &str, over: &OverQuota) -> String {
    let (limit, per) = (over.allowance.limit, over.allowance.per);
    let what = match over.kind {
        Kind::Tokens => format!(
            "has used its token quota of {limit} tokens per {per} ({} used)",
            over.used
        ),
        Kind::Usd => format!(
            "has spent its budget of ${:.2} per {per} (${:.2} spent)",
            limit as f64 / NANOS_PER_USD,
            over.used as f64 / NANOS_PER_USD
        ),
    };
    let at = i64::try_from(over.resets_at)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(String::new, |t| format!(" at {t}"));
    format!(
        "The client {client:?} {what}. It resets{at}, in {} seconds.",
        retry_after_secs(over.resets_in)
    )
}

/// Milliseconds for `retry-after-ms`, rounded up so a client never comes back too early.
pub(super) fn retry_after_ms(left: std::time::Duration) -> u128 {
    left.as_nanos().div_ceil(1_000_000).max(1)
}

/// Whole seconds for `retry-after`, rounded up so a client never comes back too early.
pub(super) fn retry_after_secs(left: std::time::Duration) -> u64 {
    left.as_secs() + u64::from(left.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_up() {
        use std::time::Duration;
        assert_eq!(retry_after_ms(Duration::from_micros(1_500_300)), 1501);
        assert_eq!(retry_after_ms(Duration::from_millis(2000)), 2000);
        assert_eq!(retry_after_ms(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
    }

    #[test]
    fn bodies_have_azures_error_shape() {
        for e in [
            ProxyError::Unauthorized,
            ProxyError::HeadersTooLarge { limit: 10 },
            ProxyError::BodyTooLarge { limit: 10 },
            ProxyError::NoToken,
            ProxyError::Upstream {
                status: 504,
                detail: "x".into(),
            },
        ] {
            let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
            assert!(v["error"]["code"].is_string(), "{e:?}");
            assert!(v["error"]["message"].is_string(), "{e:?}");
        }
    }
}
