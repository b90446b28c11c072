//! Each cause of a failed try sends the request on to the next backend, which answers.

use std::time::Duration;

use aoai_sim::{Backend, Fault};

use crate::common::*;

/// Backend b0 fails the first request with `fault`; b1 must serve it.
async fn fails_over(fault: Fault, extra_yaml: &str) -> (Vec<u64>, String) {
    let id = identity().await;
    let b = backends(2).await;
    b[0].push_fault(fault);
    let proxy = Proxy::start(
        &format!("{}{extra_yaml}", mi_yaml(&[&b[0], &b[1]])),
        Some(&id),
    );
    let (status, headers, body) = chat(&proxy).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-sim-backend"], "b1");
    (counts(&[&b[0], &b[1]]), proxy.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_go_to_the_next_backend() {
    for status in [408, 429, 500, 502, 503, 504] {
        let (counts, log) = fails_over(
            Fault::Status {
                status,
                headers: vec![],
            },
            "",
        )
        .await;
        assert_eq!(counts, vec![1, 1], "status {status}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_goes_to_the_next_backend() {
    let (counts, _) = fails_over(Fault::Drop, "").await;
    assert_eq!(counts, vec![1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_header_within_the_timeout_goes_to_the_next_backend() {
    let started = std::time::Instant::now();
    let (counts, _) = fails_over(
        Fault::Delay(Duration::from_secs(10)),
        "timeouts: {response_header: 500ms}\n",
    )
    .await;
    assert_eq!(counts, vec![1, 1]);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the timeout did not cut the slow try short"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_goes_to_the_next_backend() {
    let id = identity().await;
    let b = backend("b1").await;
    let dead = DeadPort::new();
    let yaml = format!("auth: {{kind: managed_identity}}\nbackends:\n  - {{url: \"{}\", name: dead}}\n  - {{url: \"{}\", name: b1}}\n", dead.url(), b.url());
    let proxy = Proxy::start(&yaml, Some(&id));
    for _ in 0..4 {
        let (status, headers, _) = chat(&proxy).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-sim-backend"], "b1");
    }
    assert_eq!(b.requests(), 4);
    let (_, metrics) = proxy.admin_get("/metrics");
    assert!(
        metrics.contains("aoai_proxy_backend_tries_total{backend=\"dead\",outcome=\"connect\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_happen_without_waiting() {
    let id = identity().await;
    let b: Vec<Backend> = backends(3).await;
    b[0].push_fault(Fault::throttle(30));
    b[1].push_fault(Fault::Status {
        status: 503,
        headers: vec![],
    });
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1], &b[2]]), Some(&id));
    let started = std::time::Instant::now();
    assert_eq!(chat(&proxy).await.0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "two retries took {:?}",
        started.elapsed()
    );
    assert_eq!(counts(&[&b[0], &b[1], &b[2]]), vec![1, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_hangs_times_out_and_goes_to_the_next_backend() {
    // A listener that never accepts, with its accept queue filled: Linux drops further SYNs,
    // so a connect to it hangs until the proxy's connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let hung = socket.listen(0).unwrap();
    let addr = hung.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let id = identity().await;
    let b = backend("b1").await;
    let yaml = format!(
        "auth: {{kind: managed_identity}}\nbackends:\n  - {{url: \"http://{addr}\", name: hung}}\n  - {{url: \"{}\", name: b1}}\ntimeouts: {{connect: 300ms}}\n",
        b.url()
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    let started = std::time::Instant::now();
    let (status, headers, _) = chat(&proxy).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-sim-backend"], "b1");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the connect timeout did not apply: {:?}",
        started.elapsed()
    );
    let (_, metrics) = proxy.admin_get("/metrics");
    assert!(
        metrics.contains("backend=\"hung\",outcome=\"timeout\"} 1"),
        "{metrics}"
    );
    drop(fillers);
}
