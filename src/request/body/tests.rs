use super::*;

fn read(body: &str) -> BodyFacts {
    BodyFacts::read(body.as_bytes()).expect("a JSON object")
}

#[test]
fn the_top_level_fields_are_read_loosely() {
    let body = r#"{"model":"gpt-4o","stream":true,"max_tokens":100,"max_completion_tokens":"7","store":false,"messages":[]}"#;
    let f = read(body);
    let (model, span) = f.model.clone().unwrap();
    assert_eq!(model, "gpt-4o");
    assert_eq!(&body[span], "\"gpt-4o\"");
    assert!(f.stream);
    assert_eq!(f.max_tokens, Some(100));
    assert_eq!(f.max_completion_tokens, None, "a string is not a count");
    assert_eq!(f.completion_cap(), Some(100));
    assert_eq!(f.store, Some(false));
    assert_eq!(f.keys, 6);
    assert!(!read(r#"{"stream":"true"}"#).stream);
}

#[test]
fn a_model_given_twice_or_not_as_a_string_is_unreadable() {
    for body in [
        r#"{"model":"a","model":"b"}"#,
        r#"{"model":5}"#,
        r#"{"model":"a","mod\u0065l":"b"}"#,
    ] {
        let f = read(body);
        assert!(f.model.is_none() && f.model_unreadable, "{body}");
    }
    let f = read(r#"{"mod\u0065l":"x"}"#);
    assert_eq!(
        f.model.map(|m| m.0).as_deref(),
        Some("x"),
        "an escaped key is the key"
    );
}

#[test]
fn objects_are_named_at_any_depth_but_not_in_metadata() {
    let f = read(
        r#"{"previous_response_id":"resp_1","tool_resources":{"code_interpreter":{"file_ids":["file-1",2,"file-2"]},
            "file_search":{"vector_store_ids":["vs_1"]}},"metadata":{"thread_id":"mine"},
            "messages":[{"attachments":[{"file_id":"file-1"}]}]}"#,
    );
    assert_eq!(f.objects.as_slice(), ["resp_1", "file-1", "file-2", "vs_1"]);
    assert_eq!(f.previous_response_id.as_deref(), Some("resp_1"));
}

#[test]
fn the_stream_options_value_is_located() {
    let body = r#"{ "stream" : true , "stream_options" : {"include_usage":false} }"#;
    let f = read(body);
    assert_eq!(
        &body[f.stream_options.unwrap()],
        r#"{"include_usage":false}"#
    );
}

#[test]
fn anything_but_one_object_has_no_facts() {
    for body in ["", "[1]", "not json", "{} {}", r#"{"a":"#, "\"x\""] {
        assert!(BodyFacts::read(body.as_bytes()).is_none(), "{body:?}");
    }
    assert!(BodyFacts::read(b" {} ").is_some());
}

#[test]
fn deep_nesting_is_walked_only_so_far() {
    let mut body = String::new();
    for _ in 0..12 {
        body.push_str(r#"{"a":"#);
    }
    body.push_str(r#"{"file_id":"file-deep"}"#);
    body.push_str(&"}".repeat(12));
    assert!(read(&body).objects.is_empty());
    assert_eq!(
        read(r#"{"a":{"b":{"file_id":"file-x"}}}"#)
            .objects
            .as_slice(),
        ["file-x"]
    );
}
