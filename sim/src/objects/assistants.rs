//! The Assistants API: assistants, threads with their messages and runs (each run done at once,
//! answering with the backend's answer), and vector stores with their files.

use bytes::Bytes;
use serde_json::{json, Value};

use super::{deleted, list, new_kind_id, now, ok, required, Answer, Call, Kind, Refusal, Store};
use crate::completions::tokens;
use crate::openai::BackendOptions;

/// Answers a request under `/assistants`, `/threads` or `/vector_stores`.
pub(super) fn route(options: &BackendOptions, store: &mut Store, call: &Call) -> Answer {
    match (call.method.as_str(), &call.segments[..]) {
        ("POST", ["assistants"]) => {
            let body = call.json()?;
            check_resources(store, &body["tool_resources"])?;
            let mut assistant = json!({
                "id": new_kind_id(Kind::Assistant), "object": "assistant", "created_at": now(),
                "name": null, "description": null, "model": "gpt-4o", "instructions": null,
                "tools": [], "tool_resources": {}, "metadata": {}, "temperature": 1.0,
                "top_p": 1.0, "response_format": "auto",
            });
            merge(&mut assistant, &body);
            store.add(Kind::Assistant, assistant.clone(), Bytes::new(), Vec::new());
            ok(&assistant)
        }
        ("GET", ["assistants"]) => list(store.values(Kind::Assistant), call, 20),
        ("GET", ["assistants", id]) => ok(&store.get(Kind::Assistant, id)?.value),
        ("POST", ["assistants", id]) => modify(store, Kind::Assistant, id, &call.json()?),
        ("DELETE", ["assistants", id]) => {
            store.remove(Kind::Assistant, id)?;
            deleted(id, "assistant.deleted")
        }
        ("POST", ["threads"]) => ok(&new_thread(store, &call.json()?)?),
        ("POST", ["threads", "runs"]) => {
            let body = call.json()?;
            store.get(Kind::Assistant, required(&body, "assistant_id")?)?;
            let thread = new_thread(store, &body["thread"])?;
            run(
                options,
                store,
                thread["id"].as_str().unwrap_or_default(),
                &body,
            )
        }
        ("GET", ["threads", id]) => ok(&store.get(Kind::Thread, id)?.value),
        ("POST", ["threads", id]) => modify(store, Kind::Thread, id, &call.json()?),
        ("DELETE", ["threads", id]) => {
            store.remove(Kind::Thread, id)?;
            for kind in [Kind::Message, Kind::Run] {
                store
                    .table_mut(kind)
                    .retain(|e| e.value["thread_id"] != *id);
            }
            deleted(id, "thread.deleted")
        }
        ("POST", ["threads", id, "messages"]) => {
            store.get(Kind::Thread, id)?;
            ok(&add_message(store, id, &call.json()?, None)?)
        }
        ("GET", ["threads", id, "messages"]) => {
            store.get(Kind::Thread, id)?;
            let run_id = call.query("run_id");
            let messages = store
                .values(Kind::Message)
                .filter(|m| m["thread_id"] == *id && run_id.is_none_or(|r| m["run_id"] == r));
            list(messages, call, 20)
        }
        ("GET", ["threads", id, "messages", message]) => {
            in_thread(store, Kind::Message, id, message)
        }
        ("POST", ["threads", id, "runs"]) => {
            store.get(Kind::Thread, id)?;
            run(options, store, id, &call.json()?)
        }
        ("GET", ["threads", id, "runs"]) => {
            store.get(Kind::Thread, id)?;
            let runs = store.values(Kind::Run).filter(|r| r["thread_id"] == *id);
            list(runs, call, 20)
        }
        ("GET", ["threads", id, "runs", run]) => in_thread(store, Kind::Run, id, run),
        ("POST", ["vector_stores"]) => new_vector_store(store, &call.json()?),
        ("GET", ["vector_stores"]) => list(store.values(Kind::VectorStore), call, 20),
        ("GET", ["vector_stores", id]) => ok(&store.get(Kind::VectorStore, id)?.value),
        ("POST", ["vector_stores", id]) => modify(store, Kind::VectorStore, id, &call.json()?),
        ("DELETE", ["vector_stores", id]) => {
            store.remove(Kind::VectorStore, id)?;
            deleted(id, "vector_store.deleted")
        }
        ("POST", ["vector_stores", id, "files"]) => {
            let body = call.json()?;
            let file = add_to_vector_store(store, id, required(&body, "file_id")?)?;
            ok(&file)
        }
        ("GET", ["vector_stores", id, "files"]) => {
            list(store.get(Kind::VectorStore, id)?.children.iter(), call, 20)
        }
        ("GET", ["vector_stores", id, "files", file]) => {
            let vs = store.get(Kind::VectorStore, id)?;
            let found = vs.children.iter().find(|f| f["id"] == *file);
            ok(found.ok_or_else(|| Refusal::not_found(Kind::File, file))?)
        }
        ("DELETE", ["vector_stores", id, "files", file]) => {
            let vs = store.get_mut(Kind::VectorStore, id)?;
            let at = vs.children.iter().position(|f| f["id"] == *file);
            vs.children
                .remove(at.ok_or_else(|| Refusal::not_found(Kind::File, file))?);
            count_files(store, id);
            deleted(file, "vector_store.file.deleted")
        }
        _ => Err(Refusal::NoRoute),
    }
}

