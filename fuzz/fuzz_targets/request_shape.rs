//! What the proxy reads from a request's target and body: whether the path is forwarded, the
//! client key taken out of the query, and the typed view (the deployment, the objects named,
//! the token estimate, the stream usage asked for, the target and body renamed for a backend).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

use aoai_proxy::proxy::paths;
use aoai_proxy::request::{query, Request};

fuzz_target!(|data: &[u8]| {
    // Target, then body, split at the first NUL.
    let (target, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let prefixes = vec!["/openai/".to_string()];
    let Ok(target) = paths::forwarded(target, &prefixes) else {
        return;
    };
    assert!(target.starts_with(b"/openai/"));
    assert!(target.iter().all(|b| (0x21..0x7f).contains(b)));
    // The path (not the query, where a `\` is only data) has no separator but `/`.
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    assert!(!path.contains(&b'\\'));
    let text = std::str::from_utf8(target).expect("printable ASCII");
    if let Some((_, q)) = text.split_once('?') {
        if let Some(kept) = query::without_client_key(q) {
            assert!(query::client_key(Some(&kept)).is_none(), "{q:?} kept a key");
        }
    }
    let Ok(head) = pingora_http::RequestHeader::build("POST", target, None) else {
        return;
    };
    let Ok(request) = Request::read(&head, Bytes::copy_from_slice(body), true) else {
        return;
    };
    if let Some(d) = request.deployment() {
        assert!(!d.is_empty());
    }
    let _ = request.estimate_tokens();
    let _ = request.objects();
    if request.hides_usage_event() {
        let v: serde_json::Value =
            serde_json::from_slice(request.body()).expect("the body asking for usage is JSON");
        assert_eq!(v["stream_options"]["include_usage"], true);
    }
    let renamed = request.for_backend("other", head.raw_path());
    // A request that names no deployment (a Realtime query without one) has none to rename.
    if let (Some(_), Some(path)) = (request.deployment(), renamed.path) {
        assert!(path.windows(5).any(|w| w == b"other"));
    }
    if let Some(body) = renamed.body {
        let v: serde_json::Value = serde_json::from_slice(&body).expect("renamed body is JSON");
        assert_eq!(v["model"], "other");
    }
});
