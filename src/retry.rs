//! The retry policy: what follows a try, decided in one place by [`decide`], a pure function of
//! the request's state and what the try produced. The try loop (`proxy::tries`) carries its
//! verdict out and decides nothing of its own.
//!
//! The rules, as the README states them:
//! - a try fails on a connection or TLS error, a connection lost before a response header, no
//!   response header in time, or 408, 429, 500, 502, 503 or 504; anything else is the answer;
//! - a failed try goes to the next backend the balancer offers, at most `retry.max_tries` tries
//!   in all; with none left, or no backend left, the client gets this try's result;
//! - a 401 to the proxy's own Entra ID token is retried once, on the same backend, with a
//!   fresh token.

use http::StatusCode;

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

/// The request's state, as far as retrying goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tries {
    /// Tries made, the one just made included.
    pub made: u32,
    /// `retry.max_tries`.
    pub max: u32,
    /// What the try just made was sent with.
    pub sent: Sent,
    /// Whether this request already had its one fresh token after a 401.
    pub token_refreshed: bool,
}

/// What follows a try. `P` is what the balancer offers for the next try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<P> {
    /// The client gets what this try produced: its answer as it was, or, when it got none,
    /// 502 (504 after a timeout) in Azure's error shape.
    Deliver,
    /// Send the request again, to this backend.
    Retry(P),
    /// The backend refused the proxy's token (401): send the request again to the same backend
    /// with a fresh token. If no fresh token comes in time, or that backend no longer accepts
    /// the request, the client gets this answer.
    RetryWithFreshToken,
}

/// Decides what follows a try that produced `outcome`. `next` asks the balancer for the backend
/// of another try; it is called only when the policy wants one.
pub fn decide<P>(tries: Tries, outcome: Outcome, next: impl FnOnce() -> Option<P>) -> Verdict<P> {
    if tries.made >= tries.max {
        return Verdict::Deliver;
    }
    let refused_token =
        outcome == Outcome::Status(StatusCode::UNAUTHORIZED) && tries.sent == Sent::EntraToken;
    if refused_token && !tries.token_refreshed {
        return Verdict::RetryWithFreshToken;
    }
    if !outcome.is_failure() {
        return Verdict::Deliver;
    }
    next().map_or(Verdict::Deliver, Verdict::Retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    const THROTTLED: [u16; 6] = [408, 429, 500, 502, 503, 504];
    const FAILURES: [Failure; 4] = [
        Failure::Connect,
        Failure::Tls,
        Failure::Timeout,
        Failure::Dropped,
    ];

    fn status(s: u16) -> Outcome {
        Outcome::Status(StatusCode::from_u16(s).unwrap())
    }

    fn tries(made: u32, max: u32) -> Tries {
        Tries {
            made,
            max,
            sent: Sent::EntraToken,
            token_refreshed: false,
        }
    }

    /// A balancer that must not be asked.
    fn never() -> Option<&'static str> {
        panic!("the balancer was asked for a backend the policy does not need")
    }

    #[test]
    fn failed_tries_go_to_the_next_backend_while_tries_remain() {
        for s in THROTTLED {
            assert_eq!(
                decide(tries(1, 3), status(s), || Some("b")),
                Verdict::Retry("b"),
                "{s}"
            );
            assert_eq!(
                decide(tries(2, 3), status(s), || Some("c")),
                Verdict::Retry("c"),
                "{s}"
            );
        }
        for f in FAILURES {
            let v = decide(tries(1, 3), Outcome::Failed(f), || Some("b"));
            assert_eq!(v, Verdict::Retry("b"), "{f:?}");
        }
    }

    #[test]
    fn the_last_try_is_delivered_whatever_it_is() {
        for s in THROTTLED.into_iter().chain([200, 401]) {
            assert_eq!(
                decide(tries(3, 3), status(s), never),
                Verdict::Deliver,
                "{s}"
            );
        }
        for f in FAILURES {
            assert_eq!(
                decide(tries(3, 3), Outcome::Failed(f), never),
                Verdict::Deliver
            );
        }
    }

    #[test]
    fn one_try_means_no_retry() {
        assert_eq!(decide(tries(1, 1), status(429), never), Verdict::Deliver);
        assert_eq!(
            decide(tries(1, 1), Outcome::Failed(Failure::Connect), never),
            Verdict::Deliver
        );
        assert_eq!(decide(tries(1, 1), status(401), never), Verdict::Deliver);
    }

    #[test]
    fn with_no_backend_left_the_client_gets_this_try() {
        assert_eq!(
            decide(tries(1, 3), status(429), || None::<&str>),
            Verdict::Deliver
        );
        assert_eq!(
            decide(tries(1, 3), Outcome::Failed(Failure::Timeout), || None::<
                &str,
            >),
            Verdict::Deliver
        );
    }

    #[test]
    fn other_statuses_are_delivered_at_once() {
        for s in [200, 201, 204, 301, 400, 403, 404, 409, 413, 422, 501, 505] {
            assert_eq!(
                decide(tries(1, 3), status(s), never),
                Verdict::Deliver,
                "{s}"
            );
        }
    }

    #[test]
    fn a_refused_token_is_retried_once_on_the_same_backend() {
        assert_eq!(
            decide(tries(1, 3), status(401), never),
            Verdict::RetryWithFreshToken
        );
        let refreshed = Tries {
            token_refreshed: true,
            ..tries(2, 3)
        };
        assert_eq!(decide(refreshed, status(401), never), Verdict::Deliver);
    }

    #[test]
    fn a_401_without_the_proxys_token_is_the_clients() {
        for sent in [Sent::ApiKey, Sent::Nothing] {
            let t = Tries {
                sent,
                ..tries(1, 3)
            };
            assert_eq!(decide(t, status(401), never), Verdict::Deliver, "{sent:?}");
        }
    }

    #[test]
    fn failures_give_up_with_their_status() {
        assert_eq!(Failure::Timeout.status(), 504);
        assert_eq!(Failure::Connect.status(), 502);
        assert_eq!(Failure::Tls.status(), 502);
        assert_eq!(Failure::Dropped.status(), 502);
    }
}
