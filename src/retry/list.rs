//! [`List`]: lists of a stateful collection (`GET /openai/files`, `/openai/batches`, ...). Each
//! backend holds a part of it, so the client gets every backend's list merged into one, newest
//! first, cut to its `limit`, in the shape Azure answers (`object`, `data`, `has_more`,
//! `first_id`, `last_id`). Every object listed is remembered where it lives.
//!
//! A page after a cursor (`after=ID`) is asked of every backend with that cursor: the one that
//! holds it answers the objects older than it; the others have no such object and answer "not
//! found", which counts as nothing to add. So later pages continue through the objects of the
//! cursor's backend: a client that must see every object of every backend asks for pages as
//! large as the API allows (`limit`), or lists before it pages.
//!
//! The list is complete or it is not given: when a backend fails (after its fresh token, if it
//! refused the proxy's) or answers an error other than "not found", the client gets that
//! answer, not a list with a hole in it.

use http::{HeaderValue, StatusCode};
use serde_json::{Map, Value};
use smallvec::SmallVec;

use super::{End, InTurn, Policy, Product, Settled, Try, Verdict};
use crate::balance::{Pick, Pool};
use crate::outcome::{Failure, Outcome, WholeAnswer};

/// The most of one backend's list read (a page of 10,000 files is about 3 MB).
pub const MAX_LIST: usize = 32 << 20;

/// What a list asks for (`limit`, `order`), from its query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub limit: Option<usize>,
    /// `order=asc`: the oldest first.
    pub oldest_first: bool,
}

/// One list, asked of every backend.
pub struct List<'a> {
    backends: InTurn<'a>,
    page: Page,
    /// Each backend's items and `has_more`, in the order they answered.
    parts: Vec<(Vec<Value>, bool)>,
    /// The first page's other fields, kept for the merged one.
    template: Option<Map<String, Value>>,
    /// Every object listed and the backend it is on.
    listed: Vec<(String, usize)>,
}

impl<'a> List<'a> {
    /// The list asked of the backends in `order` (the first is asked already).
    pub fn new(
        pool: &'a Pool,
        order: SmallVec<[Pick; 4]>,
        token: Option<HeaderValue>,
        page: Page,
    ) -> (Self, Option<Pick>) {
        let (backends, first) = InTurn::new(pool, order, token);
        let list = List {
            backends,
            page,
            parts: Vec::new(),
            template: None,
            listed: Vec::new(),
        };
        (list, first)
    }

    /// Every object listed so far, with the backend that holds it.
    pub fn listed(&self) -> &[(String, usize)] {
        &self.listed
    }

    /// Takes in one backend's page; `false` when it is not a list.
    fn take(&mut self, backend: usize, whole: &WholeAnswer) -> bool {
        let page = match whole.head.status.is_success() {
            true => serde_json::from_slice::<Map<String, Value>>(&whole.body).ok(),
            false => None,
        };
        let Some(mut page) = page else { return false };
        let items = match page.remove("data") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        for id in items.iter().filter_map(|i| i["id"].as_str()) {
            self.listed.push((id.to_string(), backend));
        }
        let more = page.get("has_more").and_then(Value::as_bool) == Some(true);
        self.parts.push((items, more));
        self.template.get_or_insert(page);
        true
    }
}

impl Policy for List<'_> {
    const RETRIES: bool = false;

    fn decide(&mut self, t: &Try) -> Verdict {
        if self.backends.refresh(t) {
            return Verdict::RefreshToken;
        }
        match t.outcome {
            // The list would have a hole in it.
            Outcome::Failed(_) => Verdict::Deliver,
            Outcome::Status(_) => Verdict::Read(MAX_LIST),
        }
    }

    fn settle(&mut self, t: &Try, product: Product) -> Settled {
        let Product::Whole(whole) = &product else {
            return Settled::Deliver(product);
        };
        if whole.head.status == StatusCode::NOT_FOUND || self.take(t.backend, whole) {
            return self.backends.next();
        }
        // An error, or not a list: the client gets it as it was.
        Settled::Deliver(product)
    }

    fn again(&mut self, backend: usize, token: HeaderValue) -> Option<Pick> {
        self.backends.again(backend, token)
    }

    fn end(&mut self) -> End {
        let template = self.template.take().unwrap_or_default();
        let merged = merge(template, std::mem::take(&mut self.parts), self.page);
        match WholeAnswer::json(merged) {
            Ok(whole) => End::Deliver(Product::Whole(whole)),
            Err(e) => End::Deliver(Product::Failed {
                backend: 0,
                failure: Failure::Dropped,
                error: e.to_string(),
            }),
        }
    }
}

