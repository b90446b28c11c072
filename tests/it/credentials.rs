//! Every Entra ID credential kind, each through its real `azure_identity` credential against
//! a local fake: the Entra token endpoint over HTTPS with a test CA (client secret, workload
//! identity), the App Service managed identity endpoint, and a fake `az` on PATH.

use std::time::Duration;

use aoai_sim::EntraEndpoint;

use crate::common::certs::TestCa;
use crate::common::*;

/// A fake Entra endpoint, its CA file, and the environment pointing the credential at it.
async fn entra() -> (EntraEndpoint, std::path::PathBuf, Vec<(String, String)>) {
    let ca = TestCa::new("entra test CA");
    let endpoint = EntraEndpoint::start(ca.leaf(), Duration::from_secs(3600))
        .await
        .unwrap();
    let file = scratch_dir().join("ca.pem");
    std::fs::write(&file, &ca.cert_pem).unwrap();
    let env = vec![(
        "AZURE_AUTHORITY_HOST".to_string(),
        endpoint.authority_host(),
    )];
    (endpoint, file, env)
}

fn start(yaml: String, env: Vec<(String, String)>) -> Proxy {
    Proxy::start_with(Start {
        yaml,
        identity: None,
        wait_ready: true,
        env,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_through_its_real_credential() {
    let (entra, ca, mut env) = entra().await;
    env.push(("SP_SECRET".into(), "sp-secret-value".into()));
    let b = backend("b0").await;
    let yaml = format!(
        "upstream_tls: {{ca_file: \"{}\"}}\nauth:\n  kind: client_secret\n  tenant_id: 72f988bf-86f1-41af-91ab-2d7cd011db47\n  client_id: app-123\n  client_secret: ${{SP_SECRET}}\n{}",
        ca.display(),
        backends_yaml(&[&b])
    );
    let proxy = start(yaml, env);
    assert_eq!(chat(&proxy).await.0, 200);
    assert_eq!(
        b.recorded()[0].headers["authorization"],
        "Bearer entra-token-1"
    );
    let r = &entra.requests()[0];
    assert_eq!(r.tenant, "72f988bf-86f1-41af-91ab-2d7cd011db47");
    assert_eq!(r.form["client_id"], "app-123");
    assert_eq!(r.form["client_secret"], "sp-secret-value");
    assert_eq!(
        r.form["scope"],
        "https://cognitiveservices.azure.com/.default"
    );
    assert!(!proxy.log().contains("sp-secret-value"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_from_the_standard_environment() {
    let (entra, ca, mut env) = entra().await;
    env.extend([
        ("AZURE_TENANT_ID".to_string(), "tenant-from-env".to_string()),
        ("AZURE_CLIENT_ID".to_string(), "client-from-env".to_string()),
        (
            "AZURE_CLIENT_SECRET".to_string(),
            "secret-from-env".to_string(),
        ),
    ]);
    let b = backend("b0").await;
    let yaml = format!(
        "upstream_tls: {{ca_file: \"{}\"}}\nauth: {{kind: client_secret}}\n{}",
        ca.display(),
        backends_yaml(&[&b])
    );
    let proxy = start(yaml, env);
    assert_eq!(chat(&proxy).await.0, 200);
    let r = &entra.requests()[0];
    assert_eq!(
        (r.tenant.as_str(), r.form["client_id"].as_str()),
        ("tenant-from-env", "client-from-env")
    );
    assert_eq!(r.form["client_secret"], "secret-from-env");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_through_its_real_credential() {
    let (entra, ca, mut env) = entra().await;
    let token_file = scratch_dir().join("sa-token");
    std::fs::write(&token_file, "kubernetes-service-account-jwt").unwrap();
    // As the AKS webhook injects them.
    env.extend([
        ("AZURE_TENANT_ID".to_string(), "aks-tenant".to_string()),
        ("AZURE_CLIENT_ID".to_string(), "aks-client".to_string()),
        (
            "AZURE_FEDERATED_TOKEN_FILE".to_string(),
            token_file.display().to_string(),
        ),
    ]);
    let b = backend("b0").await;
    let yaml = format!(
        "upstream_tls: {{ca_file: \"{}\"}}\nauth: {{kind: workload_identity}}\n{}",
        ca.display(),
        backends_yaml(&[&b])
    );
    let proxy = start(yaml, env);
    assert_eq!(chat(&proxy).await.0, 200);
    assert_eq!(
        b.recorded()[0].headers["authorization"],
        "Bearer entra-token-1"
    );
    let r = &entra.requests()[0];
    assert_eq!(r.tenant, "aks-tenant");
    assert_eq!(r.form["client_id"], "aks-client");
    assert_eq!(r.form["client_assertion"], "kubernetes-service-account-jwt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_settings_in_the_file_win() {
    let (entra, ca, env) = entra().await;
    let token_file = scratch_dir().join("sa-token");
    std::fs::write(&token_file, "jwt-from-yaml").unwrap();
    let b = backend("b0").await;
    let yaml = format!(
        "upstream_tls: {{ca_file: \"{}\"}}\nauth: {{kind: workload_identity, tenant_id: yaml-tenant, client_id: yaml-client, token_file: \"{}\"}}\n{}",
        ca.display(),
        token_file.display(),
        backends_yaml(&[&b])
    );
    let proxy = start(yaml, env);
    assert_eq!(chat(&proxy).await.0, 200);
    let r = &entra.requests()[0];
    assert_eq!(
        (r.tenant.as_str(), r.form["client_id"].as_str()),
        ("yaml-tenant", "yaml-client")
    );
    assert_eq!(r.form["client_assertion"], "jwt-from-yaml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_cli_through_a_fake_az_on_path() {
    let bin = scratch_dir();
    let args_log = bin.join("az-args.log");
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> '{}'\nexp=$(( $(date +%s) + 3600 ))\nprintf '{{\"accessToken\":\"cli-token\",\"expires_on\":%s,\"tokenType\":\"Bearer\"}}\\n' \"$exp\"\n",
        args_log.display()
    );
    let az = bin.join("az");
    std::fs::write(&az, script).unwrap();
    std::fs::set_permissions(&az, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let b = backend("b0").await;
    let proxy = start(
        format!("auth: {{kind: azure_cli}}\n{}", backends_yaml(&[&b])),
        vec![("PATH".into(), path)],
    );
    assert_eq!(chat(&proxy).await.0, 200);
    assert_eq!(b.recorded()[0].headers["authorization"], "Bearer cli-token");
    let args = std::fs::read_to_string(&args_log).unwrap();
    assert!(args.contains("account get-access-token"), "{args}");
    assert!(
        args.contains("--scope https://cognitiveservices.azure.com/.default"),
        "{args}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_assigned_object_id_reaches_the_endpoint() {
    let id = identity().await;
    let b = backend("b0").await;
    let yaml = format!(
        "auth: {{kind: managed_identity, object_id: 99999999-8888-7777-6666-555555555555}}\n{}",
        backends_yaml(&[&b])
    );
    let proxy = Proxy::start(&yaml, Some(&id));
    assert_eq!(chat(&proxy).await.0, 200);
    let q = &id.queries()[0];
    assert!(q.contains("99999999-8888-7777-6666-555555555555"), "{q}");
}

/// Runs `--test` with `yaml` and `env`: (success, stderr).
fn check(yaml: &str, env: &[(&str, &str)]) -> (bool, String) {
    let file = scratch_dir().join("conf.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aoai-proxy"))
        .args(["-c", file.to_str().unwrap(), "-t"])
        .env_remove("AZURE_FEDERATED_TOKEN_FILE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn misconfigured_credentials_are_clear_startup_errors() {
    let backends = "backends: [{url: \"https://a.openai.azure.com\"}]\nlisten: [\"127.0.0.1:1\"]\n";
    let (ok, err) = check(&format!("auth: {{kind: workload_identity, tenant_id: t, client_id: c, token_file: /nonexistent/token}}\n{backends}"), &[]);
    assert!(!ok && err.contains("/nonexistent/token"), "{err}");
    let (ok, err) = check(
        &format!("auth: {{kind: workload_identity, tenant_id: t, client_id: c}}\n{backends}"),
        &[],
    );
    assert!(!ok && err.contains("AZURE_FEDERATED_TOKEN_FILE"), "{err}");
    let (ok, err) = check(
        &format!("auth: {{kind: client_secret, client_id: c, client_secret: s}}\n{backends}"),
        &[("AZURE_TENANT_ID", "")],
    );
    assert!(!ok && err.contains("tenant"), "{err}");
    // App Service managed identity cannot take a resource id: said at start-up, not at the first fetch.
    let (ok, err) = check(
        &format!("auth: {{kind: managed_identity, resource_id: /subscriptions/x/resourceGroups/y/providers/Microsoft.ManagedIdentity/userAssignedIdentities/z}}\n{backends}"),
        &[("IDENTITY_ENDPOINT", "http://127.0.0.1:9/msi"), ("IDENTITY_HEADER", "h")],
    );
    assert!(!ok && err.contains("managed_identity"), "{err}");
}
