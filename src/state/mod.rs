//! Shared state across replicas (`state.redis`): backend cooldowns and ejections
//! ([`cooldowns`]), the quota backends say they have left ([`capacity`]), client limit windows
//! ([`limits`]), quota and budget counts ([`quotas`]), where stateful objects live
//! ([`objects`]) and the response cache's entries ([`cache`]), in one Redis that every replica
//! uses.
//!
//! Redis is never on a request's critical path:
//! - what a request only tells (a cooldown began, an object was made, tokens were spent) goes
//!   to a bounded queue that a background task writes, and is dropped when the queue is full;
//! - what a request must ask (a client's window, an unknown object's place) is one round trip
//!   bounded by `state.redis.timeout`; a failure or a slow answer marks Redis down, and until
//!   the background check sees it answer again every replica uses its own state;
//! - cooldowns reach the other replicas by pub/sub within milliseconds, and when Redis comes
//!   back each replica publishes the cooldowns and ejections it holds and takes in the others'.
//!
//! The first transition to down, and the return, are logged once each;
//! `aoai_proxy_state_store_up` says which it is.

pub mod cache;
pub mod capacity;
pub mod cooldowns;
pub mod limits;
pub mod objects;
pub mod quotas;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use crate::balance::StandingChange;
use crate::config::RedisSettings;
use crate::metrics::Metrics;

/// Writes waiting for the background task; more are dropped (and their effect is local only).
const QUEUE: usize = 16 * 1024;
/// How often a Redis that is down is tried again.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// A write for the background task.
pub enum Write {
    /// A backend began cooling or was ejected: publish it, and keep it for replicas that
    /// resynchronise.
    Standing {
        backend: String,
        change: StandingChange,
    },
    /// A backend said how much quota a deployment has left: publish it.
    Capacity {
        backend: String,
        deployment: Option<String>,
        report: crate::balance::Report,
    },
    /// An object lives on a backend.
    Learn { id: String, backend: String },
    /// An object is gone.
    Forget { id: String },
    /// A request's estimate is replaced by what it spent.
    Settle {
        client: String,
        admitted_second: u64,
        estimate: u64,
        now_second: u64,
        spent: u64,
    },
    /// What a replica counted of a client's quota or budget (a request settled), to tell.
    Spend(quotas::Told),
    /// A prompt the response cache indexed (`cache.semantic`), as JSON: publish it.
    Prompt(String),
}

/// The connection to the shared store, and whether it is usable now.
pub struct SharedState {
    client: redis::Client,
    /// Set once connected; it reconnects by itself afterwards.
    conn: ArcSwapOption<ConnectionManager>,
    up: AtomicBool,
    /// The current time down has been logged.
    warned: AtomicBool,
    pub(crate) timeout: Duration,
    prefix: String,
    /// This process, so that it skips its own messages.
    replica: String,
    queue: mpsc::Sender<Write>,
    metrics: Arc<Metrics>,
    /// How many objects' places are kept (`objects.remember`), in Redis as in each process.
    pub(crate) remember: usize,
}

impl SharedState {
    /// The state shared through `settings`, not yet connected (see [`StateTask`]), and the
    /// queue its task reads. `ca` (PEM, `state.redis.ca_file`) replaces the public roots for the server's TLS.
    pub fn new(
        settings: &RedisSettings,
        ca: Option<&[u8]>,
        remember: usize,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<SharedState>, mpsc::Receiver<Write>), redis::RedisError> {
        let client = match ca {
            Some(pem) => redis::Client::build_with_tls(
                settings.url.expose(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            )?,
            None => redis::Client::open(settings.url.expose())?,
        };
        let (queue, writes) = mpsc::channel(QUEUE);
        metrics.set_state_store_up(false);
        let state = SharedState {
            client,
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            warned: AtomicBool::new(false),
            timeout: settings.timeout,
            prefix: settings.prefix.clone(),
            replica: replica_id(),
            queue,
            metrics,
            remember,
        };
        Ok((Arc::new(state), writes))
    }

    /// The key or channel `name` under this deployment's prefix.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// A connection, when Redis is up.
    pub(crate) fn conn(&self) -> Option<ConnectionManager> {
        if !self.up.load(Ordering::Acquire) {
            return None;
        }
        self.conn.load_full().map(|c| (*c).clone())
    }

    /// Queues a write; drops it when the queue is full (Redis slow or down).
    pub(crate) fn send(&self, write: Write) {
        let _ = self.queue.try_send(write);
    }

    /// Records that a call failed or took too long: the replica uses its own state until the
    /// background check sees Redis answer again.
    pub(crate) fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            self.metrics.set_state_store_up(false);
        }
        self.note_unreachable(why);
    }

    /// Logs, once each time it goes down, that Redis cannot be used.
    fn note_unreachable(&self, why: &str) {
        if !self.warned.swap(true, Ordering::AcqRel) {
            log::warn!("state store unreachable ({why}): this replica uses its own state until it answers again");
        }
    }

    /// Records that Redis answered; `true` when it had been down.
    fn mark_up(&self) -> bool {
        let was_down = !self.up.swap(true, Ordering::AcqRel);
        self.warned.store(false, Ordering::Release);
        if was_down {
            log::info!("state store up: sharing cooldowns, limits and object places");
            self.metrics.set_state_store_up(true);
        }
        was_down
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Publishes `wire` on the channel `name` (under the prefix); how many listened.
    pub(crate) async fn publish(&self, name: &str, wire: String) -> Option<i64> {
        let channel = self.key(name);
        self.call(|mut conn| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(wire)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
    }

    /// Runs `call` on a connection within `state.redis.timeout`; `None` (and Redis marked
    /// down) when Redis is down, fails, or is slow.
    pub(crate) async fn call<T, F, Fut>(&self, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn()?;
        match tokio::time::timeout(self.timeout, call(conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.mark_down(&e.to_string());
                None
            }
            Err(_) => {
                self.mark_down(&format!("no answer within {:?}", self.timeout));
                None
            }
        }
    }
}

/// A name for this process among the replicas: host name, process id and start time.
fn replica_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{host}-{}-{started:x}", std::process::id())
}

/// Seconds since the Unix epoch now: the clock the replicas share.
pub(crate) fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

pub use task::StateTask;
mod task;
