//! [`Request`]: the typed view of a request, read once after admission, that every later step
//! reads: the deployment it names and where, what it asks for (a list, a Realtime session, the
//! objects it names), its body's facts ([`BodyFacts`], parsed at most once, and only when a
//! step needs them), and the body as every try sends it. A body that is not JSON has no facts
//! and goes on untouched.
//!
//! Query strings are read with [`url::form_urlencoded`] ([`query`]); what the proxy rewrites
//! for a backend works from the same facts ([`rewrite`]).

pub mod body;
pub mod query;
pub mod rewrite;

use std::sync::OnceLock;

use bytes::Bytes;
use http::Method;
use pingora::http::RequestHeader;

pub use body::BodyFacts;
use rewrite::Splice;

use crate::objects::{self, Named};

/// Where a request names its deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    /// `/openai/deployments/{name}/...`.
    Path,
    /// The Realtime query parameter of this name (`deployment`, or `model` on `/openai/v1/`).
    Query(&'static str),
    /// The body's `model` (`/openai/v1/...`, `/openai/responses`).
    Body,
    /// Nowhere: files, batches, model lists, ...
    Nowhere,
}

/// A Realtime request that names its deployment twice, or under the other path's parameter: a
/// backend might read another name than the one the proxy checked.
#[derive(Debug, PartialEq, Eq)]
pub struct AmbiguousDeployment;

/// The typed view of one request.
pub struct Request {
    deployment: Option<String>,
    named: Where,
    /// The collection it lists (`GET /openai/files`).
    list: Option<&'static str>,
    /// The object its path names, if any.
    path_object: Option<String>,
    /// It is a `POST`.
    post: bool,
    /// Its path is under a stateful collection.
    in_collection: bool,
    /// It is `DELETE {collection}/{id}`.
    deletes: bool,
    /// The body as the client sent it.
    original: Bytes,
    /// The change every try makes to it (`usage.include_in_streams`), and the body made. Boxed,
    /// as the facts are: most requests have neither, and this view lives in every request's
    /// future.
    edit: Option<Box<(Splice, Bytes)>>,
    facts: OnceLock<Option<Box<BodyFacts>>>,
}

impl Request {
    /// Reads the request whose header is `head` and whose body is `body`. With `ask_for_usage`
    /// (`usage.include_in_streams`), a streamed completion that does not ask for its usage is
    /// made to.
    pub fn read(
        head: &RequestHeader,
        body: Bytes,
        ask_for_usage: bool,
    ) -> Result<Request, AmbiguousDeployment> {
        let (path, query) = (head.uri.path(), head.uri.query());
        let found = objects::collection(path);
        let mut r = Request {
            deployment: None,
            named: Where::Nowhere,
            list: objects::named::list_in(&head.method, found),
            path_object: objects::named::object_in(found).map(str::to_string),
            post: head.method == Method::POST,
            in_collection: found.is_some(),
            deletes: head.method == Method::DELETE && objects::named::deletes_in(found),
            original: body,
            edit: None,
            facts: OnceLock::new(),
        };
        (r.deployment, r.named) = r.find_deployment(path, query)?;
        if ask_for_usage && rewrite::may_ask_for_usage(path, query, &r.original) {
            let edit = r
                .facts()
                .and_then(|f| rewrite::ask_for_usage(&r.original, f));
            if let Some(edit) = edit {
                let body = rewrite::apply(&r.original, &mut [edit.clone()]);
                r.edit = Some(Box::new((edit, body)));
            }
        }
        Ok(r)
    }

