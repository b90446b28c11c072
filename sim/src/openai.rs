//! A simulated Azure OpenAI instance: chat completions (whole or streamed), completions and
//! embeddings (answered by the `completions` module); the objects a resource keeps (files, batches, fine-tuning jobs, assistants,
//! threads, vector stores, stored responses: see the `objects` module) and the Realtime
//! WebSocket (the `realtime` module); with faults a test can program (429 with retry-after, 5xx,
//! slow answers, dropped connections, streams that break), which come before every route; and,
//! with a [`Quota`], Azure's rate limits per deployment (the `quota` module), after the faults
//! and after the prompts the deployment refuses with a 400 (the `refusals` module).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;

use super::completions;
use super::fault::{fault_message, Fault};
use super::objects::{self, Store};
use super::quota::{self, Charge, Limiter, Operation, Quota};
use super::realtime::{self, Sessions};
use super::refusals::Refusals;
use super::{azure_error, json, lock, serve, Bind, Body, Server, TlsIdentity};

/// How a simulated backend answers.
#[derive(Clone)]
pub struct BackendOptions {
    /// Its name, put in `x-sim-backend` on every answer.
    pub name: String,
    /// Keep every request (headers and body) for [`Backend::recorded`].
    pub record: bool,
    /// Serve HTTPS with this certificate.
    pub tls: Option<TlsIdentity>,
    /// The assistant's answer; streamed word by word.
    pub answer: String,
    /// The pause between two streamed chunks.
    pub chunk_delay: Duration,
    /// Refuse requests without `Authorization: Bearer` or `api-key` (401), as Azure does.
    pub require_auth: bool,
    /// Azure's rate limits, for each deployment apart (see [`Quota`]); `None`: no limit.
    pub quota: Option<Quota>,
    /// How long an inference request (chat completions, completions, embeddings, a response
    /// made with the Responses API) waits before its answer's header, as a model takes before
    /// its first token: a whole answer comes after it, a stream's first chunk with it.
    pub latency: Duration,
    /// The model's context window in tokens: a chat completion, completion or response whose
    /// prompt is estimated at more (its body's bytes over 4, rounded up, plus its `max_tokens`,
    /// `max_completion_tokens` or `max_output_tokens`) answers Azure's 400
    /// `context_length_exceeded`, so that a proxy can fall back to a larger model. `None`: no
    /// limit.
    pub context_window: Option<u64>,
    /// A chat completion, completion or response whose body holds this phrase (whatever its
    /// case) answers the 400 `content_filter` of Azure's content filter on a prompt, as a
    /// deployment with a stricter filter than its fallback's would. `None`: nothing is blocked.
    pub blocked_phrase: Option<String>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            name: "sim".into(),
            record: false,
            tls: None,
            answer: "Hello! This answer comes from the aoai-proxy simulator.".into(),
            chunk_delay: Duration::ZERO,
            require_auth: true,
            quota: None,
            latency: Duration::ZERO,
            context_window: None,
            blocked_phrase: None,
        }
    }
}

/// A request as the simulator received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// When it arrived.
    pub at: std::time::Instant,
}

struct State {
    options: BackendOptions,
    requests: AtomicU64,
    script: Mutex<VecDeque<Fault>>,
    always: Mutex<Option<Fault>>,
    recorded: Mutex<Vec<Recorded>>,
    /// The files, batches, threads, responses... made on this backend.
    objects: Mutex<Store>,
    realtime: Arc<Sessions>,
    /// The deployments' counters, with a [`Quota`].
    limiter: Option<Limiter>,
    /// The prompts its model refuses.
    refusals: Refusals,
}

/// A running simulated Azure OpenAI instance on 127.0.0.1; stops when dropped.
pub struct Backend {
    server: Server,
    state: Arc<State>,
}

