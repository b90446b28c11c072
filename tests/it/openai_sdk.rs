//! The stock `openai` Python SDK (AzureOpenAI client) works through the proxy, streaming and not.

use crate::common::*;

const SCRIPT: &str = r#"
import sys
from openai import AzureOpenAI
c = AzureOpenAI(azure_endpoint=sys.argv[1], api_key="team-key", api_version="2024-10-21", max_retries=0)
r = c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
print("CHAT", r.choices[0].message.content, r.usage.total_tokens)
s = c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True, stream_options={"include_usage": True})
parts, usage = [], None
for chunk in s:
    if chunk.choices:
        parts.append(chunk.choices[0].delta.content or "")
    if chunk.usage:
        usage = chunk.usage.total_tokens
print("STREAM", "".join(parts), usage)
e = c.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
print("EMBED", len(e.data))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_openai_client_streaming_and_not() {
    let id = identity().await;
    let b = backends(2).await;
    let proxy = Proxy::start(
        &format!(
            "{}clients: [{{name: sdk, key: team-key}}]\n",
            mi_yaml(&[&b[0], &b[1]])
        ),
        Some(&id),
    );
    let url = proxy.url("");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", SCRIPT, &url])
            .env("NO_PROXY", "127.0.0.1")
            .output()
    })
    .await
    .unwrap()
    .expect("python3 is needed (.ci/run installs it with the openai package)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK failed (is `openai` installed? scripts/test installs it):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = "Hello! This answer comes from the aoai-proxy simulator.";
    assert!(stdout.contains(&format!("CHAT {answer} ")), "{stdout}");
    assert!(stdout.contains(&format!("STREAM {answer} ")), "{stdout}");
    assert!(stdout.contains("EMBED 2"), "{stdout}");
    assert_eq!(b[0].requests() + b[1].requests(), 3);
    let paths: Vec<String> = b[0]
        .recorded()
        .iter()
        .chain(b[1].recorded().iter())
        .map(|r| r.uri.clone())
        .collect();
    assert!(
        paths
            .iter()
            .any(|p| p
                .starts_with("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21")),
        "{paths:?}"
    );
}
