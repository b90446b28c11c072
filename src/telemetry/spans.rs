//! A request's spans, built whole when it ends: the server span, named `{operation}
//! {deployment}`, with the GenAI semantic conventions and the HTTP ones, and under it a client
//! span a try, with the backend and what the try produced.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::Trace;
use crate::metrics::RetryCause;
use crate::outcome::Outcome;
use crate::usage::Usage;

/// What the request was, as its span says: read from its typed view when it is read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Asked {
    /// `gen_ai.operation.name`.
    pub operation: &'static str,
    pub max_tokens: Option<u64>,
    pub stream: bool,
}

/// One try, as its span says.
pub struct TryEnd<'a> {
    pub backend: &'a str,
    pub host: &'a str,
    pub port: u16,
    /// `None`: the client left while it was under way.
    pub outcome: Option<Outcome>,
}

/// How the request ended, as its span says.
pub struct RequestEnd<'a> {
    pub asked: Asked,
    pub method: &'a str,
    pub path: &'a str,
    pub deployment: Option<&'a str>,
    pub status: Option<u16>,
    pub client: Option<&'a str>,
    pub usage: Option<Usage>,
    /// From its arrival to the answer's header.
    pub first_byte: Option<Duration>,
    pub waited: Option<Duration>,
    pub fallback: Option<&'a str>,
    /// What the response cache did (`hit`, `semantic-hit`, `miss`), when it is cacheable.
    pub cache: Option<&'static str>,
    pub tries: Vec<TryEnd<'a>>,
    pub error: Option<&'a str>,
}

/// `gen_ai.operation.name` for a request on `path`: the GenAI conventions' names where there is
/// one, else what the path asks for.
pub fn operation(path: &str) -> &'static str {
    const OPERATIONS: [(&str, &str); 9] = [
        ("/chat/completions", "chat"),
        ("/completions", "text_completion"),
        ("/embeddings", "embeddings"),
        ("/responses", "responses"),
        ("/realtime", "realtime"),
        ("/images/generations", "image_generation"),
        ("/audio/transcriptions", "transcription"),
        ("/audio/translations", "translation"),
        ("/audio/speech", "speech"),
    ];
    OPERATIONS
        .iter()
        .find(|(tail, _)| path.ends_with(tail))
        .map_or("http", |(_, name)| name)
}

/// The spans of a sampled request that ended `end` at `now`.
pub fn build(trace: &Trace, end: &RequestEnd, now: SystemTime) -> Vec<SpanData> {
    let mut spans = Vec::with_capacity(1 + trace.tries.len());
    spans.push(request_span(trace, end, now));
    // Every try begun has its span, also one the client left during: its backend has its id.
    for (t, ended) in trace.tries.iter().zip(&end.tries) {
        let mut attributes = vec![
            KeyValue::new("server.address", ended.host.to_string()),
            KeyValue::new("server.port", i64::from(ended.port)),
            KeyValue::new("aoai_proxy.backend", ended.backend.to_string()),
            KeyValue::new("http.request.method", end.method.to_string()),
        ];
        // A client span's 4xx is an error too (the GenAI and HTTP conventions).
        let status = match ended.outcome {
            Some(Outcome::Status(s)) => {
                attributes.push(KeyValue::new(
                    "http.response.status_code",
                    i64::from(s.as_u16()),
                ));
                match s.as_u16() {
                    400.. => Status::error(s.as_str().to_string()),
                    _ => Status::Unset,
                }
            }
            Some(Outcome::Failed(f)) => {
                attributes.push(KeyValue::new("error.type", f.as_str()));
                Status::error(f.as_str())
            }
            None => {
                attributes.push(KeyValue::new("error.type", "client_closed"));
                Status::error("client_closed")
            }
        };
        if let (true, Some(outcome)) = (t.retried, ended.outcome) {
            let cause = RetryCause::of(outcome).as_str();
            attributes.push(KeyValue::new("aoai_proxy.retry_cause", cause));
        }
        let name = format!("{} {}", end.method, ended.backend);
        let span = t.span_id;
        let times = (t.start, t.end.unwrap_or(now));
        let ids = (span, trace.span_id, false);
        let mut span = span_data(trace, ids, SpanKind::Client, name, times, attributes);
        span.status = status;
        spans.push(span);
    }
    spans
}

