//! The stateful objects a request names: in its path (`/openai/files/{id}/content`) or in its
//! JSON body (`previous_response_id`, `input_file_id`, `file_ids`, ...), and whether it lists a
//! collection.

use http::Method;
use serde_json::Value;
use smallvec::SmallVec;

use super::collection;

/// Body keys whose string value (or array of strings) names an object.
const BODY_KEYS: [&str; 9] = [
    "previous_response_id",
    "input_file_id",
    "training_file",
    "validation_file",
    "file_id",
    "file_ids",
    "thread_id",
    "assistant_id",
    "vector_store_ids",
];

/// How deep into a body the keys are looked for (assistants name files and vector stores in
/// `tool_resources.code_interpreter.file_ids`, messages in `attachments[].file_id`).
const MAX_DEPTH: usize = 8;

/// At most this many objects are taken from one request.
const MAX_NAMED: usize = 16;

/// The longest id taken (Azure's are under 64 characters).
const MAX_ID: usize = 128;

/// Segments after a collection that are actions, not objects: `POST /openai/threads/runs`
/// makes a thread and its run; `responses/input_tokens` counts, `responses/compact` compacts.
const VERBS: [(&str, &str); 3] = [
    ("threads", "runs"),
    ("responses", "input_tokens"),
    ("responses", "compact"),
];

/// The objects a request names: the one in its path first, then those in its body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Named {
    pub ids: SmallVec<[String; 2]>,
    /// The first id is the path's.
    pub in_path: bool,
}

impl Named {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The objects a request on `path` with `body` names.
pub fn names(path: &str, body: &[u8]) -> Named {
    let mut named = Named::default();
    if let Some(id) = in_path(path) {
        named.ids.push(id.to_string());
        named.in_path = true;
    }
    // Most bodies (chat completions) name nothing: look for a key's tail before parsing.
    let may_name = |tail: &[u8]| memchr::memmem::find(body, tail).is_some();
    if body.first() == Some(&b'{') && (may_name(b"_id") || may_name(b"_file\"")) {
        if let Ok(value) = serde_json::from_slice::<Value>(body) {
            in_body(&value, 0, &mut named);
        }
    }
    named
}

/// The collection a request lists (`GET /openai/files`), when it lists one that every backend
/// has a part of. Responses and threads have no list; a thread's messages and runs, and a
/// vector store's files, live with it and are not merged.
pub fn list_of(method: &Method, path: &str) -> Option<&'static str> {
    if method != Method::GET {
        return None;
    }
    match collection(path)? {
        (c, "" | "/") if c != "responses" && c != "threads" => Some(c),
        _ => None,
    }
}

/// The object id in `path`: the segment after a stateful collection's.
fn in_path(path: &str) -> Option<&str> {
    let (collection, rest) = collection(path)?;
    let id = rest.strip_prefix('/')?.split('/').next()?;
    let verb = VERBS.contains(&(collection, id));
    (is_id(id) && !verb).then_some(id)
}

/// Whether `id` can be an object's id: letters, digits, `-` and `_`, at most [`MAX_ID`].
fn is_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether a `DELETE` of `path` deletes the object it names (`DELETE /openai/files/{id}`),
/// not something that lives with it (`/threads/{id}/messages/{msg}`).
pub fn deletes_named(path: &str) -> bool {
    collection(path).is_some_and(|(_, rest)| {
        let rest = rest.strip_prefix('/').unwrap_or_default();
        !rest.is_empty() && !rest.trim_end_matches('/').contains('/')
    })
}

fn in_body(value: &Value, depth: usize, named: &mut Named) {
    if depth > MAX_DEPTH || named.ids.len() >= MAX_NAMED {
        return;
    }
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if BODY_KEYS.contains(&key.as_str()) {
                    match v {
                        Value::String(id) => push(named, id),
                        Value::Array(items) => items
                            .iter()
                            .filter_map(Value::as_str)
                            .for_each(|id| push(named, id)),
                        _ => {}
                    }
                } else if key != "metadata" {
                    // A client's own `metadata` (free-form tags) names no object.
                    in_body(v, depth + 1, named);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| in_body(v, depth + 1, named)),
        _ => {}
    }
}