    /// The deployment named, and where.
    fn find_deployment(
        &self,
        path: &str,
        query: Option<&str>,
    ) -> Result<(Option<String>, Where), AmbiguousDeployment> {
        if let Some(parameter) = realtime_parameter(path) {
            let named: Vec<_> = query::params(query, &["deployment", "model"]).collect();
            return match named.as_slice() {
                [] => Ok((None, Where::Query(parameter))),
                [(k, v)] if k == parameter => Ok((
                    (!v.is_empty()).then(|| v.to_string()),
                    Where::Query(parameter),
                )),
                _ => Err(AmbiguousDeployment),
            };
        }
        if let Some(rest) = path.strip_prefix("/openai/deployments/") {
            let name = rest.split('/').next().unwrap_or_default();
            return Ok(((!name.is_empty()).then(|| name.to_string()), Where::Path));
        }
        if model_in_body(path) {
            let model = self.facts().and_then(|f| f.model.as_ref());
            return Ok((model.map(|(m, _)| m.clone()), Where::Body));
        }
        Ok((None, Where::Nowhere))
    }

    /// The body's facts, read on first use; `None` when it is not a JSON object.
    pub fn facts(&self) -> Option<&BodyFacts> {
        self.facts
            .get_or_init(|| BodyFacts::read(&self.original).map(Box::new))
            .as_deref()
    }

    /// The deployment the request names.
    pub fn deployment(&self) -> Option<&str> {
        self.deployment.as_deref()
    }

    /// Takes the deployment out (for the access log, once the request is served).
    pub fn take_deployment(&mut self) -> Option<String> {
        self.deployment.take()
    }

    /// The body should name the deployment in its `model` but it cannot be read there (a
    /// `model` given twice, a form): a backend might still find one.
    pub fn model_unreadable(&self) -> bool {
        self.named == Where::Body && self.deployment.is_none() && !self.original.is_empty()
    }

    /// The tokens it may spend before the backend says: its prompt (about four bytes a token,
    /// over the whole body) and the completion it allows (see [`BodyFacts::completion_cap`]).
    /// With no cap the completion is unknown until the backend says, and counted as none.
    pub fn estimate_tokens(&self) -> u64 {
        self.estimate_with(0)
    }

    /// The tokens a backend's quota is charged for it on arrival, as Azure estimates them:
    /// the same, with [`Self::COMPLETION_WITHOUT_CAP`] for a request that sets no cap
    /// (`balance.strategy: headroom` and the waiting room read it).
    pub fn capacity_estimate(&self) -> u64 {
        self.estimate_with(Self::COMPLETION_WITHOUT_CAP)
    }

    fn estimate_with(&self, no_cap: u64) -> u64 {
        let (prompt, completion) = self.estimate_parts_with(no_cap);
        prompt.saturating_add(completion)
    }

    /// [`Self::estimate_tokens`] in its two parts: the prompt, and the completion it allows
    /// (what a budget prices apart).
    pub fn estimate_parts(&self) -> (u64, u64) {
        self.estimate_parts_with(0)
    }

    fn estimate_parts_with(&self, no_cap: u64) -> (u64, u64) {
        let prompt = (self.original.len() as u64).div_ceil(4);
        let completion = self.facts().and_then(BodyFacts::completion_cap);
        (prompt, completion.unwrap_or(no_cap))
    }

    /// The completion a request that sets no cap is taken to use, for capacity.
    pub const COMPLETION_WITHOUT_CAP: u64 = 1000;

    /// The stateful objects it names: the one in its path first, then those in its body.
    pub fn objects(&self) -> Named {
        let mut named = Named::default();
        if let Some(id) = &self.path_object {
            named.ids.push(id.clone());
            named.in_path = true;
        }
        // Most bodies (chat completions) name nothing: look for a key's tail before reading.
        let parsed = self.facts.get().is_some();
        if parsed || may_name_objects(&self.original) {
            for id in self.facts().iter().flat_map(|f| &f.objects) {
                objects::named::push_id(&mut named.ids, id);
            }
        }
        named
    }

    /// Whether it is a Realtime upgrade.
    pub fn is_realtime(&self) -> bool {
        matches!(self.named, Where::Query(_))
    }

