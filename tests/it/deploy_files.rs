//! The deployment files: the image (`docker/Dockerfile`), the compose demo with Prometheus and
//! Grafana (`docker/`) and the Kubernetes manifests (`deploy/kubernetes/`) name files that
//! exist, carry configurations the proxy accepts, agree with each other on ports and paths, and
//! the dashboard queries only metrics the proxy exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aoai_sim::Fault;
use serde::Deserialize;
use serde_yaml::Value;

use crate::common::*;

/// The repository root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `docker/`: where the compose file's relative paths start.
fn docker_dir() -> PathBuf {
    root().join("docker")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A YAML scalar as a string.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => panic!("not a scalar: {v:?}"),
    }
}

/// A list of scalars (or one string, split at spaces, as compose reads a `command` string).
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Null => Vec::new(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        _ => panic!("not a list: {v:?}"),
    }
}

/// Every value of `flag` in `args`, written `--flag=value` or `--flag value`.
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = args.iter();
    while let Some(a) = args.next() {
        if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            out.push(v.to_string());
        } else if a == flag {
            out.extend(args.next().cloned());
        }
    }
    out
}

/// The port of `host:port`.
fn port(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("not host:port: {addr}"))
}

/// The ports of a configuration's `listen` and its `admin.listen`, each checked to be on every
/// address (0.0.0.0), as a container or a pod needs.
fn container_listeners(config: &Value, file: &str) -> (Vec<u16>, u16) {
    let listen = strings(&config["listen"]);
    let admin = config["admin"]["listen"]
        .as_str()
        .unwrap_or_else(|| panic!("{file}: no admin.listen"))
        .to_string();
    for addr in listen.iter().chain([&admin]) {
        assert!(
            addr.starts_with("0.0.0.0:"),
            "{file}: {addr} cannot be reached from outside the container"
        );
    }
    (listen.iter().map(|a| port(a)).collect(), port(&admin))
}

/// Runs `aoai-proxy --config FILE --test` with `env`; panics with its stderr unless it exits 0.
fn assert_valid_config(file: &Path, env: &[(&str, &str)]) {
    let out = Command::new(env!("CARGO_BIN_EXE_aoai-proxy"))
        .arg("--config")
        .arg(file)
        .arg("--test")
        // Never the instance metadata service, whatever the file says.
        .env("IDENTITY_ENDPOINT", "http://127.0.0.1:9/unused")
        .env("IDENTITY_HEADER", "unused")
        .envs(env.iter().copied())
        .output()
        .expect("cannot run aoai-proxy");
    assert!(
        out.status.success(),
        "{} fails --test:\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- docker/compose.yaml -------------------------------------------------------------------

fn compose() -> Value {
    yaml(&docker_dir().join("compose.yaml"))
}

/// A compose service's bind mounts: (source resolved from `docker/`, target).
fn bind_mounts(service: &Value) -> Vec<(PathBuf, String)> {
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
fn mounted_at(service: &Value, name: &str, target: &str) -> PathBuf {
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

// ---- Grafana --------------------------------------------------------------------------------

fn dashboard_file() -> PathBuf {
    docker_dir().join("grafana/aoai-proxy-dashboard.json")
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(&dashboard_file())).expect("the dashboard is not JSON")
}

/// Every value under `key`, at any depth.
fn values_of<'a>(v: &'a serde_json::Value, key: &str, out: &mut Vec<&'a serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    out.push(x);
                }
                values_of(x, key, out);
            }
        }
        serde_json::Value::Array(items) => {
            for x in items {
                values_of(x, key, out);
            }
        }
        _ => {}
    }
}

/// The provisioning files parse, the data source is the compose Prometheus under the uid every
/// panel names, and the dashboard folder they load is where compose mounts the dashboard JSON.
#[test]
fn grafana_provisioning_loads_the_mounted_dashboard() {
    let compose = compose();
    let grafana = &compose["services"]["grafana"];
    let provisioning = mounted_at(grafana, "grafana", "/etc/grafana/provisioning");

    let sources = yaml(&provisioning.join("datasources/prometheus.yaml"));
    let source = &sources["datasources"][0];
    assert_eq!(source["type"].as_str(), Some("prometheus"));
    let uid = source["uid"].as_str().expect("datasource uid");
    let url = source["url"].as_str().expect("datasource url");
    let host = url
        .strip_prefix("http://")
        .and_then(|h| h.split(':').next())
        .expect("an http:// url");
    assert!(
        compose["services"][host].is_mapping(),
        "the data source {url} is no compose service"
    );

    let providers = yaml(&provisioning.join("dashboards/aoai-proxy.yaml"));
    let folder = providers["providers"][0]["options"]["path"]
        .as_str()
        .expect("providers[0].options.path");
    let expected = std::fs::canonicalize(dashboard_file()).expect("the dashboard JSON");
    let (_, target) = bind_mounts(grafana)
        .into_iter()
        .find(|(source, _)| std::fs::canonicalize(source).ok().as_ref() == Some(&expected))
        .expect("compose does not mount docker/grafana/aoai-proxy-dashboard.json into grafana");
    assert_eq!(
        Path::new(&target).parent(),
        Some(Path::new(folder)),
        "the dashboard is mounted at {target}, the provider loads {folder}"
    );

    let dashboard = dashboard();
    assert_eq!(dashboard["schemaVersion"], 39);
    assert!(
        !read(&dashboard_file()).contains("${DS_"),
        "an import-only data source variable"
    );
    let mut refs = Vec::new();
    values_of(&dashboard, "datasource", &mut refs);
    let prometheus: Vec<_> = refs.iter().filter(|r| r["type"] == "prometheus").collect();
    assert!(!prometheus.is_empty());
    for r in prometheus {
        assert_eq!(r["uid"], uid, "a panel names another data source: {r}");
    }
}