impl Backend {
    /// Starts one on an ephemeral port of 127.0.0.1 (inside a Tokio runtime).
    pub async fn start(options: BackendOptions) -> io::Result<Backend> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), options).await
    }

    /// Starts one on `bind` (an address, or a socket bound already).
    pub async fn start_on(bind: impl Into<Bind>, options: BackendOptions) -> io::Result<Backend> {
        let tls = options.tls.clone();
        let state = Arc::new(State {
            limiter: options.quota.map(Limiter::new),
            refusals: Refusals::new(&options),
            options,
            requests: AtomicU64::new(0),
            script: Mutex::default(),
            always: Mutex::default(),
            recorded: Mutex::default(),
            objects: Mutex::default(),
            realtime: Arc::default(),
        });
        let s = state.clone();
        let server = serve(bind.into(), tls, move |req| {
            Box::pin(handle(s.clone(), req))
        })
        .await?;
        Ok(Backend { server, state })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// `http://127.0.0.1:PORT` (or `https://localhost:PORT` with TLS, matching the test certificate).
    pub fn url(&self) -> String {
        match self.state.options.tls {
            None => format!("http://{}", self.server.addr),
            Some(_) => format!("https://localhost:{}", self.server.addr.port()),
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.server.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Requests answered 429 because their deployment was over its [`Quota`] (faults are not
    /// counted).
    pub fn throttled(&self) -> u64 {
        self.state.limiter.as_ref().map_or(0, Limiter::throttled)
    }

    /// Inference requests answered 400 because the model refused their prompt: longer than
    /// [`BackendOptions::context_window`], or holding [`BackendOptions::blocked_phrase`].
    pub fn refused_prompts(&self) -> u64 {
        self.state.refusals.refused()
    }

    /// Tokens charged to the deployments' [`Quota`]s, on the requests' arrival (0 without one).
    pub fn tokens_charged(&self) -> u64 {
        self.state
            .limiter
            .as_ref()
            .map_or(0, Limiter::tokens_charged)
    }

    /// The next request (after those already queued) gets `fault`.
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.state.script).push_back(fault);
    }

    /// Every request gets `fault` (`None`: answer normally) once the queued ones are used.
    pub fn set_fault(&self, fault: Option<Fault>) {
        *lock(&self.state.always) = fault;
    }

    /// The requests received, when recording.
    pub fn recorded(&self) -> Vec<Recorded> {
        lock(&self.state.recorded).clone()
    }

    /// Whether this backend holds the object `id`: a file, batch, fine-tuning job, assistant,
    /// thread, message, run, vector store or stored response.
    pub fn holds(&self, id: &str) -> bool {
        lock(&self.state.objects).holds(id)
    }

    /// How many objects (of every kind that [`Backend::holds`] knows) this backend holds.
    pub fn objects(&self) -> usize {
        lock(&self.state.objects).len()
    }

    /// Realtime WebSocket sessions open on this backend now.
    pub fn realtime_sessions(&self) -> usize {
        self.state.realtime.open()
    }

    /// Makes every open Realtime session of this backend send a Close (code 1000) and end.
    pub fn close_realtime(&self) {
        self.state.realtime.close_all();
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, io::Error> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let fault = lock(&state.script)
        .pop_front()
        .or_else(|| lock(&state.always).clone());
    if let Some(Fault::EarlyStatus(status)) = fault {
        let mut resp = azure_error(status, &status.to_string(), &fault_message(status, &[]));
        resp.headers_mut()
            .insert("connection", http::HeaderValue::from_static("close"));
        return Ok(named(resp, &state.options.name));
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    let uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if state.options.record {
        lock(&state.recorded).push(Recorded {
            method: parts.method.to_string(),
            uri: uri.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
            at: std::time::Instant::now(),
        });
    }
    let mut break_after = None;
    match fault {
        Some(Fault::Drop) => return Err(io::Error::other("simulated dropped connection")),
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::Status { status, headers }) => {
            let mut resp = azure_error(
                status,
                &status.to_string(),
                &fault_message(status, &headers),
            );
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::try_from(k),
                    http::HeaderValue::try_from(v),
                ) {
                    resp.headers_mut().insert(k, v);
                }
            }
            return Ok(named(resp, &state.options.name));
        }
        Some(Fault::BreakStream { after_chunks }) => break_after = Some(after_chunks),
        Some(Fault::EarlyStatus(_)) | None => {}
    }
    Ok(named(
        answer(&state, parts, &body, break_after).await,
        &state.options.name,
    ))
}

/// The answer to a request that no fault took: a 401 without a key, a 400 for a prompt the
/// model refuses, a 429 over the quota, else what its route says (after the latency, for an
/// inference request).
async fn answer(
    state: &State,
    mut parts: http::request::Parts,
    body: &Bytes,
    break_after: Option<usize>,
) -> Response<Body> {
    let has_key = parts.headers.contains_key("api-key")
        || parts
            .headers
            .get("authorization")
            .is_some_and(|v| v.as_bytes().starts_with(b"Bearer "));
    if state.options.require_auth && !has_key {
        return azure_error(
            401,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint.",
        );
    }
    if realtime::is_realtime(parts.uri.path()) {
        return realtime::accept(&state.realtime, &state.options.name, &mut parts);
    }
    let operation = Operation::of(&parts.method, parts.uri.path());
    let request = match operation {
        Some(_) => serde_json::from_slice(body).unwrap_or(Value::Null),
        None => Value::Null,
    };
    if let Some(refusal) = state.refusals.check(operation, body, &request) {
        return refusal;
    }
    let limiter = state.limiter.as_ref();
    let charge = limiter
        .and(operation)
        .and_then(|operation| Charge::of(operation, &parts, &request));
    let standing = match (limiter, &charge) {
        (Some(limiter), Some(charge)) => match limiter.take(charge, Instant::now()) {
            Ok(standing) => Some((limiter, standing)),
            Err(throttled) => return limiter.refusal(charge, &throttled),
        },
        _ => None,
    };
    if operation.is_some() && !state.options.latency.is_zero() {
        tokio::time::sleep(state.options.latency).await;
    }
    let mut resp = route(state, &parts, body, &request, break_after);
    if let Some((limiter, standing)) = standing {
        limiter.stamp(resp.headers_mut(), &standing);
    }
    resp
}

/// What the route of a request answers: the objects' routes, then the inference ones (which
/// read the body as `request`).
fn route(
    state: &State,
    parts: &http::request::Parts,
    body: &Bytes,
    request: &Value,
    break_after: Option<usize>,
) -> Response<Body> {
    if let Some(resp) = objects::route(&state.options, &state.objects, parts, body, break_after) {
        return resp;
    }
    let path = parts.uri.path();
    let model = request["model"]
        .as_str()
        .or_else(|| quota::deployment(path))
        .unwrap_or("gpt-4o");
    if path.ends_with("/chat/completions") {
        completions::chat(&state.options, request, model, break_after)
    } else if path.ends_with("/completions") {
        json(200, &completions::completion(&state.options.answer, model))
    } else if path.ends_with("/embeddings") {
        json(200, &completions::embeddings(request, model))
    } else {
        azure_error(404, "404", "Resource not found")
    }
}

/// `resp` marked with the backend's `name` (`x-sim-backend`) and, as Azure does, an id of its
/// own (`x-request-id` and `apim-request-id`, unique in the process).
fn named(mut resp: Response<Body>, name: &str) -> Response<Body> {
    static ANSWERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = ANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let headers = resp.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(name) {
        headers.insert("x-sim-backend", v);
    }
    if let Ok(id) = http::HeaderValue::from_str(&format!("{name}-{n}")) {
        headers.insert("x-request-id", id.clone());
        headers.insert("apim-request-id", id);
    }
    resp
}
