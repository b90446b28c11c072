//! An OTLP/HTTP receiver on 127.0.0.1, standing in for an OpenTelemetry Collector: it takes what
//! an exporter POSTs to `/v1/traces` and keeps the spans, decoded with `opentelemetry-proto`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A span as received, with its resource's `service.name` and string attributes.
#[derive(Clone, Debug)]
pub struct Received {
    pub span: Span,
    pub service: String,
    pub resource: Vec<(String, String)>,
}

impl Received {
    /// Attribute `key` as text (a string, an integer or a boolean), if the span has it.
    pub fn attr(&self, key: &str) -> Option<String> {
        let kv = self.span.attributes.iter().find(|kv| kv.key == key)?;
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(n) => Some(n.to_string()),
            Value::BoolValue(b) => Some(b.to_string()),
            Value::DoubleValue(d) => Some(d.to_string()),
            _ => None,
        }
    }

    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The receiver; stops when dropped.
pub struct Receiver {
    pub port: u16,
    spans: Arc<Mutex<Vec<Received>>>,
    /// The header lines of every export, lower-cased.
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let kept = (spans.clone(), heads.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, kept.0.clone(), kept.1.clone()));
            }
        });
        Receiver {
            port,
            spans,
            heads,
            task,
        }
    }

    /// The base URL, as `telemetry.otlp.endpoint` takes it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Every header line of the exports received, lower-cased.
    pub fn header_lines(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Waits (at most 10 s) until `n` spans have arrived; all that have.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.spans();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} span(s) within 10 s, not {n}: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One connection: requests read by their `Content-Length`, each answered 200.
async fn serve(
    mut stream: TcpStream,
    spans: Arc<Mutex<Vec<Received>>>,
    heads: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head_end + length).skip(head_end).collect();
        heads
            .lock()
            .unwrap()
            .extend(head.lines().map(str::to_string));
        if head.starts_with("post /v1/traces") {
            let request = ExportTraceServiceRequest::decode(&body[..]).expect("OTLP protobuf");
            let mut kept = spans.lock().unwrap();
            for rs in request.resource_spans {
                let resource: Vec<(String, String)> = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
                        _ => None,
                    })
                    .collect();
                let service = resource
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        kept.push(Received {
                            span,
                            service: service.clone(),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}