/// The metric names an expression queries, a histogram's `_bucket`/`_sum`/`_count` stripped
/// (what the regex `aoai_proxy_[a-z_]+` finds).
fn metric_names(expr: &str) -> Vec<String> {
    const PREFIX: &str = "aoai_proxy_";
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find(PREFIX) {
        let tail = &rest[at..];
        let end = tail[PREFIX.len()..]
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .map_or(tail.len(), |e| e + PREFIX.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        if base.len() > PREFIX.len() {
            names.push(base.to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Every metric the dashboard queries is one the proxy exports (a `# TYPE` line of /metrics on
/// a proxy that has served and retried requests), and the dashboard has its panels: traffic,
/// errors, latency percentiles from the histogram, retries, backends, tokens, the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_only_exported_metrics() {
    let dashboard = dashboard();
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    let panels: Vec<_> = panels.into_iter().filter(|p| p["type"] != "row").collect();
    assert!(panels.len() >= 15, "{} panels", panels.len());

    let mut exprs = Vec::new();
    values_of(&dashboard, "expr", &mut exprs);
    let exprs: Vec<&str> = exprs.iter().filter_map(|e| e.as_str()).collect();
    assert!(
        exprs.iter().any(|e| e.contains("histogram_quantile(")
            && e.contains("aoai_proxy_request_duration_seconds_bucket")),
        "no latency percentile from the request duration histogram"
    );
    let names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for wanted in [
        "aoai_proxy_requests_total",
        "aoai_proxy_responses_total",
        "aoai_proxy_retries_by_cause_total",
        "aoai_proxy_backend_cooling_seconds",
        "aoai_proxy_backend_ejected_seconds",
        "aoai_proxy_tokens_total",
        "aoai_proxy_request_duration_seconds",
        "aoai_proxy_upstream_first_byte_seconds",
        "aoai_proxy_request_tries",
        "aoai_proxy_token_expires_in_seconds",
        "aoai_proxy_in_flight",
    ] {
        assert!(names.contains(wanted), "no panel queries {wanted}");
    }
    for by in ["deployment", "client"] {
        assert!(
            exprs
                .iter()
                .any(|e| e.contains("aoai_proxy_tokens_total") && e.contains(by)),
            "no tokens panel by {by}"
        );
    }

    let id = identity().await;
    let b = backends(2).await;
    b[0].push_fault(Fault::throttle(1));
    let proxy = Proxy::start(&mi_yaml(&[&b[0], &b[1]]), Some(&id));
    for _ in 0..3 {
        let (status, _, body) = chat(&proxy).await;
        assert_eq!(status, 200, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let (missing, metrics) = loop {
        let (_, metrics) = proxy.admin_get("/metrics");
        let missing: Vec<String> = {
            let exported: BTreeSet<&str> = metrics
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next())
                .collect();
            names
                .iter()
                .filter(|n| !exported.contains(n.as_str()))
                .cloned()
                .collect()
        };
        if missing.is_empty() || Instant::now() > deadline {
            break (missing, metrics);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the proxy does not export: {missing:?}\n{metrics}"
    );
}

// ---- docker/Dockerfile ----------------------------------------------------------------------

/// One Dockerfile instruction, continuation lines joined.
struct Step {
    /// 1 for the first FROM's stage, 2 for the next, ...
    stage: usize,
    keyword: String,
    rest: String,
}

fn dockerfile() -> Vec<Step> {
    let text = read(&docker_dir().join("Dockerfile"));
    let (mut steps, mut stage, mut current) = (Vec::new(), 0, String::new());
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head.trim_end());
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (keyword, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stage += 1;
        }
        steps.push(Step {
            stage,
            keyword,
            rest: rest.trim().to_string(),
        });
        current.clear();
    }
    steps
}

/// The runtime (last) stage's last `keyword` instruction.
fn runtime<'a>(steps: &'a [Step], keyword: &str) -> Option<&'a str> {
    let last = steps.iter().map(|s| s.stage).max()?;
    steps
        .iter()
        .rev()
        .find(|s| s.stage == last && s.keyword == keyword)
        .map(|s| s.rest.as_str())
}

/// An exec-form (JSON array) command.
fn exec_form(what: &str, text: &str) -> Vec<String> {
    serde_json::from_str(text.trim())
        .unwrap_or_else(|_| panic!("{what} is not in exec form (a JSON array): {text}"))
}

/// The HEALTHCHECK's command.
fn healthcheck(steps: &[Step]) -> Vec<String> {
    let check = runtime(steps, "HEALTHCHECK").expect("no HEALTHCHECK in the runtime stage");
    let (_, command) = check
        .split_once("CMD")
        .unwrap_or_else(|| panic!("HEALTHCHECK without CMD: {check}"));
    exec_form("HEALTHCHECK CMD", command)
}

/// The uid the runtime stage runs as.
fn image_uid(steps: &[Step]) -> String {
    let user = runtime(steps, "USER").expect("no USER in the runtime stage");
    user.split(':').next().unwrap_or_default().to_string()
}

/// The image builds with the README's own steps (scripts/deps --build-only, then cargo build
/// --release --locked), runs as a non-root user, checks its health with `aoai-proxy health`
/// in exec form, and its default configuration passes `--test` on the ports it exposes.
#[test]
fn dockerfile_builds_the_way_the_readme_says() {
    let steps = dockerfile();
    let last = steps.iter().map(|s| s.stage).max().expect("no FROM");
    assert!(last >= 2, "not a multi-stage build");
    let readme = read(&root().join("README.md"));
    let build = steps
        .iter()
        .find(|s| s.stage < last && s.keyword == "RUN" && s.rest.contains("cargo build"))
        .expect("no RUN with cargo build in a build stage");
    for command in [
        "scripts/deps --build-only",
        "cargo build --release --locked",
    ] {
        assert!(
            build.rest.contains(command),
            "the build RUN lacks {command}: {}",
            build.rest
        );
        assert!(readme.contains(command), "README.md does not say {command}");
    }

    let uid = image_uid(&steps);
    assert!(
        !uid.is_empty() && uid != "root" && uid != "0",
        "the runtime stage runs as {uid:?}"
    );
    let entrypoint = exec_form(
        "ENTRYPOINT",
        runtime(&steps, "ENTRYPOINT").expect("no ENTRYPOINT"),
    );
    let check = healthcheck(&steps);
    assert_eq!(
        check.first(),
        entrypoint.first(),
        "HEALTHCHECK runs another binary"
    );
    assert_eq!(
        check.get(1).map(String::as_str),
        Some("health"),
        "{check:?}"
    );
    assert!(check.iter().any(|a| a == "--url"), "{check:?}");

    // The binary and the default configuration are copied where ENTRYPOINT and CMD look.
    let copies: Vec<Vec<&str>> = steps
        .iter()
        .filter(|s| s.stage == last && s.keyword == "COPY")
        .map(|s| s.rest.split_whitespace().collect())
        .collect();
    let copied_to = |dest: &str| {
        copies
            .iter()
            .find(|c| c.last() == Some(&dest))
            .unwrap_or_else(|| panic!("nothing is copied to {dest}"))
    };
    assert!(copied_to(entrypoint[0].as_str())[0].starts_with("--from="));
    let cmd = exec_form("CMD", runtime(&steps, "CMD").expect("no CMD"));
    let config_path = flag_values(&cmd, "--config")
        .pop()
        .expect("no --config in CMD");
    let copy = copied_to(config_path.as_str());
    assert!(!copy[0].starts_with("--from="), "{copy:?}");
    let config_file = root().join(copy[0]);
    assert_valid_config(&config_file, &[]);
    let (listen, admin) = container_listeners(&yaml(&config_file), copy[0]);
    let exposed: BTreeSet<u16> = runtime(&steps, "EXPOSE")
        .expect("no EXPOSE")
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().expect("a port"))
        .collect();
    for p in listen.iter().chain([&admin]) {
        assert!(exposed.contains(p), "port {p} is not EXPOSEd ({exposed:?})");
    }
    assert!(
        check
            .iter()
            .any(|a| a.contains(&format!("127.0.0.1:{admin}/readyz"))),
        "HEALTHCHECK does not ask the admin listener's /readyz: {check:?}"
    );
}

/// The image's HEALTHCHECK command, run as written against a proxy: 0 once it is ready, 1 when
/// nothing answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_healthcheck_command_works() {
    let check = healthcheck(&dockerfile());
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    let dead = DeadPort::new();
    let run = |port: u16| {
        let args = check[1..]
            .iter()
            .map(|a| a.replace("127.0.0.1:9090", &format!("127.0.0.1:{port}")));
        Command::new(env!("CARGO_BIN_EXE_aoai-proxy"))
            .args(args)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .expect("cannot run aoai-proxy health")
    };
    let ok = run(proxy.admin);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(run(dead.port).status.code(), Some(1));
}

// ---- deploy/kubernetes ----------------------------------------------------------------------

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
