//! Files (`/files`), the batches that read them (`/batches`, done at once) and fine-tuning jobs
//! (`/fine_tuning/jobs`, which stay queued).

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Response;
use serde_json::{json, Value};

use super::{
    deleted, list, new_id, new_kind_id, now, ok, required, Answer, Call, Kind, Refusal, Store,
};
use crate::completions::{chat_completion, embeddings};
use crate::openai::BackendOptions;

/// Answers a request under `/files`, `/batches` or `/fine_tuning`.
pub(super) fn route(options: &BackendOptions, store: &mut Store, call: &Call) -> Answer {
    match (call.method.as_str(), &call.segments[..]) {
        ("POST", ["files"]) => upload(store, call),
        ("GET", ["files"]) => {
            let purpose = call.query("purpose");
            let files = store
                .values(Kind::File)
                .filter(|f| purpose.is_none_or(|p| f["purpose"] == p));
            list(files, call, 10_000)
        }
        ("GET", ["files", id]) => ok(&store.get(Kind::File, id)?.value),
        ("DELETE", ["files", id]) => {
            store.remove(Kind::File, id)?;
            deleted(id, "file")
        }
        ("GET", ["files", id, "content"]) => {
            let bytes = store.get(Kind::File, id)?.bytes.clone();
            Ok(Response::builder()
                .status(200)
                .header("content-type", "application/octet-stream")
                .body(
                    http_body_util::Full::new(bytes)
                        .map_err(|e| match e {})
                        .boxed(),
                )
                .unwrap_or_default())
        }
        ("POST", ["batches"]) => batch(options, store, &call.json()?),
        ("GET", ["batches"]) => list(store.values(Kind::Batch), call, 20),
        ("GET", ["batches", id]) => ok(&store.get(Kind::Batch, id)?.value),
        // Every batch is done already: cancelling one leaves it as it is.
        ("POST", ["batches", id, "cancel"]) => ok(&store.get(Kind::Batch, id)?.value),
        ("POST", ["fine_tuning", "jobs"]) => fine_tune(store, &call.json()?),
        ("GET", ["fine_tuning", "jobs"]) => list(store.values(Kind::FineTuningJob), call, 20),
        ("GET", ["fine_tuning", "jobs", id]) => ok(&store.get(Kind::FineTuningJob, id)?.value),
        ("POST", ["fine_tuning", "jobs", id, "cancel"]) => {
            let job = store.get_mut(Kind::FineTuningJob, id)?;
            if job.value["status"] != "cancelled" {
                job.value["status"] = json!("cancelled");
                job.value["finished_at"] = json!(now());
                job.children.push(event("Job cancelled"));
            }
            ok(&job.value)
        }
        ("GET", ["fine_tuning", "jobs", id, "events"]) => list(
            store.get(Kind::FineTuningJob, id)?.children.iter(),
            call,
            20,
        ),
        ("GET", ["fine_tuning", "jobs", id, "checkpoints"]) => {
            store.get(Kind::FineTuningJob, id)?;
            list(std::iter::empty(), call, 10)
        }
        _ => Err(Refusal::NoRoute),
    }
}

/// Keeps an uploaded file: the `file` part of a multipart body (as the SDKs send it), or the
/// whole body otherwise.
fn upload(store: &mut Store, call: &Call) -> Answer {
    let content_type = call
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (filename, purpose, bytes) = match boundary(content_type) {
        Some(boundary) => {
            let parts = multipart(call.body, &boundary);
            let file = parts
                .iter()
                .find(|p| p.name == "file")
                .ok_or_else(|| Refusal::bad("Missing required parameter: 'file'.", "file"))?;
            let purpose = parts
                .iter()
                .find(|p| p.name == "purpose")
                .map(|p| String::from_utf8_lossy(p.content).trim().to_string());
            (
                file.filename.clone(),
                purpose,
                call.body.slice_ref(file.content),
            )
        }
        None => (
            call.query("filename").map(str::to_string),
            call.query("purpose").map(str::to_string),
            call.body.clone(),
        ),
    };
    let file = add_file(
        store,
        filename.as_deref().unwrap_or("upload"),
        purpose.as_deref().unwrap_or("assistants"),
        bytes,
    );
    ok(&file)
}

/// Stores a file and returns the API's view of it.
fn add_file(store: &mut Store, filename: &str, purpose: &str, bytes: Bytes) -> Value {
    let file = json!({
        "id": new_kind_id(Kind::File), "object": "file", "bytes": bytes.len(),
        "created_at": now(), "filename": filename, "purpose": purpose,
        "status": "processed", "status_details": null,
    });
    store.add(Kind::File, file.clone(), bytes, Vec::new());
    file
}

/// The boundary of a `multipart/form-data` content type.
fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.eq_ignore_ascii_case("boundary")
            .then(|| v.trim_matches('"').to_string())
    })
}

/// A part of a multipart body.
struct Part<'a> {
    name: String,
    filename: Option<String>,
    content: &'a [u8],
}

