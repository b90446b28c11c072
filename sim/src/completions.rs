//! The answers of the inference routes: chat completions (whole, or streamed as server-sent
//! events), completions and embeddings, and the simulator's token count that their `usage` and
//! the quota (the `quota` module) use.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::{json, Value};

use super::openai::BackendOptions;
use super::{json, Body};

/// The simulator's token count: words.
pub(crate) fn tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

pub(crate) fn chat(
    options: &BackendOptions,
    request: &Value,
    model: &str,
    break_after: Option<usize>,
) -> Response<Body> {
    if request["stream"].as_bool() != Some(true) {
        return json(200, &chat_completion(options, request, model));
    }
    let prompt = tokens(&request["messages"].to_string());
    let completion = tokens(&options.answer);
    let id = "chatcmpl-sim";
    let chunk = |delta: Value, finish: Value| -> Bytes {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                       "system_fingerprint": "fp_sim",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]});
        Bytes::from(format!("data: {c}\n\n"))
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let words: Vec<&str> = options.answer.split_inclusive(' ').collect();
    events.extend(
        words
            .iter()
            .map(|w| chunk(json!({"content": w}), Value::Null)),
    );
    events.push(chunk(json!({}), json!("stop")));
    if request["stream_options"]["include_usage"].as_bool() == Some(true) {
        let u = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                       "choices": [], "usage": usage(prompt, completion)});
        events.push(Bytes::from(format!("data: {u}\n\n")));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    event_stream(events, options.chunk_delay, break_after)
}

/// The `chat.completion` that answers `request` (whole, and in a batch's output).
pub(crate) fn chat_completion(options: &BackendOptions, request: &Value, model: &str) -> Value {
    let prompt = tokens(&request["messages"].to_string());
    let completion = tokens(&options.answer);
    json!({
        "id": "chatcmpl-sim", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "system_fingerprint": "fp_sim",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                     "message": {"role": "assistant", "content": options.answer, "refusal": null}}],
        "usage": usage(prompt, completion),
    })
}

/// A 200 `text/event-stream` of `events`, `delay` apart, broken after `break_after` of them.
pub(crate) fn event_stream(
    events: Vec<Bytes>,
    delay: Duration,
    break_after: Option<usize>,
) -> Response<Body> {
    let stream = futures_util::stream::unfold(
        (events.into_iter(), 0usize),
        move |(mut events, sent)| async move {
            if break_after == Some(sent) {
                return Some((
                    Err(io::Error::other("simulated broken stream")),
                    (events, sent + 1),
                ));
            }
            let next = events.next()?;
            if sent > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((Ok(Frame::data(next)), (events, sent + 1)))
        },
    );
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(StreamBody::new(stream).boxed())
        .unwrap_or_default()
}

pub(crate) fn completion(answer: &str, model: &str) -> Value {
    json!({"id": "cmpl-sim", "object": "text_completion", "created": 1_700_000_000, "model": model,
           "choices": [{"index": 0, "text": answer, "finish_reason": "stop", "logprobs": null}],
           "usage": usage(1, tokens(answer))})
}

/// The embeddings that answer `request` (also in a batch's output).
pub(crate) fn embeddings(request: &Value, model: &str) -> Value {
    let inputs = match &request["input"] {
        Value::Array(items) => items.len().max(1),
        _ => 1,
    };
    let data: Vec<Value> = (0..inputs)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.0023, -0.0091, 0.0154, 0.0071, -0.0032, 0.0118, -0.0004, 0.0207]}))
        .collect();
    json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": inputs, "total_tokens": inputs}})
}