fn push(named: &mut Named, id: &str) {
    if is_id(id) && named.ids.len() < MAX_NAMED && !named.ids.iter().any(|n| n == id) {
        named.ids.push(id.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(path: &str, body: &str) -> Vec<String> {
        names(path, body.as_bytes()).ids.into_vec()
    }

    #[test]
    fn objects_in_the_path_are_named() {
        assert_eq!(ids("/openai/files/file-1/content", ""), ["file-1"]);
        assert_eq!(ids("/openai/v1/batches/batch_2/cancel", ""), ["batch_2"]);
        assert_eq!(ids("/openai/threads/thread_3/runs/run_4", ""), ["thread_3"]);
        assert_eq!(ids("/openai/responses/resp_5", ""), ["resp_5"]);
        assert_eq!(
            ids("/openai/fine_tuning/jobs/ftjob-6/events", ""),
            ["ftjob-6"]
        );
        assert!(ids("/openai/files", "").is_empty());
        assert!(ids("/openai/threads/runs", "").is_empty());
        assert!(ids("/openai/v1/responses/input_tokens", "").is_empty());
        assert!(ids("/openai/files/..%2f", "").is_empty());
        assert!(ids(&format!("/openai/files/{}", "x".repeat(200)), "").is_empty());
        assert!(ids("/openai/deployments/gpt-4o/chat/completions", "").is_empty());
    }

    #[test]
    fn objects_in_the_body_are_named_at_any_depth() {
        assert_eq!(
            ids(
                "/openai/v1/responses",
                r#"{"model":"gpt-4o","previous_response_id":"resp_1","input":"hi"}"#
            ),
            ["resp_1"]
        );
        assert_eq!(
            ids("/openai/batches", r#"{"input_file_id":"file-1"}"#),
            ["file-1"]
        );
        assert_eq!(
            ids(
                "/openai/assistants",
                r#"{"tool_resources":{"code_interpreter":{"file_ids":["file-1","file-2"]},
                    "file_search":{"vector_store_ids":["vs_1"]}}}"#
            ),
            ["file-1", "file-2", "vs_1"]
        );
        assert_eq!(
            ids(
                "/openai/threads/thread_1/runs",
                r#"{"assistant_id":"asst_1","thread_id":"thread_1"}"#
            ),
            ["thread_1", "asst_1"]
        );
        // Tags are the client's: they name nothing.
        assert!(ids(
            "/openai/v1/chat/completions",
            r#"{"metadata":{"thread_id":"mine"},"messages":[]}"#
        )
        .is_empty());
        // No key: not even parsed.
        assert!(ids("/openai/v1/chat/completions", r#"{"messages":[]}"#).is_empty());
        assert!(ids("/openai/batches", "not json _id").is_empty());
    }

    #[test]
    fn only_a_delete_of_the_object_itself_deletes_it() {
        assert!(deletes_named("/openai/files/file-1"));
        assert!(deletes_named("/openai/v1/assistants/asst_1/"));
        assert!(!deletes_named("/openai/threads/thread_1/messages/msg_1"));
        assert!(!deletes_named("/openai/vector_stores/vs_1/files/file-1"));
        assert!(!deletes_named("/openai/files"));
    }

    #[test]
    fn lists_are_plain_gets_of_a_collection() {
        assert_eq!(list_of(&Method::GET, "/openai/files"), Some("files"));
        assert_eq!(list_of(&Method::GET, "/openai/v1/batches"), Some("batches"));
        assert_eq!(list_of(&Method::POST, "/openai/files"), None);
        assert_eq!(list_of(&Method::GET, "/openai/files/file-1"), None);
        assert_eq!(list_of(&Method::GET, "/openai/threads"), None);
        assert_eq!(list_of(&Method::GET, "/openai/responses"), None);
    }
}