    /// The collection it lists, when it lists one every backend has a part of.
    pub fn list(&self) -> Option<&'static str> {
        self.list
    }

    /// Whether a success may have made objects (a `POST` under a stateful collection).
    pub fn may_create(&self) -> bool {
        self.post && self.in_collection
    }

    pub fn is_post(&self) -> bool {
        self.post
    }

    /// Whether it deletes the object its path names (`DELETE /openai/files/{id}`).
    pub fn deletes(&self) -> bool {
        self.deletes
    }

    /// The body every try sends (but see [`Self::for_backend`]).
    pub fn body(&self) -> &Bytes {
        self.edit
            .as_deref()
            .map_or(&self.original, |(_, body)| body)
    }

    /// The body as the client sent it.
    pub fn original(&self) -> &Bytes {
        &self.original
    }

    /// Whether the proxy asked the stream for its usage: the usage event is its to take out.
    pub fn hides_usage_event(&self) -> bool {
        self.edit.is_some()
    }

    /// What changes for a backend that knows the deployment as `own`: the path and query
    /// (`raw`, as forwarded) or the body, wherever the request names it.
    pub fn for_backend(&self, own: &str, raw: &[u8]) -> Renamed {
        match self.named {
            Where::Path => Renamed {
                path: rewrite::rename_in_path(raw, own),
                body: None,
            },
            Where::Query(parameter) => Renamed {
                path: rewrite::rename_in_query(raw, parameter, own),
                body: None,
            },
            Where::Body => {
                let rename = self.facts().and_then(|f| rewrite::rename_model(f, own));
                let body = rename.map(|r| {
                    let mut splices: Vec<Splice> =
                        self.edit.iter().map(|edit| edit.0.clone()).collect();
                    splices.push(r);
                    rewrite::apply(&self.original, &mut splices)
                });
                Renamed { path: None, body }
            }
            Where::Nowhere => Renamed::default(),
        }
    }
}

impl Request {
    /// The same request for deployment `to` (a fallback): the target (`raw`, as forwarded)
    /// renamed where it names the deployment (`None`: it does not), and the body as the client
    /// sent it with its `model` renamed where it has one. Read again with [`Request::read`].
    pub fn renamed_to(&self, to: &str, raw: &[u8]) -> (Option<Vec<u8>>, Bytes) {
        let path = match self.named {
            Where::Path => rewrite::rename_in_path(raw, to),
            Where::Query(parameter) => rewrite::rename_in_query(raw, parameter, to),
            Where::Body | Where::Nowhere => None,
        };
        let rename = self.facts().and_then(|f| rewrite::rename_model(f, to));
        let body = match rename {
            Some(splice) => rewrite::apply(&self.original, &mut [splice]),
            None => self.original.clone(),
        };
        (path, body)
    }
}

/// Whether `body` may name a stateful object: whether it has a key ending in `_id`, `_ids` or
/// `_file` (every key of [`objects::named::BODY_KEYS`] does). One scan for `_`, which a chat
/// completion's body has a few of at most.
fn may_name_objects(body: &[u8]) -> bool {
    memchr::memchr_iter(b'_', body).any(|at| {
        let after = &body[at + 1..];
        after.starts_with(b"id") || after.starts_with(b"file\"")
    })
}

/// A request as one backend gets it, where that differs from the client's.
#[derive(Debug, Default)]
pub struct Renamed {
    pub path: Option<Vec<u8>>,
    pub body: Option<Bytes>,
}

/// The query parameter that names a Realtime request's deployment, when `path` is the
/// Realtime API's: `model` on the GA path (`/openai/v1/realtime`), `deployment` on the preview.
pub fn realtime_parameter(path: &str) -> Option<&'static str> {
    match path.trim_end_matches('/') {
        "/openai/realtime" => Some("deployment"),
        "/openai/v1/realtime" => Some("model"),
        _ => None,
    }
}

/// Whether requests on `path` name their deployment in the body's `model` (`/openai/v1/...`,
/// `/openai/responses`) rather than in the path.
pub fn model_in_body(path: &str) -> bool {
    path.starts_with("/openai/v1/") || path.starts_with("/openai/responses")
}

#[cfg(test)]
mod tests;
