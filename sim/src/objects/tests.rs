//! The object routes driven over a real socket, as the `openai` SDK calls them.

use serde_json::{json, Value};

use crate::{Backend, BackendOptions, Fault};

async fn backend(name: &str) -> Backend {
    Backend::start(BackendOptions {
        name: name.into(),
        answer: "Stored on one resource only.".into(),
        ..Default::default()
    })
    .await
    .expect("the simulator binds 127.0.0.1:0")
}

/// A tiny client of one backend, with a key.
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(b: &Backend) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: b.url(),
        }
    }

    fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{sep}api-version=2025-04-01-preview", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.header("api-key", "k").send().await.expect("answered");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("a whole body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.http.delete(self.url(path))).await
    }

    /// Uploads `content` as the Python SDK does: multipart with `purpose` and `file`.
    async fn upload(&self, filename: &str, purpose: &str, content: &str) -> Value {
        let boundary = "f1a2b3c4d5e6";
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n{content}\r\n--{boundary}--\r\n"
        );
        let req = self
            .http
            .post(self.url("/openai/files"))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body);
        let (status, file) = self.send(req).await;
        assert_eq!(status, 200, "{file}");
        file
    }
}

fn id(v: &Value) -> &str {
    v["id"].as_str().expect("an id")
}

#[tokio::test]
async fn files_upload_list_content_delete() {
    let b = backend("files").await;
    let c = Client::new(&b);
    let file = c.upload("train.jsonl", "fine-tune", "{\"a\":1}\n").await;
    let fid = id(&file);
    assert!(fid.starts_with("file-") && fid.len() == 5 + 24, "{fid}");
    assert_eq!(file["bytes"], 8);
    assert_eq!(file["filename"], "train.jsonl");
    assert_eq!(file["purpose"], "fine-tune");
    assert!(b.holds(fid));
    assert_eq!(b.objects(), 1);

    let (status, got) = c.get(&format!("/openai/v1/files/{fid}")).await;
    assert_eq!((status, &got), (200, &file));
    let resp = reqwest::Client::new()
        .get(c.url(&format!("/openai/files/{fid}/content")))
        .header("api-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-sim-backend"], "files");
    assert_eq!(resp.bytes().await.unwrap(), "{\"a\":1}\n");

    let second = c.upload("b.txt", "assistants", "b").await;
    let (_, listed) = c.get("/openai/files").await;
    let ids: Vec<&str> = listed["data"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(ids, [id(&second), fid], "newest first");
    let (_, page) = c.get("/openai/files?limit=1").await;
    assert_eq!(
        (page["has_more"].clone(), page["last_id"].clone()),
        (json!(true), second["id"].clone())
    );
    let (_, rest) = c.get(&format!("/openai/files?after={}", id(&second))).await;
    assert_eq!(rest["first_id"], fid);
    assert_eq!(c.get("/openai/files?after=file-nope").await.0, 404);

    let (status, gone) = c.delete(&format!("/openai/files/{fid}")).await;
    assert_eq!(
        (status, gone),
        (200, json!({"id": fid, "object": "file", "deleted": true}))
    );
    let (status, err) = c.get(&format!("/openai/files/{fid}")).await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "404");
    assert!(!b.holds(fid));
}

#[tokio::test]
async fn batches_run_on_the_backend_that_holds_their_file() {
    let (a, other) = (backend("a").await, backend("b").await);
    let (ca, cb) = (Client::new(&a), Client::new(&other));
    let line = |n: u32| {
        json!({"custom_id": format!("task-{n}"), "method": "POST", "url": "/chat/completions",
               "body": {"model": "gpt-4o-batch", "messages": [{"role": "user", "content": "hi"}]}})
        .to_string()
    };
    let input = ca
        .upload("in.jsonl", "batch", &format!("{}\n{}\n", line(1), line(2)))
        .await;
    let body = json!({"input_file_id": id(&input), "endpoint": "/chat/completions",
                      "completion_window": "24h"});

    let (status, err) = cb.post("/openai/batches", body.clone()).await;
    assert_eq!(status, 404, "the file is on a, not b: {err}");
    assert_eq!(
        cb.post("/openai/v1/batches", json!({"input_file_id": "file-nope"}))
            .await
            .0,
        404
    );

    let (status, batch) = ca.post("/openai/batches", body).await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["status"], "completed");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 2, "completed": 2, "failed": 0})
    );
    let output = batch["output_file_id"].as_str().unwrap();
    assert!(a.holds(id(&batch)) && a.holds(output));
    assert!(!other.holds(output));
    let (_, out_file) = ca.get(&format!("/openai/files/{output}")).await;
    assert_eq!(out_file["purpose"], "batch_output");
    let text = reqwest::Client::new()
        .get(ca.url(&format!("/openai/files/{output}/content")))
        .header("api-key", "k")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["custom_id"], "task-2");
    assert_eq!(lines[0]["response"]["status_code"], 200);
    let answer = &lines[0]["response"]["body"];
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "gpt-4o-batch");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Stored on one resource only."
    );

    let (status, got) = ca.get(&format!("/openai/batches/{}", id(&batch))).await;
    assert_eq!((status, got["id"].clone()), (200, batch["id"].clone()));
    assert_eq!(
        cb.get(&format!("/openai/batches/{}", id(&batch))).await.0,
        404
    );
    let (_, listed) = ca.get("/openai/batches").await;
    assert_eq!(listed["data"][0]["id"], batch["id"]);
}

