//! `--test`: a bad configuration names the file, the line and the key, and exits non-zero;
//! a good one exits 0.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// Runs `aoai-proxy --config FILE ARGS` on `yaml` until it exits (at most 30 s: a proxy that
/// starts serving instead fails the test), with the managed identity of `identity` (or one
/// nothing answers): (exit code, stderr, file path).
fn run(
    yaml: &str,
    args: &[&str],
    identity: Option<&aoai_sim::IdentityEndpoint>,
) -> (i32, String, String) {
    let dir = scratch_dir();
    let file = dir.join("conf.yaml");
    std::fs::write(&file, yaml).unwrap();
    // To a file, not a pipe: nothing reads a pipe until the process is gone.
    let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
    let endpoint = identity.map_or("http://127.0.0.1:9/unused".into(), |id| id.endpoint());
    let mut child = Command::new(env!("CARGO_BIN_EXE_aoai-proxy"))
        .arg("--config")
        .arg(&file)
        .args(args)
        .env("IDENTITY_ENDPOINT", endpoint)
        .env("IDENTITY_HEADER", IDENTITY_HEADER)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("aoai-proxy on {} still runs after 30 s", file.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap();
    (
        status.code().unwrap_or(-1),
        stderr,
        file.display().to_string(),
    )
}

/// `--test` on `yaml`.
fn check(yaml: &str) -> (i32, String, String) {
    run(yaml, &["--test"], None)
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
        (format!("{GOOD}state: {{redis: {{url: \"http://127.0.0.1:6379\"}}}}\n"), ": state.redis.url: not a Redis URL"),
        (format!("{GOOD}state: {{redis: {{url: \"redis://127.0.0.1:6379\", timeout: 10s}}}}\n"), ": state.redis.timeout:"),
        (format!("{GOOD}state: {{redis: {{url: \"redis://127.0.0.1:6379\", prefix: \"\"}}}}\n"), ": state.redis.prefix:"),
        (format!("{GOOD}state: {{redis: {{url: \"redis://127.0.0.1:6379\", ca_file: /nonexistent/ca.pem}}}}\n"), ": state.redis.ca_file: a CA is for TLS"),
        (format!("{GOOD}state: {{redis: {{url: \"rediss://127.0.0.1:6380\", ca_file: /nonexistent/ca.pem}}}}\n"), ": state.redis.ca_file: /nonexistent/ca.pem"),
        (format!("{GOOD}cache: {{scope: team}}\n"), ":6: cache.scope: unknown variant `team`"),
        (format!("{GOOD}cache: {{semantic: {{embeddings_deployment: \"\"}}}}\n"), ": cache.semantic.embeddings_deployment: must name a deployment"),
    ] {
        let (code, stderr, file) = check(&yaml);
        assert_ne!(code, 0, "accepted:\n{yaml}");
        assert!(stderr.contains(&format!("{file}{expected}")), "expected {expected:?} in:\n{stderr}");
    }
}

/// The Redis URL is a secret: a URL the proxy refuses is named by its key, never printed.
#[test]
fn a_bad_redis_url_is_refused_without_its_password() {
    let (code, stderr, file) = check(&format!(
        "{GOOD}state: {{redis: {{url: \"redis://:hunter2@127.0.0.1:notaport/0\"}}}}\n"
    ));
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("{file}: state.redis.url: not a Redis URL")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the password was printed: {stderr}"
    );
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

#[test]
fn a_start_fails_exactly_where_test_does() {
    // Valid YAML that only building the credential refuses: its token file cannot be read.
    let yaml = GOOD.replace(
        "kind: managed_identity",
        "kind: workload_identity\n  tenant_id: t\n  client_id: c\n  token_file: /nonexistent/sa-token",
    );
    let expected = "auth.kind workload_identity: cannot read the token file /nonexistent/sa-token";
    let (code, checked, _) = check(&yaml);
    assert_ne!(code, 0);
    assert!(checked.contains(expected), "{checked}");
    let (code, started, _) = run(&yaml, &[], None);
    assert_ne!(code, 0, "the proxy started");
    assert!(started.contains(expected), "{started}");
}

#[test]
fn a_listener_key_that_does_not_match_its_certificate_is_named() {
    let ca = crate::common::certs::TestCa::new("listener CA");
    let (one, other) = (ca.leaf(), ca.leaf());
    let dir = scratch_dir();
    std::fs::write(dir.join("tls.crt"), &one.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &other.key_pem).unwrap();
    let yaml = format!(
        "{GOOD}tls: {{listen: \"127.0.0.1:8443\", cert: \"{}\", key: \"{}\"}}\n",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    );
    let (code, stderr, file) = check(&yaml);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!(
            "{file}: tls.key: {}",
            dir.join("tls.key").display()
        )),
        "{stderr}"
    );
}

