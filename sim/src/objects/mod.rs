//! The objects an Azure OpenAI resource keeps for its callers: files, batches, fine-tuning jobs
//! (in [`files`]), assistants, threads with their messages and runs, vector stores (in
//! [`assistants`]) and stored responses (in [`responses`]).
//!
//! Azure keeps each one on the resource that made it: another resource answers 404 for its id
//! (400 `previous_response_not_found` for a Responses chain). Each simulated backend has its own
//! [`Store`], so a proxy in front of several of them must send a request that names an object to
//! the backend that holds it, as it must in front of real resources.

mod assistants;
mod files;
mod responses;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::request::Parts;
use hyper::Response;
use serde_json::{json, Value};

use super::openai::BackendOptions;
use super::{azure_error, lock, Body};

/// The kinds of object a backend keeps, each in a table of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Batch,
    FineTuningJob,
    Assistant,
    Thread,
    Message,
    Run,
    VectorStore,
    Response,
}

impl Kind {
    /// How many kinds there are (the length of [`Store`]'s tables).
    const COUNT: usize = 9;

    /// The start of this kind's ids, as Azure writes them.
    fn prefix(self) -> &'static str {
        match self {
            Kind::File => "file-",
            Kind::Batch => "batch_",
            Kind::FineTuningJob => "ftjob-",
            Kind::Assistant => "asst_",
            Kind::Thread => "thread_",
            Kind::Message => "msg_",
            Kind::Run => "run_",
            Kind::VectorStore => "vs_",
            Kind::Response => "resp_",
        }
    }

    /// What a not-found message calls it.
    fn noun(self) -> &'static str {
        match self {
            Kind::File => "File",
            Kind::Batch => "Batch",
            Kind::FineTuningJob => "Fine-tuning job",
            Kind::Assistant => "Assistant",
            Kind::Thread => "Thread",
            Kind::Message => "Message",
            Kind::Run => "Run",
            Kind::VectorStore => "Vector store",
            Kind::Response => "Response",
        }
    }
}

// Every kind has its table.
const _: () = assert!(Kind::Response as usize + 1 == Kind::COUNT);

/// A fresh id of `kind`: its prefix and 24 hex digits.
fn new_kind_id(kind: Kind) -> String {
    new_id(kind.prefix())
}

/// `prefix` and 24 hex digits, unique in this process and, with near certainty, across processes:
/// 12 digits from the process id and the time it first made one, 12 from a counter.
pub(crate) fn new_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PROCESS: OnceLock<u64> = OnceLock::new();
    let process = *PROCESS.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        mix(nanos ^ (u64::from(std::process::id()) << 40))
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    const LOW48: u64 = (1 << 48) - 1;
    format!("{prefix}{:012x}{:012x}", process & LOW48, n & LOW48)
}

/// SplitMix64's finaliser: spreads the bits of `x` over the whole word.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Seconds since the Unix epoch, as the objects' `created_at`.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One object: what the API shows of it, and what it carries besides.
pub(crate) struct Entry {
    id: String,
    /// The object as the API returns it.
    value: Value,
    /// A file's content.
    bytes: Bytes,
    /// What lists under it: a job's events, a vector store's files, a response's input items.
    children: Vec<Value>,
}

/// The objects one simulated backend holds, oldest first in each table.
#[derive(Default)]
pub(crate) struct Store {
    tables: [Vec<Entry>; Kind::COUNT],
}

impl Store {
    /// Whether any table holds `id`.
    pub(crate) fn holds(&self, id: &str) -> bool {
        self.tables.iter().flatten().any(|e| e.id == id)
    }

    /// How many objects it holds, of every kind.
    pub(crate) fn len(&self) -> usize {
        self.tables.iter().map(Vec::len).sum()
    }

    fn table(&self, kind: Kind) -> &Vec<Entry> {
        &self.tables[kind as usize]
    }

    fn table_mut(&mut self, kind: Kind) -> &mut Vec<Entry> {
        &mut self.tables[kind as usize]
    }

    /// The object `id` of `kind`, or the 404 that Azure answers for it.
    fn get(&self, kind: Kind, id: &str) -> Result<&Entry, Refusal> {
        self.table(kind)
            .iter()
            .find(|e| e.id == id)
            .ok_or_else(|| Refusal::not_found(kind, id))
    }

    fn get_mut(&mut self, kind: Kind, id: &str) -> Result<&mut Entry, Refusal> {
        self.table_mut(kind)
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or_else(|| Refusal::not_found(kind, id))
    }

    /// Adds `value` (whose `id` names it) with its content and children.
    fn add(&mut self, kind: Kind, value: Value, bytes: Bytes, children: Vec<Value>) {
        let id = value["id"].as_str().unwrap_or_default().to_string();
        self.table_mut(kind).push(Entry {
            id,
            value,
            bytes,
            children,
        });
    }

    fn remove(&mut self, kind: Kind, id: &str) -> Result<Entry, Refusal> {
        let table = self.table_mut(kind);
        let at = table
            .iter()
            .position(|e| e.id == id)
            .ok_or_else(|| Refusal::not_found(kind, id))?;
        Ok(table.remove(at))
    }

    /// The API's view of every object of `kind`, oldest first.
    fn values(&self, kind: Kind) -> impl DoubleEndedIterator<Item = &Value> {
        self.table(kind).iter().map(|e| &e.value)
    }
}