#[tokio::test]
async fn fine_tuning_jobs_need_their_files_here() {
    let (a, other) = (backend("a").await, backend("b").await);
    let (ca, cb) = (Client::new(&a), Client::new(&other));
    let train = ca.upload("t.jsonl", "fine-tune", "{}\n").await;
    let body = json!({"training_file": id(&train), "model": "gpt-4o-mini"});
    assert_eq!(
        cb.post("/openai/fine_tuning/jobs", body.clone()).await.0,
        404
    );
    let (status, job) = ca.post("/openai/fine_tuning/jobs", body).await;
    assert_eq!((status, job["status"].clone()), (200, json!("queued")));
    assert!(id(&job).starts_with("ftjob-"));
    let path = format!("/openai/fine_tuning/jobs/{}", id(&job));
    let (_, cancelled) = ca.post(&format!("{path}/cancel"), json!({})).await;
    assert_eq!(cancelled["status"], "cancelled");
    let (_, events) = ca.get(&format!("{path}/events")).await;
    assert_eq!(events["data"][0]["message"], "Job cancelled");
    assert_eq!(cb.get(&path).await.0, 404);
}

#[tokio::test]
async fn assistants_threads_runs_and_vector_stores() {
    let (a, other) = (backend("a").await, backend("b").await);
    let (ca, cb) = (Client::new(&a), Client::new(&other));
    let file = ca.upload("doc.txt", "assistants", "some words").await;
    let (status, vs) = ca
        .post(
            "/openai/vector_stores",
            json!({"name": "docs", "file_ids": [id(&file)]}),
        )
        .await;
    assert_eq!(status, 200, "{vs}");
    assert_eq!(vs["file_counts"]["completed"], 1);
    let (_, vs_files) = ca
        .get(&format!("/openai/vector_stores/{}/files", id(&vs)))
        .await;
    assert_eq!(vs_files["data"][0]["id"], file["id"]);

    let assistant = json!({"model": "gpt-4o", "tools": [{"type": "file_search"}],
                           "tool_resources": {"file_search": {"vector_store_ids": [id(&vs)]}}});
    assert_eq!(
        cb.post("/openai/assistants", assistant.clone()).await.0,
        404
    );
    let (status, asst) = ca.post("/openai/assistants", assistant).await;
    assert_eq!(status, 200, "{asst}");
    assert!(id(&asst).starts_with("asst_"));

    let (_, thread) = ca.post("/openai/threads", json!({})).await;
    let tid = id(&thread);
    let (status, msg) = ca
        .post(
            &format!("/openai/threads/{tid}/messages"),
            json!({"role": "user", "content": "hello"}),
        )
        .await;
    assert_eq!(status, 200, "{msg}");
    assert_eq!(msg["content"][0]["text"]["value"], "hello");
    let run_path = format!("/openai/threads/{tid}/runs");
    assert_eq!(
        ca.post(&run_path, json!({"assistant_id": "asst_nope"}))
            .await
            .0,
        404
    );
    let (status, run) = ca.post(&run_path, json!({"assistant_id": id(&asst)})).await;
    assert_eq!((status, run["status"].clone()), (200, json!("completed")));
    assert_eq!(run["thread_id"], tid);
    let (_, got) = ca.get(&format!("{run_path}/{}", id(&run))).await;
    assert_eq!(got["id"], run["id"]);
    let (_, messages) = ca.get(&format!("/openai/threads/{tid}/messages")).await;
    let first = &messages["data"][0];
    assert_eq!(first["role"], "assistant", "newest first");
    assert_eq!(first["run_id"], run["id"]);
    assert_eq!(
        first["content"][0]["text"]["value"],
        "Stored on one resource only."
    );
    assert_eq!(cb.get(&format!("/openai/threads/{tid}")).await.0, 404);

    let (status, run) = ca
        .post(
            "/openai/v1/threads/runs",
            json!({"assistant_id": id(&asst),
              "thread": {"messages": [{"role": "user", "content": "again"}]}}),
        )
        .await;
    assert_eq!(status, 200, "{run}");
    let new_thread = run["thread_id"].as_str().unwrap();
    assert!(a.holds(new_thread) && !other.holds(new_thread));

    // One file, one vector store, one assistant, two threads with two messages and a run each.
    assert_eq!(a.objects(), 1 + 1 + 1 + 2 + 4 + 2);
    let (status, _) = ca.delete(&format!("/openai/threads/{tid}")).await;
    assert_eq!(status, 200);
    assert_eq!(a.objects(), 1 + 1 + 1 + 1 + 2 + 1);
    assert_eq!(other.objects(), 0);
}

