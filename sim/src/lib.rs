//! aoai-sim: what aoai-proxy talks to in Azure, simulated for its demo, tests and benchmarks:
//! Azure OpenAI backends ([`Backend`]), an App Service managed identity endpoint
//! ([`IdentityEndpoint`]), an Entra ID token endpoint ([`EntraEndpoint`]) and the signing keys
//! that check clients' Entra ID tokens ([`JwksEndpoint`]).
//!
//! A backend answers chat completions, completions and embeddings; it keeps the objects that
//! Azure keeps on the one resource that made them (files, batches, fine-tuning jobs,
//! assistants, threads, vector stores, stored responses of the Responses API), so another
//! backend answers 404 for them; and it serves the Realtime API's WebSocket. With a [`Quota`],
//! it limits each deployment's tokens and requests a minute as Azure does (429s with
//! `retry-after-ms`, `x-ratelimit-remaining-*` headers). Its model may refuse prompts as Azure
//! does, with a 400: those longer than its context window, and those its content filter blocks.
//!
//! A crate of its own so that the proxy links none of it: only `aoai-proxy demo` and
//! `aoai-proxy simulate` (the `sim` feature), the tests and the benchmarks use it.

mod completions;
mod entra;
mod fault;
mod identity;
mod jwks;
mod objects;
mod openai;
mod quota;
mod realtime;
mod refusals;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use openssl::ssl::{SslAcceptor, SslMethod};
use tokio::net::TcpListener;

pub use entra::{EntraEndpoint, TokenRequest};
pub use fault::Fault;
pub use identity::IdentityEndpoint;
pub use jwks::{JwksEndpoint, SigningKey};
pub use openai::{Backend, BackendOptions, Recorded};
pub use quota::Quota;

/// A response body: whole or streamed.
pub type Body = BoxBody<Bytes, io::Error>;
/// What a handler returns; `Err` drops the connection without an answer.
type Reply = Pin<Box<dyn Future<Output = Result<Response<Body>, io::Error>> + Send>>;

/// A certificate and key (PEM) for a simulated HTTPS endpoint.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// A running simulated server; it stops when dropped.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Connections accepted so far.
    connections: Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Where a simulated server listens: an address to bind, or a socket bound already (so a
/// caller can learn the port before any thread starts).
pub enum Bind {
    Addr(SocketAddr),
    Listener(std::net::TcpListener),
}

impl From<SocketAddr> for Bind {
    fn from(addr: SocketAddr) -> Self {
        Bind::Addr(addr)
    }
}

impl From<std::net::TcpListener> for Bind {
    fn from(listener: std::net::TcpListener) -> Self {
        Bind::Listener(listener)
    }
}

/// Binds and serves `handler` on each HTTP/1.1 request, over TLS when `tls` is set.
async fn serve<H>(bind: Bind, tls: Option<TlsIdentity>, handler: H) -> io::Result<Server>
where
    H: Fn(Request<Incoming>) -> Reply + Send + Sync + 'static,
{
    let acceptor = match tls {
        Some(id) => Some(Arc::new(acceptor(&id).map_err(io::Error::other)?)),
        None => None,
    };
    let listener = match bind {
        Bind::Addr(addr) => TcpListener::bind(addr).await?,
        Bind::Listener(l) => {
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)?
        }
    };
    let addr = listener.local_addr()?;
    let handler = Arc::new(handler);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let accepted_count = connections.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => match accepted {
                    Ok(s) => s,
                    Err(_) => continue,
                },
            };
            let _ = stream.set_nodelay(true);
            accepted_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let handler = handler.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handler(req));
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    None => {
                        let _ = http
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    }
                    Some(acceptor) => {
                        let Ok(ssl) = openssl::ssl::Ssl::new(acceptor.context()) else {
                            return;
                        };
                        let Ok(mut tls) = tokio_openssl::SslStream::new(ssl, stream) else {
                            return;
                        };
                        if Pin::new(&mut tls).accept().await.is_err() {
                            return;
                        }
                        let _ = http
                            .serve_connection(TokioIo::new(tls), service)
                            .with_upgrades()
                            .await;
                    }
                }
            });
        }
    });
    Ok(Server {
        addr,
        stop: Some(stop),
        connections,
    })
}

fn acceptor(id: &TlsIdentity) -> Result<SslAcceptor, openssl::error::ErrorStack> {
    use openssl::pkey::PKey;
    use openssl::x509::X509;
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    let mut chain = X509::stack_from_pem(&id.cert_pem)?.into_iter();
    if let Some(leaf) = chain.next() {
        b.set_certificate(&leaf)?;
    }
    for extra in chain {
        b.add_extra_chain_cert(extra)?;
    }
    let key = PKey::private_key_from_pem(&id.key_pem)?;
    b.set_private_key(&key)?;
    Ok(b.build())
}

/// Locks `m`, going on after a panic elsewhere held it (the simulator's state stays usable).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A complete JSON response.
fn json(status: u16, value: &serde_json::Value) -> Response<Body> {
    use http_body_util::BodyExt;
    let body = Bytes::from(value.to_string());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            http_body_util::Full::new(body)
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .unwrap_or_default()
}

/// Azure OpenAI's error shape.
fn azure_error(status: u16, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"error": {"code": code, "message": message}}),
    )
}