/// One list from the backends' `parts` (items, has_more): every item, newest first (by
/// `created_at`; equal times keep the backends' order) or oldest first (`order=asc`), at most
/// `limit` of them.
fn merge(mut page: Map<String, Value>, parts: Vec<(Vec<Value>, bool)>, want: Page) -> Vec<u8> {
    let mut more = parts.iter().any(|(_, more)| *more);
    let mut items: Vec<Value> = parts.into_iter().flat_map(|(items, _)| items).collect();
    let created = |i: &Value| i["created_at"].as_i64().unwrap_or(i64::MIN);
    match want.oldest_first {
        true => items.sort_by_key(created),
        false => items.sort_by_key(|i| std::cmp::Reverse(created(i))),
    }
    if let Some(limit) = want.limit.filter(|&l| l < items.len()) {
        items.truncate(limit);
        more = true;
    }
    page.entry("object").or_insert_with(|| "list".into());
    let (first, last) = (
        items.first().map(|i| i["id"].clone()),
        items.last().map(|i| i["id"].clone()),
    );
    if page.contains_key("first_id") || page.contains_key("last_id") {
        page.insert("first_id".into(), first.unwrap_or(Value::Null));
        page.insert("last_id".into(), last.unwrap_or(Value::Null));
    }
    page.insert("has_more".into(), more.into());
    page.insert("data".into(), Value::Array(items));
    serde_json::to_vec(&page).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{status, try_on, whole};
    use super::*;
    use crate::balance::test_pool;
    use crate::outcome::Sent;
    use serde_json::json;
    use std::time::Instant;

    fn ids(v: &Value) -> Vec<&str> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn lists_merge_newest_first_and_cut_to_the_limit() {
        let Value::Object(page) =
            json!({"object":"list","first_id":"x","last_id":"y","has_more":false})
        else {
            panic!()
        };
        let a = vec![
            json!({"id":"a2","created_at":20}),
            json!({"id":"a1","created_at":10}),
        ];
        let b = vec![json!({"id":"b1","created_at":15})];
        let parts = || vec![(a.clone(), false), (b.clone(), false)];
        let merged = |limit, oldest_first| {
            let want = Page {
                limit,
                oldest_first,
            };
            serde_json::from_slice::<Value>(&merge(page.clone(), parts(), want)).unwrap()
        };
        let v = merged(None, false);
        assert_eq!(ids(&v), ["a2", "b1", "a1"]);
        assert_eq!(
            (v["first_id"].as_str(), v["last_id"].as_str()),
            (Some("a2"), Some("a1"))
        );
        assert_eq!(v["has_more"], false);
        let v = merged(Some(2), false);
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["has_more"], true, "cut by the limit: there is more");
        assert_eq!(v["last_id"], "b1");
        assert_eq!(
            ids(&merged(Some(2), true)),
            ["a1", "b1"],
            "order=asc: the oldest first"
        );
    }

    #[test]
    fn every_backend_is_asked_and_not_found_adds_nothing() {
        let pool = test_pool(&[(0, 1), (0, 1), (0, 1)]);
        let order = pool.search_order(None, None, None, Instant::now()).unwrap();
        let (mut l, first) = List::new(&pool, order, None, Page::default());
        assert_eq!(first.unwrap().index, 0);
        let t = try_on(0, 1, Sent::Nothing, status(200));
        assert!(matches!(l.decide(&t), Verdict::Read(MAX_LIST)));
        let page = r#"{"object":"list","data":[{"id":"file-a","created_at":1}],"has_more":false}"#;
        assert!(matches!(l.settle(&t, whole(200, page)), Settled::Next(p) if p.index == 1));
        let t = try_on(1, 2, Sent::Nothing, status(404));
        assert!(matches!(l.settle(&t, whole(404, "")), Settled::Next(p) if p.index == 2));
        let t = try_on(2, 3, Sent::Nothing, status(200));
        let page = r#"{"object":"list","data":[{"id":"file-c","created_at":2}],"has_more":true}"#;
        assert!(matches!(l.settle(&t, whole(200, page)), Settled::End));
        assert_eq!(
            l.listed(),
            [("file-a".to_string(), 0), ("file-c".to_string(), 2)]
        );
        let End::Deliver(Product::Whole(w)) = l.end() else {
            panic!("no merged list")
        };
        let v: Value = serde_json::from_slice(&w.body).unwrap();
        assert_eq!(ids(&v), ["file-c", "file-a"]);
        assert_eq!(v["has_more"], true);
    }

    #[test]
    fn a_failing_backend_gives_its_failure_not_a_list_with_a_hole() {
        let pool = test_pool(&[(0, 1), (0, 1)]);
        let order = pool.search_order(None, None, None, Instant::now()).unwrap();
        let (mut l, _) = List::new(&pool, order, None, Page::default());
        let t = try_on(0, 1, Sent::Nothing, Outcome::Failed(Failure::Connect));
        assert!(matches!(l.decide(&t), Verdict::Deliver));
        let t = try_on(0, 1, Sent::Nothing, status(429));
        assert!(matches!(
            l.settle(&t, whole(429, "{}")),
            Settled::Deliver(_)
        ));
        let t = try_on(0, 1, Sent::EntraToken, status(401));
        assert!(
            matches!(l.decide(&t), Verdict::RefreshToken),
            "lists refresh a refused token too"
        );
    }
}