/// Copies the fields of `body` into `object`, but not its id, kind or creation time.
fn merge(object: &mut Value, body: &Value) {
    if let (Some(object), Some(body)) = (object.as_object_mut(), body.as_object()) {
        for (k, v) in body {
            if !matches!(k.as_str(), "id" | "object" | "created_at") {
                object.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Changes an assistant, a thread or a vector store with the fields of `body`.
fn modify(store: &mut Store, kind: Kind, id: &str, body: &Value) -> Answer {
    check_resources(store, &body["tool_resources"])?;
    let entry = store.get_mut(kind, id)?;
    merge(&mut entry.value, body);
    ok(&entry.value)
}

/// A message or a run of the thread `thread`.
fn in_thread(store: &Store, kind: Kind, thread: &str, id: &str) -> Answer {
    store.get(Kind::Thread, thread)?;
    let entry = store.get(kind, id)?;
    if entry.value["thread_id"] != thread {
        return Err(Refusal::not_found(kind, id));
    }
    ok(&entry.value)
}

/// Refuses `tool_resources` that name a file or a vector store that this backend lacks.
fn check_resources(store: &Store, resources: &Value) -> Result<(), Refusal> {
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|id| id.as_str().map(str::to_string))
            .collect()
    };
    for id in ids(&resources["code_interpreter"]["file_ids"]) {
        store.get(Kind::File, &id)?;
    }
    for id in ids(&resources["file_search"]["vector_store_ids"]) {
        store.get(Kind::VectorStore, &id)?;
    }
    Ok(())
}

/// Makes a thread, with the messages that `body` lists.
fn new_thread(store: &mut Store, body: &Value) -> Result<Value, Refusal> {
    check_resources(store, &body["tool_resources"])?;
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    for message in &messages {
        check_attachments(store, message)?;
    }
    let thread = json!({
        "id": new_kind_id(Kind::Thread), "object": "thread", "created_at": now(),
        "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
        "tool_resources": body.get("tool_resources").cloned().unwrap_or(json!({})),
    });
    store.add(Kind::Thread, thread.clone(), Bytes::new(), Vec::new());
    let id = thread["id"].as_str().unwrap_or_default();
    for message in &messages {
        add_message(store, id, message, None)?;
    }
    Ok(thread)
}

/// Refuses a message whose attachments name a file that this backend lacks.
fn check_attachments(store: &Store, message: &Value) -> Result<(), Refusal> {
    for attachment in message["attachments"].as_array().into_iter().flatten() {
        if let Some(id) = attachment["file_id"].as_str() {
            store.get(Kind::File, id)?;
        }
    }
    Ok(())
}

/// Adds a message to the thread `thread`; `by` is the run and assistant that wrote it.
fn add_message(
    store: &mut Store,
    thread: &str,
    body: &Value,
    by: Option<(&str, &str)>,
) -> Result<Value, Refusal> {
    check_attachments(store, body)?;
    let text = |t: &Value| json!({"type": "text", "text": {"value": t, "annotations": []}});
    let content: Vec<Value> = match &body["content"] {
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p["type"].as_str() {
                Some("text") => text(&p["text"]),
                _ => p.clone(),
            })
            .collect(),
        other => vec![text(&Value::String(other.as_str().unwrap_or("").into()))],
    };
    let message = json!({
        "id": new_kind_id(Kind::Message), "object": "thread.message", "created_at": now(),
        "thread_id": thread, "status": "completed",
        "role": body["role"].as_str().unwrap_or("user"), "content": content,
        "assistant_id": by.map(|b| b.1), "run_id": by.map(|b| b.0),
        "attachments": body.get("attachments").cloned().unwrap_or(json!([])),
        "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
    });
    store.add(Kind::Message, message.clone(), Bytes::new(), Vec::new());
    Ok(message)
}

/// Runs the assistant that `body` names on the thread `thread`: done at once, with an
/// assistant message carrying the backend's answer.
fn run(options: &BackendOptions, store: &mut Store, thread: &str, body: &Value) -> Answer {
    let assistant_id = required(body, "assistant_id")?;
    let assistant = store.get(Kind::Assistant, assistant_id)?.value.clone();
    for message in body["additional_messages"].as_array().into_iter().flatten() {
        add_message(store, thread, message, None)?;
    }
    let prompt: u64 = store
        .values(Kind::Message)
        .filter(|m| m["thread_id"] == thread)
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .map(|part| tokens(part["text"]["value"].as_str().unwrap_or("")))
        .sum();
    let completion = tokens(&options.answer);
    let id = new_kind_id(Kind::Run);
    let answer = json!({"role": "assistant", "content": options.answer});
    add_message(store, thread, &answer, Some((&id, assistant_id)))?;
    let pick = |key: &str| match body.get(key) {
        Some(v) if !v.is_null() => v.clone(),
        _ => assistant[key].clone(),
    };
    let at = now();
    let run = json!({
        "id": id, "object": "thread.run", "created_at": at, "thread_id": thread,
        "assistant_id": assistant_id, "status": "completed", "required_action": null,
        "last_error": null, "expires_at": null, "started_at": at, "cancelled_at": null,
        "failed_at": null, "completed_at": at, "incomplete_details": null,
        "model": pick("model"), "instructions": pick("instructions"), "tools": pick("tools"),
        "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
        "temperature": pick("temperature"), "top_p": pick("top_p"),
        "max_prompt_tokens": null, "max_completion_tokens": null,
        "truncation_strategy": {"type": "auto", "last_messages": null},
        "response_format": pick("response_format"), "tool_choice": "auto",
        "parallel_tool_calls": true,
    });
    store.add(Kind::Run, run.clone(), Bytes::new(), Vec::new());
    ok(&run)
}

/// Makes a vector store of the files that `body` lists.
fn new_vector_store(store: &mut Store, body: &Value) -> Answer {
    let file_ids: Vec<&str> = body["file_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for id in &file_ids {
        store.get(Kind::File, id)?;
    }
    let at = now();
    let vs = json!({
        "id": new_kind_id(Kind::VectorStore), "object": "vector_store", "created_at": at,
        "name": body["name"], "usage_bytes": 0, "status": "completed", "last_active_at": at,
        "file_counts": {}, "expires_after": body["expires_after"], "expires_at": null,
        "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
    });
    let id = vs["id"].as_str().unwrap_or_default().to_string();
    store.add(Kind::VectorStore, vs, Bytes::new(), Vec::new());
    for file in file_ids {
        add_to_vector_store(store, &id, file)?;
    }
    count_files(store, &id);
    ok(&store.get(Kind::VectorStore, &id)?.value)
}

/// Adds the file `file` of this backend to the vector store `vs` (once).
fn add_to_vector_store(store: &mut Store, vs: &str, file: &str) -> Result<Value, Refusal> {
    let bytes = store.get(Kind::File, file)?.bytes.len();
    let entry = store.get_mut(Kind::VectorStore, vs)?;
    if let Some(found) = entry.children.iter().find(|f| f["id"] == file) {
        return Ok(found.clone());
    }
    let object = json!({
        "id": file, "object": "vector_store.file", "created_at": now(), "vector_store_id": vs,
        "status": "completed", "usage_bytes": bytes, "last_error": null,
        "chunking_strategy": {"type": "static",
                              "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}},
    });
    entry.children.push(object.clone());
    count_files(store, vs);
    Ok(object)
}

/// Sets the vector store `vs`'s file counts and size from its files.
fn count_files(store: &mut Store, vs: &str) {
    let Ok(entry) = store.get_mut(Kind::VectorStore, vs) else {
        return;
    };
    let n = entry.children.len();
    let bytes: u64 = entry
        .children
        .iter()
        .filter_map(|f| f["usage_bytes"].as_u64())
        .sum();
    entry.value["file_counts"] =
        json!({"in_progress": 0, "completed": n, "failed": 0, "cancelled": 0, "total": n});
    entry.value["usage_bytes"] = json!(bytes);
}
