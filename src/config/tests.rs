use super::*;

const MINIMAL: &str = "listen: [\"127.0.0.1:8080\"]\nauth: {kind: none}\nbackends:\n  - url: https://a.openai.azure.com\n";

fn problems(yaml: &str) -> Vec<Problem> {
    Config::from_yaml(yaml).expect_err("the configuration should be refused")
}

#[test]
fn the_shipped_example_is_valid() {
    let text = include_str!("../../conf/aoai-proxy.yaml");
    let c = Config::from_yaml(text).unwrap();
    assert_eq!(c.backends.len(), 2);
    assert_eq!(c.backends[0].weight, 2);
    assert_eq!(c.backends[1].name, "westus");
    assert_eq!(c.max_tries.get(), 3);
    assert_eq!(c.auth.scope, Auth::DEFAULT_SCOPE);
}

#[test]
fn defaults_are_filled_in() {
    let c = Config::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.max_tries.get(), 3);
    assert_eq!(c.backends[0].name, "a.openai.azure.com");
    assert_eq!(c.backends[0].weight, 1);
    assert_eq!(c.timeouts, Timeouts::default());
    assert_eq!(c.sizes.max_body_bytes, 32 << 20);
    assert!(c.clients.is_none());
}

#[test]
fn unknown_keys_name_the_key_and_line() {
    let p = problems(&format!("{MINIMAL}    wieght: 2\n"));
    assert_eq!(p[0].path, "backends[0].wieght");
    assert_eq!(p[0].line, Some(5));
    assert!(
        p[0].message.contains("unknown field `wieght`"),
        "{}",
        p[0].message
    );
    let p = problems(&format!("{MINIMAL}retries: 3\n"));
    assert_eq!(p[0].path, "retries");
}

#[test]
fn environment_variables_are_substituted_or_named() {
    let env = |name: &str| (name == "AOAI_TEST_CONFIG_KEY").then(|| "k-123".to_string());
    let c = Config::from_yaml_with_env(
        &format!("{MINIMAL}    api_key: ${{AOAI_TEST_CONFIG_KEY}}\n"),
        env,
    )
    .unwrap();
    assert_eq!(c.backends[0].api_key.as_ref().unwrap().expose(), "k-123");
    let p = problems(&format!("{MINIMAL}    api_key: ${{AOAI_TEST_UNSET_VAR}}\n"));
    assert_eq!(p[0].path, "backends[0].api_key");
    assert_eq!(p[0].line, Some(5));
    assert!(p[0].message.contains("AOAI_TEST_UNSET_VAR"));
}

#[test]
fn every_validation_problem_is_reported() {
    let yaml = "listen: []\nauth: {kind: managed_identity, tenant_id: t}\nbackends: []\nclients: []\nretry: {max_tries: 0}\n";
    let paths: Vec<String> = problems(yaml).into_iter().map(|p| p.path).collect();
    for expected in [
        "listen",
        "backends",
        "clients",
        "retry.max_tries",
        "auth.tenant_id",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected} missing from {paths:?}"
        );
    }
}

#[test]
fn bad_values_are_refused() {
    for (yaml, path) in [
        ("  - url: ftp://a\n", "backends[1].url"),
        (
            "  - url: https://a.openai.azure.com/openai/deployments\n",
            "backends[1].url",
        ),
        (
            "  - {url: \"https://b\", weight: 0}\n",
            "backends[1].weight",
        ),
        (
            "  - {url: \"https://b\", name: a.openai.azure.com}\n",
            "backends",
        ),
        // Not a deployment name: the metrics' sentinels, and a name past Azure's 64.
        (
            "  - {url: \"https://b\", deployments: {\"-\": gpt-4o}}\n",
            "backends[1].deployments.-",
        ),
        (
            "  - {url: \"https://b\", deployments: {gpt-4o: \"(other)\"}}\n",
            "backends[1].deployments.gpt-4o",
        ),
    ] {
        let p = problems(&format!("{MINIMAL}{yaml}"));
        assert_eq!(p[0].path, path, "{yaml}: {p:?}");
    }
    let p = problems(&format!("{MINIMAL}timeouts: {{connect: 5 parsecs}}\n"));
    assert_eq!(p[0].path, "timeouts.connect");
    let p =
        problems("listen: [\"nowhere\"]\nauth: {kind: none}\nbackends: [{url: \"https://a\"}]\n");
    assert_eq!(p[0].path, "listen[0]");
    let p = problems(
        "listen: [\"127.0.0.1:1\"]\nauth: {kind: magic}\nbackends: [{url: \"https://a\"}]\n",
    );
    assert_eq!(p[0].path, "auth.kind");
}

