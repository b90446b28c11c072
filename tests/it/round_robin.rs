//! Round robin: exact rotation, and weights honoured.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_backends_thirty_requests_ten_each() {
    let id = identity().await;
    let b = backends(3).await;
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1], &b[2]]), Some(&id));
    for _ in 0..30 {
        assert_eq!(chat(&proxy).await.0, 200);
    }
    assert_eq!(counts(&[&b[0], &b[1], &b[2]]), vec![10, 10, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic_in_proportion() {
    let b = backends(2).await;
    let yaml = format!(
        "auth: {{kind: none}}\nbackends:\n  - {{url: \"{}\", weight: 3, api_key: k}}\n  - {{url: \"{}\", api_key: k}}\n",
        b[0].url(),
        b[1].url()
    );
    let proxy = Proxy::start(&yaml, None);
    for _ in 0..40 {
        assert_eq!(chat(&proxy).await.0, 200);
    }
    assert_eq!(counts(&[&b[0], &b[1]]), vec![30, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_spread_evenly() {
    let id = identity().await;
    let b = backends(2).await;
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    let all = (0..40).map(|_| chat(&proxy));
    for (status, _, _) in futures_util::future::join_all(all).await {
        assert_eq!(status, 200);
    }
    assert_eq!(counts(&[&b[0], &b[1]]), vec![20, 20]);
}
