//! [`Forward`]: how a request is forwarded, the README's "How retry works", in one pure
//! function, [`decide`]:
//!
//! - a try fails on a connection or TLS error, a connection lost before a response header, no
//!   response header in time, or 408, 429, 500, 502, 503 or 504; anything else is the answer;
//! - a failed try goes to the next backend the balancer offers, at most `retry.max_tries` tries
//!   in all; with none left, or no backend left, the client gets this try's result;
//! - a 401 to the proxy's own Entra ID token is retried once, on the same backend, with a
//!   fresh token;
//! - with `retry.wait_for_capacity`, a 429 does not count against `retry.max_tries` while the
//!   request may still wait, and instead of delivering it the request waits ([`Verdict::Wait`]);
//! - with a fallback for the deployment (`fallbacks`), instead of delivering a try that failed
//!   the request goes to the fallback ([`Verdict::Fallback`]), and a 400 is read whole first to
//!   see whether its code is a fallback's cause ([`super::fallback`]).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::HeaderValue;

use super::fallback::{self, ERROR_BODY_MAX};
use super::{Policy, Product, Settled, Try, Verdict};
use crate::balance::{Pick, Selection};
use crate::config::FallbackCause;
use crate::outcome::{Outcome, Sent};

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

/// What follows a try, as [`decide`] says. `P` is what the balancer offers for the next try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<P> {
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
pub fn decide<P>(tries: Tries, outcome: Outcome, next: impl FnOnce() -> Option<P>) -> Step<P> {
    if tries.made >= tries.max {
        return Step::Deliver;
    }
    if outcome.refuses_token(tries.sent) && !tries.token_refreshed {
        return Step::RetryWithFreshToken;
    }
    if !outcome.is_failure() {
        return Step::Deliver;
    }
    next().map_or(Step::Deliver, Step::Retry)
}

/// The causes of a request with no fallback left.
pub static NO_FALLBACK: BTreeSet<FallbackCause> = BTreeSet::new();

/// The most tries answered 429 a request may have not counted against `retry.max_tries`: a
/// backend that asks for a wait of a millisecond does not get a try per round trip for the
/// whole wait budget.
const FORGIVEN: u32 = 16;

/// Forwarding: the first backend from the request's turn of the round robin, then, after a try
/// that failed, the next one its [`Selection`] offers.
pub struct Forward<'a> {
    selection: Selection<'a>,
    /// `retry.max_tries`.
    max: u32,
    /// The request already had its one fresh token after a 401.
    token_refreshed: bool,
    /// Until when the request may wait for capacity (its arrival and
    /// `retry.wait_for_capacity`); `None`: it may not.
    wait_until: Option<Instant>,
    /// Tries answered 429 while the request could still wait, this policy's and those before
    /// its last wait: they do not count against `max`.
    forgiven: u32,
    /// What sends the request to a fallback deployment instead (`fallbacks[].on`); empty when
    /// it has none left.
    fallback_on: &'a BTreeSet<FallbackCause>,
    /// The tries the request made on the deployments before this one (each deployment has its
    /// own `retry.max_tries`).
    earlier: u32,
}

impl<'a> Forward<'a> {
    pub fn new(selection: Selection<'a>, max_tries: u32) -> Self {
        Forward {
            selection,
            max: max_tries,
            token_refreshed: false,
            wait_until: None,
            forgiven: 0,
            fallback_on: &NO_FALLBACK,
            earlier: 0,
        }
    }

    /// The same, for a request that goes to a fallback deployment `on` these causes, and made
    /// `earlier` tries on the deployments before this one.
    pub fn falling_back_on(self, on: &'a BTreeSet<FallbackCause>, earlier: u32) -> Self {
        Forward {
            fallback_on: on,
            earlier,
            ..self
        }
    }

    /// The same, for a request that may wait for capacity until `until` and has had
    /// `forgiven` tries answered 429 not counted so far.
    pub fn waiting_until(self, until: Option<Instant>, forgiven: u32) -> Self {
        Forward {
            wait_until: until,
            forgiven,
            ..self
        }
    }

    /// The tries answered 429 not counted against `retry.max_tries` so far.
    pub fn forgiven(&self) -> u32 {
        self.forgiven
    }
}

