//! Traces (`telemetry`): a server span per proxied request and a client span per try, with the
//! OpenTelemetry GenAI conventions, exported as OTLP over HTTP (protobuf).
//!
//! A request carries only ids and times while it is served ([`Trace`]): its spans are built
//! whole when it ends ([`spans`]), from what the request recorded anyway, and handed to a
//! bounded queue that a thread of its own empties in batches ([`export`]). Nothing on the
//! request path waits for the exporter; a full queue or a failed export drops spans, counted
//! in `aoai_proxy_spans_dropped_total`. Without `telemetry`, none of this exists and a request
//! costs one `None` more.
//!
//! Why not the SDK's tracer and batch processor: a tracer makes each span as a live object with
//! its own allocations and locks while the request runs, and the SDK's batch processor drops
//! spans without counting them where a metric can read it. The ids, the W3C trace context, the
//! span data and the OTLP exporter are the opentelemetry crates'.

mod export;
pub mod spans;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use pingora::http::RequestHeader;
use smallvec::SmallVec;

use crate::config;

pub use export::Exporter;

/// The tracing of this process: how many requests are sampled, and where their spans go.
pub struct Tracing {
    /// Requests without a parent are sampled when the low 64 bits of their trace id are below
    /// this (`sample_ratio` of 2^64), as OpenTelemetry's `TraceIdRatioBased` sampler does.
    threshold: u64,
    ids: RandomIdGenerator,
    /// Reads a client's W3C trace context; made once.
    propagator: TraceContextPropagator,
    exporter: Exporter,
}

/// A request's place in a trace: its ids, whether it is sampled, and its tries' spans.
#[derive(Debug)]
pub struct Trace {
    pub trace_id: TraceId,
    /// The request's own (server) span.
    pub span_id: SpanId,
    /// The client's span, when the client sent a `traceparent`.
    pub parent: Option<SpanId>,
    pub state: TraceState,
    pub sampled: bool,
    pub started: SystemTime,
    /// What the request asked for (read from its typed view).
    pub asked: spans::Asked,
    /// The model the answer named (`gen_ai.response.model`), where it did.
    pub response_model: Option<Box<str>>,
    /// Each try's span id, and when it began and ended (`None`: it ended with the request).
    pub tries: SmallVec<[TrySpan; 3]>,
}

/// One try's client span.
#[derive(Clone, Copy, Debug)]
pub struct TrySpan {
    pub span_id: SpanId,
    /// The backend it went to (its index in the pool).
    pub backend: usize,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    /// A retry followed it (as `aoai_proxy_retries_total` counts them).
    pub retried: bool,
}

impl Tracing {
    /// The tracing `settings` ask for, its exporter started; drops counted in `dropped`.
    pub fn start(
        settings: &config::Telemetry,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<Tracing> {
        let ratio = settings.sample_ratio.clamp(0.0, 1.0);
        let threshold = match ratio >= 1.0 {
            true => u64::MAX,
            false => (ratio * u64::MAX as f64) as u64,
        };
        Ok(Tracing {
            threshold,
            ids: RandomIdGenerator::default(),
            propagator: TraceContextPropagator::new(),
            exporter: Exporter::start(settings, dropped)?,
        })
    }

    /// The trace of a request whose header is `head`: the client's, continued, when it sent a
    /// valid `traceparent`; else a new one, sampled by the ratio.
    pub fn begin(&self, head: &RequestHeader) -> Trace {
        // The propagator takes ids of any length; W3C's are exactly these.
        let well_formed = head.headers.get("traceparent").is_some_and(|v| {
            let v = v.as_bytes();
            v.len() == 55 && v[2] == b'-' && v[35] == b'-' && v[52] == b'-'
        });
        let remote = well_formed
            .then(|| {
                let cx = self.propagator.extract(&Headers(head));
                cx.span().span_context().clone()
            })
            .filter(|c| c.is_valid());
        let (trace_id, parent, state, sampled) = match remote {
            Some(c) => (
                c.trace_id(),
                Some(c.span_id()),
                c.trace_state().clone(),
                c.is_sampled(),
            ),
            None => {
                let id = self.ids.new_trace_id();
                let low = u64::from_be_bytes(id.to_bytes()[8..].try_into().unwrap_or_default());
                let sampled = self.threshold == u64::MAX || low < self.threshold;
                (id, None, TraceState::NONE, sampled)
            }
        };
        Trace {
            trace_id,
            span_id: self.ids.new_span_id(),
            parent,
            state,
            sampled,
            started: SystemTime::now(),
            asked: spans::Asked {
                operation: spans::operation(head.uri.path()),
                ..spans::Asked::default()
            },
            response_model: None,
            tries: SmallVec::new(),
        }
    }

    /// Hands a request's spans to the exporter (a sampled request's only).
    pub fn finish(&self, spans: Vec<opentelemetry_sdk::trace::SpanData>) {
        self.exporter.send(spans);
    }

    /// Sends the spans still queued, waiting at most `within`: the process is about to exit.
    pub fn flush(&self, within: std::time::Duration) {
        if !self.exporter.flush(within) {
            log::warn!("traces: the spans still queued at exit were not all sent");
        }
    }
}

impl Trace {
    /// Begins the span of a try on `backend`: the `traceparent` value the backend gets.
    pub fn begin_try(&mut self, ids: &Tracing, backend: usize) -> Traceparent {
        let span_id = ids.ids.new_span_id();
        self.tries.push(TrySpan {
            span_id,
            backend,
            start: SystemTime::now(),
            end: None,
            retried: false,
        });
        let flags = match self.sampled {
            true => TraceFlags::SAMPLED,
            false => TraceFlags::NOT_SAMPLED,
        };
        Traceparent::new(self.trace_id, span_id, flags)
    }

    /// Ends the span of the try begun last (its answer was put aside), `retried` when a retry
    /// follows it.
    pub fn end_try(&mut self, retried: bool) {
        if let Some(t) = self.tries.last_mut() {
            t.end.get_or_insert_with(SystemTime::now);
            t.retried = retried;
        }
    }
}

/// A W3C `traceparent` value, `00-{trace id}-{span id}-{flags}`, written on the stack: every try
/// of every traced request sends one.
pub struct Traceparent([u8; 55]);

impl Traceparent {
    fn new(trace: TraceId, span: SpanId, flags: TraceFlags) -> Self {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        // The slices are the lengths of the hex of what goes in them: these cannot fail.
        let _ = hex::encode_to_slice(trace.to_bytes(), &mut out[3..35]);
        let _ = hex::encode_to_slice(span.to_bytes(), &mut out[36..52]);
        let _ = hex::encode_to_slice([flags.to_u8()], &mut out[53..55]);
        Traceparent(out)
    }

    pub fn as_str(&self) -> &str {
        // Hex digits and dashes only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A request header as the W3C propagator reads it.
struct Headers<'a>(&'a RequestHeader);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.headers.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.headers.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_the_w3c_form() {
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        assert_eq!(
            Traceparent::new(trace, span, TraceFlags::SAMPLED).as_str(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert!(Traceparent::new(trace, span, TraceFlags::NOT_SAMPLED)
            .as_str()
            .ends_with("-00"));
    }
}
