use super::*;

fn head(method: &str, target: &str) -> RequestHeader {
    RequestHeader::build(method, target.as_bytes(), None).unwrap()
}

fn read(method: &str, target: &str, body: &str) -> Request {
    Request::read(&head(method, target), Bytes::from(body.to_string()), false).unwrap()
}

#[test]
fn the_deployment_comes_from_the_path_the_body_or_the_realtime_query() {
    let r = read("POST", "/openai/deployments/gpt-4o/chat/completions", "");
    assert_eq!(r.deployment(), Some("gpt-4o"));
    let r = read(
        "POST",
        "/openai/v1/chat/completions",
        r#"{"messages":[],"model":"gpt-4o-mini"}"#,
    );
    assert_eq!(r.deployment(), Some("gpt-4o-mini"));
    assert_eq!(
        read("POST", "/openai/responses", r#"{"model":"o3"}"#).deployment(),
        Some("o3")
    );
    assert_eq!(
        read("POST", "/openai/v1/files", "--multipart--").deployment(),
        None
    );
    assert_eq!(read("GET", "/openai/models", "").deployment(), None);
    assert_eq!(read("GET", "/openai/deployments/", "").deployment(), None);
    let rt = read(
        "GET",
        "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt%2D4o-rt",
        "",
    );
    assert_eq!(
        rt.deployment(),
        Some("gpt-4o-rt"),
        "decoded as a backend reads it"
    );
    assert!(rt.is_realtime());
    assert_eq!(
        read("GET", "/openai/v1/realtime?model=gpt-realtime", "").deployment(),
        Some("gpt-realtime")
    );
    assert_eq!(
        read("GET", "/openai/realtime?api-version=1", "").deployment(),
        None
    );
}

#[test]
fn a_realtime_deployment_named_twice_or_under_the_other_parameter_is_refused() {
    for target in [
        "/openai/v1/realtime?deployment=a&model=b",
        "/openai/v1/realtime?model=a&model=b",
        "/openai/v1/realtime?deployment=a",
        "/openai/realtime?model=a",
    ] {
        assert!(
            Request::read(&head("GET", target), Bytes::new(), false).is_err(),
            "{target}"
        );
    }
}

#[test]
fn a_model_that_cannot_be_read_is_said_so() {
    let r = read(
        "POST",
        "/openai/v1/chat/completions",
        r#"{"model":"a","model":"b"}"#,
    );
    assert!(r.model_unreadable());
    assert!(!read("POST", "/openai/v1/models", "").model_unreadable());
    assert!(!read("POST", "/openai/deployments/d/chat/completions", "x").model_unreadable());
}

#[test]
fn the_estimate_counts_the_prompt_and_the_completion_allowed() {
    let est = |body: &str| read("POST", "/openai/v1/chat/completions", body).estimate_tokens();
    assert_eq!(est(r#"{"max_tokens":100}"#), 5 + 100);
    assert_eq!(
        est(r#"{"max_completion_tokens":7,"max_tokens":100}"#),
        11 + 7
    );
    assert_eq!(est(r#"{"max_output_tokens":9}"#), 6 + 9);
    assert_eq!(est("not json"), 2);
    assert_eq!(est(""), 0);
}

#[test]
fn objects_are_named_in_the_path_first_then_the_body() {
    let r = read(
        "POST",
        "/openai/threads/thread_1/runs",
        r#"{"assistant_id":"asst_1","thread_id":"thread_1"}"#,
    );
    let named = r.objects();
    assert_eq!(named.ids.as_slice(), ["thread_1", "asst_1"]);
    assert!(named.in_path);
    let none = read(
        "POST",
        "/openai/v1/chat/completions",
        r#"{"metadata":{"thread_id":"mine"},"messages":[]}"#,
    );
    assert!(none.objects().is_empty());
    assert!(read("POST", "/openai/batches", "not json _id")
        .objects()
        .is_empty());
}

#[test]
fn the_body_is_read_at_most_once_and_only_when_needed() {
    let r = read(
        "POST",
        "/openai/deployments/gpt-4o/chat/completions",
        r#"{"messages":[]}"#,
    );
    assert!(r.objects().is_empty());
    assert!(r.facts.get().is_none(), "nothing needed the body");
    let _ = r.estimate_tokens();
    assert!(r.facts.get().is_some());
}

#[test]
fn stream_usage_is_asked_for_once_and_kept_when_a_backend_renames() {
    let h = head("POST", "/openai/v1/chat/completions");
    let body = Bytes::from_static(br#"{"model":"gpt-4o","stream":true}"#);
    let r = Request::read(&h, body.clone(), true).unwrap();
    assert!(r.hides_usage_event());
    assert_eq!(
        &r.body()[..],
        br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#
    );
    let renamed = r.for_backend("gpt-4o-eu", h.raw_path());
    assert_eq!(renamed.path, None);
    assert_eq!(
        &renamed.body.unwrap()[..],
        br#"{"model":"gpt-4o-eu","stream":true,"stream_options":{"include_usage":true}}"#
    );
    let plain = Request::read(&h, body, false).unwrap();
    assert!(!plain.hides_usage_event());
}

#[test]
fn a_backend_gets_its_own_name_where_the_request_names_the_deployment() {
    let h = head(
        "POST",
        "/openai/deployments/gpt-4o/chat/completions?api-version=1",
    );
    let r = Request::read(&h, Bytes::from_static(br#"{"model":"x"}"#), false).unwrap();
    let renamed = r.for_backend("gpt-4o-east", h.raw_path());
    assert_eq!(
        renamed.path.as_deref(),
        Some(&b"/openai/deployments/gpt-4o-east/chat/completions?api-version=1"[..])
    );
    assert!(
        renamed.body.is_none(),
        "the body's model is the client's own business"
    );
    let h = head("GET", "/openai/realtime?api-version=1&deployment=rt");
    let r = Request::read(&h, Bytes::new(), false).unwrap();
    assert_eq!(
        r.for_backend("rt-east", h.raw_path()).path.as_deref(),
        Some(&b"/openai/realtime?api-version=1&deployment=rt-east"[..])
    );
    // Found by the fuzzer: a Realtime query that names no deployment keeps its query as sent.
    let h = head("GET", "/openai/realtime?m2");
    let r = Request::read(&h, Bytes::new(), false).unwrap();
    assert_eq!(r.deployment(), None);
    assert_eq!(
        r.for_backend("rt-east", h.raw_path()).path.as_deref(),
        Some(&b"/openai/realtime?m2"[..])
    );
}

#[test]
fn what_a_request_asks_for_is_read_from_its_method_and_path() {
    assert_eq!(read("GET", "/openai/files", "").list(), Some("files"));
    assert_eq!(read("POST", "/openai/files", "").list(), None);
    assert!(read("POST", "/openai/files", "").may_create());
    assert!(!read("POST", "/openai/deployments/d/chat/completions", "").may_create());
    assert!(read("DELETE", "/openai/files/file-1", "").deletes());
    assert!(!read("DELETE", "/openai/threads/t/messages/m", "").deletes());
}

#[test]
fn the_quick_look_for_named_objects_sees_every_key() {
    for key in objects::named::BODY_KEYS {
        assert!(
            may_name_objects(format!("{{\"{key}\":\"x\"}}").as_bytes()),
            "{key}"
        );
    }
    assert!(!may_name_objects(br#"{"max_tokens":5,"messages":[]}"#));
}

#[test]
fn a_body_that_is_not_json_goes_on_untouched_even_where_the_proxy_rewrites() {
    // Where the deployment is the body's `model` and streams are asked for their usage: a form
    // (or a JSON text with something after it) has no facts, and nothing is spliced into it.
    let h = head("POST", "/openai/v1/chat/completions");
    for body in [
        &b"--b\r\ncontent-disposition: form-data\r\n\r\n{\"model\":\"o3\",\"stream\":true}\r\n--b--"[..],
        br#"{"model":"o3","stream":true} trailing"#,
    ] {
        let r = Request::read(&h, Bytes::copy_from_slice(body), true).unwrap();
        assert!(r.facts().is_none(), "{body:?}");
        assert_eq!(&r.body()[..], body, "sent as the client sent it");
        assert!(!r.hides_usage_event());
        let renamed = r.for_backend("o3-eu", h.raw_path());
        assert!(renamed.body.is_none() && renamed.path.is_none());
    }
}

#[test]
fn a_request_renamed_for_a_fallback_names_the_other_deployment_wherever_it_named_its_own() {
    // In the path, and in the body's `model` too, the rest as sent.
    let h = head(
        "POST",
        "/openai/deployments/gpt-4o/chat/completions?api-version=1",
    );
    let body = r#"{"model": "gpt-4o", "messages": []}"#;
    let r = Request::read(&h, Bytes::from(body), false).unwrap();
    let (path, body) = r.renamed_to("gpt-4o-mini", h.raw_path());
    assert_eq!(
        path.as_deref(),
        Some(&b"/openai/deployments/gpt-4o-mini/chat/completions?api-version=1"[..])
    );
    assert_eq!(&body[..], br#"{"model": "gpt-4o-mini", "messages": []}"#);
    // In the Realtime query.
    let h = head("GET", "/openai/realtime?api-version=1&deployment=rt");
    let r = Request::read(&h, Bytes::new(), false).unwrap();
    let (path, _) = r.renamed_to("rt-mini", h.raw_path());
    assert_eq!(
        path.as_deref(),
        Some(&b"/openai/realtime?api-version=1&deployment=rt-mini"[..])
    );
    // Only in the body on /openai/v1/; a body that is not JSON goes on as sent.
    let h = head("POST", "/openai/v1/chat/completions");
    let r = Request::read(&h, Bytes::from(r#"{"model":"a"}"#), false).unwrap();
    let (path, body) = r.renamed_to("b", h.raw_path());
    assert_eq!((path, &body[..]), (None, &br#"{"model":"b"}"#[..]));
    let h = head("POST", "/openai/deployments/a/audio/transcriptions");
    let r = Request::read(&h, Bytes::from_static(b"--form data--"), false).unwrap();
    assert_eq!(&r.renamed_to("b", h.raw_path()).1[..], b"--form data--");
}
