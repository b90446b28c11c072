//! `docker/compose.yaml`: the compose demo's services, the files they mount, the ports they
//! agree on, and the configurations they carry.

use super::*;

pub(super) fn compose() -> Value {
    yaml(&docker_dir().join("compose.yaml"))
}

/// A compose service's bind mounts: (source resolved from `docker/`, target).
pub(super) fn bind_mounts(service: &Value) -> Vec<(PathBuf, String)> {
    let Some(volumes) = service["volumes"].as_sequence() else {
        return Vec::new();
    };
    volumes
        .iter()
        .filter_map(|v| {
            let (source, target) = match v {
                Value::String(s) => {
                    let mut parts = s.splitn(3, ':');
                    (parts.next()?.to_string(), parts.next()?.to_string())
                }
                Value::Mapping(_) => (
                    v["source"].as_str()?.to_string(),
                    v["target"].as_str()?.to_string(),
                ),
                _ => return None,
            };
            (source.starts_with('.') || source.starts_with('/'))
                .then(|| (docker_dir().join(source), target))
        })
        .collect()
}

/// The source of what `service` mounts at `target`.
pub(super) fn mounted_at(service: &Value, name: &str, target: &str) -> PathBuf {
    bind_mounts(service)
        .into_iter()
        .find(|(_, t)| t == target)
        .map(|(source, _)| source)
        .unwrap_or_else(|| panic!("compose service {name}: nothing mounted at {target}"))
}

/// A compose service's `environment`, written as a map or as `K=V` lines.
fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Mapping(m) => m.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Value::Sequence(lines) => lines
            .iter()
            .filter_map(|l| l.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        _ => Vec::new(),
    }
}

