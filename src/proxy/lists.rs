//! Lists of a stateful collection (`GET /openai/files`, `/openai/batches`, ...): each backend
//! holds a part of it, so the client gets every backend's list merged into one, newest first,
//! cut to its `limit`, in the shape Azure answers (`object`, `data`, `has_more`, `first_id`,
//! `last_id`). Every object listed is remembered where it lives.
//!
//! A page after a cursor (`after=ID`) is asked of every backend with that cursor: the one
//! that holds it answers the objects older than it; the others have no such object and answer
//! "not found", which counts as nothing to add. So later pages continue through the objects of
//! the cursor's backend: a client that must see every object of every backend asks for pages
//! as large as the API allows (`limit`), or lists before it pages.
//!
//! The list is complete or it is not given: when a backend fails (after its tries) or answers
//! an error other than "not found", the client gets that answer, not a list with a hole in it.

use bytes::Bytes;
use http::StatusCode;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{Map, Value};

use super::answers::ProxyError;
use super::exchange::{self, Attempt, WholeAnswer};
use super::tries::remaining;
use super::{AoaiProxy, RequestCtx};
use crate::balance::Pick;
use crate::metrics::Retried;

/// The most of one backend's list read (a page of 10,000 files is about 3 MB).
const MAX_LIST: usize = 32 << 20;

impl AoaiProxy {
    /// Serves a list of `collection` from every backend.
    pub(super) async fn list(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        collection: &'static str,
    ) -> Result<()> {
        let mut token = self.tokens.as_ref().and_then(|t| t.token());
        let order = match self.search_order(None, None, &mut token).await {
            Ok(order) => order,
            Err(why) => return ProxyError::unavailable(why, None).respond(session).await,
        };
        let query = session.req_header().uri.query();
        let limit = query_param(query, "limit").and_then(|l| l.parse::<usize>().ok());
        let oldest_first = query_param(query, "order") == Some("asc");
        let mut parts: Vec<(usize, Vec<Value>, bool)> = Vec::with_capacity(order.len());
        let mut template: Option<Map<String, Value>> = None;
        let body = Bytes::new();
        for Pick { index, credential } in order {
            let backend = self.pool.get(index);
            let peer = backend.peer();
            ctx.tries += 1;
            let attempt = self
                .try_once(session, backend, peer.as_deref(), credential, &body, None)
                .await?;
            let outcome = attempt.outcome();
            ctx.tried.push((index, outcome));
            self.observe(index, outcome, attempt.headers(), None);
            self.metrics
                .record_try(&backend.stats, outcome, Retried::No);
            let answer = match attempt {
                Attempt::Answered(answer) => answer,
                Attempt::Failed(f, e) => {
                    log::warn!(
                        "backend {}: {} ({e}); the list is not complete",
                        backend.name,
                        f.as_str()
                    );
                    ctx.first_byte = Some(ctx.started.elapsed());
                    return ProxyError::gave_up(f, &backend.name, ctx.tries)
                        .respond_with(session, &remaining(ctx.admitted.as_ref()))
                        .await;
                }
            };
            let whole = exchange::read_whole(
                &self.upstream,
                peer.as_deref(),
                answer,
                MAX_LIST,
                (self.timeouts.body_idle, self.timeouts.pool_idle),
            )
            .await;
            let whole = match whole {
                Ok(whole) => whole,
                Err(e) => {
                    log::warn!("backend {}: {e}; the list is not complete", backend.name);
                    return ProxyError::gave_up(
                        crate::retry::Failure::Dropped,
                        &backend.name,
                        ctx.tries,
                    )
                    .respond(session)
                    .await;
                }
            };
            if whole.head.status == StatusCode::NOT_FOUND {
                continue;
            }
            let page = match whole.head.status.is_success() {
                true => serde_json::from_slice::<Map<String, Value>>(&whole.body).ok(),
                false => None,
            };
            let Some(mut page) = page else {
                // An error, or not a list: the client gets it as it was.
                ctx.first_byte = Some(ctx.started.elapsed());
                return self
                    .relay_whole(session, whole, ctx.admitted.as_ref())
                    .await;
            };
            let items = match page.remove("data") {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            };
            for id in items.iter().filter_map(|i| i["id"].as_str()) {
                self.objects.learn(id, &backend.name);
            }
            let more = page
                .get("has_more")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            parts.push((index, items, more));
            template.get_or_insert(page);
        }
        ctx.first_byte = Some(ctx.started.elapsed());
        let merged = merge(template.unwrap_or_default(), parts, limit, oldest_first);
        log::debug!("merged a list of {collection}");
        let whole = WholeAnswer {
            head: Box::new(json_head(merged.len())?),
            body: Bytes::from(merged),
        };
        self.relay_whole(session, whole, ctx.admitted.as_ref())
            .await
    }
}

/// One list from the backends' `parts` (backend, items, has_more): every item, newest first
/// (by `created_at`; equal times keep the backends' order) or oldest first (`order=asc`), at
/// most `limit` of them.
fn merge(
    mut page: Map<String, Value>,
    parts: Vec<(usize, Vec<Value>, bool)>,
    limit: Option<usize>,
    oldest_first: bool,
) -> Vec<u8> {
    let mut more = parts.iter().any(|(_, _, more)| *more);
    let mut items: Vec<Value> = parts.into_iter().flat_map(|(_, items, _)| items).collect();
    let created = |i: &Value| i["created_at"].as_i64().unwrap_or(i64::MIN);
    match oldest_first {
        true => items.sort_by_key(created),
        false => items.sort_by_key(|i| std::cmp::Reverse(created(i))),
    }
    if let Some(limit) = limit.filter(|&l| l < items.len()) {
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

fn json_head(len: usize) -> Result<pingora::http::ResponseHeader> {
    let mut head = pingora::http::ResponseHeader::build(200, Some(2))?;
    head.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    head.insert_header(http::header::CONTENT_LENGTH, len)?;
    Ok(head)
}

/// The value of `name` in `query` (as sent; list parameters need no decoding).
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_merge_newest_first_and_cut_to_the_limit() {
        let page = json!({"object":"list","first_id":"x","last_id":"y","has_more":false});
        let Value::Object(page) = page else { panic!() };
        let a = vec![
            json!({"id":"a2","created_at":20}),
            json!({"id":"a1","created_at":10}),
        ];
        let b = vec![json!({"id":"b1","created_at":15})];
        let merged = merge(
            page.clone(),
            vec![(0, a.clone(), false), (1, b.clone(), false)],
            None,
            false,
        );
        let v: Value = serde_json::from_slice(&merged).unwrap();
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a2", "b1", "a1"]);
        assert_eq!(
            (v["first_id"].as_str(), v["last_id"].as_str()),
            (Some("a2"), Some("a1"))
        );
        assert_eq!(v["has_more"], false);

        let v: Value = serde_json::from_slice(&merge(
            page.clone(),
            vec![(0, a.clone(), false), (1, b.clone(), false)],
            Some(2),
            false,
        ))
        .unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["has_more"], true, "cut by the limit: there is more");
        assert_eq!(v["last_id"], "b1");

        let v: Value = serde_json::from_slice(&merge(
            page,
            vec![(0, a, false), (1, b, false)],
            Some(2),
            true,
        ))
        .unwrap();
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a1", "b1"], "order=asc: the oldest first");
    }

    #[test]
    fn query_parameters_are_found_by_name() {
        assert_eq!(
            query_param(Some("api-version=1&limit=5"), "limit"),
            Some("5")
        );
        assert_eq!(query_param(Some("limited=5"), "limit"), None);
        assert_eq!(query_param(None, "limit"), None);
    }
}
