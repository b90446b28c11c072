//! `deploy/kubernetes/`: the manifests parse, agree with each other, and carry a configuration
//! the proxy accepts.

use super::*;

/// The one object of `kind`.
fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "deploy/kubernetes: {} {kind}", found.len());
    found[0]
}

/// Whether the label selector (a map) is non-empty and every label it asks for is in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_mapping()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// A container port given by number or by name.
fn container_port(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    let name = port.as_str().expect("a port number or name");
    container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}")) as u16
}

/// `60s`, `2m`, `500ms` in whole seconds (rounded up).
fn seconds(d: &str) -> u64 {
    let digits = d.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: {d}"));
    match &d[digits.len()..] {
        "ms" => n.div_ceil(1000),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        unit => panic!("unit {unit:?} in {d}"),
    }
}

/// deploy/kubernetes: kustomization.yaml lists every manifest, each parses with apiVersion, kind
/// and a name; the ConfigMap's configuration passes `--test` with what the workload identity
/// webhook injects; probes ask /healthz and /readyz on the admin port it listens on; the pod is
/// labelled for workload identity and its ServiceAccount annotated; the pod runs locked down and
/// longer than the proxy's grace period; Service, PDB and HPA find the Deployment's pods.
#[test]
fn kubernetes_manifests_parse() {
    let dir = root().join("deploy/kubernetes");
    let kustomization = yaml(&dir.join("kustomization.yaml"));
    let resources = strings(&kustomization["resources"]);
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed = resources.clone();
    listed.sort();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml resources vs the manifests"
    );

    let mut objects = Vec::new();
    for file in &resources {
        let text = read(&dir.join(file));
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            if v.is_null() {
                continue;
            }
            for key in ["apiVersion", "kind"] {
                assert!(
                    v[key].as_str().is_some_and(|s| !s.is_empty()),
                    "{file}: no {key}"
                );
            }
            assert!(
                v["metadata"]["name"].as_str().is_some(),
                "{file}: no metadata.name"
            );
            objects.push(v);
        }
    }

    let deployment = one(&objects, "Deployment");
    let pod = &deployment["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(
        labels["azure.workload.identity/use"].as_str(),
        Some("true"),
        "the pod is not labelled for workload identity"
    );
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        labels
    ));
    let account = one(&objects, "ServiceAccount");
    assert!(pod["spec"]["serviceAccountName"].is_string());
    assert_eq!(
        pod["spec"]["serviceAccountName"],
        account["metadata"]["name"]
    );
    assert!(
        account["metadata"]["annotations"]["azure.workload.identity/client-id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "the ServiceAccount has no azure.workload.identity/client-id"
    );

    // The configuration: mounted from the ConfigMap (as a directory, so edits reach it), valid.
    let container = &pod["spec"]["containers"][0];
    let config_path = flag_values(&strings(&container["args"]), "--config")
        .pop()
        .expect("no --config in the container's args");
    let (config_dir, config_name) = config_path.rsplit_once('/').expect("an absolute path");
    let mount = container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"].as_str() == Some(config_dir))
        .unwrap_or_else(|| panic!("nothing mounted at {config_dir}"));
    assert!(
        mount["subPath"].is_null(),
        "a subPath mount never sees an edited ConfigMap"
    );
    let volume = pod["spec"]["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .expect("the config volume");
    let config_map = one(&objects, "ConfigMap");
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    let text = config_map["data"][config_name]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap has no {config_name}"));
    let scratch = scratch_dir();
    let (file, token) = (
        scratch.join(config_name),
        scratch.join("azure-identity-token"),
    );
    std::fs::write(&file, text).unwrap();
    std::fs::write(&token, "service-account-token").unwrap();
    let id = "00000000-0000-0000-0000-000000000000";
    assert_valid_config(
        &file,
        &[
            ("AZURE_TENANT_ID", id),
            ("AZURE_CLIENT_ID", id),
            ("AZURE_FEDERATED_TOKEN_FILE", token.to_str().unwrap()),
        ],
    );
    let config: Value = serde_yaml::from_str(text).unwrap();
    assert_eq!(config["auth"]["kind"].as_str(), Some("workload_identity"));
    let (listen, admin) = container_listeners(&config, "the ConfigMap's configuration");

    // The Redis option: the Deployment passes the URL from a Secret that may be absent, the
    // README says how to make that Secret, and the ConfigMap's commented `state:` lines,
    // uncommented, pass `--test` with it.
    let redis_url = container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|e| e["name"].as_str() == Some("AOAI_PROXY_REDIS_URL"))
        .expect("the Deployment passes no AOAI_PROXY_REDIS_URL");
    let secret = &redis_url["valueFrom"]["secretKeyRef"];
    assert_eq!(
        secret["optional"].as_bool(),
        Some(true),
        "the pods must start without the Redis Secret"
    );
    let secret_name = secret["name"].as_str().expect("the Redis Secret's name");
    let secret_key = secret["key"].as_str().expect("the Redis Secret's key");
    assert!(
        read(&dir.join("README.md")).contains(&format!(
            "create secret generic {secret_name} -n NAMESPACE \\\n     --from-literal={secret_key}="
        )),
        "deploy/kubernetes/README.md does not say how to create the {secret_name} Secret"
    );
    let mut uncommented = 0;
    let with_redis: String = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            match trimmed.strip_prefix("# ") {
                Some(rest @ ("state:" | "  redis:" | "    url: ${AOAI_PROXY_REDIS_URL}")) => {
                    uncommented += 1;
                    format!("{indent}{rest}\n")
                }
                _ => format!("{line}\n"),
            }
        })
        .collect();
    assert_eq!(
        uncommented, 3,
        "the ConfigMap's commented state.redis lines"
    );
    std::fs::write(&file, &with_redis).unwrap();
    assert_valid_config(
        &file,
        &[
            ("AZURE_TENANT_ID", id),
            ("AZURE_CLIENT_ID", id),
            ("AZURE_FEDERATED_TOKEN_FILE", token.to_str().unwrap()),
            (
                "AOAI_PROXY_REDIS_URL",
                "rediss://:key@example.redis.cache.windows.net:6380/0",
            ),
        ],
    );

    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        if probe == "startupProbe" && container[probe].is_null() {
            continue;
        }
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            container_port(container, &get["port"]),
            admin,
            "{probe}: the admin port"
        );
    }
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(admin.to_string().as_str())
    );

    // Locked down, as the image's user, and given longer than the proxy drains.
    let security = &container["securityContext"];
    // A container's own setting, else the pod's.
    let effective = |key: &str| -> Value {
        match &security[key] {
            Value::Null => pod["spec"]["securityContext"][key].clone(),
            v => v.clone(),
        }
    };
    assert_eq!(effective("runAsNonRoot").as_bool(), Some(true));
    if let Some(uid) = effective("runAsUser").as_u64() {
        assert_eq!(
            uid.to_string(),
            image_uid(&dockerfile()),
            "the image's USER"
        );
    }
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert!(strings(&security["capabilities"]["drop"]).contains(&"ALL".to_string()));
    for limits in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !container["resources"][limits][resource].is_null(),
                "no resources.{limits}.{resource}"
            );
        }
    }
    let grace = config["server"]["grace_period"]
        .as_str()
        .map_or(60, seconds);
    let termination = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    assert!(
        termination > grace,
        "terminationGracePeriodSeconds {termination} <= server.grace_period {grace}s"
    );

    // Service, PodDisruptionBudget and HorizontalPodAutoscaler find the pods.
    let service = one(&objects, "Service");
    assert!(
        selects(&service["spec"]["selector"], labels),
        "the Service selects no pod"
    );
    let targets: BTreeSet<u16> = service["spec"]["ports"]
        .as_sequence()
        .expect("Service ports")
        .iter()
        .map(|p| {
            let target = &p["targetPort"];
            container_port(
                container,
                if target.is_null() { &p["port"] } else { target },
            )
        })
        .collect();
    for p in listen.iter().chain([&admin]) {
        assert!(targets.contains(p), "the Service does not reach port {p}");
    }
    let pdb = one(&objects, "PodDisruptionBudget");
    assert!(
        selects(&pdb["spec"]["selector"]["matchLabels"], labels),
        "the PDB selects no pod"
    );
    let hpa = one(&objects, "HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"].as_str(), Some("autoscaling/v2"));
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"].as_str(), Some("Deployment"));
    assert_eq!(target["name"], deployment["metadata"]["name"]);
    assert!(
        deployment["spec"]["replicas"].is_null(),
        "replicas in the Deployment fights the HPA on every apply"
    );
}