/// docker/compose.yaml: every file a service mounts or builds from exists (paths relative to
/// docker/), ports are published on 127.0.0.1 only, and the proxy's configuration passes
/// `--test` with the service's own environment, wired to the simulator exactly as the demo is.
#[test]
fn compose_file_parses_and_references_existing_files() {
    let compose = compose();
    let services = compose["services"]
        .as_mapping()
        .expect("docker/compose.yaml: no services");
    for (name, service) in services {
        let name = scalar(name);
        for (source, target) in bind_mounts(service) {
            assert!(
                source.exists(),
                "compose service {name}: {} (mounted at {target}) does not exist",
                source.display()
            );
        }
        match &service["build"] {
            Value::Null => {}
            Value::String(context) => {
                let dockerfile = docker_dir().join(context).join("Dockerfile");
                assert!(dockerfile.is_file(), "{name}: no {}", dockerfile.display());
            }
            build => {
                let context = docker_dir().join(build["context"].as_str().unwrap_or("."));
                assert!(
                    context.is_dir(),
                    "{name}: no build context {}",
                    context.display()
                );
                let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
                assert!(dockerfile.is_file(), "{name}: no {}", dockerfile.display());
            }
        }
        for published in strings(&service["ports"]) {
            assert!(
                published.starts_with("127.0.0.1:"),
                "compose service {name}: port {published} is published beyond 127.0.0.1"
            );
        }
    }

    // The proxy's configuration: mounted where its command reads it, and valid.
    let proxy = &compose["services"]["proxy"];
    let command = strings(&proxy["command"]);
    let config_path = flag_values(&command, "--config")
        .pop()
        .expect("compose service proxy: no --config in its command");
    let file = mounted_at(proxy, "proxy", &config_path);
    let env = environment(proxy);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_valid_config(&file, &env);
    let config = yaml(&file);
    let (listen, admin) = container_listeners(&config, "docker/compose/aoai-proxy.yaml");
    let ports = strings(&proxy["ports"]);
    for p in listen.iter().chain([&admin]) {
        assert!(
            ports
                .iter()
                .any(|published| published.ends_with(&format!(":{p}"))),
            "compose service proxy: port {p} is not published ({ports:?})"
        );
    }

    // Its backends and managed identity are the simulator's, as `aoai-proxy demo` wires them.
    let sim = strings(&compose["services"]["backends"]["command"]);
    assert_eq!(sim.first().map(String::as_str), Some("simulate"), "{sim:?}");
    let mut simulated = flag_values(&sim, "--listen");
    simulated.extend(flag_values(&sim, "--throttled"));
    let simulated: BTreeSet<u16> = simulated.iter().map(|a| port(a)).collect();
    let backends = config["backends"].as_sequence().expect("backends");
    assert!(!backends.is_empty());
    for b in backends {
        let url = b["url"].as_str().expect("backends[].url");
        let p = url
            .strip_prefix("http://backends:")
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("backend {url} is not the backends service"));
        assert!(
            simulated.contains(&p),
            "nothing simulated on port {p} ({sim:?})"
        );
    }
    let identity = flag_values(&sim, "--identity")
        .pop()
        .expect("backends: no --identity");
    let header = flag_values(&sim, "--identity-header")
        .pop()
        .unwrap_or_else(|| "sim-identity-header".into());
    let var = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    assert_eq!(
        var("IDENTITY_ENDPOINT"),
        Some(format!("http://backends:{}/msi/token", port(&identity)).as_str())
    );
    assert_eq!(var("IDENTITY_HEADER"), Some(header.as_str()));

    // Prometheus scrapes the proxy's admin listener.
    let prometheus = &compose["services"]["prometheus"];
    let scrape = yaml(&mounted_at(
        prometheus,
        "prometheus",
        "/etc/prometheus/prometheus.yml",
    ));
    let targets: Vec<String> = scrape["scrape_configs"]
        .as_sequence()
        .expect("prometheus.yml: no scrape_configs")
        .iter()
        .flat_map(|job| {
            job["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|s| strings(&s["targets"]))
        .collect();
    assert!(
        targets.contains(&format!("proxy:{admin}")),
        "Prometheus does not scrape proxy:{admin}: {targets:?}"
    );
}

/// The proxy's spans reach Jaeger: its `telemetry.otlp.endpoint` is the collector service on
/// the port of the collector's OTLP/HTTP receiver, and the collector's trace pipeline exports
/// to the Jaeger service, whose UI is published.
#[test]
fn traces_go_through_the_collector_into_jaeger() {
    let compose = compose();
    let proxy = &compose["services"]["proxy"];
    let config = yaml(&mounted_at(
        proxy,
        "proxy",
        "/etc/aoai-proxy/aoai-proxy.yaml",
    ));
    let endpoint = config["telemetry"]["otlp"]["endpoint"]
        .as_str()
        .expect("the compose proxy has no telemetry.otlp.endpoint");
    let (host, port) = endpoint
        .strip_prefix("http://")
        .and_then(|a| a.split_once(':'))
        .expect("an http://host:port endpoint");
    let collector = &compose["services"][host];
    assert!(
        collector.is_mapping(),
        "{endpoint}: no compose service {host}"
    );
    let otel = yaml(&mounted_at(collector, host, "/etc/otelcol/config.yaml"));
    let receiver = otel["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
        .as_str()
        .expect("the collector has no OTLP/HTTP receiver");
    assert!(
        receiver.ends_with(&format!(":{port}")),
        "{receiver} is not :{port}"
    );
    let pipeline = &otel["service"]["pipelines"]["traces"];
    assert!(strings(&pipeline["receivers"]).contains(&"otlp".to_string()));
    let exporters = strings(&pipeline["exporters"]);
    let to = exporters
        .iter()
        .filter_map(|e| otel["exporters"][e.as_str()]["endpoint"].as_str())
        .find_map(|e| e.split(':').next())
        .expect("the trace pipeline exports nowhere");
    let jaeger = &compose["services"][to];
    assert!(
        jaeger.is_mapping(),
        "the collector exports to {to}: no such service"
    );
    assert!(
        strings(&jaeger["ports"])
            .iter()
            .any(|p| p.ends_with(":16686")),
        "Jaeger's UI is not published"
    );
}
