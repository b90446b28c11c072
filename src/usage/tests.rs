use super::*;

/// Reads `body` fed in pieces of `step` bytes.
fn read(content_type: &str, body: &str, step: usize) -> Option<Usage> {
    let mut r = UsageReader::for_content_type(Some(content_type.as_bytes())).unwrap();
    for piece in body.as_bytes().chunks(step) {
        r.feed(&Bytes::copy_from_slice(piece));
    }
    r.finish()
}

const CHAT: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"message":{"content":"usage is a word"}}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#;

#[test]
fn a_json_answer_reports_its_usage_however_it_is_split() {
    let expected = Usage {
        prompt: 12,
        completion: 7,
        cached: Some(4),
        reasoning: Some(2),
    };
    for step in [1, 3, 64, 10_000] {
        assert_eq!(
            read("application/json", CHAT, step),
            Some(expected),
            "{step}"
        );
    }
    let embeddings = r#"{"object":"list","data":[],"usage":{"prompt_tokens":5,"total_tokens":5}}"#;
    assert_eq!(
        read("application/json; charset=utf-8", embeddings, 7),
        Some(Usage {
            prompt: 5,
            ..Usage::default()
        })
    );
    assert_eq!(
        read("application/json", r#"{"error":{"code":"429"}}"#, 5),
        None
    );
}

#[test]
fn a_long_json_answer_keeps_only_its_end() {
    let long = format!(
        r#"{{"choices":[{{"message":{{"content":"{}"}}}}],"usage":{{"prompt_tokens":1,"completion_tokens":900}}}}"#,
        "x".repeat(1 << 20)
    );
    let mut r = UsageReader::for_content_type(Some(b"application/json")).unwrap();
    for piece in long.as_bytes().chunks(4096) {
        r.feed(&Bytes::copy_from_slice(piece));
        if let Body::Json { len, .. } = &r.body {
            assert!(*len <= JSON_TAIL + 4096, "the body was kept: {len}");
        }
    }
    assert_eq!(r.finish().map(|u| u.completion), Some(900));
}

#[test]
fn a_chat_stream_reports_the_usage_chunk() {
    let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
         data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\n\
         data: [DONE]\n\n";
    for step in [1, 2, 17, 1000] {
        let u = read("text/event-stream", stream, step).unwrap();
        assert_eq!((u.prompt, u.completion), (9, 3), "{step}");
    }
    let without = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n";
    assert_eq!(read("text/event-stream", without, 5), None);
}

#[test]
fn a_responses_stream_reports_response_completed() {
    let stream = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"usage\":null}}\n\n\
         event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"usage\"}\n\n\
         event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"usage\":{\"input_tokens\":20,\"output_tokens\":8,\"input_tokens_details\":{\"cached_tokens\":16},\"output_tokens_details\":{\"reasoning_tokens\":5}}}}\n\n";
    assert_eq!(
        read("text/event-stream", stream, 13),
        Some(Usage {
            prompt: 20,
            completion: 8,
            cached: Some(16),
            reasoning: Some(5),
        })
    );
}

#[test]
fn a_usage_in_the_clients_metadata_is_passed_over() {
    let body =
        r#"{"id":"resp_1","usage":{"input_tokens":3,"output_tokens":2},"metadata":{"usage":"x"}}"#;
    assert_eq!(
        read("application/json", body, 10).map(|u| u.completion),
        Some(2)
    );
}

#[test]
fn a_huge_event_still_reports_its_usage() {
    let event = format!(
        "data: {{\"type\":\"response.completed\",\"response\":{{\"instructions\":\"{}\",\"usage\":{{\"input_tokens\":7,\"output_tokens\":5}},\"metadata\":{{}}}}}}\n\n",
        "i".repeat(300 << 10)
    );
    let mut r = UsageReader::for_content_type(Some(b"text/event-stream")).unwrap();
    for piece in event.as_bytes().chunks(8192) {
        r.feed(&Bytes::copy_from_slice(piece));
        if let Body::Events { line, .. } = &r.body {
            assert!(line.len() <= MAX_LINE + 8192, "the event was kept whole");
        }
    }
    assert_eq!(r.finish().map(|u| (u.prompt, u.completion)), Some((7, 5)));
}

#[test]
fn compressed_answers_are_not_read() {
    let mut h = http::HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    assert!(UsageReader::for_answer(&h).is_some());
    h.insert("content-encoding", "gzip".parse().unwrap());
    assert!(UsageReader::for_answer(&h).is_none());
}

#[test]
fn other_answers_are_not_read() {
    assert!(UsageReader::for_content_type(Some(b"audio/mpeg")).is_none());
    assert!(UsageReader::for_content_type(None).is_none());
}

#[test]
fn the_model_an_answer_names_is_read_only_when_asked() {
    let json = r#"{"choices":[{"message":{"content":"a \"model\" answer"}}],"model":"gpt-4o-2024-08-06","usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
    let reader = || UsageReader::for_content_type(Some(b"application/json")).unwrap();
    let mut r = reader().reading_model();
    r.feed(&Bytes::from(json));
    let (usage, model) = r.finish_with_model();
    assert_eq!(usage.map(|u| u.completion), Some(2));
    assert_eq!(model.as_deref(), Some("gpt-4o-2024-08-06"));
    let mut plain = reader();
    plain.feed(&Bytes::from(json));
    assert_eq!(plain.finish_with_model().1, None, "not asked");

    // Azure's first chunk (its prompt filter results) names no model.
    let stream = "data: {\"choices\":[],\"model\":\"\",\"prompt_filter_results\":[]}\n\ndata: {\"choices\":[],\"model\":\"gpt-4o-mini\"}\n\ndata: [DONE]\n\n";
    let mut r = UsageReader::for_content_type(Some(b"text/event-stream"))
        .unwrap()
        .reading_model();
    r.feed(&Bytes::from(stream));
    assert_eq!(r.finish_with_model().1.as_deref(), Some("gpt-4o-mini"));
    // A value that is not a plain string is no model.
    assert_eq!(model_in(br#""model": {"name": "x"}"#), None);
    assert_eq!(model_in(br#""model" : "a\"b""#), None);
}
