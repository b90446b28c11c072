//! HTTPS: upstream TLS with SNI, `Host` and verification always on (extra CA from
//! `upstream_tls.ca_file`), an untrusted backend failing over, and the client-facing listener.

use aoai_sim::{Backend, BackendOptions};

use crate::common::certs::TestCa;
use crate::common::*;

async fn https_backend(name: &str, ca: &TestCa) -> Backend {
    Backend::start(BackendOptions {
        name: name.into(),
        record: true,
        tls: Some(ca.leaf()),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn write_ca(ca: &TestCa) -> std::path::PathBuf {
    let file = scratch_dir().join("ca.pem");
    std::fs::write(&file, &ca.cert_pem).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_backends_are_verified_with_the_extra_ca() {
    let ca = TestCa::new("aoai-proxy test CA");
    let id = identity().await;
    let b = https_backend("b0", &ca).await;
    let yaml = format!(
        "upstream_tls: {{ca_file: \"{}\"}}\n{}",
        write_ca(&ca).display(),
        mi_yaml(&[&b])
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    let (status, _, body) = chat(&proxy).await;
    assert_eq!(status, 200, "{body}\n{}", proxy.log());
    let r = &b.recorded()[0];
    assert_eq!(r.headers["host"], format!("localhost:{}", b.addr().port()));
    assert_eq!(r.headers["authorization"], "Bearer sim-token-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_and_is_retried_elsewhere() {
    let trusted = TestCa::new("trusted CA");
    let rogue = TestCa::new("rogue CA");
    let id = identity().await;
    let bad = https_backend("bad", &rogue).await;
    let good = https_backend("good", &trusted).await;
    let yaml = format!(
        "upstream_tls: {{ca_file: \"{}\"}}\n{}",
        write_ca(&trusted).display(),
        mi_yaml(&[&bad, &good])
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    let (status, headers, _) = chat(&proxy).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-sim-backend"], "good");
    assert_eq!(
        bad.requests(),
        0,
        "a request reached a backend whose certificate is not trusted"
    );
    let (_, metrics) = proxy.admin_get("/metrics");
    assert!(
        metrics.contains("backend=\"b0\",outcome=\"tls\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_extra_ca_a_private_certificate_is_refused() {
    let ca = TestCa::new("private CA");
    let id = identity().await;
    let b = https_backend("b0", &ca).await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    let (status, _, body) = chat(&proxy).await;
    assert_eq!(status, 502);
    assert!(body.contains("TLS"), "{body}");
    assert_eq!(b.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_can_connect_over_https() {
    let ca = TestCa::new("listener CA");
    let leaf = ca.leaf();
    let dir = scratch_dir();
    std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &leaf.key_pem).unwrap();
    let id = identity().await;
    let b = backend("b0").await;
    let yaml = format!(
        "tls: {{listen: \"127.0.0.1:0\", cert: \"{}\", key: \"{}\"}}\n{}",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display(),
        mi_yaml(&[&b])
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    let port = proxy.tls_port.expect("the HTTPS port");
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let r = client
        .post(format!("https://localhost:{port}{CHAT}"))
        .json(&chat_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(b.requests(), 1);
}
