//! The answers the proxy makes itself, in Azure OpenAI's error shape:
//! `{"error":{"code":"...","message":"..."}}` with `Content-Type: application/json`.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::balance::Unavailable;
use crate::limits::{Limit, Refused};
use crate::retry::Failure;

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
    /// The client spent its `requests_per_minute` or `tokens_per_minute`.
    ClientLimit(Refused),
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
            ProxyError::DeploymentNotAllowed { .. } => 403,
            ProxyError::ClientLimit(_) => 429,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        let (code, message) = match self {
            ProxyError::Unauthorized => (
                "401",
                "Access denied: a valid key is required in the api-key header or as Authorization: Bearer.".to_string(),
            ),
            ProxyError::HeadersTooLarge { limit } => (
                "RequestHeaderFieldsTooLarge",
                format!("The request headers are larger than the proxy's limit of {limit} bytes."),
            ),
            ProxyError::BodyTooLarge { limit } => (
                "RequestEntityTooLarge",
                format!("The request body is larger than the proxy's limit of {limit} bytes."),
            ),
            ProxyError::BadRequestBody => (
                "BadRequest",
                "The request body could not be read.".to_string(),
            ),
            ProxyError::BodyTimeout(limit) => (
                "RequestTimeout",
                format!(
                    "The request body did not arrive within {} seconds.",
                    limit.as_secs_f64()
                ),
            ),
            ProxyError::BadPath => (
                "BadRequest",
                "The request path has a `.` or `..` segment, or an encoded `/` or `\\`: the proxy does not forward it.".to_string(),
            ),
            ProxyError::AmbiguousDeployment => (
                "BadRequest",
                "Name the deployment once: `deployment=` on /openai/realtime, `model=` on /openai/v1/realtime.".to_string(),
            ),
            ProxyError::PathNotForwarded => ("404", "Resource not found.".to_string()),
            ProxyError::NoToken => (
                "ServiceUnavailable",
                "The proxy has no valid Entra ID token for Azure OpenAI: the token endpoint has not given one. Try again shortly.".to_string(),
            ),
            ProxyError::NoClientKeys => (
                "ServiceUnavailable",
                "The proxy cannot check Entra ID tokens yet: the tenant's signing keys have not been fetched. Try again shortly.".to_string(),
            ),
            ProxyError::Upstream { status, detail } => (
                if *status == 504 { "GatewayTimeout" } else { "BadGateway" },
                detail.clone(),
            ),
            ProxyError::AllCooling { deployment, left } => (
                "429",
                format!(
                    "Every backend{} is throttled. Please retry after {} seconds.",
                    deployment.as_ref().map(|d| format!(" for deployment {d}")).unwrap_or_default(),
                    retry_after_secs(*left)
                ),
            ),
            ProxyError::DeploymentNotFound { deployment } => (
                "DeploymentNotFound",
                format!("No backend serves the deployment {deployment:?}."),
            ),
            ProxyError::DeploymentNotAllowed { client, deployment } => (
                "PermissionDenied",
                format!("The client {client:?} may not use the deployment {deployment:?}."),
            ),
            ProxyError::ClientLimit(r) => (
                "429",
                format!(
                    "Requests to this proxy have exceeded the client's {} per minute limit. Please retry after {} seconds.",
                    match r.limit {
                        Limit::Requests => "requests",
                        Limit::Tokens => "tokens",
                    },
                    retry_after_secs(r.retry_after)
                ),
            ),
        };
        serde_json::json!({"error": {"code": code, "message": message}}).to_string()
    }

    /// Writes this error to the client as a complete response.
    pub async fn respond(&self, session: &mut Session) -> pingora::Result<()> {
        self.respond_with(session, &[]).await
    }

    /// Writes this error to the client with these `headers` too.
    pub async fn respond_with(
        &self,
        session: &mut Session,
        headers: &[(&'static str, String)],
    ) -> pingora::Result<()> {
        let body = Bytes::from(self.body());
        let mut resp = ResponseHeader::build(self.status(), Some(4 + headers.len()))?;
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
            ProxyError::ClientLimit(r) => {
                retry_after(&mut resp, r.retry_after)?;
                super::headers::set_remaining(&mut resp, r.remaining_requests, r.remaining_tokens)?;
            }
            _ => {}
        }
        for (name, value) in headers {
            resp.insert_header(*name, value)?;
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }
}

/// Milliseconds for `retry-after-ms`, rounded up so a client never comes back too early.
fn retry_after_ms(left: std::time::Duration) -> u128 {
    left.as_nanos().div_ceil(1_000_000).max(1)
}

/// Whole seconds for `retry-after`, rounded up so a client never comes back too early.
fn retry_after_secs(left: std::time::Duration) -> u64 {
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
