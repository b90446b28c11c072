//! The deployment a request is for (from its path or its body), and the request rewritten for a
//! backend that knows the deployment by another name ([`super::Naming`]).

use bytes::Bytes;
use serde::Deserialize;

const DEPLOYMENTS: &str = "/openai/deployments/";

/// The deployment a request names: `{name}` in `/openai/deployments/{name}/...`, or `model`
/// in the JSON body of `/openai/v1/...` and `/openai/responses` requests.
pub fn requested(path: &str, body: &[u8]) -> Option<String> {
    if let Some(rest) = path.strip_prefix(DEPLOYMENTS) {
        let name = rest.split('/').next().unwrap_or("");
        return (!name.is_empty()).then(|| name.to_string());
    }
    if named_in_body(path) {
        #[derive(Deserialize)]
        struct Model {
            model: Option<String>,
        }
        return serde_json::from_slice::<Model>(body).ok()?.model;
    }
    None
}

/// Whether requests on `path` name their deployment in the body's `model` (`/openai/v1/...`,
/// `/openai/responses`) rather than in the path.
pub fn named_in_body(path: &str) -> bool {
    path.starts_with("/openai/v1/") || path.starts_with("/openai/responses")
}

/// `path_and_query` with the deployment segment renamed to `to`, or `None` when the path
/// names no deployment.
pub fn rename_in_path(path_and_query: &[u8], to: &str) -> Option<Vec<u8>> {
    let rest = path_and_query.strip_prefix(DEPLOYMENTS.as_bytes())?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let mut out = Vec::with_capacity(path_and_query.len() + to.len());
    out.extend_from_slice(DEPLOYMENTS.as_bytes());
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(&rest[end..]);
    Some(out)
}

/// The JSON `body` with its `model` set to `to` (other fields keep their order), or `None`
/// when the body is not a JSON object.
pub fn rename_in_body(body: &[u8], to: &str) -> Option<Bytes> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.as_object_mut()?.insert("model".into(), to.into());
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployment_comes_from_the_path_or_the_body() {
        assert_eq!(
            requested("/openai/deployments/gpt-4o/chat/completions", b"").as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(
            requested(
                "/openai/v1/chat/completions",
                br#"{"messages":[],"model":"gpt-4o-mini"}"#
            )
            .as_deref(),
            Some("gpt-4o-mini")
        );
        assert_eq!(
            requested("/openai/responses", br#"{"model":"o3"}"#).as_deref(),
            Some("o3")
        );
        assert_eq!(requested("/openai/v1/files", b"--multipart--"), None);
        assert_eq!(requested("/openai/models", b""), None);
        assert_eq!(requested("/openai/deployments/", b""), None);
    }

    #[test]
    fn renaming_keeps_everything_else() {
        let p = rename_in_path(
            b"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            "gpt-4o-eastus",
        )
        .unwrap();
        assert_eq!(
            p,
            b"/openai/deployments/gpt-4o-eastus/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            rename_in_path(b"/openai/deployments/d?x=1", "e").unwrap(),
            b"/openai/deployments/e?x=1"
        );
        assert_eq!(rename_in_path(b"/openai/v1/chat/completions", "e"), None);
        let b = rename_in_body(
            br#"{"stream":true,"model":"gpt-4o","messages":[]}"#,
            "gpt-4o-eu",
        )
        .unwrap();
        assert_eq!(
            &b[..],
            br#"{"stream":true,"model":"gpt-4o-eu","messages":[]}"#
        );
        assert_eq!(rename_in_body(b"[1]", "x"), None);
    }
}
