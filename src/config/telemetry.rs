//! `telemetry` as validated: where spans go (OTLP over HTTP), how many requests are traced, and
//! what the spans say of the process that made them.

use std::collections::BTreeMap;

use super::raw::{Problems, RawTelemetry};
use super::Secret;

/// Traces of proxied requests (`telemetry`).
#[derive(Clone, Debug, PartialEq)]
pub struct Telemetry {
    /// Where spans are POSTed: the endpoint's `/v1/traces`.
    pub traces_url: String,
    /// The share of requests without a parent that are traced, 0 to 1; a request whose client's
    /// `traceparent` says sampled (or not) follows it.
    pub sample_ratio: f64,
    /// Sent with every export (an API key for the collector, say): secrets, never printed.
    pub headers: BTreeMap<String, Secret>,
    /// The resource's `service.name`.
    pub service_name: String,
    /// More resource attributes (`deployment.environment`, `service.namespace`, ...).
    pub resource: BTreeMap<String, String>,
    /// How long a finished span waits for others to leave with it, at most
    /// (`telemetry.otlp.batch_delay`).
    pub batch_delay: std::time::Duration,
}

impl Telemetry {
    pub const DEFAULT_SAMPLE_RATIO: f64 = 1.0;
    pub const DEFAULT_SERVICE_NAME: &'static str = "aoai-proxy";
    pub const DEFAULT_BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(500);
}

pub(super) fn telemetry(raw: RawTelemetry, p: &mut Problems) -> Telemetry {
    // The base URL; one given with the signal's path already is taken as meant.
    let endpoint = raw.otlp.endpoint.0.trim().trim_end_matches('/');
    let endpoint = endpoint
        .strip_suffix("/v1/traces")
        .unwrap_or(endpoint)
        .to_string();
    let parsed = url::Url::parse(&endpoint);
    if parsed.map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
        p.add(
            "telemetry.otlp.endpoint",
            "must be the collector's OTLP/HTTP base URL, such as http://127.0.0.1:4318 (spans go to its /v1/traces)",
        );
    }
    let sample_ratio = raw
        .otlp
        .sample_ratio
        .unwrap_or(Telemetry::DEFAULT_SAMPLE_RATIO);
    if !(0.0..=1.0).contains(&sample_ratio) {
        p.add(
            "telemetry.otlp.sample_ratio",
            "must be from 0 (none) to 1 (every request)",
        );
    }
    let headers: BTreeMap<String, Secret> = raw
        .otlp
        .headers
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value.0.expose()).is_err()
            {
                p.add(
                    format!("telemetry.otlp.headers.{name}"),
                    "is not a header name and value",
                );
            }
            (name, value.0)
        })
        .collect();
    let service_name = raw
        .service_name
        .map_or(Telemetry::DEFAULT_SERVICE_NAME.to_string(), |s| s.0);
    if service_name.trim().is_empty() {
        p.add("telemetry.service_name", "must not be empty");
    }
    Telemetry {
        batch_delay: super::validate::duration(
            p,
            "telemetry.otlp.batch_delay",
            raw.otlp.batch_delay,
            Telemetry::DEFAULT_BATCH_DELAY,
            std::time::Duration::from_millis(1)..=std::time::Duration::from_secs(60),
        ),
        traces_url: format!("{endpoint}/v1/traces"),
        sample_ratio,
        headers,
        service_name,
        resource: raw
            .resource
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::*;

    const BASE: &str =
        "listen: [\"127.0.0.1:8080\"]\nauth: {kind: none}\nbackends:\n  - url: https://a.openai.azure.com\n";

    #[test]
    fn telemetry_is_read_with_its_defaults_and_bad_values_name_their_key() {
        let c = Config::from_yaml(&format!(
            "{BASE}telemetry:\n  otlp: {{endpoint: \"http://collector:4318/\", headers: {{x-api-key: s3cret}}}}\n  resource: {{deployment.environment: test}}\n"
        ))
        .unwrap();
        let t = c.telemetry.unwrap();
        assert_eq!(t.traces_url, "http://collector:4318/v1/traces");
        let given = Config::from_yaml(&format!(
            "{BASE}telemetry: {{otlp: {{endpoint: \"http://c:4318/v1/traces\"}}}}\n"
        ))
        .unwrap();
        assert_eq!(
            given.telemetry.unwrap().traces_url,
            "http://c:4318/v1/traces"
        );
        assert_eq!(t.sample_ratio, 1.0);
        assert_eq!(t.service_name, "aoai-proxy");
        assert_eq!(t.resource["deployment.environment"], "test");
        assert!(
            !format!("{t:?}").contains("s3cret"),
            "a header value is a secret"
        );
        assert!(Config::from_yaml(BASE).unwrap().telemetry.is_none());

        let p = Config::from_yaml(&format!(
            "{BASE}telemetry:\n  otlp: {{endpoint: \"collector:4318\", sample_ratio: 1.5, headers: {{\"bad header\": x}}}}\n  service_name: \" \"\n"
        ))
        .unwrap_err();
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        for key in [
            "telemetry.otlp.endpoint",
            "telemetry.otlp.sample_ratio",
            "telemetry.otlp.headers.bad header",
            "telemetry.service_name",
        ] {
            assert!(paths.contains(&key), "{key}: {paths:?}");
        }
        let p = Config::from_yaml(&format!("{BASE}telemetry:\n  otlp: {{}}\n")).unwrap_err();
        assert_eq!(p[0].path, "telemetry.otlp");
        assert_eq!(p[0].line, Some(6));
    }
}
