//! The validated settings of the sections that tune the proxy (`timeouts`, `limits`, `server`,
//! `cooldown`, `health`, `balance`, the waiting part of `retry`), each with its defaults named
//! beside it.

use std::time::Duration;

/// Upstream timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (and TLS handshake) to a backend.
    pub connect: Duration,
    /// From the request sent to the response header received.
    pub response_header: Duration,
    /// Longest silence between two reads of a response body.
    pub body_idle: Duration,
    /// How long an idle upstream connection is kept for reuse.
    pub pool_idle: Duration,
    /// The longest a client may take to send a request body, whole (then 408).
    pub client_body: Duration,
    /// The longest a client may take to send a request header, whole, from its first byte
    /// (then the connection closes), like nginx's `client_header_timeout`.
    pub client_header: Duration,
}

impl Default for Timeouts {
    /// 5 s to connect, 300 s for the response header (long non-streaming completions take a
    /// while), 300 s between body chunks, 60 s of pooled idleness, 60 s for a client's body
    /// (32 MiB, the largest by default, at 4 Mbit/s), 60 s for a client's header (nginx's).
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(300),
            body_idle: Duration::from_secs(300),
            pool_idle: Duration::from_secs(60),
            client_body: Duration::from_secs(60),
            client_header: Duration::from_secs(60),
        }
    }
}

/// Request sizes accepted (`limits`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// The largest request body accepted (and replayed on retries).
    pub max_body_bytes: u64,
    /// The largest total size of request headers.
    pub max_header_bytes: usize,
}

impl Default for Sizes {
    /// 32 MiB of body, 32 KiB of headers.
    fn default() -> Self {
        Sizes {
            max_body_bytes: 32 << 20,
            max_header_bytes: 32 << 10,
        }
    }
}

/// Process settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Whether the workers share one runtime that moves tasks between threads (`true`), or
    /// each runs its own, like nginx's workers (`false`, the default and the faster).
    pub work_stealing: bool,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub grace_period: Duration,
}

impl Default for ServerSettings {
    /// One thread per CPU, each with its own runtime; 60 s of grace.
    fn default() -> Self {
        ServerSettings {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            work_stealing: false,
            grace_period: Duration::from_secs(60),
        }
    }
}

/// Cooldowns after a 429 or 503.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CooldownPolicy {
    /// When the answer says nothing usable about how long.
    pub default: Duration,
    /// The longest cooldown honoured, whatever the backend says.
    pub max: Duration,
}

impl Default for CooldownPolicy {
    /// 10 s when the backend does not say; at most 1 h whatever it says.
    fn default() -> Self {
        CooldownPolicy {
            default: Duration::from_secs(10),
            max: Duration::from_secs(3600),
        }
    }
}

/// When passive health ejects a backend, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EjectionPolicy {
    /// Consecutive failures (connection errors, timeouts, 5xx) that eject a backend.
    pub failures: u32,
    /// The first ejection; each further one while it keeps failing doubles it.
    pub base: Duration,
    /// The longest ejection.
    pub max: Duration,
}

impl Default for EjectionPolicy {
    /// 3 failures in a row eject for 10 s, doubling to 5 min while it keeps failing.
    fn default() -> Self {
        EjectionPolicy {
            failures: 3,
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

/// How a backend is chosen within a priority group (`balance.strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each in turn, by weight.
    #[default]
    RoundRobin,
    /// The one with the most tokens left for the deployment, as its answers said.
    Headroom,
}

/// Waiting for capacity instead of answering the throttling 429 (`retry.wait_for_capacity`,
/// `retry.max_waiting`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// The longest a request may be held, from its arrival; zero: never held.
    pub budget: Duration,
    /// Requests held at once; more get the 429.
    pub max: usize,
}

impl Waiting {
    /// The longest `retry.wait_for_capacity` taken: a client holds its connection meanwhile.
    pub const MAX_BUDGET: Duration = Duration::from_secs(300);
}

impl Default for Waiting {
    /// Never held (the 429 at once); at most 1,000 held when waiting is on.
    fn default() -> Self {
        Waiting {
            budget: Duration::ZERO,
            max: 1000,
        }
    }
}
