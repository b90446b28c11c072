//! `--test`: a bad configuration names the file, the line and the key, and exits non-zero;
//! a good one exits 0.

use std::process::Command;

use crate::common::*;

/// Runs `aoai-proxy --config FILE --test` on `yaml`: (exit code, stderr, file path).
fn check(yaml: &str) -> (i32, String, String) {
    let file = scratch_dir().join("conf.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aoai-proxy"))
        .args(["--config", file.to_str().unwrap(), "--test"])
        .env("IDENTITY_ENDPOINT", "http://127.0.0.1:9/unused")
        .env("IDENTITY_HEADER", "unused")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (
        out.status.code().unwrap_or(-1),
        stderr,
        file.display().to_string(),
    )
}

const GOOD: &str = "listen: [\"127.0.0.1:8080\"]\nauth:\n  kind: managed_identity\nbackends:\n  - url: https://a.openai.azure.com\n";

#[test]
fn a_valid_file_passes() {
    let (code, stderr, _) = check(GOOD);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn the_shipped_example_passes() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/aoai-proxy.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_aoai-proxy"))
        .args(["-c", file, "-t"])
        .env("IDENTITY_ENDPOINT", "http://127.0.0.1:9/unused")
        .env("IDENTITY_HEADER", "unused")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn errors_name_file_line_and_key() {
    for (yaml, expected) in [
        (format!("{GOOD}    wieght: 2\n"), ":6: backends[0].wieght: unknown field `wieght`"),
        (format!("{GOOD}    api_key: ${{AOAI_PROXY_TEST_UNSET}}\n"), ":6: backends[0].api_key: environment variable AOAI_PROXY_TEST_UNSET is not set"),
        (GOOD.replace("https://a.openai.azure.com", "https://a.openai.azure.com/openai"), ":5: backends[0].url:"),
        (GOOD.replace("managed_identity", "magic"), ":3: auth.kind: unknown variant `magic`"),
        (format!("{GOOD}clients: []\n"), ": clients: an empty list would refuse every request"),
        (format!("{GOOD}retry: {{max_tries: 0}}\n"), ": retry.max_tries: must be at least 1"),
        (format!("{GOOD}tls: {{listen: \"127.0.0.1:8443\", cert: /nonexistent/tls.crt, key: /nonexistent/tls.key}}\n"), ": tls.cert: /nonexistent/tls.crt"),
        (format!("{GOOD}upstream_tls: {{ca_file: /nonexistent/ca.pem}}\n"), ": upstream_tls.ca_file: /nonexistent/ca.pem"),
    ] {
        let (code, stderr, file) = check(&yaml);
        assert_ne!(code, 0, "accepted:\n{yaml}");
        assert!(stderr.contains(&format!("{file}{expected}")), "expected {expected:?} in:\n{stderr}");
    }
}

#[test]
fn a_missing_file_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_aoai-proxy"))
        .args(["-c", "/nonexistent/aoai.yaml", "-t"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("/nonexistent/aoai.yaml: cannot read the file"));
}

#[test]
fn a_bad_file_stops_the_proxy_from_starting() {
    let file = scratch_dir().join("bad.yaml");
    std::fs::write(&file, format!("{GOOD}surprise: 1\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aoai-proxy"))
        .args(["-c", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("surprise"));
}
