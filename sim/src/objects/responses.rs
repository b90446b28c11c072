//! The Responses API (`/responses`): answers whole or streamed as server-sent events, stored
//! unless `store` is false, and chained by `previous_response_id` to responses stored here.

use bytes::Bytes;
use serde_json::{json, Value};

use super::{deleted, list, new_kind_id, now, ok, Answer, Call, Kind, Refusal, Store};
use crate::completions::{event_stream, tokens};
use crate::openai::BackendOptions;

/// Answers a request under `/responses` (or `/deployments/{d}/responses`).
pub(super) fn route(
    options: &BackendOptions,
    store: &mut Store,
    call: &Call,
    break_after: Option<usize>,
) -> Answer {
    match (call.method.as_str(), &call.segments[..]) {
        ("POST", ["responses"]) => create(options, store, call, break_after),
        ("GET", ["responses", id]) => ok(&store.get(Kind::Response, id)?.value),
        ("DELETE", ["responses", id]) => {
            store.remove(Kind::Response, id)?;
            deleted(id, "response")
        }
        ("GET", ["responses", id, "input_items"]) => {
            list(store.get(Kind::Response, id)?.children.iter(), call, 20)
        }
        _ => Err(Refusal::NoRoute),
    }
}

/// Makes a response with the backend's answer.
fn create(
    options: &BackendOptions,
    store: &mut Store,
    call: &Call,
    break_after: Option<usize>,
) -> Answer {
    let body = call.json()?;
    let previous = body["previous_response_id"].as_str();
    if let Some(previous) = previous {
        if store.get(Kind::Response, previous).is_err() {
            return Err(Refusal::PreviousResponse(previous.to_string()));
        }
    }
    if body["input"].is_null() {
        return Err(Refusal::bad(
            "Missing required parameter: 'input'.",
            "input",
        ));
    }
    let model = body["model"]
        .as_str()
        .or(call.deployment)
        .unwrap_or("gpt-4o");
    let input_tokens =
        tokens(&body["input"].to_string()) + tokens(&body["instructions"].to_string());
    let output_tokens = tokens(&options.answer);
    let message_id = new_kind_id(Kind::Message);
    let text = json!({"type": "output_text", "text": options.answer, "annotations": []});
    let message = json!({"type": "message", "id": message_id, "role": "assistant",
                         "status": "completed", "content": [text]});
    let stored = body["store"].as_bool() != Some(false);
    let mut response = json!({
        "id": new_kind_id(Kind::Response), "object": "response", "created_at": now(),
        "status": "completed", "error": null, "incomplete_details": null,
        "instructions": body["instructions"], "max_output_tokens": body["max_output_tokens"],
        "model": model, "output": [message], "parallel_tool_calls": true,
        "previous_response_id": previous, "reasoning": {"effort": null, "summary": null},
        "store": stored, "temperature": body["temperature"].as_f64().unwrap_or(1.0),
        "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
        "top_p": body["top_p"].as_f64().unwrap_or(1.0), "truncation": "disabled",
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                  "total_tokens": input_tokens + output_tokens,
                  "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": 0}},
        "user": body["user"], "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
    });
    if stored {
        let items = input_items(&body["input"]);
        store.add(Kind::Response, response.clone(), Bytes::new(), items);
    }
    if body["stream"].as_bool() != Some(true) {
        return ok(&response);
    }
    // The stream: the response in progress, its message and text part opened, one delta a
    // word, then each closed and the response completed (as the SDKs' stream helpers expect).
    let mut events = Vec::new();
    let mut send = |kind: &str, mut event: Value| {
        event["type"] = json!(kind);
        event["sequence_number"] = json!(events.len());
        events.push(Bytes::from(format!("event: {kind}\ndata: {event}\n\n")));
    };
    let full = response.clone();
    response["status"] = json!("in_progress");
    response["output"] = json!([]);
    response["usage"] = Value::Null;
    send("response.created", json!({"response": response}));
    send("response.in_progress", json!({"response": response}));
    let mut opened = message.clone();
    opened["status"] = json!("in_progress");
    opened["content"] = json!([]);
    send(
        "response.output_item.added",
        json!({"output_index": 0, "item": opened}),
    );
    let at = json!({"item_id": message_id, "output_index": 0, "content_index": 0});
    let with = |extra: Value| {
        let mut event = at.clone();
        if let (Some(e), Some(x)) = (event.as_object_mut(), extra.as_object()) {
            e.extend(x.clone());
        }
        event
    };
    let empty = json!({"type": "output_text", "text": "", "annotations": []});
    send("response.content_part.added", with(json!({"part": empty})));
    for word in options.answer.split_inclusive(' ') {
        send(
            "response.output_text.delta",
            with(json!({"delta": word, "logprobs": []})),
        );
    }
    send(
        "response.output_text.done",
        with(json!({"text": options.answer, "logprobs": []})),
    );
    send("response.content_part.done", with(json!({"part": text})));
    send(
        "response.output_item.done",
        json!({"output_index": 0, "item": message}),
    );
    send("response.completed", json!({"response": full}));
    Ok(event_stream(events, options.chunk_delay, break_after))
}

/// The input items of a response's `input`: a string (or a list's string) is one user message.
fn input_items(input: &Value) -> Vec<Value> {
    let items = match input {
        Value::Array(items) => items.clone(),
        other => vec![json!({"type": "message", "role": "user", "content": other})],
    };
    items
        .into_iter()
        .map(|item| {
            let mut item = match item {
                Value::Object(_) => item,
                other => json!({"type": "message", "role": "user", "content": other}),
            };
            if item.get("id").is_none() {
                item["id"] = json!(new_kind_id(Kind::Message));
            }
            if item.get("type").is_none() {
                item["type"] = json!("message");
            }
            if let Some(text) = item["content"].as_str() {
                item["content"] = json!([{"type": "input_text", "text": text}]);
            }
            item
        })
        .collect()
}