/// The request's own span.
fn request_span(trace: &Trace, end: &RequestEnd, now: SystemTime) -> SpanData {
    let asked = end.asked;
    let name = match end.deployment {
        Some(d) => format!("{} {d}", asked.operation),
        None => asked.operation.to_string(),
    };
    let mut attributes = vec![
        KeyValue::new("gen_ai.operation.name", asked.operation),
        KeyValue::new("gen_ai.provider.name", "azure.ai.openai"),
        KeyValue::new("http.request.method", end.method.to_string()),
        KeyValue::new("url.path", end.path.to_string()),
        KeyValue::new("aoai_proxy.tries", end.tries.len() as i64),
    ];
    let mut put = |key: &'static str, value: Option<opentelemetry::Value>| {
        if let Some(value) = value {
            attributes.push(KeyValue::new(key, value));
        }
    };
    let int = |n: u64| opentelemetry::Value::I64(i64::try_from(n).unwrap_or(i64::MAX));
    let text = |s: &str| opentelemetry::Value::String(s.to_string().into());
    put("gen_ai.request.model", end.deployment.map(text));
    put(
        "gen_ai.response.model",
        trace.response_model.as_deref().map(text),
    );
    put("gen_ai.request.max_tokens", asked.max_tokens.map(int));
    put(
        "gen_ai.request.stream",
        Some(opentelemetry::Value::Bool(asked.stream)),
    );
    put(
        "gen_ai.usage.input_tokens",
        end.usage.map(|u| int(u.prompt)),
    );
    put(
        "gen_ai.usage.output_tokens",
        end.usage.map(|u| int(u.completion)),
    );
    put(
        "http.response.status_code",
        end.status.map(|s| int(u64::from(s))),
    );
    put("aoai_proxy.client", end.client.map(text));
    put("aoai_proxy.fallback", end.fallback.map(text));
    put("aoai_proxy.cache", end.cache.map(text));
    put(
        "aoai_proxy.wait_ms",
        end.waited.map(|w| int(w.as_millis() as u64)),
    );
    put("error.type", end.error.map(text));
    let mut events = Vec::new();
    if let Some(first) = end.first_byte {
        events.push(opentelemetry::trace::Event::new(
            "first_byte",
            trace.started + first,
            Vec::new(),
            0,
        ));
    }
    let status = match end.status {
        Some(500..) | None => Status::error(end.error.unwrap_or("no answer").to_string()),
        Some(_) => Status::Unset,
    };
    let parent = trace.parent.unwrap_or(SpanId::INVALID);
    let ids = (trace.span_id, parent, trace.parent.is_some());
    let times = (trace.started, now);
    let mut span = span_data(trace, ids, SpanKind::Server, name, times, attributes);
    span.status = status;
    span.events.events = events;
    span
}

/// A span of `trace`: `(its id, its parent's, whether the parent is the client's)`, from `start`
/// to `end`, with no event and its status unset.
fn span_data(
    trace: &Trace,
    (span_id, parent, remote): (SpanId, SpanId, bool),
    kind: SpanKind,
    name: String,
    (start, end): (SystemTime, SystemTime),
    attributes: Vec<KeyValue>,
) -> SpanData {
    let flags = TraceFlags::SAMPLED;
    let context = SpanContext::new(trace.trace_id, span_id, flags, false, trace.state.clone());
    SpanData {
        span_context: context,
        parent_span_id: parent,
        parent_span_is_remote: remote,
        span_kind: kind,
        name: Cow::Owned(name),
        start_time: start,
        end_time: end.max(start),
        attributes,
        dropped_attributes_count: 0,
        // Both non-exhaustive, with public fields.
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope(),
    }
}

/// The instrumentation scope of every span: this crate, at its version.
fn scope() -> InstrumentationScope {
    static SCOPE: std::sync::LazyLock<InstrumentationScope> = std::sync::LazyLock::new(|| {
        InstrumentationScope::builder("aoai-proxy")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build()
    });
    SCOPE.clone()
}
