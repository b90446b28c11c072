//! [`Search`]: a request that names a stateful object goes to the backend known to hold it,
//! else to each backend in turn until one does not say "not found". Asking is not retrying: it
//! spends no try of `retry.max_tries`, and a backend's health does not keep it out (see
//! [`Pool::search_order`]).
//!
//! What the client gets: the answer of the backend that has the object; when none says it has
//! it, the answer of one that could not say (a 429 from a throttled backend, which may be the
//! holder: the client waits it out rather than hear a false "not found"); only when every
//! backend said "not found", that.

use http::{HeaderValue, StatusCode};
use smallvec::SmallVec;

use super::{End, InTurn, Policy, Product, Settled, Try, Verdict};
use crate::balance::{Pick, Pool};
use crate::outcome::Outcome;

/// The most of an answer read whole to look into it (a 400 that may say "not found") or to
/// keep it while other backends are asked.
pub const MAX_WHOLE: usize = 1 << 20;

/// The search for one object's backend.
pub struct Search<'a> {
    backends: InTurn<'a>,
    /// The backend known to hold the object, if one is.
    holder: Option<usize>,
    /// The first answer of a backend that could not say (a 429, a 5xx, no answer).
    unsure: Option<Product>,
    /// The last "not found".
    not_found: Option<Product>,
}

impl<'a> Search<'a> {
    /// The search that asks the backends in `order` (the first is asked already), `holder` the
    /// one known to hold the object, with `token` the proxy's token header.
    pub fn new(
        pool: &'a Pool,
        order: SmallVec<[Pick; 4]>,
        holder: Option<usize>,
        token: Option<HeaderValue>,
    ) -> (Self, Option<Pick>) {
        let (backends, first) = InTurn::new(pool, order, token);
        let search = Search {
            backends,
            holder,
            unsure: None,
            not_found: None,
        };
        (search, first)
    }

    /// What a backend that could not say produced: the client gets it at once from the holder,
    /// else the first is kept for the end.
    fn unsure(&mut self, t: &Try, product: Product) -> Settled {
        if self.holder == Some(t.backend) {
            return Settled::Deliver(product);
        }
        self.unsure.get_or_insert(product);
        self.backends.next()
    }
}

