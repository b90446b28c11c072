//! The try policies: what follows each try of a request, decided by a pure [`Policy`] that sees
//! only what the try produced. The proxy's one try driver (`proxy::drive`) makes every try the
//! same way (pick, credential, exchange, observe, first byte, the record for the access log and
//! metrics) and carries out the policy's [`Verdict`]; the three ways a request uses its backends
//! differ only here:
//!
//! - [`Forward`]: round robin and retries, the README's "How retry works", and when the
//!   request goes to a fallback deployment instead ([`fallback`]);
//! - [`Search`]: the backends asked in turn for a stateful object until one holds it;
//! - [`List`]: every backend asked for its part of a list, merged into one.
//!
//! Each is unit-tested without a session or a network.

mod fallback;
mod forward;
mod list;
mod search;

pub use forward::{decide, Forward, Step, Tries, NO_FALLBACK};
pub use list::{List, Page};
pub use search::Search;

use http::HeaderValue;
use smallvec::SmallVec;

use crate::balance::{Pick, Pool, Unavailable};
use crate::config::FallbackCause;
use crate::outcome::{Failure, Outcome, Sent, WholeAnswer};

/// One try, as a policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Try {
    /// The backend it went to.
    pub backend: usize,
    /// The tries made for the request so far, this one included.
    pub made: u32,
    /// What proved it to the backend.
    pub sent: Sent,
    /// What it produced.
    pub outcome: Outcome,
}

/// A try that is over: its answer read to its end, or why there is none.
#[derive(Debug)]
pub enum Product {
    Whole(WholeAnswer),
    /// No answer from `backend` (or none that could be read to its end), and what went wrong,
    /// for the log.
    Failed {
        backend: usize,
        failure: Failure,
        error: String,
    },
}

/// What follows a try that produced a response header, or none.
#[derive(Debug)]
pub enum Verdict {
    /// The client gets this try: its answer as it comes, or the 502/504 of its failure.
    Deliver,
    /// The backend refused the proxy's token (401): the same backend again with a fresh one
    /// ([`Policy::again`]); if none comes in time, the client gets this answer.
    RefreshToken,
    /// Read the answer whole, at most this many bytes (a failure is as it is), and
    /// [`Policy::settle`] it.
    Read(usize),
    /// Put this try aside and send the request to this backend.
    Next(Pick),
    /// Put this try (a 429) aside: the request waits for capacity (`retry.wait_for_capacity`),
    /// then starts over with the backends free then.
    Wait,
    /// Put this try aside: the request goes to its deployment's next fallback (`fallbacks`).
    Fallback(FallbackCause),
}

/// What follows a try that [`Policy::settle`] took in.
#[derive(Debug)]
pub enum Settled {
    /// The client gets this.
    Deliver(Product),
    /// Send the request to this backend.
    Next(Pick),
    /// No backend is left: [`Policy::end`] says what the client gets.
    End,
    /// The request goes to its deployment's next fallback (`fallbacks`).
    Fallback(FallbackCause),
}

/// What the client gets when every backend has been asked.
#[derive(Debug)]
pub enum End {
    Deliver(Product),
    Unavailable(Unavailable),
}

/// How a request uses its backends.
pub trait Policy {
    /// Whether going on to another backend is a retry (`aoai_proxy_retries_total`), or asking
    /// the next one, which spends no try.
    const RETRIES: bool;

    /// What follows a try that produced a response header, or none.
    fn decide(&mut self, t: &Try) -> Verdict;

    /// What follows a try read whole after [`Verdict::Read`] (or that had no answer).
    fn settle(&mut self, _t: &Try, product: Product) -> Settled {
        Settled::Deliver(product)
    }

    /// The backend `backend` once more with a fresh `token`, after [`Verdict::RefreshToken`]:
    /// `None` when it can no longer take the request (the client gets the 401).
    fn again(&mut self, backend: usize, token: HeaderValue) -> Option<Pick>;

    /// What the client gets when no backend is left to ask.
    fn end(&mut self) -> End {
        End::Unavailable(Unavailable::UnknownDeployment)
    }

    /// When every backend that could take the request is cooling now, the shortest of their
    /// waits: what a throttling 429 passed through to the client says (see [`Forward`]).
    fn shortest_wait(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The backends a search or a list asks in turn, with the token in force: what the two
/// policies share. Each backend that refuses the proxy's token (401) gets one fresh token.
struct InTurn<'a> {
    pool: &'a Pool,
    /// The backends left to ask, in order.
    order: smallvec::IntoIter<[Pick; 4]>,
    /// The proxy's token header in force (an earlier backend may have had it replaced).
    token: Option<HeaderValue>,
    /// The backend that had its fresh token after a 401.
    refreshed: Option<usize>,
}

impl<'a> InTurn<'a> {
    /// The backends of `order`, asked with `token`; and the first to ask.
    fn new(
        pool: &'a Pool,
        order: SmallVec<[Pick; 4]>,
        token: Option<HeaderValue>,
    ) -> (Self, Option<Pick>) {
        let mut order = order.into_iter();
        let first = order.next();
        let in_turn = InTurn {
            pool,
            order,
            token,
            refreshed: None,
        };
        (in_turn, first)
    }

    /// Whether try `t` refused the proxy's token on a backend that has not had a fresh one.
    fn refresh(&mut self, t: &Try) -> bool {
        let first = t.outcome.refuses_token(t.sent) && self.refreshed != Some(t.backend);
        if first {
            self.refreshed = Some(t.backend);
        }
        first
    }

    /// The next backend to ask, with the token in force, or the end.
    fn next(&mut self) -> Settled {
        match self.order.next() {
            Some(pick) => {
                let backend = self.pool.get(pick.index);
                let credential = backend
                    .credential(self.token.as_ref())
                    .unwrap_or(pick.credential);
                Settled::Next(Pick {
                    index: pick.index,
                    credential,
                })
            }
            None => Settled::End,
        }
    }

    /// `backend` once more with a fresh `token`, which is in force from now on.
    fn again(&mut self, backend: usize, token: HeaderValue) -> Option<Pick> {
        let credential = self.pool.get(backend).credential(Some(&token))?;
        self.token = Some(token);
        Some(Pick {
            index: backend,
            credential,
        })
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use http::StatusCode;

    /// A try on `backend`, the `made`th, sent with `sent`, that produced `outcome`.
    pub fn try_on(backend: usize, made: u32, sent: Sent, outcome: Outcome) -> Try {
        Try {
            backend,
            made,
            sent,
            outcome,
        }
    }

    pub fn status(s: u16) -> Outcome {
        Outcome::Status(StatusCode::from_u16(s).unwrap())
    }

    /// An answer read whole: `status` and a JSON `body`.
    pub fn whole(status: u16, body: &str) -> Product {
        let head = pingora::http::ResponseHeader::build(status, None).unwrap();
        Product::Whole(WholeAnswer {
            head: Box::new(head),
            body: bytes::Bytes::from(body.to_string()),
        })
    }
}
