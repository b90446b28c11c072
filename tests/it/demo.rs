//! `aoai-proxy demo`: the `curl` and `openai` SDK lines it prints work as printed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn the_printed_lines_work_as_printed() {
    // Port 0: the demo picks its ports, and the lines it prints name them.
    let mut demo = Command::new(env!("CARGO_BIN_EXE_aoai-proxy"))
        .args(["demo", "--port", "0"])
        .env("RUST_LOG", "warn")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo");
    let stdout = demo.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The lines to run follow their headings.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut curl, mut python, mut heading) = (None, None, String::new());
    while python.is_none() && Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        let line = line.trim().to_string();
        if heading.starts_with("curl (non-streaming)") && line.starts_with("curl ") {
            curl = Some(line.clone());
        } else if heading.starts_with("openai Python SDK") && line.starts_with("python3 ") {
            python = Some(line.clone());
        }
        if !line.is_empty() {
            heading = line;
        }
    }
    let run = |line: &str| {
        Command::new("sh")
            .args(["-c", line])
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .expect("sh")
    };
    let curl = curl.expect("the demo printed no curl line");
    let out = run(&curl);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("\"chat.completion\"") && body.contains("aoai-proxy simulator"),
        "{curl}\n{body}"
    );
    let python = python.expect("the demo printed no openai line");
    let out = run(&python);
    assert!(
        out.status.success(),
        "{python}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Hello! This answer comes from the aoai-proxy simulator."
    );
    let _ = demo.kill();
    let _ = demo.wait();
}

/// `aoai-proxy simulate --throttle-every-ms`: now and then one `--listen` backend (each in turn)
/// answers one request 429 with the `retry-after-ms` asked for, and 200 otherwise (the soak's
/// trouble).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_throttles_each_backend_in_turn_when_asked() {
    let ports = [free_port(), free_port()];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aoai-proxy"));
    cmd.arg("simulate");
    for p in ports {
        cmd.args(["--listen", &format!("127.0.0.1:{p}")]);
    }
    let sim = cmd
        .args(["--throttle-every-ms", "100", "--retry-after-ms", "700"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("simulate");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _sim = Kill(sim);
    let client = client();
    let (mut throttled, mut served) = ([0u32; 2], [0u32; 2]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while throttled.contains(&0) && Instant::now() < deadline {
        for (i, p) in ports.iter().enumerate() {
            let Ok(r) = client
                .post(format!("http://127.0.0.1:{p}{CHAT}"))
                .header("api-key", "k")
                .json(&chat_body())
                .send()
                .await
            else {
                continue; // not listening yet
            };
            match r.status().as_u16() {
                429 => {
                    assert_eq!(r.headers()["retry-after-ms"], "700");
                    throttled[i] += 1;
                }
                200 => served[i] += 1,
                s => panic!("backend {i} answered {s}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!throttled.contains(&0), "throttled {throttled:?}");
    assert!(!served.contains(&0), "served {served:?}");
}