/// Why a request about objects gets no 200.
#[derive(Debug)]
enum Refusal {
    /// 404: no such object here (its kind, its id).
    NotFound(Kind, String),
    /// 404: an `after` or `before` cursor that names nothing in the list.
    NoCursor(String),
    /// 400: a request this API refuses (the message, and the parameter at fault).
    BadRequest(String, Option<&'static str>),
    /// 400: `previous_response_id` names no response stored here.
    PreviousResponse(String),
    /// 404: no such route.
    NoRoute,
}

impl Refusal {
    fn not_found(kind: Kind, id: &str) -> Refusal {
        Refusal::NotFound(kind, id.to_string())
    }

    fn bad(message: impl Into<String>, param: &'static str) -> Refusal {
        Refusal::BadRequest(message.into(), Some(param))
    }

    fn into_response(self) -> Response<Body> {
        match self {
            Refusal::NotFound(kind, id) => {
                azure_error(404, "404", &format!("{} '{id}' not found", kind.noun()))
            }
            Refusal::NoCursor(id) => azure_error(404, "404", &format!("Object '{id}' not found")),
            Refusal::BadRequest(message, param) => super::json(
                400,
                &json!({"error": {"code": "invalid_request_error", "message": message,
                                  "type": "invalid_request_error", "param": param}}),
            ),
            Refusal::PreviousResponse(id) => super::json(
                400,
                &json!({"error": {"code": "previous_response_not_found",
                                  "message": format!("Previous response with id '{id}' not found."),
                                  "type": "invalid_request_error", "param": "previous_response_id"}}),
            ),
            Refusal::NoRoute => azure_error(404, "404", "Resource not found"),
        }
    }
}

/// What a handler answers.
type Answer = Result<Response<Body>, Refusal>;

/// A 200 with `value`.
fn ok(value: &Value) -> Answer {
    Ok(super::json(200, value))
}

/// A request about objects, its path cut into segments after `/openai/` or `/openai/v1/`.
struct Call<'a> {
    method: &'a http::Method,
    segments: Vec<&'a str>,
    /// `d` of `/openai/deployments/d/responses`.
    deployment: Option<&'a str>,
    query: Vec<(String, String)>,
    headers: &'a http::HeaderMap,
    body: &'a Bytes,
}

impl Call<'_> {
    /// The first value of the query parameter `key`.
    fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (an empty body is `{}`).
    fn json(&self) -> Result<Value, Refusal> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(json!({}));
        }
        serde_json::from_slice(self.body).map_err(|_| {
            Refusal::BadRequest(
                "We could not parse the JSON body of your request.".into(),
                None,
            )
        })
    }
}

/// Answers a request about objects; `None` when the path names none (chat completions and
/// the like, which the caller answers).
pub(crate) fn route(
    options: &BackendOptions,
    store: &Mutex<Store>,
    parts: &Parts,
    body: &Bytes,
    break_after: Option<usize>,
) -> Option<Response<Body>> {
    let path = parts.uri.path();
    let rest = path
        .strip_prefix("/openai/v1/")
        .or_else(|| path.strip_prefix("/openai/"))?;
    let mut segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let mut deployment = None;
    if segments.first() == Some(&"deployments") && segments.get(2) == Some(&"responses") {
        deployment = Some(segments[1]);
        segments.drain(..2);
    }
    let query = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let call = Call {
        method: &parts.method,
        segments,
        deployment,
        query,
        headers: &parts.headers,
        body,
    };
    let mut store = lock(store);
    let answer = match *call.segments.first()? {
        "files" | "batches" | "fine_tuning" => files::route(options, &mut store, &call),
        "assistants" | "threads" | "vector_stores" => assistants::route(options, &mut store, &call),
        "responses" => responses::route(options, &mut store, &call, break_after),
        _ => return None,
    };
    Some(answer.unwrap_or_else(Refusal::into_response))
}

/// A list object of `items` (oldest first): newest first unless `order=asc`, cut by the
/// `after` and `before` cursors and `limit` (`default_limit` without it).
fn list<'a>(
    items: impl DoubleEndedIterator<Item = &'a Value>,
    call: &Call,
    default_limit: usize,
) -> Answer {
    let mut items: Vec<&Value> = items.collect();
    if call.query("order") != Some("asc") {
        items.reverse();
    }
    if let Some(after) = call.query("after") {
        let at = position(&items, after)?;
        items.drain(..=at);
    }
    if let Some(before) = call.query("before") {
        let at = position(&items, before)?;
        items.truncate(at);
    }
    let limit = call
        .query("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(default_limit)
        .max(1);
    let has_more = items.len() > limit;
    items.truncate(limit);
    ok(&json!({
        "object": "list",
        "data": items,
        "first_id": items.first().map(|v| &v["id"]),
        "last_id": items.last().map(|v| &v["id"]),
        "has_more": has_more,
    }))
}

/// Where the object `id` is in `items`, or a 404 for a cursor that names nothing.
fn position(items: &[&Value], id: &str) -> Result<usize, Refusal> {
    items
        .iter()
        .position(|v| v["id"] == id)
        .ok_or_else(|| Refusal::NoCursor(id.to_string()))
}

/// The string field `name` of `body`, or a 400 naming it.
fn required<'a>(body: &'a Value, name: &'static str) -> Result<&'a str, Refusal> {
    body[name]
        .as_str()
        .ok_or_else(|| Refusal::bad(format!("Missing required parameter: '{name}'."), name))
}

/// A deletion's answer.
fn deleted(id: &str, object: &str) -> Answer {
    ok(&json!({"id": id, "object": object, "deleted": true}))
}