#[test]
fn user_assigned_identity_takes_one_id() {
    let c = Config::from_yaml("listen: [\"127.0.0.1:1\"]\nauth: {kind: managed_identity, client_id: abc}\nbackends: [{url: \"https://a\"}]\n").unwrap();
    assert_eq!(
        c.auth.credential,
        CredentialKind::ManagedIdentity {
            user_assigned: Some(UserAssigned::ClientId("abc".into()))
        }
    );
    problems("listen: [\"127.0.0.1:1\"]\nauth: {kind: managed_identity, client_id: a, object_id: b}\nbackends: [{url: \"https://a\"}]\n");
}

#[test]
fn errors_print_file_line_and_path() {
    let e = ConfigError {
        file: "conf.yaml".into(),
        problems: vec![Problem {
            path: "backends[0].url".into(),
            line: Some(7),
            message: "bad".into(),
        }],
    };
    assert_eq!(e.to_string(), "conf.yaml:7: backends[0].url: bad");
}

#[test]
fn secrets_do_not_print_in_debug() {
    let c = Config::from_yaml(&format!(
        "{MINIMAL}    api_key: very-secret-key\nclients: [{{name: a, key: client-secret-key}}]\n"
    ))
    .unwrap();
    let dump = format!("{c:?}");
    assert!(
        !dump.contains("very-secret-key") && !dump.contains("client-secret-key"),
        "{dump}"
    );
}

#[test]
fn limits_and_timeouts_have_bounds() {
    for (yaml, path) in [
        ("limits: {max_body_bytes: 0}\n", "limits.max_body_bytes"),
        ("limits: {max_body_bytes: 2GiB}\n", "limits.max_body_bytes"),
        ("timeouts: {connect: 0s}\n", "timeouts.connect"),
        ("timeouts: {connect: 1h}\n", "timeouts.connect"),
        (
            "timeouts: {response_header: 2000000h}\n",
            "timeouts.response_header",
        ),
    ] {
        let p = problems(&format!("{MINIMAL}{yaml}"));
        assert_eq!(p[0].path, path, "{yaml}");
    }
}

#[test]
fn secrets_lose_surrounding_whitespace_and_refuse_control_characters() {
    let c = Config::from_yaml(&format!(
        "{MINIMAL}    api_key: \"k-1\\n\"\nclients: [{{name: a, key: \" key-a \"}}]\n"
    ))
    .unwrap();
    assert_eq!(c.backends[0].api_key.as_ref().unwrap().expose(), "k-1");
    assert_eq!(
        c.clients.unwrap()[0].digest,
        Some(crate::config::KeyDigest::of(b"key-a"))
    );
    let p = problems(&format!("{MINIMAL}    api_key: \"a\\nb\"\n"));
    assert_eq!(p[0].path, "backends[0].api_key");
}

#[test]
fn one_address_cannot_serve_two_listeners() {
    let p = problems(&format!("{MINIMAL}admin: {{listen: \"127.0.0.1:8080\"}}\n"));
    assert_eq!(p[0].path, "listen");
    assert!(p[0].message.contains("admin.listen"), "{}", p[0].message);
}

#[test]
fn client_secret_settings_default_to_the_azure_variables() {
    let env = |name: &str| match name {
        "AZURE_TENANT_ID" => Some("tenant-from-env".to_string()),
        "AZURE_CLIENT_ID" => Some("client-from-env".to_string()),
        "AZURE_CLIENT_SECRET" => Some("secret-from-env".to_string()),
        _ => None,
    };
    let yaml = "listen: [\"127.0.0.1:1\"]\nauth: {kind: client_secret, client_id: from-file}\nbackends: [{url: \"https://a\"}]\n";
    let c = Config::from_yaml_with_env(yaml, env).unwrap();
    let CredentialKind::ClientSecret {
        tenant_id,
        client_id,
        secret,
    } = c.auth.credential
    else {
        panic!("not a client secret: {:?}", c.auth.credential);
    };
    assert_eq!(
        (tenant_id.as_str(), client_id.as_str()),
        ("tenant-from-env", "from-file")
    );
    assert_eq!(secret.expose(), "secret-from-env");
    // Unset (or empty) and not in the file: named.
    let p = Config::from_yaml_with_env(yaml, |_| Some(String::new())).unwrap_err();
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["auth.tenant_id", "auth.client_secret"]);
}

