//! `retry.max_tries` bounds the tries; when they run out the client gets the last answer as
//! it was, or a 502/504 in Azure's error shape when there was none.

use std::time::Duration;

use aoai_sim::Fault;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_throttled_backends_give_the_last_429_as_it_was() {
    let id = identity().await;
    let b = backends(4).await;
    for (i, backend) in b.iter().enumerate() {
        backend.set_fault(Some(Fault::throttle(10 + i as u64)));
    }
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1], &b[2], &b[3]]), Some(&id));
    let (status, headers, body) = chat(&proxy).await;
    assert_eq!(status, 429);
    assert_eq!(
        counts(&[&b[0], &b[1], &b[2], &b[3]]),
        vec![1, 1, 1, 0],
        "default max_tries is 3"
    );
    // The third backend's answer, untouched: its headers and its body.
    assert_eq!(headers["x-sim-backend"], "b2");
    assert_eq!(headers["retry-after"], "12");
    assert_eq!(headers["retry-after-ms"], "12000");
    assert!(body.contains("Please retry after 12 seconds"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tries_is_honoured() {
    let id = identity().await;
    let b = backends(3).await;
    for backend in &b {
        backend.set_fault(Some(Fault::Status {
            status: 500,
            headers: vec![],
        }));
    }
    let proxy = Proxy::start(
        &format!(
            "{}retry: {{max_tries: 2}}\n",
            mi_yaml(&[&b[0], &b[1], &b[2]])
        ),
        Some(&id),
    );
    assert_eq!(chat(&proxy).await.0, 500);
    assert_eq!(counts(&[&b[0], &b[1], &b[2]]), vec![1, 1, 0]);

    let proxy = Proxy::start(
        &format!(
            "{}retry: {{max_tries: 1}}\n",
            mi_yaml(&[&b[0], &b[1], &b[2]])
        ),
        Some(&id),
    );
    assert_eq!(chat(&proxy).await.0, 500);
    assert_eq!(
        counts(&[&b[0], &b[1], &b[2]]),
        vec![2, 1, 0],
        "max_tries 1 must not retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_is_tried_once_before_any_twice() {
    // Dropped connections (a 429 or 503 would put the backend in a cooldown instead).
    let id = identity().await;
    let b = backends(2).await;
    for backend in &b {
        backend.set_fault(Some(Fault::Drop));
    }
    let proxy = Proxy::start(
        &format!("{}retry: {{max_tries: 3}}\n", mi_yaml(&[&b[0], &b[1]])),
        Some(&id),
    );
    let (status, _, _) = chat(&proxy).await;
    assert_eq!(status, 502);
    assert_eq!(counts(&[&b[0], &b[1]]), vec![2, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_at_all_is_a_502_in_azures_shape() {
    let id = identity().await;
    let dead: Vec<DeadPort> = (0..3).map(|_| DeadPort::new()).collect();
    let yaml = format!(
        "auth: {{kind: managed_identity}}\nbackends:\n{}",
        dead.iter()
            .map(|d| format!("  - {{url: \"{}\"}}\n", d.url()))
            .collect::<String>()
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    let (status, headers, body) = chat(&proxy).await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(azure_error_code(&body), "BadGateway");
    assert!(body.contains("after 3 tries"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_on_the_last_try_is_a_504() {
    let id = identity().await;
    let b = backends(2).await;
    for backend in &b {
        backend.set_fault(Some(Fault::Delay(Duration::from_secs(10))));
    }
    let proxy = Proxy::start(
        &format!(
            "{}timeouts: {{response_header: 300ms}}\n",
            mi_yaml(&[&b[0], &b[1]])
        ),
        Some(&id),
    );
    let (status, _, body) = chat(&proxy).await;
    assert_eq!(status, 504);
    assert_eq!(azure_error_code(&body), "GatewayTimeout");
    assert_eq!(counts(&[&b[0], &b[1]]), vec![2, 1]);
}
