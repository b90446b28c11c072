//! `/metrics` after traffic of every kind is valid Prometheus text: every family has its
//! `# HELP` and `# TYPE`, and Prometheus's own parser and linter (`promtool check metrics`)
//! find nothing to say.

use std::io::Write;
use std::process::{Command, Stdio};

use aoai_sim::Fault;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_page_passes_promtool_after_traffic() {
    let id = identity().await;
    let b = backends(2).await;
    // A retried 429 (a cooldown), a 5xx, tokens by client and deployment, a probed backend,
    // a client name that must be escaped, and the cache's families.
    b[0].push_fault(Fault::throttle(60));
    b[1].push_fault(Fault::Status {
        status: 500,
        headers: Vec::new(),
    });
    let yaml = format!(
        "auth: {{kind: managed_identity}}\nbackends:\n  - {{url: \"{}\", name: b0}}\n  - {{url: \"{}\", name: b1, health_check: {{kind: tcp, interval: 100ms}}}}\nclients: [{{name: \"team \\\"a\\\" \\\\ b\", key: k}}]\ncache: {{}}\n",
        b[0].url(),
        b[1].url()
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    for path in [
        CHAT,
        CHAT,
        "/openai/deployments/x\"y/chat/completions",
        CHAT,
    ] {
        client()
            .post(proxy.url(path))
            .header("api-key", "k")
            .json(&chat_body())
            .send()
            .await
            .unwrap();
    }
    let page = proxy
        .wait_for_metrics("every family has a series", |m| {
            m.contains("aoai_proxy_backend_probe_up{")
                && m.contains("aoai_proxy_backend_cooling_seconds{")
                && m.contains("aoai_proxy_tokens_total{")
                && m.contains("aoai_proxy_cache_total{result=\"miss\"}")
        })
        .await;
    for line in page.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            page.contains(&format!("# HELP {name} ")),
            "{name} has no HELP:\n{page}"
        );
    }
    assert!(
        page.contains(r#"client="team \"a\" \\ b""#),
        "the client's name is not escaped:\n{page}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package, which scripts/deps installs)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\n{page}",
        out.status
    );
}
