//! A lean HTTP/1.1 load generator: fixed requests over kept-alive connections, with the time
//! to the whole response and to its first body byte recorded for each one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one connection measured.
#[derive(Default)]
pub struct Samples {
    /// Whole-response latencies, microseconds.
    pub latency_us: Vec<u32>,
    /// Time to the first body byte, microseconds.
    pub ttfb_us: Vec<u32>,
    /// Responses that were not 2xx, and connections that failed.
    pub errors: u64,
}

impl Samples {
    pub fn merge(&mut self, other: Samples) {
        self.latency_us.extend(other.latency_us);
        self.ttfb_us.extend(other.ttfb_us);
        self.errors += other.errors;
    }
}

/// A POST of `body` to `path`, as raw bytes.
pub fn request(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\napi-key: bench-key\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `req` over and over on one connection until `until`; samples only after `record_from`.
pub async fn hammer(addr: SocketAddr, req: &[u8], record_from: Instant, until: Instant) -> Samples {
    let mut s = Samples::default();
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(64 * 1024);
    while Instant::now() < until {
        let stream = match conn.as_mut() {
            Some(c) => c,
            None => match TcpStream::connect(addr).await {
                Ok(c) => {
                    let _ = c.set_nodelay(true);
                    conn.insert(c)
                }
                Err(_) => {
                    s.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let started = Instant::now();
        match exchange(stream, req, &mut buf).await {
            Ok(r) => {
                if started >= record_from {
                    s.latency_us.push(micros(r.done - started));
                    s.ttfb_us.push(micros(r.first_byte - started));
                    if !(200..300).contains(&r.status) {
                        s.errors += 1;
                    }
                }
                if r.close {
                    conn = None;
                }
            }
            Err(_) => {
                if started >= record_from {
                    s.errors += 1;
                }
                conn = None;
            }
        }
    }
    s
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// One response, as timed.
pub struct Response {
    pub status: u16,
    pub first_byte: Instant,
    pub done: Instant,
    pub close: bool,
}

/// Writes `req` and reads one whole response (content-length or chunked).
pub async fn exchange(
    stream: &mut TcpStream,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<Response> {
    stream.write_all(req).await?;
    buf.clear();
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, buf).await?;
    };
    let mut first_byte = Instant::now();
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(std::io::Error::other)?
        .to_ascii_lowercase();
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let close = head.contains("\r\nconnection: close");
    let length = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut at = head_end;
    if buf.len() == head_end {
        read_more(stream, buf).await?;
        first_byte = Instant::now();
    }
    match length {
        Some(n) => {
            while buf.len() < head_end + n {
                read_more(stream, buf).await?;
            }
        }
        None if head.contains("transfer-encoding: chunked") => loop {
            // Each chunk: size line, data, CRLF. A zero-size chunk ends the body.
            let line_end = loop {
                if let Some(i) = find(&buf[at..], b"\r\n") {
                    break at + i;
                }
                read_more(stream, buf).await?;
            };
            let size_text =
                std::str::from_utf8(&buf[at..line_end]).map_err(std::io::Error::other)?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(std::io::Error::other)?;
            let next = line_end + 2 + size + 2;
            while buf.len() < next {
                read_more(stream, buf).await?;
            }
            at = next;
            if size == 0 {
                break;
            }
        },
        None => return Err(std::io::Error::other("neither content-length nor chunked")),
    }
    Ok(Response {
        status,
        first_byte,
        done: Instant::now(),
        close,
    })
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