/// The parts of a whole multipart body (RFC 7578). A hand parser rather than the `multer`
/// crate: the simulator has the whole body in memory already, the SDKs send two plain parts,
/// and a streaming parser would bring its dependencies for a few lines of slicing.
fn multipart<'a>(body: &'a [u8], boundary: &str) -> Vec<Part<'a>> {
    let first = format!("--{boundary}");
    let next = format!("\r\n--{boundary}");
    let mut parts = Vec::new();
    let Some(start) = find(body, first.as_bytes()) else {
        return parts;
    };
    let mut rest = &body[start + first.len()..];
    // After each delimiter: `--` ends the body, else CRLF, the part's headers, a blank line,
    // and its content up to the next delimiter.
    while !rest.starts_with(b"--") {
        rest = rest.strip_prefix(b"\r\n").unwrap_or(rest);
        let Some(head_end) = find(rest, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest[..head_end]);
        let after = &rest[head_end + 4..];
        let Some(end) = find(after, next.as_bytes()) else {
            break;
        };
        let disposition = head
            .split("\r\n")
            .find_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-disposition")
                    .then_some(v)
            })
            .unwrap_or("");
        let param = |key: &str| {
            disposition.split(';').find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                (k == key).then(|| v.trim_matches('"').to_string())
            })
        };
        parts.push(Part {
            name: param("name").unwrap_or_default(),
            filename: param("filename"),
            content: &after[..end],
        });
        rest = &after[end + next.len()..];
    }
    parts
}

/// Where `needle` first starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Runs a batch at once: one answer per JSONL line of its input file, into an output file (and
/// an error file for the lines that are no request) on this backend.
fn batch(options: &BackendOptions, store: &mut Store, body: &Value) -> Answer {
    let input_file_id = required(body, "input_file_id")?;
    let endpoint = body["endpoint"].as_str().unwrap_or("/chat/completions");
    let input = store.get(Kind::File, input_file_id)?.bytes.clone();
    let id = new_kind_id(Kind::Batch);
    let (mut output, mut errors, mut total) = (String::new(), String::new(), 0);
    for line in input.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        total += 1;
        let request: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
        let custom_id = &request["custom_id"];
        let body = &request["body"];
        if !body.is_object() {
            let e = json!({"id": new_id("batch_req_"), "custom_id": custom_id, "response": null,
                           "error": {"code": "invalid_request", "message": "The line is not a request with a body."}});
            errors.push_str(&format!("{e}\n"));
            continue;
        }
        let url = request["url"].as_str().unwrap_or(endpoint);
        let model = body["model"].as_str().unwrap_or("gpt-4o");
        let answer = if url.ends_with("/embeddings") {
            embeddings(body, model)
        } else {
            chat_completion(options, body, model)
        };
        let line = json!({"id": new_id("batch_req_"), "custom_id": custom_id,
                          "response": {"status_code": 200, "request_id": new_id("req_"), "body": answer},
                          "error": null});
        output.push_str(&format!("{line}\n"));
    }
    let failed = total - output.lines().count();
    let output_file = add_file(
        store,
        &format!("{id}_output.jsonl"),
        "batch_output",
        Bytes::from(output),
    );
    let error_file = (!errors.is_empty()).then(|| {
        add_file(
            store,
            &format!("{id}_error.jsonl"),
            "batch_output",
            Bytes::from(errors),
        )
    });
    let created = now();
    let batch = json!({
        "id": id, "object": "batch", "endpoint": endpoint, "errors": null,
        "input_file_id": input_file_id,
        "completion_window": body["completion_window"].as_str().unwrap_or("24h"),
        "status": "completed", "output_file_id": output_file["id"],
        "error_file_id": error_file.map(|f| f["id"].clone()),
        "created_at": created, "in_progress_at": created, "expires_at": created + 86_400,
        "finalizing_at": created, "completed_at": created, "failed_at": null,
        "expired_at": null, "cancelling_at": null, "cancelled_at": null,
        "request_counts": {"total": total, "completed": total - failed, "failed": failed},
        "metadata": body.get("metadata").cloned().unwrap_or(Value::Null),
    });
    store.add(Kind::Batch, batch.clone(), Bytes::new(), Vec::new());
    ok(&batch)
}

/// Queues a fine-tuning job on files of this backend; it stays queued until cancelled.
fn fine_tune(store: &mut Store, body: &Value) -> Answer {
    let training = required(body, "training_file")?;
    store.get(Kind::File, training)?;
    let validation = body["validation_file"].as_str();
    if let Some(v) = validation {
        store.get(Kind::File, v)?;
    }
    let auto =
        json!({"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"});
    let job = json!({
        "id": new_kind_id(Kind::FineTuningJob), "object": "fine_tuning.job",
        "model": body["model"].as_str().unwrap_or("gpt-4o-mini"),
        "created_at": now(), "finished_at": null, "fine_tuned_model": null,
        "organization_id": "org-sim", "result_files": [], "status": "queued",
        "training_file": training, "validation_file": validation,
        "hyperparameters": body.get("hyperparameters").cloned().unwrap_or(auto),
        "trained_tokens": null, "error": null, "suffix": body["suffix"],
        "seed": body["seed"].as_u64().unwrap_or(42), "estimated_finish": null,
        "integrations": null,
    });
    store.add(
        Kind::FineTuningJob,
        job.clone(),
        Bytes::new(),
        vec![event("Job enqueued")],
    );
    ok(&job)
}

/// A fine-tuning job's event.
fn event(message: &str) -> Value {
    json!({"object": "fine_tuning.job.event", "id": new_id("ftevent-"), "created_at": now(),
           "level": "info", "message": message, "data": {}, "type": "message"})
}
