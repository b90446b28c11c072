//! The prompts a simulated deployment refuses with a 400, as Azure OpenAI does before its model
//! writes a word: a prompt longer than the model's context window
//! ([`BackendOptions::context_window`], code `context_length_exceeded`) and a prompt that
//! Azure's content filter blocks ([`BackendOptions::blocked_phrase`], code `content_filter`).
//! A proxy's fallbacks react to these two (another deployment, of a larger model or with another
//! filter, may take the request), so the simulator gives them as the behaviour of the deployment
//! a backend stands for rather than as a scripted [`Fault`](crate::Fault).
//!
//! Only the inference requests that carry a prompt are checked: chat completions, completions
//! and the Responses API's create (not embeddings, whose input Azure neither filters nor
//! measures against a chat model's window). The checks come after the key check and before the
//! quota and the latency: Azure charges nothing for a refused prompt and refuses it at once. A
//! streamed request is refused alike, with the same JSON body and no stream. Every backend stands
//! for one deployment's model, so the deployment a request names does not matter.
//!
//! Choices made where Azure's behaviour is not documented: a prompt both too long and blocked is
//! refused for its length (the cheaper check, made on the request's size alone); the message and
//! `param` are those of chat completions whatever the operation; and the content filter's verdict
//! is always the same one (violence, medium).

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};

use hyper::Response;
use serde_json::{json, Value};

use super::openai::BackendOptions;
use super::quota::Operation;
use super::{json, Body};

/// What one backend refuses, and how many it has refused.
pub(crate) struct Refusals {
    context_window: Option<u64>,
    /// The blocked phrase in lower case (an empty one blocks nothing).
    blocked_phrase: Option<String>,
    refused: AtomicU64,
}

impl Refusals {
    pub(crate) fn new(options: &BackendOptions) -> Refusals {
        Refusals {
            context_window: options.context_window,
            blocked_phrase: options
                .blocked_phrase
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(str::to_lowercase),
            refused: AtomicU64::new(0),
        }
    }

    /// The 400 that refuses a request of `operation` (its body `body`, read as `request`), or
    /// `None` when the deployment takes it. A refusal is counted.
    pub(crate) fn check(
        &self,
        operation: Option<Operation>,
        body: &[u8],
        request: &Value,
    ) -> Option<Response<Body>> {
        let Some(Operation::ChatCompletions | Operation::Completions | Operation::Responses) =
            operation
        else {
            return None;
        };
        let tokens = estimate(body, request);
        let blocked = |phrase: &String| contains(body, request, phrase);
        let refusal = match self.context_window {
            Some(window) if tokens > window => context_length_exceeded(window, tokens),
            _ if self.blocked_phrase.as_ref().is_some_and(blocked) => content_filtered(),
            _ => return None,
        };
        self.refused.fetch_add(1, Ordering::Relaxed);
        Some(refusal)
    }

    /// Prompts refused so far, for either reason.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The tokens a request is taken to need, against the context window: its body's bytes over 4
/// (rounded up; about 4 bytes a token in English text, counted on the whole JSON) plus the most
/// it may write (`max_tokens`, `max_completion_tokens` or `max_output_tokens`, the first it
/// names), since the window holds the prompt and the answer together.
fn estimate(body: &[u8], request: &Value) -> u64 {
    let prompt = u64::try_from(body.len().div_ceil(4)).unwrap_or(u64::MAX);
    let output = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|name| request[*name].as_u64())
        .unwrap_or(0);
    prompt.saturating_add(output)
}

/// Whether the body holds `phrase` (lower case), whatever the case: in its bytes, or in one of
/// its JSON strings once unescaped (a client may send `\u00e9` for `é`, or `\"` for a quote).
fn contains(body: &[u8], request: &Value, phrase: &str) -> bool {
    fn in_strings(value: &Value, phrase: &str) -> bool {
        match value {
            Value::String(s) => s.to_lowercase().contains(phrase),
            Value::Array(items) => items.iter().any(|v| in_strings(v, phrase)),
            Value::Object(fields) => fields.values().any(|v| in_strings(v, phrase)),
            _ => false,
        }
    }
    String::from_utf8_lossy(body)
        .to_lowercase()
        .contains(phrase)
        || in_strings(request, phrase)
}

/// Azure's 400 for a prompt of `tokens` over a context window of `window`.
fn context_length_exceeded(window: u64, tokens: u64) -> Response<Body> {
    let message = format!(
        "This model's maximum context length is {window} tokens. However, your messages \
         resulted in {tokens} tokens. Please reduce the length of the messages."
    );
    json(
        400,
        &json!({"error": {
            "message": message,
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }}),
    )
}

/// Azure's 400 for a prompt that its content filter blocks.
fn content_filtered() -> Response<Body> {
    let message = "The response was filtered due to the prompt triggering Azure OpenAI's content \
                   management policy. Please modify your prompt and retry. To learn more about \
                   our content filtering policies please read our documentation: \
                   https://go.microsoft.com/fwlink/?linkid=2198766";
    json(
        400,
        &json!({"error": {
            "message": message,
            "type": null,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {
                    "hate": {"filtered": false, "severity": "safe"},
                    "jailbreak": {"filtered": false, "detected": false},
                    "self_harm": {"filtered": false, "severity": "safe"},
                    "sexual": {"filtered": false, "severity": "safe"},
                    "violence": {"filtered": true, "severity": "medium"},
                },
            },
        }}),
    )
}
