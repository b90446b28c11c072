//! Statuses other than 408/429/5xx are the client's business: delivered at once, never retried.
//! (A 401 to the proxy's own Entra ID token is the one exception: see `token.rs`.)

use aoai_sim::Fault;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_delivered_at_once() {
    let b = backends(2).await;
    let yaml = format!(
        "auth: {{kind: none}}\nbackends:\n  - {{url: \"{}\", api_key: k0}}\n  - {{url: \"{}\", api_key: k1}}\n",
        b[0].url(),
        b[1].url()
    );
    let proxy = Proxy::start(&yaml, None);
    let mut expected = [0u64, 0];
    for (i, status) in [400u16, 401, 403, 404, 409, 413, 422, 501]
        .into_iter()
        .enumerate()
    {
        let target = &b[i % 2];
        target.push_fault(Fault::Status {
            status,
            headers: vec![("x-ms-error".into(), "sim".into())],
        });
        let (got, headers, body) = chat(&proxy).await;
        assert_eq!(got, status);
        assert_eq!(headers["x-ms-error"], "sim");
        assert_eq!(azure_error_code(&body), status.to_string());
        expected[i % 2] += 1;
        assert_eq!(
            counts(&[&b[0], &b[1]]),
            expected.to_vec(),
            "status {status} was retried"
        );
    }
}