#[tokio::test]
async fn responses_chain_only_on_their_backend() {
    let (a, other) = (backend("a").await, backend("b").await);
    let (ca, cb) = (Client::new(&a), Client::new(&other));
    let (status, err) = ca
        .post(
            "/openai/v1/responses",
            json!({"model": "gpt-4o", "input": "hi",
              "previous_response_id": "resp_nope"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "previous_response_not_found");
    assert_eq!(err["error"]["param"], "previous_response_id");

    let (status, first) = ca
        .post(
            "/openai/deployments/gpt-4o-dep/responses",
            json!({"input": "hi"}),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["model"], "gpt-4o-dep");
    assert_eq!(
        first["output"][0]["content"][0]["text"],
        "Stored on one resource only."
    );
    let rid = id(&first);
    assert!(rid.starts_with("resp_") && a.holds(rid));

    let chained = json!({"model": "gpt-4o", "input": "more", "previous_response_id": rid});
    assert_eq!(
        cb.post("/openai/v1/responses", chained.clone()).await.0,
        400
    );
    let (status, second) = ca.post("/openai/v1/responses", chained).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["previous_response_id"], rid);
    let usage = &second["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["input_tokens"].as_u64().unwrap() + 5)
    );

    let (_, items) = ca
        .get(&format!("/openai/responses/{}/input_items", id(&second)))
        .await;
    assert_eq!(items["data"][0]["content"][0]["text"], "more");
    assert_eq!(cb.get(&format!("/openai/responses/{rid}")).await.0, 404);
    let (status, gone) = ca.delete(&format!("/openai/v1/responses/{rid}")).await;
    assert_eq!((status, gone["deleted"].clone()), (200, json!(true)));
    assert_eq!(ca.get(&format!("/openai/v1/responses/{rid}")).await.0, 404);

    let (_, unstored) = ca
        .post(
            "/openai/v1/responses",
            json!({"model": "m", "input": "x", "store": false}),
        )
        .await;
    assert!(!a.holds(id(&unstored)));
}

#[tokio::test]
async fn streamed_response_opens_with_its_id() {
    let b = backend("s").await;
    let c = Client::new(&b);
    let resp = c
        .http
        .post(c.url("/openai/v1/responses"))
        .header("api-key", "k")
        .json(&json!({"model": "gpt-4o", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (kind, data) = e.split_once('\n').expect("event and data lines");
            let data = data.strip_prefix("data: ").expect("a data line");
            (
                kind.trim_start_matches("event: ").to_string(),
                serde_json::from_str(data).unwrap(),
            )
        })
        .collect();
    let (kind, created) = &events[0];
    assert_eq!(kind, "response.created");
    assert_eq!(created["sequence_number"], 0);
    assert_eq!(created["response"]["status"], "in_progress");
    let rid = created["response"]["id"].as_str().unwrap();
    assert!(b.holds(rid));
    let text: String = events
        .iter()
        .filter(|(k, _)| k == "response.output_text.delta")
        .map(|(_, e)| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Stored on one resource only.");
    let (kind, done) = events.last().unwrap();
    assert_eq!(kind, "response.completed");
    assert_eq!(done["response"]["id"], rid);
    assert_eq!(done["response"]["usage"]["output_tokens"], 5);
}

#[tokio::test]
async fn faults_and_auth_come_first() {
    let b = backend("f").await;
    let c = Client::new(&b);
    b.push_fault(Fault::throttle(1));
    assert_eq!(c.get("/openai/files").await.0, 429);
    let resp = reqwest::Client::new()
        .get(c.url("/openai/files"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(c.get("/openai/v1/files").await.0, 200);
    // Chat completions still answer beside the objects.
    let (status, chat) = c
        .post(
            "/openai/deployments/d/chat/completions",
            json!({"messages": []}),
        )
        .await;
    assert_eq!(
        (status, chat["object"].clone()),
        (200, json!("chat.completion"))
    );
}

#[test]
fn ids_are_unique_and_short() {
    let ids: std::collections::HashSet<String> = (0..1000)
        .map(|_| super::new_kind_id(super::Kind::Batch))
        .collect();
    assert_eq!(ids.len(), 1000);
    assert!(ids
        .iter()
        .all(|i| i.len() == 6 + 24 && i[6..].bytes().all(|b| b.is_ascii_hexdigit())));
}
