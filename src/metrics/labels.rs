//! The label values of the metrics: try outcomes, token kinds and retry causes as enums (adding
//! one makes the compiler list every place to update), and the classes of the client's answers
//! with the function that picks one.

use crate::outcome::{Failure, Outcome};

/// The `outcome` label of `aoai_proxy_backend_tries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryLabel {
    S2xx,
    S3xx,
    S4xx,
    S429,
    S5xx,
    Connect,
    Tls,
    Timeout,
    Dropped,
}

impl TryLabel {
    /// Every label, in the order they are rendered (and stored: `label as usize`).
    pub const ALL: [TryLabel; 9] = [
        TryLabel::S2xx,
        TryLabel::S3xx,
        TryLabel::S4xx,
        TryLabel::S429,
        TryLabel::S5xx,
        TryLabel::Connect,
        TryLabel::Tls,
        TryLabel::Timeout,
        TryLabel::Dropped,
    ];

    /// The label of what a try produced.
    pub fn of(outcome: Outcome) -> TryLabel {
        match outcome {
            Outcome::Status(s) => match s.as_u16() {
                429 => TryLabel::S429,
                0..300 => TryLabel::S2xx,
                300..400 => TryLabel::S3xx,
                400..500 => TryLabel::S4xx,
                _ => TryLabel::S5xx,
            },
            Outcome::Failed(Failure::Connect) => TryLabel::Connect,
            Outcome::Failed(Failure::Tls) => TryLabel::Tls,
            Outcome::Failed(Failure::Timeout) => TryLabel::Timeout,
            Outcome::Failed(Failure::Dropped) => TryLabel::Dropped,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TryLabel::S2xx => "2xx",
            TryLabel::S3xx => "3xx",
            TryLabel::S4xx => "4xx",
            TryLabel::S429 => "429",
            TryLabel::S5xx => "5xx",
            TryLabel::Connect => "connect",
            TryLabel::Tls => "tls",
            TryLabel::Timeout => "timeout",
            TryLabel::Dropped => "dropped",
        }
    }
}

/// The `kind` label of `aoai_proxy_tokens_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Prompt,
    Completion,
    Cached,
    Reasoning,
}

impl TokenKind {
    /// Every kind, in the order they are stored and rendered.
    pub const ALL: [TokenKind; 4] = [
        TokenKind::Prompt,
        TokenKind::Completion,
        TokenKind::Cached,
        TokenKind::Reasoning,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Prompt => "prompt",
            TokenKind::Completion => "completion",
            TokenKind::Cached => "cached",
            TokenKind::Reasoning => "reasoning",
        }
    }
}

/// Why a try was retried: the `cause` label of `aoai_proxy_retries_by_cause_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryCause {
    Throttled,
    ServerError,
    TokenRefused,
    Connect,
    Tls,
    Timeout,
    Dropped,
    Other,
}

impl RetryCause {
    pub const ALL: [RetryCause; 8] = [
        RetryCause::Throttled,
        RetryCause::ServerError,
        RetryCause::TokenRefused,
        RetryCause::Connect,
        RetryCause::Tls,
        RetryCause::Timeout,
        RetryCause::Dropped,
        RetryCause::Other,
    ];

    pub fn of(outcome: Outcome) -> RetryCause {
        match outcome {
            Outcome::Status(s) => match s.as_u16() {
                429 => RetryCause::Throttled,
                401 => RetryCause::TokenRefused,
                500.. => RetryCause::ServerError,
                _ => RetryCause::Other,
            },
            Outcome::Failed(Failure::Connect) => RetryCause::Connect,
            Outcome::Failed(Failure::Tls) => RetryCause::Tls,
            Outcome::Failed(Failure::Timeout) => RetryCause::Timeout,
            Outcome::Failed(Failure::Dropped) => RetryCause::Dropped,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RetryCause::Throttled => "429",
            RetryCause::ServerError => "5xx",
            RetryCause::TokenRefused => "401",
            RetryCause::Connect => "connect",
            RetryCause::Tls => "tls",
            RetryCause::Timeout => "timeout",
            RetryCause::Dropped => "dropped",
            RetryCause::Other => "other",
        }
    }
}

/// The `class` label of `aoai_proxy_responses_total`: what the client got.
pub(super) const RESPONSE_CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "429", "5xx"];

pub(super) fn response_class(status: u16) -> usize {
    match status {
        429 => 3,
        0..300 => 0,
        300..400 => 1,
        400..500 => 2,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn every_outcome_has_its_label() {
        let status = |s| TryLabel::of(Outcome::Status(StatusCode::from_u16(s).unwrap()));
        let labels: Vec<&str> = [200, 302, 404, 429, 503]
            .into_iter()
            .map(|s| status(s).as_str())
            .collect();
        assert_eq!(labels, ["2xx", "3xx", "4xx", "429", "5xx"]);
        assert_eq!(
            TryLabel::of(Outcome::Failed(Failure::Timeout)).as_str(),
            "timeout"
        );
        for (i, l) in TryLabel::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i, "{l:?} is stored where it is rendered");
        }
    }
}
