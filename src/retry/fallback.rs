//! When a request goes to its deployment's next fallback (`fallbacks`) rather than the client
//! getting its deployment's answer: the answer was a backend's 400 with error code
//! `context_length_exceeded` or `content_filter` (a filtered prompt), or no backend could serve
//! it (`unavailable`: the throttling 429, or its tries spent on failures).

use serde::Deserialize;

use crate::config::FallbackCause;

/// The most of a 400's body read to find its error code: Azure's error bodies are a few hundred
/// bytes (a filtered prompt's, with its categories, about one kilobyte); a larger one cannot be
/// held, and the client gets a 502.
pub const ERROR_BODY_MAX: usize = 1 << 20;

/// The fallback cause a backend's 400 `body` names in its `error.code`, if any.
pub fn cause_of(body: &[u8]) -> Option<FallbackCause> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        error: Error<'a>,
    }
    #[derive(Deserialize)]
    struct Error<'a> {
        #[serde(borrow)]
        code: Option<std::borrow::Cow<'a, str>>,
    }
    let code = serde_json::from_slice::<Body>(body).ok()?.error.code?;
    match code.as_ref() {
        "context_length_exceeded" => Some(FallbackCause::ContextLengthExceeded),
        "content_filter" => Some(FallbackCause::ContentFilter),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azures_400s_name_their_cause() {
        let context = r#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        assert_eq!(
            cause_of(context.as_bytes()),
            Some(FallbackCause::ContextLengthExceeded)
        );
        let filtered = r#"{"error":{"message":"The response was filtered","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"violence":{"filtered":true,"severity":"medium"}}}}}"#;
        assert_eq!(
            cause_of(filtered.as_bytes()),
            Some(FallbackCause::ContentFilter)
        );
        for other in [
            r#"{"error":{"code":"BadRequest","message":"x"}}"#,
            r#"{"error":{"code":null}}"#,
            r#"{"error":"content_filter"}"#,
            "not json",
            "",
        ] {
            assert_eq!(cause_of(other.as_bytes()), None, "{other}");
        }
    }

    /// With a fallback, a try that failed with none left is not delivered, and a 400 is read
    /// to see its code; without one, both are the client's.
    #[test]
    fn the_forward_policy_falls_back_only_on_its_causes() {
        use crate::outcome::Sent;
        use crate::retry::test_support::{status, try_on, whole};
        use crate::retry::{Forward, Policy, Settled, Verdict};
        use std::collections::BTreeSet;
        let pool = crate::balance::test_pool(&[(0, 1)]);
        let now = std::time::Instant::now();
        let policy = |on| {
            let (selection, _) = pool.select(Some("gpt-4o"), None, now).unwrap();
            Forward::new(selection, 3).falling_back_on(on, 0)
        };
        let all: BTreeSet<_> = FallbackCause::ALL.into_iter().collect();
        let only_unavailable = BTreeSet::from([FallbackCause::Unavailable]);
        let none = BTreeSet::new();
        let failed = try_on(0, 3, Sent::EntraToken, status(503));
        let refused = try_on(0, 1, Sent::EntraToken, status(400));
        // A 503 on the last try.
        assert!(matches!(
            policy(&all).decide(&failed),
            Verdict::Fallback(FallbackCause::Unavailable)
        ));
        assert!(matches!(policy(&none).decide(&failed), Verdict::Deliver));
        assert!(matches!(
            policy(&all).decide(&refused),
            Verdict::Read(ERROR_BODY_MAX)
        ));
        assert!(matches!(
            policy(&only_unavailable).decide(&refused),
            Verdict::Deliver
        ));
        let filtered = r#"{"error":{"code":"content_filter","message":"x"}}"#;
        assert!(matches!(
            policy(&all).settle(&refused, whole(400, filtered)),
            Settled::Fallback(FallbackCause::ContentFilter)
        ));
        let other = r#"{"error":{"code":"invalid_value","message":"x"}}"#;
        assert!(matches!(
            policy(&all).settle(&refused, whole(400, other)),
            Settled::Deliver(_)
        ));
    }
}
