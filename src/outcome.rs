//! What a try produced: a response header with its [`Outcome`], or a [`Failure`] to get one; an
//! answer read to its end ([`WholeAnswer`]); and what the try was sent with ([`Sent`]). The
//! balancer, the retry policies, the metrics and the access log all read these.

use bytes::Bytes;
use http::StatusCode;
use pingora::http::ResponseHeader;

/// Why a try produced no response header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// TCP connect failed (refused, unreachable, name not resolved).
    Connect,
    /// The TLS handshake failed (including an untrusted certificate).
    Tls,
    /// The connect, TLS handshake or response header took longer than its timeout.
    Timeout,
    /// The connection dropped before a complete response header.
    Dropped,
}

impl Failure {
    /// The status the client gets when this was the last try: 504 for a timeout, else 502.
    pub fn status(self) -> u16 {
        match self {
            Failure::Timeout => 504,
            Failure::Connect | Failure::Tls | Failure::Dropped => 502,
        }
    }

    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Tls => "tls",
            Failure::Timeout => "timeout",
            Failure::Dropped => "dropped",
        }
    }
}

/// What one try produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response header with this status.
    Status(StatusCode),
    /// No response header.
    Failed(Failure),
}

impl Outcome {
    /// Whether the try failed: no answer, or Azure's throttling and server-side errors.
    pub fn is_failure(self) -> bool {
        match self {
            Outcome::Status(s) => matches!(s.as_u16(), 408 | 429 | 500 | 502 | 503 | 504),
            Outcome::Failed(_) => true,
        }
    }

    /// Whether the backend answered 2xx.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Status(s) if s.is_success())
    }

    /// Whether the backend throttled it: a 429.
    pub fn is_throttled(self) -> bool {
        self == Outcome::Status(StatusCode::TOO_MANY_REQUESTS)
    }

    /// Whether it is a 401 to the proxy's own Entra ID token, sent as `sent`.
    pub fn refuses_token(self, sent: Sent) -> bool {
        self == Outcome::Status(StatusCode::UNAUTHORIZED) && sent == Sent::EntraToken
    }
}

/// What proved the try to its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// The proxy's Entra ID token.
    EntraToken,
    /// The backend's own `api-key`.
    ApiKey,
    /// Nothing (`auth.kind: none` and no `api_key`).
    Nothing,
}

/// An answer read to its end: its header and body.
#[derive(Debug)]
pub struct WholeAnswer {
    pub head: Box<ResponseHeader>,
    pub body: Bytes,
}

impl WholeAnswer {
    /// Whether it says the object it was asked for is not on this backend: a 404, or a 400
    /// with code `previous_response_not_found` (the Responses API's).
    pub fn is_not_found(&self) -> bool {
        match self.head.status.as_u16() {
            404 => true,
            400 => {
                #[derive(serde::Deserialize)]
                struct Body {
                    error: Inner,
                }
                #[derive(serde::Deserialize)]
                struct Inner {
                    code: Option<String>,
                }
                serde_json::from_slice::<Body>(&self.body)
                    .is_ok_and(|b| b.error.code.as_deref() == Some("previous_response_not_found"))
            }
            _ => false,
        }
    }

    /// A `200` JSON answer of `body`.
    pub fn json(body: Vec<u8>) -> pingora::Result<WholeAnswer> {
        let mut head = ResponseHeader::build(200, Some(2))?;
        head.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        head.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        Ok(WholeAnswer {
            head: Box::new(head),
            body: Bytes::from(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_give_up_with_their_status() {
        assert_eq!(Failure::Timeout.status(), 504);
        assert_eq!(Failure::Connect.status(), 502);
        assert_eq!(Failure::Tls.status(), 502);
        assert_eq!(Failure::Dropped.status(), 502);
    }

    #[test]
    fn only_a_401_to_the_proxys_token_refuses_it() {
        let s = Outcome::Status(StatusCode::UNAUTHORIZED);
        assert!(s.refuses_token(Sent::EntraToken));
        assert!(!s.refuses_token(Sent::ApiKey));
        assert!(!Outcome::Status(StatusCode::FORBIDDEN).refuses_token(Sent::EntraToken));
    }

    #[test]
    fn not_found_is_a_404_or_the_responses_apis_400() {
        let whole = |status: u16, body: &str| WholeAnswer {
            head: Box::new(ResponseHeader::build(status, None).unwrap()),
            body: Bytes::from(body.to_string()),
        };
        assert!(whole(404, "").is_not_found());
        assert!(whole(400, r#"{"error":{"code":"previous_response_not_found"}}"#).is_not_found());
        assert!(!whole(400, r#"{"error":{"code":"invalid_value"}}"#).is_not_found());
        assert!(!whole(429, "").is_not_found());
    }
}