#[test]
fn defaults_are_the_named_ones() {
    let c = Config::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.max_tries, Config::DEFAULT_MAX_TRIES);
    assert_eq!(c.auth.refresh_before, Auth::DEFAULT_REFRESH_BEFORE);
    assert_eq!(c.auth.startup_wait, Auth::DEFAULT_STARTUP_WAIT);
    assert_eq!(c.cooldown, CooldownPolicy::default());
    assert_eq!(c.ejection, EjectionPolicy::default());
    assert_eq!(c.sizes, Sizes::default());
    assert_eq!(
        c.server.grace_period,
        ServerSettings::default().grace_period
    );
    let c = Config::from_yaml(&format!("{MINIMAL}    health_check: {{kind: http}}\n")).unwrap();
    assert_eq!(
        c.backends[0].health_check,
        Some(HealthCheck {
            kind: HealthCheckKind::Http {
                path: HealthCheck::DEFAULT_PATH.into()
            },
            interval: HealthCheck::DEFAULT_INTERVAL,
        })
    );
}

#[test]
fn a_client_gives_a_key_or_its_digest() {
    let with = |clients: &str| Config::from_yaml(&format!("{MINIMAL}clients:\n{clients}"));
    // sha256("key-b")
    let c = with("  - {name: a, key: key-a}\n  - {name: b, key_sha256: A30534A53B23547377DDCCBD1AC85A8A84C13DB43493C16E55A6ABC7B0EBA634}\n").unwrap();
    let clients = c.clients.unwrap();
    assert_eq!(
        clients[1].digest,
        Some(crate::config::KeyDigest::of(b"key-b"))
    );
    for (clients, path) in [
        ("  - {name: a}\n", "clients[0]"),
        ("  - {name: a, key: k, key_sha256: 00}\n", "clients[0]"),
        (
            "  - {name: a, key_sha256: not-hex}\n",
            "clients[0].key_sha256",
        ),
        (
            "  - {name: a, key: same}\n  - {name: b, key: same}\n",
            "clients",
        ),
        (
            "  - {name: a, key_sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855}\n",
            "clients[0].key_sha256",
        ),
    ] {
        let p = with(clients).unwrap_err();
        assert_eq!(p[0].path, path, "{clients}: {p:?}");
    }
    // Two broken entries are two problems, not also "the same key".
    let p = with("  - {name: a}\n  - {name: b}\n").unwrap_err();
    assert_eq!(p.len(), 2, "{p:?}");
}

#[test]
fn paths_are_prefixes() {
    let c = Config::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.paths, ["/openai/"]);
    let c = Config::from_yaml(&format!("{MINIMAL}paths: [/openai/, /models/]\n")).unwrap();
    assert_eq!(c.paths, ["/openai/", "/models/"]);
    for (paths, path) in [
        ("[]", "paths"),
        ("[/openai]", "paths[0]"),
        ("[openai/]", "paths[0]"),
        ("[/openai/, /a/../b/]", "paths[1]"),
    ] {
        let p = problems(&format!("{MINIMAL}paths: {paths}\n"));
        assert_eq!(p[0].path, path, "{paths}");
    }
}