impl Policy for Search<'_> {
    const RETRIES: bool = false;

    fn decide(&mut self, t: &Try) -> Verdict {
        if self.backends.refresh(t) {
            return Verdict::RefreshToken;
        }
        match t.outcome {
            Outcome::Failed(_) => Verdict::Read(0),
            Outcome::Status(s)
                if s == StatusCode::NOT_FOUND
                    || s == StatusCode::BAD_REQUEST
                    || t.outcome.is_failure() =>
            {
                Verdict::Read(MAX_WHOLE)
            }
            // This backend has it.
            Outcome::Status(_) => Verdict::Deliver,
        }
    }

    fn settle(&mut self, t: &Try, product: Product) -> Settled {
        let whole = match &product {
            Product::Failed { .. } => return self.unsure(t, product),
            Product::Whole(whole) => whole,
        };
        if whole.is_not_found() {
            self.not_found = Some(product);
            return self.backends.next();
        }
        if Outcome::Status(whole.head.status).is_failure() {
            return self.unsure(t, product);
        }
        // A 400 about something else: the object is here, the request is wrong.
        Settled::Deliver(product)
    }

    fn again(&mut self, backend: usize, token: HeaderValue) -> Option<Pick> {
        self.backends.again(backend, token)
    }

    fn end(&mut self) -> End {
        match self.unsure.take().or_else(|| self.not_found.take()) {
            Some(product) => End::Deliver(product),
            None => End::Unavailable(crate::balance::Unavailable::UnknownDeployment),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{status, try_on, whole};
    use super::*;
    use crate::balance::test_pool;
    use crate::outcome::{Failure, Sent};
    use std::time::Instant;

    fn search(pool: &Pool, holder: Option<usize>) -> (Search<'_>, Pick) {
        let order = pool
            .search_order(Some("gpt-4o"), None, holder, Instant::now())
            .unwrap();
        let (s, first) = Search::new(pool, order, holder, None);
        (s, first.unwrap())
    }

    fn next_index(s: Settled) -> Option<usize> {
        match s {
            Settled::Next(p) => Some(p.index),
            _ => None,
        }
    }

    #[test]
    fn the_first_backend_that_does_not_say_not_found_has_it() {
        let pool = test_pool(&[(0, 1), (0, 1), (0, 1)]);
        let (mut s, first) = search(&pool, None);
        assert_eq!(first.index, 0);
        let t = try_on(0, 1, Sent::Nothing, status(404));
        assert!(matches!(s.decide(&t), Verdict::Read(MAX_WHOLE)));
        assert_eq!(next_index(s.settle(&t, whole(404, ""))), Some(1));
        let t = try_on(1, 2, Sent::Nothing, status(200));
        assert!(matches!(s.decide(&t), Verdict::Deliver), "it has it");
    }

    #[test]
    fn every_not_found_gives_the_not_found() {
        let pool = test_pool(&[(0, 1), (0, 1)]);
        let (mut s, _) = search(&pool, None);
        for (i, body) in [
            (0, ""),
            (1, r#"{"error":{"code":"previous_response_not_found"}}"#),
        ] {
            let t = try_on(
                i,
                i as u32 + 1,
                Sent::Nothing,
                status(if i == 0 { 404 } else { 400 }),
            );
            assert!(matches!(s.decide(&t), Verdict::Read(_)));
            let settled = s.settle(&t, whole(t_status(&t), body));
            assert_eq!(next_index(settled), if i == 0 { Some(1) } else { None });
        }
        match s.end() {
            End::Deliver(Product::Whole(w)) => assert_eq!(w.head.status, 400, "the last one"),
            other => panic!("{other:?}"),
        }
    }

    fn t_status(t: &Try) -> u16 {
        match t.outcome {
            Outcome::Status(s) => s.as_u16(),
            Outcome::Failed(_) => 0,
        }
    }

    #[test]
    fn a_backend_that_could_not_say_is_answered_rather_than_a_false_not_found() {
        let pool = test_pool(&[(0, 1), (0, 1), (0, 1)]);
        let (mut s, _) = search(&pool, None);
        let t = try_on(0, 1, Sent::Nothing, status(429));
        assert!(matches!(s.decide(&t), Verdict::Read(_)));
        assert_eq!(next_index(s.settle(&t, whole(429, "{}"))), Some(1));
        let t = try_on(1, 2, Sent::Nothing, Outcome::Failed(Failure::Connect));
        assert!(matches!(s.decide(&t), Verdict::Read(0)));
        let failed = Product::Failed {
            backend: 1,
            failure: Failure::Connect,
            error: "refused".into(),
        };
        assert_eq!(next_index(s.settle(&t, failed)), Some(2));
        let t = try_on(2, 3, Sent::Nothing, status(404));
        assert!(s.settle(&t, whole(404, "")).is_end());
        match s.end() {
            End::Deliver(Product::Whole(w)) => assert_eq!(w.head.status, 429, "the first unsure"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_holders_failure_is_the_answer_at_once() {
        let pool = test_pool(&[(0, 1), (0, 1)]);
        let (mut s, first) = search(&pool, Some(1));
        assert_eq!(first.index, 1, "the holder first");
        let t = try_on(1, 1, Sent::Nothing, status(503));
        assert!(matches!(
            s.settle(&t, whole(503, "{}")),
            Settled::Deliver(Product::Whole(_))
        ));
    }

    #[test]
    fn a_400_about_something_else_is_the_answer() {
        let pool = test_pool(&[(0, 1), (0, 1)]);
        let (mut s, _) = search(&pool, None);
        let t = try_on(0, 1, Sent::Nothing, status(400));
        let body = r#"{"error":{"code":"invalid_value"}}"#;
        assert!(matches!(
            s.settle(&t, whole(400, body)),
            Settled::Deliver(_)
        ));
    }

    #[test]
    fn a_refused_token_gets_one_fresh_one_per_backend() {
        let pool = test_pool(&[(0, 1), (0, 1)]);
        let (mut s, _) = search(&pool, None);
        let t = try_on(0, 1, Sent::EntraToken, status(401));
        assert!(matches!(s.decide(&t), Verdict::RefreshToken));
        let fresh = HeaderValue::from_static("Bearer fresh");
        assert_eq!(s.again(0, fresh).map(|p| p.index), Some(0));
        assert!(
            matches!(s.decide(&t), Verdict::Deliver),
            "a second 401 is the answer"
        );
    }

    impl Settled {
        fn is_end(&self) -> bool {
            matches!(self, Settled::End)
        }
    }
}
