use super::*;

const AT: Prefix = Prefix {
    scope: "team-a",
    deployment: "gpt-4o",
    path: "/openai/deployments/gpt-4o/chat/completions",
    api_version: "2024-10-21",
};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

#[test]
fn key_order_and_whitespace_do_not_change_the_key() {
    let a = r#"{"messages":[{"role":"user","content":"hi \u00e9"}],"temperature":0.70}"#;
    let b = "{ \"temperature\" : 0.70,\n \"messages\" : [ { \"content\":\"hi \\u00e9\", \"role\":\"user\" } ] }";
    assert_eq!(AT.exact(a.as_bytes()), AT.exact(b.as_bytes()));
    assert!(AT.exact(a.as_bytes()).is_some());
    assert_eq!(
        String::from_utf8(canonical(b.as_bytes()).unwrap()).unwrap(),
        r#"{"messages":[{"content":"hi \u00e9","role":"user"}],"temperature":0.70}"#,
        "strings and numbers as written"
    );
    assert_eq!(AT.exact(b"not json"), None);
    assert_eq!(AT.exact(b"{\"a\":1} trailing"), None);
}

#[test]
fn a_key_given_twice_or_a_body_too_deep_is_not_cacheable() {
    assert_eq!(canonical(br#"{"b":1,"a":2,"b":3}"#), None);
    assert_eq!(
        canonical(br#"{"ab":1,"a\u0062":2}"#),
        None,
        "escaped, the same key"
    );
    let nested = |n: usize| format!("{}0{}", "[{\"z\":1,\"y\":".repeat(n), "}]".repeat(n));
    let deep = nested(MAX_DEPTH / 2 - 1);
    let written = canonical(deep.as_bytes()).unwrap();
    let value: Value = serde_json::from_str(&deep).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&written).unwrap(), value);
    assert_eq!(
        canonical(&written).unwrap(),
        written,
        "its own canonical form"
    );
    assert_eq!(canonical(nested(MAX_DEPTH / 2 + 1).as_bytes()), None);
    let precise = canonical(br#"{"a":[0.10000000000000000001, 18446744073709551616]}"#);
    assert_eq!(
        String::from_utf8(precise.unwrap()).unwrap(),
        r#"{"a":[0.10000000000000000001,18446744073709551616]}"#,
        "numbers as written, never rounded"
    );
}

#[test]
fn the_tree_form_sorts_keys_too() {
    let mut out = Vec::new();
    write_canonical(&json(r#"{"b":[{"d":1,"c":2}],"a":"x"}"#), &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"a":"x","b":[{"c":2,"d":1}]}"#
    );
}

#[test]
fn every_part_of_the_prefix_and_body_changes_the_key() {
    let body = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
    let key = AT.exact(body);
    let other = br#"{"messages":[{"role":"user","content":"hi!"}]}"#;
    assert_ne!(key, AT.exact(other));
    for changed in [
        Prefix {
            scope: "team-b",
            ..AT
        },
        Prefix { scope: "", ..AT },
        Prefix {
            deployment: "gpt-4o-mini",
            ..AT
        },
        Prefix {
            path: "/openai/deployments/gpt-4o/completions",
            ..AT
        },
        Prefix {
            api_version: "2025-01-01",
            ..AT
        },
    ] {
        assert_ne!(key, changed.exact(body), "{changed:?}");
    }
    // Where one part ends counts: "ab" + "c" is not "a" + "bc".
    let (x, y) = (
        Prefix {
            scope: "ab",
            deployment: "c",
            ..AT
        },
        Prefix {
            scope: "a",
            deployment: "bc",
            ..AT
        },
    );
    assert_ne!(x.exact(body), y.exact(body));
}

#[test]
fn the_semantic_bucket_is_the_request_without_its_user_text() {
    let a = json(
        r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Capital of France?"}],"temperature":0}"#,
    );
    let b = json(
        r#"{"temperature":0,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"capital of france"}]}]}"#,
    );
    let (bucket_a, text_a) = AT.semantic(&a, "emb").unwrap();
    let (bucket_b, text_b) = AT.semantic(&b, "emb").unwrap();
    let other_model = AT.semantic(&a, "emb-large").unwrap().0;
    assert_ne!(
        other_model, bucket_a,
        "another embeddings model, another bucket"
    );
    assert_eq!(bucket_a, bucket_b);
    assert_eq!(
        (text_a.as_str(), text_b.as_str()),
        ("Capital of France?", "capital of france")
    );
    let raw_a = serde_json::to_vec(&a).unwrap();
    assert_ne!(
        Some(bucket_a),
        AT.exact(&raw_a),
        "a bucket is not an exact key"
    );
    let system = json(
        r#"{"messages":[{"role":"system","content":"Be long."},{"role":"user","content":"Capital of France?"}],"temperature":0}"#,
    );
    assert_ne!(
        AT.semantic(&system, "emb").unwrap().0,
        bucket_a,
        "other non-user turns"
    );
    let turns = json(
        r#"{"messages":[{"role":"user","content":"One"},{"role":"assistant","content":"A"},{"role":"user","content":"Two"}]}"#,
    );
    assert_eq!(AT.semantic(&turns, "emb").unwrap().1, "One\n\nTwo");
    let image = json(
        r#"{"messages":[{"role":"user","content":[{"type":"text","text":"What is this?"},{"type":"image_url","image_url":{"url":"data:"}}]}]}"#,
    );
    assert!(
        AT.semantic(&image, "emb").is_none(),
        "an image is more than text"
    );
    assert!(AT.semantic(&json(r#"{"prompt":"hi"}"#), "emb").is_none());
}