#[test]
fn client_limits_are_validated_with_their_keys() {
    let entra = "client_auth: {entra: {tenant: t1, audience: \"api://x\"}}\n";
    let c = Config::from_yaml(&format!(
        "{MINIMAL}{entra}clients:\n  - {{name: a, key: k, requests_per_minute: 60, tokens_per_minute: 1000, deployments: [gpt-4o]}}\n  - {{name: b, entra_ids: [ABC-1]}}\n"
    ))
    .unwrap();
    let e = c.entra_clients.as_ref().unwrap();
    assert_eq!(
        e.jwks_url,
        "https://login.microsoftonline.com/t1/discovery/v2.0/keys"
    );
    assert_eq!(e.issuers.len(), 2);
    let clients = c.clients.unwrap();
    let l = &clients[0].limits;
    assert_eq!(l.requests_per_minute.map(|n| n.get()), Some(60));
    assert_eq!(l.tokens_per_minute.map(|n| n.get()), Some(1000));
    assert!(l.deployments.as_ref().unwrap().contains("gpt-4o"));
    assert_eq!(clients[1].digest, None, "known by its Entra ID alone");
    assert_eq!(clients[1].entra_ids, ["abc-1"]);
    for (client, path) in [
        (
            "{name: a, key: k, requests_per_minute: 0}",
            "clients[0].requests_per_minute",
        ),
        (
            "{name: a, key: k, tokens_per_minute: 0}",
            "clients[0].tokens_per_minute",
        ),
        (
            "{name: a, key: k, deployments: []}",
            "clients[0].deployments",
        ),
        ("{name: a, entra_ids: []}", "clients[0].entra_ids"),
        // `-` is the metrics' and the access log's "no client".
        ("{name: \"-\", key: k}", "clients[0].name"),
    ] {
        let p = problems(&format!("{MINIMAL}{entra}clients:\n  - {client}\n"));
        assert!(p.iter().any(|p| p.path == path), "{client}: {p:?}");
    }
    let p = problems(&format!(
        "{MINIMAL}{entra}clients:\n  - {{name: a, entra_ids: [x]}}\n  - {{name: b, entra_ids: [X]}}\n"
    ));
    assert!(p.iter().any(|p| p.message.contains("two clients")), "{p:?}");
    // Entra ID clients need both halves: the tenant to check against, and who is who.
    let p = problems(&format!("{MINIMAL}{entra}"));
    assert!(p.iter().any(|p| p.path == "client_auth.entra"), "{p:?}");
    let p = problems(&format!(
        "{MINIMAL}clients:\n  - {{name: a, entra_ids: [x]}}\n"
    ));
    assert!(p.iter().any(|p| p.path == "clients"), "{p:?}");
}

#[test]
fn objects_remembered_is_a_positive_count() {
    let c = Config::from_yaml(&format!("{MINIMAL}objects: {{remember: 500}}\n")).unwrap();
    assert_eq!(c.objects_remembered.get(), 500);
    let c = Config::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.objects_remembered, Config::DEFAULT_OBJECTS_REMEMBERED);
    let p = problems(&format!("{MINIMAL}objects: {{remember: 0}}\n"));
    assert_eq!(p[0].path, "objects.remember");
    assert!(p[0].line.is_some(), "{p:?}");
}

#[test]
fn workers_run_their_own_runtimes_unless_told_to_share_one() {
    let c = Config::from_yaml(MINIMAL).unwrap();
    assert!(!c.server.work_stealing, "the fast path is the default");
    let c = Config::from_yaml(&format!("{MINIMAL}server: {{work_stealing: true}}\n")).unwrap();
    assert!(c.server.work_stealing);
    let p = problems(&format!("{MINIMAL}server:\n  work_stealing: sometimes\n"));
    assert_eq!(p[0].path, "server.work_stealing");
    assert_eq!(p[0].line, Some(6));
}

#[test]
fn capacity_settings_default_to_round_robin_and_no_waiting_and_are_checked() {
    let c = Config::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.strategy, Strategy::RoundRobin);
    assert_eq!(c.waiting, Waiting::default());
    assert!(c.waiting.budget.is_zero());
    let c = Config::from_yaml(&format!(
        "{MINIMAL}balance: {{strategy: headroom}}\nretry: {{wait_for_capacity: 15s, max_waiting: 50}}\n"
    ))
    .unwrap();
    assert_eq!(c.strategy, Strategy::Headroom);
    assert_eq!(c.waiting.budget, Duration::from_secs(15));
    assert_eq!(c.waiting.max, 50);
    let p = problems(&format!("{MINIMAL}balance:\n  strategy: fastest\n"));
    assert_eq!(p[0].path, "balance.strategy");
    assert_eq!(p[0].line, Some(6));
    let p = problems(&format!(
        "{MINIMAL}retry: {{wait_for_capacity: 10m, max_waiting: 0}}\n"
    ));
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["retry.wait_for_capacity", "retry.max_waiting"]);
    assert!(p[0].message.contains("at most 5m"), "{}", p[0].message);
}
