//! The retry decision: a pure function of what a try produced and how many tries are spent.

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

    /// A short name for logs and metrics.
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
    Status(u16),
    /// No response header.
    Failed(Failure),
}

/// What to do after a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send this response to the client as it is.
    Deliver,
    /// Send the request again, to the next backend.
    Retry,
    /// No response and no tries left: answer with the failure's status.
    GiveUp(Failure),
}

/// Statuses that make a try fail: Azure's throttling and server-side errors.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Decides what follows a try, given the tries made so far (this one included).
pub fn decide(outcome: Outcome, tries: u32, max_tries: u32) -> Verdict {
    let tries_left = tries < max_tries;
    match outcome {
        Outcome::Status(s) if is_retryable_status(s) && tries_left => Verdict::Retry,
        Outcome::Status(_) => Verdict::Deliver,
        Outcome::Failed(_) if tries_left => Verdict::Retry,
        Outcome::Failed(f) => Verdict::GiveUp(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses_are_retried_while_tries_remain() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(decide(Outcome::Status(s), 1, 3), Verdict::Retry, "{s}");
            assert_eq!(decide(Outcome::Status(s), 2, 3), Verdict::Retry, "{s}");
            assert_eq!(decide(Outcome::Status(s), 3, 3), Verdict::Deliver, "{s}");
        }
    }

    #[test]
    fn other_statuses_are_delivered_at_once() {
        for s in [200, 201, 204, 400, 401, 403, 404, 409, 413, 422, 501, 505] {
            assert_eq!(decide(Outcome::Status(s), 1, 3), Verdict::Deliver, "{s}");
        }
    }

    #[test]
    fn failures_retry_then_give_up_with_their_status() {
        for f in [
            Failure::Connect,
            Failure::Tls,
            Failure::Timeout,
            Failure::Dropped,
        ] {
            assert_eq!(decide(Outcome::Failed(f), 1, 3), Verdict::Retry);
            assert_eq!(decide(Outcome::Failed(f), 3, 3), Verdict::GiveUp(f));
        }
        assert_eq!(Failure::Timeout.status(), 504);
        assert_eq!(Failure::Connect.status(), 502);
        assert_eq!(Failure::Dropped.status(), 502);
    }

    #[test]
    fn one_try_means_no_retry() {
        assert_eq!(decide(Outcome::Status(429), 1, 1), Verdict::Deliver);
        assert_eq!(
            decide(Outcome::Failed(Failure::Connect), 1, 1),
            Verdict::GiveUp(Failure::Connect)
        );
    }
}
