//! Stateful objects: files, batches, fine-tuning jobs, assistants, threads, vector stores and
//! stored responses live on the one Azure OpenAI resource that made them. This module says
//! which objects a request names ([`named`]), where each lives ([`locations`]), and which
//! objects an answer made ([`learn`]); the proxy's search for an object's backend uses all three.

pub mod learn;
pub mod locations;
pub mod named;

pub use learn::CreatedReader;
pub use locations::{LocalLocations, ObjectLocations};
pub use named::Named;

/// The collections of stateful objects, as their paths name them after `/openai/` or
/// `/openai/v1/`. An object's id is the segment after its collection's.
pub const COLLECTIONS: [&str; 7] = [
    "files",
    "batches",
    "fine_tuning/jobs",
    "assistants",
    "threads",
    "vector_stores",
    "responses",
];

/// The rest of `path` after `/openai/v1/`, `/openai/` or `/openai/deployments/{d}/` (where
/// Responses may also be made), when it begins with a stateful collection: (collection, rest
/// after it).
pub fn collection(path: &str) -> Option<(&'static str, &str)> {
    let rest = path
        .strip_prefix("/openai/v1/")
        .or_else(|| path.strip_prefix("/openai/"))?;
    let rest = match rest.strip_prefix("deployments/") {
        Some(d) => d.split_once('/')?.1,
        None => rest,
    };
    COLLECTIONS.iter().find_map(|&c| {
        let after = rest.strip_prefix(c)?;
        (after.is_empty() || after.starts_with('/')).then_some((c, after))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stateful_collections_are_found_under_every_prefix() {
        assert_eq!(collection("/openai/files"), Some(("files", "")));
        assert_eq!(
            collection("/openai/v1/files/file-1/content"),
            Some(("files", "/file-1/content"))
        );
        assert_eq!(
            collection("/openai/fine_tuning/jobs/ftjob-1/cancel"),
            Some(("fine_tuning/jobs", "/ftjob-1/cancel"))
        );
        assert_eq!(
            collection("/openai/deployments/gpt-4o/responses"),
            Some(("responses", ""))
        );
        assert_eq!(collection("/openai/filesystem"), None);
        assert_eq!(
            collection("/openai/deployments/gpt-4o/chat/completions"),
            None
        );
        assert_eq!(collection("/other/files"), None);
    }
}
