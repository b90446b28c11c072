//! The stateful objects a request names: in its path (`/openai/files/{id}/content`), and the
//! body keys that name them (`previous_response_id`, `input_file_id`, `file_ids`, ...; read
//! from the body by [`crate::request::BodyFacts`]); and whether it lists a collection.

use http::Method;
use smallvec::SmallVec;

/// Body keys whose string value (or array of strings) names an object.
pub const BODY_KEYS: [&str; 9] = [
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
pub const MAX_DEPTH: usize = 8;

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

/// The collection a request lists (`GET /openai/files`), from what [`super::collection`] found
/// in its path, when it lists one that every backend has a part of. Responses and threads have
/// no list; a thread's messages and runs, and a vector store's files, live with it and are not
/// merged.
pub fn list_in(method: &Method, found: Option<(&'static str, &str)>) -> Option<&'static str> {
    if method != Method::GET {
        return None;
    }
    match found? {
        (c, "" | "/") if c != "responses" && c != "threads" => Some(c),
        _ => None,
    }
}

/// The object id a path names (the segment after a stateful collection's), from what
/// [`super::collection`] found in it.
pub fn object_in<'p>(found: Option<(&'static str, &'p str)>) -> Option<&'p str> {
    let (collection, rest) = found?;
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

/// Whether a `DELETE` deletes the object its path names (`DELETE /openai/files/{id}`), not
/// something that lives with it (`/threads/{id}/messages/{msg}`), from what
/// [`super::collection`] found in the path.
pub fn deletes_in(found: Option<(&'static str, &str)>) -> bool {
    found.is_some_and(|(_, rest)| {
        let rest = rest.strip_prefix('/').unwrap_or_default();
        !rest.is_empty() && !rest.trim_end_matches('/').contains('/')
    })
}

/// Adds `id` to `ids` when it can be an object's id, is not there yet, and there is room.
pub fn push_id(ids: &mut SmallVec<[String; 2]>, id: &str) {
    if is_id(id) && ids.len() < MAX_NAMED && !ids.iter().any(|n| n == id) {
        ids.push(id.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::super::collection;
    use super::*;

    fn list_of(method: &Method, path: &str) -> Option<&'static str> {
        list_in(method, collection(path))
    }

    fn in_path(path: &str) -> Option<&str> {
        object_in(collection(path))
    }

    fn deletes_named(path: &str) -> bool {
        deletes_in(collection(path))
    }

    #[test]
    fn objects_in_the_path_are_named() {
        assert_eq!(in_path("/openai/files/file-1/content"), Some("file-1"));
        assert_eq!(
            in_path("/openai/v1/batches/batch_2/cancel"),
            Some("batch_2")
        );
        assert_eq!(
            in_path("/openai/threads/thread_3/runs/run_4"),
            Some("thread_3")
        );
        assert_eq!(in_path("/openai/responses/resp_5"), Some("resp_5"));
        assert_eq!(
            in_path("/openai/fine_tuning/jobs/ftjob-6/events"),
            Some("ftjob-6")
        );
        assert_eq!(in_path("/openai/files"), None);
        assert_eq!(in_path("/openai/threads/runs"), None);
        assert_eq!(in_path("/openai/v1/responses/input_tokens"), None);
        assert_eq!(in_path("/openai/files/..%2f"), None);
        assert_eq!(in_path(&format!("/openai/files/{}", "x".repeat(200))), None);
        assert_eq!(in_path("/openai/deployments/gpt-4o/chat/completions"), None);
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
