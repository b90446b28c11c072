//! What the proxy reads from a request's path and body: the deployment, the renamed path and
//! body, whether the path is forwarded, the stream usage option and the token estimate.
#![no_main]

use libfuzzer_sys::fuzz_target;

use aoai_proxy::balance::deployment;
use aoai_proxy::proxy::paths;

fuzz_target!(|data: &[u8]| {
    // Path, then body, split at the first NUL.
    let (path, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let prefixes = vec!["/openai/".to_string()];
    if let Ok(target) = paths::forwarded(path, &prefixes) {
        assert!(target.starts_with(b"/openai/"));
        assert!(target.iter().all(|b| (0x21..0x7f).contains(b)));
        // The path (not the query, where a `\` is only data) has no separator but `/`.
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        assert!(!path.contains(&b'\\'));
    }
    let path = String::from_utf8_lossy(path);
    if let Some(d) = deployment::requested(&path, body) {
        assert!(!d.is_empty());
    }
    if let Some(renamed) = deployment::rename_in_path(path.as_bytes(), "other") {
        assert!(renamed.windows(5).any(|w| w == b"other"));
    }
    if let Some(renamed) = deployment::rename_in_body(body, "other") {
        let v: serde_json::Value = serde_json::from_slice(&renamed).expect("renamed body is JSON");
        assert_eq!(v["model"], "other");
    }
    let _ = aoai_proxy::usage::ask_for_stream_usage(&path, Some("api-version=2024-10-21"), body);
    let _ = aoai_proxy::limits::estimate_tokens(body);
});
