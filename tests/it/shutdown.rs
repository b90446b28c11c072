//! SIGTERM: stop accepting, let in-flight requests (streams included) finish, exit 0 — as soon
//! as they are done, not after the whole grace period.

use std::time::{Duration, Instant};

use aoai_sim::{Backend, BackendOptions};
use futures_util::StreamExt;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_stream_finish_then_exits_zero() {
    let id = identity().await;
    let b = Backend::start(BackendOptions {
        answer: "a b c d e f g h".into(),
        chunk_delay: std::time::Duration::from_millis(150),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut proxy = Proxy::start(
        &format!("{}server: {{grace_period: 60s}}\n", mi_yaml(&[&b])),
        Some(&id),
    );
    let body = serde_json::json!({"stream": true, "messages": []});
    let r = client()
        .post(proxy.url(CHAT))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let mut text = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();

    let status = std::process::Command::new("kill")
        .args(["-TERM", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let signalled = Instant::now();

    while let Some(chunk) = stream.next().await {
        text.push_str(
            std::str::from_utf8(&chunk.expect("the stream broke during shutdown")).unwrap(),
        );
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    // New connections are refused once the listener has closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", proxy.port)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "exit waited for the whole grace period"
    );
}
