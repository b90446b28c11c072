//! The Grafana dashboard: provisioned from the mounted file, and querying only metrics the
//! proxy exports.

use super::*;

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
        "aoai_proxy_cost_usd_total",
        "aoai_proxy_fallbacks_total",
        "aoai_proxy_cache_total",
        "aoai_proxy_cache_saved_tokens_total",
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

    // Every family has a series: a backend cooling (for a minute, so it still cools when
    // the page is read) and one with an active health check; a priced deployment (spend) and
    // a fallback (its series are there from the start), and a cache (likewise).
    let id = identity().await;
    let b = backends(2).await;
    b[0].push_fault(Fault::throttle(60));
    let yaml = format!(
        "auth: {{kind: managed_identity}}\nbackends:\n  - {{url: \"{}\", name: b0}}\n  - {{url: \"{}\", name: b1, health_check: {{kind: tcp, interval: 100ms}}}}\nprices:\n  gpt-4o: {{input: 2.5, output: 10}}\nfallbacks:\n  - {{deployment: gpt-4o, to: [gpt-4o-mini]}}\ncache: {{}}\n",
        b[0].url(),
        b[1].url()
    );
    let proxy = Proxy::start(&yaml, Some(&id));
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
