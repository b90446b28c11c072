//! The answers of the inference routes: chat completions (whole, or streamed as server-sent
//! events), completions and embeddings (derived from the input's text, so near-duplicates are
//! close), and the simulator's token count that their `usage` and the quota (the `quota` module)
//! use.

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

/// The dimension of the simulator's embeddings.
pub(crate) const EMBEDDING_DIMENSIONS: usize = 256;

/// The lengths of the character n-grams that an embedding counts: bigrams and trigrams.
const NGRAMS: [usize; 2] = [2, 3];

/// The embeddings that answer `request` (also in a batch's output): one for each of its inputs
/// ([`input_texts`]), in order, each derived from its text by [`embedding`].
pub(crate) fn embeddings(request: &Value, model: &str) -> Value {
    let input = &request["input"];
    let data: Vec<Value> = input_texts(input)
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embedding(text)}))
        .collect();
    // One token an input (or a token array's ids), as before the embeddings were derived.
    let tokens = match input {
        Value::Array(items) => items.len().max(1),
        _ => 1,
    };
    json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}

/// The texts that `input` embeds, one an embedding: a string; each of an array of strings; a
/// token array (of numbers) as one text of its ids; each of an array of token arrays. Anything
/// else (none, an empty array) is one text, so a request always gets an embedding.
fn input_texts(input: &Value) -> Vec<String> {
    match input {
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            vec![token_text(items)]
        }
        Value::Array(items) if !items.is_empty() => items.iter().map(item_text).collect(),
        other => vec![item_text(other)],
    }
}

/// The text of one input: a string itself, a token array its ids, nothing an empty text.
fn item_text(item: &Value) -> String {
    match item {
        Value::String(text) => text.clone(),
        Value::Array(tokens) => token_text(tokens),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A token array as text (`[9906, 1917]` as `9906 1917`), so similar arrays embed close too.
fn token_text(tokens: &[Value]) -> String {
    let ids: Vec<String> = tokens.iter().map(Value::to_string).collect();
    ids.join(" ")
}

/// The simulator's embedding of `text`: a deterministic stand-in for a model's, so that a response
/// cache's semantic lookup can be tested against it. It promises:
/// - the same text gets the same vector, bit for bit, in every process (no seeded hasher);
/// - near-duplicates (case, punctuation, a contraction: `What is the capital of France?`,
///   `what is the capital of France`, `What's the capital of France?`) are close, cosine >= 0.9;
/// - unrelated texts (`Write a haiku about autumn leaves`) are far, cosine <= 0.5.
///
/// The scheme: lowercase; every character that is not alphanumeric becomes a space; runs of spaces
/// collapse and the text is padded with a space each side. Each character bigram and trigram is
/// hashed with FNV-1a (64 bits): its low bits pick one of [`EMBEDDING_DIMENSIONS`] dimensions,
/// its top bit whether it counts +1 or -1 there. The counts are then L2-normalized. A text without
/// alphanumerics gets a fixed unit vector (the first axis). It is lexical, not semantic:
/// paraphrases with other words are far.
pub(crate) fn embedding(text: &str) -> Vec<f64> {
    let mut vector = vec![0.0; EMBEDDING_DIMENSIONS];
    let normal = normalize(text);
    let padded: Vec<char> = format!(" {normal} ").chars().collect();
    for n in NGRAMS {
        for gram in padded.windows(n) {
            let hash = fnv1a(gram);
            let sign = if hash >> 63 == 1 { 1.0 } else { -1.0 };
            vector[(hash % EMBEDDING_DIMENSIONS as u64) as usize] += sign;
        }
    }
    let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    if normal.is_empty() || norm == 0.0 {
        vector.fill(0.0);
        vector[0] = 1.0;
        return vector;
    }
    vector.iter_mut().for_each(|x| *x /= norm);
    vector
}

/// `text` lowercased, each non-alphanumeric character a space, words one space apart.
fn normalize(text: &str) -> String {
    let spaced: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The 64-bit FNV-1a hash of `chars`' UTF-8: stable across processes and builds.
fn fnv1a(chars: &[char]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buffer = [0u8; 4];
    for c in chars {
        for byte in c.encode_utf8(&mut buffer).bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests;