#[test]
fn every_unusable_file_is_reported_at_once() {
    let (code, stderr, file) = check(&format!(
        "{GOOD}tls: {{listen: \"127.0.0.1:8443\", cert: /nonexistent/tls.crt, key: /nonexistent/tls.key}}\nupstream_tls: {{ca_file: /nonexistent/ca.pem}}\n"
    ));
    assert_ne!(code, 0);
    for key in ["tls.cert", "tls.key", "upstream_tls.ca_file"] {
        assert!(
            stderr.contains(&format!("{file}: {key}: /nonexistent/")),
            "{key} in:\n{stderr}"
        );
    }
}

/// Runs `aoai-proxy ARGS` under `strace` (following every thread) until it exits: its exit code,
/// and the lines of the trace that are the network or name resolution: a file the resolver
/// reads (`/etc/hosts`, `/etc/resolv.conf`, `/etc/nsswitch.conf`, nscd's socket), an IP socket,
/// a connect.
fn network_calls(args: &[&str], env: &[(&str, String)]) -> (i32, Vec<String>) {
    let out = scratch_dir().join("strace");
    let status = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=socket,connect,openat,open", "-o"])
        .arg(&out)
        .arg(env!("CARGO_BIN_EXE_aoai-proxy"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("strace (Debian's strace, which scripts/deps installs)");
    let trace = std::fs::read_to_string(&out).expect("the trace");
    let marks = [
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/nsswitch.conf",
        "nscd",
        "AF_INET",
        "connect(",
    ];
    let calls = trace
        .lines()
        .filter(|l| marks.iter().any(|m| l.contains(m)))
        .map(str::to_string)
        .collect();
    (status.code().unwrap_or(-1), calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_touches_no_network_and_resolves_no_name() {
    // The control: a command that resolves a name (from /etc/hosts: nothing leaves the
    // machine) and connects is seen doing both.
    let (_, seen) = network_calls(&["health", "--url", "http://localhost:9/readyz"], &[]);
    assert!(
        seen.iter().any(|l| l.contains("/etc/hosts"))
            && seen.iter().any(|l| l.contains("connect(")),
        "strace did not see a name resolved and a connection made: {seen:#?}"
    );
    // Names wherever the configuration can give one: the listener, backends (one probed), the
    // client keys' endpoint, Redis; and a token endpoint that counts what it is asked.
    let id = identity().await;
    let yaml = "listen: [\"localhost:8080\"]\nauth: {kind: managed_identity}\n\
        backends:\n  - url: https://localhost:1\n  - {url: \"https://localhost:2\", health_check: {kind: http}}\n\
        client_auth: {entra: {tenant: t, audience: a, jwks_url: \"https://localhost:3/keys\"}}\n\
        clients: [{name: c, entra_ids: [x]}]\nstate: {redis: {url: \"redis://localhost:4\"}}\n";
    let file = scratch_dir().join("conf.yaml");
    std::fs::write(&file, yaml).unwrap();
    let env = [
        ("IDENTITY_ENDPOINT", id.endpoint()),
        ("IDENTITY_HEADER", IDENTITY_HEADER.to_string()),
    ];
    let path = file.display().to_string();
    let (code, seen) = network_calls(&["--config", &path, "--test"], &env);
    assert_eq!(code, 0, "--test failed");
    assert!(seen.is_empty(), "--test touched the network: {seen:#?}");
    assert!(id.queries().is_empty(), "--test fetched a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_address_in_use_is_named_and_ends_the_start() {
    // A proxy with two workers listens there already. Its sockets share their port among its
    // workers (SO_REUSEPORT), which a second proxy's sockets could join unnoticed: the start
    // checks each address first.
    let b = backend("b0").await;
    let backends = format!("backends:\n  - {{url: \"{}\", api_key: k}}\n", b.url());
    let first = Proxy::start(
        &format!("auth: {{kind: none}}\nserver: {{threads: 2}}\n{backends}"),
        None,
    );
    let addr = format!("127.0.0.1:{}", first.port);
    let yaml =
        format!("listen: [\"{addr}\"]\nserver: {{threads: 2}}\nauth: {{kind: none}}\n{backends}");
    let (code, stderr, file) = run(&yaml, &[], None);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{file}: listen: {addr}: ")),
        "{stderr}"
    );
    assert_eq!(chat(&first).await.0, 200, "the first proxy still serves");
    assert_eq!(b.requests(), 1);
}