impl Policy for Forward<'_> {
    const RETRIES: bool = true;

    fn decide(&mut self, t: &Try) -> Verdict {
        // The clock is read only for a 429 of a request that may wait.
        let waits = t.outcome.is_throttled()
            && self.forgiven < FORGIVEN
            && self.wait_until.is_some_and(|until| Instant::now() < until);
        if waits {
            self.forgiven += 1;
        }
        let tries = Tries {
            made: t.made.saturating_sub(self.forgiven + self.earlier),
            max: self.max,
            sent: t.sent,
            token_refreshed: self.token_refreshed,
        };
        let falls_back = |cause| self.fallback_on.contains(&cause);
        match decide(tries, t.outcome, || self.selection.next(Instant::now())) {
            Step::Deliver if waits => Verdict::Wait,
            Step::Deliver if t.outcome.is_failure() && falls_back(FallbackCause::Unavailable) => {
                Verdict::Fallback(FallbackCause::Unavailable)
            }
            Step::Deliver
                if t.outcome == Outcome::Status(http::StatusCode::BAD_REQUEST)
                    && (falls_back(FallbackCause::ContextLengthExceeded)
                        || falls_back(FallbackCause::ContentFilter)) =>
            {
                Verdict::Read(ERROR_BODY_MAX)
            }
            Step::Deliver => Verdict::Deliver,
            Step::Retry(pick) => Verdict::Next(pick),
            Step::RetryWithFreshToken => {
                self.token_refreshed = true;
                Verdict::RefreshToken
            }
        }
    }

    /// A 400 read whole: the fallback, when its code is one of the causes.
    fn settle(&mut self, _t: &Try, product: Product) -> Settled {
        if let Product::Whole(whole) = &product {
            let cause = fallback::cause_of(&whole.body);
            if let Some(cause) = cause.filter(|c| self.fallback_on.contains(c)) {
                return Settled::Fallback(cause);
            }
        }
        Settled::Deliver(product)
    }

    fn again(&mut self, backend: usize, token: HeaderValue) -> Option<Pick> {
        self.selection.again(backend, token, Instant::now())
    }

    fn shortest_wait(&self) -> Option<Duration> {
        self.selection.free_in(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Failure;
    use http::StatusCode;

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
                Step::Retry("b"),
                "{s}"
            );
            assert_eq!(
                decide(tries(2, 3), status(s), || Some("c")),
                Step::Retry("c"),
                "{s}"
            );
        }
        for f in FAILURES {
            let v = decide(tries(1, 3), Outcome::Failed(f), || Some("b"));
            assert_eq!(v, Step::Retry("b"), "{f:?}");
        }
    }

    #[test]
    fn the_last_try_is_delivered_whatever_it_is() {
        for s in THROTTLED.into_iter().chain([200, 401]) {
            assert_eq!(decide(tries(3, 3), status(s), never), Step::Deliver, "{s}");
        }
        for f in FAILURES {
            assert_eq!(
                decide(tries(3, 3), Outcome::Failed(f), never),
                Step::Deliver
            );
        }
    }

    #[test]
    fn one_try_means_no_retry() {
        assert_eq!(decide(tries(1, 1), status(429), never), Step::Deliver);
        assert_eq!(
            decide(tries(1, 1), Outcome::Failed(Failure::Connect), never),
            Step::Deliver
        );
        assert_eq!(decide(tries(1, 1), status(401), never), Step::Deliver);
    }

    #[test]
    fn with_no_backend_left_the_client_gets_this_try() {
        assert_eq!(
            decide(tries(1, 3), status(429), || None::<&str>),
            Step::Deliver
        );
        assert_eq!(
            decide(tries(1, 3), Outcome::Failed(Failure::Timeout), || None::<
                &str,
            >),
            Step::Deliver
        );
    }

    #[test]
    fn other_statuses_are_delivered_at_once() {
        for s in [200, 201, 204, 301, 400, 403, 404, 409, 413, 422, 501, 505] {
            assert_eq!(decide(tries(1, 3), status(s), never), Step::Deliver, "{s}");
        }
    }

    #[test]
    fn a_refused_token_is_retried_once_on_the_same_backend() {
        assert_eq!(
            decide(tries(1, 3), status(401), never),
            Step::RetryWithFreshToken
        );
        let refreshed = Tries {
            token_refreshed: true,
            ..tries(2, 3)
        };
        assert_eq!(decide(refreshed, status(401), never), Step::Deliver);
    }

    #[test]
    fn a_401_without_the_proxys_token_is_the_clients() {
        for sent in [Sent::ApiKey, Sent::Nothing] {
            let t = Tries {
                sent,
                ..tries(1, 3)
            };
            assert_eq!(decide(t, status(401), never), Step::Deliver, "{sent:?}");
        }
    }

    #[test]
    fn the_policy_walks_the_rotation_and_refreshes_a_refused_token_once() {
        use crate::retry::test_support::try_on;
        let pool = crate::balance::test_pool(&[(0, 1), (0, 1), (0, 1)]);
        let (selection, first) = pool.select(Some("gpt-4o"), None, Instant::now()).unwrap();
        let mut policy = Forward::new(selection, 3);
        let next = |v: Verdict| match v {
            Verdict::Next(p) => Some(p.index),
            _ => None,
        };
        // A 401 to the proxy's token: the same backend, with a fresh one.
        let refused = try_on(first.index, 1, Sent::EntraToken, status(401));
        assert!(matches!(policy.decide(&refused), Verdict::RefreshToken));
        let fresh = HeaderValue::from_static("Bearer fresh");
        assert_eq!(
            policy.again(first.index, fresh).map(|p| p.index),
            Some(first.index)
        );
        // A second 401 is the client's.
        let again = try_on(first.index, 2, Sent::EntraToken, status(401));
        assert!(matches!(policy.decide(&again), Verdict::Deliver));
        // A 429: the next backend in the rotation; the last try is delivered whatever it is.
        let throttled = try_on(first.index, 2, Sent::EntraToken, status(429));
        let second = next(policy.decide(&throttled)).expect("a retry");
        assert_ne!(second, first.index);
        let last = try_on(second, 3, Sent::EntraToken, status(503));
        assert!(matches!(policy.decide(&last), Verdict::Deliver));
    }
}
