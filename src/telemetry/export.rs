//! The exporter: a bounded queue of finished spans, emptied by a thread of its own that sends
//! them in batches with the OTLP/HTTP exporter (protobuf), over a small tokio runtime of its
//! own so no request's runtime ever runs an export.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

use crate::config;

/// Requests whose spans are held while the exporter is busy; more are dropped, a request's
/// spans together (a trace is never sent in part).
const QUEUE: usize = 2048;
/// The most spans in one export.
const BATCH: usize = 512;
/// How long one export may take before its spans are given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the exporter's thread is handed.
enum Message {
    /// One request's spans.
    Spans(Vec<SpanData>),
    /// Send what is held now, and say so (the process is about to exit).
    Flush(SyncSender<()>),
}

/// Where finished spans go.
pub struct Exporter {
    queue: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl Exporter {
    /// Starts the exporter thread for `settings`. The OTLP exporter is built here, before any
    /// request, so what it loads (the TLS roots) is loaded once, at start, and a setting it
    /// refuses stops the start.
    pub fn start(settings: &config::Telemetry, dropped: Arc<AtomicU64>) -> std::io::Result<Self> {
        let exporter = exporter(settings).map_err(std::io::Error::other)?;
        let (queue, spans) = sync_channel(QUEUE);
        let counter = dropped.clone();
        let delay = settings.batch_delay;
        std::thread::Builder::new()
            .name("span-exporter".into())
            .spawn(move || run(exporter, spans, delay, &counter))?;
        Ok(Exporter { queue, dropped })
    }

    /// Queues one request's `spans`; when the queue cannot hold them, they are dropped and
    /// counted.
    pub fn send(&self, spans: Vec<SpanData>) {
        if let Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) =
            self.queue.try_send(Message::Spans(spans))
        {
            if let Message::Spans(spans) = m {
                self.dropped
                    .fetch_add(spans.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Sends what is queued now, waiting at most `within` (the process is about to exit);
    /// whether it was sent.
    pub fn flush(&self, within: Duration) -> bool {
        let (done, sent) = sync_channel(1);
        let deadline = Instant::now() + within;
        let mut message = Message::Flush(done);
        // The queue may be full for a moment: the thread is emptying it.
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        sent.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// The thread: batches of about [`BATCH`] spans (a request's are never split), each sent at
/// most [`DELAY`] after its first span arrived.
fn run(
    exporter: opentelemetry_otlp::SpanExporter,
    spans: Receiver<Message>,
    delay: Duration,
    dropped: &AtomicU64,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("traces: no runtime for the exporter ({e}): spans are dropped");
            return;
        }
    };
    let mut warned = false;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let Ok(first) = spans.recv() else {
            return;
        };
        let deadline = Instant::now() + delay;
        let mut flushed = take(first, &mut batch);
        while flushed.is_none() && batch.len() < BATCH {
            let left = deadline.saturating_duration_since(Instant::now());
            match spans.recv_timeout(left) {
                Ok(m) => flushed = take(m, &mut batch),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        if !batch.is_empty() {
            warned = export(&runtime, &exporter, &mut batch, dropped, warned);
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
        batch.reserve(BATCH);
    }
}

/// Adds a message's spans to `batch`; a flush's reply, for a flush.
fn take(message: Message, batch: &mut Vec<SpanData>) -> Option<SyncSender<()>> {
    match message {
        Message::Spans(spans) => {
            batch.extend(spans);
            None
        }
        Message::Flush(done) => Some(done),
    }
}

/// Exports `batch` (emptied), counting its spans dropped when that fails; whether a failure has
/// been logged since the last success (`warned` before).
fn export(
    runtime: &tokio::runtime::Runtime,
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: &mut Vec<SpanData>,
    dropped: &AtomicU64,
    mut warned: bool,
) -> bool {
    let n = batch.len() as u64;
    let sent = runtime.block_on(async {
        tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(std::mem::take(batch))).await
    });
    match sent {
        Ok(Ok(())) => warned = false,
        failed => {
            dropped.fetch_add(n, Ordering::Relaxed);
            if !std::mem::replace(&mut warned, true) {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {EXPORT_TIMEOUT:?}"),
                };
                log::warn!("traces: spans could not be exported ({why}); they are dropped and counted until an export succeeds");
            }
        }
    }
    warned
}

/// The OTLP/HTTP exporter of `settings`, its resource set.
fn exporter(settings: &config::Telemetry) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let headers: HashMap<String, String> = settings
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_string()))
        .collect();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(settings.traces_url.clone())
        .with_headers(headers)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let attributes = settings
        .resource
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
    let resource = Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .with_attributes(attributes)
        .build();
    exporter.set_resource(&resource);
    Ok(exporter)
}
